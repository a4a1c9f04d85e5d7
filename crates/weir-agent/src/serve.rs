//! The agent's own HTTP endpoints: Prometheus metrics and health probes.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::{CaptureCounters, ExportCounters};

#[derive(Clone)]
pub(crate) struct Health {
    pub capture: Arc<CaptureCounters>,
    pub export: Arc<ExportCounters>,
    pub stopping: Arc<AtomicBool>,
}

pub(crate) async fn serve(listener: tokio::net::TcpListener, health: Health) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the metrics server stopped");
    }
}

fn metrics_text(h: &Health) -> String {
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let c = &h.capture;
    let e = &h.export;
    let mut registry = Registry::with_prefix("weir_agent");
    let counters: [(&str, &str, u64); 10] = [
        (
            "packets",
            "Packets read from the pod interfaces",
            get(&c.packets),
        ),
        (
            "kernel_packets",
            "Packets the kernel handed to the capture rings (dropped ones included)",
            get(&c.kernel_packets),
        ),
        (
            "kernel_drops",
            "Packets the kernel dropped because a capture ring was full",
            get(&c.kernel_drops),
        ),
        (
            "flow_table_evictions",
            "Flows closed early because a flow table was full (their records were still sent)",
            get(&c.table_evictions),
        ),
        (
            "skipped_packets",
            "Packets not accounted to any flow (malformed or unsupported)",
            get(&c.skipped_packets),
        ),
        ("flow_records", "Flow records made", get(&c.records)),
        (
            "buffer_drops",
            "Flow records dropped because the send buffer was full",
            get(&e.buffer_drops),
        ),
        (
            "acked_records",
            "Flow records the aggregator stored durably",
            get(&e.acked_records),
        ),
        ("requests", "Requests to the aggregator", get(&e.requests)),
        (
            "request_failures",
            "Failed requests to the aggregator",
            get(&e.failures),
        ),
    ];
    for (name, help, value) in counters {
        registry.register(name, help, ConstCounter::new(value));
    }
    let gauges: [(&str, &str, i64); 4] = [
        (
            "buffered_records",
            "Flow records not yet acknowledged by the aggregator",
            get(&e.buffered_records) as i64,
        ),
        (
            "buffered_bytes",
            "Bytes of flow records not yet acknowledged",
            get(&e.buffered_bytes) as i64,
        ),
        (
            "interfaces",
            "Pod interfaces being captured",
            get(&c.interfaces) as i64,
        ),
        (
            "connected",
            "1 when the last request to the aggregator succeeded",
            i64::from(e.connected.load(Ordering::Relaxed)),
        ),
    ];
    for (name, help, value) in gauges {
        registry.register(name, help, ConstGauge::new(value));
    }
    let mut out = String::new();
    if encode(&mut out, &registry).is_err() {
        let _ = writeln!(out, "# encoding failed");
    }
    out
}

async fn metrics(State(h): State<Health>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics_text(&h),
    )
}

async fn healthz(State(h): State<Health>) -> impl IntoResponse {
    if h.stopping.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

/// Ready once capturing on at least one interface... or none exist yet: a node without pods is still ready.
async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    if h.stopping.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping\n".to_owned())
    } else {
        let interfaces = h.capture.interfaces.load(Ordering::Relaxed);
        (StatusCode::OK, format!("ok: {interfaces} interfaces\n"))
    }
}

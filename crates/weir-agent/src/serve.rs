//! The agent's own HTTP endpoints: Prometheus metrics and health probes.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use weir_flow::SkipReason;

use crate::{CaptureCounters, ExportCounters};

#[derive(Clone)]
pub(crate) struct Health {
    pub capture: Arc<CaptureCounters>,
    pub export: Arc<ExportCounters>,
    pub stopping: Arc<AtomicBool>,
}

pub(crate) async fn serve(listener: tokio::net::TcpListener, health: Health) {
    let metrics = Arc::new(Metrics::new(&health));
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .with_state(metrics)
        .merge(
            Router::new()
                .route("/healthz", get(healthz))
                .route("/readyz", get(readyz))
                .with_state(health),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the metrics server stopped");
    }
}

/// The agent's registry, built once: one collector reads the capture's and the exporter's counters at scrape
/// time.
struct Metrics {
    registry: Registry,
}

impl Metrics {
    fn new(h: &Health) -> Metrics {
        let mut registry = Registry::with_prefix("weir_agent");
        registry.register_collector(Box::new(Counters {
            capture: Arc::clone(&h.capture),
            export: Arc::clone(&h.export),
        }));
        Metrics { registry }
    }
}

#[derive(Debug)]
struct Counters {
    capture: Arc<CaptureCounters>,
    export: Arc<ExportCounters>,
}

impl Collector for Counters {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let c = &self.capture;
        let e = &self.export;
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
            ("flow_records", "Flow records made", get(&c.records)),
            (
                "buffer_drops",
                "Flow records dropped because the send buffer was full",
                get(&e.buffer_drops),
            ),
            (
                "refused_records",
                "Flow records given up because the aggregator refused their batch as it was (unreadable, too large)",
                get(&e.refused_records),
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
            let m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(m)?;
        }
        // Skipped packets by the layer and reason the decoder gave (their sum is what agents report to the
        // aggregator as skipped_packets).
        let mut m = enc.encode_descriptor(
            "skipped_packets",
            "Packets not accounted to any flow, by layer and reason (malformed or not IP traffic)",
            None,
            MetricType::Counter,
        )?;
        for (i, reason) in SkipReason::ALL.iter().enumerate() {
            let labels = [("layer", reason.layer()), ("reason", reason.name())];
            ConstCounter::new(get(&c.skipped_by_reason[i])).encode(m.encode_family(&labels)?)?;
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
            let m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(m)?;
        }
        Ok(())
    }
}

async fn metrics_page(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    let mut out = String::new();
    match encode(&mut out, &m.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            out,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "encoding the metrics failed\n".to_owned(),
        ),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_packets_are_counted_by_layer_and_reason_in_a_registry_built_once() {
        let health = Health {
            capture: Arc::new(CaptureCounters::default()),
            export: Arc::new(ExportCounters::default()),
            stopping: Arc::new(AtomicBool::new(false)),
        };
        let metrics = Metrics::new(&health);
        health.capture.skipped_by_reason[SkipReason::Arp.index()].store(3, Ordering::Relaxed);
        health.capture.skipped_by_reason[SkipReason::TcpTruncated.index()]
            .store(2, Ordering::Relaxed);
        health.capture.packets.store(10, Ordering::Relaxed);
        let mut text = String::new();
        encode(&mut text, &metrics.registry).unwrap_or_else(|e| panic!("{e}"));
        for line in [
            "weir_agent_skipped_packets_total{layer=\"link\",reason=\"arp\"} 3",
            "weir_agent_skipped_packets_total{layer=\"transport\",reason=\"tcp_truncated\"} 2",
            "weir_agent_skipped_packets_total{layer=\"network\",reason=\"orphan_fragment\"} 0",
            "weir_agent_packets_total 10",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert_eq!(
            text.matches("# TYPE weir_agent_skipped_packets counter")
                .count(),
            1
        );
    }
}

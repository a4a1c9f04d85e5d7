//! `/metrics`: Prometheus/OpenMetrics text with `weir_` names, built from the live counters at scrape time.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::state::Shared;

type Labels = Vec<(String, String)>;

fn counter_family(
    registry: &mut Registry,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (Labels, u64)>,
) {
    let family = Family::<Labels, Counter>::default();
    for (labels, v) in values {
        family.get_or_create(&labels).inc_by(v);
    }
    registry.register(name, help, family);
}

fn gauge_family(
    registry: &mut Registry,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (Labels, i64)>,
) {
    let family = Family::<Labels, Gauge>::default();
    for (labels, v) in values {
        family.get_or_create(&labels).set(v);
    }
    registry.register(name, help, family);
}

fn label(name: &str, value: &str) -> Labels {
    vec![(name.to_owned(), value.to_owned())]
}

/// The metrics text.
pub fn render(s: &Shared) -> String {
    let mut r = Registry::with_prefix("weir");
    let c = &s.counters;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    counter_family(
        &mut r,
        "ingest_batches",
        "Agent batches by outcome",
        [
            (label("result", "applied"), get(&c.batches)),
            (label("result", "duplicate"), get(&c.duplicates)),
            (label("result", "out_of_order"), get(&c.out_of_order)),
            (label("result", "heartbeat"), get(&c.heartbeats)),
        ],
    );
    counter_family(
        &mut r,
        "ingest_rejected_requests",
        "Ingest requests refused, by reason",
        [
            (label("reason", "unauthorized"), get(&c.unauthorized)),
            (label("reason", "bad_request"), get(&c.bad_requests)),
            (label("reason", "not_ready"), get(&c.not_ready)),
        ],
    );
    r.register(
        "ingest_records",
        "Flow records applied",
        ConstCounter::new(get(&c.records)),
    );
    r.register(
        "ingest_malformed_records",
        "Lines of agent batches that were not flow records (skipped)",
        ConstCounter::new(get(&c.malformed)),
    );
    r.register(
        "store_checkpoints",
        "Checkpoints written to the database",
        ConstCounter::new(get(&c.checkpoints)),
    );
    r.register(
        "store_checkpoint_failures",
        "Checkpoints that failed (their batches stay unacknowledged)",
        ConstCounter::new(get(&c.checkpoint_failures)),
    );
    r.register(
        "store_checkpoint_seconds",
        "Time spent writing checkpoints",
        ConstCounter::new(get(&c.checkpoint_micros) as f64 / 1e6),
    );
    counter_family(
        &mut r,
        "alert_webhook_alerts",
        "Alerts sent to the webhook, by result",
        [
            (label("result", "sent"), get(&c.webhook_sent)),
            (label("result", "failed"), get(&c.webhook_failed)),
        ],
    );
    r.register(
        "stream_lagged_events",
        "Events skipped for stream subscribers that fell behind",
        ConstCounter::new(get(&c.stream_lagged)),
    );
    r.register(
        "ready",
        "1 once the cluster state is loaded",
        ConstGauge::new(i64::from(s.ready.load(Ordering::Acquire))),
    );
    if let Ok(cluster) = s.cluster.lock() {
        r.register(
            "cluster_generation",
            "Policy sets built from the cluster (each change makes one)",
            ConstCounter::new(cluster.generation),
        );
        gauge_family(
            &mut r,
            "cluster_objects",
            "Cluster objects held, by kind",
            cluster
                .objects
                .iter()
                .map(|(k, n)| (label("kind", k), *n as i64)),
        );
        counter_family(
            &mut r,
            "cluster_watch_errors",
            "Watch errors (dropped watches, 410 Gone, refused requests), by kind",
            cluster
                .watch_errors
                .iter()
                .map(|(k, n)| (label("kind", k), *n)),
        );
    }
    if let Ok(core) = s.core.lock() {
        let t = core.engine.totals();
        counter_family(
            &mut r,
            "flows",
            "Connections judged, by verdict (a connection reported by both ends counts once)",
            t.verdicts
                .iter()
                .map(|(v, n)| (label("verdict", v.name()), *n)),
        );
        let plain: [(&str, &str, u64); 7] = [
            (
                "flow_views_joined",
                "Records that were the other end's view of a connection already counted",
                t.joined_views,
            ),
            (
                "dnat_joined",
                "Post-DNAT records folded into their Service flow",
                t.dnat_joined,
            ),
            (
                "flows_delivered",
                "Connections seen arriving at (or answered by) their destination",
                t.delivered,
            ),
            (
                "flows_dropped_in_transit",
                "Allowed connections that left the source but never reached the destination's node",
                t.dropped_in_transit,
            ),
            (
                "enforcement_gaps",
                "Denied connections that were delivered (the CNI did not enforce the policy)",
                t.enforcement_gaps,
            ),
            (
                "join_evictions",
                "Connections dropped from the join table before their other view could arrive (table full)",
                t.join_evictions,
            ),
            (
                "alert_deliveries",
                "Alert deliveries (first raise and rate-limited updates)",
                t.alert_deliveries,
            ),
        ];
        for (name, help, v) in plain {
            r.register(name, help, ConstCounter::new(v));
        }
        counter_family(
            &mut r,
            "alerts",
            "Alerts raised, by type",
            weir_model::AlertKind::ALL.iter().map(|k| {
                (
                    label("type", k.name()),
                    t.alerts.get(k.name()).copied().unwrap_or(0),
                )
            }),
        );
        counter_family(
            &mut r,
            "expired",
            "Edges and alerts forgotten because none of their traffic was seen within the retention, by kind",
            [
                (label("kind", "edge"), t.expired_edges),
                (label("kind", "alert"), t.expired_alerts),
            ],
        );
        r.register(
            "edges",
            "Workload edges known",
            ConstGauge::new(core.engine.edges().len() as i64),
        );
        r.register(
            "pending_joins",
            "Connections waiting for the other end's view",
            ConstGauge::new(core.engine.pending_joins() as i64),
        );
        let agents: Vec<_> = core.agents.values().collect();
        let per_node = |f: &dyn Fn(&weir_model::ingest::AgentCounters) -> u64| {
            let mut by_node: std::collections::BTreeMap<String, u64> = Default::default();
            for a in &agents {
                *by_node.entry(a.node.clone()).or_default() += f(&a.counters);
            }
            by_node
        };
        let mut dropped: Vec<(Labels, u64)> = Vec::new();
        for (reason, f) in [
            (
                "kernel",
                &(|c: &weir_model::ingest::AgentCounters| c.kernel_drops)
                    as &dyn Fn(&weir_model::ingest::AgentCounters) -> u64,
            ),
            ("agent_buffer", &|c| c.buffer_drops),
        ] {
            for (node, n) in per_node(f) {
                dropped.push((
                    vec![("node".into(), node), ("reason".into(), reason.into())],
                    n,
                ));
            }
        }
        counter_family(
            &mut r,
            "agent_dropped",
            "Packets (kernel) and flow records (agent_buffer) agents dropped, by node and reason",
            dropped,
        );
        counter_family(
            &mut r,
            "agent_packets",
            "Packets agents read, by node",
            per_node(&|c| c.packets)
                .into_iter()
                .map(|(n, v)| (label("node", &n), v)),
        );
        counter_family(
            &mut r,
            "agent_flow_table_evictions",
            "Flows agents closed early because a flow table was full, by node",
            per_node(&|c| c.table_evictions)
                .into_iter()
                .map(|(n, v)| (label("node", &n), v)),
        );
        counter_family(
            &mut r,
            "agent_missed_batches",
            "Batches agents dropped before sending them, by node",
            {
                let mut by_node: std::collections::BTreeMap<String, u64> = Default::default();
                for a in &agents {
                    *by_node.entry(a.node.clone()).or_default() += a.missed_batches;
                }
                by_node.into_iter().map(|(n, v)| (label("node", &n), v))
            },
        );
        gauge_family(
            &mut r,
            "agent_last_seen_seconds",
            "When each node's agent was last heard from (Unix time)",
            {
                let mut by_node: std::collections::BTreeMap<String, i64> = Default::default();
                for a in &agents {
                    let e = by_node.entry(a.node.clone()).or_default();
                    *e = (*e).max(a.last_seen.0 / 1_000_000_000);
                }
                by_node.into_iter().map(|(n, v)| (label("node", &n), v))
            },
        );
    }
    let mut out = String::new();
    let _ = encode(&mut out, &r);
    out
}

/// The handler.
pub async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        render(&s),
    )
}

//! `/metrics`: Prometheus/OpenMetrics text with `weir_` names: the aggregator's counters ([`crate::telemetry`]),
//! registered once, and what the engine, the cluster source and the agents hold, read at scrape time by
//! [`ScrapeCollector`].

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use std::fmt;
use std::sync::Weak;

use axum::http::StatusCode;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::state::Shared;

type Labels = Vec<(String, String)>;

/// What only the engine, the cluster source and the agents know, read when Prometheus scrapes: registered once
/// with the aggregator's registry ([`crate::telemetry::Telemetry`]), holding the shared state weakly (the state
/// holds the registry).
#[derive(Debug)]
pub struct ScrapeCollector(pub Weak<Shared>);

/// Encodes one family of counters or gauges.
struct Out<'a, 'b> {
    enc: &'a mut DescriptorEncoder<'b>,
}

impl Out<'_, '_> {
    fn counters(
        &mut self,
        name: &str,
        help: &str,
        values: impl IntoIterator<Item = (Labels, u64)>,
    ) -> Result<(), fmt::Error> {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, v) in values {
            ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn gauges(
        &mut self,
        name: &str,
        help: &str,
        values: impl IntoIterator<Item = (Labels, i64)>,
    ) -> Result<(), fmt::Error> {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, v) in values {
            ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn counter(&mut self, name: &str, help: &str, v: u64) -> Result<(), fmt::Error> {
        let m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        ConstCounter::new(v).encode(m)
    }

    fn gauge(&mut self, name: &str, help: &str, v: i64) -> Result<(), fmt::Error> {
        let m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        ConstGauge::new(v).encode(m)
    }
}

fn label(name: &str, value: &str) -> Labels {
    vec![(name.to_owned(), value.to_owned())]
}

impl Collector for ScrapeCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(s) = self.0.upgrade() else {
            return Ok(());
        };
        let mut r = Out { enc: &mut enc };
        r.gauge(
            "ready",
            "1 once the cluster state is loaded",
            i64::from(s.ready.load(Ordering::Acquire)),
        )?;
        let lock_ok = |ok: bool| i64::from(!ok);
        r.gauge(
            "store_failing",
            "1 while checkpoints fail (batches are not acknowledged, ingest answers 503, not ready)",
            i64::from(s.store_health.failure().is_some()),
        )?;
        let cluster = s.cluster.lock();
        r.gauge(
            "cluster_status_unusable",
            "1 when the cluster source's status could not be read (its lock was poisoned by a panic)",
            lock_ok(cluster.is_ok()),
        )?;
        if let Ok(cluster) = &cluster {
            r.counter(
                "cluster_generation",
                "Policy sets built from the cluster (each change makes one)",
                cluster.generation,
            )?;
            r.gauges(
                "cluster_objects",
                "Cluster objects held, by kind",
                cluster
                    .objects
                    .iter()
                    .map(|(k, n)| (label("kind", k), *n as i64)),
            )?;
            r.gauges(
                "cluster_forbidden_kinds",
                "Kinds the API server refuses to list (1): a required one (Namespace, Pod, NetworkPolicy) keeps \
                 the aggregator unready, without the others it goes on",
                cluster
                    .forbidden
                    .iter()
                    .map(|k| (label("kind", k), 1)),
            )?;
            r.gauges(
                "cluster_kinds_not_served",
                "Cluster-wide policy kinds the API server does not serve (1: their CRD is not installed, so none is \
                 in force)",
                cluster
                    .not_served
                    .iter()
                    .map(|k| (label("kind", k), 1)),
            )?;
            r.gauges(
                "cluster_rejected_objects",
                "Objects the loader refused at the last rebuild (left out of the cluster state), by kind",
                cluster
                    .rejected_objects
                    .iter()
                    .map(|(k, n)| (label("kind", k), *n as i64)),
            )?;
            if let Some(at) = cluster.updated_at {
                let age = weir_model::Timestamp::now().0.saturating_sub(at.0) / 1_000_000_000;
                r.gauge(
                    "cluster_state_age_seconds",
                    "Seconds since the cluster state in force was built (a watch that stopped delivering shows \
                     as a growing age)",
                    age.max(0),
                )?;
            }
            r.counters(
                "cluster_watch_errors",
                "Watch errors (dropped watches, 410 Gone, refused requests), by kind",
                cluster
                    .watch_errors
                    .iter()
                    .map(|(k, n)| (label("kind", k), *n)),
            )?;
        }
        drop(cluster);
        let core = s.core.lock();
        r.gauge(
            "engine_unusable",
            "1 when the engine could not be read (its lock was poisoned by a panic; ingest answers 500)",
            lock_ok(core.is_ok()),
        )?;
        if let Ok(core) = &core {
            let t = core.engine.totals();
            r.counters(
                "flows",
                "Connections judged, by verdict (a connection reported by both ends counts once)",
                t.verdicts
                    .iter()
                    .map(|(v, n)| (label("verdict", v.name()), *n)),
            )?;
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
                r.counter(name, help, v)?;
            }
            r.counters(
                "alerts",
                "Alerts raised, by type",
                weir_model::AlertKind::ALL.iter().map(|k| {
                    (
                        label("type", k.name()),
                        t.alerts.get(k.name()).copied().unwrap_or(0),
                    )
                }),
            )?;
            r.counters(
            "expired",
            "Edges and alerts forgotten because none of their traffic was seen within the retention, by kind",
            [
                (label("kind", "edge"), t.expired_edges),
                (label("kind", "alert"), t.expired_alerts),
            ],
        )?;
            r.counters(
                "evicted",
                "Edges, alerts and scan sources forgotten to stay within their caps (the least recently seen, or \
                 for scan sources the least like a scan), by kind",
                [
                    (label("kind", "edge"), t.evicted_edges),
                    (label("kind", "alert"), t.evicted_alerts),
                    (label("kind", "scan_source"), t.evicted_scan_sources),
                ],
            )?;
            r.counter(
                "outside_peers_folded_connections",
                "Connections counted under a prefix of their outside address, because its endpoint had more \
                 outside peers than it keeps one by one",
                t.folded_connections,
            )?;
            r.gauges(
                "policies_not_evaluated",
                "Network policies of kinds weir does not evaluate in the snapshot in force (verdicts are \
                 NetworkPolicy's alone), by kind and API group",
                core.engine
                    .policy_set()
                    .cluster()
                    .unevaluated_policies()
                    .iter()
                    .map(|(k, n)| (label("kind", k), *n as i64)),
            )?;
            r.gauge(
                "edges",
                "Workload edges known",
                core.engine.edges().len() as i64,
            )?;
            let (peers, anchors) = core.engine.outside_peers();
            r.gauges(
                "bounded_state",
                "Entries held in the engine's bounded tables, by table",
                [
                    (label("table", "outside_peers"), peers as i64),
                    (label("table", "outside_peer_endpoints"), anchors as i64),
                    (label("table", "alerts"), core.engine.alert_count() as i64),
                    (
                        label("table", "scan_sources"),
                        core.engine.scan_sources() as i64,
                    ),
                    (label("table", "agent_runs"), core.agents.len() as i64),
                ],
            )?;
            r.gauge(
                "pending_joins",
                "Connections waiting for the other end's view",
                core.engine.pending_joins() as i64,
            )?;
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
            r.counters(
            "agent_dropped",
            "Packets (kernel) and flow records (agent_buffer) agents dropped, by node and reason",
            dropped,
        )?;
            r.counters(
                "agent_packets",
                "Packets agents read, by node",
                per_node(&|c| c.packets)
                    .into_iter()
                    .map(|(n, v)| (label("node", &n), v)),
            )?;
            r.counters(
                "agent_flow_table_evictions",
                "Flows agents closed early because a flow table was full, by node",
                per_node(&|c| c.table_evictions)
                    .into_iter()
                    .map(|(n, v)| (label("node", &n), v)),
            )?;
            r.counters(
                "agent_missed_batches",
                "Batches agents dropped before sending them, by node",
                {
                    let mut by_node: std::collections::BTreeMap<String, u64> = Default::default();
                    for a in &agents {
                        *by_node.entry(a.node.clone()).or_default() += a.missed_batches;
                    }
                    by_node.into_iter().map(|(n, v)| (label("node", &n), v))
                },
            )?;
            r.gauges(
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
            )?;
        }
        Ok(())
    }
}

/// The metrics text; `None` when the registry is unusable.
pub fn render(s: &Shared) -> Option<String> {
    s.telemetry.encode()
}

/// The handler: 500 when the registry's lock was poisoned, instead of an empty page that looks healthy.
pub async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    match render(&s) {
        Some(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        None => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "the metrics registry is unusable (a thread panicked while holding it)\n".to_owned(),
        ),
    }
}

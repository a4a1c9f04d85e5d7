//! What the JSON API shows of edges and flows, apart from the engine's types: the API's form changes only here
//! (tests pin it), whatever the engine keeps.

use std::collections::BTreeMap;

use serde::Serialize;

use weir_model::{EndpointKey, FlowRecord, FlowVerdict, Timestamp};

use weir_model::ingest::AgentCounters;

use crate::engine::{Side, StoredFlow, Totals};
use crate::state::AgentState;

/// An edge in `GET /api/v1/edges`: the one edge view, shared with the offline analysis document.
pub(crate) use weir_analysis::EdgeView;

/// A judged flow in `GET /api/v1/flows` and the flow stream: the record, then what it resolved to.
#[derive(Debug, Serialize)]
pub(crate) struct FlowView<'a> {
    #[serde(flatten)]
    record: &'a FlowRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    src_pod: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dst_pod: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<&'a str>,
    source: &'a EndpointKey,
    destination: &'a EndpointKey,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    verdict: FlowVerdict,
    policies: &'a [String],
    reported_by: Side,
}

impl<'a> From<&'a StoredFlow> for FlowView<'a> {
    fn from(f: &'a StoredFlow) -> FlowView<'a> {
        let v = &f.view;
        FlowView {
            record: &f.record,
            src_pod: v.src_pod.as_deref(),
            dst_pod: v.dst_pod.as_deref(),
            service: v.service.as_deref(),
            source: &v.source,
            destination: &v.destination,
            port: v.port,
            verdict: v.verdict,
            policies: &v.policies,
            reported_by: f.reported_by,
        }
    }
}

/// The engine's running totals in `GET /api/v1/status`.
#[derive(Debug, Serialize)]
pub(crate) struct TotalsView<'a> {
    records: u64,
    connections: u64,
    verdicts: &'a BTreeMap<FlowVerdict, u64>,
    joined_views: u64,
    dnat_joined: u64,
    delivered: u64,
    dropped_in_transit: u64,
    enforcement_gaps: u64,
    join_evictions: u64,
    alerts: &'a BTreeMap<String, u64>,
    alert_deliveries: u64,
    policy_updates: u64,
    expired_edges: u64,
    expired_alerts: u64,
    evicted_edges: u64,
    evicted_alerts: u64,
    evicted_scan_sources: u64,
    folded_connections: u64,
}

impl<'a> From<&'a Totals> for TotalsView<'a> {
    fn from(t: &'a Totals) -> TotalsView<'a> {
        TotalsView {
            records: t.records,
            connections: t.connections,
            verdicts: &t.verdicts,
            joined_views: t.joined_views,
            dnat_joined: t.dnat_joined,
            delivered: t.delivered,
            dropped_in_transit: t.dropped_in_transit,
            enforcement_gaps: t.enforcement_gaps,
            join_evictions: t.join_evictions,
            alerts: &t.alerts,
            alert_deliveries: t.alert_deliveries,
            policy_updates: t.policy_updates,
            expired_edges: t.expired_edges,
            expired_alerts: t.expired_alerts,
            evicted_edges: t.evicted_edges,
            evicted_alerts: t.evicted_alerts,
            evicted_scan_sources: t.evicted_scan_sources,
            folded_connections: t.folded_connections,
        }
    }
}

/// An agent run in `GET /api/v1/status`. Without its epoch: the epoch and sequence number are what a batch is
/// admitted by, and a reader has no use for them.
#[derive(Debug, Serialize)]
pub(crate) struct AgentView<'a> {
    node: &'a str,
    applied: u64,
    acked: u64,
    missed_batches: u64,
    counters: &'a AgentCounters,
    last_seen: Timestamp,
}

impl<'a> From<&'a AgentState> for AgentView<'a> {
    fn from(a: &'a AgentState) -> AgentView<'a> {
        AgentView {
            node: &a.node,
            applied: a.applied,
            acked: a.acked,
            missed_batches: a.missed_batches,
            counters: &a.counters,
            last_seen: a.last_seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::FlowView as Resolution;
    use weir_analysis::EdgeStats;
    use weir_model::EndpointKind;

    fn edge() -> EdgeStats {
        let text = r#"{"key":{"src":{"kind":"pod","namespace":"app","name":"Deployment/web"},"dst":{"kind":"external","name":"192.0.2.9"},"proto":"UDP","port":53},"flows":1,"packets":2,"bytes":120,"allowed":1,"denied":0,"other":0,"verdict":"allowed","not_isolated":true,"policies":[],"services":["kube-system/kube-dns"],"nodes":["n1"],"delivered":1,"dropped_in_transit":0,"enforcement_gaps":0,"first_seen":"2026-11-22T10:00:00.000000Z","last_seen":"2026-11-22T10:00:00.000000Z","baseline":false,"sample":{"src":"10.1.1.5","src_port":40000,"dst":"192.0.2.9","dst_port":53,"proto":"UDP","packets":1,"bytes":60,"reply_packets":1,"reply_bytes":60,"start":"2026-11-22T10:00:00.000000Z","end":"2026-11-22T10:00:00.000000Z","tcp_flags":"","reply_tcp_flags":"","orientation":"observed","end_reason":"idle-timeout","community_id":"1:y"}}"#;
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_api_shows_edges_and_flows_as_it_always_has() {
        let e = edge();
        // The API's edge is what the engine's edge serialized to before the two were apart, with how each
        // direction was decided as `egress` and `ingress` (unknown for an edge kept before that was kept).
        let shown = serde_json::to_value(EdgeView::from(&e)).unwrap_or_default();
        let mut engine = serde_json::to_value(&e).unwrap_or_default();
        if let Some(fields) = engine.as_object_mut()
            && let Some(decided) = fields.remove("decided")
        {
            fields.insert("egress".into(), decided["egress"].clone());
            fields.insert("ingress".into(), decided["ingress"].clone());
        }
        assert_eq!(shown, engine);
        assert_eq!(shown["egress"], serde_json::json!({"tier": "unknown"}));
        let flow = StoredFlow {
            record: e.sample.clone(),
            view: Arc::new(Resolution {
                src_pod: Some(Arc::from("app/web-1")),
                dst_pod: None,
                service: None,
                source: e.key.src.clone(),
                destination: EndpointKey::new(EndpointKind::External, None, "192.0.2.9"),
                port: Some(53),
                verdict: FlowVerdict::Allowed,
                policies: Arc::from(Vec::<String>::new()),
            }),
            reported_by: Side::Source,
        };
        let shown = serde_json::to_value(FlowView::from(&flow)).unwrap_or_default();
        assert_eq!(shown, serde_json::to_value(&flow).unwrap_or_default());
        assert_eq!(shown["src_pod"], "app/web-1");
        assert_eq!(shown["reported_by"], "source");
        assert_eq!(shown["dst_port"], 53);
    }

    #[test]
    fn the_status_shows_totals_and_agents_as_it_always_has_but_not_their_epochs() {
        let mut totals = Totals {
            records: 5,
            ..Totals::default()
        };
        totals.verdicts.insert(FlowVerdict::Denied, 2);
        totals.alerts.insert("scan".into(), 1);
        let shown = serde_json::to_value(TotalsView::from(&totals)).unwrap_or_default();
        assert_eq!(shown, serde_json::to_value(&totals).unwrap_or_default());
        let agent = AgentState {
            node: "n1".into(),
            epoch: "e".into(),
            applied: 3,
            acked: 2,
            missed_batches: 0,
            counters: Default::default(),
            last_seen: Timestamp(1),
        };
        let shown = serde_json::to_value(AgentView::from(&agent)).unwrap_or_default();
        let mut state = serde_json::to_value(&agent).unwrap_or_default();
        if let Some(fields) = state.as_object_mut() {
            fields.remove("epoch");
        }
        assert_eq!(shown, state);
    }
}

//! The bodies of the store's rows, apart from the engine's types: the database keeps what these say, and a
//! change to the engine's [`EdgeStats`] reaches the disk only through the conversions here (a test pins the
//! stored form).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use weir_analysis::{Decided, EdgeKey, EdgeStats};
use weir_model::{FlowRecord, FlowVerdict, Timestamp};

/// An edge row's body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EdgeRow {
    key: EdgeKey,
    flows: u64,
    packets: u64,
    bytes: u64,
    allowed: u64,
    denied: u64,
    other: u64,
    verdict: FlowVerdict,
    not_isolated: bool,
    policies: Vec<String>,
    /// How each direction of the last verdict was decided (rows written before it was kept have none).
    #[serde(default, skip_serializing_if = "Decided::is_unknown")]
    decided: Decided,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    services: Vec<String>,
    nodes: BTreeSet<String>,
    delivered: u64,
    dropped_in_transit: u64,
    enforcement_gaps: u64,
    first_seen: Timestamp,
    last_seen: Timestamp,
    baseline: bool,
    sample: FlowRecord,
}

impl From<&EdgeStats> for EdgeRow {
    fn from(e: &EdgeStats) -> EdgeRow {
        EdgeRow {
            key: e.key.clone(),
            flows: e.flows,
            packets: e.packets,
            bytes: e.bytes,
            allowed: e.allowed,
            denied: e.denied,
            other: e.other,
            verdict: e.verdict,
            not_isolated: e.not_isolated,
            policies: e.policies.clone(),
            decided: Decided::clone(&e.decided),
            services: e.services.clone(),
            nodes: e.nodes.clone(),
            delivered: e.delivered,
            dropped_in_transit: e.dropped_in_transit,
            enforcement_gaps: e.enforcement_gaps,
            first_seen: e.first_seen,
            last_seen: e.last_seen,
            baseline: e.baseline,
            sample: e.sample.clone(),
        }
    }
}

impl From<EdgeRow> for EdgeStats {
    fn from(r: EdgeRow) -> EdgeStats {
        EdgeStats {
            key: r.key,
            flows: r.flows,
            packets: r.packets,
            bytes: r.bytes,
            allowed: r.allowed,
            denied: r.denied,
            other: r.other,
            verdict: r.verdict,
            not_isolated: r.not_isolated,
            policies: r.policies,
            decided: std::sync::Arc::new(r.decided),
            services: r.services,
            nodes: r.nodes,
            delivered: r.delivered,
            dropped_in_transit: r.dropped_in_transit,
            enforcement_gaps: r.enforcement_gaps,
            first_seen: r.first_seen,
            last_seen: r.last_seen,
            baseline: r.baseline,
            sample: r.sample,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A row written by the aggregator before the engine's types moved to weir-analysis.
    pub(crate) const STORED: &str = r#"{"key":{"src":{"kind":"pod","namespace":"app","name":"Deployment/web"},"dst":{"kind":"pod","namespace":"app","name":"Deployment/db"},"proto":"TCP","port":5432},"flows":3,"packets":9,"bytes":540,"allowed":2,"denied":1,"other":0,"verdict":"denied","not_isolated":false,"policies":["ingress app/db"],"nodes":["n1"],"delivered":2,"dropped_in_transit":0,"enforcement_gaps":1,"first_seen":"2026-11-22T10:00:00.000000Z","last_seen":"2026-11-22T10:00:05.000000Z","baseline":true,"sample":{"src":"10.1.1.5","src_port":40000,"dst":"10.1.2.6","dst_port":5432,"proto":"TCP","packets":3,"bytes":180,"reply_packets":0,"reply_bytes":0,"start":"2026-11-22T10:00:04.000000Z","end":"2026-11-22T10:00:05.000000Z","tcp_flags":"S","reply_tcp_flags":"","orientation":"observed","end_reason":"idle-timeout","community_id":"1:x"}}"#;

    #[test]
    fn the_stored_form_reads_back_and_writes_the_same() {
        let row: EdgeRow = serde_json::from_str(STORED).unwrap_or_else(|e| panic!("{e}"));
        let edge = EdgeStats::from(row.clone());
        assert_eq!((edge.flows, edge.denied, edge.enforcement_gaps), (3, 1, 1));
        assert_eq!(EdgeRow::from(&edge), row);
        let written = serde_json::to_value(EdgeRow::from(&edge)).unwrap_or_default();
        let stored: serde_json::Value = serde_json::from_str(STORED).unwrap_or_default();
        assert_eq!(written, stored);
    }

    #[test]
    fn the_decision_chain_is_kept() {
        let row: EdgeRow = serde_json::from_str(STORED).unwrap_or_else(|e| panic!("{e}"));
        let mut edge = EdgeStats::from(row);
        assert!(edge.decided.is_unknown());
        edge.decided = std::sync::Arc::new(Decided {
            egress: weir_analysis::SideDecision {
                tier: weir_analysis::SideTier::Admin,
                chain: "Admin ClusterNetworkPolicy/ops rule #0 \"delegate\" Pass → default".into(),
            },
            ingress: weir_analysis::SideDecision {
                tier: weir_analysis::SideTier::NetworkPolicy,
                chain: "NetworkPolicy app/db isolates, no rule allows".into(),
            },
        });
        let text = serde_json::to_string(&EdgeRow::from(&edge)).unwrap_or_default();
        assert!(text.contains(r#""tier":"networkpolicy""#), "{text}");
        let back: EdgeRow = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(EdgeStats::from(back), edge);
    }
}

//! Judged flows: flow records attributed to the cluster and judged against its NetworkPolicies, and the
//! findings a person acts on.
//!
//! [`Analyzer::analyze`] is the step between the flow pipeline and every consumer (the offline report, the
//! aggregator's alerts, policy synthesis). It attributes each end of a flow with the owner of the address at the
//! flow's time ([`Party`]), resolves Service ClusterIPs through the Service port and its EndpointSlices to the
//! backends (joining the pre- and post-DNAT records of one connection when a capture holds both), and judges the
//! connection on the backend and its target port, as NetworkPolicy does. When a Service's backends would get
//! different verdicts the flow says so ([`Judgement::Mixed`]) instead of picking one. [`Report::new`] groups
//! judged flows into findings: denied flows by workload edge, flows allowed only because a pod is not isolated,
//! pods without policy, rules nothing used, unattributed addresses and suspected scans.
//!
//! [`AnalysisStream`] does the same while records arrive (a capture being read, an agent's stream), with the same
//! result whatever the order: only flows that may be one half of a DNAT join wait for the end.
//!
//! No I/O: callers hand in records and a [`weir_policy::PolicySet`] and write the results where they like.

#![deny(missing_docs)]

mod alerts;
mod analyze;
mod attribute;
mod book;
mod diff;
mod group;
mod json;
mod report;
mod scan;
mod stream;
mod suggest;
mod suggest_yaml;
mod synthesis;
#[cfg(test)]
mod testing;

pub use alerts::{
    AlertBook, EdgeAlertIds, Observation, alert_id, alert_kinds, scan_alert_id, tuple,
};
pub use analyze::{
    Analysis, Analyzer, BackendVerdict, JudgedFlow, Judgement, ServiceEndpoints, ServiceHit,
    Single, Unjudged, service_endpoints,
};
pub use attribute::{Attributor, Party};
pub use book::{
    ConnectionVerdict, Decided, EdgeBook, EdgeKey, EdgeStats, SideDecision, SideTier, retain_marked,
};
pub use diff::{
    Change, ConnectivityChange, ConnectivityDiff, ObservedDiff, connectivity_diff, observed_diff,
};
pub use group::endpoint_key;
pub use json::{
    DecidedMemo, DirectionView, EdgeView, decided, direction_views, flow_verdict, policy_names,
    reason, write_flow,
};
pub use report::{
    Edge, Group, InferredNodeAddress, Report, ReportBuilder, Scan, Totals, UnattributedAddress,
    UnusedRule, class_of, port_summary,
};
pub use scan::{Attempt, SCAN_PORTS, ScanDetector, ScanHit, ScanRule, ScanWindow};
pub use stream::{AnalysisStream, shard_of};
pub use suggest::{
    Evidence, NoSelector, RulePeer, RulePort, SampleWeight, SuggestOptions, SuggestedPolicy,
    SuggestedRule, Suggestion, Uncovered, Unsuggested, suggest,
};
pub use suggest_yaml::{baseline_yaml, policy_yaml, suggestion_yaml};
pub use synthesis::{Proof, ProofError, Synthesis, WouldDeny, policy_objects, prove, synthesize};
pub use weir_model::EdgeVerdict;

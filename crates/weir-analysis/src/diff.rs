//! What a policy change does: the workload pairs and ports that become allowed or denied, and which observed
//! flows it would break.

use std::collections::{BTreeMap, BTreeSet};

use weir_cluster::{ClusterState, PodId, Workload};
use weir_model::{Cidr, FlowRecord, Protocol};
use weir_policy::{PolicySet, ProbePort};

use crate::analyze::{Analyzer, JudgedFlow, Judgement};
use crate::report::{Report, ReportBuilder};

/// Which way a connection's verdict changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Change {
    /// Allowed before, denied after.
    NowDenied,
    /// Denied before, allowed after.
    NowAllowed,
}

impl Change {
    /// `now-denied` or `now-allowed`.
    pub fn name(self) -> &'static str {
        match self {
            Change::NowDenied => "now-denied",
            Change::NowAllowed => "now-allowed",
        }
    }
}

/// One workload pair whose connectivity changes on some ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectivityChange {
    /// Which way.
    pub change: Change,
    /// Source workload.
    pub from: Workload,
    /// Destination workload.
    pub to: Workload,
    /// The ports, sorted.
    pub ports: Vec<(Protocol, u16)>,
    /// Ordered pod pairs × ports that change.
    pub pod_pairs: u64,
}

/// The connectivity change between two policy sets over the same cluster.
#[derive(Clone, Debug, Default)]
pub struct ConnectivityDiff {
    /// Changes by workload pair, denials first.
    pub changes: Vec<ConnectivityChange>,
    /// Pods compared (running, with their own network namespace).
    pub pods: usize,
    /// Ports probed: every container port, every port a rule of either set names (both ends of a range),
    /// and the extra ones asked for.
    pub ports: Vec<(Protocol, u16)>,
}

/// Every port a rule of a policy set names, with both ends of each range.
fn rule_ports(cluster: &ClusterState, into: &mut BTreeSet<(Protocol, u16)>) {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    for object in cluster.policies() {
        let Some(spec) = &object.policy.spec else {
            continue;
        };
        let ingress = spec
            .ingress
            .iter()
            .flatten()
            .flat_map(|r| r.ports.iter().flatten());
        let egress = spec
            .egress
            .iter()
            .flatten()
            .flat_map(|r| r.ports.iter().flatten());
        for port in ingress.chain(egress) {
            let protocol = match port.protocol.as_deref() {
                Some("UDP") => Protocol::UDP,
                Some("SCTP") => Protocol::SCTP,
                _ => Protocol::TCP,
            };
            if let Some(IntOrString::Int(n)) = port.port {
                for end in [Some(n), port.end_port].into_iter().flatten() {
                    if let Ok(n) = u16::try_from(end) {
                        into.insert((protocol, n));
                    }
                }
            }
        }
    }
}

/// The ports a workload pair changes on, and how many pod pairs × ports change.
type PortsAndPairs = (BTreeSet<(Protocol, u16)>, u64);

/// Compares what two policy sets over one cluster allow between its pods, port by port.
pub fn connectivity_diff(
    before: &PolicySet,
    after: &PolicySet,
    extra_ports: &[(Protocol, u16)],
) -> ConnectivityDiff {
    let cluster = after.cluster();
    let pods: Vec<PodId> = cluster.running_pods().collect();
    let mut ports: BTreeSet<(Protocol, u16)> = extra_ports.iter().copied().collect();
    for &p in &pods {
        ports.extend(cluster.pod(p).ports.iter().map(|c| (c.protocol, c.port)));
    }
    rule_ports(before.cluster(), &mut ports);
    rule_ports(cluster, &mut ports);

    let mut changes: BTreeMap<(Change, &Workload, &Workload), PortsAndPairs> = BTreeMap::new();
    for &(protocol, port) in &ports {
        let was = before.reach_matrix(&pods, &ProbePort::Number(port), protocol);
        let now = after.reach_matrix(&pods, &ProbePort::Number(port), protocol);
        for i in 0..pods.len() {
            for j in 0..pods.len() {
                if i == j {
                    continue;
                }
                let (a, b) = (was.get(i, j) == (true, true), now.get(i, j) == (true, true));
                if a == b {
                    continue;
                }
                let change = if a {
                    Change::NowDenied
                } else {
                    Change::NowAllowed
                };
                let from = &cluster.pod(pods[i]).workload;
                let to = &cluster.pod(pods[j]).workload;
                let entry = changes.entry((change, from, to)).or_default();
                entry.0.insert((protocol, port));
                entry.1 += 1;
            }
        }
    }
    ConnectivityDiff {
        changes: changes
            .into_iter()
            .map(
                |((change, from, to), (ports, pod_pairs))| ConnectivityChange {
                    change,
                    from: from.clone(),
                    to: to.clone(),
                    ports: ports.into_iter().collect(),
                    pod_pairs,
                },
            )
            .collect(),
        pods: pods.len(),
        ports: ports.into_iter().collect(),
    }
}

/// Observed flows judged under two policy sets.
#[derive(Clone, Debug, Default)]
pub struct ObservedDiff {
    /// Flows judged.
    pub flows: u64,
    /// Flows allowed before and denied after, as a report under the new policies (its edges are the breakage).
    pub broken: Report,
    /// Flows denied before and allowed after.
    pub newly_allowed: Report,
    /// The broken flows themselves (judged under the new policies).
    pub broken_flows: Vec<JudgedFlow>,
}

fn allowed(judgement: &Judgement) -> bool {
    matches!(judgement, Judgement::Judged { verdict, .. } if verdict.allowed())
}

/// Judges `records` under both policy sets (attribution and DNAT joins do not depend on policy, so the flows
/// line up one to one).
pub fn observed_diff(
    before: &PolicySet,
    after: &PolicySet,
    records: Vec<FlowRecord>,
    cluster_ranges: &[Cidr],
) -> ObservedDiff {
    let was = Analyzer::new(before, cluster_ranges).analyze_sorted(records.clone());
    let now = Analyzer::new(after, cluster_ranges).analyze_sorted(records);
    let mut broken = ReportBuilder::new(after);
    let mut newly_allowed = ReportBuilder::new(after);
    let mut broken_flows = Vec::new();
    for (old, new) in was.flows.iter().zip(now.flows) {
        match (allowed(&old.judgement), allowed(&new.judgement)) {
            (true, false) => {
                broken.add(&new);
                broken_flows.push(new);
            }
            (false, true) => newly_allowed.add(&new),
            _ => {}
        }
    }
    ObservedDiff {
        flows: was.flows.len() as u64,
        broken: broken.finish(),
        newly_allowed: newly_allowed.finish(),
        broken_flows,
    }
}

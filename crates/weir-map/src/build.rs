//! From judged traffic to the map: one node per workload (or node, Service, address), one edge per pair of ends,
//! each workload with its pods, labels, selecting policies and suggested least-privilege policy. The offline
//! report builds it from a capture's analysis; the aggregator from one sample flow per edge, and then lays its
//! own counters over it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::{EdgeVerdict, Map, MapEdge, MapNode, NodeKind};
use weir_analysis::{
    Analysis, Edge, Group, JudgedFlow, Party, Report, SuggestOptions, policy_yaml, suggest,
    synthesize,
};
use weir_cluster::{ClusterState, PodId};
use weir_model::Cidr;
use weir_policy::PolicySet;

/// The map node id of a report group; the aggregator names the same endpoints the same way, so alerts find
/// their edges.
pub fn node_id(group: &Group) -> String {
    match group {
        Group::Workload(w) => format!("pod:{}/{}/{}", w.namespace, w.kind, w.name),
        Group::Node(name) => format!("node:{name}"),
        Group::Service(key) => format!("service:{key}"),
        Group::External(ip) => format!("external:{ip}"),
        Group::Unknown(ip) => format!("unknown:{ip}"),
    }
}

fn node_of(group: &Group) -> MapNode {
    let (kind, box_name, name) = match group {
        Group::Workload(w) => (
            NodeKind::Workload,
            w.namespace.clone(),
            format!("{}/{}", w.kind, w.name),
        ),
        Group::Node(name) => (NodeKind::Node, "nodes".to_owned(), name.clone()),
        Group::Service(key) => (
            NodeKind::Service,
            key.split_once('/')
                .map_or_else(|| key.clone(), |(ns, _)| ns.to_owned()),
            format!("svc {key}"),
        ),
        Group::External(ip) => (
            NodeKind::External,
            "outside the cluster".to_owned(),
            ip.to_string(),
        ),
        Group::Unknown(ip) => (
            NodeKind::Unknown,
            "unknown addresses".to_owned(),
            ip.to_string(),
        ),
    };
    MapNode::new(node_id(group), kind, box_name, name)
}

/// Why an edge got its verdict, in the engine's terms.
fn explanation(edge: &Edge) -> Vec<String> {
    let mut lines = Vec::new();
    let list = |policies: &[String]| policies.join(", ");
    // A cluster-wide policy among the deciding ones denied by a rule of its own (`Kind/name` keys).
    let cluster_wide = |policies: &[String]| {
        policies.iter().any(|p| {
            [
                "ClusterNetworkPolicy/",
                "AdminNetworkPolicy/",
                "BaselineAdminNetworkPolicy/",
            ]
            .iter()
            .any(|kind| p.starts_with(kind))
        })
    };
    if edge.egress_denied && cluster_wide(&edge.egress_policies) {
        lines.push(format!(
            "Egress denied by a rule of the cluster-wide {} (Admin or Baseline tier: the decision chain names the rule).",
            list(&edge.egress_policies)
        ));
    } else if edge.egress_denied {
        lines.push(format!(
            "The source is isolated for egress by {} and no egress rule of them allows this.",
            list(&edge.egress_policies)
        ));
    } else if !edge.egress_policies.is_empty() {
        lines.push(format!(
            "Egress allowed by {}.",
            list(&edge.egress_policies)
        ));
    }
    if edge.ingress_denied && cluster_wide(&edge.ingress_policies) {
        lines.push(format!(
            "Ingress denied by a rule of the cluster-wide {} (Admin or Baseline tier: the decision chain names the rule).",
            list(&edge.ingress_policies)
        ));
    } else if edge.ingress_denied {
        lines.push(format!(
            "The destination is isolated for ingress by {} and no ingress rule of them allows this.",
            list(&edge.ingress_policies)
        ));
    } else if !edge.ingress_policies.is_empty() {
        lines.push(format!(
            "Ingress allowed by {}.",
            list(&edge.ingress_policies)
        ));
    }
    match edge.not_isolated {
        (true, true) => lines.push(
            "Allowed only because no policy isolates either end: nothing restricts this traffic.".into(),
        ),
        (true, false) => lines.push(
            "The source is not isolated for egress: no NetworkPolicy selects it (and no cluster-wide rule decided), so its egress is open.".into(),
        ),
        (false, true) => lines.push(
            "The destination is not isolated for ingress: no NetworkPolicy selects it (and no cluster-wide rule decided), so anything may reach it."
                .into(),
        ),
        (false, false) => {}
    }
    if let Some(why) = edge.exception {
        lines.push(format!("Always allowed: {why}."));
    }
    if edge.answered < edge.flows {
        lines.push(format!(
            "{} of {} connections were answered.",
            edge.answered, edge.flows
        ));
    }
    lines
}

fn pod_group(cluster: &ClusterState, pod: PodId) -> Group {
    Group::Workload(cluster.pod(pod).workload.clone())
}

/// Fills in the workload nodes' pods, their labels and the policies selecting them, from the given pods (a pod
/// given twice counts once; pods of workloads not among the nodes are passed over).
pub fn describe_pods<'a>(
    set: &PolicySet,
    nodes: impl IntoIterator<Item = &'a mut MapNode>,
    pods: impl IntoIterator<Item = PodId>,
) {
    let cluster = set.cluster();
    let mut by_node: HashMap<String, BTreeSet<PodId>> = HashMap::new();
    for pod in pods {
        by_node
            .entry(node_id(&pod_group(cluster, pod)))
            .or_default()
            .insert(pod);
    }
    for node in nodes {
        let Some(members) = by_node.get(&node.id) else {
            continue;
        };
        let mut facts = PodFacts::of(node);
        for &pod in members {
            facts.add(set, pod);
        }
        facts.write(node);
    }
}

/// Adds one pod's name, labels and selecting policies to a node (a pod drawn on its own).
pub fn describe_pod(set: &PolicySet, pod: PodId, node: &mut MapNode) {
    let mut facts = PodFacts::of(node);
    facts.add(set, pod);
    facts.write(node);
}

/// The names, labels and selecting policies of a node's pods, gathered sorted and once each.
struct PodFacts {
    names: BTreeSet<String>,
    labels: BTreeSet<String>,
    policies: BTreeSet<String>,
}

impl PodFacts {
    /// What the node already lists.
    fn of(node: &mut MapNode) -> PodFacts {
        PodFacts {
            names: node.pods.drain(..).collect(),
            labels: node.labels.drain(..).collect(),
            policies: node.policies.drain(..).collect(),
        }
    }

    fn add(&mut self, set: &PolicySet, pod: PodId) {
        let p = set.cluster().pod(pod);
        self.names.insert(p.name.clone());
        self.labels
            .extend(p.labels.iter().map(|(k, v)| format!("{k}={v}")));
        let (ingress, egress) = set.isolating(pod);
        for &i in ingress.iter().chain(egress) {
            let policy = &set.policies()[i as usize];
            self.policies
                .insert(format!("{}/{}", policy.namespace, policy.name));
        }
        for &i in set.cluster_policies_of(pod) {
            self.policies.insert(set.tier_policies()[i as usize].key());
        }
    }

    fn write(self, node: &mut MapNode) {
        node.pods = self.names.into_iter().collect();
        node.labels = self.labels.into_iter().collect();
        node.policies = self.policies.into_iter().collect();
    }
}

/// Adds to the workload nodes weir's suggested least-privilege policy, from the given judged flows, and what it
/// would deny among them (judged again with the suggested policies in place of the cluster's). `options` gives
/// the cluster ranges and, for sample records, what each stands for; its namespaces are ignored (every
/// workload drawn gets its suggestion).
pub fn add_suggestions(
    set: &PolicySet,
    flows: &[JudgedFlow],
    options: &SuggestOptions,
    nodes: &mut [MapNode],
) {
    let cluster = set.cluster();
    let index: HashMap<String, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.clone(), i))
        .collect();
    let mut nodes = Nodes { nodes, index };
    let options = SuggestOptions {
        namespaces: Vec::new(),
        ..options.clone()
    };
    let records: Vec<_> = flows.iter().map(|f| f.record.clone()).collect();
    let synthesis = match synthesize(set, flows, &records, &options) {
        Ok(synthesis) => synthesis,
        Err(e) => {
            // Said where the suggestion is shown, instead of a "would deny" list that was never worked out.
            tracing::error!("the suggested policies could not be checked: {e}");
            for policy in &suggest(set, flows, &options).policies {
                let id = node_id(&Group::Workload(policy.workload.clone()));
                if let Some(node) = nodes.get_mut(&id) {
                    node.suggestion = Some(policy_yaml(policy));
                    node.suggestion_denies = vec![format!("not checked: {e}")];
                }
            }
            return;
        }
    };
    for policy in &synthesis.suggestion.policies {
        if let Some(node) = nodes.get_mut(&node_id(&Group::Workload(policy.workload.clone()))) {
            node.suggestion = Some(policy_yaml(policy));
        }
    }
    let mut denies: HashMap<String, BTreeMap<String, u64>> = HashMap::new();
    for d in &synthesis.would_deny {
        let name = |party: Party, ip| match party {
            Party::Pod(pod) => format!("{}/{}", cluster.pod(pod).namespace, cluster.pod(pod).name),
            _ => format!("{ip}"),
        };
        let line = format!(
            "{} → {} {}/{}",
            name(d.source, d.src),
            name(d.destination, d.dst),
            d.port.map_or_else(|| "-".to_owned(), |p| p.to_string()),
            d.proto
        );
        for party in [d.source, d.destination] {
            if let Party::Pod(pod) = party {
                *denies
                    .entry(node_id(&pod_group(cluster, pod)))
                    .or_default()
                    .entry(line.clone())
                    .or_default() += d.flows;
            }
        }
    }
    for (id, lines) in denies {
        if let Some(node) = nodes.get_mut(&id).filter(|n| n.suggestion.is_some()) {
            node.suggestion_denies = lines
                .into_iter()
                .map(|(line, n)| {
                    if n == 1 {
                        line
                    } else {
                        format!("{line} ×{n}")
                    }
                })
                .collect();
        }
    }
}

/// Workload nodes by id.
struct Nodes<'a> {
    nodes: &'a mut [MapNode],
    index: HashMap<String, usize>,
}

impl Nodes<'_> {
    fn get_mut(&mut self, id: &str) -> Option<&mut MapNode> {
        self.index.get(id).map(|&i| &mut self.nodes[i])
    }
}

/// Builds the map of an analysis (its flows must have been kept), with each workload's suggested policy.
pub fn build(
    set: &PolicySet,
    analysis: &Analysis,
    report: &Report,
    cluster_ranges: &[Cidr],
    title: &str,
) -> Map {
    let mut map = graph(set, analysis, report, title);
    let options = SuggestOptions {
        cluster_ranges: cluster_ranges.to_vec(),
        ..SuggestOptions::default()
    };
    add_suggestions(set, &analysis.flows, &options, &mut map.nodes);
    map
}

/// The map of an analysis without the suggested policies (the costly part: [`add_suggestions`]).
pub fn graph(set: &PolicySet, analysis: &Analysis, report: &Report, title: &str) -> Map {
    let mut nodes: BTreeMap<String, MapNode> = BTreeMap::new();
    for edge in &report.edges {
        for group in [&edge.from, &edge.to] {
            nodes
                .entry(node_id(group))
                .or_insert_with(|| node_of(group));
        }
    }

    // Pods seen, and the policies selecting them.
    let seen: Vec<PodId> = analysis
        .flows
        .iter()
        .flat_map(|flow| [flow.source, flow.destination])
        .filter_map(|party| match party {
            Party::Pod(pod) => Some(pod),
            _ => None,
        })
        .collect();
    describe_pods(set, nodes.values_mut(), seen);

    let scans: HashMap<String, Vec<String>> =
        report.scans.iter().fold(HashMap::new(), |mut m, s| {
            m.entry(node_id(&s.source)).or_default().push(format!(
                "scan: {} targets ({} hosts, {} ports), {} failed, {} denied",
                s.targets, s.hosts, s.ports, s.failed, s.denied
            ));
            m
        });
    let edges = report
        .edges
        .iter()
        .enumerate()
        .map(|(i, edge)| {
            let from = node_id(&edge.from);
            let mut alerts = Vec::new();
            if edge.class == EdgeVerdict::Denied {
                alerts.push(format!(
                    "policy-violation: {} denied connection{} observed",
                    edge.flows,
                    if edge.flows == 1 { "" } else { "s" }
                ));
            }
            alerts.extend(scans.get(&from).into_iter().flatten().cloned());
            let mut drawn = MapEdge {
                id: format!("e{i}"),
                to: node_id(&edge.to),
                from,
                verdict: edge.class,
                new: false,
                ports: edge.port_summary(),
                flows: edge.flows,
                bytes: edge.bytes,
                first: Some(edge.first.to_string()),
                last: Some(edge.last.to_string()),
                nodes: Vec::new(),
                services: edge.service.iter().cloned().collect(),
                policies: edge
                    .egress_policies
                    .iter()
                    .map(|p| format!("egress {p}"))
                    .chain(edge.ingress_policies.iter().map(|p| format!("ingress {p}")))
                    .collect(),
                chains: Vec::new(),
                tiers: Vec::new(),
                explanation: explanation(edge),
                alerts,
            };
            drawn.add_decisions(edge.decided.iter().map(|d| &**d), edge.decided_truncated);
            drawn
        })
        .collect();
    Map {
        title: title.to_owned(),
        nodes: nodes.into_values().collect(),
        edges,
    }
}

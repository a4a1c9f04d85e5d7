//! Least-privilege NetworkPolicies from judged flows: one policy per workload, with selectors that survive
//! rollouts, peers by labels (Services by their backends' labels and target ports), the cluster's DNS, and
//! outside addresses as ipBlocks, proven against the observed flows with the engine.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use weir_cluster::cnp::{
    ClusterPolicy, Origin, Peer as CnpPeer, Rule as CnpRule, Subject as CnpSubject,
};
use weir_cluster::{ClusterState, Labels, PodId, ServiceId, Workload};
use weir_model::{Cidr, FlowRecord, Protocol, Timestamp};
use weir_policy::{Action, Decision, Direction, PolicySet, Tier, TierRuleRef, Verdict};

use crate::analyze::{JudgedFlow, Judgement};
use crate::attribute::Party;

/// Labels a controller sets per revision, per pod or per run: a selector on them breaks at the next rollout.
const VOLATILE_LABELS: [&str; 11] = [
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "job-name",
    "controller-uid",
    "batch.kubernetes.io/job-name",
    "batch.kubernetes.io/controller-uid",
    "batch.kubernetes.io/job-completion-index",
    "job-index",
];

/// Namespaces left alone unless named: the control plane's and the CNI's.
fn is_system_namespace(ns: &str) -> bool {
    ns.starts_with("kube-")
        || ns.starts_with("openshift")
        || matches!(
            ns,
            "calico-system" | "calico-apiserver" | "tigera-operator" | "cilium" | "cilium-system"
        )
}

/// What to suggest.
#[derive(Clone, Debug)]
pub struct SuggestOptions {
    /// Only these namespaces (empty: every namespace but the system ones).
    pub namespaces: Vec<String>,
    /// Prefix length for outside IPv4 peers (32: the address alone).
    pub ipv4_prefix: u8,
    /// Prefix length for outside IPv6 peers (128: the address alone).
    pub ipv6_prefix: u8,
    /// Turn failed TCP attempts (refused or never answered) into rules too.
    pub include_failed: bool,
    /// The cluster's address ranges besides the nodes' pod ranges, as the flows were attributed with (the
    /// proof attributes them again).
    pub cluster_ranges: Vec<Cidr>,
    /// Records that stand for more than themselves, by Community ID: the aggregator keeps one sample record per
    /// edge, and the evidence should count the edge's connections and span, not the sample. Empty offline.
    pub sample_weights: HashMap<String, SampleWeight>,
    /// Also suggest a Baseline-tier ClusterNetworkPolicy that denies traffic between pods (and egress anywhere)
    /// in the namespaces in scope wherever no NetworkPolicy isolates a pod: the workloads weir saw no traffic of,
    /// or found no selector for, are then default-deny too.
    pub baseline_deny: bool,
}

/// What a sample record stands for in the evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleWeight {
    /// Connections.
    pub flows: u64,
    /// First packet of any of them.
    pub first: Timestamp,
    /// Last packet of any of them.
    pub last: Timestamp,
}

impl Default for SuggestOptions {
    fn default() -> Self {
        SuggestOptions {
            namespaces: Vec::new(),
            ipv4_prefix: 32,
            ipv6_prefix: 128,
            include_failed: false,
            cluster_ranges: Vec::new(),
            sample_weights: HashMap::new(),
            baseline_deny: false,
        }
    }
}

impl SuggestOptions {
    /// What a record counts for in the evidence: itself, or the connections and span it is a sample of.
    pub fn weight_of(&self, record: &FlowRecord) -> SampleWeight {
        self.sample_weights
            .get(&record.community_id)
            .copied()
            .unwrap_or(SampleWeight {
                flows: 1,
                first: record.start,
                last: record.end,
            })
    }

    fn in_scope(&self, ns: &str) -> bool {
        if self.namespaces.is_empty() {
            !is_system_namespace(ns)
        } else {
            self.namespaces.iter().any(|n| n == ns)
        }
    }
}

/// A port in a rule: a container port's name when the destination pods give it one, else the number.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RulePort {
    /// A named container port.
    Name(String),
    /// A number.
    Number(u16),
}

/// Who a rule admits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RulePeer {
    /// Pods by labels, in the policy's namespace (`None`) or another one (by its name label).
    Pods {
        /// The other namespace, if any.
        namespace: Option<String>,
        /// The pod labels.
        selector: Labels,
    },
    /// An address block.
    Block(Cidr),
}

/// Observed flows behind a rule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Evidence {
    /// Flows.
    pub flows: u64,
    /// First packet.
    pub first: Option<Timestamp>,
    /// Last packet.
    pub last: Option<Timestamp>,
    /// Who talked, as `Deployment shop/api`, an address, or `node node-a`.
    pub parties: BTreeSet<String>,
}

impl Evidence {
    fn add(&mut self, weight: SampleWeight, party: String) {
        self.flows += weight.flows;
        self.first = Some(self.first.map_or(weight.first, |t| t.min(weight.first)));
        self.last = Some(self.last.map_or(weight.last, |t| t.max(weight.last)));
        self.parties.insert(party);
    }
}

/// One rule of a suggested policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuggestedRule {
    /// The peer.
    pub peer: RulePeer,
    /// Protocols and ports, sorted.
    pub ports: Vec<(Protocol, RulePort)>,
    /// The flows that justify it.
    pub evidence: Evidence,
    /// Why it is there when not (only) because of flows: the cluster DNS rule.
    pub note: Option<String>,
}

/// A suggested NetworkPolicy for one workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuggestedPolicy {
    /// The workload.
    pub workload: Workload,
    /// The policy's name.
    pub name: String,
    /// Its pod selector.
    pub selector: Labels,
    /// Ingress rules.
    pub ingress: Vec<SuggestedRule>,
    /// Egress rules.
    pub egress: Vec<SuggestedRule>,
    /// Flows to or from the workload that need no rule, and why.
    pub notes: Vec<String>,
    /// All flows behind the policy.
    pub evidence: Evidence,
}

/// A workload that got no policy, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsuggested {
    /// The workload.
    pub workload: Workload,
    /// Why.
    pub why: NoSelector,
}

/// Why no selector was found for a workload.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoSelector {
    /// Its pods have no label in common but per-revision ones.
    #[error("its pods share no label that survives a rollout")]
    NoStableLabel,
    /// Every selector on its stable labels also selects pods of another workload (named).
    #[error("no selector on its stable labels tells it apart from {0}")]
    Clash(String),
}

/// Observed flows no rule was written for, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Uncovered {
    /// Failed TCP attempts (refused or never answered), left out unless asked for.
    pub failed: u64,
    /// ICMP: NetworkPolicy can allow it only by allowing every port of the peer.
    pub icmp: u64,
    /// An end in the cluster's ranges that nobody held: a rule on a pod address would outlive the pod.
    pub unattributed: u64,
    /// To a Service without backends, or a port it does not serve.
    pub unjudged: u64,
    /// An end's workload has no selector that survives rollouts and tells it apart (see
    /// [`Suggestion::unsuggested`]).
    pub no_selector: u64,
    /// The Admin tier decides it (an Admin Deny blocks it, or Admin Accepts decide every direction a
    /// NetworkPolicy could): no NetworkPolicy rule can change that, so none is written.
    pub admin_decided: u64,
}

impl Uncovered {
    /// Counts a flow left out for `why`.
    fn count(&mut self, why: &Coverage) {
        match why {
            Coverage::Failed => self.failed += 1,
            Coverage::Icmp => self.icmp += 1,
            Coverage::Unattributed => self.unattributed += 1,
            Coverage::Unjudged => self.unjudged += 1,
            Coverage::NoSelector => self.no_selector += 1,
            Coverage::AdminDecided => self.admin_decided += 1,
            Coverage::Covered | Coverage::OutOfScope => {}
        }
    }
}

/// What [`suggest`] found.
#[derive(Clone, Debug, Default)]
pub struct Suggestion {
    /// The policies, by namespace and name.
    pub policies: Vec<SuggestedPolicy>,
    /// Workloads with traffic that got no policy.
    pub unsuggested: Vec<Unsuggested>,
    /// Observed flows no rule covers.
    pub uncovered: Uncovered,
    /// The cluster DNS Service the DNS rule points at.
    pub dns: Option<String>,
    /// The Baseline-tier default deny (with [`SuggestOptions::baseline_deny`]).
    pub baseline: Option<ClusterPolicy>,
}

/// The name of the suggested Baseline-tier default deny.
pub const BASELINE_DENY_NAME: &str = "weir-baseline-deny";

/// The Baseline-tier default deny for `namespaces`: at the last priority (so any Baseline policy already in force
/// comes first), ingress from every pod and egress to every pod and address denied, for pods no NetworkPolicy
/// isolates in that direction. Traffic from nodes and the outside is not a pod peer, so kubelet probes and
/// ingress from outside stay as they were.
fn baseline_deny(namespaces: Vec<String>) -> ClusterPolicy {
    let rule = |peers: Vec<CnpPeer>| CnpRule {
        name: Some("deny-the-rest".to_owned()),
        action: Action::Deny,
        peers,
        ports: Vec::new(),
    };
    let all = || k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector::default();
    let everywhere = ["0.0.0.0/0", "::/0"]
        .iter()
        .filter_map(|c| Cidr::parse(c))
        .collect();
    ClusterPolicy {
        name: BASELINE_DENY_NAME.to_owned(),
        tier: Tier::Baseline,
        priority: 1000,
        subject: CnpSubject::Namespaces(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                match_expressions: Some(vec![
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                        key: weir_cluster::NAMESPACE_NAME_LABEL.to_owned(),
                        operator: "In".to_owned(),
                        values: Some(namespaces),
                    },
                ]),
                match_labels: None,
            },
        ),
        ingress: vec![rule(vec![CnpPeer::Namespaces(all())])],
        egress: vec![rule(vec![
            CnpPeer::Namespaces(all()),
            CnpPeer::Networks(everywhere),
        ])],
        origin: Origin::ClusterNetworkPolicy,
        source: std::sync::Arc::from("weir suggest"),
    }
}

/// The pods of each workload.
fn workload_pods(cluster: &ClusterState) -> BTreeMap<&Workload, Vec<PodId>> {
    let mut pods: BTreeMap<&Workload, Vec<PodId>> = BTreeMap::new();
    for (i, pod) in cluster.pods().iter().enumerate() {
        if !pod.host_network {
            pods.entry(&pod.workload).or_default().push(PodId(i as u32));
        }
    }
    pods
}

/// Selectors per workload: its pods' common labels without per-revision ones, narrowed to the recommended
/// `app.kubernetes.io/*` labels or `app` when those alone tell it apart from every other pod of its namespace.
pub(crate) struct Selectors<'a> {
    cluster: &'a ClusterState,
    pods: BTreeMap<&'a Workload, Vec<PodId>>,
    cache: BTreeMap<Workload, Result<Labels, NoSelector>>,
}

impl<'a> Selectors<'a> {
    pub(crate) fn new(cluster: &'a ClusterState) -> Selectors<'a> {
        Selectors {
            cluster,
            pods: workload_pods(cluster),
            cache: BTreeMap::new(),
        }
    }

    fn of(&mut self, workload: &Workload) -> Result<Labels, NoSelector> {
        if let Some(found) = self.cache.get(workload) {
            return found.clone();
        }
        let found = self.compute(workload);
        self.cache.insert(workload.clone(), found.clone());
        found
    }

    fn compute(&self, workload: &Workload) -> Result<Labels, NoSelector> {
        let cluster = self.cluster;
        let own = self.pods.get(workload).map(Vec::as_slice).unwrap_or(&[]);
        let mut common: Option<Labels> = None;
        for &p in own {
            let labels = &cluster.pod(p).labels;
            common = Some(match common {
                None => labels.clone(),
                Some(c) => c
                    .into_iter()
                    .filter(|(k, v)| labels.get(k) == Some(v))
                    .collect(),
            });
        }
        let common: Labels = common
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| !VOLATILE_LABELS.contains(&k.as_str()))
            .collect();
        if common.is_empty() {
            return Err(NoSelector::NoStableLabel);
        }
        let pick = |keys: &[&str]| -> Labels {
            common
                .iter()
                .filter(|(k, _)| keys.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let recommended: Labels = common
            .iter()
            .filter(|(k, _)| k.starts_with("app.kubernetes.io/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let candidates = [
            pick(&["app.kubernetes.io/name"]),
            pick(&["app.kubernetes.io/name", "app.kubernetes.io/instance"]),
            pick(&[
                "app.kubernetes.io/name",
                "app.kubernetes.io/instance",
                "app.kubernetes.io/component",
            ]),
            recommended,
            pick(&["app"]),
            pick(&["app", "component"]),
            common.clone(),
        ];
        let mut clash = None;
        for candidate in candidates.iter().filter(|c| !c.is_empty()) {
            match self.other_match(workload, candidate) {
                None => return Ok(candidate.clone()),
                Some(other) => clash = clash.or(Some(other)),
            }
        }
        Err(NoSelector::Clash(
            clash.map(|w| w.to_string()).unwrap_or_default(),
        ))
    }

    /// Another workload of the namespace with a pod the selector matches.
    fn other_match(&self, workload: &Workload, selector: &Labels) -> Option<&Workload> {
        self.cluster.pods().iter().find_map(|pod| {
            (pod.namespace == workload.namespace
                && pod.workload != *workload
                && selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v)))
            .then_some(&pod.workload)
        })
    }
}

/// The port to name in a rule for traffic to `pods` on `port`: the container port's name when every pod that
/// declares the number gives it the same name.
fn rule_port(cluster: &ClusterState, pods: &[PodId], port: u16, protocol: Protocol) -> RulePort {
    let mut names = BTreeSet::new();
    for &p in pods {
        for c in &cluster.pod(p).ports {
            if c.port == port && c.protocol == protocol {
                names.insert(c.name.clone());
            }
        }
    }
    match names.into_iter().collect::<Vec<_>>().as_slice() {
        [Some(name)] => RulePort::Name(name.clone()),
        _ => RulePort::Number(port),
    }
}

/// The cluster DNS: the Service with a ClusterIP serving 53/UDP that observed flows used most, else the one in
/// `kube-system`, else the first by name. Its backends and the ports they serve DNS on come from the snapshot.
fn find_dns(cluster: &ClusterState, flows: &[JudgedFlow]) -> Option<ServiceId> {
    let candidates: Vec<ServiceId> = cluster
        .services()
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            !s.cluster_ips.is_empty()
                && s.ports
                    .iter()
                    .any(|p| p.port == 53 && p.protocol == Protocol::UDP)
        })
        .map(|(i, _)| ServiceId(i as u32))
        .collect();
    let used = |id: ServiceId| {
        flows
            .iter()
            .filter(|f| f.service.is_some_and(|s| s.service == id))
            .count()
    };
    candidates.iter().copied().max_by_key(|&id| {
        let s = cluster.service(id);
        (
            used(id),
            s.namespace == "kube-system",
            std::cmp::Reverse(s.key()),
        )
    })
}

/// Which flows a suggestion must allow, and why a flow is left out.
pub(crate) enum Coverage {
    Covered,
    Failed,
    Icmp,
    Unattributed,
    Unjudged,
    /// An end's workload has no stable selector.
    NoSelector,
    /// The Admin tier decides it (see [`Uncovered::admin_decided`]).
    AdminDecided,
    /// Neither end is a workload in scope.
    OutOfScope,
}

/// The Admin-tier rule that decided a direction of a flow toward `pod` (the destination pod, or one of a
/// Service's backends), if one did.
fn admin_rule(flow: &JudgedFlow, direction: Direction, pod: Option<PodId>) -> Option<TierRuleRef> {
    let verdict = match &flow.judgement {
        Judgement::Judged { verdict, .. } => Some(*verdict),
        Judgement::Mixed(backends) => backends
            .iter()
            .find(|b| pod.is_some() && b.pod == pod)
            .map(|b| b.verdict),
        Judgement::Unjudged(_) => None,
    }?;
    match verdict.side(direction).0 {
        Decision::Tier(r) if r.tier == Tier::Admin => Some(r),
        _ => None,
    }
}

/// Whether the Admin tier settles a flow whatever NetworkPolicy says: an Admin Deny in a direction, or Admin
/// Accepts in every direction that has a pod subject to policy.
fn admin_settles(cluster: &ClusterState, flow: &JudgedFlow) -> bool {
    let destinations = destination_pods(cluster, flow);
    let pods: Vec<Option<PodId>> = if destinations.is_empty() {
        vec![None]
    } else {
        destinations.into_iter().map(Some).collect()
    };
    pods.iter().all(|&pod| {
        let egress = admin_rule(flow, Direction::Egress, pod);
        let ingress = admin_rule(flow, Direction::Ingress, pod);
        let denies = |r: Option<TierRuleRef>| r.is_some_and(|r| r.action == Action::Deny);
        let subject = |party: Party| matches!(party, Party::Pod(p) if !cluster.pod(p).host_network);
        let egress_open = subject(flow.source) && egress.is_none();
        let ingress_open = pod.is_some_and(|p| !cluster.pod(p).host_network) && ingress.is_none();
        denies(egress)
            || denies(ingress)
            || (!egress_open && !ingress_open && (egress.is_some() || ingress.is_some()))
    })
}

/// A TCP attempt the responder did not take (refused or unanswered): not evidence of a need. Other protocols
/// have no handshake to fail, so they always count.
fn failed(record: &FlowRecord) -> bool {
    record.proto == Protocol::TCP && !record.outcome().answered()
}

fn in_scope_pod(cluster: &ClusterState, party: Party, options: &SuggestOptions) -> bool {
    match party {
        Party::Pod(p) => {
            let pod = cluster.pod(p);
            !pod.host_network && options.in_scope(&pod.namespace)
        }
        _ => false,
    }
}

/// The pods a flow may have reached: its destination pod, or every backend the Service port could pick (the
/// ready ones, as the analysis judges them) when the capture does not say which.
fn destination_pods(cluster: &ClusterState, flow: &JudgedFlow) -> Vec<PodId> {
    match (flow.destination, flow.service) {
        (Party::Pod(p), _) => vec![p],
        (Party::Backends(_), Some(hit)) => {
            let Some((_, mut backends)) =
                cluster.resolve_service(hit.service, hit.port, flow.record.proto)
            else {
                return Vec::new();
            };
            if backends.iter().any(|b| b.ready) {
                backends.retain(|b| b.ready);
            }
            backends.iter().filter_map(|b| b.pod).collect()
        }
        _ => Vec::new(),
    }
}

pub(crate) fn coverage(
    cluster: &ClusterState,
    flow: &JudgedFlow,
    options: &SuggestOptions,
    selectors: &mut Selectors<'_>,
) -> Coverage {
    let backends_in_scope = matches!(flow.destination, Party::Backends(_))
        && destination_pods(cluster, flow)
            .into_iter()
            .any(|p| in_scope_pod(cluster, Party::Pod(p), options));
    if !in_scope_pod(cluster, flow.source, options)
        && !in_scope_pod(cluster, flow.destination, options)
        && !backends_in_scope
    {
        return Coverage::OutOfScope;
    }
    if matches!(flow.source, Party::Unknown) || matches!(flow.destination, Party::Unknown) {
        return Coverage::Unattributed;
    }
    if matches!(flow.source, Party::Service(_) | Party::Backends(_))
        || matches!(flow.destination, Party::Service(_))
    {
        return Coverage::Unjudged;
    }
    if flow.record.proto.is_icmp() || flow.judged_port().is_none() {
        return Coverage::Icmp;
    }
    if !options.include_failed && failed(&flow.record) {
        return Coverage::Failed;
    }
    if admin_settles(cluster, flow) {
        return Coverage::AdminDecided;
    }
    // A rule naming a pod end needs a selector for its workload; a workload without one gets no policy.
    let source_in_scope = in_scope_pod(cluster, flow.source, options);
    let mut ends: Vec<(PodId, bool)> = destination_pods(cluster, flow)
        .into_iter()
        .map(|p| (p, source_in_scope))
        .collect();
    if let Party::Pod(p) = flow.source {
        let any_destination_in_scope = destination_pods(cluster, flow)
            .into_iter()
            .any(|d| in_scope_pod(cluster, Party::Pod(d), options));
        ends.push((p, any_destination_in_scope || source_in_scope));
    }
    for (pod, named) in ends {
        if named && selectors.of(&cluster.pod(pod).workload).is_err() {
            return Coverage::NoSelector;
        }
    }
    Coverage::Covered
}

/// The verdict of a flow toward one destination pod (a Service's backend, when its backends disagree).
fn verdict_toward(flow: &JudgedFlow, pod: Option<PodId>) -> Verdict {
    match &flow.judgement {
        Judgement::Judged { verdict, .. } => *verdict,
        Judgement::Mixed(backends) => backends
            .iter()
            .find(|b| b.pod == pod)
            .or(backends.first())
            .map_or(
                Verdict::new(Decision::NotApplicable, Decision::NotApplicable),
                |b| b.verdict,
            ),
        Judgement::Unjudged(_) => Verdict::new(Decision::NotApplicable, Decision::NotApplicable),
    }
}

/// Rules of one direction of one policy while flows are added: peer → ports with evidence.
type RuleMap = BTreeMap<RulePeer, (BTreeSet<(Protocol, RulePort)>, Evidence)>;

#[derive(Default)]
struct Draft {
    ingress: RuleMap,
    egress: RuleMap,
    notes: BTreeSet<String>,
    evidence: Evidence,
}

/// Suggests policies for the workloads in scope from judged flows.
pub fn suggest(set: &PolicySet, flows: &[JudgedFlow], options: &SuggestOptions) -> Suggestion {
    let cluster = set.cluster();
    let mut selectors = Selectors::new(cluster);
    let mut drafts: BTreeMap<Workload, Draft> = BTreeMap::new();
    let mut suggestion = Suggestion::default();
    let dns = find_dns(cluster, flows);
    suggestion.dns = dns.map(|d| cluster.service(d).key());

    let describe = |party: Party, ip: IpAddr| -> String {
        match party {
            Party::Pod(p) => cluster.pod(p).workload.to_string(),
            Party::Node(n) => format!("node {}", cluster.node(n).name),
            Party::Backends(s) | Party::Service(s) => format!("svc {}", cluster.service(s).key()),
            Party::External | Party::Unknown => ip.to_string(),
        }
    };
    let block = |ip: IpAddr| -> Cidr {
        Cidr::around(
            ip,
            if ip.is_ipv4() {
                options.ipv4_prefix
            } else {
                options.ipv6_prefix
            },
        )
    };

    // Workloads that get no policy, and why (once each, in order).
    let mut unsuggested: BTreeMap<Workload, NoSelector> = BTreeMap::new();
    for flow in flows {
        match coverage(cluster, flow, options, &mut selectors) {
            Coverage::Covered => {}
            Coverage::NoSelector => {
                suggestion.uncovered.count(&Coverage::NoSelector);
                let source = match flow.source {
                    Party::Pod(p) => Some(p),
                    _ => None,
                };
                for pod in destination_pods(cluster, flow).into_iter().chain(source) {
                    let workload = &cluster.pod(pod).workload;
                    if let Err(why) = selectors.of(workload)
                        && options.in_scope(&workload.namespace)
                    {
                        unsuggested.entry(workload.clone()).or_insert(why);
                    }
                }
                continue;
            }
            other => {
                suggestion.uncovered.count(&other);
                continue;
            }
        }
        let record = &flow.record;
        let weight = options.weight_of(record);
        let proto = record.proto;
        // Covered flows have a port (see `coverage`).
        let Some(port) = flow.judged_port() else {
            continue;
        };
        let source_name = describe(flow.source, record.src);
        let destination_ip = flow.destination_ip();

        // The destination pods the connection may have reached (every backend when the capture does not say).
        let destinations = destination_pods(cluster, flow);

        // Egress of the source's workload, unless the Admin tier decides it (NetworkPolicy is not consulted).
        let admin_egress = destinations.first().copied().map_or_else(
            || admin_rule(flow, Direction::Egress, None),
            |d| admin_rule(flow, Direction::Egress, Some(d)),
        );
        if let (Party::Pod(src), Some(_)) = (flow.source, admin_egress)
            && in_scope_pod(cluster, flow.source, options)
        {
            let draft = drafts.entry(cluster.pod(src).workload.clone()).or_default();
            draft.notes.insert(format!(
                "egress to {} needs no rule: the Admin tier decides it ({})",
                describe(flow.destination, destination_ip),
                set.chain(
                    Direction::Egress,
                    &verdict_toward(flow, destinations.first().copied()),
                    &[]
                )
            ));
        } else if let Party::Pod(src) = flow.source
            && in_scope_pod(cluster, flow.source, options)
        {
            let src_pod = cluster.pod(src);
            let workload = src_pod.workload.clone();
            let mut peers: Vec<(RulePeer, RulePort)> = Vec::new();
            let mut note = None;
            match flow.destination {
                Party::Pod(_) | Party::Backends(_) => {
                    let mut by_workload: BTreeMap<&Workload, Vec<PodId>> = BTreeMap::new();
                    for &d in &destinations {
                        by_workload
                            .entry(&cluster.pod(d).workload)
                            .or_default()
                            .push(d);
                    }
                    for (dw, pods) in by_workload {
                        match selectors.of(dw) {
                            Ok(selector) => {
                                let namespace = (dw.namespace != workload.namespace)
                                    .then(|| dw.namespace.clone());
                                let port = backend_port(cluster, flow, &pods, port, proto);
                                peers.push((
                                    RulePeer::Pods {
                                        namespace,
                                        selector,
                                    },
                                    port,
                                ));
                            }
                            Err(why) => {
                                // The peer cannot be named by labels: its addresses would go stale.
                                note = Some(format!("egress to {dw} is not allowed: {why}"));
                            }
                        }
                    }
                }
                Party::Node(n) if src_pod.node == Some(n) => {
                    note = Some("traffic to its own node needs no rule".to_owned());
                }
                Party::Node(_) | Party::External => {
                    peers.push((
                        RulePeer::Block(block(destination_ip)),
                        RulePort::Number(port),
                    ));
                }
                _ => {}
            }
            let draft = drafts.entry(workload).or_default();
            draft.evidence.add(weight, source_name.clone());
            if let Some(n) = note {
                draft.notes.insert(n);
            }
            for (peer, rule_port) in peers {
                let entry = draft.egress.entry(peer).or_default();
                entry.0.insert((proto, rule_port));
                entry
                    .1
                    .add(weight, describe(flow.destination, destination_ip));
            }
        }

        // Ingress of each destination workload in scope.
        let mut seen_workloads = BTreeSet::new();
        for &d in &destinations {
            let dst_pod = cluster.pod(d);
            if !in_scope_pod(cluster, Party::Pod(d), options)
                || !seen_workloads.insert(&dst_pod.workload)
            {
                continue;
            }
            let workload = dst_pod.workload.clone();
            let pods: Vec<PodId> = destinations
                .iter()
                .copied()
                .filter(|&p| cluster.pod(p).workload == workload)
                .collect();
            let rule_port = backend_port(cluster, flow, &pods, port, proto);
            if admin_rule(flow, Direction::Ingress, Some(d)).is_some() {
                let draft = drafts.entry(workload).or_default();
                draft.notes.insert(format!(
                    "ingress from {source_name} needs no rule: the Admin tier decides it ({})",
                    set.chain(Direction::Ingress, &verdict_toward(flow, Some(d)), &[])
                ));
                continue;
            }
            let mut note = None;
            let peer = match flow.source {
                Party::Pod(s) => {
                    let sw = &cluster.pod(s).workload;
                    match selectors.of(sw) {
                        Ok(selector) => Some(RulePeer::Pods {
                            namespace: (sw.namespace != workload.namespace)
                                .then(|| sw.namespace.clone()),
                            selector,
                        }),
                        Err(why) => {
                            note = Some(format!("ingress from {sw} is not allowed: {why}"));
                            None
                        }
                    }
                }
                // From the node every possible destination pod runs on: the kubelet, always allowed.
                Party::Node(n) if pods.iter().all(|&p| cluster.pod(p).node == Some(n)) => {
                    note = Some(
                        "connections from its own node (kubelet probes) need no rule".to_owned(),
                    );
                    None
                }
                Party::Node(_) | Party::External => Some(RulePeer::Block(block(record.src))),
                _ => None,
            };
            let draft = drafts.entry(workload).or_default();
            draft.evidence.add(weight, source_name.clone());
            if let Some(n) = note {
                draft.notes.insert(n);
            }
            if let Some(peer) = peer {
                let entry = draft.ingress.entry(peer).or_default();
                entry.0.insert((proto, rule_port));
                entry.1.add(weight, source_name.clone());
            }
        }
    }

    // Workloads in scope with pods but no observed traffic get no policy: nothing says what they need.
    let dns_rule = dns.and_then(|d| dns_rule(cluster, d, &mut selectors));
    let mut names: BTreeMap<(String, String), u32> = BTreeMap::new();
    for workload in drafts.keys() {
        *names
            .entry((workload.namespace.clone(), workload.name.clone()))
            .or_default() += 1;
    }
    for (workload, draft) in drafts {
        let selector = match selectors.of(&workload) {
            Ok(s) => s,
            Err(why) => {
                unsuggested.entry(workload).or_insert(why);
                continue;
            }
        };
        let name = if names[&(workload.namespace.clone(), workload.name.clone())] > 1 {
            format!(
                "weir-{}-{}",
                workload.kind.to_string().to_lowercase(),
                workload.name
            )
        } else {
            format!("weir-{}", workload.name)
        };
        let finish = |rules: RuleMap| -> Vec<SuggestedRule> {
            rules
                .into_iter()
                .map(|(peer, (ports, evidence))| SuggestedRule {
                    peer,
                    ports: ports.into_iter().collect(),
                    evidence,
                    note: None,
                })
                .collect()
        };
        let mut egress = finish(draft.egress);
        if let Some(dns) = &dns_rule {
            // Observed DNS lookups fold into the DNS rule; it is there even when the capture shows none.
            let mut rule = dns.clone();
            if let Some(at) = egress.iter().position(|r| r.peer == dns.peer) {
                let observed = egress.remove(at);
                rule.evidence = observed.evidence;
                for p in observed.ports {
                    if !rule.ports.contains(&p) {
                        rule.ports.push(p);
                    }
                }
                rule.ports.sort();
            }
            egress.insert(0, rule);
        }
        suggestion.policies.push(SuggestedPolicy {
            name,
            selector,
            ingress: finish(draft.ingress),
            egress,
            notes: draft.notes.into_iter().collect(),
            evidence: draft.evidence,
            workload,
        });
    }
    suggestion.unsuggested = unsuggested
        .into_iter()
        .map(|(workload, why)| Unsuggested { workload, why })
        .collect();
    suggestion
        .policies
        .sort_by(|a, b| (&a.workload.namespace, &a.name).cmp(&(&b.workload.namespace, &b.name)));
    if options.baseline_deny {
        // Every namespace in scope with pods subject to policy, whether or not weir saw their traffic.
        let namespaces: BTreeSet<String> = cluster
            .running_pods()
            .map(|p| cluster.pod(p))
            .filter(|p| !p.host_network && options.in_scope(&p.namespace))
            .map(|p| p.namespace.clone())
            .collect();
        if !namespaces.is_empty() {
            suggestion.baseline = Some(baseline_deny(namespaces.into_iter().collect()));
        }
    }
    suggestion
}

/// The port to allow on backends `pods`: a Service flow's target port as the backends name it.
fn backend_port(
    cluster: &ClusterState,
    flow: &JudgedFlow,
    pods: &[PodId],
    port: u16,
    proto: Protocol,
) -> RulePort {
    match flow.service.map(|s| (s, flow.destination)) {
        // Several backends and no single target port: each backend's own port for the Service port.
        Some((hit, Party::Backends(_))) if hit.target_port.is_none() => pods
            .first()
            .and_then(|&p| {
                let ip = *cluster.pod(p).ips.first()?;
                let (_, backends) = cluster.resolve_service(hit.service, hit.port, proto)?;
                let b = backends.iter().find(|b| b.ip == ip)?;
                Some(rule_port(cluster, pods, b.port, proto))
            })
            .unwrap_or(RulePort::Number(port)),
        _ => rule_port(cluster, pods, port, proto),
    }
}

/// The DNS egress rule: the DNS Service's backends by labels, on the ports they serve DNS on.
fn dns_rule(
    cluster: &ClusterState,
    dns: ServiceId,
    selectors: &mut Selectors<'_>,
) -> Option<SuggestedRule> {
    let service = cluster.service(dns);
    let mut ports = BTreeSet::new();
    let mut backend_pods = BTreeSet::new();
    for p in service.ports.iter().filter(|p| p.port == 53) {
        let (_, backends) = cluster.resolve_service(dns, p.port, p.protocol)?;
        let pods: Vec<PodId> = backends.iter().filter_map(|b| b.pod).collect();
        for b in &backends {
            ports.insert((p.protocol, rule_port(cluster, &pods, b.port, p.protocol)));
        }
        backend_pods.extend(pods);
    }
    let workloads: BTreeSet<&Workload> = backend_pods
        .iter()
        .map(|&p| &cluster.pod(p).workload)
        .collect();
    // The backends' workload selector when there is one workload, else the Service's own selector.
    let selector = match workloads.iter().next() {
        Some(w) if workloads.len() == 1 => selectors.of(w).ok(),
        _ => None,
    }
    .or_else(|| service.selector.clone())?;
    Some(SuggestedRule {
        peer: RulePeer::Pods {
            namespace: Some(service.namespace.clone()),
            selector,
        },
        ports: ports.into_iter().collect(),
        evidence: Evidence::default(),
        note: Some(format!(
            "cluster DNS ({}): name lookups, allowed whether or not the capture shows them",
            service.key()
        )),
    })
}

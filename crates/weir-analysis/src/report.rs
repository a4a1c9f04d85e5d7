//! Findings from judged flows: what a person reads first.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use foldhash::{HashMap, HashSet};
use std::net::IpAddr;

use weir_cluster::{NodeId, ServiceId, Workload};
use weir_model::{EdgeVerdict, EndpointKey, Protocol, Timestamp};
use weir_policy::{Decision, Direction, Grounds, PolicySet};

use crate::analyze::{Analysis, JudgedFlow, Judgement, union};
use crate::attribute::Party;
use crate::book::{ConnectionVerdict, Decided, EdgeKey, EdgeStats};
pub use crate::group::Group;
use crate::json::{DecidedMemo, flow_verdict, policy_names};
use crate::scan::{Attempt, ScanDetector, ScanRule};

/// Flows between two groups on one port, with one classification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    /// The classification.
    pub class: EdgeVerdict,
    /// Initiators.
    pub from: Group,
    /// Responders.
    pub to: Group,
    /// The Service the flows went through (`namespace/name`), if any.
    pub service: Option<String>,
    /// Protocols and ports judged (after DNAT; no port for ICMP and the like), sorted.
    pub ports: Vec<(Protocol, Option<u16>)>,
    /// Flows.
    pub flows: u64,
    /// Flows that got any reply without a reset.
    pub answered: u64,
    /// Packets, both directions.
    pub packets: u64,
    /// IP bytes, both directions.
    pub bytes: u64,
    /// First packet.
    pub first: Timestamp,
    /// Last packet.
    pub last: Timestamp,
    /// Whether the source's egress denied (for denied edges).
    pub egress_denied: bool,
    /// Whether the destination's ingress denied (for denied edges).
    pub ingress_denied: bool,
    /// The deciding policies of the source's egress, `namespace/name`: the isolating ones when egress denied,
    /// the allowing ones for an allowed edge.
    pub egress_policies: Vec<String>,
    /// The same for the destination's ingress.
    pub ingress_policies: Vec<String>,
    /// Which side was not isolated, for edges allowed only because of it: (source egress, destination ingress).
    pub not_isolated: (bool, bool),
    /// For allowed edges no policy rule decided: why they are allowed anyway.
    pub exception: Option<&'static str>,
    /// How its flows were decided, per direction (tier and decision chain): the distinct ones, sorted, at
    /// most [`Edge::MAX_DECISIONS`] (the first in that order).
    pub decided: Vec<Arc<Decided>>,
    /// Its flows were decided in more ways than `decided` lists.
    pub decided_truncated: bool,
}

/// Sorted protocols and ports, each protocol with its ports: `22,80,443/TCP`, `53/UDP`, `ICMP`.
pub fn port_summary(ports: &[(Protocol, Option<u16>)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ports.len() {
        let proto = ports[i].0;
        let run = ports[i..].iter().take_while(|(p, _)| *p == proto).count();
        let numbers: Vec<String> = ports[i..i + run]
            .iter()
            .filter_map(|(_, n)| n.map(|n| n.to_string()))
            .collect();
        out.push(if numbers.is_empty() {
            proto.to_string()
        } else {
            format!("{}/{proto}", numbers.join(","))
        });
        i += run;
    }
    out
}

impl Edge {
    /// The most distinct ways of deciding an edge keeps.
    pub const MAX_DECISIONS: usize = 8;

    /// Each protocol with its ports: `22,80,443/TCP`, `53/UDP`, `ICMP`.
    pub fn port_summary(&self) -> Vec<String> {
        port_summary(&self.ports)
    }
}

/// A rule no observed flow used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnusedRule {
    /// The policy, `namespace/name`.
    pub policy: String,
    /// Ingress or egress.
    pub direction: Direction,
    /// The rule's index.
    pub rule: u16,
    /// The rule in one line.
    pub text: String,
    /// Whether any pod the policy selects appears in the observed flows (if not, the capture says nothing
    /// about the rule).
    pub pods_observed: bool,
}

/// An address in the cluster's ranges that no one in the snapshot held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnattributedAddress {
    /// The address.
    pub ip: IpAddr,
    /// Flows to or from it.
    pub flows: u64,
    /// Who talked to it.
    pub peers: Vec<String>,
}

/// A node address that the API does not list but a rule of weir's attributes to the node (its bridge, a CNI
/// tunnel device), seen in the traffic: shown so a reader can check the rule against their cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InferredNodeAddress {
    /// The address.
    pub ip: IpAddr,
    /// The node.
    pub node: String,
    /// The rule that made it the node's.
    pub source: weir_cluster::NodeAddressSource,
    /// Flows to or from it.
    pub flows: u64,
}

/// A source reaching many destinations or ports, mostly without an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    /// The source.
    pub source: Group,
    /// Its address.
    pub ip: IpAddr,
    /// Distinct (address, port) targets.
    pub targets: u64,
    /// Distinct addresses.
    pub hosts: u64,
    /// Distinct ports.
    pub ports: u64,
    /// Flows from it.
    pub flows: u64,
    /// Flows without an answer, or refused.
    pub failed: u64,
    /// Flows the policies deny.
    pub denied: u64,
    /// First attempt.
    pub first: Timestamp,
    /// Last attempt.
    pub last: Timestamp,
}

/// Totals over the judged flows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Flows.
    pub flows: u64,
    /// Packets, both directions.
    pub packets: u64,
    /// IP bytes, both directions.
    pub bytes: u64,
    /// First packet.
    pub first: Option<Timestamp>,
    /// Last packet.
    pub last: Option<Timestamp>,
    /// Flows allowed.
    pub allowed: u64,
    /// Of the allowed flows, those allowed only because an end is not isolated.
    pub allowed_not_isolated: u64,
    /// Flows denied.
    pub denied: u64,
    /// Flows to Services whose backends disagree.
    pub mixed: u64,
    /// Flows that could not be judged.
    pub unjudged: u64,
    /// Flows through a Service ClusterIP.
    pub via_service: u64,
    /// Post-DNAT records joined into their Service flow.
    pub dnat_joined: u64,
    /// Distinct pods seen at either end.
    pub pods_seen: u64,
    /// Flow ends at unknown addresses.
    pub unknown_ends: u64,
}

/// Everything the report shows.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Totals.
    pub totals: Totals,
    /// Every edge, findings first (denied, mixed, not isolated), then by flows.
    pub edges: Vec<Edge>,
    /// Namespaces with running pods and no NetworkPolicy at all, with their pod counts.
    pub namespaces_without_policy: Vec<(String, u64)>,
    /// Workloads in namespaces that have policies, whose pods no policy selects.
    pub workloads_without_policy: Vec<Workload>,
    /// Policies that select no pod.
    pub policies_selecting_nothing: Vec<String>,
    /// Rules no observed flow used.
    pub unused_rules: Vec<UnusedRule>,
    /// Unattributed addresses in the cluster's ranges.
    pub unattributed: Vec<UnattributedAddress>,
    /// Node addresses seen that a rule (not the API's node status) made the node's.
    pub inferred_node_addresses: Vec<InferredNodeAddress>,
    /// Outside addresses by flows (address, flows, initiated by them).
    pub external: Vec<(IpAddr, u64, u64)>,
    /// Suspected scans.
    pub scans: Vec<Scan>,
    /// The edge book: every edge by endpoint, protocol and port, counted as the live aggregator counts them,
    /// in key order (empty unless the builder kept it: [`ReportBuilder::with_edge_book`]; [`Report::new`] does).
    pub book: Vec<EdgeStats>,
}

/// Marks an index into [`PolicySet::tier_policies`] among NetworkPolicy indexes in an edge's policy lists.
const TIER_POLICY: u32 = 1 << 31;

/// The cluster-wide policy that decided a direction, as an edge's policy lists hold it.
fn tier_policy(decision: Decision) -> Option<u32> {
    match decision {
        Decision::Tier(r) | Decision::Undecided(r) => Some(r.policy | TIER_POLICY),
        _ => None,
    }
}

/// The policies behind a denial: the cluster-wide one whose rule denied, or the NetworkPolicies isolating the end.
fn deciding(decision: Decision, isolating: &[u32]) -> Vec<u32> {
    match tier_policy(decision) {
        Some(id) => vec![id],
        None => isolating.to_vec(),
    }
}

/// Whether a flow got an answer that was not a reset.
fn answered(flow: &JudgedFlow) -> bool {
    flow.record.outcome().answered()
}

/// How a judged flow counts in the report: denied, mixed, allowed only because an end is not isolated (no rule
/// allowed it in either direction), allowed, or not judged.
pub fn class_of(judgement: &Judgement) -> EdgeVerdict {
    match judgement {
        Judgement::Judged { verdict, .. } if !verdict.allowed() => EdgeVerdict::Denied,
        Judgement::Judged { verdict, .. } => {
            let by_rule = |d: Decision| match d {
                Decision::AllowedBy(_) => true,
                Decision::Tier(r) => r.action == weir_policy::Action::Accept,
                _ => false,
            };
            let open = |d: Decision| d == Decision::NotIsolated;
            if !by_rule(verdict.egress)
                && !by_rule(verdict.ingress)
                && (open(verdict.egress) || open(verdict.ingress))
            {
                EdgeVerdict::NotIsolated
            } else {
                EdgeVerdict::Allowed
            }
        }
        Judgement::Mixed(_) => EdgeVerdict::Mixed,
        Judgement::Unjudged(_) => EdgeVerdict::Unknown,
    }
}

/// Groups interned as small ids, so aggregating a flow hashes integers, not names.
struct Groups<'a> {
    cluster: &'a weir_cluster::ClusterState,
    list: Vec<Group>,
    index: HashMap<Group, u32>,
    by_pod: Vec<u32>,
    by_node: Vec<u32>,
    by_service: HashMap<(ServiceId, bool), u32>,
    by_address: HashMap<(IpAddr, bool), u32>,
}

const UNSET: u32 = u32::MAX;

impl<'a> Groups<'a> {
    fn new(cluster: &'a weir_cluster::ClusterState) -> Groups<'a> {
        Groups {
            cluster,
            list: Vec::new(),
            index: HashMap::default(),
            by_pod: vec![UNSET; cluster.pods().len()],
            by_node: vec![UNSET; cluster.nodes().len()],
            by_service: HashMap::default(),
            by_address: HashMap::default(),
        }
    }

    fn intern(&mut self, group: Group) -> u32 {
        if let Some(&id) = self.index.get(&group) {
            return id;
        }
        let id = self.list.len() as u32;
        self.list.push(group.clone());
        self.index.insert(group, id);
        id
    }

    /// The id of a party's group ([`Group::of`]), cached per pod, node, Service and address.
    fn id(&mut self, party: Party, ip: IpAddr) -> u32 {
        let cached = match party {
            Party::Pod(pod) => self.by_pod[pod.0 as usize],
            Party::Node(node) => self.by_node[node.0 as usize],
            Party::Backends(service) | Party::Service(service) => {
                let backends = matches!(party, Party::Backends(_));
                self.by_service
                    .get(&(service, backends))
                    .copied()
                    .unwrap_or(UNSET)
            }
            Party::External | Party::Unknown => self
                .by_address
                .get(&(ip, party == Party::Unknown))
                .copied()
                .unwrap_or(UNSET),
        };
        if cached != UNSET {
            return cached;
        }
        let id = self.intern(Group::of(self.cluster, party, ip));
        match party {
            Party::Pod(pod) => self.by_pod[pod.0 as usize] = id,
            Party::Node(node) => self.by_node[node.0 as usize] = id,
            Party::Backends(service) | Party::Service(service) => {
                self.by_service
                    .insert((service, matches!(party, Party::Backends(_))), id);
            }
            Party::External | Party::Unknown => {
                self.by_address.insert((ip, party == Party::Unknown), id);
            }
        }
        id
    }
}

/// An edge while flows are added to it.
struct EdgeAcc {
    ports: Vec<(Protocol, Option<u16>)>,
    flows: u64,
    answered: u64,
    packets: u64,
    bytes: u64,
    first: Timestamp,
    last: Timestamp,
    egress_denied: bool,
    ingress_denied: bool,
    egress_policies: Vec<u32>,
    ingress_policies: Vec<u32>,
    not_isolated: (bool, bool),
    exception: Option<&'static str>,
    /// The distinct ways its flows were decided, sorted, at most [`Edge::MAX_DECISIONS`]: the smallest ones, so
    /// the list does not depend on the order flows come in.
    decided: smallvec::SmallVec<[Arc<Decided>; 1]>,
    decided_truncated: bool,
    /// The grounds and verdict of the last flow added: the flows of an edge mostly share them, and adding the
    /// same ones again changes nothing. (The builder holds every grounds it saw, so the address stays theirs.)
    last_judged: Option<(GroundsId, weir_policy::Verdict)>,
}

impl EdgeAcc {
    fn note_decided(&mut self, d: Arc<Decided>) {
        if let Err(at) = self.decided.binary_search(&d) {
            self.decided.insert(at, d);
            if self.decided.len() > Edge::MAX_DECISIONS {
                self.decided.pop();
                self.decided_truncated = true;
            }
        }
    }

    fn add(
        &mut self,
        flow: &JudgedFlow,
        class: EdgeVerdict,
        port: Option<u16>,
        ok: bool,
        decided: impl FnOnce() -> Arc<Decided>,
    ) {
        let r = &flow.record;
        if self.ports.last() != Some(&(r.proto, port))
            && let Err(at) = self.ports.binary_search(&(r.proto, port))
        {
            self.ports.insert(at, (r.proto, port));
        }
        self.flows += 1;
        self.answered += u64::from(ok);
        self.packets = self.packets.saturating_add(r.total_packets());
        self.bytes = self.bytes.saturating_add(r.total_bytes());
        self.first = self.first.min(r.start);
        self.last = self.last.max(r.end);
        if let Judgement::Judged { verdict, grounds } = &flow.judgement {
            let judged = Some((grounds_id(grounds), *verdict));
            if self.last_judged == judged {
                return;
            }
            self.last_judged = judged;
        }
        if !matches!(flow.judgement, Judgement::Unjudged(_)) {
            self.note_decided(decided());
        }
        let mut denied = |verdict: &weir_policy::Verdict, grounds: &Grounds| {
            if !verdict.egress.allowed() {
                self.egress_denied = true;
                union(
                    &mut self.egress_policies,
                    deciding(verdict.egress, &grounds.egress_isolating),
                );
            }
            if !verdict.ingress.allowed() {
                self.ingress_denied = true;
                union(
                    &mut self.ingress_policies,
                    deciding(verdict.ingress, &grounds.ingress_isolating),
                );
            }
        };
        match &flow.judgement {
            Judgement::Judged { verdict, grounds } => match class {
                EdgeVerdict::Denied => denied(verdict, grounds),
                EdgeVerdict::NotIsolated => {
                    self.not_isolated.0 |= verdict.egress == Decision::NotIsolated;
                    self.not_isolated.1 |= verdict.ingress == Decision::NotIsolated;
                }
                _ => {
                    union(
                        &mut self.egress_policies,
                        grounds
                            .egress_allowing
                            .iter()
                            .map(|r| r.policy)
                            .chain(tier_policy(verdict.egress)),
                    );
                    union(
                        &mut self.ingress_policies,
                        grounds
                            .ingress_allowing
                            .iter()
                            .map(|r| r.policy)
                            .chain(tier_policy(verdict.ingress)),
                    );
                    let sides = [verdict.egress, verdict.ingress];
                    if !sides.iter().any(|d| {
                        matches!(
                            d,
                            Decision::AllowedBy(_) | Decision::Tier(_) | Decision::Undecided(_)
                        )
                    }) {
                        let why = if sides.contains(&Decision::SamePod) {
                            "a pod may always reach itself"
                        } else if sides.contains(&Decision::OwnNode) {
                            "a pod and its own node may always connect"
                        } else {
                            "no pod at either end"
                        };
                        // One fixed choice when an edge has several, whatever the order of its flows.
                        if self.exception.is_none_or(|e| why < e) {
                            self.exception = Some(why);
                        }
                    }
                }
            },
            Judgement::Mixed(backends) => {
                for b in backends {
                    denied(&b.verdict, &b.grounds);
                }
            }
            Judgement::Unjudged(_) => {}
        }
    }
}

impl EdgeAcc {
    fn merge(&mut self, other: EdgeAcc) {
        for port in other.ports {
            if let Err(at) = self.ports.binary_search(&port) {
                self.ports.insert(at, port);
            }
        }
        self.flows += other.flows;
        self.answered += other.answered;
        self.packets = self.packets.saturating_add(other.packets);
        self.bytes = self.bytes.saturating_add(other.bytes);
        self.first = self.first.min(other.first);
        self.last = self.last.max(other.last);
        self.egress_denied |= other.egress_denied;
        self.ingress_denied |= other.ingress_denied;
        union(&mut self.egress_policies, other.egress_policies);
        union(&mut self.ingress_policies, other.ingress_policies);
        self.not_isolated.0 |= other.not_isolated.0;
        self.not_isolated.1 |= other.not_isolated.1;
        self.decided_truncated |= other.decided_truncated;
        for d in other.decided {
            self.note_decided(d);
        }
        if let Some(why) = other.exception
            && self.exception.is_none_or(|e| why < e)
        {
            self.exception = Some(why);
        }
    }
}

impl ScanAcc {
    fn merge(&mut self, other: ScanAcc) {
        self.targets.extend(other.targets);
        self.flows += other.flows;
        self.denied += other.denied;
        if other.failed > 0 {
            (self.first, self.last) = if self.failed == 0 {
                (other.first, other.last)
            } else {
                (self.first.min(other.first), self.last.max(other.last))
            };
        }
        self.failed += other.failed;
    }
}

type GroupEdgeKey = (EdgeVerdict, u32, u32, Option<ServiceId>);

impl Report {
    /// Builds the report of an analysis, with its edge book.
    pub fn new(set: &PolicySet, analysis: &Analysis) -> Report {
        let mut builder = ReportBuilder::with_edge_book(set);
        for flow in &analysis.flows {
            builder.add(flow);
        }
        builder.add_dnat_joined(analysis.dnat_joined);
        builder.finish()
    }

    /// The edges of one class.
    pub fn edges_of(&self, class: EdgeVerdict) -> impl Iterator<Item = &Edge> {
        self.edges.iter().filter(move |e| e.class == class)
    }
}

/// A report built one flow at a time, so flows can be judged and counted as a capture is read and need not be
/// kept. The result does not depend on the order flows are added in.
pub struct ReportBuilder<'a> {
    set: &'a PolicySet,
    groups: Groups<'a>,
    totals: Totals,
    edges: HashMap<GroupEdgeKey, EdgeAcc>,
    pods_seen: Vec<bool>,
    // Grounds are shared between flows with the same verdict: walk each one's rules once.
    grounds_seen: HashMap<GroundsId, Arc<Grounds>>,
    /// The grounds noted last (held in `grounds_seen`, so the address cannot be reused).
    last_grounds: GroundsId,
    /// How judgements were decided, each way once.
    decided_memo: DecidedMemo,
    unknown: BTreeMap<IpAddr, (u64, BTreeSet<u32>)>,
    /// Flows at node addresses a rule (not the node's status) made the node's.
    inferred_nodes: BTreeMap<IpAddr, (NodeId, u64)>,
    external: HashMap<IpAddr, (u64, u64)>,
    fanout: HashMap<(u32, IpAddr), ScanAcc>,
    /// The one scan rule, over the capture's time.
    scans: ScanDetector,
    /// The edge book the live aggregator keeps, fed the same way, when asked for
    /// ([`ReportBuilder::with_edge_book`]).
    book: Option<BookFeed>,
}

/// The edge book while flows are counted into it: its edges found by interned endpoint ids (so counting a flow
/// hashes integers, not names), each counted by the [`EdgeStats`] rules the live engine uses.
#[derive(Default)]
struct BookFeed {
    edges: Vec<EdgeStats>,
    /// Each edge's source and destination endpoint ids.
    ends: Vec<(u32, u32)>,
    /// Edges by source and destination endpoint, protocol and port.
    ids: HashMap<(u32, u32, Protocol, Option<u16>), usize>,
    /// What each edge last took its verdict, policies and Service from: the same again changes nothing.
    last: Vec<Option<LastJudged>>,
    /// Endpoints, interned: two groups that name the same endpoint (a workload seen both with and without its
    /// ReplicaSet in the snapshot) count on one edge, as the live book's keys make them.
    endpoints: Vec<EndpointKey>,
    endpoint_ids: HashMap<EndpointKey, u32>,
    /// The endpoint of each group id, once looked up.
    endpoint_of_group: Vec<u32>,
    /// The deciding policies and how each direction was decided, of each judgement seen, by identity (many
    /// edges share one).
    policy_names: HashMap<(GroundsId, weir_policy::Verdict), EdgeWords>,
    decided_memo: DecidedMemo,
}

/// A judgement's grounds by identity: the address of the shared grounds, which the builder holds in
/// `grounds_seen` so it cannot be reused while the builder lives. (An address as a number, not a pointer, so a
/// builder can be handed from the thread that built it to the one that merges.)
type GroundsId = usize;

fn grounds_id(g: &Arc<Grounds>) -> GroundsId {
    Arc::as_ptr(g) as usize
}

/// The deciding policies of a judgement, and how each direction was decided, as an edge keeps them.
type EdgeWords = (Vec<String>, Arc<Decided>);

/// A judgement by identity: its grounds (held in `grounds_seen`, so the address stays theirs), its verdict and
/// the Service it went through.
type LastJudged = (GroundsId, weir_policy::Verdict, Option<ServiceId>);

impl<'a> ReportBuilder<'a> {
    /// An empty report on a policy set's cluster.
    pub fn new(set: &'a PolicySet) -> ReportBuilder<'a> {
        let cluster = set.cluster();
        ReportBuilder {
            set,
            groups: Groups::new(cluster),
            totals: Totals::default(),
            edges: HashMap::default(),
            pods_seen: vec![false; cluster.pods().len()],
            grounds_seen: HashMap::default(),
            last_grounds: 0,
            decided_memo: DecidedMemo::default(),
            unknown: BTreeMap::new(),
            inferred_nodes: BTreeMap::new(),
            external: HashMap::default(),
            fanout: HashMap::default(),
            scans: ScanDetector::deferred(ScanRule::default()),
            book: None,
        }
    }

    /// An empty report that also keeps the edge book ([`Report::book`]): what the JSON document shows, and
    /// more work per flow than the findings, so only when it is wanted.
    pub fn with_edge_book(set: &'a PolicySet) -> ReportBuilder<'a> {
        ReportBuilder {
            book: Some(BookFeed::default()),
            ..ReportBuilder::new(set)
        }
    }

    /// The policy set flows are judged against.
    pub fn policy_set(&self) -> &'a PolicySet {
        self.set
    }

    /// Counts post-DNAT records that were folded into their Service flow.
    pub fn add_dnat_joined(&mut self, records: u64) {
        self.totals.dnat_joined += records;
    }

    /// Flows added so far.
    pub fn flows(&self) -> u64 {
        self.totals.flows
    }

    /// Adds what another builder on the same policy set counted, as if its flows had been added here.
    pub fn merge(&mut self, other: ReportBuilder<'a>) {
        let remap: Vec<u32> = other
            .groups
            .list
            .into_iter()
            .map(|g| self.groups.intern(g))
            .collect();
        let id = |g: u32| remap[g as usize];
        let (mine, theirs) = (&mut self.totals, other.totals);
        mine.flows += theirs.flows;
        mine.packets = mine.packets.saturating_add(theirs.packets);
        mine.bytes = mine.bytes.saturating_add(theirs.bytes);
        mine.first = match (mine.first, theirs.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        mine.last = mine.last.max(theirs.last);
        mine.allowed += theirs.allowed;
        mine.allowed_not_isolated += theirs.allowed_not_isolated;
        mine.denied += theirs.denied;
        mine.mixed += theirs.mixed;
        mine.unjudged += theirs.unjudged;
        mine.via_service += theirs.via_service;
        mine.dnat_joined += theirs.dnat_joined;
        mine.unknown_ends += theirs.unknown_ends;
        for ((class, from, to, service), acc) in other.edges {
            match self.edges.entry((class, id(from), id(to), service)) {
                std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().merge(acc),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(acc);
                }
            }
        }
        for (seen, theirs) in self.pods_seen.iter_mut().zip(other.pods_seen) {
            *seen |= theirs;
        }
        self.grounds_seen.extend(other.grounds_seen);
        for (ip, (flows, peers)) in other.unknown {
            let entry = self.unknown.entry(ip).or_default();
            entry.0 += flows;
            entry.1.extend(peers.into_iter().map(id));
        }
        for (ip, (node, flows)) in other.inferred_nodes {
            self.inferred_nodes.entry(ip).or_insert((node, 0)).1 += flows;
        }
        for (ip, (flows, initiated)) in other.external {
            let entry = self.external.entry(ip).or_default();
            entry.0 += flows;
            entry.1 += initiated;
        }
        for ((source, ip), acc) in other.fanout {
            self.fanout.entry((id(source), ip)).or_default().merge(acc);
        }
        self.scans.merge(other.scans);
        match (&mut self.book, other.book) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, Some(theirs)) => *mine = Some(theirs),
            (_, None) => {}
        }
    }

    /// Adds one judged flow.
    pub fn add(&mut self, flow: &JudgedFlow) {
        let ReportBuilder {
            set,
            groups,
            totals,
            edges,
            pods_seen,
            grounds_seen,
            last_grounds,
            decided_memo,
            unknown,
            inferred_nodes,
            external,
            fanout,
            scans,
            book,
            ..
        } = self;
        {
            let r = &flow.record;
            totals.flows += 1;
            totals.packets = totals.packets.saturating_add(r.total_packets());
            totals.bytes = totals.bytes.saturating_add(r.total_bytes());
            totals.first = Some(totals.first.map_or(r.start, |t| t.min(r.start)));
            totals.last = Some(totals.last.map_or(r.end, |t| t.max(r.end)));
            totals.via_service += u64::from(flow.service.is_some());
            let class = class_of(&flow.judgement);
            match class {
                EdgeVerdict::Denied => totals.denied += 1,
                EdgeVerdict::Mixed => totals.mixed += 1,
                EdgeVerdict::NotIsolated => {
                    totals.allowed += 1;
                    totals.allowed_not_isolated += 1;
                }
                EdgeVerdict::Allowed => totals.allowed += 1,
                EdgeVerdict::Unknown => totals.unjudged += 1,
            }
            for party in [flow.source, flow.destination] {
                if let Party::Pod(pod) = party {
                    pods_seen[pod.0 as usize] = true;
                }
            }
            let mut note = |g: &Arc<Grounds>| {
                if grounds_id(g) != *last_grounds {
                    *last_grounds = grounds_id(g);
                    grounds_seen
                        .entry(grounds_id(g))
                        .or_insert_with(|| Arc::clone(g));
                }
            };
            match &flow.judgement {
                Judgement::Judged { grounds, .. } => note(grounds),
                Judgement::Mixed(backends) => backends.iter().for_each(|b| note(&b.grounds)),
                Judgement::Unjudged(_) => {}
            }

            let destination_ip = flow.destination_ip();
            let from = groups.id(flow.source, r.src);
            let to = groups.id(flow.destination, destination_ip);
            for (party, ip, peer) in [
                (flow.source, r.src, to),
                (flow.destination, destination_ip, from),
            ] {
                match party {
                    Party::Unknown => {
                        totals.unknown_ends += 1;
                        let entry = unknown.entry(ip).or_default();
                        entry.0 += 1;
                        entry.1.insert(peer);
                    }
                    Party::External => {
                        let entry = external.entry(ip).or_default();
                        entry.0 += 1;
                        entry.1 += u64::from(ip == r.src);
                    }
                    Party::Node(node)
                        if groups
                            .cluster
                            .node(node)
                            .address_source(ip)
                            .is_some_and(|s| !s.is_listed()) =>
                    {
                        inferred_nodes.entry(ip).or_insert((node, 0)).1 += 1;
                    }
                    _ => {}
                }
            }
            let port = flow.judged_port().filter(|_| !r.proto.is_icmp());
            let ok = answered(flow);
            scans.count(&Attempt::of(flow), r.start);
            let acc = fanout.entry((from, r.src)).or_default();
            acc.targets.insert((destination_ip, port));
            acc.flows += 1;
            acc.denied += u64::from(class == EdgeVerdict::Denied);
            if !ok {
                // The span of the failures, which is the scan, not the source's ordinary traffic.
                acc.first = if acc.failed == 0 {
                    r.start
                } else {
                    acc.first.min(r.start)
                };
                acc.last = if acc.failed == 0 {
                    r.end
                } else {
                    acc.last.max(r.end)
                };
                acc.failed += 1;
            }

            if let Some(book) = book {
                book.count(set, groups, flow, (from, to, port), class, ok);
            }

            let key = (class, from, to, flow.service.map(|s| s.service));
            edges
                .entry(key)
                .or_insert_with(|| EdgeAcc {
                    ports: Vec::new(),
                    flows: 0,
                    answered: 0,
                    packets: 0,
                    bytes: 0,
                    first: r.start,
                    last: r.end,
                    egress_denied: false,
                    ingress_denied: false,
                    egress_policies: Vec::new(),
                    ingress_policies: Vec::new(),
                    not_isolated: (false, false),
                    exception: None,
                    decided: smallvec::SmallVec::new(),
                    decided_truncated: false,
                    last_judged: None,
                })
                .add(flow, class, port, ok, || {
                    decided_memo.get(set, &flow.judgement)
                });
        }
    }

    /// The report.
    pub fn finish(self) -> Report {
        let ReportBuilder {
            set,
            groups,
            mut totals,
            edges,
            pods_seen,
            grounds_seen,
            unknown,
            inferred_nodes,
            external,
            fanout,
            scans: mut detector,
            last_grounds: _,
            decided_memo: _,
            book,
        } = self;
        detector.settle();
        let cluster = set.cluster();
        totals.pods_seen = pods_seen.iter().filter(|&&s| s).count() as u64;
        let mut used_rules: HashSet<(u32, Direction, u16)> = HashSet::default();
        for g in grounds_seen.values() {
            for rule in &g.egress_allowing {
                used_rules.insert((rule.policy, Direction::Egress, rule.rule));
            }
            for rule in &g.ingress_allowing {
                used_rules.insert((rule.policy, Direction::Ingress, rule.rule));
            }
        }

        // Sorted, so the report is the same whatever order flows came in.
        let keys = |ids: &[u32]| -> Vec<String> {
            let mut keys: Vec<String> = ids
                .iter()
                .map(|&i| match i & TIER_POLICY {
                    0 => set.policies()[i as usize].key(),
                    _ => set.tier_policies()[(i & !TIER_POLICY) as usize].key(),
                })
                .collect();
            keys.sort_unstable();
            keys
        };
        // Edges are ordered by class, flows, then names; names are ranked once, so sorting compares integers.
        let mut group_rank = vec![0u32; groups.list.len()];
        let mut by_name: Vec<u32> = (0..groups.list.len() as u32).collect();
        by_name.sort_by(|&a, &b| groups.list[a as usize].cmp(&groups.list[b as usize]));
        for (rank, &id) in by_name.iter().enumerate() {
            group_rank[id as usize] = rank as u32;
        }
        let mut service_rank = vec![0u32; cluster.services().len()];
        let mut services: Vec<usize> = (0..cluster.services().len()).collect();
        services.sort_by_cached_key(|&s| cluster.services()[s].key());
        for (rank, &s) in services.iter().enumerate() {
            service_rank[s] = rank as u32;
        }
        let mut edges: Vec<(GroupEdgeKey, EdgeAcc)> = edges.into_iter().collect();
        edges.sort_unstable_by_key(|((class, from, to, service), acc)| {
            (
                *class,
                std::cmp::Reverse(acc.flows),
                group_rank[*from as usize],
                group_rank[*to as usize],
                service.map(|s| service_rank[s.0 as usize]),
            )
        });
        let edges: Vec<Edge> = edges
            .into_iter()
            .map(|((class, from, to, service), acc)| Edge {
                class,
                from: groups.list[from as usize].clone(),
                to: groups.list[to as usize].clone(),
                service: service.map(|s| cluster.service(s).key()),
                ports: acc.ports,
                flows: acc.flows,
                answered: acc.answered,
                packets: acc.packets,
                bytes: acc.bytes,
                first: acc.first,
                last: acc.last,
                egress_denied: acc.egress_denied,
                ingress_denied: acc.ingress_denied,
                egress_policies: keys(&acc.egress_policies),
                ingress_policies: keys(&acc.ingress_policies),
                not_isolated: acc.not_isolated,
                exception: acc.exception,
                decided: acc.decided.into_vec(),
                decided_truncated: acc.decided_truncated,
            })
            .collect();

        // Which policies select which pods, for unprotected pods, idle policies and unused rules.
        let mut selecting_anything = vec![false; set.policies().len()];
        let mut selecting_observed = vec![false; set.policies().len()];
        let mut unselected: BTreeSet<&Workload> = BTreeSet::new();
        let mut pods_per_namespace: BTreeMap<&str, u64> = BTreeMap::new();
        for id in cluster.running_pods() {
            let (pod, index) = (cluster.pod(id), id.0 as usize);
            *pods_per_namespace
                .entry(pod.namespace.as_str())
                .or_default() += 1;
            let (ingress, egress) = set.isolating(id);
            if ingress.is_empty() && egress.is_empty() {
                unselected.insert(&pod.workload);
            }
            for &p in ingress.iter().chain(egress) {
                selecting_anything[p as usize] = true;
                selecting_observed[p as usize] |= pods_seen[index];
            }
        }
        let namespaces_with_policy: HashSet<&str> = set
            .policies()
            .iter()
            .map(|p| p.namespace.as_str())
            .collect();
        let namespaces_without_policy = pods_per_namespace
            .iter()
            .filter(|(ns, _)| !namespaces_with_policy.contains(**ns))
            .map(|(ns, n)| ((*ns).to_owned(), *n))
            .collect();
        let workloads_without_policy = unselected
            .into_iter()
            .filter(|w| namespaces_with_policy.contains(w.namespace.as_str()))
            .cloned()
            .collect();
        let mut unused_rules = Vec::new();
        let mut policies_selecting_nothing = Vec::new();
        for (index, policy) in set.policies().iter().enumerate() {
            if !selecting_anything[index] {
                policies_selecting_nothing.push(policy.key());
                continue;
            }
            for direction in [Direction::Ingress, Direction::Egress] {
                for rule in 0..policy.rules(direction).len() as u16 {
                    if !used_rules.contains(&(index as u32, direction, rule)) {
                        unused_rules.push(UnusedRule {
                            policy: policy.key(),
                            direction,
                            rule,
                            text: set.describe_rule(direction, index as u32, rule),
                            pods_observed: selecting_observed[index],
                        });
                    }
                }
            }
        }

        let unattributed = unknown
            .into_iter()
            .map(|(ip, (flows, peers))| UnattributedAddress {
                ip,
                flows,
                peers: {
                    let mut peers: Vec<String> = peers
                        .into_iter()
                        .map(|g| groups.list[g as usize].to_string())
                        .collect();
                    peers.sort_unstable();
                    peers
                },
            })
            .collect();
        let mut external: Vec<(IpAddr, u64, u64)> = external
            .into_iter()
            .map(|(ip, (n, i))| (ip, n, i))
            .collect();
        external.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut scans: Vec<Scan> = fanout
            .into_iter()
            .filter_map(|((source, ip), acc)| {
                let source = groups.list[source as usize].clone();
                let targets = acc.targets.len() as u64;
                // The decision is the one rule's, over the capture's time; the row sums up the source's
                // whole capture.
                detector.is_scanner(ip).then(|| Scan {
                    source,
                    ip,
                    targets,
                    hosts: acc
                        .targets
                        .iter()
                        .map(|t| t.0)
                        .collect::<HashSet<_>>()
                        .len() as u64,
                    ports: acc
                        .targets
                        .iter()
                        .map(|t| t.1)
                        .collect::<HashSet<_>>()
                        .len() as u64,
                    flows: acc.flows,
                    failed: acc.failed,
                    denied: acc.denied,
                    first: acc.first,
                    last: acc.last,
                })
            })
            .collect();
        scans.sort_by(|a, b| {
            b.targets
                .cmp(&a.targets)
                .then(a.ip.cmp(&b.ip))
                .then_with(|| a.source.cmp(&b.source))
        });
        let cluster = set.cluster();
        let inferred_node_addresses = inferred_nodes
            .into_iter()
            .filter_map(|(ip, (node, flows))| {
                let node = cluster.node(node);
                Some(InferredNodeAddress {
                    ip,
                    node: node.name.clone(),
                    source: node.address_source(ip)?.clone(),
                    flows,
                })
            })
            .collect();
        Report {
            totals,
            edges,
            namespaces_without_policy,
            workloads_without_policy,
            policies_selecting_nothing,
            unused_rules,
            unattributed,
            inferred_node_addresses,
            external,
            scans,
            book: book.map(BookFeed::finish).unwrap_or_default(),
        }
    }
}

impl BookFeed {
    fn intern(&mut self, key: EndpointKey) -> u32 {
        if let Some(&id) = self.endpoint_ids.get(&key) {
            return id;
        }
        let id = self.endpoints.len() as u32;
        self.endpoints.push(key.clone());
        self.endpoint_ids.insert(key, id);
        id
    }

    fn endpoint(&mut self, groups: &Groups<'_>, group: u32) -> u32 {
        let g = group as usize;
        if self.endpoint_of_group.len() <= g {
            self.endpoint_of_group
                .resize(groups.list.len().max(g + 1), UNSET);
        }
        if self.endpoint_of_group[g] == UNSET {
            self.endpoint_of_group[g] = self.intern(groups.list[g].endpoint_key());
        }
        self.endpoint_of_group[g]
    }

    /// Counts a judged flow as the live engine counts a connection seen from one end: each flow is one
    /// connection, delivered when answered, an enforcement gap when also denied.
    fn count(
        &mut self,
        set: &PolicySet,
        groups: &Groups<'_>,
        flow: &JudgedFlow,
        (from, to, port): (u32, u32, Option<u16>),
        class: EdgeVerdict,
        answered: bool,
    ) {
        let r = &flow.record;
        let verdict = flow_verdict(&flow.judgement);
        let not_isolated = class == EdgeVerdict::NotIsolated;
        let (src, dst) = (self.endpoint(groups, from), self.endpoint(groups, to));
        let i = match self.ids.get(&(src, dst, r.proto, port)) {
            Some(&i) => i,
            None => {
                let key = EdgeKey {
                    src: self.endpoints[src as usize].clone(),
                    dst: self.endpoints[dst as usize].clone(),
                    proto: r.proto,
                    port,
                };
                let first = ConnectionVerdict {
                    verdict,
                    not_isolated,
                    policies: &[],
                    decided: &Arc::default(),
                    service: None,
                };
                self.edges.push(EdgeStats::new(key, r, first, false));
                self.ends.push((src, dst));
                self.last.push(None);
                self.ids
                    .insert((src, dst, r.proto, port), self.edges.len() - 1);
                self.edges.len() - 1
            }
        };
        let BookFeed {
            edges,
            last,
            policy_names: names,
            decided_memo,
            ..
        } = self;
        let Some(e) = edges.get_mut(i) else {
            return;
        };
        // The latest flow (by end, then a fixed order) gives the sample and the last verdict, so the book is the
        // same whatever order the flows came in.
        let latest = e.count_volume_keeping_latest(r);
        e.count_verdict(verdict);
        if answered {
            e.delivered += 1;
            e.enforcement_gaps += u64::from(verdict == weir_model::FlowVerdict::Denied);
        }
        if let Some(o) = &r.observed_at {
            e.add_node(&o.node);
        }
        let service = flow.service.map(|s| s.service);
        let judged = match &flow.judgement {
            Judgement::Judged { verdict, grounds } => {
                Some((grounds_id(grounds), *verdict, service))
            }
            _ => None,
        };
        if judged.is_none() || last[i] != judged {
            let service = service.map(|s| set.cluster().service(s).key());
            if latest {
                let fresh;
                let mut words = || {
                    (
                        policy_names(set, &flow.judgement),
                        decided_memo.get(set, &flow.judgement),
                    )
                };
                let (policies, how) = match judged {
                    Some((grounds, v, _)) => names.entry((grounds, v)).or_insert_with(words),
                    None => {
                        fresh = words();
                        &fresh
                    }
                };
                e.set_last_verdict(ConnectionVerdict {
                    verdict,
                    not_isolated,
                    policies,
                    decided: how,
                    service: service.as_deref(),
                });
                last[i] = judged;
            } else if let Some(s) = service
                && !e.services.contains(&s)
            {
                e.services.push(s);
            }
        }
    }

    /// Adds another builder's book, as if its flows had been counted here ([`EdgeStats::merge`] per edge).
    fn merge(&mut self, other: BookFeed) {
        let remap: Vec<u32> = other
            .endpoints
            .into_iter()
            .map(|key| self.intern(key))
            .collect();
        for (e, (src, dst)) in other.edges.into_iter().zip(other.ends) {
            let (src, dst) = (remap[src as usize], remap[dst as usize]);
            let id = (src, dst, e.key.proto, e.key.port);
            match self.ids.get(&id) {
                Some(&i) => {
                    self.edges[i].merge(e);
                    // Its last verdict may now be the other's: worked out again on its next flow.
                    self.last[i] = None;
                }
                None => {
                    self.edges.push(e);
                    self.ends.push((src, dst));
                    self.last.push(None);
                    self.ids.insert(id, self.edges.len() - 1);
                }
            }
        }
    }

    /// The edges in key order (sorted on ranked integers, not names), each edge's Services sorted.
    fn finish(self) -> Vec<EdgeStats> {
        let mut by_key: Vec<u32> = (0..self.endpoints.len() as u32).collect();
        by_key
            .sort_unstable_by(|&a, &b| self.endpoints[a as usize].cmp(&self.endpoints[b as usize]));
        let mut rank = vec![0u32; by_key.len()];
        for (r, &id) in by_key.iter().enumerate() {
            rank[id as usize] = r as u32;
        }
        let mut order: Vec<usize> = (0..self.edges.len()).collect();
        let sort_key = |i: usize| {
            let (src, dst) = self.ends[i];
            let k = &self.edges[i].key;
            (rank[src as usize], rank[dst as usize], k.proto, k.port)
        };
        order.sort_unstable_by_key(|&i| sort_key(i));
        // In place, along the permutation's cycles: each edge moves about once, and nothing is allocated.
        let mut edges = self.edges;
        for start in 0..order.len() {
            let mut at = start;
            while order[at] != usize::MAX {
                let from = order[at];
                order[at] = usize::MAX;
                if from == start {
                    break;
                }
                edges.swap(at, from);
                at = from;
            }
        }
        for e in &mut edges {
            e.services.sort_unstable();
        }
        edges
    }
}

#[derive(Default)]
struct ScanAcc {
    targets: HashSet<(IpAddr, Option<u16>)>,
    flows: u64,
    failed: u64,
    denied: u64,
    first: Timestamp,
    last: Timestamp,
}

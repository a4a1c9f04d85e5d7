//! The verdict engine.
//!
//! A verdict depends on an endpoint only through a few facts: which policies select it for ingress and for
//! egress, which policy peers match it (selector peers by its namespace and labels, ipBlock peers by its
//! address), and which container ports it names. [`PolicySet::new`] computes those facts once per pod address
//! and interns equal sets as one *identity*; the replicas of a Deployment usually share one. A verdict is then a
//! pure function of (source identity, destination identity, port, protocol), which [`VerdictCache`] memoizes,
//! so judging a flow on a warm cache is two address lookups and one hash probe. Two facts are not part of an
//! identity and are applied after the cache: a pod may always reach itself, and a pod and its own node may
//! always reach each other (both per the Kubernetes documentation).
//!
//! The set is immutable and `Sync`; each worker keeps its own cache.

use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use foldhash::fast::FixedState;
use hashbrown::HashMap;
use weir_cluster::cnp::{self as cnp, Action, Tier};
use weir_cluster::{ClusterState, ContainerPort, IpOwner, NodeAddressSource, NodeId, PodId};
use weir_model::Protocol;

use crate::compile::{
    self, CompiledPolicy, Direction, Peer, PolicyError, PortMatch, PortSpec, Rule,
};
use crate::tier::{self, Effect, TierPeer, TierPolicy, TierRule};

type Map<K, V> = HashMap<K, V, FixedState>;

/// What an address is, for policy purposes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A pod with its own network namespace: subject to NetworkPolicy.
    Pod(PodId),
    /// A node, or a hostNetwork pod on it (they share its address): not subject to NetworkPolicy, and only
    /// ipBlock peers match it.
    Node(NodeId),
    /// Anything else: outside the cluster, or not in the snapshot.
    External,
}

/// A reference to one rule of a policy, with the peer and port entries that matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleRef {
    /// Index into [`PolicySet::policies`].
    pub policy: u32,
    /// Index into the policy's ingress or egress rules.
    pub rule: u16,
    peer: u16,
    port: u16,
}

const ALL: u16 = u16::MAX;

impl RuleRef {
    /// The index of the matching entry of the rule's `from`/`to`, or `None` when the rule has no peers
    /// (it matches every peer).
    pub fn peer(&self) -> Option<u16> {
        (self.peer != ALL).then_some(self.peer)
    }

    /// The index of the matching entry of the rule's `ports`, or `None` when the rule lists no ports.
    pub fn port(&self) -> Option<u16> {
        (self.port != ALL).then_some(self.port)
    }
}

/// A reference to one rule of a cluster-wide policy (ClusterNetworkPolicy, or a translated
/// AdminNetworkPolicy or BaselineAdminNetworkPolicy), with its tier and action and the entries that matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TierRuleRef {
    /// Index into [`PolicySet::tier_policies`].
    pub policy: u32,
    /// Index into the policy's ingress or egress rules.
    pub rule: u8,
    /// The policy's tier.
    pub tier: Tier,
    /// The rule's action, as evaluated (a rule failed closed to "deny all" is a Deny).
    pub action: Action,
    peer: u8,
    port: u8,
}

const ALL8: u8 = u8::MAX;

impl TierRuleRef {
    /// The index of the entry of the rule's `from`/`to` that matched, or `None` when every peer counts (a rule
    /// failed closed to "deny all").
    pub fn peer(&self) -> Option<u8> {
        (self.peer != ALL8).then_some(self.peer)
    }

    /// The index of the entry of the rule's `protocols` that matched, or `None` when the rule has none.
    pub fn port(&self) -> Option<u8> {
        (self.port != ALL8).then_some(self.port)
    }
}

/// The tier that decided one direction of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DecidingTier {
    /// No policy of any tier decided: the default (allowed), or the end is not subject to policy.
    Default,
    /// An Admin-tier rule (Accept or Deny).
    Admin,
    /// NetworkPolicy (the end is isolated in this direction).
    NetworkPolicy,
    /// A Baseline-tier rule (Accept, Deny, or Pass to the default).
    Baseline,
}

impl DecidingTier {
    /// `default`, `admin`, `networkpolicy` or `baseline`: the name in JSON.
    pub fn name(self) -> &'static str {
        match self {
            DecidingTier::Default => "default",
            DecidingTier::Admin => "admin",
            DecidingTier::NetworkPolicy => "networkpolicy",
            DecidingTier::Baseline => "baseline",
        }
    }
}

/// How one direction (the source's egress or the destination's ingress) judged a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// That end is not a pod subject to policy (external, a node, a hostNetwork pod).
    NotApplicable,
    /// No policy of any tier decided: no NetworkPolicy selecting the pod has this policy type, and no
    /// cluster-wide rule matched (or a Baseline one passed). Allowed.
    NotIsolated,
    /// Isolated, and this rule (the first in policy order) allows the connection.
    AllowedBy(RuleRef),
    /// Isolated and no rule allows it, but a pod and its own node can always reach each other.
    OwnNode,
    /// Isolated and no rule allows it, but a pod can always reach itself.
    SamePod,
    /// Isolated by NetworkPolicy, and no rule of any policy selecting the pod allows the connection.
    Denied,
    /// A cluster-wide rule decided: an Accept or a Deny of the Admin or the Baseline tier, or a Baseline Pass
    /// (which leaves the connection to the default: allowed).
    Tier(TierRuleRef),
    /// The first rule that could allow the connection is a `domainNames` Accept, and which name the connection
    /// went to is not known: allowed if it was one of those names, denied by what follows otherwise. Weir does
    /// not guess; this counts as allowed (no alert) but is never reported as proven.
    Undecided(TierRuleRef),
}

impl Decision {
    /// Whether this direction lets the connection through (an undecided direction counts as allowed).
    pub fn allowed(self) -> bool {
        match self {
            Decision::Denied => false,
            Decision::Tier(r) => r.action != Action::Deny,
            _ => true,
        }
    }

    /// False only for [`Decision::Undecided`].
    pub fn decided(self) -> bool {
        !matches!(self, Decision::Undecided(_))
    }

    /// The tier that decided.
    pub fn tier(self) -> DecidingTier {
        match self {
            Decision::NotApplicable | Decision::NotIsolated => DecidingTier::Default,
            Decision::AllowedBy(_) | Decision::OwnNode | Decision::SamePod | Decision::Denied => {
                DecidingTier::NetworkPolicy
            }
            Decision::Tier(r) | Decision::Undecided(r) => match r.tier {
                Tier::Admin => DecidingTier::Admin,
                Tier::Baseline => DecidingTier::Baseline,
            },
        }
    }
}

/// The verdict on a connection: both the source's egress and the destination's ingress must allow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Verdict {
    /// The source pod's egress.
    pub egress: Decision,
    /// The destination pod's ingress.
    pub ingress: Decision,
    /// The Admin-tier Pass rule the source's egress went through before the tier that decided, if any.
    pub egress_pass: Option<TierRuleRef>,
    /// The Admin-tier Pass rule the destination's ingress went through, if any.
    pub ingress_pass: Option<TierRuleRef>,
}

impl Verdict {
    /// A verdict with no Pass in either direction.
    pub fn new(egress: Decision, ingress: Decision) -> Verdict {
        Verdict {
            egress,
            ingress,
            egress_pass: None,
            ingress_pass: None,
        }
    }

    /// Whether the connection is allowed.
    pub fn allowed(&self) -> bool {
        self.egress.allowed() && self.ingress.allowed()
    }

    /// False when a direction is [`Decision::Undecided`].
    pub fn decided(&self) -> bool {
        self.egress.decided() && self.ingress.decided()
    }

    /// One direction's decision and the Admin Pass before it.
    pub fn side(&self, direction: Direction) -> (Decision, Option<TierRuleRef>) {
        match direction {
            Direction::Egress => (self.egress, self.egress_pass),
            Direction::Ingress => (self.ingress, self.ingress_pass),
        }
    }
}

/// An endpoint and the address it uses (a pod without an address has none; ipBlocks then cannot match it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Address {
    /// What it is.
    pub endpoint: Endpoint,
    /// Its address.
    pub ip: Option<IpAddr>,
}

/// The facts a verdict depends on; equal facts give equal verdicts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Identity {
    /// Subject to policy (a pod with its own network namespace).
    subject: bool,
    /// Policies selecting it that isolate ingress, in policy order.
    ingress: Vec<u32>,
    /// Policies selecting it that isolate egress, in policy order.
    egress: Vec<u32>,
    /// Cluster-wide policies whose subject it is, in evaluation order (indexes into `tier_policies`).
    tiers: Vec<u32>,
    /// Peers matching it, sorted.
    peers: Vec<u32>,
    /// Its container ports, for named ports.
    ports: Vec<ContainerPort>,
}

impl Identity {
    fn isolating(&self, direction: Direction) -> &[u32] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// Why a connection got its verdict: per direction, the policies isolating that end (indexes into
/// [`PolicySet::policies`]) and every rule that allows the connection. Empty isolating lists mean the end is
/// not isolated in that direction (or not subject to policy at all).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grounds {
    /// Policies isolating the source's egress.
    pub egress_isolating: Vec<u32>,
    /// Egress rules allowing the connection.
    pub egress_allowing: Vec<RuleRef>,
    /// Policies isolating the destination's ingress.
    pub ingress_isolating: Vec<u32>,
    /// Ingress rules allowing the connection.
    pub ingress_allowing: Vec<RuleRef>,
}

/// All NetworkPolicies and cluster-wide policies of a cluster, compiled, with each pod's identity precomputed.
#[derive(Debug)]
pub struct PolicySet {
    id: u64,
    cluster: Arc<ClusterState>,
    policies: Vec<CompiledPolicy>,
    tier_policies: Vec<TierPolicy>,
    peers: Vec<Peer>,
    ip_block_peers: Vec<u32>,
    node_peers: Vec<u32>,
    /// Peers of cluster-wide rules have ids from here on (NetworkPolicies are compiled first).
    first_tier_peer: u32,
    /// Whether a cluster-wide rule names a container port (then a destination's ports matter to the tiers).
    tier_named_ports: bool,
    ambiguities: Vec<Ambiguity>,
    identities: Vec<Identity>,
    identity_index: Map<Identity, u32>,
    /// Every pod and node address with what it is and its identity: the one probe per address on the hot path.
    addresses: Map<IpAddr, (Endpoint, u32)>,
    /// Identity of each pod at each of its addresses (in `Pod::ips` order; one entry for a pod without any).
    pod_identities: Vec<Vec<u32>>,
}

static NEXT_SET_ID: AtomicU64 = AtomicU64::new(1);

/// Two cluster-wide policies of one tier at one priority that both apply to some pod and have rules of different
/// actions in one direction. Where both match a connection, the API leaves the choice to the implementation;
/// weir takes `first` (kind, then name, in order), and says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ambiguity {
    /// The policy weir evaluates first (index into [`PolicySet::tier_policies`]).
    pub first: u32,
    /// The other.
    pub second: u32,
    /// The direction.
    pub direction: Direction,
    /// A pod both apply to.
    pub example: PodId,
}

/// Memoized verdicts (and identities of addresses outside the cluster) for one worker.
#[derive(Debug, Default)]
pub struct VerdictCache {
    set: u64,
    /// Verdicts by key, as indexes into `distinct`: connections share few distinct verdicts, and a small entry
    /// keeps the map dense in memory.
    verdicts: Map<CacheKey, u32>,
    distinct: Vec<Verdict>,
    distinct_index: Map<Verdict, u32>,
    grounds: Map<CacheKey, (Verdict, Arc<Grounds>)>,
    external_ips: Map<IpAddr, u32>,
    external: Vec<Identity>,
    external_index: Map<Vec<u32>, u32>,
    stats: CacheStats,
}

/// How a [`VerdictCache`] has done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Verdicts answered from the cache.
    pub hits: u64,
    /// Verdicts computed.
    pub misses: u64,
    /// Times the cache reached its bound and was emptied.
    pub resets: u64,
}

/// The cache empties itself past this many verdicts (about 80 MB), so memory stays bounded whatever the
/// traffic; a reset only costs recomputation.
const MAX_CACHED_VERDICTS: usize = 1 << 20;
const MAX_CACHED_EXTERNAL: usize = 1 << 18;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct CacheKey {
    src: u32,
    dst: u32,
    /// The port, or `u32::MAX` for traffic without one.
    port: u32,
    protocol: u8,
}

impl VerdictCache {
    /// An empty cache.
    pub fn new() -> VerdictCache {
        VerdictCache::default()
    }

    /// Hits, misses and resets so far.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    fn bind(&mut self, set: &PolicySet) {
        if self.set != set.id {
            *self = VerdictCache {
                set: set.id,
                stats: self.stats,
                ..VerdictCache::default()
            };
        }
    }
}

impl PolicySet {
    /// Compiles every NetworkPolicy and cluster-wide policy of the cluster and computes each pod's identity.
    pub fn new(cluster: Arc<ClusterState>) -> Result<PolicySet, PolicyError> {
        let mut peers = Vec::new();
        let policies = cluster
            .policies()
            .iter()
            .map(|p| compile::compile(p, &mut peers))
            .collect::<Result<Vec<_>, _>>()?;
        let first_tier_peer = peers.len() as u32;
        let tier_policies = cluster
            .cluster_policies()
            .iter()
            .map(|p| tier::compile(p, &mut peers))
            .collect::<Result<Vec<TierPolicy>, _>>()?;
        let tier_named_ports = tier_policies.iter().any(|p| {
            p.ingress.iter().chain(&p.egress).any(|r| {
                r.ports
                    .iter()
                    .any(|port| matches!(port, cnp::PortMatch::Named(_)))
            })
        });
        let of_kind = |keep: fn(&Peer) -> bool| {
            peers
                .iter()
                .enumerate()
                .filter(|(_, p)| keep(p))
                .map(|(i, _)| i as u32)
                .collect::<Vec<u32>>()
        };
        let ip_block_peers = of_kind(Peer::by_address);
        let node_peers = of_kind(|p| matches!(p, Peer::Nodes(_)));
        let mut set = PolicySet {
            id: NEXT_SET_ID.fetch_add(1, Ordering::Relaxed),
            cluster,
            policies,
            tier_policies,
            peers,
            ip_block_peers,
            node_peers,
            first_tier_peer,
            tier_named_ports,
            ambiguities: Vec::new(),
            identities: Vec::new(),
            identity_index: Map::default(),
            addresses: Map::default(),
            pod_identities: Vec::new(),
        };
        set.compute_identities();
        Ok(set)
    }

    fn intern(&mut self, identity: Identity) -> u32 {
        if let Some(&id) = self.identity_index.get(&identity) {
            return id;
        }
        let id = self.identities.len() as u32;
        self.identities.push(identity.clone());
        self.identity_index.insert(identity, id);
        id
    }

    fn ip_block_matches(&self, ip: Option<IpAddr>) -> Vec<u32> {
        let Some(ip) = ip else { return Vec::new() };
        self.ip_block_peers
            .iter()
            .copied()
            .filter(|&id| self.peers[id as usize].ip_block_contains(ip))
            .collect()
    }

    /// The `nodes` peers an address matches: the node's labels match and the API lists the address as the
    /// node's (`status.addresses`, which its host-network pods share).
    fn node_matches(&self, ip: Option<IpAddr>, node: Option<NodeId>) -> Vec<u32> {
        let (Some(ip), Some(node)) = (ip, node) else {
            return Vec::new();
        };
        let node = self.cluster.node(node);
        let listed = node.addresses.iter().any(|a| {
            a.ip == ip
                && matches!(
                    a.source,
                    NodeAddressSource::Status(_) | NodeAddressSource::HostNetworkPod
                )
        });
        if !listed {
            return Vec::new();
        }
        self.node_peers
            .iter()
            .copied()
            .filter(
                |&id| matches!(&self.peers[id as usize], Peer::Nodes(s) if s.matches(&node.labels)),
            )
            .collect()
    }

    fn compute_identities(&mut self) {
        let cluster = self.cluster.clone();
        let namespaces = cluster.namespaces();
        // Which namespaces each selector peer looks in, computed once per peer.
        let ns_index = |name: &str| namespaces.iter().position(|n| n.name == name);
        let peer_namespaces: Vec<Vec<bool>> = self
            .peers
            .iter()
            .map(|peer| match peer {
                Peer::Pods {
                    namespaces: scope, ..
                } => namespaces
                    .iter()
                    .map(|ns| match scope {
                        compile::NamespaceScope::Own(own) => *own == ns.name,
                        compile::NamespaceScope::Matching(s) => s.matches(&ns.labels),
                    })
                    .collect(),
                _ => Vec::new(),
            })
            .collect();
        // Pods with the same namespace and labels match the same selectors: evaluate each group once.
        let mut groups: std::collections::HashMap<(&str, &weir_cluster::Labels), GroupFacts> =
            std::collections::HashMap::new();
        let mut pod_identities = Vec::with_capacity(cluster.pods().len());
        for (index, pod) in cluster.pods().iter().enumerate() {
            let id = PodId(index as u32);
            let ips: Vec<Option<IpAddr>> = if pod.ips.is_empty() {
                vec![None]
            } else {
                pod.ips.iter().copied().map(Some).collect()
            };
            let mut per_ip = Vec::with_capacity(ips.len());
            for ip in ips {
                let identity = if pod.host_network {
                    self.address_identity(ip, pod.node)
                } else {
                    let facts = groups
                        .entry((pod.namespace.as_str(), &pod.labels))
                        .or_insert_with(|| {
                            let ns = ns_index(&pod.namespace);
                            let mut ingress = Vec::new();
                            let mut egress = Vec::new();
                            for (i, policy) in self.policies.iter().enumerate() {
                                if policy.namespace == pod.namespace
                                    && policy.selector.matches(&pod.labels)
                                {
                                    if policy.isolates_ingress {
                                        ingress.push(i as u32);
                                    }
                                    if policy.isolates_egress {
                                        egress.push(i as u32);
                                    }
                                }
                            }
                            // Host-network pods are never a cluster-wide policy's subject (they took the
                            // other branch).
                            let ns_labels = ns.map(|ns| &namespaces[ns].labels);
                            let tiers = self
                                .tier_policies
                                .iter()
                                .enumerate()
                                .filter(|(_, p)| {
                                    ns_labels.is_some_and(|l| p.namespaces.matches(l))
                                        && p.pods.as_ref().is_none_or(|s| s.matches(&pod.labels))
                                })
                                .map(|(i, _)| i as u32)
                                .collect();
                            let selector_peers = self
                                .peers
                                .iter()
                                .enumerate()
                                .filter(|(i, peer)| match peer {
                                    Peer::Pods { pods, .. } => {
                                        ns.is_some_and(|ns| peer_namespaces[*i][ns])
                                            && pods.as_ref().is_none_or(|s| s.matches(&pod.labels))
                                    }
                                    _ => false,
                                })
                                .map(|(i, _)| i as u32)
                                .collect();
                            GroupFacts {
                                ingress,
                                egress,
                                tiers,
                                selector_peers,
                            }
                        })
                        .clone();
                    let mut peers = facts.selector_peers;
                    peers.extend(self.ip_block_matches(ip));
                    peers.sort_unstable();
                    let mut ports = pod.ports.clone();
                    ports.sort();
                    ports.dedup();
                    Identity {
                        subject: true,
                        ingress: facts.ingress,
                        egress: facts.egress,
                        tiers: facts.tiers,
                        peers,
                        ports,
                    }
                };
                let identity = self.intern(identity);
                // Only the pod that owns an address answers for it (not a finished pod, not a conflict's loser).
                if let Some(ip) = ip.filter(|&ip| cluster.owner_of(ip) == Some(IpOwner::Pod(id))) {
                    self.addresses.insert(ip, (Endpoint::Pod(id), identity));
                }
                per_ip.push(identity);
            }
            pod_identities.push(per_ip);
        }
        for (index, node) in cluster.nodes().iter().enumerate() {
            let id = NodeId(index as u32);
            for ip in node.addresses.iter().map(|a| a.ip) {
                let identity = self.intern(self.address_identity(Some(ip), Some(id)));
                if cluster.owner_of(ip) == Some(IpOwner::Node(id)) {
                    self.addresses.insert(ip, (Endpoint::Node(id), identity));
                }
            }
        }
        self.pod_identities = pod_identities;
        self.ambiguities = self.find_ambiguities();
    }

    /// The identity of an address that is not a pod subject to policy: a node's (`node` given), a host-network
    /// pod's (its node), or one outside the cluster.
    fn address_identity(&self, ip: Option<IpAddr>, node: Option<NodeId>) -> Identity {
        let mut peers = self.ip_block_matches(ip);
        peers.extend(self.node_matches(ip, node));
        peers.sort_unstable();
        Identity {
            subject: false,
            ingress: Vec::new(),
            egress: Vec::new(),
            tiers: Vec::new(),
            peers,
            ports: Vec::new(),
        }
    }

    /// The cluster-wide policies, in evaluation order (tier, priority, then kind and name).
    pub fn tier_policies(&self) -> &[TierPolicy] {
        &self.tier_policies
    }

    /// Pairs of cluster-wide policies of one tier at one priority that apply to a common pod in a direction
    /// where their actions differ (see [`Ambiguity`]).
    pub fn ambiguities(&self) -> &[Ambiguity] {
        &self.ambiguities
    }

    fn find_ambiguities(&self) -> Vec<Ambiguity> {
        let mut found: Vec<Ambiguity> = Vec::new();
        let mut seen_identities = std::collections::HashSet::new();
        for (index, ids) in self.pod_identities.iter().enumerate() {
            let Some(&id) = ids.first() else { continue };
            if !seen_identities.insert(id) {
                continue;
            }
            let tiers = &self.identities[id as usize].tiers;
            for (i, &a) in tiers.iter().enumerate() {
                for &b in &tiers[i + 1..] {
                    let (pa, pb) = (
                        &self.tier_policies[a as usize],
                        &self.tier_policies[b as usize],
                    );
                    if pa.tier != pb.tier || pa.priority != pb.priority {
                        continue;
                    }
                    for direction in [Direction::Ingress, Direction::Egress] {
                        let actions = |p: &TierPolicy| {
                            p.rules(direction)
                                .iter()
                                .map(|r| r.action)
                                .collect::<Vec<_>>()
                        };
                        let (xa, xb) = (actions(pa), actions(pb));
                        let differ = xa.iter().any(|x| xb.iter().any(|y| x != y));
                        if differ
                            && !found
                                .iter()
                                .any(|f| f.first == a && f.second == b && f.direction == direction)
                        {
                            found.push(Ambiguity {
                                first: a,
                                second: b,
                                direction,
                                example: PodId(index as u32),
                            });
                        }
                    }
                }
            }
        }
        found
    }

    /// The cluster the set was built from.
    pub fn cluster(&self) -> &ClusterState {
        &self.cluster
    }

    /// The compiled policies, in the cluster's order (namespace, name).
    pub fn policies(&self) -> &[CompiledPolicy] {
        &self.policies
    }

    /// A peer by its global id (see [`Rule::peers`]).
    pub fn peer(&self, id: u32) -> &Peer {
        &self.peers[id as usize]
    }

    /// The policies isolating a pod for ingress and for egress (indexes into [`PolicySet::policies`]); both
    /// empty for a hostNetwork pod, which policy does not apply to.
    pub fn isolating(&self, pod: PodId) -> (&[u32], &[u32]) {
        let identity = self
            .pod_identities
            .get(pod.0 as usize)
            .and_then(|ids| ids.first())
            .and_then(|&id| self.identities.get(id as usize));
        match identity {
            Some(i) if i.subject => (&i.ingress, &i.egress),
            _ => (&[], &[]),
        }
    }

    /// The cluster-wide policies whose subject a pod is (indexes into [`PolicySet::tier_policies`], in evaluation
    /// order); empty for a hostNetwork pod, which they never apply to.
    pub fn cluster_policies_of(&self, pod: PodId) -> &[u32] {
        self.pod_identities
            .get(pod.0 as usize)
            .and_then(|ids| ids.first())
            .and_then(|&id| self.identities.get(id as usize))
            .map_or(&[], |i| &i.tiers)
    }

    /// One rule in a line: `shop/api ingress rule #0 (from pods [app=frontend] in namespace shop; ports 8080/TCP)`.
    pub fn describe_rule(&self, direction: Direction, policy: u32, rule: u16) -> String {
        let compiled = &self.policies[policy as usize];
        let Some(r) = compiled.rules(direction).get(usize::from(rule)) else {
            return format!("{} {direction} rule #{rule}", compiled.key());
        };
        let (list, anyone) = match direction {
            Direction::Ingress => ("from", "any source"),
            Direction::Egress => ("to", "any destination"),
        };
        let peers = match &r.peers {
            None => anyone.to_owned(),
            Some(ids) => {
                let names: Vec<String> = ids.iter().map(|&id| self.peer(id).to_string()).collect();
                format!("{list} {}", names.join(" | "))
            }
        };
        let ports = match &r.ports {
            None => "any port".to_owned(),
            Some(ports) => {
                let names: Vec<String> = ports.iter().map(ToString::to_string).collect();
                format!("ports {}", names.join(", "))
            }
        };
        format!(
            "{} {direction} rule #{rule} ({peers}; {ports})",
            compiled.key()
        )
    }

    /// One cluster-wide rule in a line: `Admin sec-ops egress rule #0 "allow-monitoring" (to namespaces
    /// [team=monitoring]; 9090/TCP) Accept`.
    pub fn describe_tier_rule(&self, direction: Direction, r: &TierRuleRef) -> String {
        let policy = &self.tier_policies[r.policy as usize];
        let Some(rule) = policy.rules(direction).get(usize::from(r.rule)) else {
            return format!("{} {direction} rule #{}", policy.label(), r.rule);
        };
        let name = rule
            .name
            .as_deref()
            .map_or(String::new(), |n| format!(" {n:?}"));
        let list = match direction {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        };
        let peers: Vec<String> = rule
            .peers
            .iter()
            .map(|p| match p {
                TierPeer::Matched(id) => self.peer(*id).to_string(),
                TierPeer::DomainNames(names) => format!("domainNames {}", names.join(", ")),
                TierPeer::Unknown => "a peer of unknown shape".to_owned(),
            })
            .collect();
        let ports = if rule.ports.is_empty() {
            "any port".to_owned()
        } else {
            let list: Vec<String> = rule.ports.iter().map(tier::describe_port).collect();
            list.join(", ")
        };
        let failed = match rule.effect {
            Effect::AsWritten => "",
            Effect::MatchesNothing => ", failed closed: matches nothing",
            Effect::DeniesAll => ", failed closed: denies all",
        };
        format!(
            "{} {direction} rule #{}{name} ({list} {}; {ports}{failed}) {}",
            policy.label(),
            r.rule,
            peers.join(" | "),
            r.action.name()
        )
    }

    /// The chain of tiers that decided one direction, in one line: `Admin sec-ops rule #2 "delegate" Pass →
    /// NetworkPolicy shop/default-deny isolates, shop/api rule #1 allows`. `isolating` are the NetworkPolicies
    /// isolating the end in that direction (from [`Grounds`]); they name what denied.
    pub fn chain(&self, direction: Direction, verdict: &Verdict, isolating: &[u32]) -> String {
        let (decision, pass) = verdict.side(direction);
        let short = |r: &TierRuleRef| {
            let policy = &self.tier_policies[r.policy as usize];
            let name = policy
                .rules(direction)
                .get(usize::from(r.rule))
                .and_then(|rule| rule.name.as_deref())
                .map_or(String::new(), |n| format!(" {n:?}"));
            format!("{} rule #{}{name}", policy.label(), r.rule)
        };
        let keys = |ids: &[u32]| {
            ids.iter()
                .map(|&p| self.policies[p as usize].key())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut text = pass.map_or(String::new(), |p| format!("{} Pass → ", short(&p)));
        let rest = match decision {
            Decision::NotApplicable => "not subject to policy".to_owned(),
            Decision::NotIsolated if pass.is_some() => {
                "no NetworkPolicy isolates it, no Baseline rule matches: allowed by default"
                    .to_owned()
            }
            Decision::NotIsolated => "not isolated".to_owned(),
            Decision::AllowedBy(r) => format!(
                "NetworkPolicy {} isolates, {} rule #{} allows",
                keys(isolating),
                self.policies[r.policy as usize].key(),
                r.rule
            ),
            Decision::Denied => {
                format!("NetworkPolicy {} isolates, no rule allows", keys(isolating))
            }
            Decision::SamePod => "a pod may always reach itself".to_owned(),
            Decision::OwnNode => "a pod and its own node may always connect".to_owned(),
            Decision::Tier(r) if r.action == Action::Pass => {
                format!("{} Pass → allowed by default", short(&r))
            }
            Decision::Tier(r) => format!("{} {}", short(&r), r.action.name()),
            Decision::Undecided(r) => format!(
                "{} Accept if the destination was one of its domainNames (not known from a flow), denied otherwise",
                short(&r)
            ),
        };
        text.push_str(&rest);
        text
    }

    /// How many distinct identities the cluster's pods and nodes have.
    pub fn identity_count(&self) -> usize {
        self.identities.len()
    }

    /// What an address is: a pod, a node (or hostNetwork pod), or external. Service ClusterIPs are external
    /// here: resolve them to backends first, as the node's DNAT does before policy applies.
    pub fn address_of_ip(&self, ip: IpAddr) -> Address {
        let endpoint = self
            .addresses
            .get(&ip)
            .map_or(Endpoint::External, |&(endpoint, _)| endpoint);
        Address {
            endpoint,
            ip: Some(ip),
        }
    }

    /// A pod at its primary address; a hostNetwork pod is its node.
    pub fn address_of_pod(&self, pod: PodId) -> Address {
        let record = self.cluster.pod(pod);
        let ip = record.ips.first().copied();
        let endpoint = match (record.host_network, record.node) {
            (true, Some(node)) => Endpoint::Node(node),
            (true, None) => Endpoint::External,
            (false, _) => Endpoint::Pod(pod),
        };
        Address { endpoint, ip }
    }

    fn identity_of(&self, cache: &mut VerdictCache, address: &Address) -> u32 {
        if let Endpoint::Pod(pod) = address.endpoint {
            let ids = &self.pod_identities[pod.0 as usize];
            let at = address
                .ip
                .and_then(|ip| self.cluster.pod(pod).ips.iter().position(|&p| p == ip))
                .unwrap_or(0);
            return ids.get(at).or(ids.first()).copied().unwrap_or(0);
        }
        if let Some(&(_, id)) = address.ip.and_then(|ip| self.addresses.get(&ip)) {
            return id;
        }
        let Some(ip) = address.ip else {
            return self.identities.len() as u32 + self.external_identity(cache, Vec::new());
        };
        if let Some(&id) = cache.external_ips.get(&ip) {
            return id;
        }
        if cache.external_ips.len() >= MAX_CACHED_EXTERNAL {
            cache.external_ips.clear();
        }
        let id = self.identities.len() as u32
            + self.external_identity(cache, self.ip_block_matches(Some(ip)));
        cache.external_ips.insert(ip, id);
        id
    }

    fn external_identity(&self, cache: &mut VerdictCache, peers: Vec<u32>) -> u32 {
        if let Some(&id) = cache.external_index.get(&peers) {
            return id;
        }
        let id = cache.external.len() as u32;
        cache.external.push(self.address_identity(None, None));
        if let Some(last) = cache.external.last_mut() {
            last.peers = peers.clone();
        }
        cache.external_index.insert(peers, id);
        id
    }

    fn identity<'a>(&'a self, cache: &'a VerdictCache, id: u32) -> &'a Identity {
        let local = self.identities.len();
        match (id as usize).checked_sub(local) {
            None => &self.identities[id as usize],
            Some(external) => &cache.external[external],
        }
    }

    /// Judges a connection between two addresses to `port` (None for traffic without ports, such as ICMP).
    pub fn judge(
        &self,
        cache: &mut VerdictCache,
        src: IpAddr,
        dst: IpAddr,
        port: Option<u16>,
        protocol: Protocol,
    ) -> Verdict {
        cache.bind(self);
        let (src, src_id) = self.resolve(cache, src);
        let (dst, dst_id) = self.resolve(cache, dst);
        self.judge_identities(cache, &src, src_id, &dst, dst_id, port, protocol)
    }

    /// An address and its identity, with one probe of the address map for pods and nodes.
    fn resolve(&self, cache: &mut VerdictCache, ip: IpAddr) -> (Address, u32) {
        match self.addresses.get(&ip) {
            Some(&(endpoint, id)) => (
                Address {
                    endpoint,
                    ip: Some(ip),
                },
                id,
            ),
            None => {
                let address = Address {
                    endpoint: Endpoint::External,
                    ip: Some(ip),
                };
                let id = self.identity_of(cache, &address);
                (address, id)
            }
        }
    }

    /// Judges a connection between two resolved addresses.
    pub fn judge_addresses(
        &self,
        cache: &mut VerdictCache,
        src: &Address,
        dst: &Address,
        port: Option<u16>,
        protocol: Protocol,
    ) -> Verdict {
        cache.bind(self);
        let src_id = self.identity_of(cache, src);
        let dst_id = self.identity_of(cache, dst);
        self.judge_identities(cache, src, src_id, dst, dst_id, port, protocol)
    }

    #[allow(clippy::too_many_arguments)]
    fn judge_identities(
        &self,
        cache: &mut VerdictCache,
        src: &Address,
        src_id: u32,
        dst: &Address,
        dst_id: u32,
        port: Option<u16>,
        protocol: Protocol,
    ) -> Verdict {
        let key = CacheKey {
            src: src_id,
            dst: dst_id,
            port: port.map_or(u32::MAX, u32::from),
            protocol: protocol.0,
        };
        let hit = cache
            .verdicts
            .get(&key)
            .and_then(|&i| cache.distinct.get(i as usize));
        let verdict = match hit {
            Some(v) => {
                cache.stats.hits += 1;
                *v
            }
            None => {
                cache.stats.misses += 1;
                let v = self.evaluate(
                    self.identity(cache, key.src),
                    self.identity(cache, key.dst),
                    port,
                    protocol,
                );
                if cache.verdicts.len() >= MAX_CACHED_VERDICTS {
                    cache.verdicts.clear();
                    cache.distinct.clear();
                    cache.distinct_index.clear();
                    cache.stats.resets += 1;
                }
                let index = match cache.distinct_index.get(&v) {
                    Some(&i) => i,
                    None => {
                        let i = cache.distinct.len() as u32;
                        cache.distinct.push(v);
                        cache.distinct_index.insert(v, i);
                        i
                    }
                };
                cache.verdicts.insert(key, index);
                v
            }
        };
        self.exceptions(src, dst, verdict)
    }

    /// The connections policy does not block. A pod may always reach itself at its own address: NetworkPolicy
    /// cannot isolate a pod from itself, and cluster-wide policies do not apply to that hairpin traffic at all
    /// (the network-policy-api's overview). A pod and its own node may always reach each other under
    /// NetworkPolicy; cluster-wide policies have no such exception (their `nodes` peers can deny it).
    fn exceptions(&self, src: &Address, dst: &Address, mut verdict: Verdict) -> Verdict {
        let tiered = |d: Decision| matches!(d, Decision::Tier(_) | Decision::Undecided(_));
        if verdict.allowed() && !tiered(verdict.egress) && !tiered(verdict.ingress) {
            return verdict;
        }
        let (same_pod, own_node_in, own_node_out) = self.exception_kinds(src, dst);
        if same_pod {
            // Whatever a cluster-wide rule said does not apply to hairpin traffic.
            let hairpin = |d: Decision| match d {
                Decision::Denied | Decision::Tier(_) | Decision::Undecided(_) => Decision::SamePod,
                d => d,
            };
            verdict.egress_pass = None;
            verdict.ingress_pass = None;
            verdict.egress = hairpin(verdict.egress);
            verdict.ingress = hairpin(verdict.ingress);
        }
        let rescue = |d: Decision| {
            if d == Decision::Denied {
                Decision::OwnNode
            } else {
                d
            }
        };
        if own_node_in {
            verdict.ingress = rescue(verdict.ingress);
        }
        if own_node_out {
            verdict.egress = rescue(verdict.egress);
        }
        verdict
    }

    /// (a pod to itself, a node to its own pod, a pod to its own node).
    fn exception_kinds(&self, src: &Address, dst: &Address) -> (bool, bool, bool) {
        let node_of = |a: &Address| match a.endpoint {
            Endpoint::Pod(p) => self.cluster.pod(p).node,
            _ => None,
        };
        match (src.endpoint, dst.endpoint) {
            (Endpoint::Pod(a), Endpoint::Pod(b)) => (a == b, false, false),
            (Endpoint::Node(n), Endpoint::Pod(_)) => (false, node_of(dst) == Some(n), false),
            (Endpoint::Pod(_), Endpoint::Node(n)) => (false, false, node_of(src) == Some(n)),
            _ => (false, false, false),
        }
    }

    fn evaluate(
        &self,
        src: &Identity,
        dst: &Identity,
        port: Option<u16>,
        protocol: Protocol,
    ) -> Verdict {
        let traffic = Traffic {
            port,
            protocol,
            dst_ports: &dst.ports,
        };
        let (egress, egress_pass) = self.side(Direction::Egress, src, dst, &traffic);
        let (ingress, ingress_pass) = self.side(Direction::Ingress, dst, src, &traffic);
        Verdict {
            egress,
            ingress,
            egress_pass,
            ingress_pass,
        }
    }

    /// One direction, through the tiers: the Admin tier (the first matching rule of the policies in priority
    /// order decides; a Pass skips the rest of the tier), then NetworkPolicy where it isolates the pod, else the
    /// Baseline tier, else the default (allowed). Returns the decision and the Admin Pass on the way, if any.
    fn side(
        &self,
        direction: Direction,
        subject: &Identity,
        other: &Identity,
        traffic: &Traffic,
    ) -> (Decision, Option<TierRuleRef>) {
        self.side_with(direction, subject, other, traffic, |tier| {
            self.tier_phase(tier, direction, subject, other, traffic)
        })
    }

    /// [`PolicySet::side`], with what each tier says given by `phase` (memoized by the matrix).
    fn side_with(
        &self,
        direction: Direction,
        subject: &Identity,
        other: &Identity,
        traffic: &Traffic,
        mut phase: impl FnMut(Tier) -> TierPhase,
    ) -> (Decision, Option<TierRuleRef>) {
        if !subject.subject {
            return (Decision::NotApplicable, None);
        }
        if subject.tiers.is_empty() {
            let isolating = subject.isolating(direction);
            return match isolating.is_empty() {
                true => (Decision::NotIsolated, None),
                false => (self.decide(direction, isolating, other, traffic), None),
            };
        }
        let admin = phase(Tier::Admin);
        let mut undecided = admin.undecided;
        let mut pass = None;
        let decision = match admin.rule {
            Some(r) if r.action == Action::Pass => {
                pass = Some(r);
                None
            }
            Some(r) => Some(Decision::Tier(r)),
            None => None,
        };
        let decision = decision.unwrap_or_else(|| {
            let isolating = subject.isolating(direction);
            if isolating.is_empty() {
                let baseline = phase(Tier::Baseline);
                undecided = undecided.or(baseline.undecided);
                baseline.rule.map_or(Decision::NotIsolated, Decision::Tier)
            } else {
                self.decide(direction, isolating, other, traffic)
            }
        });
        match undecided {
            Some(r) if !decision.allowed() => (Decision::Undecided(r), pass),
            _ => (decision, pass),
        }
    }

    /// What one tier says about one direction.
    fn tier_phase(
        &self,
        tier: Tier,
        direction: Direction,
        subject: &Identity,
        other: &Identity,
        traffic: &Traffic,
    ) -> TierPhase {
        let mut undecided = None;
        let rule = self.tier_decide(tier, direction, subject, other, traffic, &mut undecided);
        TierPhase { rule, undecided }
    }

    /// The first rule of `tier` among the cluster-wide policies of the subject (in evaluation order) that
    /// matches; a `domainNames` rule that might match is noted in `undecided` (the first one) and passed over.
    fn tier_decide(
        &self,
        tier: Tier,
        direction: Direction,
        subject: &Identity,
        other: &Identity,
        traffic: &Traffic,
        undecided: &mut Option<TierRuleRef>,
    ) -> Option<TierRuleRef> {
        for &policy in &subject.tiers {
            let compiled = &self.tier_policies[policy as usize];
            if compiled.tier != tier {
                continue;
            }
            for (index, rule) in compiled.rules(direction).iter().enumerate() {
                let at = |(peer, port): (u8, u8)| TierRuleRef {
                    policy,
                    rule: index as u8,
                    tier,
                    action: rule.action,
                    peer,
                    port,
                };
                match tier_rule_match(rule, other, traffic) {
                    TierMatch::Yes(m) => return Some(at(m)),
                    TierMatch::Undecided(m) => {
                        undecided.get_or_insert(at(m));
                    }
                    TierMatch::No { .. } => {}
                }
            }
        }
        None
    }

    /// The first rule, in policy order, of the policies isolating the subject that allows the traffic.
    fn decide(
        &self,
        direction: Direction,
        isolating: &[u32],
        other: &Identity,
        traffic: &Traffic,
    ) -> Decision {
        if isolating.is_empty() {
            return Decision::NotIsolated;
        }
        for &policy in isolating {
            for (index, rule) in self.policies[policy as usize]
                .rules(direction)
                .iter()
                .enumerate()
            {
                if let (Some(peer), Some(port)) =
                    (peer_match(rule, other), traffic.port_match(rule))
                {
                    return Decision::AllowedBy(RuleRef {
                        policy,
                        rule: index as u16,
                        peer,
                        port,
                    });
                }
            }
        }
        Decision::Denied
    }

    /// The full reasoning behind a verdict: every policy isolating each end, every rule that allows, and for
    /// every other rule of those policies whether its peers, its ports, or both failed to match.
    pub fn explain(
        &self,
        src: &Address,
        dst: &Address,
        port: Option<u16>,
        protocol: Protocol,
    ) -> Explanation {
        let mut cache = VerdictCache::new();
        let verdict = self.judge_addresses(&mut cache, src, dst, port, protocol);
        let src_identity = self.identity_of(&mut cache, src);
        let dst_identity = self.identity_of(&mut cache, dst);
        let (s, d) = (
            self.identity(&cache, src_identity),
            self.identity(&cache, dst_identity),
        );
        let traffic = Traffic {
            port,
            protocol,
            dst_ports: &d.ports,
        };
        let detail = |direction: Direction, subject: &Identity, other: &Identity| {
            let isolating = subject.isolating(direction);
            let mut misses = Vec::new();
            let allowed_by =
                self.allowing_rules(direction, isolating, other, &traffic, Some(&mut misses));
            DirectionDetail {
                subject: subject.subject,
                isolating: isolating.to_vec(),
                allowed_by,
                misses,
                tier_rules: self.tier_checks(direction, subject, other, &traffic),
                ambiguous_with: self.ambiguous_with(
                    direction,
                    verdict.side(direction),
                    subject,
                    other,
                    &traffic,
                ),
            }
        };
        Explanation {
            verdict,
            egress: detail(Direction::Egress, s, d),
            ingress: detail(Direction::Ingress, d, s),
        }
    }

    fn tier_checks(
        &self,
        direction: Direction,
        subject: &Identity,
        other: &Identity,
        traffic: &Traffic,
    ) -> Vec<TierCheck> {
        let mut checks = Vec::new();
        if !subject.subject {
            return checks;
        }
        for &policy in &subject.tiers {
            let compiled = &self.tier_policies[policy as usize];
            for (index, rule) in compiled.rules(direction).iter().enumerate() {
                let (outcome, (peer, port)) = match tier_rule_match(rule, other, traffic) {
                    TierMatch::Yes(m) => (TierOutcome::Matched, m),
                    TierMatch::Undecided(m) => (TierOutcome::Undecided, m),
                    TierMatch::No { peer, port } => (
                        TierOutcome::Missed {
                            peer_matched: peer,
                            port_matched: port,
                        },
                        (ALL8, ALL8),
                    ),
                };
                checks.push(TierCheck {
                    rule: TierRuleRef {
                        policy,
                        rule: index as u8,
                        tier: compiled.tier,
                        action: rule.action,
                        peer,
                        port,
                    },
                    outcome,
                });
            }
        }
        checks
    }

    fn ambiguous_with(
        &self,
        direction: Direction,
        (decision, pass): (Decision, Option<TierRuleRef>),
        subject: &Identity,
        other: &Identity,
        traffic: &Traffic,
    ) -> Vec<u32> {
        let deciding: Vec<TierRuleRef> = match decision {
            Decision::Tier(r) => pass.into_iter().chain([r]).collect(),
            _ => pass.into_iter().collect(),
        };
        let mut found = Vec::new();
        for r in deciding {
            let at = &self.tier_policies[r.policy as usize];
            for &other_policy in &subject.tiers {
                let candidate = &self.tier_policies[other_policy as usize];
                if other_policy == r.policy
                    || candidate.tier != at.tier
                    || candidate.priority != at.priority
                {
                    continue;
                }
                let conflicting = candidate.rules(direction).iter().find(|rule| {
                    matches!(tier_rule_match(rule, other, traffic), TierMatch::Yes(_))
                });
                if conflicting.is_some_and(|rule| rule.action != r.action)
                    && !found.contains(&other_policy)
                {
                    found.push(other_policy);
                }
            }
        }
        found
    }

    /// Every rule of the `isolating` policies that allows the traffic, in policy and rule order; with
    /// `misses`, also why each other rule did not.
    fn allowing_rules(
        &self,
        direction: Direction,
        isolating: &[u32],
        other: &Identity,
        traffic: &Traffic,
        mut misses: Option<&mut Vec<RuleMiss>>,
    ) -> Vec<RuleRef> {
        let mut allowed = Vec::new();
        for &policy in isolating {
            for (index, rule) in self.policies[policy as usize]
                .rules(direction)
                .iter()
                .enumerate()
            {
                let peer = peer_match(rule, other);
                let port = traffic.port_match(rule);
                match (peer, port) {
                    (Some(peer), Some(port)) => allowed.push(RuleRef {
                        policy,
                        rule: index as u16,
                        peer,
                        port,
                    }),
                    _ => {
                        if let Some(misses) = misses.as_deref_mut() {
                            misses.push(RuleMiss {
                                policy,
                                rule: index as u16,
                                peer_matched: peer.is_some(),
                                port_matched: port.is_some(),
                            });
                        }
                    }
                }
            }
        }
        allowed
    }

    /// Judges a connection and gives its [`Grounds`]: the policies isolating each end and *every* rule that
    /// allows it, which is what finding unused rules needs (the first allowing rule is not enough: a rule that
    /// only ever duplicates an earlier one still allows traffic). Memoized in the cache like verdicts.
    pub fn judge_with_grounds(
        &self,
        cache: &mut VerdictCache,
        src: &Address,
        dst: &Address,
        port: Option<u16>,
        protocol: Protocol,
    ) -> (Verdict, Arc<Grounds>) {
        cache.bind(self);
        let key = CacheKey {
            src: self.identity_of(cache, src),
            dst: self.identity_of(cache, dst),
            port: port.map_or(u32::MAX, u32::from),
            protocol: protocol.0,
        };
        if let Some((verdict, grounds)) = cache.grounds.get(&key) {
            cache.stats.hits += 1;
            let grounds = Arc::clone(grounds);
            return (self.exceptions(src, dst, *verdict), grounds);
        }
        cache.stats.misses += 1;
        let (s, d) = (self.identity(cache, key.src), self.identity(cache, key.dst));
        let traffic = Traffic {
            port,
            protocol,
            dst_ports: &d.ports,
        };
        let verdict = self.evaluate(s, d, port, protocol);
        // NetworkPolicy rules count as allowing only where NetworkPolicy decided: a connection an Admin rule
        // decides never reaches them.
        let consulted = |decision: Decision| decision.tier() == DecidingTier::NetworkPolicy;
        let egress = match consulted(verdict.egress) {
            true => self.allowing_rules(Direction::Egress, &s.egress, d, &traffic, None),
            false => Vec::new(),
        };
        let ingress = match consulted(verdict.ingress) {
            true => self.allowing_rules(Direction::Ingress, &d.ingress, s, &traffic, None),
            false => Vec::new(),
        };
        let grounds = Arc::new(Grounds {
            egress_isolating: s.egress.clone(),
            egress_allowing: egress,
            ingress_isolating: d.ingress.clone(),
            ingress_allowing: ingress,
        });
        if cache.grounds.len() >= MAX_CACHED_VERDICTS {
            cache.grounds.clear();
            cache.stats.resets += 1;
        }
        cache.grounds.insert(key, (verdict, Arc::clone(&grounds)));
        (self.exceptions(src, dst, verdict), grounds)
    }

    /// The reachability of every ordered pair of `pods` (self pairs included) on a port and protocol.
    /// `port` names a number or a container port name, which resolves per destination pod (a destination
    /// that does not declare the name is judged as traffic with no known port: only rules without port
    /// restrictions can allow it).
    pub fn reach_matrix(
        &self,
        pods: &[PodId],
        port: &ProbePort,
        protocol: Protocol,
    ) -> ReachMatrix {
        let mut cache = VerdictCache::new();
        cache.bind(self);
        let addresses: Vec<Address> = pods.iter().map(|&p| self.address_of_pod(p)).collect();
        let ids: Vec<u32> = addresses
            .iter()
            .map(|a| self.identity_of(&mut cache, a))
            .collect();
        // The probe's port at each pod: a name resolves on the pod's own declaration (a host-network pod's too,
        // though its identity is its node's).
        let numbers: Vec<Option<u16>> = pods
            .iter()
            .map(|&p| match port {
                ProbePort::Number(n) => Some(*n),
                ProbePort::Name(name) => self.cluster.pod(p).named_port(name, protocol),
            })
            .collect();
        // Compact the (identity, port) pairs that occur so the verdict table is dense.
        let mut compact: Map<(u32, Option<u16>), u32> = Map::default();
        let mut distinct = Vec::new();
        let slots: Vec<u32> = ids
            .iter()
            .zip(&numbers)
            .map(|(&id, &number)| {
                *compact.entry((id, number)).or_insert_with(|| {
                    distinct.push((id, number));
                    distinct.len() as u32 - 1
                })
            })
            .collect();
        let k = distinct.len();
        let mut table = vec![0u8; k * k];
        let identities: Vec<&Identity> = distinct
            .iter()
            .map(|&(id, _)| self.identity(&cache, id))
            .collect();
        let slot_numbers: Vec<Option<u16>> = distinct.iter().map(|&(_, n)| n).collect();
        let mut memo = TierMemo::new(self, &identities, &slot_numbers);
        for (si, src) in identities.iter().enumerate() {
            for (di, dst) in identities.iter().enumerate() {
                let number = slot_numbers[di];
                let verdict = match memo.as_mut() {
                    Some(memo) => memo.evaluate(self, &identities, si, di, number, protocol),
                    None => self.evaluate(src, dst, number, protocol),
                };
                table[si * k + di] = pack(&verdict);
            }
        }
        let n = pods.len();
        let mut cells = vec![0u8; n * n];
        for (i, row) in cells.chunks_exact_mut(n.max(1)).enumerate().take(n) {
            let base = slots[i] as usize * k;
            for (j, cell) in row.iter_mut().enumerate() {
                *cell = table[base + slots[j] as usize];
            }
        }
        // The exceptions depend on the pods, not their identities; only pairs sharing a node can have one.
        let mut by_node: Map<NodeId, Vec<usize>> = Map::default();
        for (i, pod) in pods.iter().enumerate() {
            if let Some(node) = self.cluster.pod(*pod).node {
                by_node.entry(node).or_default().push(i);
            }
        }
        let mut fix = |i: usize, j: usize| {
            let (a, b, c) = self.exception_kinds(&addresses[i], &addresses[j]);
            if a || b || c {
                let dst = numbers[j];
                let evaluated = self.evaluate(
                    self.identity(&cache, ids[i]),
                    self.identity(&cache, ids[j]),
                    dst,
                    protocol,
                );
                cells[i * n + j] = pack(&self.exceptions(&addresses[i], &addresses[j], evaluated));
            }
        };
        for i in 0..n {
            fix(i, i);
        }
        for members in by_node.values() {
            for &i in members {
                for &j in members {
                    if i != j {
                        fix(i, j);
                    }
                }
            }
        }
        ReachMatrix {
            pods: pods.to_vec(),
            cells,
        }
    }
}

/// What pods with one namespace and one label set share.
#[derive(Clone)]
struct GroupFacts {
    /// NetworkPolicies isolating them for ingress.
    ingress: Vec<u32>,
    /// NetworkPolicies isolating them for egress.
    egress: Vec<u32>,
    /// Cluster-wide policies whose subject they are.
    tiers: Vec<u32>,
    /// Selector peers matching them.
    selector_peers: Vec<u32>,
}

const EGRESS_OK: u8 = 1;
const INGRESS_OK: u8 = 2;
const BOTH: u8 = EGRESS_OK | INGRESS_OK;
const EGRESS_TIER: u8 = 2;
const INGRESS_TIER: u8 = 4;
const UNDECIDED: u8 = 64;

/// A matrix cell: whether each direction allows, which tier decided each, and whether one was undecided.
fn pack(v: &Verdict) -> u8 {
    let tier = |d: Decision| d.tier() as u8;
    (u8::from(v.egress.allowed()) * EGRESS_OK)
        | (u8::from(v.ingress.allowed()) * INGRESS_OK)
        | (tier(v.egress) << EGRESS_TIER)
        | (tier(v.ingress) << INGRESS_TIER)
        | (u8::from(!v.decided()) * UNDECIDED)
}

fn unpack_tier(bits: u8) -> DecidingTier {
    match bits & 3 {
        0 => DecidingTier::Default,
        1 => DecidingTier::Admin,
        2 => DecidingTier::NetworkPolicy,
        _ => DecidingTier::Baseline,
    }
}

struct Traffic<'a> {
    port: Option<u16>,
    protocol: Protocol,
    dst_ports: &'a [ContainerPort],
}

impl Traffic<'_> {
    fn port_match(&self, rule: &Rule) -> Option<u16> {
        let Some(ports) = &rule.ports else {
            return Some(ALL);
        };
        ports.iter().position(|p| self.matches(p)).map(|i| i as u16)
    }

    /// A cluster-wide rule's protocol entry: a protocol with a port or range (or every port), or a container
    /// port name of the destination pod (any protocol it declares the name for).
    fn tier_port_matches(&self, p: &cnp::PortMatch) -> bool {
        match p {
            cnp::PortMatch::Port { protocol, range } => {
                *protocol == self.protocol
                    && match (range, self.port) {
                        (None, _) => true,
                        (Some((first, last)), Some(port)) => (*first..=*last).contains(&port),
                        (Some(_), None) => false,
                    }
            }
            cnp::PortMatch::Named(name) => self.port.is_some_and(|port| {
                self.dst_ports.iter().any(|c| {
                    c.protocol == self.protocol && c.port == port && c.name.as_deref() == Some(name)
                })
            }),
        }
    }

    fn matches(&self, p: &PortMatch) -> bool {
        if p.protocol != self.protocol {
            return false;
        }
        match (&p.port, self.port) {
            (PortSpec::Any, _) => true,
            (PortSpec::Range(first, last), Some(port)) => (*first..=*last).contains(&port),
            (PortSpec::Named(name), Some(port)) => self.dst_ports.iter().any(|c| {
                c.protocol == self.protocol && c.port == port && c.name.as_deref() == Some(name)
            }),
            (_, None) => false,
        }
    }
}

/// How an identity looks to cluster-wide egress rules: its cluster-wide peers, its ports (when a rule names
/// one) and the probe's port at it.
type EgressClass = (Vec<u32>, Vec<ContainerPort>, Option<u16>);

/// The matrix's memo of what the tiers say. Cluster-wide rules see the other end of a connection only through
/// the cluster-wide peers it matches (and, for named ports, its container ports, and the probe's port at it):
/// identities that look alike to them form one class, and each tier is evaluated once per (subject, class)
/// instead of once per pair.
struct TierMemo {
    /// Per identity: its class as the destination of an egress, and as the source of an ingress.
    egress_class: Vec<u32>,
    ingress_class: Vec<u32>,
    egress_classes: usize,
    ingress_classes: usize,
    /// [subject × class] → (Admin, Baseline).
    egress: Vec<[Option<TierPhase>; 2]>,
    ingress: Vec<[Option<TierPhase>; 2]>,
}

impl TierMemo {
    /// None when there is nothing to save: no cluster-wide policy, or classes about as many as identities.
    fn new(set: &PolicySet, identities: &[&Identity], numbers: &[Option<u16>]) -> Option<TierMemo> {
        if set.tier_policies.is_empty() {
            return None;
        }
        let tail = |i: &Identity| {
            let at = i.peers.partition_point(|&p| p < set.first_tier_peer);
            i.peers[at..].to_vec()
        };
        let mut egress_keys: Map<EgressClass, u32> = Map::default();
        let mut ingress_keys: Map<Vec<u32>, u32> = Map::default();
        let mut egress_class = Vec::with_capacity(identities.len());
        let mut ingress_class = Vec::with_capacity(identities.len());
        for (i, &number) in identities.iter().zip(numbers) {
            let ports = if set.tier_named_ports {
                i.ports.clone()
            } else {
                Vec::new()
            };
            let next = egress_keys.len() as u32;
            egress_class.push(*egress_keys.entry((tail(i), ports, number)).or_insert(next));
            let next = ingress_keys.len() as u32;
            ingress_class.push(*ingress_keys.entry(tail(i)).or_insert(next));
        }
        let (ce, ci, k) = (egress_keys.len(), ingress_keys.len(), identities.len());
        if ce.max(ci) * 2 > k {
            return None;
        }
        Some(TierMemo {
            egress_class,
            ingress_class,
            egress_classes: ce,
            ingress_classes: ci,
            egress: vec![[None; 2]; k * ce],
            ingress: vec![[None; 2]; k * ci],
        })
    }

    fn evaluate(
        &mut self,
        set: &PolicySet,
        identities: &[&Identity],
        si: usize,
        di: usize,
        port: Option<u16>,
        protocol: Protocol,
    ) -> Verdict {
        let (src, dst) = (identities[si], identities[di]);
        let traffic = Traffic {
            port,
            protocol,
            dst_ports: &dst.ports,
        };
        let slot = |tier: Tier| usize::from(tier == Tier::Baseline);
        let e_at = si * self.egress_classes + self.egress_class[di] as usize;
        let (egress, egress_pass) = set.side_with(Direction::Egress, src, dst, &traffic, |tier| {
            *self.egress[e_at][slot(tier)]
                .get_or_insert_with(|| set.tier_phase(tier, Direction::Egress, src, dst, &traffic))
        });
        let i_at = di * self.ingress_classes + self.ingress_class[si] as usize;
        let (ingress, ingress_pass) =
            set.side_with(Direction::Ingress, dst, src, &traffic, |tier| {
                *self.ingress[i_at][slot(tier)].get_or_insert_with(|| {
                    set.tier_phase(tier, Direction::Ingress, dst, src, &traffic)
                })
            });
        Verdict {
            egress,
            ingress,
            egress_pass,
            ingress_pass,
        }
    }
}

/// What one tier says about one direction of a connection: its first matching rule, and the first `domainNames`
/// rule passed over on the way.
#[derive(Clone, Copy, Debug, Default)]
struct TierPhase {
    rule: Option<TierRuleRef>,
    undecided: Option<TierRuleRef>,
}

/// How a cluster-wide rule meets a connection; the indexes are the matching peer and protocol entries
/// ([`ALL8`]: every one).
enum TierMatch {
    Yes((u8, u8)),
    /// Only a `domainNames` peer could match.
    Undecided((u8, u8)),
    No {
        peer: bool,
        port: bool,
    },
}

fn tier_rule_match(rule: &TierRule, other: &Identity, traffic: &Traffic) -> TierMatch {
    match rule.effect {
        Effect::MatchesNothing => {
            return TierMatch::No {
                peer: false,
                port: false,
            };
        }
        Effect::DeniesAll => return TierMatch::Yes((ALL8, ALL8)),
        Effect::AsWritten => {}
    }
    let port = if rule.ports.is_empty() {
        Some(ALL8)
    } else {
        rule.ports
            .iter()
            .position(|p| traffic.tier_port_matches(p))
            .map(|i| i as u8)
    };
    let mut domain = None;
    let mut peer = None;
    for (j, candidate) in rule.peers.iter().enumerate() {
        match candidate {
            TierPeer::Matched(id) if other.peers.binary_search(id).is_ok() => {
                peer = Some(j as u8);
                break;
            }
            TierPeer::DomainNames(_) => {
                domain.get_or_insert(j as u8);
            }
            _ => {}
        }
    }
    match (peer, domain, port) {
        (Some(peer), _, Some(port)) => TierMatch::Yes((peer, port)),
        (None, Some(peer), Some(port)) => TierMatch::Undecided((peer, port)),
        (peer, _, port) => TierMatch::No {
            peer: peer.is_some(),
            port: port.is_some(),
        },
    }
}

fn peer_match(rule: &Rule, other: &Identity) -> Option<u16> {
    let Some(peers) = &rule.peers else {
        return Some(ALL);
    };
    peers
        .iter()
        .position(|p| other.peers.binary_search(p).is_ok())
        .map(|i| i as u16)
}

/// A probe port: a number, or a container port name resolved per destination.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ProbePort {
    /// A port number.
    Number(u16),
    /// A container port name.
    Name(String),
}

/// Pairwise reachability of a list of pods on one probe.
#[derive(Clone, Debug)]
pub struct ReachMatrix {
    /// The pods, in row and column order.
    pub pods: Vec<PodId>,
    cells: Vec<u8>,
}

impl ReachMatrix {
    /// (egress allowed, ingress allowed) from pod `from` to pod `to` (indexes into [`ReachMatrix::pods`]).
    pub fn get(&self, from: usize, to: usize) -> (bool, bool) {
        let cell = self.cells[from * self.pods.len() + to];
        (cell & EGRESS_OK != 0, cell & INGRESS_OK != 0)
    }

    /// The tiers that decided (egress, ingress) from pod `from` to pod `to`.
    pub fn tiers(&self, from: usize, to: usize) -> (DecidingTier, DecidingTier) {
        let cell = self.cells[from * self.pods.len() + to];
        (
            unpack_tier(cell >> EGRESS_TIER),
            unpack_tier(cell >> INGRESS_TIER),
        )
    }

    /// Whether a direction from `from` to `to` is [`Decision::Undecided`].
    pub fn undecided(&self, from: usize, to: usize) -> bool {
        self.cells[from * self.pods.len() + to] & UNDECIDED != 0
    }

    /// How many ordered pairs are allowed in both directions.
    pub fn allowed_pairs(&self) -> usize {
        self.cells.iter().filter(|&&c| c & BOTH == BOTH).count()
    }
}

/// Why one direction decided as it did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectionDetail {
    /// Whether the end judged in this direction is subject to policy at all.
    pub subject: bool,
    /// The NetworkPolicies that select it and isolate it in this direction (empty: not isolated).
    pub isolating: Vec<u32>,
    /// Every NetworkPolicy rule that allows the connection.
    pub allowed_by: Vec<RuleRef>,
    /// Every other rule of the isolating policies, with what failed.
    pub misses: Vec<RuleMiss>,
    /// Every rule of the cluster-wide policies whose subject the end is, in evaluation order, with how it met
    /// the connection (those after the deciding one included: they are what the decision shadows).
    pub tier_rules: Vec<TierCheck>,
    /// Cluster-wide policies of the deciding (or passing) rule's tier and priority with a rule that matches the
    /// connection with another action: the API leaves the choice between them to the implementation, so the
    /// datapath may decide otherwise than weir (which takes them in order of kind, then name).
    pub ambiguous_with: Vec<u32>,
}

/// How one cluster-wide rule met a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TierCheck {
    /// The rule.
    pub rule: TierRuleRef,
    /// Whether it matched.
    pub outcome: TierOutcome,
}

/// Whether a cluster-wide rule matched a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TierOutcome {
    /// It matches.
    Matched,
    /// Only its `domainNames` could match, which a flow does not tell.
    Undecided,
    /// It does not match.
    Missed {
        /// Whether some peer of the rule matched the other end.
        peer_matched: bool,
        /// Whether some protocol entry matched the traffic.
        port_matched: bool,
    },
}

/// A rule that did not allow a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleMiss {
    /// Index into [`PolicySet::policies`].
    pub policy: u32,
    /// Index of the rule.
    pub rule: u16,
    /// Whether some peer of the rule matched the other end.
    pub peer_matched: bool,
    /// Whether some port of the rule matched the traffic.
    pub port_matched: bool,
}

/// A verdict with its reasons.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// The verdict (the same [`PolicySet::judge`] gives).
    pub verdict: Verdict,
    /// The source's egress.
    pub egress: DirectionDetail,
    /// The destination's ingress.
    pub ingress: DirectionDetail,
}

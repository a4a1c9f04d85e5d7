//! The aggregator's judging core, without I/O: batches of flow records in; judged flows, workload edges, the
//! baseline, the join of a connection's views from both ends, and alerts out.

use std::collections::{BTreeMap, VecDeque};

use foldhash::{HashMap, HashMapExt, HashSet};
use smallvec::SmallVec;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_analysis::{
    AlertBook, Analysis, Analyzer, Attempt, ConnectionVerdict, Decided, EdgeAlertIds, EdgeBook,
    EdgeKey, EdgeStats, JudgedFlow, Observation, Party, ScanDetector, ScanRule, direction_views,
    endpoint_key, flow_verdict, policy_names, retain_marked,
};
use weir_model::{
    Alert, Cidr, Direction, EndReason, EndpointKey, FlowRecord, FlowVerdict, Timestamp,
};
use weir_policy::{PolicySet, VerdictCache};

use crate::fold::{PeerFold, PeerSide, by_address};
pub use crate::join::Side;
use crate::join::{JoinKey, JoinTable, Joined, View};

/// Settings of the judging core.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Address ranges of the cluster beyond the nodes' pod ranges (ownerless addresses there are unknown pods).
    pub cluster_ranges: Vec<Cidr>,
    /// How long the baseline is learned, from the first start of the aggregator on its data directory.
    pub learn: Duration,
    /// Least time between two deliveries of the same alert (its count goes on meanwhile).
    pub alert_repeat: Duration,
    /// When a source is scanning (the rule the offline report applies too).
    pub scan: ScanRule,
    /// Judged flows kept for the API.
    pub recent_flows: usize,
    /// How long to wait for the other end's view of a connection.
    pub join_window: Duration,
    /// Most connections waiting for their other view.
    pub max_joins: usize,
    /// How long edges and alerts are kept after their traffic was last seen (the store keeps them as long).
    pub retention: Duration,
    /// Most edges held: at the cap, the least recently seen tenth is forgotten (counted, and deleted from the
    /// store) before a new edge is added.
    pub max_edges: usize,
    /// Outside (and unknown) addresses an endpoint's edges name one by one on each side, before further ones
    /// are counted under prefixes ([`crate::fold`]).
    pub outside_peers: usize,
    /// Most alerts held: beyond it, the least recently seen tenth is forgotten (counted).
    pub max_alerts: usize,
    /// Most sources the scan detector follows: beyond it, the tenth least like a scan is forgotten (counted).
    pub max_scan_sources: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            cluster_ranges: Vec::new(),
            learn: Duration::from_secs(3600),
            alert_repeat: Duration::from_secs(30),
            scan: ScanRule::default(),
            recent_flows: 100_000,
            join_window: Duration::from_secs(15),
            max_joins: 2_000_000,
            retention: Duration::from_secs(7 * 24 * 3600),
            max_edges: 200_000,
            outside_peers: 256,
            max_alerts: 50_000,
            max_scan_sources: 100_000,
        }
    }
}

/// What a flow's ends and verdict resolved to: shared by every flow with the same resolution (one reference
/// count per flow instead of a copy of each name).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FlowView {
    /// The source pod (`namespace/name`), when a pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_pod: Option<Arc<str>>,
    /// The destination pod, when a pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_pod: Option<Arc<str>>,
    /// The Service it went through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Arc<str>>,
    /// Source endpoint.
    pub source: EndpointKey,
    /// Destination endpoint.
    pub destination: EndpointKey,
    /// Port as judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The verdict.
    pub verdict: FlowVerdict,
    /// The deciding policies.
    pub policies: Arc<[String]>,
}

/// A judged flow as kept for the API.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredFlow {
    /// The record.
    #[serde(flatten)]
    pub record: FlowRecord,
    /// Its ends and verdict.
    #[serde(flatten)]
    pub view: Arc<FlowView>,
    /// Which end reported it.
    pub reported_by: Side,
}

/// What a connection's ends and verdict resolved to.
#[derive(Debug)]
struct Resolved {
    edge: usize,
    /// Ends, port, verdict and policies, as every flow of this resolution is kept.
    view: Arc<FlowView>,
    not_isolated: bool,
    /// How each direction was decided (interned).
    decided: Arc<Decided>,
    reason: Arc<str>,
    /// An end was counted under a prefix of its address.
    folded: bool,
    /// Its policy-violation (per pair), enforcement-gap and new-edge (per port) alert ids.
    alert_ids: EdgeAlertIds,
    /// The node of the destination pod (interned).
    destination_pod_node: Option<u16>,
}

/// What a resolution depends on, packed into integers (it is looked up once per record): each end as its
/// party's id or, for outside and unknown addresses, the address; a word of tags, protocol and port; the Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ResolveKey {
    source: u128,
    destination: u128,
    /// Source tag (bits 0–3), destination tag (4–7), protocol (8–15), port present (16), port (17–32).
    meta: u64,
    /// The Service's id plus one, or 0.
    service: u64,
}

impl ResolveKey {
    fn end(party: Party, ip: IpAddr) -> (u128, u64) {
        match party {
            Party::Pod(id) => (u128::from(id.0), 1),
            Party::Node(id) => (u128::from(id.0), 2),
            Party::Backends(id) => (u128::from(id.0), 3),
            Party::Service(id) => (u128::from(id.0), 4),
            Party::External => (ip_bits(ip), 5),
            Party::Unknown => (ip_bits(ip), 6),
        }
    }
}

fn ip_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Most resolutions cached (cleared when full, and with every policy change).
const RESOLVED_CAP: usize = 1 << 16;

/// What an applied batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Records in the batch.
    pub records: u64,
    /// Connections counted for the first time.
    pub connections: u64,
    /// Records that were the other end's view of a connection already counted.
    pub joined_views: u64,
    /// Post-DNAT records folded into their Service flow.
    pub dnat_joined: u64,
}

/// Running totals, for metrics and status (kept across restarts).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Totals {
    /// Records applied.
    pub records: u64,
    /// Connections counted.
    pub connections: u64,
    /// By verdict.
    pub verdicts: BTreeMap<FlowVerdict, u64>,
    /// Records joined with the other end's view.
    pub joined_views: u64,
    /// Post-DNAT records folded into their Service flow.
    pub dnat_joined: u64,
    /// Connections seen delivered.
    pub delivered: u64,
    /// Connections dropped between the nodes.
    pub dropped_in_transit: u64,
    /// Denied connections that were delivered.
    pub enforcement_gaps: u64,
    /// Connections dropped from the join table because it was full (not joined).
    pub join_evictions: u64,
    /// Alerts raised, by type.
    pub alerts: BTreeMap<String, u64>,
    /// Alert deliveries (first raise and rate-limited updates).
    pub alert_deliveries: u64,
    /// Policy set changes applied.
    pub policy_updates: u64,
    /// Edges forgotten because none of their traffic was seen within the retention.
    #[serde(default)]
    pub expired_edges: u64,
    /// Alerts forgotten the same way.
    #[serde(default)]
    pub expired_alerts: u64,
    /// Edges forgotten because the book was full (the least recently seen first).
    #[serde(default)]
    pub evicted_edges: u64,
    /// Alerts forgotten because too many were held.
    #[serde(default)]
    pub evicted_alerts: u64,
    /// Sources the scan detector stopped following because it followed too many.
    #[serde(default)]
    pub evicted_scan_sources: u64,
    /// Connections counted under a prefix of their outside address (its endpoint had too many outside peers).
    #[serde(default)]
    pub folded_connections: u64,
}

/// What the engine forgot to stay within its bounds, for the store to delete.
#[derive(Clone, Debug, Default)]
pub struct Forgotten {
    /// Edges.
    pub edges: Vec<EdgeKey>,
    /// Alerts, by id.
    pub alerts: Vec<Arc<str>>,
}

/// Most time between two passes that forget what the retention no longer covers.
const EXPIRY_EVERY_NS: i64 = 60_000_000_000;
/// How long past its window a source's scan state is kept for late batches.
const SCAN_IDLE_MARGIN: Duration = Duration::from_secs(60);

/// What judging a batch needs: the policy set, the cluster's ranges and a verdict cache (lent by the engine).
pub struct JudgeKit {
    set: Arc<PolicySet>,
    cluster_ranges: Arc<[Cidr]>,
    cache: VerdictCache,
}

impl JudgeKit {
    /// Attributes and judges records (in time order, pre- and post-DNAT views joined), as `weir analyze` does.
    pub fn judge(self, records: Vec<FlowRecord>) -> Judged {
        let n = records.len() as u64;
        let mut analyzer = Analyzer::with_cache(&self.set, &self.cluster_ranges, self.cache);
        let analysis = analyzer.analyze_sorted(records);
        let cache = analyzer.into_cache();
        Judged {
            set: self.set,
            analysis,
            records: n,
            cache,
        }
    }
}

/// A judged batch, for [`Engine::apply_judged`].
pub struct Judged {
    set: Arc<PolicySet>,
    analysis: Analysis,
    records: u64,
    cache: VerdictCache,
}

/// The judging core.
pub struct Engine {
    config: EngineConfig,
    /// The configuration's cluster ranges, shared with every [`JudgeKit`].
    cluster_ranges: Arc<[Cidr]>,
    set: Arc<PolicySet>,
    /// `namespace/name` of pods by id, for the current policy set.
    pod_names: Vec<Option<Arc<str>>>,
    /// Resolutions for the current policy set.
    resolved: HashMap<ResolveKey, Arc<Resolved>>,
    /// The edges, in the book both offline and live count into.
    book: EdgeBook,
    /// The interned nodes that reported each edge (`EdgeStats::nodes` by id, to skip string compares).
    edge_nodes: Vec<SmallVec<[u16; 4]>>,
    /// Node names, interned.
    node_ids: HashMap<String, u16>,
    /// Per interned node: whether its agent reports.
    node_watched: Vec<bool>,
    /// The last reporting node looked up (a batch comes from one node).
    last_node: Option<(String, u16)>,
    /// Outside peers per endpoint, folded into prefixes beyond the budget.
    fold: PeerFold,
    /// Edges and alerts forgotten for the bounds since the last checkpoint.
    forgotten: Forgotten,
    /// The resolution each edge last counted a connection with.
    edge_resolved: Vec<Option<Arc<Resolved>>>,
    /// Connections by verdict since the engine started, added to `totals.verdicts` when read.
    verdict_counts: BTreeMap<FlowVerdict, u64>,
    learning_started: Timestamp,
    /// Connections waiting for their other view.
    joins: JoinTable,
    /// The one scan detector.
    scans: ScanDetector,
    /// Alerts by the rules of [`weir_analysis::alert_kinds`].
    alerts: AlertBook,
    recent: VecDeque<StoredFlow>,
    /// Flows pushed out of the ring, for the caller to free outside its lock ([`Engine::take_evicted`]).
    evicted: Vec<StoredFlow>,
    /// Verdict caches for the current policy set, lent out by [`Engine::judge_kit`].
    spare_caches: Vec<VerdictCache>,
    /// Equal policy lists, verdicts and Service names share one allocation, so an edge sees a change by pointer.
    interned_policies: HashSet<Arc<[String]>>,
    interned_decided: HashSet<Arc<Decided>>,
    interned_names: HashSet<Arc<str>>,
    /// Flows added to `recent` since the last checkpoint.
    unsaved_flows: usize,
    /// When [`Engine::tick`] next forgets what the retention no longer covers.
    next_expiry: i64,
    totals: Totals,
}

/// Whether the destination took the connection ([`weir_model::ConnectionOutcome`]).
fn answered(r: &FlowRecord) -> bool {
    r.outcome().answered()
}

impl Engine {
    /// An engine judging against `set`, learning its baseline from `learning_started` on.
    pub fn new(config: EngineConfig, set: Arc<PolicySet>, learning_started: Timestamp) -> Engine {
        let cluster_ranges = Arc::from(config.cluster_ranges.as_slice());
        let (scans, alerts) = (
            ScanDetector::new(config.scan),
            AlertBook::new(config.alert_repeat),
        );
        let fold = PeerFold::new(config.outside_peers);
        let mut engine = Engine {
            fold,
            forgotten: Forgotten::default(),
            config,
            cluster_ranges,
            set: Arc::clone(&set),
            pod_names: Vec::new(),
            resolved: HashMap::new(),
            book: EdgeBook::new(),
            edge_resolved: Vec::new(),
            edge_nodes: Vec::new(),
            node_ids: HashMap::new(),
            node_watched: Vec::new(),
            last_node: None,
            verdict_counts: BTreeMap::new(),
            learning_started,
            joins: JoinTable::new(),
            scans,
            alerts,
            recent: VecDeque::new(),
            evicted: Vec::new(),
            spare_caches: Vec::new(),
            interned_policies: HashSet::default(),
            interned_decided: HashSet::default(),
            interned_names: HashSet::default(),
            unsaved_flows: 0,
            next_expiry: 0,
            totals: Totals::default(),
        };
        engine.set_policy(set);
        engine.totals.policy_updates = 0;
        engine
    }

    /// Judges later flows against a new policy set (the cluster changed).
    pub fn set_policy(&mut self, set: Arc<PolicySet>) {
        self.pod_names = set
            .cluster()
            .pods()
            .iter()
            .map(|p| Some(Arc::from(p.key())))
            .collect();
        self.set = set;
        self.spare_caches.clear();
        self.resolved.clear();
        self.totals.policy_updates += 1;
    }

    /// The policy set in force.
    pub fn policy_set(&self) -> &Arc<PolicySet> {
        &self.set
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// When the baseline started to be learned.
    pub fn learning_started(&self) -> Timestamp {
        self.learning_started
    }

    /// When learning ends.
    pub fn learning_ends(&self) -> Timestamp {
        Timestamp(
            self.learning_started
                .0
                .saturating_add(weir_model::duration_nanos(self.config.learn)),
        )
    }

    /// Notes that a node's agent reports: connections to pods there are expected to show up at both ends.
    pub fn watch_node(&mut self, node: &str) {
        let id = self.node_id(node);
        if let Some(w) = self.node_watched.get_mut(usize::from(id)) {
            *w = true;
        }
    }

    /// A node name's interned id (ids past `u16::MAX` share the last one: counting stays right, only the
    /// per-edge node lists of such clusters merge them).
    fn node_id(&mut self, node: &str) -> u16 {
        if let Some((name, id)) = &self.last_node
            && name == node
        {
            return *id;
        }
        let id = match self.node_ids.get(node) {
            Some(&id) => id,
            None => {
                let id = u16::try_from(self.node_ids.len()).unwrap_or(u16::MAX);
                self.node_ids.insert(node.to_owned(), id);
                if self.node_watched.len() <= usize::from(id) {
                    self.node_watched.push(false);
                }
                id
            }
        };
        self.last_node = Some((node.to_owned(), id));
        id
    }

    /// Totals.
    pub fn totals(&self) -> Totals {
        let mut t = self.totals.clone();
        t.alert_deliveries += self.alerts.delivered();
        for (kind, n) in self.alerts.raised() {
            *t.alerts.entry(kind.name().to_owned()).or_default() += n;
        }
        for (verdict, n) in &self.verdict_counts {
            *t.verdicts.entry(*verdict).or_default() += n;
        }
        t
    }

    /// Every edge.
    pub fn edges(&self) -> &[EdgeStats] {
        self.book.edges()
    }

    /// Every alert.
    pub fn alerts(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.iter()
    }

    /// One alert.
    pub fn alert(&self, id: &str) -> Option<&Alert> {
        self.alerts.get(id)
    }

    /// Recent judged flows, oldest first.
    pub fn recent(&self) -> &VecDeque<StoredFlow> {
        &self.recent
    }

    /// Alerts raised or updated since the last call, to deliver.
    pub fn take_deliveries(&mut self) -> Vec<Alert> {
        self.alerts.take_deliveries()
    }

    /// Connections waiting for their other view.
    pub fn pending_joins(&self) -> usize {
        self.joins.len()
    }

    /// Restores persisted state (at start, before any batch).
    pub fn restore(
        &mut self,
        edges: Vec<EdgeStats>,
        alerts: Vec<Alert>,
        flows: Vec<StoredFlow>,
        totals: Option<Totals>,
        now: Timestamp,
    ) {
        if let Some(t) = totals {
            self.totals = t;
        }
        self.book.restore(edges);
        self.edge_nodes = Vec::with_capacity(self.book.len());
        for i in 0..self.book.len() {
            let names: Vec<String> = self.book.edges()[i].nodes.iter().cloned().collect();
            let ids = names.iter().map(|n| self.node_id(n)).collect();
            self.edge_nodes.push(ids);
        }
        self.edge_resolved = vec![None; self.book.len()];
        self.fold.rebuild(self.book.edges());
        // A store written with larger bounds (or by a version without them) is brought within these ones.
        while self.book.len() > self.config.max_edges.max(1) {
            self.evict_edges();
        }
        self.alerts.restore(alerts, now);
        self.bound_alerts();
        let keep = flows.len().saturating_sub(self.config.recent_flows);
        self.recent = flows.into_iter().skip(keep).collect();
    }

    /// Marks every edge and alert changed (a checkpoint failed: write them all next time).
    pub fn mark_all_dirty(&mut self) {
        self.book.mark_all_dirty();
        self.alerts.mark_all_dirty();
    }

    /// What changed since the last checkpoint: edges, alerts and new recent flows. Marks them saved.
    pub fn take_changes(&mut self) -> (Vec<EdgeStats>, Vec<Alert>, Vec<StoredFlow>) {
        let edges = self.book.take_changes();
        let alerts = self.alerts.take_changes();
        // At most a tenth of the ring per checkpoint: under a heavy load the stored ring keeps the newest flows
        // of each checkpoint instead of spending a core on serializing every one (counts are exact regardless).
        let n = self
            .unsaved_flows
            .min(self.recent.len())
            .min((self.config.recent_flows / 10).max(1000));
        let flows = self
            .recent
            .iter()
            .skip(self.recent.len() - n)
            .cloned()
            .collect();
        self.unsaved_flows = 0;
        (edges, alerts, flows)
    }

    /// What was forgotten to stay within the bounds since the last call, for the store to delete.
    pub fn take_forgotten(&mut self) -> Forgotten {
        std::mem::take(&mut self.forgotten)
    }

    /// Gives back what [`Engine::take_forgotten`] answered when the checkpoint that was to delete it failed.
    pub fn keep_forgotten(&mut self, f: Forgotten) {
        self.forgotten.edges.extend(f.edges);
        self.forgotten.alerts.extend(f.alerts);
    }

    fn pod_name(&self, party: Party) -> Option<Arc<str>> {
        match party {
            Party::Pod(id) => self.pod_names.get(id.0 as usize).cloned().flatten(),
            _ => None,
        }
    }

    /// Attributes, judges and counts a batch of records reported at `now` (wall clock).
    pub fn apply(&mut self, records: Vec<FlowRecord>, now: Timestamp) -> Applied {
        let kit = self.judge_kit();
        // Always applied: nothing changed the policy set in between.
        self.apply_judged(kit.judge(records), now)
            .unwrap_or_default()
    }

    /// What judging a batch needs, to do it without holding the engine (the expensive half of
    /// [`Engine::apply`], on any thread); [`Engine::apply_judged`] counts the result.
    pub fn judge_kit(&mut self) -> JudgeKit {
        JudgeKit {
            set: Arc::clone(&self.set),
            cluster_ranges: Arc::clone(&self.cluster_ranges),
            cache: self.spare_caches.pop().unwrap_or_default(),
        }
    }

    /// Counts a batch judged by [`JudgeKit::judge`]. When the policy set changed meanwhile, counts nothing and
    /// answers `None`: the records must be judged again (parties are numbered per policy set).
    pub fn apply_judged(&mut self, judged: Judged, now: Timestamp) -> Option<Applied> {
        if !Arc::ptr_eq(&judged.set, &self.set) {
            return None;
        }
        let Judged {
            set,
            analysis,
            records,
            cache,
        } = judged;
        if self.spare_caches.len() < 8 {
            self.spare_caches.push(cache);
        }
        let mut applied = Applied {
            records,
            dnat_joined: analysis.dnat_joined,
            ..Applied::default()
        };
        self.totals.records += records;
        self.totals.dnat_joined += analysis.dnat_joined;
        for flow in analysis.flows {
            match self.observe(&set, flow, now) {
                true => applied.connections += 1,
                false => applied.joined_views += 1,
            }
        }
        self.expire(now);
        self.bound_alerts();
        let sources = self.config.max_scan_sources.max(1);
        if self.scans.sources() > sources {
            let gone = self.scans.shed(sources - sources / 10);
            self.totals.evicted_scan_sources += gone as u64;
        }
        Some(applied)
    }

    /// Flows the ring let go of since the last call: dropping them is left to the caller, outside its lock.
    pub fn take_evicted(&mut self) -> Vec<StoredFlow> {
        std::mem::take(&mut self.evicted)
    }

    fn intern_policies(&mut self, policies: Vec<String>) -> Arc<[String]> {
        if let Some(p) = self.interned_policies.get(policies.as_slice()) {
            return Arc::clone(p);
        }
        let p: Arc<[String]> = Arc::from(policies);
        self.interned_policies.insert(Arc::clone(&p));
        p
    }

    fn intern_decided(&mut self, decided: Decided) -> Arc<Decided> {
        if let Some(d) = self.interned_decided.get(&decided) {
            return Arc::clone(d);
        }
        let d = Arc::new(decided);
        self.interned_decided.insert(Arc::clone(&d));
        d
    }

    fn intern_name(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.interned_names.get(name) {
            return Arc::clone(n);
        }
        let n: Arc<str> = Arc::from(name);
        self.interned_names.insert(Arc::clone(&n));
        n
    }

    /// What a flow's ends and verdict resolve to, cached per (source, destination, protocol, port, Service):
    /// for a given policy set the verdict, the edge and every name depend on nothing else.
    fn resolve(&mut self, set: &PolicySet, flow: &JudgedFlow, now: Timestamp) -> Arc<Resolved> {
        let r = &flow.record;
        let dst_ip = flow.destination_ip();
        let port = if r.proto.is_icmp() {
            None
        } else {
            flow.judged_port()
        };
        let (source, source_tag) = ResolveKey::end(flow.source, r.src);
        let (destination, destination_tag) = ResolveKey::end(flow.destination, dst_ip);
        let key = ResolveKey {
            source,
            destination,
            meta: source_tag
                | destination_tag << 4
                | u64::from(r.proto.0) << 8
                | port.map_or(0, |p| 1 << 16 | u64::from(p) << 17),
            service: flow.service.map_or(0, |s| u64::from(s.service.0) + 1),
        };
        if let Some(hit) = self.resolved.get(&key) {
            return Arc::clone(hit);
        }
        // At the cap, room is made before anything new is placed.
        if self.book.len() >= self.config.max_edges.max(1) {
            self.evict_edges();
        }
        let (src, dst, folded) = self.fold_ends(
            endpoint_key(set.cluster(), flow.source, r.src),
            r.src,
            endpoint_key(set.cluster(), flow.destination, dst_ip),
            dst_ip,
        );
        let verdict = flow_verdict(&flow.judgement);
        let (egress, ingress) = direction_views(set, &flow.judgement);
        // As the reports count it: allowed with no rule allowing it in either direction.
        let not_isolated =
            weir_analysis::class_of(&flow.judgement) == weir_analysis::EdgeVerdict::NotIsolated;
        let policies = policy_names(set, &flow.judgement);
        // Where a cluster-wide policy took part, the decision chain (`Admin sec-ops rule #1 Pass → ...`) says
        // more than the policy names.
        let side = |dir: &str, view: &weir_analysis::DirectionView| {
            if view.tier.cluster_wide() || view.chain.contains(" Pass → ") {
                format!("{dir} {}: {}", view.verdict, view.chain)
            } else {
                format!("{dir} {}{}", view.verdict, bracket(&view.policies))
            }
        };
        let reason = format!("{}; {}", side("egress", &egress), side("ingress", &ingress));
        let decided = self.intern_decided(Decided {
            egress: egress.decision(),
            ingress: ingress.decision(),
        });
        let edge_key = EdgeKey {
            src: src.clone(),
            dst: dst.clone(),
            proto: r.proto,
            port,
        };
        let baseline = now < self.learning_ends();
        let fresh = self.book.len();
        let edge = self.book.find_or_insert(&edge_key, || {
            EdgeStats::new(
                edge_key.clone(),
                r,
                ConnectionVerdict {
                    verdict,
                    not_isolated,
                    policies: &policies,
                    decided: &decided,
                    service: None,
                },
                baseline,
            )
        });
        if edge == fresh {
            self.edge_nodes.push(SmallVec::new());
            self.edge_resolved.push(None);
        }
        let destination_pod_node = match flow.destination {
            Party::Pod(id) => set
                .cluster()
                .pod(id)
                .node_name
                .as_deref()
                .map(|node| self.node_id(node)),
            _ => None,
        };
        let port_text = match port {
            Some(p) => format!("{}/{p}", r.proto),
            None => r.proto.to_string(),
        };
        // Violations are one alert per pair of endpoints (a probe of many ports is one alert listing them);
        // gaps and new edges are per port.
        let alert_ids = EdgeAlertIds::new(&src, &dst, &port_text);
        let resolved = Arc::new(Resolved {
            alert_ids,
            edge,
            view: Arc::new(FlowView {
                src_pod: self.pod_name(flow.source),
                dst_pod: self.pod_name(flow.destination),
                service: flow
                    .service
                    .map(|s| self.intern_name(&set.cluster().service(s.service).key())),
                source: src,
                destination: dst,
                port,
                verdict,
                policies: self.intern_policies(policies),
            }),
            not_isolated,
            decided,
            reason: Arc::from(reason),
            folded,
            destination_pod_node,
        });
        // Bounded: a flood of distinct outside addresses must not grow it without end.
        if self.resolved.len() >= RESOLVED_CAP {
            self.resolved.clear();
        }
        self.resolved.insert(key, Arc::clone(&resolved));
        resolved
    }

    /// Counts one judged flow; returns whether it was a connection not counted before.
    fn observe(&mut self, set: &PolicySet, flow: JudgedFlow, now: Timestamp) -> bool {
        let res = self.resolve(set, &flow, now);
        let attempt = Some(Attempt::of(&flow));
        let r = flow.record;
        let dst_ip = flow.service.and_then(|s| s.backend).unwrap_or(r.dst);
        let edge = res.edge;
        let denied = res.view.verdict == FlowVerdict::Denied;
        let side = match r.observed_at.as_ref().map(|o| o.direction) {
            Some(Direction::ToPod) => Side::Destination,
            _ => Side::Source,
        };
        let reporter = r.observed_at.as_ref().map(|o| self.node_id(&o.node));

        // One connection, two views: find the other end's report of it.
        let destination_watched = res.destination_pod_node.is_some_and(|n| {
            self.node_watched
                .get(usize::from(n))
                .copied()
                .unwrap_or(false)
        });
        let Joined {
            new_connection: is_new,
            counts_volume,
            newly_delivered,
            gap,
        } = self.joins.add(
            &View {
                key: JoinKey {
                    proto: r.proto,
                    src: r.src,
                    port: r.src_port.or(r.icmp_id).unwrap_or(0),
                },
                dst: r.dst,
                backend: dst_ip,
                start: r.start,
                end: r.end,
                side,
                edge: u32::try_from(edge).unwrap_or(u32::MAX),
                denied,
                answered: answered(&r),
                destination_watched,
                continues: r.end_reason == EndReason::ActiveTimeout,
            },
            now.0
                .saturating_add(weir_model::duration_nanos(self.config.join_window)),
        );

        let Some(e) = self.book.get_mut(edge) else {
            // Resolutions are cleared whenever the book is renumbered: never an index it does not hold.
            return is_new;
        };
        if let Some(node) = reporter
            && let Some(ids) = self.edge_nodes.get_mut(edge)
            && !ids.contains(&node)
        {
            ids.push(node);
            if let Some(o) = &r.observed_at {
                e.add_node(&o.node);
            }
        }
        if counts_volume {
            e.count_volume(&r);
        }
        if newly_delivered {
            e.delivered += 1;
            self.totals.delivered += 1;
        }
        if gap {
            e.enforcement_gaps += 1;
            self.totals.enforcement_gaps += 1;
        }
        let view = &res.view;
        if is_new {
            e.count_connection(view.verdict, res.not_isolated);
            // Verdicts, policy lists and Service names are interned: the same pointers as last time mean
            // nothing to copy.
            let same = self.edge_resolved[edge].as_ref().is_some_and(|last| {
                let v = &last.view;
                v.verdict == view.verdict
                    && Arc::ptr_eq(&v.policies, &view.policies)
                    && Arc::ptr_eq(&last.decided, &res.decided)
                    && match (&v.service, &view.service) {
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        (None, None) => true,
                        _ => false,
                    }
            });
            if !same {
                e.set_last_verdict(ConnectionVerdict {
                    verdict: view.verdict,
                    not_isolated: res.not_isolated,
                    policies: &view.policies,
                    decided: &res.decided,
                    service: view.service.as_deref(),
                });
                self.edge_resolved[edge] = Some(Arc::clone(&res));
            }
            self.totals.connections += 1;
            self.totals.folded_connections += u64::from(res.folded);
            *self.verdict_counts.entry(view.verdict).or_default() += 1;
        } else {
            self.totals.joined_views += 1;
        }
        let baseline_edge = e.baseline;
        let attempt = attempt.filter(|_| is_new);

        let observation = Observation {
            source: &view.source,
            destination: &view.destination,
            source_pod: view.src_pod.as_deref(),
            destination_pod: view.dst_pod.as_deref(),
            record: &r,
            port: view.port,
            verdict: view.verdict,
            policies: &view.policies,
            reason: &res.reason,
            ids: &res.alert_ids,
            new_connection: is_new,
            enforcement_gap: gap,
            baseline_edge,
        };
        // A new connection counts into its source's scan windows.
        let scan = match attempt {
            Some(a) => self.scans.hit(&a, now),
            None => None,
        };
        self.alerts.observe(&observation, scan, now);

        self.recent.push_back(StoredFlow {
            record: r,
            view: Arc::clone(view),
            reported_by: side,
        });
        self.unsaved_flows += 1;
        while self.recent.len() > self.config.recent_flows {
            if let Some(old) = self.recent.pop_front() {
                self.evicted.push(old);
            }
        }
        is_new
    }

    /// Closes the join of connections whose other view did not come in time, and delivers alert updates whose
    /// quiet time is over.
    pub fn tick(&mut self, now: Timestamp) {
        self.expire(now);
        if now.0 >= self.next_expiry {
            self.forget_expired(now);
            // Often enough that memory follows the retention closely, seldom enough to cost nothing.
            let every = weir_model::duration_nanos(self.config.retention / 100)
                .clamp(1_000_000_000, EXPIRY_EVERY_NS);
            self.next_expiry = now.0.saturating_add(every);
        }
        self.alerts.tick(now);
    }

    /// Forgets edges and alerts none of whose traffic was seen within the retention, and scan windows that
    /// ended, as the store does on disk: a long-running aggregator holds what a restarted one would. An edge a
    /// waiting connection still points at is kept until the connection is done. Returns the edges and alerts
    /// forgotten (also counted in the totals).
    pub fn forget_expired(&mut self, now: Timestamp) -> (usize, usize) {
        let horizon = Timestamp(
            now.0
                .saturating_sub(weir_model::duration_nanos(self.config.retention)),
        );
        // Scan state: one per source address ever seen connecting, so the one map here that grows with outside
        // clients. A source idle for longer than the window plus a margin for late batches starts afresh.
        self.scans.forget_idle(now, SCAN_IDLE_MARGIN);

        // Alerts: not while a delivery or checkpoint still has to see them.
        let alerts = self.alerts.forget_before(horizon);

        let mut keep = self.book.seen_since(horizon);
        for edge in self.joins.edges() {
            if let Some(k) = keep.get_mut(edge as usize) {
                *k = true;
            }
        }
        let edges = keep.iter().filter(|&&k| !k).count();
        if edges > 0 {
            self.compact_edges(&keep);
        }
        self.totals.expired_edges += edges as u64;
        self.totals.expired_alerts += alerts as u64;
        (edges, alerts)
    }

    /// Drops the edges not marked in `keep` and renumbers every index that points at an edge (a waiting
    /// connection whose edge is gone no longer counts into one).
    fn compact_edges(&mut self, keep: &[bool]) {
        let renumber = self.book.retain(keep);
        retain_marked(&mut self.edge_nodes, keep);
        // Resolutions name their edge by index: they are worked out again on the next connection.
        self.resolved.clear();
        self.edge_resolved = vec![None; self.book.len()];
        self.joins.renumber(&renumber);
        // Peers of forgotten edges free their place.
        self.fold.rebuild(self.book.edges());
    }

    /// The book is full: forgets the least recently seen tenth of it (ties in index order), counted and noted
    /// for the store to delete.
    fn evict_edges(&mut self) {
        let n = self.book.len();
        let target = self
            .config
            .max_edges
            .saturating_sub(self.config.max_edges / 10);
        let drop = n.saturating_sub(target).max(1).min(n);
        if drop == 0 {
            return;
        }
        let mut seen: Vec<i64> = self.book.edges().iter().map(|e| e.last_seen.0).collect();
        let (_, &mut threshold, _) = seen.select_nth_unstable(drop - 1);
        let below = self
            .book
            .edges()
            .iter()
            .filter(|e| e.last_seen.0 < threshold)
            .count();
        let mut at_threshold = drop - below;
        let keep: Vec<bool> = self
            .book
            .edges()
            .iter()
            .map(|e| {
                if e.last_seen.0 < threshold {
                    false
                } else if e.last_seen.0 == threshold && at_threshold > 0 {
                    at_threshold -= 1;
                    false
                } else {
                    true
                }
            })
            .collect();
        for (e, _) in self.book.edges().iter().zip(&keep).filter(|(_, k)| !**k) {
            self.forgotten.edges.push(e.key.clone());
        }
        self.compact_edges(&keep);
        self.totals.evicted_edges += drop as u64;
        tracing::warn!(
            "the edge book reached its cap of {} edges: forgot the {drop} seen least recently",
            self.config.max_edges
        );
    }

    /// Beyond the cap, forgets the least recently seen tenth of the alerts.
    fn bound_alerts(&mut self) {
        let cap = self.config.max_alerts.max(1);
        if self.alerts.len() > cap {
            let gone = self.alerts.evict_oldest(cap - cap / 10);
            self.totals.evicted_alerts += gone.len() as u64;
            self.forgotten.alerts.extend(gone);
        }
    }

    /// Folds outside and unknown ends beyond their endpoint's budget into prefixes ([`PeerFold`]); answers the
    /// ends and whether one was folded.
    fn fold_ends(
        &mut self,
        src: EndpointKey,
        src_ip: IpAddr,
        dst: EndpointKey,
        dst_ip: IpAddr,
    ) -> (EndpointKey, EndpointKey, bool) {
        let (src_out, dst_out) = (by_address(&src), by_address(&dst));
        if !src_out && !dst_out {
            return (src, dst, false);
        }
        let mut folded = false;
        let new_src = if src_out {
            let anchor = (!dst_out).then_some(&dst);
            let (k, f) = self.fold.place(src, src_ip, anchor, PeerSide::Source);
            folded |= f;
            k
        } else {
            src
        };
        let new_dst = if dst_out {
            let anchor = (!src_out).then_some(&new_src);
            let (k, f) = self.fold.place(dst, dst_ip, anchor, PeerSide::Destination);
            folded |= f;
            k
        } else {
            dst
        };
        (new_src, new_dst, folded)
    }

    /// Outside peers held by the fold (every level), and the endpoints they are held for.
    pub fn outside_peers(&self) -> (usize, usize) {
        (self.fold.peers(), self.fold.anchors())
    }

    /// Alerts held.
    pub fn alert_count(&self) -> usize {
        self.alerts.len()
    }

    /// Sources the scan detector follows.
    pub fn scan_sources(&self) -> usize {
        self.scans.sources()
    }

    fn expire(&mut self, now: Timestamp) {
        let expired = self.joins.expire(now, self.config.max_joins);
        self.totals.join_evictions += expired.evicted;
        for edge in expired.dropped {
            if let Some(e) = self.book.get_mut(edge as usize) {
                e.dropped_in_transit += 1;
            }
            self.totals.dropped_in_transit += 1;
        }
    }
}

/// ` (a, b)` after a direction's verdict, or nothing.
fn bracket(policies: &[String]) -> String {
    if policies.is_empty() {
        String::new()
    } else {
        format!(" ({})", policies.join(", "))
    }
}

//! The aggregator's judging core, without I/O: batches of flow records in; judged flows, workload edges, the
//! baseline, the join of a connection's views from both ends, and alerts out.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use foldhash::{HashMap, HashMapExt, HashSet};
use smallvec::SmallVec;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_analysis::{Analysis, Analyzer, JudgedFlow, Party, direction_views, flow_verdict};
use weir_model::{
    Alert, AlertEndpoint, AlertEvidence, AlertKind, Cidr, Direction, EndReason, EndpointKind,
    FlowRecord, FlowVerdict, Protocol, Timestamp,
};
use weir_policy::{PolicySet, VerdictCache};

/// Settings of the judging core.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Address ranges of the cluster beyond the nodes' pod ranges (ownerless addresses there are unknown pods).
    pub cluster_ranges: Vec<Cidr>,
    /// How long the baseline is learned, from the first start of the aggregator on its data directory.
    pub learn: Duration,
    /// Least time between two deliveries of the same alert (its count goes on meanwhile).
    pub alert_repeat: Duration,
    /// The window a scan is counted in.
    pub scan_window: Duration,
    /// Distinct destinations (address and port) that did not answer or were denied, in a window where most
    /// attempts went unanswered, that make a scan.
    pub scan_min_targets: u64,
    /// Denied attempts from one source in the window that make a scan.
    pub scan_min_denied: u64,
    /// Judged flows kept for the API.
    pub recent_flows: usize,
    /// How long to wait for the other end's view of a connection.
    pub join_window: Duration,
    /// Most connections waiting for their other view.
    pub max_joins: usize,
    /// How long edges and alerts are kept after their traffic was last seen (the store keeps them as long).
    pub retention: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            cluster_ranges: Vec::new(),
            learn: Duration::from_secs(3600),
            alert_repeat: Duration::from_secs(30),
            scan_window: Duration::from_secs(10),
            scan_min_targets: 20,
            scan_min_denied: 20,
            recent_flows: 100_000,
            join_window: Duration::from_secs(15),
            max_joins: 2_000_000,
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// One end of an edge: a workload, a node, a Service, or an address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EndpointKey {
    /// What it is.
    pub kind: EndpointKind,
    /// Namespace, for workloads and Services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<Arc<str>>,
    /// `Deployment/frontend`, the node or Service name, or the address.
    pub name: Arc<str>,
}

impl EndpointKey {
    /// `namespace/name`, or the name.
    pub fn label(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.to_string(),
        }
    }

    /// Whether the endpoint is inside the cluster (lateral traffic is between such endpoints).
    pub fn in_cluster(&self) -> bool {
        self.kind != EndpointKind::External
    }

    fn alert_endpoint(&self, pod: Option<&str>, ip: Option<IpAddr>) -> AlertEndpoint {
        AlertEndpoint {
            kind: self.kind,
            namespace: self.namespace.as_deref().map(str::to_owned),
            name: self.name.to_string(),
            pod: pod.map(str::to_owned),
            ip,
        }
    }
}

/// An edge: traffic from one endpoint to another on one protocol and port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EdgeKey {
    /// Source.
    pub src: EndpointKey,
    /// Destination (the backend workload for Service traffic).
    pub dst: EndpointKey,
    /// Protocol name.
    pub proto: Protocol,
    /// Destination port as policy judges it (after DNAT); none for ICMP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// What is known of an edge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeStats {
    /// The edge.
    pub key: EdgeKey,
    /// Connections (a connection reported from both ends counts once).
    pub flows: u64,
    /// Packets, both directions.
    pub packets: u64,
    /// Bytes, both directions.
    pub bytes: u64,
    /// Connections the policies allowed.
    pub allowed: u64,
    /// Connections the policies denied.
    pub denied: u64,
    /// Connections whose verdict was mixed or unknown.
    pub other: u64,
    /// The last verdict.
    pub verdict: FlowVerdict,
    /// Allowed only because an end is not isolated.
    pub not_isolated: bool,
    /// The deciding policies of the last verdict (`egress ns/name`, `ingress ns/name`).
    pub policies: Vec<String>,
    /// Services the traffic went through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// Nodes that reported it.
    pub nodes: BTreeSet<String>,
    /// Connections seen arriving at the destination (or answered by it).
    pub delivered: u64,
    /// Connections that left the source but were never seen at the destination, whose node reports too.
    pub dropped_in_transit: u64,
    /// Denied connections that were delivered: the CNI did not enforce the policy.
    pub enforcement_gaps: u64,
    /// First flow start.
    pub first_seen: Timestamp,
    /// Last flow end.
    pub last_seen: Timestamp,
    /// Seen while the baseline was learned.
    pub baseline: bool,
    /// The latest record, kept to re-judge the edge (suggest, diff) against the cluster as it is now.
    pub sample: FlowRecord,
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
    reason: Arc<str>,
    /// Its policy-violation (per pair), enforcement-gap and new-edge (per port) alert ids.
    alert_ids: [Arc<str>; 3],
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
const RESOLVED_CAP: usize = 1 << 18;
/// How often an edge's sample record is refreshed.
const SAMPLE_REFRESH_NS: i64 = 60_000_000_000;

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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct JoinKey {
    proto: Protocol,
    src: IpAddr,
    port: u16,
}

#[derive(Clone, Debug)]
struct Conn {
    start: Timestamp,
    last_end: Timestamp,
    dst: IpAddr,
    edge: u32,
    /// Which end counted it (its records carry the volume).
    primary: Side,
    seen_source: bool,
    seen_destination: bool,
    delivered: bool,
    denied: bool,
    gap_raised: bool,
    /// Whether a view from the destination's node can be expected.
    destination_watched: bool,
    expires: i64,
}

/// Which end of a connection reported a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Side {
    /// The initiator's node (the record was seen leaving the source pod), or a record without an observation
    /// point.
    Source,
    /// The responder's node (seen arriving at the destination pod).
    Destination,
}

#[derive(Debug, Default)]
struct ScanWindow {
    /// The source's scan alert, once raised.
    alert: Option<Arc<str>>,
    start: i64,
    /// When it last counted a connection, on the aggregator's clock.
    touched: i64,
    targets: HashSet<(IpAddr, u16)>,
    ports: BTreeSet<u16>,
    flows: u64,
    failed: u64,
    denied: u64,
    packets: u64,
    bytes: u64,
}

#[derive(Clone, Debug)]
struct AlertEntry {
    alert: Alert,
    /// When the evidence's details (last flow, endpoints) were last refreshed.
    detail_at: i64,
    delivered_at: i64,
    /// Updated since its last delivery.
    pending: bool,
    /// Listed in the outbox's `dirty` (changed since the last checkpoint).
    dirty: bool,
    /// Listed in the outbox's `queued` (waiting for its quiet time to end).
    queued: bool,
}

impl AlertEntry {
    fn new(alert: Alert, at: i64) -> AlertEntry {
        AlertEntry {
            detail_at: at,
            delivered_at: at,
            pending: false,
            dirty: false,
            queued: false,
            alert,
        }
    }
}

/// Where alert changes go: the checkpoint's list, the quiet-time queue and the deliveries. Apart from the alerts
/// themselves, so an entry borrowed from them can be handed in.
#[derive(Default)]
struct Outbox {
    /// Alerts changed since the last checkpoint.
    dirty: Vec<Arc<str>>,
    /// Alerts updated but not delivered since (their quiet time is not over).
    queued: Vec<Arc<str>>,
    deliveries: Vec<Alert>,
    /// Deliveries since the engine started (added to the persisted total when read).
    delivered: u64,
    /// The quiet time, in nanoseconds.
    repeat: i64,
}

impl Outbox {
    /// A new alert: delivered now and listed for the next checkpoint.
    fn raised(&mut self, id: &Arc<str>, entry: &mut AlertEntry) {
        entry.dirty = true;
        self.dirty.push(Arc::clone(id));
        self.deliveries.push(entry.alert.clone());
        self.delivered += 1;
    }

    /// An alert was updated: listed for the next checkpoint, delivered now if its quiet time is over, else
    /// queued for [`Engine::tick`].
    fn updated(&mut self, id: &Arc<str>, entry: &mut AlertEntry, now: Timestamp) {
        entry.pending = true;
        if !entry.dirty {
            entry.dirty = true;
            self.dirty.push(Arc::clone(id));
        }
        self.settle(id, entry, now);
    }

    fn settle(&mut self, id: &Arc<str>, entry: &mut AlertEntry, now: Timestamp) {
        if entry.pending && now.0 - entry.delivered_at >= self.repeat {
            entry.pending = false;
            entry.delivered_at = now.0;
            self.deliveries.push(entry.alert.clone());
            self.delivered += 1;
        } else if entry.pending && !entry.queued {
            entry.queued = true;
            self.queued.push(Arc::clone(id));
        }
    }
}

/// Most time between two passes that forget what the retention no longer covers.
const EXPIRY_EVERY_NS: i64 = 60_000_000_000;
/// How long past its window a scan window is kept for late batches.
const SCAN_IDLE_MARGIN_NS: i64 = 60_000_000_000;
/// Most targets remembered per scan window (the count goes on).
const SCAN_TARGET_CAP: usize = 4096;
/// How far apart two views of one connection may start.
const VIEW_SLACK_NS: i64 = 2_000_000_000;

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
    edges: Vec<EdgeStats>,
    /// The interned nodes that reported each edge (`EdgeStats::nodes` by id, to skip string compares).
    edge_nodes: Vec<SmallVec<[u16; 4]>>,
    /// Node names, interned.
    node_ids: HashMap<String, u16>,
    /// Per interned node: whether its agent reports.
    node_watched: Vec<bool>,
    /// The last reporting node looked up (a batch comes from one node).
    last_node: Option<(String, u16)>,
    /// The resolution each edge last counted a connection with.
    edge_resolved: Vec<Option<Arc<Resolved>>>,
    edge_index: HashMap<EdgeKey, usize>,
    /// Edges changed since the last checkpoint, and the same as flags.
    dirty_edges: Vec<usize>,
    edge_dirty: Vec<bool>,
    /// Connections by verdict since the engine started, added to `totals.verdicts` when read.
    verdict_counts: BTreeMap<FlowVerdict, u64>,
    learning_started: Timestamp,
    joins: HashMap<JoinKey, SmallVec<[Conn; 1]>>,
    join_count: usize,
    expiry: VecDeque<(i64, JoinKey)>,
    scans: HashMap<IpAddr, ScanWindow>,
    alerts: HashMap<Arc<str>, AlertEntry>,
    outbox: Outbox,
    recent: VecDeque<StoredFlow>,
    /// Flows pushed out of the ring, for the caller to free outside its lock ([`Engine::take_evicted`]).
    evicted: Vec<StoredFlow>,
    /// Verdict caches for the current policy set, lent out by [`Engine::judge_kit`].
    spare_caches: Vec<VerdictCache>,
    /// Equal policy lists, verdicts and Service names share one allocation, so an edge sees a change by pointer.
    interned_policies: HashSet<Arc<[String]>>,
    interned_names: HashSet<Arc<str>>,
    /// Flows added to `recent` since the last checkpoint.
    unsaved_flows: usize,
    /// When [`Engine::tick`] next forgets what the retention no longer covers.
    next_expiry: i64,
    totals: Totals,
}

fn ns_of(t: Duration) -> i64 {
    i64::try_from(t.as_nanos()).unwrap_or(i64::MAX)
}

/// Whether the destination took the connection ([`weir_model::ConnectionOutcome`]).
fn answered(r: &FlowRecord) -> bool {
    r.outcome().answered()
}

impl Engine {
    /// An engine judging against `set`, learning its baseline from `learning_started` on.
    pub fn new(config: EngineConfig, set: Arc<PolicySet>, learning_started: Timestamp) -> Engine {
        let outbox = Outbox {
            repeat: ns_of(config.alert_repeat),
            ..Outbox::default()
        };
        let cluster_ranges = Arc::from(config.cluster_ranges.as_slice());
        let mut engine = Engine {
            config,
            cluster_ranges,
            set: Arc::clone(&set),
            pod_names: Vec::new(),
            resolved: HashMap::new(),
            edges: Vec::new(),
            edge_resolved: Vec::new(),
            edge_index: HashMap::new(),
            edge_nodes: Vec::new(),
            node_ids: HashMap::new(),
            node_watched: Vec::new(),
            last_node: None,
            dirty_edges: Vec::new(),
            edge_dirty: Vec::new(),
            verdict_counts: BTreeMap::new(),
            learning_started,
            joins: HashMap::new(),
            join_count: 0,
            expiry: VecDeque::new(),
            scans: HashMap::new(),
            alerts: HashMap::new(),
            outbox,
            recent: VecDeque::new(),
            evicted: Vec::new(),
            spare_caches: Vec::new(),
            interned_policies: HashSet::default(),
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
                .saturating_add(ns_of(self.config.learn)),
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
        t.alert_deliveries += self.outbox.delivered;
        for (verdict, n) in &self.verdict_counts {
            *t.verdicts.entry(*verdict).or_default() += n;
        }
        t
    }

    fn mark_edge(&mut self, i: usize) {
        if let Some(flag) = self.edge_dirty.get_mut(i)
            && !*flag
        {
            *flag = true;
            self.dirty_edges.push(i);
        }
    }

    /// Every edge.
    pub fn edges(&self) -> &[EdgeStats] {
        &self.edges
    }

    /// Every alert.
    pub fn alerts(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.values().map(|e| &e.alert)
    }

    /// One alert.
    pub fn alert(&self, id: &str) -> Option<&Alert> {
        self.alerts.get(id).map(|e| &e.alert)
    }

    /// Recent judged flows, oldest first.
    pub fn recent(&self) -> &VecDeque<StoredFlow> {
        &self.recent
    }

    /// Alerts raised or updated since the last call, to deliver.
    pub fn take_deliveries(&mut self) -> Vec<Alert> {
        std::mem::take(&mut self.outbox.deliveries)
    }

    /// Connections waiting for their other view.
    pub fn pending_joins(&self) -> usize {
        self.join_count
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
        for e in edges {
            self.edge_index.insert(e.key.clone(), self.edges.len());
            let nodes = e.nodes.iter().map(|n| self.node_id(n)).collect();
            self.edges.push(e);
            self.edge_nodes.push(nodes);
            self.edge_dirty.push(false);
            self.edge_resolved.push(None);
        }
        for a in alerts {
            self.alerts
                .insert(Arc::from(a.id.as_str()), AlertEntry::new(a, now.0));
        }
        let keep = flows.len().saturating_sub(self.config.recent_flows);
        self.recent = flows.into_iter().skip(keep).collect();
    }

    /// Marks every edge and alert changed (a checkpoint failed: write them all next time).
    pub fn mark_all_dirty(&mut self) {
        self.dirty_edges = (0..self.edges.len()).collect();
        self.edge_dirty = vec![true; self.edges.len()];
        self.outbox.dirty.clear();
        for (id, entry) in &mut self.alerts {
            entry.dirty = true;
            self.outbox.dirty.push(Arc::clone(id));
        }
    }

    /// What changed since the last checkpoint: edges, alerts and new recent flows. Marks them saved.
    pub fn take_changes(&mut self) -> (Vec<EdgeStats>, Vec<Alert>, Vec<StoredFlow>) {
        let mut dirty = std::mem::take(&mut self.dirty_edges);
        dirty.sort_unstable();
        let edges = dirty
            .into_iter()
            .map(|i| {
                self.edge_dirty[i] = false;
                self.edges[i].clone()
            })
            .collect();
        let alerts = std::mem::take(&mut self.outbox.dirty)
            .into_iter()
            .filter_map(|id| {
                let entry = self.alerts.get_mut(&id)?;
                entry.dirty = false;
                Some(entry.alert.clone())
            })
            .collect();
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

    fn endpoint(&self, party: Party, ip: IpAddr) -> EndpointKey {
        let cluster = self.set.cluster();
        let make = |kind: EndpointKind, namespace: Option<&str>, name: String| EndpointKey {
            kind,
            namespace: namespace.map(Arc::from),
            name: Arc::from(name),
        };
        match party {
            Party::Pod(id) => {
                let w = &cluster.pod(id).workload;
                make(
                    EndpointKind::Pod,
                    Some(&w.namespace),
                    format!("{}/{}", w.kind, w.name),
                )
            }
            Party::Node(id) => make(EndpointKind::Node, None, cluster.node(id).name.clone()),
            Party::Backends(id) => match cluster.backend_workload(id) {
                Some(w) => make(
                    EndpointKind::Pod,
                    Some(&w.namespace),
                    format!("{}/{}", w.kind, w.name),
                ),
                None => {
                    let s = cluster.service(id);
                    make(EndpointKind::Service, Some(&s.namespace), s.name.clone())
                }
            },
            Party::Service(id) => {
                let s = cluster.service(id);
                make(EndpointKind::Service, Some(&s.namespace), s.name.clone())
            }
            Party::External => make(EndpointKind::External, None, ip.to_string()),
            Party::Unknown => make(EndpointKind::Unknown, None, ip.to_string()),
        }
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
        let src = self.endpoint(flow.source, r.src);
        let dst = self.endpoint(flow.destination, dst_ip);
        let verdict = flow_verdict(&flow.judgement);
        let (egress, ingress) = direction_views(set, &flow.judgement);
        // As the reports count it: allowed with no rule allowing it in either direction.
        let not_isolated =
            weir_analysis::class_of(&flow.judgement) == weir_analysis::EdgeVerdict::NotIsolated;
        let mut policies: Vec<String> = Vec::new();
        for (dir, view) in [("egress", &egress), ("ingress", &ingress)] {
            for p in &view.policies {
                policies.push(format!("{dir} {p}"));
            }
        }
        let reason = format!(
            "egress {}{}; ingress {}{}",
            egress.verdict,
            bracket(&egress.policies),
            ingress.verdict,
            bracket(&ingress.policies)
        );
        let edge_key = EdgeKey {
            src: src.clone(),
            dst: dst.clone(),
            proto: r.proto,
            port,
        };
        let edge = match self.edge_index.get(&edge_key) {
            Some(&i) => i,
            None => {
                let i = self.edges.len();
                self.edge_nodes.push(SmallVec::new());
                self.edge_dirty.push(false);
                self.edges.push(EdgeStats {
                    key: edge_key.clone(),
                    flows: 0,
                    packets: 0,
                    bytes: 0,
                    allowed: 0,
                    denied: 0,
                    other: 0,
                    verdict,
                    not_isolated,
                    policies: policies.clone(),
                    services: Vec::new(),
                    nodes: BTreeSet::new(),
                    delivered: 0,
                    dropped_in_transit: 0,
                    enforcement_gaps: 0,
                    first_seen: r.start,
                    last_seen: r.end,
                    baseline: now < self.learning_ends(),
                    sample: r.clone(),
                });
                self.edge_index.insert(edge_key, i);
                self.edge_resolved.push(None);
                i
            }
        };
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
        let (src_label, dst_label) = (src.label(), dst.label());
        // Violations are one alert per pair of endpoints (a probe of many ports is one alert listing them);
        // gaps and new edges are per port.
        let alert_ids = [
            Arc::from(alert_id(
                AlertKind::PolicyViolation,
                &[&src_label, &dst_label],
            )),
            Arc::from(alert_id(
                AlertKind::EnforcementGap,
                &[&src_label, &dst_label, &port_text],
            )),
            Arc::from(alert_id(
                AlertKind::NewEdge,
                &[&src_label, &dst_label, &port_text],
            )),
        ];
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
            reason: Arc::from(reason),
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
        let r = flow.record;
        let dst_ip = flow.service.and_then(|s| s.backend).unwrap_or(r.dst);
        let edge = res.edge;
        let denied = res.view.verdict == FlowVerdict::Denied;
        self.mark_edge(edge);
        let side = match r.observed_at.as_ref().map(|o| o.direction) {
            Some(Direction::ToPod) => Side::Destination,
            _ => Side::Source,
        };
        let reporter = r.observed_at.as_ref().map(|o| self.node_id(&o.node));

        // One connection, two views: find the other end's report of it.
        let join_key = JoinKey {
            proto: r.proto,
            src: r.src,
            port: r.src_port.or(r.icmp_id).unwrap_or(0),
        };
        let destination_watched = res.destination_pod_node.is_some_and(|n| {
            self.node_watched
                .get(usize::from(n))
                .copied()
                .unwrap_or(false)
        });
        let expires = now.0.saturating_add(ns_of(self.config.join_window));
        let matches = |c: &Conn| {
            (c.dst == dst_ip || c.dst == r.dst)
                && r.start.0 >= c.start.0 - VIEW_SLACK_NS
                && r.start.0 <= c.last_end.0 + VIEW_SLACK_NS
        };
        let found = self
            .joins
            .get_mut(&join_key)
            .and_then(|conns| conns.iter_mut().find(|c| matches(c)));
        let is_new = found.is_none();
        let mut counts_volume = true;
        let mut scratch;
        let conn: &mut Conn = match found {
            Some(c) => {
                counts_volume = c.primary == side;
                c.last_end = c.last_end.max(r.end);
                c.expires = expires;
                c
            }
            None => {
                let c = Conn {
                    start: r.start,
                    last_end: r.end,
                    dst: dst_ip,
                    edge: u32::try_from(edge).unwrap_or(u32::MAX),
                    primary: side,
                    seen_source: false,
                    seen_destination: false,
                    delivered: false,
                    denied,
                    gap_raised: false,
                    destination_watched,
                    expires,
                };
                // Nothing more can come of a connection that is over and whose destination's node does not
                // report: it needs no place in the join table (most connections, when few nodes run agents).
                let more_to_come = destination_watched
                    || side == Side::Destination
                    || r.end_reason == EndReason::ActiveTimeout;
                if more_to_come {
                    self.join_count += 1;
                    self.expiry.push_back((expires, join_key));
                    let conns = self.joins.entry(join_key).or_default();
                    conns.push(c);
                    let last = conns.len() - 1;
                    &mut conns[last]
                } else {
                    scratch = c;
                    &mut scratch
                }
            }
        };
        match side {
            Side::Source => conn.seen_source = true,
            Side::Destination => conn.seen_destination = true,
        }
        let newly_delivered = !conn.delivered && (side == Side::Destination || answered(&r));
        if newly_delivered {
            conn.delivered = true;
        }
        let gap = newly_delivered && conn.denied && !conn.gap_raised;
        if gap {
            conn.gap_raised = true;
        }

        let e = &mut self.edges[edge];
        if let Some(node) = reporter
            && let Some(ids) = self.edge_nodes.get_mut(edge)
            && !ids.contains(&node)
        {
            ids.push(node);
            if let Some(o) = &r.observed_at
                && !e.nodes.contains(&o.node)
            {
                e.nodes.insert(o.node.clone());
            }
        }
        if counts_volume {
            e.packets += r.total_packets();
            e.bytes += r.total_bytes();
            e.first_seen = e.first_seen.min(r.start);
            // The sample is refreshed now and then, not copied with every record.
            if r.end.0 - e.last_seen.0 > SAMPLE_REFRESH_NS || e.flows == 0 {
                e.sample = r.clone();
            }
            e.last_seen = e.last_seen.max(r.end);
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
            e.flows += 1;
            match res.view.verdict {
                FlowVerdict::Allowed => e.allowed += 1,
                FlowVerdict::Denied => e.denied += 1,
                FlowVerdict::Mixed | FlowVerdict::Unknown => e.other += 1,
            }
            e.not_isolated = res.not_isolated;
            // Verdicts, policy lists and Service names are interned: the same pointers as last time mean
            // nothing to copy.
            let same = self.edge_resolved[edge].as_ref().is_some_and(|last| {
                let v = &last.view;
                v.verdict == view.verdict
                    && Arc::ptr_eq(&v.policies, &view.policies)
                    && match (&v.service, &view.service) {
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        (None, None) => true,
                        _ => false,
                    }
            });
            if !same {
                e.verdict = view.verdict;
                if e.policies.as_slice() != &*view.policies {
                    e.policies = view.policies.to_vec();
                }
                if let Some(s) = &view.service
                    && !e.services.iter().any(|x| **x == **s)
                {
                    e.services.push(s.to_string());
                }
                self.edge_resolved[edge] = Some(Arc::clone(&res));
            }
            self.totals.connections += 1;
            *self.verdict_counts.entry(view.verdict).or_default() += 1;
        } else {
            self.totals.joined_views += 1;
        }
        let baseline = e.baseline;

        let ctx = AlertContext {
            src: &view.source,
            dst: &view.destination,
            src_pod: view.src_pod.as_deref(),
            dst_pod: view.dst_pod.as_deref(),
            record: &r,
            port: view.port,
            policies: &view.policies,
            reason: &res.reason,
            ids: &res.alert_ids,
            denied,
            now,
        };
        let scanning = is_new && self.count_scan(&ctx);
        // A scanning source's denied attempts count into its scan alert, not into one alert per target.
        if is_new && denied && !scanning {
            self.raise_edge_alert(AlertKind::PolicyViolation, &ctx);
        }
        if gap {
            self.raise_edge_alert(AlertKind::EnforcementGap, &ctx);
        }
        if is_new
            && res.view.verdict == FlowVerdict::Allowed
            && !baseline
            && view.source.in_cluster()
            && view.destination.in_cluster()
        {
            self.raise_edge_alert(AlertKind::NewEdge, &ctx);
        }

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

    /// Counts a new connection into its source's scan window; true while the source is scanning.
    fn count_scan(&mut self, ctx: &AlertContext<'_>) -> bool {
        let r = ctx.record;
        let window = ns_of(self.config.scan_window);
        let w = self.scans.entry(r.src).or_default();
        if r.start.0 - w.start > window || r.start.0 < w.start {
            *w = ScanWindow {
                start: r.start.0,
                ..ScanWindow::default()
            };
        }
        w.touched = ctx.now.0;
        let target_port = r.dst_port.or(r.icmp_type.map(u16::from)).unwrap_or(0);
        let failed = !answered(r);
        // Probes are what count: a destination that answered an allowed connection is ordinary traffic (and
        // remembering every one would cost a lookup for each connection in the cluster).
        if (failed || ctx.denied) && w.targets.len() < SCAN_TARGET_CAP {
            w.targets.insert((r.dst, target_port));
        }
        if w.ports.len() < 20 || w.ports.iter().next_back().is_some_and(|&p| p > target_port) {
            w.ports.insert(target_port);
            while w.ports.len() > 20 {
                w.ports.pop_last();
            }
        }
        w.flows += 1;
        if failed {
            w.failed += 1;
        }
        if ctx.denied {
            w.denied += 1;
        }
        w.packets += r.total_packets();
        w.bytes += r.total_bytes();
        let targets = w.targets.len() as u64;
        let fanout = targets >= self.config.scan_min_targets && w.failed * 2 >= w.flows;
        let hammering = w.denied >= self.config.scan_min_denied;
        if !(fanout || hammering) {
            return false;
        }
        let now = ctx.now;
        // The source's scan alert: the window remembers its id, so later flows only count.
        let id: Arc<str> = match &w.alert {
            Some(id) => Arc::clone(id),
            None => {
                let id: Arc<str> = Arc::from(alert_id(AlertKind::Scan, &[&ctx.src.label()]));
                w.alert = Some(Arc::clone(&id));
                id
            }
        };
        let scan_secs = self.config.scan_window.as_secs();
        let evidence_of = |w: &ScanWindow| AlertEvidence {
            flows: w.flows,
            packets: w.packets,
            bytes: w.bytes,
            denied: w.denied,
            targets: w.targets.len() as u64,
            ports: w.ports.iter().copied().collect(),
            community_id: r.community_id.clone(),
            last_flow: tuple(r),
            observed_at: r.observed_at.iter().cloned().collect(),
            reason: format!(
                "{} distinct destinations unanswered or denied, {} of {} attempts unanswered, {} denied, within {scan_secs} s",
                w.targets.len(),
                w.failed,
                w.flows,
                w.denied,
            ),
        };
        let summary_of = |e: &AlertEvidence| {
            format!(
                "{} is scanning: {} destinations, {} ports, {} denied",
                ctx.src.label(),
                e.targets,
                e.ports.len(),
                e.denied
            )
        };
        let repeat = self.config.alert_repeat;
        match self.alerts.get_mut(&id) {
            Some(entry) => {
                // The count goes on over windows; the evidence is the current window's, refreshed when the
                // alert is about to be delivered or a second after the last refresh.
                entry.alert.count += 1;
                entry.alert.last_seen = entry.alert.last_seen.max(r.end);
                entry.alert.updated_at = now;
                if detail_due(entry, now, repeat) {
                    entry.detail_at = now.0;
                    entry.alert.evidence = evidence_of(w);
                    entry.alert.summary = summary_of(&entry.alert.evidence);
                }
                self.outbox.updated(&id, entry, now);
            }
            None => {
                let evidence = evidence_of(w);
                let alert = Alert {
                    id: id.to_string(),
                    kind: AlertKind::Scan,
                    severity: AlertKind::Scan.severity(),
                    summary: summary_of(&evidence),
                    source: ctx.src.alert_endpoint(ctx.src_pod, Some(r.src)),
                    destination: None,
                    proto: r.proto.name().map(str::to_owned),
                    port: None,
                    policies: Vec::new(),
                    evidence,
                    first_seen: r.start,
                    last_seen: r.end,
                    count: w.flows,
                    raised_at: now,
                    updated_at: now,
                };
                self.new_alert(alert);
            }
        }
        true
    }

    fn raise_edge_alert(&mut self, kind: AlertKind, ctx: &AlertContext<'_>) {
        let r = ctx.record;
        let now = ctx.now;
        let id = Arc::clone(
            &ctx.ids[match kind {
                AlertKind::PolicyViolation => 0,
                AlertKind::EnforcementGap => 1,
                _ => 2,
            }],
        );
        let repeat = self.config.alert_repeat;
        match self.alerts.get_mut(&id) {
            Some(entry) => {
                let a = &mut entry.alert;
                a.count += 1;
                a.last_seen = a.last_seen.max(r.end);
                a.first_seen = a.first_seen.min(r.start);
                a.evidence.flows += 1;
                a.evidence.packets += r.total_packets();
                a.evidence.bytes += r.total_bytes();
                a.evidence.denied += u64::from(ctx.denied);
                if let Some(p) = ctx.port
                    && !a.evidence.ports.contains(&p)
                    && a.evidence.ports.len() < 20
                {
                    a.evidence.ports.push(p);
                    a.evidence.ports.sort_unstable();
                }
                a.updated_at = now;
                // The last flow's details are refreshed when the alert is about to be delivered, or a second
                // after the last refresh: not copied with every flow of an attack.
                if detail_due(entry, now, repeat) {
                    entry.detail_at = now.0;
                    let a = &mut entry.alert;
                    a.evidence.community_id = r.community_id.clone();
                    a.evidence.last_flow = tuple(r);
                    a.evidence.observed_at = r.observed_at.iter().cloned().collect();
                    a.destination = Some(ctx.dst.alert_endpoint(ctx.dst_pod, Some(r.dst)));
                    a.source = ctx.src.alert_endpoint(ctx.src_pod, Some(r.src));
                }
                self.outbox.updated(&id, entry, now);
            }
            None => {
                let port_text = match ctx.port {
                    Some(p) => format!("{}/{p}", r.proto),
                    None => r.proto.to_string(),
                };
                let summary = match kind {
                    AlertKind::PolicyViolation => format!(
                        "{} -> {} ({port_text}): denied by the policies in force",
                        ctx.src.label(),
                        ctx.dst.label()
                    ),
                    AlertKind::EnforcementGap => format!(
                        "{} -> {} on {port_text}: denied by policy but delivered; the CNI is not enforcing it",
                        ctx.src.label(),
                        ctx.dst.label()
                    ),
                    AlertKind::NewEdge => format!(
                        "{} -> {} on {port_text}: allowed, but never seen while the baseline was learned",
                        ctx.src.label(),
                        ctx.dst.label()
                    ),
                    AlertKind::Scan => String::new(),
                };
                let alert = Alert {
                    id: id.to_string(),

                    kind,
                    severity: kind.severity(),
                    summary,
                    source: ctx.src.alert_endpoint(ctx.src_pod, Some(r.src)),
                    destination: Some(ctx.dst.alert_endpoint(ctx.dst_pod, Some(r.dst))),
                    proto: r.proto.name().map(str::to_owned),
                    port: ctx.port,
                    policies: ctx.policies.to_vec(),
                    evidence: AlertEvidence {
                        flows: 1,
                        packets: r.total_packets(),
                        bytes: r.total_bytes(),
                        denied: u64::from(ctx.denied),
                        targets: 0,
                        ports: ctx.port.into_iter().collect(),
                        community_id: r.community_id.clone(),
                        last_flow: tuple(r),
                        observed_at: r.observed_at.iter().cloned().collect(),
                        reason: ctx.reason.to_owned(),
                    },
                    first_seen: r.start,
                    last_seen: r.end,
                    count: 1,
                    raised_at: now,
                    updated_at: now,
                };
                self.new_alert(alert);
            }
        }
    }

    fn new_alert(&mut self, alert: Alert) {
        *self
            .totals
            .alerts
            .entry(alert.kind.name().to_owned())
            .or_default() += 1;
        let id: Arc<str> = Arc::from(alert.id.as_str());
        let at = alert.raised_at.0;
        let mut entry = AlertEntry::new(alert, at);
        self.outbox.raised(&id, &mut entry);
        self.alerts.insert(id, entry);
    }

    /// Closes the join of connections whose other view did not come in time, and delivers alert updates whose
    /// quiet time is over.
    pub fn tick(&mut self, now: Timestamp) {
        self.expire(now);
        if now.0 >= self.next_expiry {
            self.forget_expired(now);
            // Often enough that memory follows the retention closely, seldom enough to cost nothing.
            let every = ns_of(self.config.retention / 100).clamp(1_000_000_000, EXPIRY_EVERY_NS);
            self.next_expiry = now.0.saturating_add(every);
        }
        for id in std::mem::take(&mut self.outbox.queued) {
            if let Some(entry) = self.alerts.get_mut(&id) {
                entry.queued = false;
                self.outbox.settle(&id, entry, now);
            }
        }
    }

    /// Forgets edges and alerts none of whose traffic was seen within the retention, and scan windows that
    /// ended, as the store does on disk: a long-running aggregator holds what a restarted one would. An edge a
    /// waiting connection still points at is kept until the connection is done. Returns the edges and alerts
    /// forgotten (also counted in the totals).
    pub fn forget_expired(&mut self, now: Timestamp) -> (usize, usize) {
        let horizon = now.0.saturating_sub(ns_of(self.config.retention));
        // Scan windows: one per source address ever seen probing or connecting, so the one map here that grows
        // with outside clients. A window idle for longer than itself plus a margin for late batches would be
        // started afresh by its next connection anyway.
        let idle = now
            .0
            .saturating_sub(ns_of(self.config.scan_window))
            .saturating_sub(SCAN_IDLE_MARGIN_NS);
        self.scans.retain(|_, w| w.touched >= idle);

        // Alerts: not while a delivery or checkpoint still has to see them.
        let before = self.alerts.len();
        self.alerts.retain(|_, entry| {
            entry.alert.last_seen.0 >= horizon || entry.pending || entry.queued || entry.dirty
        });
        let alerts = before - self.alerts.len();

        let mut keep: Vec<bool> = self
            .edges
            .iter()
            .map(|e| e.last_seen.0 >= horizon)
            .collect();
        for conns in self.joins.values() {
            for c in conns {
                if let Some(k) = keep.get_mut(c.edge as usize) {
                    *k = true;
                }
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

    /// Drops the edges not marked in `keep` and renumbers every index that points at an edge.
    fn compact_edges(&mut self, keep: &[bool]) {
        let mut new_index = vec![usize::MAX; keep.len()];
        let mut next = 0;
        for (i, &k) in keep.iter().enumerate() {
            if k {
                new_index[i] = next;
                next += 1;
            }
        }
        retain_marked(&mut self.edges, keep);
        retain_marked(&mut self.edge_dirty, keep);
        retain_marked(&mut self.edge_nodes, keep);
        // Resolutions name their edge by index: they are worked out again on the next connection.
        self.resolved.clear();
        self.edge_resolved = vec![None; self.edges.len()];
        self.edge_index = self
            .edges
            .iter()
            .enumerate()
            .map(|(i, e)| (e.key.clone(), i))
            .collect();
        self.dirty_edges = self
            .dirty_edges
            .iter()
            .filter_map(|&i| new_index.get(i).copied().filter(|&n| n != usize::MAX))
            .collect();
        for conns in self.joins.values_mut() {
            for c in conns.iter_mut() {
                // Kept above: every edge a waiting connection points at survives.
                if let Some(&n) = new_index.get(c.edge as usize) {
                    c.edge = u32::try_from(n).unwrap_or(u32::MAX);
                }
            }
        }
    }

    fn expire(&mut self, now: Timestamp) {
        while let Some(&(at, key)) = self.expiry.front() {
            let over = self.join_count > self.config.max_joins;
            if at > now.0 && !over {
                break;
            }
            self.expiry.pop_front();
            let Some(conns) = self.joins.get_mut(&key) else {
                continue;
            };
            let mut finished = Vec::new();
            conns.retain(|c| {
                let done = c.expires <= now.0 || (over && c.expires <= at);
                if done {
                    finished.push(c.clone());
                }
                !done
            });
            let empty = conns.is_empty();
            if !empty && let Some(next) = conns.iter().map(|c| c.expires).min() {
                self.expiry.push_back((next, key));
            }
            if empty {
                self.joins.remove(&key);
            }
            for c in finished {
                self.join_count -= 1;
                if over && c.expires > now.0 {
                    self.totals.join_evictions += 1;
                }
                // Left the source, never arrived, never answered: dropped on the way. For a denied
                // connection that is the policy being enforced.
                if c.seen_source && !c.seen_destination && !c.delivered && c.destination_watched {
                    if !c.denied
                        && let Some(e) = self.edges.get_mut(c.edge as usize)
                    {
                        e.dropped_in_transit += 1;
                        self.mark_edge(c.edge as usize);
                    }
                    if !c.denied {
                        self.totals.dropped_in_transit += 1;
                    }
                }
            }
        }
    }
}

/// Keeps the items of `v` whose flag in `keep` is set.
fn retain_marked<T>(v: &mut Vec<T>, keep: &[bool]) {
    let mut flags = keep.iter();
    v.retain(|_| flags.next().copied().unwrap_or(true));
}

struct AlertContext<'a> {
    src: &'a EndpointKey,
    dst: &'a EndpointKey,
    src_pod: Option<&'a str>,
    dst_pod: Option<&'a str>,
    record: &'a FlowRecord,
    port: Option<u16>,
    policies: &'a [String],
    reason: &'a str,
    /// The ids of the edge's policy-violation, enforcement-gap and new-edge alerts.
    ids: &'a [Arc<str>; 3],
    denied: bool,
    now: Timestamp,
}

/// Whether an alert's details should be refreshed: it is about to be delivered, or they are a second old.
fn detail_due(entry: &AlertEntry, now: Timestamp, repeat: Duration) -> bool {
    now.0 - entry.delivered_at >= ns_of(repeat) || now.0 - entry.detail_at >= 1_000_000_000
}

fn bracket(policies: &[String]) -> String {
    if policies.is_empty() {
        String::new()
    } else {
        format!(" ({})", policies.join(", "))
    }
}

/// `src:port -> dst:port` (ICMP: type and code).
pub fn tuple(r: &FlowRecord) -> String {
    let end = |ip: IpAddr, port: Option<u16>| match (ip, port) {
        (IpAddr::V6(_), Some(p)) => format!("[{ip}]:{p}"),
        (_, Some(p)) => format!("{ip}:{p}"),
        (_, None) => ip.to_string(),
    };
    match (r.icmp_type, r.icmp_code) {
        (Some(t), Some(c)) => format!("{} -> {} {} type {t} code {c}", r.src, r.dst, r.proto),
        _ => format!(
            "{} -> {} {}",
            end(r.src, r.src_port),
            end(r.dst, r.dst_port),
            r.proto
        ),
    }
}

/// A stable alert id: the kind and a 64-bit FNV-1a hash of the edge's names.
fn alert_id(kind: AlertKind, parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{}-{h:016x}", kind.name())
}

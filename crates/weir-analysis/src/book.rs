//! The edge book: what is known of every edge (endpoint to endpoint, on one protocol and port) as judged
//! connections are counted into it, with the edges changed since the last checkpoint and the retention that
//! forgets old ones. Mergeable: two shards' books combine into the book of the union ([`EdgeBook::merge`]).
//!
//! The book counts; it does not decide what a connection is. The caller says whether a view is a new connection
//! ([`EdgeStats::count_connection`]), whether it carries the volume ([`EdgeStats::count_volume`]) and what became
//! of it (delivered, dropped, an enforcement gap).

use std::collections::BTreeSet;
use std::sync::Arc;

use foldhash::HashMap;
use serde::{Deserialize, Serialize};
use weir_model::{EndpointKey, FlowRecord, FlowVerdict, Protocol, Timestamp};

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

/// The tier that decided one direction of a verdict, as JSON, the edge book and the maps name it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum SideTier {
    /// An Admin-tier rule of a cluster-wide policy (Accept or Deny).
    Admin,
    /// NetworkPolicy: the end is isolated in this direction.
    NetworkPolicy,
    /// A Baseline-tier rule of a cluster-wide policy.
    Baseline,
    /// No policy of any tier decided: the default (allowed), or the end is not subject to policy.
    Default,
    /// A Service's backends were decided by different tiers.
    Mixed,
    /// Not judged.
    #[default]
    Unknown,
}

impl SideTier {
    /// `admin`, `networkpolicy`, `baseline`, `default`, `mixed` or `unknown`: the name in JSON and in the maps.
    pub fn name(self) -> &'static str {
        match self {
            SideTier::Admin => "admin",
            SideTier::NetworkPolicy => "networkpolicy",
            SideTier::Baseline => "baseline",
            SideTier::Default => "default",
            SideTier::Mixed => "mixed",
            SideTier::Unknown => "unknown",
        }
    }

    /// Whether a cluster-wide policy's rule decided.
    pub fn cluster_wide(self) -> bool {
        matches!(self, SideTier::Admin | SideTier::Baseline)
    }
}

impl From<weir_policy::DecidingTier> for SideTier {
    fn from(t: weir_policy::DecidingTier) -> SideTier {
        match t {
            weir_policy::DecidingTier::Admin => SideTier::Admin,
            weir_policy::DecidingTier::NetworkPolicy => SideTier::NetworkPolicy,
            weir_policy::DecidingTier::Baseline => SideTier::Baseline,
            weir_policy::DecidingTier::Default => SideTier::Default,
        }
    }
}

impl std::fmt::Display for SideTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How one direction of a connection's verdict was decided: the tier and the decision chain in words
/// (`Admin ops rule #0 "delegate" Pass → NetworkPolicy shop/api isolates, shop/api rule #1 allows`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SideDecision {
    /// The deciding tier.
    pub tier: SideTier,
    /// The chain; empty where the tier is `mixed` or `unknown`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub chain: String,
}

/// How both directions of a connection's verdict were decided: the source's egress, the destination's ingress.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Decided {
    /// The source's egress.
    pub egress: SideDecision,
    /// The destination's ingress.
    pub ingress: SideDecision,
}

impl Decided {
    /// Whether nothing is known of it (an edge stored before decisions were kept).
    pub fn is_unknown(&self) -> bool {
        *self == Decided::default()
    }

    /// Whether a cluster-wide policy took part in either direction (a rule decided, or an Admin Pass on the
    /// way).
    pub fn cluster_wide(&self) -> bool {
        [&self.egress, &self.ingress]
            .iter()
            .any(|s| s.tier.cluster_wide() || s.chain.contains(" Pass → "))
    }
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
    /// How each direction of the last verdict was decided: tier and decision chain.
    #[serde(default)]
    pub decided: Arc<Decided>,
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

/// How often an edge's sample record is refreshed.
const SAMPLE_REFRESH_NS: i64 = 60_000_000_000;

/// The verdict a connection got, as an edge keeps the last one.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionVerdict<'a> {
    /// The verdict.
    pub verdict: FlowVerdict,
    /// Allowed only because an end is not isolated.
    pub not_isolated: bool,
    /// The deciding policies.
    pub policies: &'a [String],
    /// How each direction was decided (shared: many edges are decided alike).
    pub decided: &'a Arc<Decided>,
    /// The Service it went through (`namespace/name`).
    pub service: Option<&'a str>,
}

impl EdgeStats {
    /// A new edge, first seen with `sample`, before anything is counted into it.
    pub fn new(
        key: EdgeKey,
        sample: &FlowRecord,
        verdict: ConnectionVerdict<'_>,
        baseline: bool,
    ) -> EdgeStats {
        EdgeStats {
            key,
            flows: 0,
            packets: 0,
            bytes: 0,
            allowed: 0,
            denied: 0,
            other: 0,
            verdict: verdict.verdict,
            not_isolated: verdict.not_isolated,
            policies: verdict.policies.to_vec(),
            decided: Arc::clone(verdict.decided),
            services: Vec::new(),
            nodes: BTreeSet::new(),
            delivered: 0,
            dropped_in_transit: 0,
            enforcement_gaps: 0,
            first_seen: sample.start,
            last_seen: sample.end,
            baseline,
            sample: sample.clone(),
        }
    }

    /// Counts a view's packets and bytes (the view of the end that carries a connection's volume).
    pub fn count_volume(&mut self, r: &FlowRecord) {
        self.packets = self.packets.saturating_add(r.total_packets());
        self.bytes = self.bytes.saturating_add(r.total_bytes());
        self.first_seen = self.first_seen.min(r.start);
        // The sample is refreshed now and then, not copied with every record.
        if r.end.0.saturating_sub(self.last_seen.0) > SAMPLE_REFRESH_NS || self.flows == 0 {
            self.sample = r.clone();
        }
        self.last_seen = self.last_seen.max(r.end);
    }

    /// Counts a record's packets and bytes keeping as the sample the latest record ([`recency`]), whatever order
    /// records come in: the offline book's way, where a capture's flows come in no set order and shards merge.
    /// Answers whether the record became the sample (its verdict is then the edge's last).
    pub fn count_volume_keeping_latest(&mut self, r: &FlowRecord) -> bool {
        let latest = self.flows == 0 || recency(r) > recency(&self.sample);
        self.packets = self.packets.saturating_add(r.total_packets());
        self.bytes = self.bytes.saturating_add(r.total_bytes());
        self.first_seen = self.first_seen.min(r.start);
        self.last_seen = self.last_seen.max(r.end);
        if latest {
            self.sample = r.clone();
        }
        latest
    }

    /// Counts a new connection by its verdict.
    pub fn count_connection(&mut self, verdict: FlowVerdict, not_isolated: bool) {
        self.count_verdict(verdict);
        self.not_isolated = not_isolated;
    }

    /// Counts a new connection by its verdict, leaving the edge's last verdict as it is.
    pub fn count_verdict(&mut self, verdict: FlowVerdict) {
        self.flows += 1;
        match verdict {
            FlowVerdict::Allowed => self.allowed += 1,
            FlowVerdict::Denied => self.denied += 1,
            FlowVerdict::Mixed | FlowVerdict::Unknown => self.other += 1,
        }
    }

    /// Keeps a connection's verdict, policies and Service as the edge's last.
    pub fn set_last_verdict(&mut self, v: ConnectionVerdict<'_>) {
        self.verdict = v.verdict;
        self.not_isolated = v.not_isolated;
        if self.policies.as_slice() != v.policies {
            self.policies = v.policies.to_vec();
        }
        if !Arc::ptr_eq(&self.decided, v.decided) && self.decided != *v.decided {
            self.decided = Arc::clone(v.decided);
        }
        if let Some(s) = v.service
            && !self.services.iter().any(|x| x == s)
        {
            self.services.push(s.to_owned());
        }
    }

    /// Notes a node that reported the edge.
    pub fn add_node(&mut self, node: &str) {
        if !self.nodes.contains(node) {
            self.nodes.insert(node.to_owned());
        }
    }

    /// Adds what another shard counted on the same edge: counts add up, the span covers both, and the last
    /// verdict, policies and sample are those of the edge seen last (on a tie, the one with the later sample by
    /// [`recency`]).
    pub fn merge(&mut self, other: EdgeStats) {
        let later =
            (other.last_seen, recency(&other.sample)) > (self.last_seen, recency(&self.sample));
        self.flows += other.flows;
        self.packets = self.packets.saturating_add(other.packets);
        self.bytes = self.bytes.saturating_add(other.bytes);
        self.allowed += other.allowed;
        self.denied += other.denied;
        self.other += other.other;
        self.delivered += other.delivered;
        self.dropped_in_transit += other.dropped_in_transit;
        self.enforcement_gaps += other.enforcement_gaps;
        self.first_seen = self.first_seen.min(other.first_seen);
        self.baseline |= other.baseline;
        self.nodes.extend(other.nodes);
        for s in other.services {
            if !self.services.contains(&s) {
                self.services.push(s);
            }
        }
        if later {
            self.last_seen = other.last_seen;
            self.verdict = other.verdict;
            self.not_isolated = other.not_isolated;
            self.policies = other.policies;
            self.decided = other.decided;
            self.sample = other.sample;
        }
    }
}

/// How recent a record is, as a total order: by end, then start, then addresses, ports and protocol (so two
/// records that ended together still have a fixed order).
pub fn recency(
    r: &FlowRecord,
) -> (
    Timestamp,
    Timestamp,
    std::net::IpAddr,
    std::net::IpAddr,
    Option<u16>,
    Option<u16>,
    Protocol,
) {
    (
        r.end, r.start, r.src, r.dst, r.src_port, r.dst_port, r.proto,
    )
}

/// Every edge by index, with the changes since the last checkpoint.
#[derive(Clone, Debug, Default)]
pub struct EdgeBook {
    edges: Vec<EdgeStats>,
    index: HashMap<EdgeKey, usize>,
    /// Edges changed since the last checkpoint, and the same as flags.
    dirty: Vec<usize>,
    flags: Vec<bool>,
}

impl EdgeBook {
    /// An empty book.
    pub fn new() -> EdgeBook {
        EdgeBook::default()
    }

    /// Every edge, by index.
    pub fn edges(&self) -> &[EdgeStats] {
        &self.edges
    }

    /// Edges held.
    pub fn len(&self) -> usize {
        self.edges.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.edges.is_empty()
    }

    /// The index of an edge, if held.
    pub fn find(&self, key: &EdgeKey) -> Option<usize> {
        self.index.get(key).copied()
    }

    /// The index of an edge, added with `make` if not held yet.
    pub fn find_or_insert(&mut self, key: &EdgeKey, make: impl FnOnce() -> EdgeStats) -> usize {
        if let Some(&i) = self.index.get(key) {
            return i;
        }
        let i = self.edges.len();
        self.edges.push(make());
        self.flags.push(false);
        self.index.insert(key.clone(), i);
        i
    }

    /// An edge to count into: marked changed for the next checkpoint.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut EdgeStats> {
        if let Some(flag) = self.flags.get_mut(i)
            && !*flag
        {
            *flag = true;
            self.dirty.push(i);
        }
        self.edges.get_mut(i)
    }

    /// Takes in edges kept from before (at start).
    pub fn restore(&mut self, edges: Vec<EdgeStats>) {
        for e in edges {
            self.add(e);
        }
    }

    /// The edges changed since the last call, in index order; marks them saved.
    pub fn take_changes(&mut self) -> Vec<EdgeStats> {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty
            .into_iter()
            .filter_map(|i| {
                *self.flags.get_mut(i)? = false;
                self.edges.get(i).cloned()
            })
            .collect()
    }

    /// Marks every edge changed (a checkpoint failed: write them all next time).
    pub fn mark_all_dirty(&mut self) {
        self.dirty = (0..self.edges.len()).collect();
        self.flags = vec![true; self.edges.len()];
    }

    /// Which edges were seen at or after `horizon` (the ones to keep), by index.
    pub fn seen_since(&self, horizon: Timestamp) -> Vec<bool> {
        self.edges.iter().map(|e| e.last_seen >= horizon).collect()
    }

    /// Keeps the edges marked in `keep` and renumbers them; answers each old index's new one (`None`: gone).
    pub fn retain(&mut self, keep: &[bool]) -> Vec<Option<usize>> {
        let mut renumber = Vec::with_capacity(keep.len());
        let mut next = 0;
        for i in 0..self.edges.len() {
            if keep.get(i).copied().unwrap_or(true) {
                renumber.push(Some(next));
                next += 1;
            } else {
                renumber.push(None);
            }
        }
        retain_marked(&mut self.edges, keep);
        retain_marked(&mut self.flags, keep);
        self.index = self
            .edges
            .iter()
            .enumerate()
            .map(|(i, e)| (e.key.clone(), i))
            .collect();
        self.dirty = self
            .dirty
            .iter()
            .filter_map(|&i| renumber.get(i).copied().flatten())
            .collect();
        renumber
    }

    /// Adds another shard's edges, as if its connections had been counted here. Edges only the other holds are
    /// added after this book's, in the other's order; changed ones are marked changed.
    pub fn merge(&mut self, other: EdgeBook) {
        for e in other.edges {
            let i = self.add(e);
            if let Some(flag) = self.flags.get_mut(i)
                && !*flag
            {
                *flag = true;
                self.dirty.push(i);
            }
        }
    }

    /// Adds an edge, merged into the one with its key when held; answers its index.
    fn add(&mut self, e: EdgeStats) -> usize {
        match self.index.get(&e.key) {
            Some(&i) => {
                self.edges[i].merge(e);
                i
            }
            None => {
                let i = self.edges.len();
                self.index.insert(e.key.clone(), i);
                self.edges.push(e);
                self.flags.push(false);
                i
            }
        }
    }
}

/// Keeps the items of `v` whose flag in `keep` is set.
pub fn retain_marked<T>(v: &mut Vec<T>, keep: &[bool]) {
    let mut flags = keep.iter();
    v.retain(|_| flags.next().copied().unwrap_or(true));
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_model::EndpointKind;

    fn key(dst: &str, port: u16) -> EdgeKey {
        EdgeKey {
            src: EndpointKey::new(EndpointKind::Pod, Some("shop"), "Deployment/a"),
            dst: EndpointKey::new(EndpointKind::Pod, Some("shop"), dst),
            proto: Protocol::TCP,
            port: Some(port),
        }
    }

    fn record(start_s: i64, packets: u64) -> FlowRecord {
        crate::testing::tcp("10.0.0.1", "10.0.0.2", 80, start_s * 1000, packets)
    }

    fn verdict(v: FlowVerdict, policies: &[String]) -> ConnectionVerdict<'_> {
        static DECIDED: std::sync::LazyLock<Arc<Decided>> = std::sync::LazyLock::new(Arc::default);
        ConnectionVerdict {
            verdict: v,
            not_isolated: false,
            policies,
            decided: &DECIDED,
            service: None,
        }
    }

    /// Counts one connection into a book as the aggregator does.
    fn count(book: &mut EdgeBook, k: &EdgeKey, r: &FlowRecord, v: FlowVerdict) {
        let policies = vec![format!("ingress shop/{v}")];
        let i = book.find_or_insert(k, || {
            EdgeStats::new(k.clone(), r, verdict(v, &policies), false)
        });
        let Some(e) = book.get_mut(i) else {
            panic!("edge {i} missing")
        };
        e.count_volume(r);
        e.count_connection(v, false);
        e.set_last_verdict(verdict(v, &policies));
        e.add_node("node-a");
    }

    #[test]
    fn counts_and_the_last_verdict() {
        let mut book = EdgeBook::new();
        let k = key("Deployment/b", 80);
        count(&mut book, &k, &record(1, 3), FlowVerdict::Allowed);
        count(&mut book, &k, &record(2, 4), FlowVerdict::Denied);
        let e = &book.edges()[0];
        assert_eq!((e.flows, e.allowed, e.denied, e.packets), (2, 1, 1, 7));
        assert_eq!(e.verdict, FlowVerdict::Denied);
        assert_eq!(e.policies, ["ingress shop/denied"]);
        assert_eq!(book.take_changes().len(), 1);
        assert!(book.take_changes().is_empty());
    }

    #[test]
    fn merged_shards_give_the_book_of_the_union() {
        let keys = [
            key("Deployment/b", 80),
            key("Deployment/c", 443),
            key("Deployment/b", 81),
        ];
        let connections: Vec<(usize, i64, FlowVerdict)> = (0..30)
            .map(|i| {
                let v = if i % 4 == 0 {
                    FlowVerdict::Denied
                } else {
                    FlowVerdict::Allowed
                };
                (i % 3, i as i64, v)
            })
            .collect();
        let mut whole = EdgeBook::new();
        for &(k, t, v) in &connections {
            count(&mut whole, &keys[k], &record(t, 2), v);
        }
        let (mut left, mut right) = (EdgeBook::new(), EdgeBook::new());
        for &(k, t, v) in &connections {
            let book = if t % 2 == 0 { &mut left } else { &mut right };
            count(book, &keys[k], &record(t, 2), v);
        }
        left.merge(right);
        // Everything but the sample, which is a recent record of the edge, refreshed now and then.
        let sorted = |b: &EdgeBook| {
            let mut e = b.edges().to_vec();
            e.sort_by(|a, b| a.key.cmp(&b.key));
            for x in &mut e {
                assert!(x.sample.start <= x.last_seen && x.sample.start >= x.first_seen);
                x.sample = record(0, 0);
            }
            e
        };
        assert_eq!(sorted(&left), sorted(&whole));
        assert_eq!(left.take_changes().len(), 3);
    }

    #[test]
    fn retention_renumbers_what_is_kept() {
        let mut book = EdgeBook::new();
        for (i, port) in [80u16, 81, 82].into_iter().enumerate() {
            count(
                &mut book,
                &key("Deployment/b", port),
                &record(i as i64 * 100, 1),
                FlowVerdict::Allowed,
            );
        }
        book.take_changes();
        let keep = book.seen_since(Timestamp(150_000_000_000));
        assert_eq!(keep, [false, false, true]);
        assert_eq!(book.retain(&keep), [None, None, Some(0)]);
        assert_eq!(book.find(&key("Deployment/b", 82)), Some(0));
        assert_eq!(book.find(&key("Deployment/b", 80)), None);
        book.mark_all_dirty();
        assert_eq!(book.take_changes().len(), 1);
    }
}

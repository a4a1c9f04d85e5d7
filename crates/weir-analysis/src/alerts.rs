//! The alert rules, as a pure module over the edge book and the scan detector: which alerts a counted
//! connection raises ([`alert_kinds`]), and the book of alerts with their counts, evidence and deliveries
//! ([`AlertBook`]). No I/O and no clock: the caller hands in the time; the aggregator delivers what
//! [`AlertBook::take_deliveries`] returns and stores what [`AlertBook::take_changes`] returns.
//!
//! The rules:
//! - **policy-violation**, one per pair of endpoints: a new connection the policies deny, unless its source is
//!   scanning (then it counts into the scan alert instead of raising one alert per target);
//! - **enforcement-gap**, per pair and port: a connection the policies deny was delivered;
//! - **new-edge**, per pair and port: a new allowed connection between two endpoints inside the cluster on an
//!   edge that was not seen while the baseline was learned;
//! - **scan**, per source: a new connection made its source a scanner ([`crate::ScanRule`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use foldhash::HashMap;
use smallvec::SmallVec;
use weir_model::{
    Alert, AlertEvidence, AlertKind, EndpointKey, FlowRecord, FlowVerdict, Timestamp,
};

use crate::ScanHit;

/// The ids of one edge's alerts: its policy-violation (per pair of endpoints), enforcement-gap and new-edge
/// (per pair and port) alerts, and its source's scan alert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeAlertIds([Arc<str>; 4]);

impl EdgeAlertIds {
    /// The ids for an edge between two endpoints on a port (`TCP/8080`, or `ICMP`).
    pub fn new(source: &EndpointKey, destination: &EndpointKey, port_text: &str) -> EdgeAlertIds {
        let (src, dst) = (source.label(), destination.label());
        EdgeAlertIds([
            Arc::from(alert_id(AlertKind::PolicyViolation, &[&src, &dst])),
            Arc::from(alert_id(
                AlertKind::EnforcementGap,
                &[&src, &dst, port_text],
            )),
            Arc::from(alert_id(AlertKind::NewEdge, &[&src, &dst, port_text])),
            Arc::from(alert_id(AlertKind::Scan, &[&src])),
        ])
    }

    /// The id of one kind's alert on the edge (a scan's is its source's: [`scan_alert_id`]).
    pub fn of(&self, kind: AlertKind) -> &Arc<str> {
        match kind {
            AlertKind::PolicyViolation => &self.0[0],
            AlertKind::EnforcementGap => &self.0[1],
            AlertKind::NewEdge => &self.0[2],
            AlertKind::Scan => &self.0[3],
        }
    }
}

/// The id of a source's scan alert.
pub fn scan_alert_id(source: &EndpointKey) -> String {
    alert_id(AlertKind::Scan, &[&source.label()])
}

/// A stable alert id: the kind and a 64-bit FNV-1a hash of the edge's names.
pub fn alert_id(kind: AlertKind, parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{}-{h:016x}", kind.name())
}

/// What the alert rules look at for one view of a connection, after the edge book counted it.
#[derive(Clone, Copy, Debug)]
pub struct Observation<'a> {
    /// The source endpoint.
    pub source: &'a EndpointKey,
    /// The destination endpoint (the backend workload for Service traffic).
    pub destination: &'a EndpointKey,
    /// The source pod, when a pod.
    pub source_pod: Option<&'a str>,
    /// The destination pod, when a pod.
    pub destination_pod: Option<&'a str>,
    /// The record of this view.
    pub record: &'a FlowRecord,
    /// The port as policy judges it (none for ICMP).
    pub port: Option<u16>,
    /// The verdict.
    pub verdict: FlowVerdict,
    /// The deciding policies (`egress ns/name`, `ingress ns/name`).
    pub policies: &'a [String],
    /// The verdict per direction in words.
    pub reason: &'a str,
    /// The ids of the edge's alerts.
    pub ids: &'a EdgeAlertIds,
    /// The first view of the connection (a second view of a counted one raises nothing new but a gap).
    pub new_connection: bool,
    /// A connection the policies deny was just seen delivered (once per connection).
    pub enforcement_gap: bool,
    /// The edge was seen while the baseline was learned.
    pub baseline_edge: bool,
}

impl Observation<'_> {
    fn denied(&self) -> bool {
        self.verdict == FlowVerdict::Denied
    }
}

/// The edge alerts one observation raises or counts into, by the rules above. `scanning`: the connection made
/// or kept its source a scanner.
pub fn alert_kinds(o: &Observation<'_>, scanning: bool) -> impl Iterator<Item = AlertKind> {
    let violation = o.new_connection && o.denied() && !scanning;
    let new_edge = o.new_connection
        && o.verdict == FlowVerdict::Allowed
        && !o.baseline_edge
        && o.source.in_cluster()
        && o.destination.in_cluster();
    [
        violation.then_some(AlertKind::PolicyViolation),
        o.enforcement_gap.then_some(AlertKind::EnforcementGap),
        new_edge.then_some(AlertKind::NewEdge),
    ]
    .into_iter()
    .flatten()
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

    /// Whether the details should be refreshed: it is about to be delivered, or they are a second old.
    fn detail_due(&self, now: Timestamp, repeat: i64) -> bool {
        now.0 - self.delivered_at >= repeat || now.0 - self.detail_at >= 1_000_000_000
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
    /// Deliveries since the book was made.
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
    /// queued for [`AlertBook::tick`].
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

/// The alerts raised so far, each counting on as its traffic goes on, with the deliveries due and the changes
/// since the last checkpoint. An update of an alert is delivered at most once per quiet time (`repeat`).
pub struct AlertBook {
    alerts: HashMap<Arc<str>, AlertEntry>,
    outbox: Outbox,
    /// Alerts raised since the book was made, by kind.
    raised: BTreeMap<AlertKind, u64>,
}

impl AlertBook {
    /// An empty book whose updates are delivered at most once per `repeat`.
    pub fn new(repeat: Duration) -> AlertBook {
        AlertBook {
            alerts: HashMap::default(),
            outbox: Outbox {
                repeat: weir_model::duration_nanos(repeat),
                ..Outbox::default()
            },
            raised: BTreeMap::new(),
        }
    }

    /// Applies the rules to one observation (`scan`: the window that makes its source a scanner, if the
    /// connection did) at `now`; answers the kinds raised or counted into.
    pub fn observe(
        &mut self,
        o: &Observation<'_>,
        scan: Option<ScanHit<'_>>,
        now: Timestamp,
    ) -> SmallVec<[AlertKind; 4]> {
        // Inline: this runs for every connection, and most raise nothing or one kind.
        let mut kinds = SmallVec::new();
        if let Some(hit) = scan {
            self.count_scan(o, hit, now);
            kinds.push(AlertKind::Scan);
        }
        for kind in alert_kinds(o, scan.is_some()) {
            self.count_edge(kind, o, now);
            kinds.push(kind);
        }
        kinds
    }

    fn count_scan(&mut self, o: &Observation<'_>, hit: ScanHit<'_>, now: Timestamp) {
        let r = o.record;
        let evidence = || {
            let w = hit.window();
            AlertEvidence {
                flows: w.flows,
                packets: w.packets,
                bytes: w.bytes,
                denied: w.denied,
                targets: w.targets,
                ports: w.ports.clone(),
                community_id: r.community_id.clone(),
                last_flow: tuple(r),
                observed_at: r.observed_at.iter().cloned().collect(),
                reason: format!(
                    "{} distinct destinations unanswered or denied, {} of {} attempts unanswered, {} denied, within {} s",
                    w.targets,
                    w.failed,
                    w.flows,
                    w.denied,
                    w.length.as_secs(),
                ),
            }
        };
        let summary = |e: &AlertEvidence| {
            format!(
                "{} is scanning: {} destinations, {} ports, {} denied",
                o.source.label(),
                e.targets,
                e.ports.len(),
                e.denied
            )
        };
        let id = Arc::clone(o.ids.of(AlertKind::Scan));
        let repeat = self.outbox.repeat;
        match self.alerts.get_mut(&id) {
            Some(entry) => {
                // The count goes on over windows; the evidence is the current window's, refreshed when the
                // alert is about to be delivered or a second after the last refresh.
                entry.alert.count += 1;
                entry.alert.last_seen = entry.alert.last_seen.max(r.end);
                entry.alert.updated_at = now;
                if entry.detail_due(now, repeat) {
                    entry.detail_at = now.0;
                    entry.alert.evidence = evidence();
                    entry.alert.summary = summary(&entry.alert.evidence);
                }
                self.outbox.updated(&id, entry, now);
            }
            None => {
                let evidence = evidence();
                let count = evidence.flows;
                let alert = Alert {
                    id: id.to_string(),
                    kind: AlertKind::Scan,
                    severity: AlertKind::Scan.severity(),
                    summary: summary(&evidence),
                    source: o.source.alert_endpoint(o.source_pod, Some(r.src)),
                    destination: None,
                    proto: r.proto.name().map(str::to_owned),
                    port: None,
                    policies: Vec::new(),
                    evidence,
                    first_seen: r.start,
                    last_seen: r.end,
                    count,
                    raised_at: now,
                    updated_at: now,
                };
                self.insert_new(id, alert);
            }
        }
    }

    fn count_edge(&mut self, kind: AlertKind, o: &Observation<'_>, now: Timestamp) {
        let r = o.record;
        let id = Arc::clone(o.ids.of(kind));
        let denied = o.denied();
        let repeat = self.outbox.repeat;
        match self.alerts.get_mut(&id) {
            Some(entry) => {
                let a = &mut entry.alert;
                a.count += 1;
                a.last_seen = a.last_seen.max(r.end);
                a.first_seen = a.first_seen.min(r.start);
                a.evidence.flows += 1;
                a.evidence.packets = a.evidence.packets.saturating_add(r.total_packets());
                a.evidence.bytes = a.evidence.bytes.saturating_add(r.total_bytes());
                a.evidence.denied += u64::from(denied);
                if let Some(p) = o.port
                    && !a.evidence.ports.contains(&p)
                    && a.evidence.ports.len() < crate::scan::SCAN_PORTS
                {
                    a.evidence.ports.push(p);
                    a.evidence.ports.sort_unstable();
                }
                a.updated_at = now;
                // The last flow's details are refreshed when the alert is about to be delivered, or a second
                // after the last refresh: not copied with every flow of an attack.
                if entry.detail_due(now, repeat) {
                    entry.detail_at = now.0;
                    let a = &mut entry.alert;
                    a.evidence.community_id = r.community_id.clone();
                    a.evidence.last_flow = tuple(r);
                    a.evidence.observed_at = r.observed_at.iter().cloned().collect();
                    a.destination =
                        Some(o.destination.alert_endpoint(o.destination_pod, Some(r.dst)));
                    a.source = o.source.alert_endpoint(o.source_pod, Some(r.src));
                }
                self.outbox.updated(&id, entry, now);
            }
            None => {
                let port_text = match o.port {
                    Some(p) => format!("{}/{p}", r.proto),
                    None => r.proto.to_string(),
                };
                let (src, dst) = (o.source.label(), o.destination.label());
                let summary = match kind {
                    AlertKind::PolicyViolation => {
                        format!("{src} -> {dst} ({port_text}): denied by the policies in force")
                    }
                    AlertKind::EnforcementGap => format!(
                        "{src} -> {dst} on {port_text}: denied by policy but delivered; the CNI is not enforcing it"
                    ),
                    AlertKind::NewEdge | AlertKind::Scan => format!(
                        "{src} -> {dst} on {port_text}: allowed, but never seen while the baseline was learned"
                    ),
                };
                let alert = Alert {
                    id: id.to_string(),
                    kind,
                    severity: kind.severity(),
                    summary,
                    source: o.source.alert_endpoint(o.source_pod, Some(r.src)),
                    destination: Some(o.destination.alert_endpoint(o.destination_pod, Some(r.dst))),
                    proto: r.proto.name().map(str::to_owned),
                    port: o.port,
                    policies: o.policies.to_vec(),
                    evidence: AlertEvidence {
                        flows: 1,
                        packets: r.total_packets(),
                        bytes: r.total_bytes(),
                        denied: u64::from(denied),
                        targets: 0,
                        ports: o.port.into_iter().collect(),
                        community_id: r.community_id.clone(),
                        last_flow: tuple(r),
                        observed_at: r.observed_at.iter().cloned().collect(),
                        reason: o.reason.to_owned(),
                    },
                    first_seen: r.start,
                    last_seen: r.end,
                    count: 1,
                    raised_at: now,
                    updated_at: now,
                };
                self.insert_new(id, alert);
            }
        }
    }

    fn insert_new(&mut self, id: Arc<str>, alert: Alert) {
        *self.raised.entry(alert.kind).or_default() += 1;
        let at = alert.raised_at.0;
        let mut entry = AlertEntry::new(alert, at);
        self.outbox.raised(&id, &mut entry);
        self.alerts.insert(id, entry);
    }

    /// Delivers the updates whose quiet time is over.
    pub fn tick(&mut self, now: Timestamp) {
        for id in std::mem::take(&mut self.outbox.queued) {
            if let Some(entry) = self.alerts.get_mut(&id) {
                entry.queued = false;
                self.outbox.settle(&id, entry, now);
            }
        }
    }

    /// Alerts raised or updated since the last call, to deliver.
    pub fn take_deliveries(&mut self) -> Vec<Alert> {
        std::mem::take(&mut self.outbox.deliveries)
    }

    /// Alerts changed since the last call (for the checkpoint).
    pub fn take_changes(&mut self) -> Vec<Alert> {
        std::mem::take(&mut self.outbox.dirty)
            .into_iter()
            .filter_map(|id| {
                let entry = self.alerts.get_mut(&id)?;
                entry.dirty = false;
                Some(entry.alert.clone())
            })
            .collect()
    }

    /// Marks every alert changed (a checkpoint failed: write them all next time).
    pub fn mark_all_dirty(&mut self) {
        self.outbox.dirty.clear();
        for (id, entry) in &mut self.alerts {
            entry.dirty = true;
            self.outbox.dirty.push(Arc::clone(id));
        }
    }

    /// Takes in alerts kept from before (at start): they count on, and are not delivered again.
    pub fn restore(&mut self, alerts: Vec<Alert>, now: Timestamp) {
        for a in alerts {
            self.alerts
                .insert(Arc::from(a.id.as_str()), AlertEntry::new(a, now.0));
        }
    }

    /// Forgets alerts whose traffic was last seen before `horizon`, unless a delivery or checkpoint still has to
    /// see them. Returns how many.
    pub fn forget_before(&mut self, horizon: Timestamp) -> usize {
        let before = self.alerts.len();
        self.alerts.retain(|_, entry| {
            entry.alert.last_seen >= horizon || entry.pending || entry.queued || entry.dirty
        });
        before - self.alerts.len()
    }

    /// Forgets the least recently seen alerts until `keep` are left (ties by id), whatever is pending for
    /// them: the book's bound when too many are held. Answers their ids.
    pub fn evict_oldest(&mut self, keep: usize) -> Vec<Arc<str>> {
        let n = self.alerts.len();
        if n <= keep {
            return Vec::new();
        }
        let mut by_age: Vec<(Timestamp, Arc<str>)> = self
            .alerts
            .iter()
            .map(|(id, e)| (e.alert.last_seen, Arc::clone(id)))
            .collect();
        by_age.select_nth_unstable(n - keep - 1);
        by_age.truncate(n - keep);
        by_age
            .into_iter()
            .map(|(_, id)| {
                self.alerts.remove(&id);
                id
            })
            .collect()
    }

    /// Every alert, in no order.
    pub fn iter(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.values().map(|e| &e.alert)
    }

    /// One alert.
    pub fn get(&self, id: &str) -> Option<&Alert> {
        self.alerts.get(id).map(|e| &e.alert)
    }

    /// Alerts held.
    pub fn len(&self) -> usize {
        self.alerts.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty()
    }

    /// Alerts raised since the book was made, by kind.
    pub fn raised(&self) -> &BTreeMap<AlertKind, u64> {
        &self.raised
    }

    /// Deliveries (first raise and rate-limited updates) since the book was made.
    pub fn delivered(&self) -> u64 {
        self.outbox.delivered
    }

    /// Adds another book's alerts, as if its observations had been made here: an alert both hold counts both
    /// shards' flows, spans both, and shows the details of the later update. Deliveries and changes of both are
    /// kept.
    pub fn merge(&mut self, other: AlertBook) {
        for (kind, n) in other.raised {
            *self.raised.entry(kind).or_default() += n;
        }
        self.outbox.delivered += other.outbox.delivered;
        self.outbox.deliveries.extend(other.outbox.deliveries);
        for (id, theirs) in other.alerts {
            match self.alerts.get_mut(&id) {
                None => {
                    if theirs.dirty {
                        self.outbox.dirty.push(Arc::clone(&id));
                    }
                    if theirs.queued {
                        self.outbox.queued.push(Arc::clone(&id));
                    }
                    self.alerts.insert(id, theirs);
                }
                Some(mine) => {
                    // Raised in both shards, once in the union.
                    if let Some(n) = self.raised.get_mut(&theirs.alert.kind) {
                        *n = n.saturating_sub(1);
                    }
                    merge_alert(&mut mine.alert, theirs.alert);
                    mine.pending |= theirs.pending;
                    mine.detail_at = mine.detail_at.max(theirs.detail_at);
                    mine.delivered_at = mine.delivered_at.max(theirs.delivered_at);
                    if !mine.dirty {
                        mine.dirty = true;
                        self.outbox.dirty.push(Arc::clone(&id));
                    }
                    if mine.pending && !mine.queued {
                        mine.queued = true;
                        self.outbox.queued.push(Arc::clone(&id));
                    }
                }
            }
        }
    }
}

/// One alert's two shards' counts as one.
fn merge_alert(mine: &mut Alert, theirs: Alert) {
    let later = theirs.updated_at > mine.updated_at;
    mine.count += theirs.count;
    mine.first_seen = mine.first_seen.min(theirs.first_seen);
    mine.last_seen = mine.last_seen.max(theirs.last_seen);
    mine.raised_at = mine.raised_at.min(theirs.raised_at);
    mine.updated_at = mine.updated_at.max(theirs.updated_at);
    let (e, t) = (&mut mine.evidence, theirs.evidence);
    if mine.kind == AlertKind::Scan {
        // A scan's evidence is its current window's: the later one stands.
        if later {
            *e = t;
            mine.summary = theirs.summary;
        }
        return;
    }
    e.flows += t.flows;
    e.packets = e.packets.saturating_add(t.packets);
    e.bytes = e.bytes.saturating_add(t.bytes);
    e.denied += t.denied;
    for p in t.ports {
        if !e.ports.contains(&p) {
            e.ports.push(p);
        }
    }
    e.ports.sort_unstable();
    e.ports.truncate(crate::scan::SCAN_PORTS);
    if later {
        e.community_id = t.community_id;
        e.last_flow = t.last_flow;
        e.observed_at = t.observed_at;
        mine.source = theirs.source;
        mine.destination = theirs.destination;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_model::EndpointKind;

    fn pod(name: &str) -> EndpointKey {
        EndpointKey::new(EndpointKind::Pod, Some("shop"), name)
    }

    fn record(ms: i64) -> FlowRecord {
        crate::testing::tcp("10.0.0.1", "10.0.0.2", 8080, ms, 1)
    }

    struct Edge {
        src: EndpointKey,
        dst: EndpointKey,
        ids: EdgeAlertIds,
        record: FlowRecord,
    }

    fn edge(src: EndpointKey, dst: EndpointKey) -> Edge {
        let ids = EdgeAlertIds::new(&src, &dst, "TCP/8080");
        Edge {
            src,
            dst,
            ids,
            record: record(0),
        }
    }

    fn observation(e: &Edge, verdict: FlowVerdict) -> Observation<'_> {
        Observation {
            source: &e.src,
            destination: &e.dst,
            source_pod: None,
            destination_pod: None,
            record: &e.record,
            port: Some(8080),
            verdict,
            policies: &[],
            reason: "",
            ids: &e.ids,
            new_connection: true,
            enforcement_gap: false,
            baseline_edge: false,
        }
    }

    fn kinds(o: &Observation<'_>, scanning: bool) -> Vec<AlertKind> {
        alert_kinds(o, scanning).collect()
    }

    #[test]
    fn the_rules() {
        let lateral = edge(pod("Deployment/a"), pod("Deployment/b"));
        let outside = edge(
            EndpointKey::new(EndpointKind::External, None, "192.0.2.1"),
            pod("Deployment/b"),
        );
        let allowed = observation(&lateral, FlowVerdict::Allowed);
        assert_eq!(kinds(&allowed, false), [AlertKind::NewEdge]);
        assert!(
            kinds(
                &Observation {
                    baseline_edge: true,
                    ..allowed
                },
                false
            )
            .is_empty()
        );
        assert!(
            kinds(
                &Observation {
                    new_connection: false,
                    ..allowed
                },
                false
            )
            .is_empty()
        );
        assert!(
            kinds(&observation(&outside, FlowVerdict::Allowed), false).is_empty(),
            "traffic from outside is not lateral"
        );
        assert!(kinds(&observation(&lateral, FlowVerdict::Mixed), false).is_empty());

        let denied = observation(&lateral, FlowVerdict::Denied);
        assert_eq!(kinds(&denied, false), [AlertKind::PolicyViolation]);
        assert!(
            kinds(&denied, true).is_empty(),
            "a scanner's probes count into its scan"
        );
        assert_eq!(
            kinds(
                &Observation {
                    enforcement_gap: true,
                    new_connection: false,
                    ..denied
                },
                false
            ),
            [AlertKind::EnforcementGap]
        );
        assert_eq!(
            kinds(
                &Observation {
                    enforcement_gap: true,
                    ..denied
                },
                true
            ),
            [AlertKind::EnforcementGap],
            "a gap is raised even while scanning"
        );
    }

    #[test]
    fn an_alert_counts_on_and_its_updates_wait_for_the_quiet_time() {
        let mut book = AlertBook::new(Duration::from_secs(30));
        let e = edge(pod("Deployment/a"), pod("Deployment/b"));
        let o = observation(&e, FlowVerdict::Denied);
        assert_eq!(
            book.observe(&o, None, Timestamp(0)).as_slice(),
            [AlertKind::PolicyViolation]
        );
        assert_eq!(book.take_deliveries().len(), 1);
        for i in 1..=5 {
            book.observe(&o, None, Timestamp(i * 1_000_000_000));
        }
        assert!(book.take_deliveries().is_empty(), "within the quiet time");
        book.tick(Timestamp(31_000_000_000));
        let d = book.take_deliveries();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].count, 6);
        assert_eq!(book.take_changes().len(), 1);
        assert!(book.take_changes().is_empty());
        assert_eq!(book.raised().get(&AlertKind::PolicyViolation), Some(&1));
        assert_eq!(book.delivered(), 2);
        assert_eq!(book.forget_before(Timestamp(i64::MAX)), 1);
    }

    #[test]
    fn a_scan_window_raises_one_alert_per_source() {
        let mut book = AlertBook::new(Duration::from_secs(30));
        let e = edge(pod("Deployment/a"), pod("Deployment/b"));
        let o = observation(&e, FlowVerdict::Denied);
        let mut scans = crate::ScanDetector::new(crate::ScanRule::default());
        let mut raised = Vec::new();
        for port in 0..21u16 {
            let attempt = crate::Attempt {
                source: e.record.src,
                target: e.record.dst,
                port,
                start: Timestamp(i64::from(port) * 1_000_000),
                answered: false,
                denied: true,
                packets: 1,
                bytes: 60,
            };
            if let Some(hit) = scans.hit(&attempt, Timestamp(0)) {
                raised.push(
                    book.observe(&o, Some(hit), Timestamp(i64::from(port)))
                        .to_vec(),
                );
            }
        }
        assert_eq!(
            raised,
            [[AlertKind::Scan], [AlertKind::Scan]],
            "from the 20th probe on"
        );
        assert_eq!(book.len(), 1);
        let a = book
            .iter()
            .next()
            .cloned()
            .unwrap_or_else(|| panic!("no alert"));
        assert_eq!((a.kind, a.count), (AlertKind::Scan, 21));
        assert_eq!(a.id, scan_alert_id(&e.src));
        assert!(
            a.evidence.reason.contains("within 10 s"),
            "{}",
            a.evidence.reason
        );
    }

    #[test]
    fn merged_books_count_both_shards() {
        let e = edge(pod("Deployment/a"), pod("Deployment/b"));
        let o = observation(&e, FlowVerdict::Denied);
        let (mut left, mut right) = (
            AlertBook::new(Duration::from_secs(30)),
            AlertBook::new(Duration::from_secs(30)),
        );
        left.observe(&o, None, Timestamp(0));
        right.observe(&o, None, Timestamp(5));
        right.observe(&o, None, Timestamp(6));
        left.merge(right);
        assert_eq!(left.len(), 1);
        let a = left
            .iter()
            .next()
            .cloned()
            .unwrap_or_else(|| panic!("no alert"));
        assert_eq!(
            (a.count, a.evidence.flows, a.raised_at),
            (3, 3, Timestamp(0))
        );
        assert_eq!(left.raised().get(&AlertKind::PolicyViolation), Some(&1));
    }
}

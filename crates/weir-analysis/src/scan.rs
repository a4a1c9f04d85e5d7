//! The one scan detector: the offline report and the aggregator's alerts both decide "this source is scanning"
//! with [`ScanRule`] over [`ScanDetector`].
//!
//! A source scans when, within one window, it reaches at least `min_targets` distinct destinations (address and
//! port, or ICMP type) that did not answer or were denied while most of its attempts went unanswered (fan-out),
//! or when at least `min_denied` of its attempts are denied (hammering). Windows hop by half their length, so a
//! burst no longer than half a window always falls inside one of them whatever its start, and the state is a set
//! of per-half counts: adding attempts in any order, or merging the detectors of two shards, gives the same
//! windows. Only probes (failed or denied attempts) are remembered by address, so ordinary traffic costs a few
//! counters per source and half-window.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use foldhash::{HashMap, HashSet};
use weir_model::Timestamp;

/// When a source counts as scanning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanRule {
    /// The window attempts are counted in.
    pub window: Duration,
    /// Distinct destinations that did not answer or were denied, in a window where most attempts went
    /// unanswered, that make a scan.
    pub min_targets: u64,
    /// Denied attempts in a window that make a scan.
    pub min_denied: u64,
}

impl Default for ScanRule {
    fn default() -> Self {
        ScanRule {
            window: Duration::from_secs(10),
            min_targets: 20,
            min_denied: 20,
        }
    }
}

impl ScanRule {
    /// Whether a window's counts make a scan.
    pub fn is_scan(&self, w: &ScanWindow) -> bool {
        let fanout = w.targets >= self.min_targets && w.failed.saturating_mul(2) >= w.flows;
        fanout || w.denied >= self.min_denied
    }

    fn half_ns(&self) -> i64 {
        (weir_model::duration_nanos(self.window) / 2).max(1)
    }
}

/// One connection attempt, as the detector counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// The source address.
    pub source: IpAddr,
    /// The destination address (the backend for Service traffic).
    pub target: IpAddr,
    /// The destination port, or the ICMP type.
    pub port: u16,
    /// When it started.
    pub start: Timestamp,
    /// Whether the destination took it ([`weir_model::ConnectionOutcome::answered`]).
    pub answered: bool,
    /// Whether the policies deny it.
    pub denied: bool,
    /// Packets, both directions.
    pub packets: u64,
    /// Bytes, both directions.
    pub bytes: u64,
}

impl Attempt {
    /// The attempt a judged flow is: to the backend on the port policy judged (the ICMP type for ICMP),
    /// answered as [`weir_model::ConnectionOutcome`] defines it, denied when the policies deny it.
    pub fn of(flow: &crate::JudgedFlow) -> Attempt {
        let r = &flow.record;
        let port = if r.proto.is_icmp() {
            r.icmp_type.map(u16::from)
        } else {
            flow.judged_port()
        };
        Attempt {
            source: r.src,
            target: flow.destination_ip(),
            port: port.unwrap_or(0),
            start: r.start,
            answered: r.outcome().answered(),
            denied: crate::flow_verdict(&flow.judgement) == weir_model::FlowVerdict::Denied,
            packets: r.total_packets(),
            bytes: r.total_bytes(),
        }
    }

    fn probe(&self) -> bool {
        !self.answered || self.denied
    }
}

/// What one window of one source holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanWindow {
    /// Its start.
    pub start: Timestamp,
    /// Its length.
    pub length: Duration,
    /// Distinct destinations that did not answer or were denied.
    pub targets: u64,
    /// Attempts.
    pub flows: u64,
    /// Attempts without an answer, or refused.
    pub failed: u64,
    /// Attempts the policies deny.
    pub denied: u64,
    /// Packets of its attempts.
    pub packets: u64,
    /// Bytes of its attempts.
    pub bytes: u64,
    /// The lowest ports (or ICMP types) it probed, at most [`SCAN_PORTS`].
    pub ports: Vec<u16>,
}

/// Most ports listed per window.
pub const SCAN_PORTS: usize = 20;
/// Most probed destinations remembered per half-window (the rule needs far fewer; the count stops there).
const TARGET_CAP: usize = 4096;

#[derive(Clone, Debug, Default)]
struct Half {
    flows: u64,
    failed: u64,
    denied: u64,
    packets: u64,
    bytes: u64,
    targets: HashSet<(IpAddr, u16)>,
    /// A deferred detector's probe targets as they came, duplicates and all (appending costs less than
    /// hashing each; [`Half::take_probes`] makes them `targets`).
    probes: Vec<(IpAddr, u16)>,
    ports: BTreeSet<u16>,
    /// Distinct probed destinations of this half and the one before it (the window starting a half earlier).
    union_prev: u64,
}

impl Half {
    /// Adds an attempt to the counts.
    fn tally(&mut self, a: &Attempt) {
        self.flows += 1;
        self.failed += u64::from(!a.answered);
        self.denied += u64::from(a.denied);
        self.packets = self.packets.saturating_add(a.packets);
        self.bytes = self.bytes.saturating_add(a.bytes);
    }

    /// Counts an attempt, remembering its target if it is a probe (up to [`TARGET_CAP`]); answers whether it
    /// was a probe.
    fn count(&mut self, a: &Attempt) -> bool {
        self.tally(a);
        let probe = a.probe();
        if probe && self.targets.len() < TARGET_CAP {
            self.targets.insert((a.target, a.port));
        }
        probe
    }

    /// Counts an attempt for a deferred detector: its probe target is only appended.
    fn count_deferred(&mut self, a: &Attempt) {
        self.tally(a);
        if a.probe() && self.targets.len() < TARGET_CAP {
            self.probes.push((a.target, a.port));
            // Bounded: at twice the cap, what is appended so far becomes the set.
            if self.probes.len() >= 2 * TARGET_CAP {
                self.take_probes();
            }
        }
    }

    /// Makes the appended probe targets distinct targets (up to [`TARGET_CAP`]).
    fn take_probes(&mut self) {
        let mut probes = std::mem::take(&mut self.probes);
        probes.sort_unstable();
        probes.dedup();
        for t in probes {
            if self.targets.len() >= TARGET_CAP {
                break;
            }
            self.targets.insert(t);
        }
    }

    fn add_port(&mut self, port: u16) {
        if self.ports.len() < SCAN_PORTS || self.ports.last().is_some_and(|&p| p > port) {
            self.ports.insert(port);
            while self.ports.len() > SCAN_PORTS {
                self.ports.pop_last();
            }
        }
    }

    fn merge(&mut self, mut other: Half) {
        other.take_probes();
        self.take_probes();
        self.flows += other.flows;
        self.failed += other.failed;
        self.denied += other.denied;
        self.packets = self.packets.saturating_add(other.packets);
        self.bytes = self.bytes.saturating_add(other.bytes);
        for t in other.targets {
            if self.targets.len() >= TARGET_CAP {
                break;
            }
            self.targets.insert(t);
        }
        for p in other.ports {
            self.add_port(p);
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Source {
    /// Half-windows by index (start / half length), in index order. Time mostly moves forward, so the half an
    /// attempt falls in is nearly always the last one: a short sorted list, not a tree.
    halves: Vec<(i64, Half)>,
    /// The caller's clock when it last counted an attempt (for [`ScanDetector::forget_idle`]).
    touched: Timestamp,
}

impl Source {
    /// Where half `h` is, or where it would go.
    fn position(&self, h: i64) -> Result<usize, usize> {
        match self.halves.last() {
            Some(&(last, _)) if last == h => Ok(self.halves.len() - 1),
            Some(&(last, _)) if last < h => Err(self.halves.len()),
            None => Err(0),
            Some(_) => self.halves.binary_search_by_key(&h, |x| x.0),
        }
    }

    fn half(&self, h: i64) -> Option<&Half> {
        self.position(h).ok().map(|i| &self.halves[i].1)
    }

    /// The index of half `h`, added empty if not held.
    fn half_index(&mut self, h: i64) -> usize {
        match self.position(h) {
            Ok(i) => i,
            Err(i) => {
                // Its window with the half before holds that half's targets so far.
                let before = i
                    .checked_sub(1)
                    .and_then(|j| self.halves.get(j))
                    .filter(|x| x.0 == h.saturating_sub(1))
                    .map_or(0, |x| x.1.targets.len() as u64);
                let half = Half {
                    union_prev: before,
                    ..Half::default()
                };
                self.halves.insert(i, (h, half));
                i
            }
        }
    }

    /// Distinct probed destinations of window `k` (halves `k` and `k + 1`).
    fn union(&self, k: i64) -> u64 {
        match self.half(k.saturating_add(1)) {
            Some(next) => next.union_prev,
            None => self.half(k).map_or(0, |x| x.targets.len() as u64),
        }
    }

    /// Counts a new target of the half at index `i` into the windows it belongs to.
    fn count_target(&mut self, i: usize, target: (IpAddr, u16)) {
        let h = self.halves[i].0;
        let neighbour = |j: Option<usize>, k: i64| {
            j.and_then(|j| self.halves.get(j))
                .filter(|x| x.0 == k)
                .map(|x| x.1.targets.contains(&target))
        };
        // Window h-1 (halves h-1 and h) is held by this half; window h by the next one if held.
        let in_before = neighbour(i.checked_sub(1), h.saturating_sub(1)).unwrap_or(false);
        let in_after = neighbour(i.checked_add(1), h.saturating_add(1));
        if !in_before {
            self.halves[i].1.union_prev += 1;
        }
        if in_after == Some(false) {
            self.halves[i + 1].1.union_prev += 1;
        }
    }

    /// Whether window `k` makes a scan, from its counts alone (no allocation: this runs for every probe).
    fn is_scan(&self, k: i64, rule: &ScanRule) -> bool {
        let (mut flows, mut failed, mut denied) = (0u64, 0u64, 0u64);
        for h in [k, k.saturating_add(1)] {
            if let Some(half) = self.half(h) {
                flows += half.flows;
                failed += half.failed;
                denied += half.denied;
            }
        }
        let targets = self.union(k);
        (targets >= rule.min_targets && failed.saturating_mul(2) >= flows)
            || denied >= rule.min_denied
    }

    fn window(&self, k: i64, rule: &ScanRule) -> ScanWindow {
        let mut w = ScanWindow {
            start: Timestamp(k.saturating_mul(rule.half_ns())),
            length: rule.window,
            targets: self.union(k),
            ..ScanWindow::default()
        };
        let mut ports = BTreeSet::new();
        for h in [k, k.saturating_add(1)] {
            if let Some(half) = self.half(h) {
                w.flows += half.flows;
                w.failed += half.failed;
                w.denied += half.denied;
                w.packets = w.packets.saturating_add(half.packets);
                w.bytes = w.bytes.saturating_add(half.bytes);
                if half.ports.is_empty() {
                    // A deferred detector's half: its ports are its targets'.
                    ports.extend(half.targets.iter().map(|t| t.1));
                } else {
                    ports.extend(half.ports.iter().copied());
                }
            }
        }
        w.ports = ports.into_iter().take(SCAN_PORTS).collect();
        w
    }

    /// Works out every half's window with the half before again, from the targets. With `only_possible`, a
    /// window that cannot be a scan whatever its distinct targets (fewer targets in its two halves together
    /// than the rule needs, and fewer denied attempts) keeps that sum instead: it is never shown, and settling
    /// a capture's detector then hashes only what may be a scan.
    fn recount(&mut self, only_possible: Option<&ScanRule>) {
        for i in 0..self.halves.len() {
            let (h, ref half) = self.halves[i];
            let mut n = half.targets.len() as u64;
            if let Some((before, b)) = i.checked_sub(1).and_then(|j| self.halves.get(j))
                && *before == h.saturating_sub(1)
            {
                let at_most = n + b.targets.len() as u64;
                if only_possible.is_some_and(|rule| {
                    at_most < rule.min_targets && half.denied + b.denied < rule.min_denied
                }) {
                    self.halves[i].1.union_prev = at_most;
                    continue;
                }
                n += b
                    .targets
                    .iter()
                    .filter(|t| !half.targets.contains(t))
                    .count() as u64;
            }
            self.halves[i].1.union_prev = n;
        }
    }
}

/// Counts an attempt into its source (looked up once) as a live detector does; answers the source, the
/// half-window and whether it was a probe.
fn count_into<'a>(
    sources: &'a mut HashMap<IpAddr, Source>,
    rule: &ScanRule,
    a: &Attempt,
    now: Timestamp,
) -> (&'a mut Source, i64, bool) {
    let h = a.start.0.div_euclid(rule.half_ns());
    let source = sources.entry(a.source).or_default();
    source.touched = source.touched.max(now);
    let target = (a.target, a.port);
    let i = source.half_index(h);
    let half = &mut source.halves[i].1;
    let len = half.targets.len();
    if !half.count(a) {
        return (source, h, false);
    }
    let new_target = half.targets.len() > len;
    half.add_port(a.port);
    if new_target {
        source.count_target(i, target);
    }
    (source, h, true)
}

/// A window that makes its source a scanner, its details worked out on demand.
#[derive(Clone, Copy, Debug)]
pub struct ScanHit<'a> {
    source: &'a Source,
    rule: &'a ScanRule,
    k: i64,
}

impl ScanHit<'_> {
    /// The window with its counts and ports.
    pub fn window(&self) -> ScanWindow {
        self.source.window(self.k, self.rule)
    }
}

/// Scan windows per source, mergeable across shards.
#[derive(Clone, Debug, Default)]
pub struct ScanDetector {
    rule: ScanRule,
    sources: HashMap<IpAddr, Source>,
    /// Counting only, deciding at the end ([`ScanDetector::settle`]): the offline report's mode.
    deferred: bool,
    /// A deferred detector's half-windows by source and index until they are settled into `sources`: one
    /// lookup per attempt.
    pending: HashMap<(IpAddr, i64), Half>,
}

impl ScanDetector {
    /// A detector applying `rule`.
    pub fn new(rule: ScanRule) -> ScanDetector {
        ScanDetector {
            rule,
            sources: HashMap::default(),
            deferred: false,
            pending: HashMap::default(),
        }
    }

    /// A detector that only counts while attempts come in and works the windows out once, in
    /// [`ScanDetector::settle`] (for a capture, where nothing is alerted on the way).
    pub fn deferred(rule: ScanRule) -> ScanDetector {
        ScanDetector {
            deferred: true,
            ..ScanDetector::new(rule)
        }
    }

    /// The rule.
    pub fn rule(&self) -> &ScanRule {
        &self.rule
    }

    /// Sources with state.
    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    /// Counts an attempt (at `now` on the caller's clock); answers the window it fell in that makes its source
    /// a scanner now, if any (the later of the two when both do).
    pub fn add(&mut self, a: &Attempt, now: Timestamp) -> Option<ScanWindow> {
        let hit = self.hit(a, now)?;
        Some(hit.window())
    }

    /// As [`ScanDetector::add`], but the window is only worked out if asked for ([`ScanHit::window`]): a
    /// scanner's every probe counts, and its alert needs the window's details only now and then.
    pub fn hit(&mut self, a: &Attempt, now: Timestamp) -> Option<ScanHit<'_>> {
        if self.deferred {
            // A deferred detector decides once, when it settles.
            self.count(a, now);
            return None;
        }
        let rule = &self.rule;
        let (source, h, probe) = count_into(&mut self.sources, rule, a, now);
        // Only a probe can make a window a scan.
        if !probe {
            return None;
        }
        let source = &*source;
        let k = [h, h.saturating_sub(1)]
            .into_iter()
            .find(|&k| source.is_scan(k, &self.rule))?;
        Some(ScanHit {
            source,
            rule: &self.rule,
            k,
        })
    }

    /// Counts an attempt without asking whether it made a scan; answers its half-window and whether it was a
    /// probe.
    pub fn count(&mut self, a: &Attempt, now: Timestamp) -> (i64, bool) {
        if self.deferred {
            let h = a.start.0.div_euclid(self.rule.half_ns());
            self.pending
                .entry((a.source, h))
                .or_default()
                .count_deferred(a);
            return (h, a.probe());
        }
        let (_, h, probe) = count_into(&mut self.sources, &self.rule, a, now);
        (h, probe)
    }

    /// Works out what a deferred detector left for the end: each window's distinct targets and ports. Call it
    /// once every attempt is counted, before [`ScanDetector::scans_of`] or [`ScanDetector::is_scanner`].
    pub fn settle(&mut self) {
        for ((ip, h), mut half) in std::mem::take(&mut self.pending) {
            let source = self.sources.entry(ip).or_default();
            let i = source.half_index(h);
            let slot = &mut source.halves[i].1;
            if slot.flows == 0 {
                half.take_probes();
                *slot = half;
            } else {
                slot.merge(half);
            }
        }
        // Ports are worked out from the targets by the windows that are shown.
        for s in self.sources.values_mut() {
            s.recount(Some(&self.rule));
        }
    }

    /// Adds what another detector with the same rule counted, as if its attempts had been added here.
    pub fn merge(&mut self, other: ScanDetector) {
        for (key, half) in other.pending {
            self.pending.entry(key).or_default().merge(half);
        }
        for (ip, theirs) in other.sources {
            let mine = self.sources.entry(ip).or_default();
            mine.touched = mine.touched.max(theirs.touched);
            for (h, half) in theirs.halves {
                let i = mine.half_index(h);
                mine.halves[i].1.merge(half);
            }
            if !self.deferred {
                mine.recount(None);
            }
        }
    }

    /// The windows of a source that make a scan, with its counts as they stand (offline: over the whole capture).
    pub fn scans_of(&self, source: IpAddr) -> Vec<ScanWindow> {
        let Some(s) = self.sources.get(&source) else {
            return Vec::new();
        };
        let mut starts: BTreeSet<i64> = BTreeSet::new();
        for &(h, _) in &s.halves {
            starts.insert(h.saturating_sub(1));
            starts.insert(h);
        }
        starts
            .into_iter()
            .filter(|&k| s.is_scan(k, &self.rule))
            .map(|k| s.window(k, &self.rule))
            .collect()
    }

    /// Whether any window of the source makes a scan.
    pub fn is_scanner(&self, source: IpAddr) -> bool {
        self.sources.get(&source).is_some_and(|s| {
            s.halves.iter().any(|&(h, _)| {
                s.is_scan(h.saturating_sub(1), &self.rule) || s.is_scan(h, &self.rule)
            })
        })
    }

    /// Keeps the `keep` sources most like a scan (the most distinct probed destinations in a half-window, then
    /// the most recently counted) and forgets the others: the live detector's bound when a flood of distinct
    /// sources, each too small to be a scan by itself, would grow it without end. Answers how many it forgot.
    pub fn shed(&mut self, keep: usize) -> usize {
        let n = self.sources.len();
        if n <= keep {
            return 0;
        }
        let score = |s: &Source| {
            let targets = s.halves.iter().map(|(_, h)| h.targets.len()).max();
            (targets.unwrap_or(0), s.touched)
        };
        let mut scores: Vec<(usize, Timestamp)> = self.sources.values().map(score).collect();
        let drop = n - keep;
        let (_, &mut threshold, _) = scores.select_nth_unstable(drop - 1);
        let mut at_threshold = drop - scores.iter().filter(|&&x| x < threshold).count();
        self.sources.retain(|_, s| {
            let x = score(s);
            if x < threshold {
                false
            } else if x == threshold && at_threshold > 0 {
                at_threshold -= 1;
                false
            } else {
                true
            }
        });
        n - self.sources.len()
    }

    /// Forgets sources idle since before `now - window - margin` on the caller's clock, and the half-windows of
    /// the others that end more than the window and the margin before their newest one: a live detector keeps
    /// what a late batch can still count into. Returns the sources forgotten.
    pub fn forget_idle(&mut self, now: Timestamp, margin: Duration) -> usize {
        let keep_ns = weir_model::duration_nanos(self.rule.window.saturating_add(margin));
        let idle = Timestamp(now.0.saturating_sub(keep_ns));
        let before = self.sources.len();
        self.sources.retain(|_, s| s.touched >= idle);
        let half = self.rule.half_ns();
        let keep_halves = keep_ns / half + 2;
        for s in self.sources.values_mut() {
            let Some(&(newest, _)) = s.halves.last() else {
                continue;
            };
            let oldest = newest.saturating_sub(keep_halves);
            let gone = s.halves.partition_point(|x| x.0 < oldest);
            if gone > 0 {
                s.halves.drain(..gone);
                // The first half kept has no half before it any more.
                if let Some((_, first)) = s.halves.first_mut() {
                    first.union_prev = first.targets.len() as u64;
                }
            }
        }
        before - self.sources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn attempt(ms: i64, target: u8, port: u16, answered: bool, denied: bool) -> Attempt {
        Attempt {
            source: ip(1),
            target: ip(target),
            port,
            start: Timestamp(ms * 1_000_000),
            answered,
            denied,
            packets: 1,
            bytes: 40,
        }
    }

    fn rule() -> ScanRule {
        ScanRule::default()
    }

    #[test]
    fn a_fanout_of_unanswered_probes_is_a_scan_at_the_twentieth_target() {
        let mut d = ScanDetector::new(rule());
        for port in 0..19 {
            assert_eq!(
                d.add(
                    &attempt(i64::from(port) * 10, 2, port, false, false),
                    Timestamp(0)
                ),
                None
            );
        }
        let w = d.add(&attempt(190, 2, 19, false, false), Timestamp(0));
        let w = w.unwrap_or_default();
        assert_eq!((w.targets, w.flows, w.failed, w.denied), (20, 20, 20, 0));
        assert_eq!(w.ports.len(), SCAN_PORTS);
        assert!(d.is_scanner(ip(1)));
    }

    #[test]
    fn repeated_targets_count_once() {
        let mut d = ScanDetector::new(rule());
        for i in 0..100 {
            assert_eq!(d.add(&attempt(i, 2, 80, false, false), Timestamp(0)), None);
        }
        assert!(!d.is_scanner(ip(1)));
    }

    #[test]
    fn a_busy_client_with_some_failures_is_not_scanning() {
        let mut d = ScanDetector::new(rule());
        for i in 0..25u16 {
            d.add(
                &attempt(i64::from(i), 2, 1000 + i, false, false),
                Timestamp(0),
            );
        }
        // Most attempts answered in the same window: not "mostly unanswered".
        for i in 0..60 {
            d.add(&attempt(100 + i, 3, 443, true, false), Timestamp(0));
        }
        assert!(!d.is_scanner(ip(1)));
        assert!(
            d.scans_of(ip(1)).is_empty(),
            "the answered traffic outweighs the failures in every window"
        );
    }

    #[test]
    fn twenty_denied_attempts_are_hammering_even_to_one_port() {
        let mut d = ScanDetector::new(rule());
        let mut raised = None;
        for i in 0..20 {
            raised = d.add(&attempt(i * 100, 2, 5432, true, true), Timestamp(0));
        }
        assert_eq!(raised.map(|w| w.denied), Some(20));
    }

    #[test]
    fn probes_spread_beyond_a_window_are_not_a_scan() {
        let mut d = ScanDetector::new(rule());
        // One probe every second: at most ten in any ten-second window.
        for i in 0..60u16 {
            d.add(
                &attempt(i64::from(i) * 1000, 2, i, false, false),
                Timestamp(0),
            );
        }
        assert!(!d.is_scanner(ip(1)));
    }

    #[test]
    fn a_burst_across_a_half_window_boundary_is_caught_whole() {
        let mut d = ScanDetector::new(rule());
        // 20 probes from 4.9 s to 5.09 s: split between two halves, inside one window.
        for i in 0..20u16 {
            d.add(
                &attempt(4_900 + i64::from(i) * 10, 2, i, false, false),
                Timestamp(0),
            );
        }
        assert!(d.is_scanner(ip(1)));
    }

    #[test]
    fn merged_shards_give_the_detector_of_the_union_in_any_order() {
        let attempts: Vec<Attempt> = (0..40u16)
            .map(|i| {
                attempt(
                    i64::from(i) * 130,
                    (i % 7) as u8 + 2,
                    i % 13,
                    i % 3 == 0,
                    i % 5 == 0,
                )
            })
            .collect();
        let mut whole = ScanDetector::new(rule());
        for a in &attempts {
            whole.add(a, Timestamp(0));
        }
        let (mut left, mut right) = (ScanDetector::new(rule()), ScanDetector::new(rule()));
        for (i, a) in attempts.iter().enumerate().rev() {
            if i % 2 == 0 {
                left.add(a, Timestamp(0));
            } else {
                right.add(a, Timestamp(0));
            }
        }
        left.merge(right);
        assert_eq!(left.scans_of(ip(1)), whole.scans_of(ip(1)));
        let mut all = BTreeSet::new();
        for s in [&whole, &left] {
            let src = &s.sources[&ip(1)];
            all.insert(format!(
                "{:?}",
                src.halves
                    .iter()
                    .map(|(h, x)| (h, x.union_prev))
                    .collect::<Vec<_>>()
            ));
        }
        assert_eq!(all.len(), 1, "the same distinct targets per window");
    }

    #[test]
    fn a_deferred_detector_settles_on_the_same_scans() {
        let attempts: Vec<Attempt> = (0..60u16)
            .map(|i| {
                attempt(
                    i64::from(i) * 90,
                    (i % 9) as u8 + 2,
                    i % 23,
                    i % 4 == 0,
                    i % 6 == 0,
                )
            })
            .collect();
        let mut live = ScanDetector::new(rule());
        let mut deferred = ScanDetector::deferred(rule());
        for a in &attempts {
            live.add(a, Timestamp(0));
            deferred.count(a, Timestamp(0));
        }
        deferred.settle();
        assert_eq!(deferred.scans_of(ip(1)), live.scans_of(ip(1)));
        assert!(live.is_scanner(ip(1)));
    }

    #[test]
    fn a_deferred_detector_keeps_its_memory_bounded_and_agrees_with_a_live_one() {
        let mut live = ScanDetector::new(rule());
        let mut deferred = ScanDetector::deferred(rule());
        // Three times the cap of distinct probes in one half-window, each sent twice.
        for i in 0..(3 * TARGET_CAP as u32) {
            for _ in 0..2 {
                let mut a = attempt(1, 2, (i % 60_000) as u16, false, false);
                a.target = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i / 60_000));
                live.add(&a, Timestamp(0));
                deferred.count(&a, Timestamp(0));
                let half = deferred
                    .pending
                    .values()
                    .next()
                    .map_or(0, |h| h.probes.len());
                assert!(half < 2 * TARGET_CAP, "{half} probes held");
            }
        }
        deferred.settle();
        assert_eq!(deferred.scans_of(ip(1)), live.scans_of(ip(1)));
        assert_eq!(
            live.scans_of(ip(1)).first().map(|w| w.targets),
            Some(TARGET_CAP as u64)
        );
    }

    #[test]
    fn idle_sources_and_old_halves_are_forgotten() {
        let mut d = ScanDetector::new(rule());
        d.add(&attempt(0, 2, 1, false, false), Timestamp(0));
        let mut other = attempt(0, 2, 1, false, false);
        other.source = ip(9);
        d.add(&other, Timestamp(500_000_000_000));
        for i in 0..10 {
            other.start = Timestamp(i * 60_000_000_000);
            d.add(&other, Timestamp(500_000_000_000));
        }
        assert_eq!(
            d.forget_idle(Timestamp(500_000_000_000), Duration::from_secs(60)),
            1
        );
        assert_eq!(d.sources(), 1);
        let s = &d.sources[&ip(9)];
        assert!(
            s.halves.len() <= 3,
            "{:?}",
            s.halves.iter().map(|x| x.0).collect::<Vec<_>>()
        );
    }

    proptest::proptest! {
        /// Every window's counts, from attempts added in any order (late ones included), equal the counts taken
        /// afresh over the attempts that fall in it.
        #[test]
        fn windows_equal_a_fresh_count_in_any_order(
            raw in proptest::collection::vec((0i64..40_000, 2u8..40, 0u16..30, proptest::bool::ANY, proptest::bool::ANY), 1..200),
            seed in 0u64..1000,
        ) {
            let attempts: Vec<Attempt> = raw
                .iter()
                .map(|&(ms, t, p, answered, denied)| attempt(ms, t, p, answered, denied))
                .collect();
            let mut order: Vec<usize> = (0..attempts.len()).collect();
            let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            for i in (1..order.len()).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                order.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut d = ScanDetector::new(rule());
            for &i in &order {
                d.add(&attempts[i], Timestamp(0));
            }
            let half = rule().half_ns();
            let s = &d.sources[&ip(1)];
            for k in -1..(40_000_000_000 / half + 1) {
                let inside: Vec<&Attempt> = attempts
                    .iter()
                    .filter(|a| a.start.0.div_euclid(half) == k || a.start.0.div_euclid(half) == k + 1)
                    .collect();
                let targets: BTreeSet<(IpAddr, u16)> = inside
                    .iter()
                    .filter(|a| a.probe())
                    .map(|a| (a.target, a.port))
                    .collect();
                let w = s.window(k, &rule());
                proptest::prop_assert_eq!(w.targets, targets.len() as u64, "window {}", k);
                proptest::prop_assert_eq!(w.flows, inside.len() as u64);
                proptest::prop_assert_eq!(w.failed, inside.iter().filter(|a| !a.answered).count() as u64);
                proptest::prop_assert_eq!(w.denied, inside.iter().filter(|a| a.denied).count() as u64);
            }
        }
    }
}

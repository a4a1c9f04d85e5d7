//! Decoding, fragment tracking and flow accounting joined into one per-worker pipeline stage.

use std::collections::HashMap;
use std::hash::BuildHasher;

use weir_model::{LinkType, Protocol, Timestamp};

use crate::decode::{DecodedPacket, SkipReason, address_pair, decode};
use crate::table::{FinishedFlow, FlowConfig, FlowKey, FlowTable, TableStats};

/// Packets skipped, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkipCounts([u64; SkipReason::ALL.len()]);

impl SkipCounts {
    /// Counts one packet.
    pub fn add(&mut self, reason: SkipReason) {
        self.0[reason.index()] += 1;
    }

    /// The count of one reason.
    pub fn get(&self, reason: SkipReason) -> u64 {
        self.0[reason.index()]
    }

    /// Reasons with a non-zero count, in report order.
    pub fn iter(&self) -> impl Iterator<Item = (SkipReason, u64)> + '_ {
        SkipReason::ALL
            .iter()
            .map(|r| (*r, self.get(*r)))
            .filter(|(_, n)| *n > 0)
    }

    /// All skipped packets.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Skipped packets that were damaged (see [`SkipReason::is_malformed`]).
    pub fn malformed(&self) -> u64 {
        self.iter()
            .filter(|(r, _)| r.is_malformed())
            .map(|(_, n)| n)
            .sum()
    }

    /// Adds another set of counts.
    pub fn merge(&mut self, other: &SkipCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }
}

/// What a [`FlowExtractor`] counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtractStats {
    /// Packets offered.
    pub packets: u64,
    /// Packets accounted to a flow.
    pub decoded: u64,
    /// Packets not accounted to a flow, by reason. `packets == decoded + skipped.total()`.
    pub skipped: SkipCounts,
    /// Flow table counters.
    pub table: TableStats,
}

impl ExtractStats {
    /// Adds another worker's counts.
    pub fn merge(&mut self, other: &ExtractStats) {
        self.packets += other.packets;
        self.decoded += other.decoded;
        self.skipped.merge(&other.skipped);
        self.table.merge(&other.table);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FragmentKey {
    src: [u8; 16],
    dst: [u8; 16],
    id: u32,
    proto: Protocol,
}

/// Maps IP fragment series to the flow of their first fragment, which alone carries the ports.
#[derive(Debug, Default)]
struct FragmentTracker {
    series: HashMap<FragmentKey, (FlowKey, bool, i64), foldhash::fast::RandomState>,
}

/// Fragment series older than this are forgotten (Linux keeps reassembly queues for 30 s).
const FRAGMENT_LIFETIME: i64 = 30_000_000_000;
/// At most this many fragment series are tracked at once.
const MAX_FRAGMENT_SERIES: usize = 65_536;

impl FragmentTracker {
    fn key(p: &DecodedPacket, id: u32) -> FragmentKey {
        FragmentKey {
            src: p.src,
            dst: p.dst,
            id,
            proto: p.proto,
        }
    }

    fn first(&mut self, p: &DecodedPacket, id: u32, flow: FlowKey, sender_is_lo: bool, ts: i64) {
        if self.series.len() >= MAX_FRAGMENT_SERIES {
            self.series
                .retain(|_, (_, _, seen)| ts.saturating_sub(*seen) < FRAGMENT_LIFETIME);
            if self.series.len() >= MAX_FRAGMENT_SERIES {
                // Later fragments of this series will be counted as orphans.
                return;
            }
        }
        self.series
            .insert(Self::key(p, id), (flow, sender_is_lo, ts));
    }

    fn later(&self, p: &DecodedPacket, id: u32, ts: i64) -> Option<(FlowKey, bool)> {
        let (flow, sender_is_lo, seen) = self.series.get(&Self::key(p, id))?;
        (ts.saturating_sub(*seen) < FRAGMENT_LIFETIME).then_some((*flow, *sender_is_lo))
    }
}

/// Which of `workers` workers owns a frame, when one reader routes each frame to its worker
/// ([`FlowExtractor::routed`]): by the hash of its unordered address pair under `hasher` (the same for both
/// directions, and for every IP fragment of a datagram), found from the link layer alone. A frame whose
/// addresses cannot be found goes to worker 0, which counts why it was skipped. Workers given frames so own
/// exactly the flows the workers of [`FlowExtractor::partitioned`] with the same hasher would.
#[inline]
pub fn route(
    hasher: &foldhash::fast::RandomState,
    link: LinkType,
    data: &[u8],
    workers: usize,
) -> usize {
    let workers = workers.max(1) as u64;
    if workers == 1 {
        return 0;
    }
    match address_pair(link, data) {
        Some((a, b)) => (((pair_hash(hasher, a, b) >> 32) * workers) >> 32) as usize,
        None => 0,
    }
}

/// A hash of the unordered address pair, the same for both directions. Addresses are compared and hashed as
/// integers: this runs for every packet.
#[inline]
fn pair_hash(hasher: &foldhash::fast::RandomState, a: &[u8], b: &[u8]) -> u64 {
    let int = |x: &[u8]| -> u128 {
        let mut wide = [0u8; 16];
        let n = x.len().min(16);
        wide[..n].copy_from_slice(&x[..n]);
        u128::from_be_bytes(wide)
    };
    let (a, b) = (int(a), int(b));
    hasher.hash_one((a.min(b), a.max(b)))
}

/// Which share of the flows a worker owns when several split one packet stream.
#[derive(Clone, Copy, Debug)]
struct Partition {
    worker: u64,
    workers: u64,
}

impl Partition {
    /// Maps the high half of a hash onto `0..workers`.
    fn owns(&self, hash: u64) -> bool {
        ((hash >> 32) * self.workers) >> 32 == self.worker
    }

    fn is_split(&self) -> bool {
        self.workers > 1
    }

    fn is_leader(&self) -> bool {
        self.worker == 0
    }
}

/// Decodes packets and accounts them to flows: one per worker.
///
/// Several extractors can split one packet stream ([`FlowExtractor::partitioned`]): each is offered every packet
/// and owns the packets whose unordered address pair hashes into its share. Finding the pair takes the link
/// layer alone, so a worker skips the packets of others for a few nanoseconds and fully decodes only its own;
/// all packets of a flow, IP fragments included, share the pair and so the worker. Every worker sees every
/// timestamp, so timeouts fire identically whatever the number of workers. A packet whose addresses cannot be
/// found belongs to worker 0, which counts why it was skipped.
#[derive(Debug)]
pub struct FlowExtractor {
    table: FlowTable,
    fragments: FragmentTracker,
    stats: ExtractStats,
    partition: Partition,
}

impl FlowExtractor {
    /// An extractor that owns every flow.
    pub fn new(config: FlowConfig) -> FlowExtractor {
        FlowExtractor::partitioned(config, foldhash::fast::RandomState::default(), 0, 1)
    }

    /// Worker `worker` of `workers`, all sharing `hasher` (clone one `RandomState` for all of them).
    pub fn partitioned(
        config: FlowConfig,
        hasher: foldhash::fast::RandomState,
        worker: usize,
        workers: usize,
    ) -> FlowExtractor {
        FlowExtractor {
            table: FlowTable::new(config, hasher),
            fragments: FragmentTracker::default(),
            stats: ExtractStats::default(),
            partition: Partition {
                worker: worker as u64,
                workers: workers.max(1) as u64,
            },
        }
    }

    /// Offers one captured frame.
    #[inline]
    pub fn packet(&mut self, ts: Timestamp, link: LinkType, data: &[u8]) {
        self.offered(ts);
        if self.partition.is_split() {
            let owned = match address_pair(link, data) {
                Some((a, b)) => self.partition.owns(self.pair_hash(a, b)),
                None => self.partition.is_leader(),
            };
            if !owned {
                return;
            }
        }
        match decode(link, data) {
            Ok(p) => self.account(ts, &p),
            Err(reason) => self.stats.skipped.add(reason),
        }
    }

    /// Offers one packet that was decoded elsewhere.
    #[inline]
    pub fn decoded(&mut self, ts: Timestamp, p: &DecodedPacket) {
        self.offered(ts);
        if self.partition.is_split() {
            let len = if p.v6 { 16 } else { 4 };
            if !self
                .partition
                .owns(self.pair_hash(&p.src[..len], &p.dst[..len]))
            {
                return;
            }
        }
        self.account(ts, p);
    }

    /// Every worker is offered every packet: each advances its clock, and worker 0 alone counts the packet.
    #[inline]
    fn offered(&mut self, ts: Timestamp) {
        self.table.advance(ts);
        if self.partition.is_leader() {
            self.stats.packets += 1;
        }
    }

    #[inline]
    fn pair_hash(&self, a: &[u8], b: &[u8]) -> u64 {
        pair_hash(self.table.hasher(), a, b)
    }

    /// A worker given only its own frames by a reader that routes them ([`route`]): it counts every frame it
    /// is given, and learns the time of the others' frames from [`FlowExtractor::advance`].
    pub fn routed(config: FlowConfig, hasher: foldhash::fast::RandomState) -> FlowExtractor {
        FlowExtractor::partitioned(config, hasher, 0, 1)
    }

    #[inline]
    fn account(&mut self, ts: Timestamp, p: &DecodedPacket) {
        let (key, sender_is_lo) = match p.fragment {
            Some(f) if !f.first => match self.fragments.later(p, f.id, ts.0) {
                Some(found) => found,
                None => return self.stats.skipped.add(SkipReason::OrphanFragment),
            },
            Some(f) => {
                let (key, sender_is_lo) = FlowKey::of_packet(p);
                self.fragments.first(p, f.id, key, sender_is_lo, ts.0);
                (key, sender_is_lo)
            }
            None => FlowKey::of_packet(p),
        };
        let hash = self.table.hash(&key);
        self.stats.decoded += 1;
        self.table.update(hash, key, sender_is_lo, p, ts);
    }

    /// Advances time without a packet (live capture: flows time out while the wire is quiet).
    pub fn advance(&mut self, now: Timestamp) {
        self.table.advance(now);
    }

    /// Takes the flows closed so far.
    pub fn take_finished(&mut self) -> Vec<FinishedFlow> {
        self.table.take_finished()
    }

    /// Counters so far (table counters as of now).
    pub fn stats(&self) -> ExtractStats {
        ExtractStats {
            table: self.table.stats(),
            ..self.stats
        }
    }

    /// Ends the stream: closes every open flow and returns all finished flows with the final counters.
    pub fn finish(self) -> (Vec<FinishedFlow>, ExtractStats) {
        let (flows, table) = self.table.finish();
        (
            flows,
            ExtractStats {
                table,
                ..self.stats
            },
        )
    }
}

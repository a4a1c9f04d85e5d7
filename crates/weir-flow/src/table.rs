//! The flow table: bidirectional flows keyed by a canonical 5-tuple, with orientation, TCP state, timeouts and
//! a bounded size.
//!
//! # Design
//! - **One table per worker, no shared map.** A flow's packets always go to the same worker (the caller
//!   partitions by [`FlowTable::hash`]), so the packet path takes no lock and touches no shared cache line.
//! - **One hash per packet.** The key is hashed once with a seeded hasher (packet contents are chosen by whoever
//!   sends them, so an unseeded hash would let them force collisions); that hash picks the worker and the bucket.
//! - **Time comes from the packets** (offline) or from [`FlowTable::advance`] (live, an injected clock), never from
//!   the system clock, so results are deterministic and testable.
//! - **Expiry by sweeping**, at most once per second of flow time and only after enough packets to amortise the
//!   scan, instead of a timer per flow: a scan of a few hundred thousand entries costs well under a millisecond.
//! - **Nothing is lost when the table is full**: the least recently active flows are closed early (reported with
//!   `end_reason: evicted`) and counted.

use std::hash::{BuildHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use hashbrown::HashTable;
use weir_model::{EndReason, FlowRecord, Orientation, Protocol, TcpFlags, Timestamp};

use crate::decode::{DecodedPacket, icmp_request_type};

/// Timeouts and limits of a flow table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowConfig {
    /// Idle timeout of an open TCP connection.
    pub tcp_idle: Duration,
    /// Idle timeout of a TCP connection after FIN in both directions or RST.
    pub tcp_closed_idle: Duration,
    /// Idle timeout of UDP flows.
    pub udp_idle: Duration,
    /// Idle timeout of ICMP and ICMPv6 flows.
    pub icmp_idle: Duration,
    /// Idle timeout of flows of every other protocol (SCTP included).
    pub other_idle: Duration,
    /// Export long-running flows in pieces of this length (live capture); `None` exports each flow once.
    pub active_timeout: Option<Duration>,
    /// Most flows held at once; beyond it the least recently active are evicted.
    pub max_flows: usize,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            tcp_idle: Duration::from_secs(300),
            tcp_closed_idle: Duration::from_secs(10),
            udp_idle: Duration::from_secs(60),
            icmp_idle: Duration::from_secs(30),
            other_idle: Duration::from_secs(60),
            active_timeout: None,
            max_flows: 1 << 20,
        }
    }
}

use weir_model::duration_nanos as nanos;

/// Ports (besides those below 1024) that are almost always the server side in a cluster: databases, brokers,
/// the Kubernetes API and kubelet, service meshes, metrics. Sorted for binary search.
const SERVICE_PORTS: [u16; 62] = [
    1080, 1433, 1521, 1883, 2049, 2181, 2379, 2380, 3000, 3306, 3389, 4222, 4317, 4318, 5000, 5044,
    5432, 5601, 5672, 6379, 6443, 7000, 7001, 8000, 8008, 8080, 8081, 8086, 8088, 8125, 8200, 8443,
    8500, 8888, 9000, 9042, 9090, 9091, 9092, 9093, 9094, 9100, 9200, 9300, 9411, 9418, 9443,
    10250, 10255, 10256, 11211, 15000, 15001, 15006, 15010, 15012, 15014, 15017, 15021, 15090,
    27017, 50051,
];

/// Whether a port looks like the listening side of a connection.
pub fn is_service_port(port: u16) -> bool {
    port < 1024 || SERVICE_PORTS.binary_search(&port).is_ok()
}

/// A bidirectional flow identity: the same for both directions of a conversation.
///
/// The endpoint that sorts first is `lo`. For TCP, UDP and SCTP the endpoints are (address, port); ICMP
/// request/reply flows are keyed by addresses, identifier and request type, other ICMP messages by addresses,
/// type and code; other protocols by addresses alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowKey {
    lo: [u8; 16],
    hi: [u8; 16],
    lo_port: u16,
    hi_port: u16,
    proto: Protocol,
    v6: bool,
}

/// Marks ICMP keys of one-way messages (errors and the like) in `hi_port`; request types are below 256.
const ICMP_ONE_WAY: u16 = 0xffff;

impl Hash for FlowKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u128(u128::from_ne_bytes(self.lo));
        state.write_u128(u128::from_ne_bytes(self.hi));
        state.write_u64(
            u64::from(self.lo_port)
                | u64::from(self.hi_port) << 16
                | u64::from(self.proto.0) << 32
                | u64::from(self.v6) << 40,
        );
    }
}

impl FlowKey {
    /// The key of a packet, and whether its sender is the key's `lo` endpoint.
    pub fn of_packet(p: &DecodedPacket) -> (FlowKey, bool) {
        let by_addr = p.src <= p.dst;
        let (lo_port, hi_port, sender_is_lo) = if p.proto.has_ports() {
            let sender_is_lo = (p.src, p.src_port) <= (p.dst, p.dst_port);
            if sender_is_lo {
                (p.src_port, p.dst_port, true)
            } else {
                (p.dst_port, p.src_port, false)
            }
        } else if p.proto.is_icmp() && p.has_l4 {
            match icmp_request_type(p.proto, p.l4_type) {
                // Pinging oneself: the addresses tie, so the message says which way it goes.
                Some(request) if p.src == p.dst => {
                    (p.icmp_id, u16::from(request), p.l4_type == request)
                }
                Some(request) => (p.icmp_id, u16::from(request), by_addr),
                None => (
                    u16::from(p.l4_type) << 8 | u16::from(p.icmp_code),
                    ICMP_ONE_WAY,
                    by_addr,
                ),
            }
        } else {
            (0, 0, by_addr)
        };
        let (lo, hi) = if sender_is_lo {
            (p.src, p.dst)
        } else {
            (p.dst, p.src)
        };
        (
            FlowKey {
                lo,
                hi,
                lo_port,
                hi_port,
                proto: p.proto,
                v6: p.v6,
            },
            sender_is_lo,
        )
    }

    /// The IP protocol.
    pub fn protocol(&self) -> Protocol {
        self.proto
    }

    fn addr(&self, bytes: [u8; 16]) -> IpAddr {
        if self.v6 {
            IpAddr::V6(Ipv6Addr::from(bytes))
        } else {
            IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
        }
    }
}

const UNSET: i64 = i64::MAX;

/// Per-flow counters and state.
#[derive(Clone, Copy, Debug)]
struct FlowEntry {
    first: i64,
    last: i64,
    /// Index 0: `lo` → `hi`; index 1: `hi` → `lo`.
    packets: [u64; 2],
    bytes: [u64; 2],
    flags: [u8; 2],
    fin: [bool; 2],
    rst: bool,
    /// Only SYNs from the initiator so far: another SYN is a retransmission, not a new connection.
    syn_only: bool,
    initiator_is_lo: bool,
    inferred: bool,
    icmp_type: u8,
    icmp_code: u8,
}

impl FlowEntry {
    fn new(key: &FlowKey, sender_is_lo: bool, p: &DecodedPacket) -> FlowEntry {
        let syn = p.tcp_flags & TcpFlags::SYN != 0;
        let ack = p.tcp_flags & TcpFlags::ACK != 0;
        let by_ports = || {
            let responder_is_lo = match (is_service_port(key.lo_port), is_service_port(key.hi_port))
            {
                (true, false) => true,
                (false, true) => false,
                _ if key.lo_port != key.hi_port => key.lo_port < key.hi_port,
                _ => !sender_is_lo,
            };
            (!responder_is_lo, true)
        };
        let (initiator_is_lo, inferred) = match p.proto {
            _ if !p.has_l4 => (sender_is_lo, false),
            Protocol::TCP if syn && !ack => (sender_is_lo, false),
            Protocol::TCP if syn && ack => (!sender_is_lo, false),
            Protocol::TCP => by_ports(),
            Protocol::UDP if is_service_port(p.src_port) && !is_service_port(p.dst_port) => {
                (!sender_is_lo, true)
            }
            // SCTP INIT and INIT ACK chunks say who opened the association.
            Protocol::SCTP if p.l4_type == 1 => (sender_is_lo, false),
            Protocol::SCTP if p.l4_type == 2 => (!sender_is_lo, false),
            Protocol::SCTP => by_ports(),
            // An echo (or other) reply seen first: its receiver asked.
            Protocol::ICMP | Protocol::ICMPV6
                if icmp_request_type(p.proto, p.l4_type).is_some_and(|r| r != p.l4_type) =>
            {
                (!sender_is_lo, false)
            }
            _ => (sender_is_lo, false),
        };
        let (icmp_type, icmp_code) = match icmp_request_type(p.proto, p.l4_type) {
            _ if !p.proto.is_icmp() => (0, 0),
            Some(request) if request != p.l4_type => (request, 0),
            _ => (p.l4_type, p.icmp_code),
        };
        FlowEntry {
            first: UNSET,
            last: i64::MIN,
            packets: [0; 2],
            bytes: [0; 2],
            flags: [0; 2],
            fin: [false; 2],
            rst: false,
            syn_only: p.proto == Protocol::TCP && syn && !ack && sender_is_lo == initiator_is_lo,
            initiator_is_lo,
            inferred,
            icmp_type,
            icmp_code,
        }
    }

    fn apply(&mut self, sender_is_lo: bool, p: &DecodedPacket, ts: i64) {
        let dir = usize::from(!sender_is_lo);
        self.packets[dir] += 1;
        self.bytes[dir] += u64::from(p.ip_len);
        self.flags[dir] |= p.tcp_flags;
        self.first = self.first.min(ts);
        self.last = self.last.max(ts);
        if p.proto == Protocol::TCP {
            self.fin[dir] |= p.tcp_flags & TcpFlags::FIN != 0;
            self.rst |= p.tcp_flags & TcpFlags::RST != 0;
            let retransmitted_syn = p.tcp_flags & (TcpFlags::SYN | TcpFlags::ACK) == TcpFlags::SYN
                && sender_is_lo == self.initiator_is_lo;
            self.syn_only &= retransmitted_syn;
        }
    }

    fn closed(&self) -> bool {
        self.rst || (self.fin[0] && self.fin[1])
    }

    fn has_packets(&self) -> bool {
        self.packets[0] + self.packets[1] > 0
    }

    /// Starts the next piece of a flow after an active-timeout export.
    fn reset_counters(&mut self) {
        self.first = UNSET;
        self.packets = [0; 2];
        self.bytes = [0; 2];
        self.flags = [0; 2];
    }
}

/// A flow the table has closed, compact until it is turned into a [`FlowRecord`].
#[derive(Clone, Copy, Debug)]
pub struct FinishedFlow {
    key: FlowKey,
    entry: FlowEntry,
    reason: EndReason,
}

impl FinishedFlow {
    /// Time of the first packet.
    pub fn start(&self) -> Timestamp {
        Timestamp(self.entry.first)
    }

    /// Why the flow was closed.
    pub fn end_reason(&self) -> EndReason {
        self.reason
    }

    /// The flow record, oriented initiator → responder, with its Community ID.
    pub fn to_record(&self) -> FlowRecord {
        let mut record = self.record_without_id();
        record.community_id = record.compute_community_id();
        record
    }

    /// The order of output: [`FlowRecord::sort_key`] of the record, without hashing its Community ID.
    pub fn sort_key(&self) -> impl Ord + use<> {
        self.record_without_id().sort_key()
    }

    /// The flow record without its Community ID (`community_id` empty), for consumers that never show it:
    /// hashing it is a good part of the cost of a record.
    pub fn record_without_id(&self) -> FlowRecord {
        let k = &self.key;
        let e = &self.entry;
        let (i, r) = if e.initiator_is_lo { (0, 1) } else { (1, 0) };
        let (src, dst, src_port, dst_port) = if e.initiator_is_lo {
            (k.lo, k.hi, k.lo_port, k.hi_port)
        } else {
            (k.hi, k.lo, k.hi_port, k.lo_port)
        };
        let ports = k.proto.has_ports();
        let icmp = k.proto.is_icmp();
        let icmp_id = (icmp && k.hi_port != ICMP_ONE_WAY && has_identifier(k.proto, e.icmp_type))
            .then_some(k.lo_port);
        FlowRecord {
            src: k.addr(src),
            src_port: ports.then_some(src_port),
            dst: k.addr(dst),
            dst_port: ports.then_some(dst_port),
            proto: k.proto,
            icmp_type: icmp.then_some(e.icmp_type),
            icmp_code: icmp.then_some(e.icmp_code),
            icmp_id,
            packets: e.packets[i],
            bytes: e.bytes[i],
            reply_packets: e.packets[r],
            reply_bytes: e.bytes[r],
            start: Timestamp(e.first),
            end: Timestamp(e.last),
            tcp_flags: TcpFlags(e.flags[i]),
            reply_tcp_flags: TcpFlags(e.flags[r]),
            orientation: if e.inferred {
                Orientation::Inferred
            } else {
                Orientation::Observed
            },
            end_reason: self.reason,
            community_id: String::new(),
            observed_at: None,
        }
    }
}

fn has_identifier(proto: Protocol, request_type: u8) -> bool {
    if proto == Protocol::ICMPV6 {
        request_type == 128
    } else {
        matches!(request_type, 8 | 13 | 15 | 17)
    }
}

/// Counters of a flow table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Flows created.
    pub created: u64,
    /// Flows closed early because the table was full.
    pub evicted: u64,
    /// Largest number of flows held at once.
    pub peak_flows: u64,
}

impl TableStats {
    /// Adds another table's counters (peaks add up: the tables held their flows at the same time).
    pub fn merge(&mut self, other: &TableStats) {
        self.created += other.created;
        self.evicted += other.evicted;
        self.peak_flows += other.peak_flows;
    }
}

/// Timeouts in nanoseconds, copied out of the config for the packet path.
#[derive(Clone, Copy, Debug)]
struct Limits {
    tcp: i64,
    tcp_closed: i64,
    udp: i64,
    icmp: i64,
    other: i64,
    active: Option<i64>,
}

impl Limits {
    fn idle(&self, proto: Protocol, entry: &FlowEntry) -> i64 {
        match proto {
            Protocol::TCP if entry.closed() => self.tcp_closed,
            Protocol::TCP => self.tcp,
            Protocol::UDP => self.udp,
            Protocol::ICMP | Protocol::ICMPV6 => self.icmp,
            _ => self.other,
        }
    }

    fn idle_reason(&self, proto: Protocol, entry: &FlowEntry) -> EndReason {
        if proto == Protocol::TCP && entry.closed() {
            EndReason::TcpClosed
        } else {
            EndReason::IdleTimeout
        }
    }

    /// How often to sweep: a quarter of the shortest timeout, between 1 and 15 seconds. Exactness does not depend
    /// on it (see [`FlowTable::update`]); only how soon quiet flows are reported.
    fn sweep_interval(&self) -> i64 {
        let shortest = [self.tcp, self.tcp_closed, self.udp, self.icmp, self.other]
            .into_iter()
            .chain(self.active)
            .min()
            .unwrap_or(SWEEP_MIN);
        (shortest / 4).clamp(SWEEP_MIN, SWEEP_MAX)
    }
}

/// A table of open flows. See the module documentation for the design.
pub struct FlowTable {
    config: FlowConfig,
    limits: Limits,
    sweep_interval: i64,
    hasher: foldhash::fast::RandomState,
    flows: HashTable<(FlowKey, FlowEntry)>,
    finished: Vec<FinishedFlow>,
    clock: i64,
    next_sweep: i64,
    packets_since_sweep: u64,
    stats: TableStats,
}

impl std::fmt::Debug for FlowTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowTable")
            .field("flows", &self.flows.len())
            .field("finished", &self.finished.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

const SWEEP_MIN: i64 = 1_000_000_000;
const SWEEP_MAX: i64 = 15_000_000_000;

impl FlowTable {
    /// An empty table. Tables that split one packet stream between them must share `hasher` (clone it).
    pub fn new(config: FlowConfig, hasher: foldhash::fast::RandomState) -> FlowTable {
        let limits = Limits {
            tcp: nanos(config.tcp_idle),
            tcp_closed: nanos(config.tcp_closed_idle),
            udp: nanos(config.udp_idle),
            icmp: nanos(config.icmp_idle),
            other: nanos(config.other_idle),
            active: config.active_timeout.map(nanos),
        };
        FlowTable {
            limits,
            sweep_interval: limits.sweep_interval(),
            config,
            hasher,
            flows: HashTable::new(),
            finished: Vec::new(),
            clock: i64::MIN,
            next_sweep: i64::MIN,
            packets_since_sweep: 0,
            stats: TableStats::default(),
        }
    }

    /// The hash of a key, as the table uses it.
    #[inline]
    pub fn hash(&self, key: &FlowKey) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The seeded hasher of this table.
    pub fn hasher(&self) -> &foldhash::fast::RandomState {
        &self.hasher
    }

    /// Flows currently open.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow is open.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Counters so far.
    pub fn stats(&self) -> TableStats {
        self.stats
    }

    /// Advances the table's clock to `now` (nanoseconds since the epoch) and closes flows that timed out.
    /// Time never goes backwards: an older `now` is ignored.
    pub fn advance(&mut self, now: Timestamp) {
        self.packets_since_sweep += 1;
        if now.0 > self.clock {
            self.clock = now.0;
        }
        // Sweep at most once per interval of flow time, and only after enough packets that a full scan costs at
        // most two steps per packet, even when timestamps jump on every packet.
        if self.clock >= self.next_sweep
            && self.packets_since_sweep >= (self.flows.len() as u64 / 2).max(1)
        {
            self.sweep();
        }
    }

    fn sweep(&mut self) {
        self.packets_since_sweep = 0;
        self.next_sweep = self.clock.saturating_add(self.sweep_interval);
        let clock = self.clock;
        let limits = self.limits;
        let finished = &mut self.finished;
        self.flows.retain(|(key, entry)| {
            if clock.saturating_sub(entry.last) > limits.idle(key.proto, entry) {
                if entry.has_packets() {
                    finished.push(FinishedFlow {
                        key: *key,
                        entry: *entry,
                        reason: limits.idle_reason(key.proto, entry),
                    });
                }
                return false;
            }
            if let Some(active) = limits.active
                && entry.has_packets()
                && clock.saturating_sub(entry.first) >= active
            {
                finished.push(FinishedFlow {
                    key: *key,
                    entry: *entry,
                    reason: EndReason::ActiveTimeout,
                });
                entry.reset_counters();
            }
            true
        });
    }

    /// Closes the least recently active sixteenth of the flows (at least one) to make room.
    fn evict(&mut self) {
        let mut lasts: Vec<i64> = self.flows.iter().map(|(_, e)| e.last).collect();
        let n = (lasts.len() / 16).max(1);
        if lasts.is_empty() {
            return;
        }
        let cutoff = *lasts.select_nth_unstable(n - 1).1;
        let mut left = n;
        let finished = &mut self.finished;
        let evicted = &mut self.stats.evicted;
        self.flows.retain(|(key, entry)| {
            if left > 0 && entry.last <= cutoff {
                left -= 1;
                *evicted += 1;
                if entry.has_packets() {
                    finished.push(FinishedFlow {
                        key: *key,
                        entry: *entry,
                        reason: EndReason::Evicted,
                    });
                }
                return false;
            }
            true
        });
    }

    /// Accounts one decoded packet to its flow. `hash` must be [`FlowTable::hash`] of `key`.
    pub fn update(
        &mut self,
        hash: u64,
        key: FlowKey,
        sender_is_lo: bool,
        p: &DecodedPacket,
        ts: Timestamp,
    ) {
        let eq = |slot: &(FlowKey, FlowEntry)| slot.0 == key;
        let limits = self.limits;
        if let Some((_, entry)) = self.flows.find_mut(hash, eq) {
            // Idleness is judged here, at the packet, so flows split exactly at their timeout however rarely the
            // sweep runs; the sweep only reclaims memory and reports flows that went quiet. A fresh SYN on these
            // ports (not a retransmission) also ends the old connection.
            let idle = ts.0.saturating_sub(entry.last) > limits.idle(key.proto, entry)
                && entry.has_packets();
            let new_syn = p.proto == Protocol::TCP
                && p.has_l4
                && p.tcp_flags & (TcpFlags::SYN | TcpFlags::ACK) == TcpFlags::SYN
                && !(entry.syn_only && sender_is_lo == entry.initiator_is_lo);
            let restart = if idle {
                Some(limits.idle_reason(key.proto, entry))
            } else if new_syn && entry.closed() {
                Some(EndReason::TcpClosed)
            } else if new_syn {
                Some(EndReason::TcpReused)
            } else {
                None
            };
            if let Some(reason) = restart {
                let old = std::mem::replace(entry, FlowEntry::new(&key, sender_is_lo, p));
                self.finished.push(FinishedFlow {
                    key,
                    entry: old,
                    reason,
                });
                self.stats.created += 1;
            }
            entry.apply(sender_is_lo, p, ts.0);
            return;
        }
        if self.flows.len() >= self.config.max_flows {
            self.evict();
        }
        let mut entry = FlowEntry::new(&key, sender_is_lo, p);
        entry.apply(sender_is_lo, p, ts.0);
        let hasher = &self.hasher;
        self.flows
            .insert_unique(hash, (key, entry), |slot| hasher.hash_one(slot.0));
        self.stats.created += 1;
        self.stats.peak_flows = self.stats.peak_flows.max(self.flows.len() as u64);
    }

    /// Takes the flows closed so far.
    pub fn take_finished(&mut self) -> Vec<FinishedFlow> {
        std::mem::take(&mut self.finished)
    }

    /// Closes every open flow (end of capture) and returns all finished flows.
    pub fn finish(mut self) -> (Vec<FinishedFlow>, TableStats) {
        let mut finished = std::mem::take(&mut self.finished);
        let (clock, limits) = (self.clock, self.limits);
        finished.extend(
            self.flows
                .drain()
                .filter(|(_, e)| e.has_packets())
                .map(|(key, entry)| {
                    // The reason must not depend on whether a sweep happened to run before the end: a flow already
                    // past its idle timeout ended by timing out, and a closed connection says so.
                    let reason = if clock.saturating_sub(entry.last)
                        > limits.idle(key.proto, &entry)
                        || (key.proto == Protocol::TCP && entry.closed())
                    {
                        limits.idle_reason(key.proto, &entry)
                    } else {
                        EndReason::EndOfCapture
                    };
                    FinishedFlow { key, entry, reason }
                }),
        );
        (finished, self.stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn icmp(src: [u8; 4], dst: [u8; 4], icmp_type: u8) -> DecodedPacket {
        let mut s = [0u8; 16];
        let mut d = [0u8; 16];
        s[..4].copy_from_slice(&src);
        d[..4].copy_from_slice(&dst);
        DecodedPacket {
            src: s,
            dst: d,
            v6: false,
            proto: Protocol::ICMP,
            src_port: 0,
            dst_port: 0,
            tcp_flags: 0,
            l4_type: icmp_type,
            icmp_code: 0,
            icmp_id: 9,
            has_l4: true,
            ip_len: 84,
            fragment: None,
        }
    }

    fn run(packets: &[DecodedPacket]) -> Vec<FlowRecord> {
        let mut t = FlowTable::new(
            FlowConfig::default(),
            foldhash::fast::RandomState::default(),
        );
        for (i, p) in packets.iter().enumerate() {
            let ts = Timestamp(1_000 + i as i64);
            let (key, lo) = FlowKey::of_packet(p);
            t.update(t.hash(&key), key, lo, p, ts);
        }
        t.finish().0.iter().map(FinishedFlow::to_record).collect()
    }

    // Regression: `ping 127.0.0.1` counted requests and replies in one direction (addresses tie).
    #[test]
    fn ping_to_self_counts_requests_and_replies_apart() {
        let lo = [127, 0, 0, 1];
        let r = run(&[
            icmp(lo, lo, 8),
            icmp(lo, lo, 0),
            icmp(lo, lo, 8),
            icmp(lo, lo, 0),
        ]);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].packets, r[0].reply_packets), (2, 2));
        assert_eq!(r[0].icmp_type, Some(8));
    }

    // Regression: an echo flow first seen by its reply made the replier the initiator.
    #[test]
    fn echo_reply_seen_first_keeps_the_requester_as_initiator() {
        let (a, b) = ([10, 0, 0, 9], [10, 0, 0, 1]);
        let r = run(&[icmp(b, a, 0), icmp(a, b, 8), icmp(b, a, 0)]);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].src, IpAddr::from(a));
        assert_eq!((r[0].packets, r[0].reply_packets), (1, 2));
        assert_eq!((r[0].icmp_type, r[0].icmp_id), (Some(8), Some(9)));
    }
}

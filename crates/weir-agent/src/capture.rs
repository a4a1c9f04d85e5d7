//! The capture engine: worker threads reading the host side of pod veths (AF_PACKET TPACKET_V3 rings, or pnet),
//! one flow table per observation point, flow records with their observation point as flows end or reach the
//! active timeout. `weir capture` prints what it makes; `weir agent` streams it to the aggregator.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use weir_capture::{
    Batch, KernelStats, LiveError, Packet, PnetSource, RingConfig, RingSource, wait_any,
};
use weir_flow::{FlowConfig, FlowExtractor, SkipReason, address_pair};
use weir_model::{Direction, FlowRecord, ObservationPoint, Timestamp};

/// Host-side interface names of the common CNIs.
pub const DEFAULT_PATTERNS: [&str; 6] = ["veth*", "cali*", "lxc*", "cni*", "gke*", "eni*"];

/// How packets are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// AF_PACKET with a TPACKET_V3 memory-mapped ring: no system call per packet, packet direction known.
    Ring,
    /// pnet's datalink channel: portable, one `recvfrom` per packet, no packet direction (the pod's address
    /// on each interface is inferred as the one every flow there has).
    Pnet,
}

/// What to capture and how.
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    /// Interface name patterns (`*` is any run of characters).
    pub patterns: Vec<String>,
    /// Worker threads; with more than one, each interface's sockets form a fanout group.
    pub threads: usize,
    /// How packets are read.
    pub backend: Backend,
    /// Ring geometry and snap length.
    pub ring: RingConfig,
    /// Flow table timeouts and size.
    pub flow: FlowConfig,
    /// The node name in observation points.
    pub node: String,
    /// Stop by itself at this instant.
    pub deadline: Option<Instant>,
}

/// What one interface saw, reported when it is closed (it went away, or the capture stopped).
#[derive(Clone, Debug, Default)]
pub struct InterfaceSummary {
    /// Interface name.
    pub interface: String,
    /// Packets read from it.
    pub packets: u64,
    /// The kernel's counters for its ring(s).
    pub kernel: KernelStats,
}

/// What the workers hand over.
#[derive(Debug)]
pub enum CaptureEvent {
    /// Flow records that ended or reached the active timeout.
    Records(Vec<FlowRecord>),
    /// An interface was closed.
    Closed(InterfaceSummary),
    /// A problem on one interface; the capture goes on.
    Warning(LiveError),
    /// A problem that stops the capture (no permission to capture at all).
    Fatal(LiveError),
}

/// Running totals over every worker and interface, for metrics; readable while the capture runs.
#[derive(Debug, Default)]
pub struct CaptureCounters {
    /// Packets read.
    pub packets: AtomicU64,
    /// Packets the kernel handed to the rings (including dropped ones).
    pub kernel_packets: AtomicU64,
    /// Packets the kernel dropped because a ring was full.
    pub kernel_drops: AtomicU64,
    /// Flows closed early because a flow table was full (reported, not lost).
    pub table_evictions: AtomicU64,
    /// Packets not accounted to any flow (malformed, unsupported), in all.
    pub skipped_packets: AtomicU64,
    /// The same by reason, indexed as [`weir_flow::SkipReason::ALL`].
    pub skipped_by_reason: [AtomicU64; SkipReason::ALL.len()],
    /// Flow records produced.
    pub records: AtomicU64,
    /// Interfaces being captured.
    pub interfaces: AtomicU64,
}

/// A running capture.
pub struct Capture {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
    events: Receiver<CaptureEvent>,
    counters: Arc<CaptureCounters>,
}

impl Capture {
    /// Starts the workers; they scan for matching interfaces every second.
    pub fn start(config: CaptureConfig) -> Capture {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(CaptureCounters::default());
        let (tx, rx) = crossbeam_channel::unbounded();
        let workers = config.threads.max(1);
        let handles = (0..workers)
            .map(|index| {
                let worker = Worker {
                    index,
                    workers,
                    config: config.clone(),
                    stop: Arc::clone(&stop),
                    events: tx.clone(),
                    counters: Arc::clone(&counters),
                };
                std::thread::spawn(move || worker.run())
            })
            .collect();
        Capture {
            stop,
            handles,
            events: rx,
            counters,
        }
    }

    /// The events; the channel closes when every worker has stopped.
    pub fn events(&self) -> &Receiver<CaptureEvent> {
        &self.events
    }

    /// The flag that stops the workers (they flush their flow tables first).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// Running totals.
    pub fn counters(&self) -> Arc<CaptureCounters> {
        Arc::clone(&self.counters)
    }

    /// Asks the workers to stop and waits for them.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            let _ = h.join();
        }
    }
}

/// `veth*`-style matching: `*` is any run of characters.
pub fn matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// The interfaces of this network namespace whose names match a pattern, sorted.
pub fn interfaces(patterns: &[String]) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| patterns.iter().any(|p| matches(p, n)))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The wall clock as a flow timestamp.
pub fn now() -> Timestamp {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp(since.as_nanos().min(i64::MAX as u128) as i64)
}

/// One observation point: a ring on a host-side veth, its flow table, and the pod addresses learned behind it
/// (the sources of packets the pod sent).
struct Point {
    source: Source,
    extractor: FlowExtractor,
    /// Addresses seen leaving the pod (a pod has one or two; a short list beats hashing every packet).
    pod_ips: Vec<IpAddr>,
    /// pnet: unicast packets per address seen at either end (the pod's address leads).
    seen: HashMap<IpAddr, u64>,
    packets: u64,
    /// What has already been added to the shared counters.
    published: Published,
}

#[derive(Default)]
struct Published {
    packets: u64,
    kernel: KernelStats,
    evicted: u64,
    skipped: u64,
    skipped_by_reason: [u64; SkipReason::ALL.len()],
}

enum Source {
    Ring(RingSource),
    Pnet(PnetSource),
}

impl Source {
    fn kernel_stats(&mut self) -> KernelStats {
        match self {
            Source::Ring(r) => r.kernel_stats(),
            // pnet does not expose its socket's counters.
            Source::Pnet(_) => KernelStats::default(),
        }
    }
}

/// One packet at an observation point: into its flow table, and into what is learned of the pod's addresses.
fn observe(
    extractor: &mut FlowExtractor,
    pod_ips: &mut Vec<IpAddr>,
    seen: &mut HashMap<IpAddr, u64>,
    packets: &mut u64,
    p: Packet<'_>,
) {
    *packets += 1;
    // Learning the pod's addresses needs the packet's addresses: while none is known yet, and then on one
    // packet in 256 (a second address family, a changed address). Without directions (pnet) every packet
    // counts.
    let learn = p.direction.is_none() || pod_ips.is_empty() || packets.is_multiple_of(256);
    let pair = if learn {
        address_pair(p.link, p.data).and_then(|(s, d)| Some((ip_of(s)?, ip_of(d)?)))
    } else {
        None
    };
    match (p.direction, pair) {
        (Some(Direction::FromPod), Some((src, _))) if unicast(src) && !pod_ips.contains(&src) => {
            pod_ips.push(src);
        }
        // No direction (pnet): the pod is the address at one end of (nearly) every unicast packet on its
        // veth; floods from other pods do not count.
        (None, Some((src, dst))) if unicast(src) && unicast(dst) => {
            *seen.entry(src).or_default() += 1;
            *seen.entry(dst).or_default() += 1;
            let mut counts: Vec<(u64, IpAddr)> = seen.iter().map(|(ip, n)| (*n, *ip)).collect();
            counts.sort_unstable_by(|a, b| b.cmp(a));
            if let [best, rest @ ..] = counts.as_slice()
                && rest.first().is_none_or(|second| best.0 > second.0)
            {
                *pod_ips = vec![best.1];
            }
        }
        _ => {}
    }
    extractor.packet(p.timestamp, p.link, p.data);
}

fn unicast(ip: IpAddr) -> bool {
    !(ip.is_multicast() || ip.is_unspecified() || ip == IpAddr::from([255, 255, 255, 255]))
}

fn ip_of(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

struct Worker {
    index: usize,
    workers: usize,
    config: CaptureConfig,
    stop: Arc<AtomicBool>,
    events: Sender<CaptureEvent>,
    counters: Arc<CaptureCounters>,
}

impl Worker {
    /// Every worker captures every interface: with several workers, the sockets of one interface form a
    /// `PACKET_FANOUT_HASH` group, so the kernel keeps each flow on one worker (and its flow table).
    fn ring_config(&self, name: &str) -> RingConfig {
        let mut config = self.config.ring.clone();
        if self.workers > 1 {
            // Fanout group ids are per network namespace: one per interface, apart from other processes'.
            let ifindex = weir_capture::interface_index(name).unwrap_or(0);
            config.fanout = Some(((std::process::id() << 8) ^ ifindex) as u16);
        }
        config
    }

    fn records(&self, interface: &str, point: &Point, flows: Vec<weir_flow::FinishedFlow>) {
        if flows.is_empty() {
            return;
        }
        let records: Vec<FlowRecord> = flows
            .iter()
            .map(|f| {
                let mut r = f.to_record();
                // The flow's initiator is the pod behind the veth when its address was seen leaving the pod.
                let direction = if point.pod_ips.contains(&r.src) {
                    Direction::FromPod
                } else {
                    Direction::ToPod
                };
                r.observed_at = Some(ObservationPoint {
                    node: self.config.node.clone(),
                    interface: interface.to_owned(),
                    direction,
                });
                r
            })
            .collect();
        self.counters
            .records
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        let _ = self.events.send(CaptureEvent::Records(records));
    }

    /// Adds what a point counted since the last call to the shared counters.
    fn publish(&self, point: &mut Point) {
        let kernel = point.source.kernel_stats();
        let stats = point.extractor.stats();
        let p = &mut point.published;
        let c = &self.counters;
        c.packets
            .fetch_add(point.packets - p.packets, Ordering::Relaxed);
        c.kernel_packets.fetch_add(
            kernel.packets.saturating_sub(p.kernel.packets),
            Ordering::Relaxed,
        );
        c.kernel_drops.fetch_add(
            kernel.drops.saturating_sub(p.kernel.drops),
            Ordering::Relaxed,
        );
        c.table_evictions.fetch_add(
            stats.table.evicted.saturating_sub(p.evicted),
            Ordering::Relaxed,
        );
        let skipped = stats.skipped.total();
        c.skipped_packets
            .fetch_add(skipped.saturating_sub(p.skipped), Ordering::Relaxed);
        let mut by_reason = p.skipped_by_reason;
        for (i, reason) in SkipReason::ALL.iter().enumerate() {
            let n = stats.skipped.get(*reason);
            c.skipped_by_reason[i].fetch_add(n.saturating_sub(by_reason[i]), Ordering::Relaxed);
            by_reason[i] = n;
        }
        *p = Published {
            packets: point.packets,
            kernel,
            evicted: stats.table.evicted,
            skipped,
            skipped_by_reason: by_reason,
        };
    }

    fn close(&self, interface: String, mut point: Point) {
        self.publish(&mut point);
        let kernel = point.published.kernel;
        let (flows, _) = std::mem::replace(
            &mut point.extractor,
            FlowExtractor::new(self.config.flow.clone()),
        )
        .finish();
        self.records(&interface, &point, flows);
        if self.index == 0 {
            self.counters.interfaces.fetch_sub(1, Ordering::Relaxed);
        }
        let _ = self.events.send(CaptureEvent::Closed(InterfaceSummary {
            interface,
            packets: point.packets,
            kernel,
        }));
    }

    fn open(&self, name: &str) -> Result<Source, LiveError> {
        match self.config.backend {
            Backend::Ring => RingSource::open(name, &self.ring_config(name)).map(Source::Ring),
            Backend::Pnet => {
                PnetSource::open(name, self.config.ring.snaplen, Duration::from_millis(10))
                    .map(Source::Pnet)
            }
        }
    }

    /// Closes interfaces that went away and opens new ones; false when capturing is not permitted at all.
    fn rescan(&self, points: &mut BTreeMap<String, Point>) -> bool {
        let present: Vec<String> = interfaces(&self.config.patterns);
        let gone: Vec<String> = points
            .keys()
            .filter(|n| !present.contains(n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(point) = points.remove(&name) {
                self.close(name, point);
            }
        }
        for name in present {
            if points.contains_key(&name) {
                continue;
            }
            match self.open(&name) {
                Ok(source) => {
                    if self.index == 0 {
                        self.counters.interfaces.fetch_add(1, Ordering::Relaxed);
                    }
                    points.insert(
                        name,
                        Point {
                            source,
                            extractor: FlowExtractor::new(self.config.flow.clone()),
                            pod_ips: Vec::new(),
                            seen: HashMap::new(),
                            packets: 0,
                            published: Published::default(),
                        },
                    );
                }
                Err(e @ LiveError::Permission { .. }) => {
                    let _ = self.events.send(CaptureEvent::Fatal(e));
                    return false;
                }
                // An interface that vanished between the scan and the open is not an error.
                Err(LiveError::NoSuchInterface(_)) => {}
                Err(e) => {
                    let _ = self.events.send(CaptureEvent::Warning(e));
                }
            }
        }
        true
    }

    fn run(self) {
        let mut points: BTreeMap<String, Point> = BTreeMap::new();
        // Room for a few ring blocks per read (a block holds at most its size in packet bytes).
        let mut batch = Batch::with_capacity(4 << 20);
        let mut last_scan: Option<Instant> = None;
        loop {
            let done = self.stop.load(Ordering::Relaxed)
                || self.config.deadline.is_some_and(|d| Instant::now() >= d);
            if done {
                break;
            }
            if last_scan.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                last_scan = Some(Instant::now());
                if !self.rescan(&mut points) {
                    self.stop.store(true, Ordering::Relaxed);
                    return;
                }
                for point in points.values_mut() {
                    self.publish(point);
                }
            }
            if points.is_empty() {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            // pnet reads wait on their own (10 ms each); rings are waited for together.
            let rings: Vec<&RingSource> = points
                .values()
                .filter_map(|p| match &p.source {
                    Source::Ring(r) => Some(r),
                    Source::Pnet(_) => None,
                })
                .collect();
            if rings.len() == points.len()
                && let Err(e) = wait_any(&rings, Duration::from_millis(100))
            {
                let _ = self.events.send(CaptureEvent::Warning(e));
            }
            let mut broken = Vec::new();
            let clock = now();
            for (name, point) in points.iter_mut() {
                let Point {
                    source,
                    extractor,
                    pod_ips,
                    seen,
                    packets,
                    ..
                } = point;
                let mut observe = |p: Packet<'_>| {
                    observe(extractor, pod_ips, seen, packets, p);
                };
                let read = match source {
                    // Rings are read in place, without copying.
                    Source::Ring(ring) => ring.for_each_packet(Duration::ZERO, &mut observe),
                    Source::Pnet(pnet) => pnet
                        .next_batch(&mut batch, 4096)
                        .inspect(|_| batch.iter().for_each(&mut observe)),
                };
                if read.is_err() {
                    broken.push(name.clone());
                    continue;
                }
                point.extractor.advance(clock);
                let finished = point.extractor.take_finished();
                self.records(name, point, finished);
            }
            for name in broken {
                if let Some(point) = points.remove(&name) {
                    self.close(name, point);
                }
            }
        }
        for (name, point) in std::mem::take(&mut points) {
            self.close(name, point);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn patterns() {
        assert!(matches("veth*", "veth1a2b"));
        assert!(!matches("veth*", "eth0"));
        assert!(matches("*", "anything"));
        assert!(matches("cali*x", "cali12x"));
        assert!(!matches("cali*x", "cali12y"));
        assert!(matches("a*b*c", "a1b2c"));
        assert!(matches("lo", "lo"));
        assert!(!matches("lo", "lo0"));
    }
}

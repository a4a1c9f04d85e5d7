//! `weir capture`: live flow records from the host side of pod veth interfaces, each with its observation
//! point (node, interface, direction), optionally attributed and judged against a cluster snapshot.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use crossbeam_channel::{Receiver, Sender};
use weir_analysis::{Analyzer, write_flow};
use weir_capture::{Batch, KernelStats, Packet, PnetSource, RingConfig, RingSource, wait_any};
use weir_flow::{FlowConfig, FlowExtractor, address_pair};
use weir_model::{Direction, FlowRecord, ObservationPoint, Timestamp};

use crate::duration::parse_duration;
use crate::snapshot;

/// Host-side interface names of the common CNIs.
const DEFAULT_PATTERNS: [&str; 6] = ["veth*", "cali*", "lxc*", "cni*", "gke*", "eni*"];

#[derive(Args)]
pub struct CaptureArgs {
    /// Interfaces to capture on, by name; `*` matches any run of characters. Repeatable. Default: the host-side
    /// names of the common CNIs (veth*, cali*, lxc*, cni*, gke*, eni*). Interfaces that appear later are
    /// picked up, and ones that go away are closed.
    #[arg(long = "interfaces", short = 'i', value_name = "PATTERN")]
    interfaces: Vec<String>,
    /// Stop after this long (`30s`, `5m`); default: until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Worker threads, each with its own ring on every interface and its own flow tables; the kernel spreads
    /// each interface's flows over them (PACKET_FANOUT_HASH), keeping every flow on one worker.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
    /// Output format.
    #[arg(long, value_enum, default_value_t = LiveFormat::Jsonl)]
    format: LiveFormat,
    /// Cluster snapshot(s): attribute and judge each flow as `weir analyze` does (JSON lines).
    #[arg(long, value_name = "PATH")]
    cluster: Vec<PathBuf>,
    /// Report long flows every this often, not only when they end.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    active_timeout: Duration,
    /// The node name in observation points (default: the host name).
    #[arg(long)]
    node: Option<String>,
    /// Bytes kept of each packet (headers are all weir reads; byte counts use the original length).
    #[arg(long, default_value_t = 256)]
    snaplen: u32,
    /// Ring size per interface, in MiB.
    #[arg(long, default_value_t = 8)]
    ring_mb: u32,
    /// How packets are read.
    #[arg(long, value_enum, default_value_t = Backend::Ring)]
    backend: Backend,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// AF_PACKET with a TPACKET_V3 memory-mapped ring: no system call per packet, packet direction known.
    Ring,
    /// pnet's datalink channel: portable, one `recvfrom` per packet, no packet direction (the pod's address
    /// on each interface is inferred as the one every flow there has).
    Pnet,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LiveFormat {
    /// One JSON flow record per line.
    Jsonl,
    /// One aligned line per flow, for people.
    Table,
}

/// `veth*`-style matching: `*` is any run of characters.
fn matches(pattern: &str, name: &str) -> bool {
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

fn interfaces(patterns: &[String]) -> Vec<String> {
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

fn now() -> Timestamp {
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
    seen: std::collections::HashMap<IpAddr, u64>,
    packets: u64,
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

/// What a worker reports when it closes an interface or stops.
struct Closed {
    interface: String,
    packets: u64,
    kernel: KernelStats,
}

enum Event {
    Records(Vec<FlowRecord>),
    Closed(Closed),
    Error(String),
}

/// One packet at an observation point: into its flow table, and into what is learned of the pod's addresses.
fn observe(
    extractor: &mut FlowExtractor,
    pod_ips: &mut Vec<IpAddr>,
    seen: &mut std::collections::HashMap<IpAddr, u64>,
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
    workers: usize,
    backend: Backend,
    patterns: Vec<String>,
    ring: RingConfig,
    flow: FlowConfig,
    node: String,
    stop: Arc<AtomicBool>,
    deadline: Option<Instant>,
    events: Sender<Event>,
}

impl Worker {
    /// Every worker captures every interface: with several workers, the sockets of one interface form a
    /// `PACKET_FANOUT_HASH` group, so the kernel keeps each flow on one worker (and its flow table).
    fn ring_config(&self, name: &str) -> RingConfig {
        let mut config = self.ring.clone();
        if self.workers > 1 {
            // Fanout group ids are per network namespace: one per interface, apart from other processes'.
            let ifindex = weir_capture::interface_index(name).unwrap_or(0);
            config.fanout = Some(((std::process::id() << 8) ^ ifindex) as u16);
        }
        config
    }

    fn records(&self, interface: &str, point: &mut Point, flows: Vec<weir_flow::FinishedFlow>) {
        if flows.is_empty() {
            return;
        }
        let records = flows
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
                    node: self.node.clone(),
                    interface: interface.to_owned(),
                    direction,
                });
                r
            })
            .collect();
        let _ = self.events.send(Event::Records(records));
    }

    fn close(&self, interface: String, mut point: Point) {
        let kernel = point.source.kernel_stats();
        let (flows, _) =
            std::mem::replace(&mut point.extractor, FlowExtractor::new(self.flow.clone())).finish();
        self.records(&interface, &mut point, flows);
        let _ = self.events.send(Event::Closed(Closed {
            interface,
            packets: point.packets,
            kernel,
        }));
    }

    fn run(self) {
        let mut points: BTreeMap<String, Point> = BTreeMap::new();
        // Room for a few ring blocks per read (a block holds at most its size in packet bytes).
        let mut batch = Batch::with_capacity(4 << 20);
        let mut last_scan: Option<Instant> = None;
        loop {
            let done = self.stop.load(Ordering::Relaxed)
                || self.deadline.is_some_and(|d| Instant::now() >= d);
            if done {
                break;
            }
            if last_scan.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                last_scan = Some(Instant::now());
                let present: Vec<String> = interfaces(&self.patterns);
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
                    let opened = match self.backend {
                        Backend::Ring => {
                            RingSource::open(&name, &self.ring_config(&name)).map(Source::Ring)
                        }
                        Backend::Pnet => {
                            PnetSource::open(&name, self.ring.snaplen, Duration::from_millis(10))
                                .map(Source::Pnet)
                        }
                    };
                    match opened {
                        Ok(source) => {
                            points.insert(
                                name,
                                Point {
                                    source,
                                    extractor: FlowExtractor::new(self.flow.clone()),
                                    pod_ips: Vec::new(),
                                    seen: Default::default(),
                                    packets: 0,
                                },
                            );
                        }
                        Err(e @ weir_capture::LiveError::Permission { .. }) => {
                            let _ = self.events.send(Event::Error(e.to_string()));
                            return;
                        }
                        // An interface that vanished between the scan and the open is not an error.
                        Err(weir_capture::LiveError::NoSuchInterface(_)) => {}
                        Err(e) => {
                            let _ = self.events.send(Event::Error(e.to_string()));
                        }
                    }
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
                let _ = self.events.send(Event::Error(e.to_string()));
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

/// Node totals that count a same-node connection once, though both pods' veths report it: records of one
/// connection share the Community ID and start within a second of each other at different interfaces.
#[derive(Default)]
struct Connections {
    seen: std::collections::HashMap<String, Vec<(String, Timestamp, u64)>>,
    count: u64,
    packets: u64,
}

impl Connections {
    fn add(&mut self, r: &FlowRecord) {
        let interface = r
            .observed_at
            .as_ref()
            .map(|o| o.interface.clone())
            .unwrap_or_default();
        let packets = r.packets + r.reply_packets;
        let views = self.seen.entry(r.community_id.clone()).or_default();
        let twin = views
            .iter_mut()
            .find(|(i, start, _)| *i != interface && (start.0 - r.start.0).abs() < 1_000_000_000);
        match twin {
            Some((_, _, counted)) => {
                // The other view of a connection already counted: keep the larger packet count.
                if packets > *counted {
                    self.packets += packets - *counted;
                    *counted = packets;
                }
            }
            None => {
                self.count += 1;
                self.packets += packets;
                views.push((interface, r.start, packets));
            }
        }
    }
}

fn live_line(r: &FlowRecord) -> String {
    let end = |ip: IpAddr, port: Option<u16>| match port {
        Some(p) => format!("{ip}:{p}"),
        None => ip.to_string(),
    };
    let (interface, direction) = r.observed_at.as_ref().map_or(("", ""), |o| {
        (
            o.interface.as_str(),
            match o.direction {
                Direction::FromPod => "from-pod",
                Direction::ToPod => "to-pod",
            },
        )
    });
    format!(
        "{}  {:<15} {:<8} {:<5} {:>22} -> {:<22} {:>6}/{:<6} {:>9}/{:<9}",
        r.start,
        interface,
        direction,
        r.proto.to_string(),
        end(r.src, r.src_port),
        end(r.dst, r.dst_port),
        r.packets,
        r.reply_packets,
        r.bytes,
        r.reply_bytes
    )
}

pub fn run(args: CaptureArgs) -> Result<ExitCode> {
    let patterns: Vec<String> = if args.interfaces.is_empty() {
        DEFAULT_PATTERNS.iter().map(|s| (*s).to_owned()).collect()
    } else {
        args.interfaces.clone()
    };
    let set = if args.cluster.is_empty() {
        None
    } else {
        Some(snapshot::load(&args.cluster)?)
    };
    let node = match &args.node {
        Some(n) => n.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".to_owned()),
    };
    if !args.cluster.is_empty() && args.format == LiveFormat::Table {
        bail!("with --cluster, flows are written as judged JSON lines; drop --format table");
    }
    if args.backend == Backend::Pnet && args.threads > 1 {
        bail!("--backend pnet reads on one thread (it has no fanout groups here); drop --threads");
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed))
            .context("installing the Ctrl-C handler")?;
    }
    let flow = FlowConfig {
        active_timeout: Some(args.active_timeout),
        ..FlowConfig::default()
    };
    let ring = RingConfig {
        block_size: 1 << 20,
        blocks: args.ring_mb.max(2),
        block_timeout_ms: 50,
        snaplen: args.snaplen,
        fanout: None,
    };
    let deadline = args.duration.map(|d| Instant::now() + d);
    let (tx, rx): (Sender<Event>, Receiver<Event>) = crossbeam_channel::unbounded();
    let workers = usize::from(args.threads);
    let mut handles = Vec::new();
    for _ in 0..workers {
        let worker = Worker {
            workers,
            backend: args.backend,
            patterns: patterns.clone(),
            ring: ring.clone(),
            flow: flow.clone(),
            node: node.clone(),
            stop: Arc::clone(&stop),
            deadline,
            events: tx.clone(),
        };
        handles.push(std::thread::spawn(move || worker.run()));
    }
    drop(tx);

    let mut out = io::BufWriter::new(io::stdout().lock());
    let mut analyzer = set.as_ref().map(|s| Analyzer::new(s, &[]));
    let mut closed: Vec<Closed> = Vec::new();
    let mut flows = 0u64;
    let mut connections = Connections::default();
    let mut failure = None;
    for event in rx {
        match event {
            Event::Records(records) => {
                flows += records.len() as u64;
                records.iter().for_each(|r| connections.add(r));
                match (&mut analyzer, &set) {
                    (Some(analyzer), Some(set)) => {
                        let mut buf = Vec::new();
                        for flow in analyzer.analyze(records).flows {
                            write_flow(set, &flow, &mut buf);
                            buf.push(b'\n');
                        }
                        out.write_all(&buf)?;
                    }
                    _ => {
                        for r in &records {
                            match args.format {
                                LiveFormat::Jsonl => {
                                    let mut buf = Vec::new();
                                    r.write_json_line(&mut buf);
                                    out.write_all(&buf)?;
                                }
                                LiveFormat::Table => writeln!(out, "{}", live_line(r))?,
                            }
                        }
                    }
                }
                out.flush()?;
            }
            Event::Closed(c) => closed.push(c),
            Event::Error(e) => {
                // A permission error stops everything: no interface can be captured.
                if e.contains("CAP_NET_RAW") {
                    stop.store(true, Ordering::Relaxed);
                    failure = Some(e);
                } else {
                    eprintln!("weir: warning: {e}");
                }
            }
        }
    }
    for h in handles {
        let _ = h.join();
    }
    if let Some(e) = failure {
        bail!("{e}");
    }
    // With several workers each interface was closed once per worker: add their shares up.
    let mut by_interface: BTreeMap<String, Closed> = BTreeMap::new();
    for c in closed {
        let entry = by_interface.entry(c.interface.clone()).or_insert(Closed {
            interface: c.interface.clone(),
            packets: 0,
            kernel: KernelStats::default(),
        });
        entry.packets += c.packets;
        entry.kernel.packets += c.kernel.packets;
        entry.kernel.drops += c.kernel.drops;
        entry.kernel.freezes += c.kernel.freezes;
    }
    let closed: Vec<Closed> = by_interface.into_values().collect();
    let mut err = io::stderr().lock();
    let packets: u64 = closed.iter().map(|c| c.packets).sum();
    let kernel_packets: u64 = closed.iter().map(|c| c.kernel.packets).sum();
    let drops: u64 = closed.iter().map(|c| c.kernel.drops).sum();
    let interfaces_text = format!(
        "{} interface{}",
        closed.len(),
        if closed.len() == 1 { "" } else { "s" }
    );
    if args.backend == Backend::Pnet {
        writeln!(
            err,
            "weir capture: {} on {node}, {packets} packets read (pnet: kernel drops unknown, \
             0 in user space), {flows} flow records",
            interfaces_text
        )?;
    } else {
        writeln!(
            err,
            "weir capture: {} on {node}, {packets} packets read ({kernel_packets} received by the \
             kernel, {drops} dropped by the kernel, 0 in user space), {flows} flow records",
            interfaces_text
        )?;
    }
    writeln!(
        err,
        "  {} connections, {} packets in them: a connection seen at two observation points (two pods of this \
         node) counts once",
        connections.count, connections.packets
    )?;
    for c in &closed {
        writeln!(
            err,
            "  {:<16} {:>10} packets  {:>8} kernel drops",
            c.interface, c.packets, c.kernel.drops
        )?;
    }
    Ok(ExitCode::SUCCESS)
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

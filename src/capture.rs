//! `weir capture`: live flow records from the host side of pod veth interfaces, each with its observation
//! point (node, interface, direction), optionally attributed and judged against a cluster snapshot.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use weir_agent::capture::{DEFAULT_PATTERNS, InterfaceSummary};
use weir_agent::{Capture, CaptureConfig, CaptureEvent};
use weir_analysis::{Analyzer, write_flow};
use weir_capture::{KernelStats, RingConfig};
use weir_flow::FlowConfig;
use weir_model::{Direction, FlowRecord, Timestamp};

use crate::duration::parse_duration;
use crate::snapshot;

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
pub enum Backend {
    /// AF_PACKET with a TPACKET_V3 memory-mapped ring: no system call per packet, packet direction known.
    Ring,
    /// pnet's datalink channel: portable, one `recvfrom` per packet, no packet direction (the pod's address
    /// on each interface is inferred as the one every flow there has).
    Pnet,
}

impl From<Backend> for weir_agent::Backend {
    fn from(b: Backend) -> Self {
        match b {
            Backend::Ring => weir_agent::Backend::Ring,
            Backend::Pnet => weir_agent::Backend::Pnet,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LiveFormat {
    /// One JSON flow record per line.
    Jsonl,
    /// One aligned line per flow, for people.
    Table,
}

/// The node name: given, or the host name.
pub fn node_name(given: Option<&str>) -> String {
    match given {
        Some(n) => n.to_owned(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".to_owned()),
    }
}

/// Interface patterns: given, or the common CNIs' host-side names.
pub fn patterns(given: &[String]) -> Vec<String> {
    if given.is_empty() {
        DEFAULT_PATTERNS.iter().map(|s| (*s).to_owned()).collect()
    } else {
        given.to_vec()
    }
}

/// What to capture, from the flags `weir capture` and `weir agent` share.
#[allow(clippy::too_many_arguments)]
pub fn capture_config(
    interfaces: &[String],
    threads: u16,
    backend: Backend,
    ring_mb: u32,
    snaplen: u32,
    active_timeout: Duration,
    node: &str,
    duration: Option<Duration>,
) -> CaptureConfig {
    CaptureConfig {
        patterns: patterns(interfaces),
        threads: usize::from(threads),
        backend: backend.into(),
        ring: ring_config(ring_mb, snaplen),
        flow: FlowConfig {
            active_timeout: Some(active_timeout),
            ..FlowConfig::default()
        },
        node: node.to_owned(),
        deadline: duration.map(|d| Instant::now() + d),
    }
}

/// The ring geometry for a size in MiB.
pub fn ring_config(ring_mb: u32, snaplen: u32) -> RingConfig {
    RingConfig {
        block_size: 1 << 20,
        blocks: ring_mb.max(2),
        block_timeout_ms: 50,
        snaplen,
        fanout: None,
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
    let node = node_name(args.node.as_deref());
    let set = if args.cluster.is_empty() {
        None
    } else {
        let set = snapshot::load(&args.cluster, &snapshot::KubeArgs::default())?;
        // This host's interface addresses are this node's, as an agent would report them: probes from its
        // bridge or tunnel device inside the pod range are the node's, not unknown pods'.
        let reported =
            std::collections::BTreeMap::from([(node.clone(), weir_capture::host_addresses())]);
        let cluster = set.cluster().with_node_interfaces(&reported);
        Some(
            weir_policy::PolicySet::new(std::sync::Arc::new(cluster))
                .context("the snapshot with this node's interface addresses")?,
        )
    };
    if !args.cluster.is_empty() && args.format == LiveFormat::Table {
        bail!("with --cluster, flows are written as judged JSON lines; drop --format table");
    }
    if args.backend == Backend::Pnet && args.threads > 1 {
        bail!("--backend pnet reads on one thread (it has no fanout groups here); drop --threads");
    }
    let capture = Capture::start(capture_config(
        &args.interfaces,
        args.threads,
        args.backend,
        args.ring_mb,
        args.snaplen,
        args.active_timeout,
        &node,
        args.duration,
    ));
    {
        let stop = capture.stop_flag();
        ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed))
            .context("installing the Ctrl-C handler")?;
    }
    let stop = capture.stop_flag();
    let rx = capture.events().clone();

    let mut out = io::BufWriter::new(io::stdout().lock());
    let mut analyzer = set.as_ref().map(|s| Analyzer::new(s, &[]));
    let mut closed: Vec<InterfaceSummary> = Vec::new();
    let mut flows = 0u64;
    let mut connections = Connections::default();
    let mut failure = None;
    for event in rx {
        match event {
            CaptureEvent::Records(records) => {
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
            CaptureEvent::Closed(c) => closed.push(c),
            CaptureEvent::Warning(w) => eprintln!("weir: warning: {w}"),
            // No interface can be captured: everything stops.
            CaptureEvent::Fatal(e) => {
                stop.store(true, Ordering::Relaxed);
                failure = Some(e);
            }
        }
    }
    capture.stop();
    if let Some(e) = failure {
        bail!("{e}");
    }
    // With several workers each interface was closed once per worker: add their shares up.
    let mut by_interface: BTreeMap<String, InterfaceSummary> = BTreeMap::new();
    for c in closed {
        let entry = by_interface
            .entry(c.interface.clone())
            .or_insert(InterfaceSummary {
                interface: c.interface.clone(),
                packets: 0,
                kernel: KernelStats::default(),
            });
        entry.packets += c.packets;
        entry.kernel.packets += c.kernel.packets;
        entry.kernel.drops += c.kernel.drops;
        entry.kernel.freezes += c.kernel.freezes;
    }
    let closed: Vec<InterfaceSummary> = by_interface.into_values().collect();
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

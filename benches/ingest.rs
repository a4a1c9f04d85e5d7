//! The aggregator under load from simulated agents on loopback: ingest rate (flow records per second), memory
//! per edge, and batch-to-alert latency (p50/p99, hdrhistogram) while the load runs.
//!
//! `cargo bench --bench ingest [-- AGENTS BATCHES_PER_AGENT RECORDS_PER_BATCH] [--random-pairs] [--json]`
//! (defaults 2 250 2000: a million records). Traffic: each Deployment calls three others (a service graph), or
//! with `--random-pairs` every record goes between a random pair of the 2,000 pods (the worst case: most records
//! open a new edge, and most of those raise an alert). Bodies are binary as `weir agent` sends them, or JSON lines
//! with `--json`. Starts `weir aggregator` on the 2,000-pod benchmark snapshot (200 Deployments behind Services,
//! 200 policies) with a scratch data directory. The baseline, measured in the same run, is parsing the same
//! batches with the aggregator's own parser on one thread: the cost of the wire format alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/process.rs"]
mod process;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use process::Proc;
use weir_model::{Direction, FlowRecord, ObservationPoint, Protocol, TcpFlags, Timestamp};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// xorshift: deterministic traffic.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn record(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, node: &str, at: i64) -> FlowRecord {
    let mut r = FlowRecord {
        src: src.into(),
        src_port: Some(sport),
        dst: dst.into(),
        dst_port: Some(dport),
        proto: Protocol::TCP,
        icmp_type: None,
        icmp_code: None,
        icmp_id: None,
        packets: 10,
        bytes: 1400,
        reply_packets: 8,
        reply_bytes: 9000,
        start: Timestamp(at),
        end: Timestamp(at + 5_000_000),
        tcp_flags: TcpFlags(TcpFlags::SYN | TcpFlags::ACK | TcpFlags::PSH | TcpFlags::FIN),
        reply_tcp_flags: TcpFlags(TcpFlags::SYN | TcpFlags::ACK | TcpFlags::PSH | TcpFlags::FIN),
        orientation: Default::default(),
        end_reason: Default::default(),
        community_id: String::new(),
        observed_at: Some(ObservationPoint {
            node: node.into(),
            interface: "veth1234".into(),
            direction: Direction::FromPod,
        }),
    };
    r.community_id = r.compute_community_id();
    r
}

/// One HTTP/1.1 request on a kept-alive connection; returns the status and body.
fn request(stream: &mut TcpStream, head: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut req = Vec::with_capacity(head.len() + body.len() + 64);
    req.extend_from_slice(head.as_bytes());
    req.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    req.extend_from_slice(body);
    stream.write_all(&req).unwrap();
    let mut reader = BufReader::new(&mut *stream);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut out = vec![0; length];
    reader.read_exact(&mut out).unwrap();
    (code, out)
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    // The worst case: every record between a random pair of pods (nearly every record a new edge).
    let random_pairs = std::env::args().any(|a| a == "--random-pairs");
    // What agents send by default (binary), or the JSON-lines form with `--json`.
    let json = std::env::args().any(|a| a == "--json");
    let format = if json {
        weir_aggregator::ingest::BodyFormat::JsonLines
    } else {
        weir_aggregator::ingest::BodyFormat::Binary
    };
    let content_type = if json {
        "application/x-ndjson"
    } else {
        weir_model::wire::CONTENT_TYPE
    };
    let num = |i: usize, d: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (agents, batches, per_batch) = (num(0, 2), num(1, 250), num(2, 2000));
    let dir = std::env::temp_dir().join(format!("weir-ingest-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cluster = weir_synth::synthetic_cluster_with(20, 10, 10, 200, true, |i| {
        weir_synth::bench_pod_address(i as u64)
    });
    std::fs::write(dir.join("cluster.json"), &cluster.json).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let aggregator = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["aggregator", "--cluster"])
            .arg(dir.join("cluster.json"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(dir.join("data"))
            .args(["--no-alert-lines", "--learn", "1h"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let pid = aggregator.id();
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = TcpStream::connect(&addr)
            && request(&mut s, "GET /readyz HTTP/1.1\r\nhost: x\r\n", b"").0 == 200
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the aggregator did not get ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let rss_ready = rss_kib(pid, "VmRSS:");

    // The batches: random pod pairs on the Deployments' ports, as agents on 20 nodes would send them.
    let pods = &cluster.pod_ips;
    let ports = [80u16, 443, 8080, 5432, 6379, 9090];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let t0 = now();
    let bodies: Vec<Vec<Vec<u8>>> = (0..agents)
        .map(|a| {
            (0..batches)
                .map(|b| {
                    let mut body = Vec::with_capacity(per_batch * if json { 460 } else { 100 });
                    if !json {
                        body.extend_from_slice(weir_model::wire::MAGIC);
                    }
                    for i in 0..per_batch {
                        let from = (rng.next() % pods.len() as u64) as usize;
                        let src = pods[from];
                        let (dst, port) = if random_pairs {
                            let to = (rng.next() % pods.len() as u64) as usize;
                            (pods[to], ports[(rng.next() % ports.len() as u64) as usize])
                        } else {
                            // Each Deployment (10 replicas) calls three others, each on its own port.
                            let workloads = pods.len() / 10;
                            let k = (rng.next() % 3) as usize;
                            let callee = (from / 10 * 7 + k * 13 + 1) % workloads;
                            let to = callee * 10 + (rng.next() % 10) as usize;
                            (pods[to], ports[callee % ports.len()])
                        };
                        let sport = 10_000 + ((b * per_batch + i) % 50_000) as u16;
                        let node = format!("node-{}", (a * 7 + b) % 20);
                        let r = record(
                            src,
                            sport,
                            dst,
                            port,
                            &node,
                            t0 + (b * per_batch + i) as i64 * 1000,
                        );
                        if json {
                            r.write_json_line(&mut body);
                        } else {
                            r.write_binary(&mut body);
                        }
                    }
                    body
                })
                .collect()
        })
        .collect();
    let total_records = (agents * batches * per_batch) as u64;
    let total_bytes: usize = bodies.iter().flatten().map(Vec::len).sum();

    // Baseline: the aggregator's parser alone, one thread.
    let started = Instant::now();
    let mut parsed = 0u64;
    for body in bodies.iter().flatten() {
        parsed += weir_aggregator::ingest::parse_records(format, body)
            .unwrap()
            .0
            .len() as u64;
    }
    let parse_secs = started.elapsed().as_secs_f64();
    assert_eq!(parsed, total_records);

    // Alert latency under load: an SSE reader, and a probe every 50 ms with a new denied pair (an outside
    // address reaching a pod on a port its namespace's default-deny does not open).
    let stream_addr = addr.clone();
    let (tx, rx) = std::sync::mpsc::channel::<(u32, i64)>();
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(&stream_addr).unwrap();
        s.write_all(b"GET /api/v1/alerts/stream?type=policy-violation HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        for line in BufReader::new(s).lines().map_while(Result::ok) {
            if let Some(data) = line.strip_prefix("data: ")
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(data)
                && let Some(ip) = v["source"]["ip"].as_str()
                && let Some(id) = ip.strip_prefix("198.18.")
            {
                let mut parts = id.split('.');
                let hi: u32 = parts.next().unwrap_or("0").parse().unwrap_or(0);
                let lo: u32 = parts.next().unwrap_or("0").parse().unwrap_or(0);
                let _ = tx.send((hi * 256 + lo, now()));
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let loading = Arc::new(AtomicBool::new(true));
    let probe = {
        let addr = addr.clone();
        let loading = Arc::clone(&loading);
        let target = pods[17];
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(&addr).unwrap();
            let mut sent = Vec::new();
            let mut n = 0u32;
            while loading.load(Ordering::Relaxed) && n < 60_000 {
                let src = Ipv4Addr::new(198, 18, (n / 256) as u8, (n % 256) as u8);
                let mut body = Vec::new();
                record(src, 40_000, target, 3306, "node-probe", now()).write_json_line(&mut body);
                let head = format!(
                    "POST /api/v1/ingest HTTP/1.1\r\nhost: x\r\nx-weir-node: node-probe\r\nx-weir-epoch: probe\r\nx-weir-seq: {}\r\n",
                    n + 1
                );
                sent.push(now());
                let (code, _) = request(&mut s, &head, &body);
                assert_eq!(code, 200);
                n += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            sent
        })
    };

    let started = Instant::now();
    let senders: Vec<_> = bodies
        .into_iter()
        .enumerate()
        .map(|(a, batches)| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).unwrap();
                for (i, body) in batches.iter().enumerate() {
                    let head = format!(
                        "POST /api/v1/ingest HTTP/1.1\r\nhost: x\r\nx-weir-node: node-{a}\r\nx-weir-epoch: bench{a}\r\nx-weir-seq: {}\r\ncontent-type: {content_type}\r\n",
                        i + 1
                    );
                    let (code, reply) = request(&mut s, &head, body);
                    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&reply));
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let ingest_secs = started.elapsed().as_secs_f64();
    loading.store(false, Ordering::Relaxed);
    let sent = probe.join().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut latency = Histogram::<u64>::new(3).unwrap();
    let mut seen = 0;
    while let Ok((id, at)) = rx.try_recv() {
        if let Some(t) = sent.get(id as usize) {
            latency.record(((at - t) / 1000).max(1) as u64).unwrap();
            seen += 1;
        }
    }
    let mut s = TcpStream::connect(&addr).unwrap();
    let (_, status) = request(&mut s, "GET /api/v1/status HTTP/1.1\r\nhost: x\r\n", b"");
    let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
    let edges = status["edges"].as_u64().unwrap_or(0);
    let applied = status["totals"]["records"].as_u64().unwrap_or(0);
    let rss = rss_kib(pid, "VmRSS:");
    let peak = rss_kib(pid, "VmHWM:");
    drop(aggregator);
    let _ = std::fs::remove_dir_all(&dir);

    let rate = total_records as f64 / ingest_secs;
    let parse_rate = total_records as f64 / parse_secs;
    println!(
        "traffic: {}",
        if random_pairs {
            "random pod pairs"
        } else {
            "service graph (each Deployment calls three others)"
        }
    );
    println!(
        "weir aggregator ingest: {agents} simulated agents, {total_records} records in {batches} batches each of {per_batch} ({:.0} MB of {})",
        total_bytes as f64 / 1e6,
        if json { "JSON lines" } else { "binary batches" }
    );
    println!(
        "  applied {applied} records (+{} probe records), {edges} workload edges",
        sent.len()
    );
    println!("  ingest:   {ingest_secs:.2} s, {:.0} records/s", rate);
    println!(
        "  baseline: parsing alone on one thread {parse_secs:.2} s, {:.0} records/s",
        parse_rate
    );
    println!("  ratio ingest ÷ parse-only rate: {:.2}", rate / parse_rate);
    println!(
        "  memory: {} MiB resident after loading the snapshot, {} MiB after ingest (peak {} MiB): {:.0} bytes per edge, with the recent-flow ring and join table included",
        rss_ready / 1024,
        rss / 1024,
        peak / 1024,
        (rss.saturating_sub(rss_ready) * 1024) as f64 / edges.max(1) as f64
    );
    println!(
        "  batch-to-alert latency under that load: {seen} of {} probes, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        sent.len(),
        latency.value_at_quantile(0.5) as f64 / 1000.0,
        latency.value_at_quantile(0.99) as f64 / 1000.0,
        latency.max() as f64 / 1000.0
    );
}

//! Live capture on real veth interfaces: a bridge "node" with "pod" network namespaces (tests/common/netns.rs),
//! known traffic between the pods, and weir's ring capture judged against it and against the kernel's own
//! interface counters. Needs root: the tests are ignored by a plain `cargo test` and run by the README's test
//! command (`-- --include-ignored`), where they fail with the reason if root or a tool is missing.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::netns::Node;
use common::process::{Proc, require_root, require_tool};
use weir_capture::{Batch, RingConfig, RingSource};
use weir_flow::{FlowConfig, FlowExtractor};
use weir_model::{Direction, FlowRecord, Protocol, Timestamp};

/// What one host-side veth saw: flow records, and packets and bytes (on the wire) per direction.
#[derive(Default)]
struct Seen {
    records: Vec<FlowRecord>,
    packets: BTreeMap<&'static str, u64>,
    wire_bytes: BTreeMap<&'static str, u64>,
}

/// Reads the rings until they stay quiet for `quiet`, then closes the flows.
fn drain(rings: &mut [RingSource], quiet: Duration, deadline: Duration) -> Vec<Seen> {
    let mut extractors: Vec<FlowExtractor> = rings
        .iter()
        .map(|_| FlowExtractor::new(FlowConfig::default()))
        .collect();
    let mut seen: Vec<Seen> = rings.iter().map(|_| Seen::default()).collect();
    let mut batch = Batch::with_capacity(4 << 20);
    let start = Instant::now();
    let mut last_packet = Instant::now();
    while last_packet.elapsed() < quiet && start.elapsed() < deadline {
        for (i, ring) in rings.iter_mut().enumerate() {
            let got = ring
                .next_batch(&mut batch, Duration::from_millis(20))
                .unwrap();
            if got > 0 {
                last_packet = Instant::now();
            }
            for p in batch.iter() {
                let side = match p.direction {
                    Some(Direction::FromPod) => "from-pod",
                    Some(Direction::ToPod) => "to-pod",
                    None => "unknown",
                };
                *seen[i].packets.entry(side).or_default() += 1;
                *seen[i].wire_bytes.entry(side).or_default() += u64::from(p.orig_len);
                extractors[i].packet(p.timestamp, p.link, p.data);
            }
        }
    }
    for (i, extractor) in extractors.into_iter().enumerate() {
        let (flows, _) = extractor.finish();
        seen[i].records = flows.iter().map(|f| f.to_record()).collect();
    }
    seen
}

fn flow(records: &[FlowRecord], proto: Protocol, port: Option<u16>) -> &FlowRecord {
    let found: Vec<&FlowRecord> = records
        .iter()
        .filter(|r| r.proto == proto && (port.is_none() || r.dst_port == port))
        .collect();
    assert_eq!(found.len(), 1, "{proto} {port:?}: {records:#?}");
    found[0]
}

const SERVER: &str = r#"
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 9999))
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind(("0.0.0.0", 8080)); t.listen()
open(sys.argv[1], "w").close()
for _ in range(20):
    data, peer = u.recvfrom(2048); u.sendto(data, peer)
c, _ = t.accept(); got = b""
while len(got) < 30000:
    chunk = c.recv(65536)
    if not chunk: break
    got += chunk
c.sendall(b"r" * 5000); c.close()
"#;

const CLIENT: &str = r#"
import socket, sys, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2)
for i in range(20):
    u.sendto(b"u" * 100, (sys.argv[1], 9999)); u.recvfrom(2048)
t = socket.create_connection((sys.argv[1], 8080), timeout=5)
t.sendall(b"t" * 30000)
got = b""
while len(got) < 5000:
    chunk = t.recv(65536)
    if not chunk: break
    got += chunk
t.close(); time.sleep(0.2)
"#;

#[test]
#[ignore = "needs root: network namespaces and AF_PACKET (the README's test command runs it)"]
fn ring_capture_matches_known_traffic_and_the_kernel_counters() {
    require_root();
    let node = Node::new("r", 1, 2);
    node.static_neighbours();
    let config = RingConfig {
        block_timeout_ms: 10,
        ..RingConfig::default()
    };
    let counters = || -> Vec<(u64, u64, u64, u64)> {
        (0..2)
            .map(|i| {
                (
                    node.counter(i, "rx_packets"),
                    node.counter(i, "tx_packets"),
                    node.counter(i, "rx_bytes"),
                    node.counter(i, "tx_bytes"),
                )
            })
            .collect()
    };
    // The kernel sends IGMP reports on its own, at random delays after an interface comes up. Rings opened
    // while one passes would make the counters and the capture start at different packets, so the rings are
    // opened again until the counters did not move across the opening.
    let (mut rings, before) = (0..20)
        .find_map(|_| {
            let before = counters();
            let rings: Vec<RingSource> = node
                .pods
                .iter()
                .map(|p| RingSource::open(&p.host_veth, &config).unwrap())
                .collect();
            (counters() == before).then_some((rings, before))
        })
        .expect("the interfaces never went quiet");

    // Known traffic: 5 pings, 20 UDP echoes of 100 bytes, one TCP connection (30,000 bytes up, 5,000 down).
    let ready = std::env::temp_dir().join(format!("weir-live-ready-{}", std::process::id()));
    let _ = std::fs::remove_file(&ready);
    let mut server = node.spawn(1, &["python3", "-c", SERVER, ready.to_str().unwrap()]);
    let start = Instant::now();
    while !ready.exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let server_ip = node.pods[1].ip.to_string();
    node.ping(0, &server_ip, 5);
    node.exec(0, &["python3", "-c", CLIENT, &server_ip]);
    let status = server.wait_for_exit(Duration::from_secs(20));
    assert!(status.success());
    let _ = std::fs::remove_file(&ready);

    let seen = drain(
        &mut rings,
        Duration::from_millis(300),
        Duration::from_secs(10),
    );
    for (i, ring) in rings.iter_mut().enumerate() {
        let stats = ring.kernel_stats();
        assert_eq!(stats.drops, 0, "ring {i} dropped");
    }

    // Both observation points saw the same conversation, each from its pod's side.
    let client_ip = node.pods[0].ip;
    for (i, s) in seen.iter().enumerate() {
        let icmp = flow(&s.records, Protocol::ICMP, None);
        assert_eq!((icmp.packets, icmp.reply_packets), (5, 5), "veth {i}");
        assert_eq!(icmp.src, client_ip);
        let udp = flow(&s.records, Protocol::UDP, Some(9999));
        assert_eq!((udp.packets, udp.reply_packets), (20, 20), "veth {i}");
        assert_eq!(
            (udp.bytes, udp.reply_bytes),
            (20 * 128, 20 * 128),
            "veth {i}"
        );
        let tcp = flow(&s.records, Protocol::TCP, Some(8080));
        assert_eq!(tcp.src, client_ip);
        assert!(tcp.bytes > 30_000 && tcp.reply_bytes > 5_000, "{tcp:?}");
        assert!(tcp.start > Timestamp(0));
        // Besides those three, only the kernel's own IGMP membership reports (sent when a pod's interface
        // comes up, at a random delay) may appear.
        let others: Vec<&FlowRecord> = s
            .records
            .iter()
            .filter(|r| ![Protocol::ICMP, Protocol::UDP, Protocol::TCP].contains(&r.proto))
            .collect();
        assert!(others.iter().all(|r| r.proto == Protocol(2)), "{others:#?}");
        assert_eq!(s.records.len() - others.len(), 3, "{:#?}", s.records);

        // The kernel's counters of the host-side veth: rx is what the pod sent, tx what it received.
        let (rx0, tx0, rxb0, txb0) = before[i];
        let rx = node.counter(i, "rx_packets") - rx0;
        let tx = node.counter(i, "tx_packets") - tx0;
        assert_eq!(
            s.packets.get("from-pod").copied().unwrap_or(0),
            rx,
            "veth {i} from-pod"
        );
        assert_eq!(
            s.packets.get("to-pod").copied().unwrap_or(0),
            tx,
            "veth {i} to-pod"
        );
        assert_eq!(
            s.wire_bytes.get("from-pod").copied().unwrap_or(0),
            node.counter(i, "rx_bytes") - rxb0
        );
        assert_eq!(
            s.wire_bytes.get("to-pod").copied().unwrap_or(0),
            node.counter(i, "tx_bytes") - txb0
        );
        // Every packet is in a flow: the flows' packets add up to the interface's.
        let in_flows: u64 = s.records.iter().map(|r| r.packets + r.reply_packets).sum();
        assert_eq!(in_flows, rx + tx, "veth {i}");
    }
    // The TCP flow is the same connection at both points.
    let a = flow(&seen[0].records, Protocol::TCP, Some(8080));
    let b = flow(&seen[1].records, Protocol::TCP, Some(8080));
    assert_eq!(
        (a.packets, a.reply_packets, a.bytes, a.reply_bytes),
        (b.packets, b.reply_packets, b.bytes, b.reply_bytes)
    );
}

/// `weir capture ARGS...` with its output piped, stopped when the test ends.
fn weir_capture(args: &[&str]) -> Proc {
    Proc::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .arg("capture")
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
    )
}

/// `weir capture` output lines with a given observation point interface.
fn live_records(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
#[ignore = "needs root: network namespaces and AF_PACKET (the README's test command runs it)"]
fn weir_capture_follows_pods_as_they_come_and_go() {
    require_root();
    let mut node = Node::new("c", 2, 2);
    node.static_neighbours();
    let pattern = format!(
        "{}*",
        &node.pods[0].host_veth[..node.pods[0].host_veth.len() - 1]
    );
    let capture = weir_capture(&["-i", &pattern, "--duration", "6s", "--node", "node-t"]);
    std::thread::sleep(Duration::from_millis(1500));
    let first = node.pods[1].ip.to_string();
    node.ping(0, &first, 4);
    // A pod appears during the capture and talks; then the first pod goes away.
    let late = node.add_pod();
    node.static_neighbours();
    std::thread::sleep(Duration::from_millis(1500));
    node.ping(late, &first, 3);
    std::thread::sleep(Duration::from_millis(300));
    node.remove_pod(0);
    let out = capture.output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let records = live_records(&String::from_utf8(out.stdout).unwrap());

    let icmp = |from: usize, interface: &str| -> Vec<&serde_json::Value> {
        records
            .iter()
            .filter(|r| {
                r["proto"] == "ICMP"
                    && r["src"] == node.pods[from].ip.to_string()
                    && r["observed_at"]["interface"] == interface
            })
            .collect()
    };
    // The first conversation at both observation points, each from its pod's side.
    let at_source = icmp(0, &node.pods[0].host_veth);
    let at_destination = icmp(0, &node.pods[1].host_veth);
    assert_eq!(at_source.len(), 1, "{records:#?}");
    assert_eq!(at_destination.len(), 1);
    assert_eq!(
        (&at_source[0]["packets"], &at_source[0]["reply_packets"]),
        (&4.into(), &4.into())
    );
    assert_eq!(at_source[0]["observed_at"]["direction"], "from-pod");
    assert_eq!(at_source[0]["observed_at"]["node"], "node-t");
    assert_eq!(at_destination[0]["observed_at"]["direction"], "to-pod");
    assert_eq!(at_destination[0]["packets"], 4);
    // The late pod's interface was picked up while the capture ran.
    let late_flows = icmp(late, &node.pods[late].host_veth);
    assert_eq!(late_flows.len(), 1, "{records:#?}");
    assert_eq!(late_flows[0]["packets"], 3);
    assert_eq!(late_flows[0]["reply_packets"], 3);
    // The summary names every interface it closed, the removed one included, with no drops.
    for pod in &node.pods {
        assert!(stderr.contains(&pod.host_veth), "{stderr}");
    }
    assert!(stderr.contains("0 dropped by the kernel"), "{stderr}");
    // Node totals count the first ping once, though both pods' veths reported it.
    let icmp_records = records.iter().filter(|r| r["proto"] == "ICMP").count() as u64;
    let connections: u64 = stderr
        .lines()
        .find_map(|l| l.trim().strip_suffix("counts once"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap();
    // Both pings were reported at two veths each (4 ICMP records) and counted as 2 connections.
    assert_eq!(icmp_records, 4);
    assert!(
        connections as usize + 2 <= records.len(),
        "{connections} of {}: {stderr}",
        records.len()
    );
}

#[test]
#[ignore = "needs root: drops its privileges with setpriv (the README's test command runs it)"]
fn without_cap_net_raw_the_error_says_so() {
    require_root();
    require_tool("setpriv", "util-linux");
    // A copy the unprivileged user can reach whatever the checkout's permissions.
    let dir = std::env::temp_dir().join(format!("weir-nocap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let binary = dir.join("weir");
    std::fs::copy(env!("CARGO_BIN_EXE_weir"), &binary).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(&binary)
        .args(["capture", "-i", "lo", "--duration", "1s"])
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs CAP_NET_RAW"), "{stderr}");
}

const BLAST: &str = r#"
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[2])):
    u.sendto(b"d" * 32, (sys.argv[1], 9))
"#;

#[test]
#[ignore = "needs root: network namespaces and AF_PACKET (the README's test command runs it)"]
fn a_full_ring_counts_every_drop() {
    require_root();
    let node = Node::new("d", 3, 2);
    node.static_neighbours();
    // A tiny ring (two 4 KiB blocks) that nobody reads while 3,000 datagrams cross the veth.
    let config = RingConfig {
        block_size: 4096,
        blocks: 2,
        block_timeout_ms: 1,
        snaplen: 64,
        fanout: None,
    };
    let mut ring = RingSource::open(&node.pods[0].host_veth, &config).unwrap();
    let rx0 = node.counter(0, "rx_packets");
    let tx0 = node.counter(0, "tx_packets");
    let target = node.pods[1].ip.to_string();
    node.exec(0, &["python3", "-c", BLAST, &target, "3000"]);
    // Now read what the ring kept.
    let mut batch = Batch::with_capacity(1 << 20);
    let mut captured = 0u64;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        captured += ring
            .next_batch(&mut batch, Duration::from_millis(50))
            .unwrap() as u64;
    }
    // The truth: what crossed the veth, by the kernel's interface counters (read with the socket's).
    let crossed = node.counter(0, "rx_packets") - rx0 + node.counter(0, "tx_packets") - tx0;
    let stats = ring.kernel_stats();
    assert!(
        stats.drops > 0,
        "the ring should have overflowed: {stats:?}"
    );
    assert_eq!(
        stats.packets, crossed,
        "the kernel saw every packet that crossed the veth"
    );
    assert_eq!(
        captured + stats.drops,
        crossed,
        "captured {captured}, dropped {}",
        stats.drops
    );
    // Counters are running sums: reading again adds nothing new.
    assert_eq!(ring.kernel_stats(), stats);
}

const SINK: &str = r#"
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 9999)); u.settimeout(4)
open(sys.argv[1], "w").close()
try:
    while True: u.recv(2048)
except OSError:
    pass
"#;

const MANY: &str = r#"
import socket, sys
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(30)]
for s in socks: s.bind(("0.0.0.0", 0))
for _ in range(3):
    for s in socks: s.sendto(b"m" * 64, (sys.argv[1], 9999))
"#;

#[test]
#[ignore = "needs root: network namespaces and AF_PACKET (the README's test command runs it)"]
fn worker_threads_share_an_interface_without_splitting_flows() {
    require_root();
    let node = Node::new("f", 4, 2);
    node.static_neighbours();
    let ready = std::env::temp_dir().join(format!("weir-live-sink-{}", std::process::id()));
    let _ = std::fs::remove_file(&ready);
    let mut sink = node.spawn(1, &["python3", "-c", SINK, ready.to_str().unwrap()]);
    let start = Instant::now();
    while !ready.exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let capture = weir_capture(&[
        "-i",
        &node.pods[0].host_veth,
        "--duration",
        "3s",
        "--threads",
        "2",
    ]);
    std::thread::sleep(Duration::from_millis(1500));
    node.exec(0, &["python3", "-c", MANY, &node.pods[1].ip.to_string()]);
    let out = capture.output();
    let _ = sink.wait_for_exit(Duration::from_secs(20));
    let _ = std::fs::remove_file(&ready);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = live_records(&String::from_utf8(out.stdout).unwrap());
    let udp: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["proto"] == "UDP" && r["dst_port"] == 9999)
        .collect();
    // 30 flows, each whole on one worker: 3 datagrams, never a flow split in two.
    assert_eq!(udp.len(), 30, "{udp:#?}");
    assert!(
        udp.iter()
            .all(|r| r["packets"] == 3 && r["bytes"] == 3 * 92),
        "{udp:#?}"
    );
    let ports: std::collections::BTreeSet<String> =
        udp.iter().map(|r| r["src_port"].to_string()).collect();
    assert_eq!(ports.len(), 30);
}

#[test]
#[ignore = "needs root: network namespaces and AF_PACKET (the README's test command runs it)"]
fn the_pnet_fallback_sees_the_same_flows() {
    require_root();
    let node = Node::new("p", 5, 3);
    node.static_neighbours();
    let capture = weir_capture(&[
        "--backend",
        "pnet",
        "-i",
        &node.pods[0].host_veth,
        "--duration",
        "3s",
    ]);
    std::thread::sleep(Duration::from_millis(1500));
    for peer in [1, 2] {
        node.ping(0, &node.pods[peer].ip.to_string(), 4);
    }
    let out = capture.output();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = live_records(&String::from_utf8(out.stdout).unwrap());
    let pings: Vec<&serde_json::Value> = records.iter().filter(|r| r["proto"] == "ICMP").collect();
    assert_eq!(pings.len(), 2, "{records:#?}");
    for r in pings {
        assert_eq!(
            (&r["packets"], &r["reply_packets"]),
            (&4.into(), &4.into()),
            "{r}"
        );
        assert_eq!(r["src"], node.pods[0].ip.to_string());
        // No packet direction from pnet: the pod's side is inferred from the address every flow shares.
        assert_eq!(r["observed_at"]["direction"], "from-pod", "{r}");
    }
}

#[test]
#[ignore = "needs root: network namespaces and AF_PACKET (the README's test command runs it)"]
fn ctrl_c_and_sigterm_flush_open_flows_and_print_the_summary() {
    require_root();
    let node = Node::new("i", 6, 2);
    node.static_neighbours();
    for signal in ["INT", "TERM"] {
        let capture = weir_capture(&["-i", &node.pods[0].host_veth, "--format", "table"]);
        std::thread::sleep(Duration::from_millis(1500));
        node.ping(0, &node.pods[1].ip.to_string(), 2);
        capture.signal(signal);
        let out = capture.output();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "SIG{signal}: {stderr}");
        let table = String::from_utf8(out.stdout).unwrap();
        // The ping's flow was still open (ICMP idles out after a while): the signal closed and printed it.
        let line = table
            .lines()
            .find(|l| l.contains(" ICMP "))
            .unwrap_or_else(|| panic!("SIG{signal}: {table}"));
        assert!(line.contains("from-pod") && line.contains("2/2"), "{line}");
        assert!(
            stderr.contains("weir capture: 1 interface on") && stderr.contains("kernel drops"),
            "SIG{signal}: {stderr}"
        );
    }
}

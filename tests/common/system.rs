//! The live system on one "node": pods in network namespaces with a snapshot that describes them, `weir
//! aggregator` and `weir agent` as processes, `weir watch` as the alert reader. Used by the end-to-end tests and
//! the packet-to-alert benchmark.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::netns::Node;
pub use super::process::Proc;

/// A scratch directory removed at the end.
pub struct Scratch(pub PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

/// The snapshot: frontend, api and db in `shop`, ingress default-deny, frontend may reach api:8080, only api
/// may reach db:5432.
pub fn snapshot_yaml(node: &Node) -> String {
    let pod = |name: &str, app: &str, ip: &str| {
        format!(
            "- apiVersion: v1
  kind: Pod
  metadata: {{name: {name}, namespace: shop, labels: {{app: {app}}}, creationTimestamp: '2026-01-01T00:00:00Z'}}
  spec: {{nodeName: node-e, containers: [{{name: c, image: x}}]}}
  status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}
"
        )
    };
    let ip = |i: usize| node.pods[i].ip.to_string();
    format!(
        "apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {{name: shop}}
- apiVersion: v1
  kind: Node
  metadata: {{name: node-e}}
  spec: {{podCIDR: 10.251.7.0/24, podCIDRs: [10.251.7.0/24]}}
{}{}{}- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {{name: default-deny, namespace: shop}}
  spec: {{podSelector: {{}}, policyTypes: [Ingress]}}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {{name: api, namespace: shop}}
  spec:
    podSelector: {{matchLabels: {{app: api}}}}
    ingress: [{{from: [{{podSelector: {{matchLabels: {{app: frontend}}}}}}], ports: [{{port: 8080}}]}}]
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {{name: db, namespace: shop}}
  spec:
    podSelector: {{matchLabels: {{app: db}}}}
    ingress: [{{from: [{{podSelector: {{matchLabels: {{app: api}}}}}}], ports: [{{port: 5432}}]}}]
",
        pod("frontend", "frontend", &ip(0)),
        pod("api", "api", &ip(1)),
        pod("db", "db", &ip(2)),
    )
}

pub struct System {
    pub dir: PathBuf,
    pub port: u16,
    /// A separate ingest listener for agents (`--ingest-listen`), when the test wants one.
    pub ingest_port: Option<u16>,
    pub snapshot: PathBuf,
    pub token: PathBuf,
}

impl System {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where agents send flows.
    pub fn ingest_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ingest_port.unwrap_or(self.port))
    }

    pub fn aggregator(&self) -> Proc {
        self.aggregator_with(&[])
    }

    /// The aggregator with extra arguments.
    pub fn aggregator_with(&self, extra: &[&str]) -> Proc {
        let child = weir()
            .args(["aggregator", "--cluster"])
            .arg(&self.snapshot)
            .args(["--listen", &format!("127.0.0.1:{}", self.port), "--data"])
            .arg(self.dir.join("data"))
            .arg("--token-file")
            .arg(&self.token)
            .args(["--learn", "1h", "--no-alert-lines", "--checkpoint", "500ms"])
            .args(
                self.ingest_port
                    .map(|p| vec!["--ingest-listen".to_owned(), format!("127.0.0.1:{p}")])
                    .unwrap_or_default(),
            )
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let proc = Proc(Some(child));
        wait_for(&format!("{}/readyz", self.url()));
        proc
    }

    pub fn get(&self, path: &str) -> serde_json::Value {
        let out = Command::new("python3")
            .args([
                "-c",
                "import sys,urllib.request;print(urllib.request.urlopen(sys.argv[1],timeout=5).read().decode())",
                &format!("{}{path}", self.url()),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

pub fn wait_for(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let ok = Command::new("python3")
            .args([
                "-c",
                "import sys,urllib.request;urllib.request.urlopen(sys.argv[1],timeout=1)",
                url,
            ])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{url} never answered");
}

pub fn setup(tag: &str, subnet: u8) -> (Node, System, Scratch) {
    assert_eq!(subnet, 7, "the snapshot's podCIDR is 10.251.7.0/24");
    let node = Node::new(tag, subnet, 3);
    node.static_neighbours();
    let dir = std::env::temp_dir().join(format!("weir-e2e-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let snapshot = dir.join("cluster.yaml");
    std::fs::write(&snapshot, snapshot_yaml(&node)).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "s3cret-agent-token-Vb7q-Rk3m-Tz9x-Pw5d\n").unwrap();
    let system = System {
        dir: dir.clone(),
        port: free_port(),
        ingest_port: None,
        snapshot,
        token,
    };
    (node, system, Scratch(dir))
}

/// The agent's last words: flow records made, acknowledged, and unacknowledged at exit.
pub fn agent_summary(stderr: &str) -> (u64, u64, u64) {
    let line = stderr
        .lines()
        .find(|l| l.contains("flow records,"))
        .unwrap_or_else(|| panic!("no summary in {stderr}"));
    let num = |before: &str| -> u64 {
        let at = line
            .find(before)
            .unwrap_or_else(|| panic!("{before:?} in {line}"));
        line[..at]
            .split_whitespace()
            .last()
            .unwrap()
            .trim_end_matches(',')
            .parse()
            .unwrap()
    };
    (
        num(" flow records"),
        num(" acknowledged"),
        num(" unacknowledged"),
    )
}

pub fn agent(system: &System, node: &Node) -> Proc {
    agent_with(system, node, &["--active-timeout", "1s"])
}

/// The agent with its arguments after the common ones (`--active-timeout` is one of them: give it).
pub fn agent_with(system: &System, node: &Node, extra: &[&str]) -> Proc {
    let pattern = format!(
        "{}*",
        &node.pods[0].host_veth[..node.pods[0].host_veth.len() - 1]
    );
    let child = weir()
        .args([
            "agent",
            "--aggregator",
            &system.ingest_url(),
            "--node",
            "node-e",
            "-i",
            &pattern,
        ])
        .arg("--token-file")
        .arg(&system.token)
        .args(["--listen", "none", "--flush", "200ms"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Proc(Some(child))
}

/// An HTTP server in a pod.
pub fn serve(node: &Node, pod: usize, port: u16) -> Proc {
    let ip = node.pods[pod].ip.to_string();
    Proc(Some(
        Command::new("ip")
            .args(["netns", "exec", &node.pods[pod].netns])
            .args([
                "python3",
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                &ip,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ))
}

/// A Python snippet run in a pod.
pub fn py(node: &Node, pod: usize, code: &str, args: &[&str]) {
    let mut all = vec!["python3", "-c", code];
    all.extend_from_slice(args);
    node.exec(pod, &all);
}

pub const GET: &str = "import sys,urllib.request\nfor _ in range(int(sys.argv[2])):\n    urllib.request.urlopen(sys.argv[1],timeout=2).read()";

pub const SCAN: &str = "import socket,sys\nfor p in range(int(sys.argv[2]),int(sys.argv[3])):\n    s=socket.socket();s.settimeout(0.3)\n    try: s.connect((sys.argv[1],p))\n    except OSError: pass\n    s.close()";

/// Alerts as `weir watch --output json` prints them, from a reader thread.
pub fn watch(system: &System) -> (Proc, mpsc::Receiver<serde_json::Value>) {
    let mut child = weir()
        .args(["watch", "--aggregator", &system.url(), "--output", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    (Proc(Some(child)), rx)
}

pub fn collect(rx: &mpsc::Receiver<serde_json::Value>, for_: Duration) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + for_;
    let mut out = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(v) => out.push(v),
            Err(_) => break,
        }
    }
    out
}

pub fn kinds(alerts: &[serde_json::Value]) -> Vec<String> {
    alerts
        .iter()
        .map(|a| a["type"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// One HTTP/1.1 request to 127.0.0.1 (closing the connection); the status and the body.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    s.write_all(request.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    (status, body)
}

/// `weir aggregator` on a snapshot, with a read token, on a free port (returned); stopped when the test ends.
pub fn reading_aggregator(dir: &Path, snapshot: &Path, token: &str) -> (Proc, u16) {
    let port = free_port();
    let token_file = dir.join("read-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let child = weir()
        .args(["aggregator", "--cluster"])
        .arg(snapshot)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(dir.join("data"))
        .arg("--read-token-file")
        .arg(&token_file)
        .args(["--learn", "1h", "--no-alert-lines", "--checkpoint", "500ms"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let proc = Proc(Some(child));
    wait_for(&format!("http://127.0.0.1:{port}/readyz"));
    (proc, port)
}

/// Sends flow records (JSON lines) to the aggregator as batch `seq` of one agent run.
pub fn ingest(port: u16, seq: u64, lines: &[u8]) {
    let seq = seq.to_string();
    let (status, body) = http(
        port,
        "POST",
        "/api/v1/ingest",
        &[
            ("x-weir-node", "node-a"),
            ("x-weir-epoch", "demo"),
            ("x-weir-seq", &seq),
            ("content-type", "application/x-ndjson"),
        ],
        lines,
    );
    assert_eq!(status, 200, "{body}");
}

/// An aggregator holding a big cluster's traffic: the benchmark cluster (20 namespaces × 10 Deployments × 10
/// pods, 200 Services and NetworkPolicies) and `flows` flows between its pods, sent through the ingest API.
pub fn scale_aggregator(dir: &Path, flows: u64, token: &str) -> (Proc, u16) {
    let cluster = weir_synth::synthetic_cluster_with(20, 10, 10, 200, true, |i| {
        weir_synth::bench_pod_address(i as u64)
    });
    let snapshot = dir.join("bench-cluster.json");
    std::fs::write(&snapshot, cluster.json).unwrap();
    let capture = weir_synth::bench_mix(flows * 10, flows, 42);
    let pcap = dir.join("bench.pcap");
    let out = std::io::BufWriter::new(std::fs::File::create(&pcap).unwrap());
    weir_synth::write_pcap(
        out,
        capture.link,
        &capture.packets,
        weir_synth::PcapOptions::default(),
    )
    .unwrap();
    let lines = weir()
        .arg("flows")
        .arg(&pcap)
        .args(["--format", "jsonl"])
        .output()
        .unwrap();
    assert!(lines.status.success());
    let (proc, port) = reading_aggregator(dir, &snapshot, token);
    ingest(port, 1, &lines.stdout);
    (proc, port)
}

//! End to end on a real "node": pods in network namespaces, `weir agent` capturing their veths, `weir
//! aggregator` judging against a snapshot, `weir watch` tailing the alert stream. Real traffic, real HTTP.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::netns::{Node, available};

/// A child process killed (and reaped) when the test ends, however it ends.
struct Proc(Option<Child>);

impl Proc {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A scratch directory removed at the end.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

/// The snapshot: frontend, api and db in `shop`, ingress default-deny, frontend may reach api:8080, only api
/// may reach db:5432.
fn snapshot_yaml(node: &Node) -> String {
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

struct System {
    dir: PathBuf,
    port: u16,
    snapshot: PathBuf,
    token: PathBuf,
}

impl System {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn aggregator(&self) -> Proc {
        let child = weir()
            .args(["aggregator", "--cluster"])
            .arg(&self.snapshot)
            .args(["--listen", &format!("127.0.0.1:{}", self.port), "--data"])
            .arg(self.dir.join("data"))
            .arg("--token-file")
            .arg(&self.token)
            .args(["--learn", "1h", "--no-alert-lines", "--checkpoint", "500ms"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let proc = Proc(Some(child));
        wait_for(&format!("{}/readyz", self.url()));
        proc
    }

    fn get(&self, path: &str) -> serde_json::Value {
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

fn wait_for(url: &str) {
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

fn setup(tag: &str, subnet: u8) -> (Node, System, Scratch) {
    assert_eq!(subnet, 7, "the snapshot's podCIDR is 10.251.7.0/24");
    let node = Node::new(tag, subnet, 3);
    node.static_neighbours();
    let dir = std::env::temp_dir().join(format!("weir-e2e-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let snapshot = dir.join("cluster.yaml");
    std::fs::write(&snapshot, snapshot_yaml(&node)).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "s3cret-agent-token\n").unwrap();
    let system = System {
        dir: dir.clone(),
        port: free_port(),
        snapshot,
        token,
    };
    (node, system, Scratch(dir))
}

fn agent(system: &System, node: &Node) -> Proc {
    let pattern = format!(
        "{}*",
        &node.pods[0].host_veth[..node.pods[0].host_veth.len() - 1]
    );
    let child = weir()
        .args([
            "agent",
            "--aggregator",
            &system.url(),
            "--node",
            "node-e",
            "-i",
            &pattern,
        ])
        .arg("--token-file")
        .arg(&system.token)
        .args([
            "--listen",
            "none",
            "--active-timeout",
            "1s",
            "--flush",
            "200ms",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Proc(Some(child))
}

/// An HTTP server in a pod.
fn serve(node: &Node, pod: usize, port: u16) -> Proc {
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
fn py(node: &Node, pod: usize, code: &str, args: &[&str]) {
    let mut all = vec!["python3", "-c", code];
    all.extend_from_slice(args);
    node.exec(pod, &all);
}

const GET: &str = "import sys,urllib.request\nfor _ in range(int(sys.argv[2])):\n    urllib.request.urlopen(sys.argv[1],timeout=2).read()";

const SCAN: &str = "import socket,sys\nfor p in range(int(sys.argv[2]),int(sys.argv[3])):\n    s=socket.socket();s.settimeout(0.3)\n    try: s.connect((sys.argv[1],p))\n    except OSError: pass\n    s.close()";

/// Alerts as `weir watch --output json` prints them, from a reader thread.
fn watch(system: &System) -> (Proc, mpsc::Receiver<serde_json::Value>) {
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

fn collect(rx: &mpsc::Receiver<serde_json::Value>, for_: Duration) -> Vec<serde_json::Value> {
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

fn kinds(alerts: &[serde_json::Value]) -> Vec<String> {
    alerts
        .iter()
        .map(|a| a["type"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn allowed_traffic_is_quiet_denied_traffic_and_a_scan_raise_alerts() {
    if !available() {
        eprintln!("skipped: needs root and iproute2");
        return;
    }
    let (node, system, _scratch) = setup("s", 7);
    let _aggregator = system.aggregator();
    let (_watch, alerts) = watch(&system);
    let mut agent = agent(&system, &node);
    let _api = serve(&node, 1, 8080);
    let _db = serve(&node, 2, 5432);
    std::thread::sleep(Duration::from_millis(1500));
    let api = format!("http://{}:8080/", node.pods[1].ip);
    let db = format!("http://{}:5432/", node.pods[2].ip);

    // Allowed: frontend -> api:8080. Nothing is raised.
    py(&node, 0, GET, &[&api, "3"]);
    let quiet = collect(&alerts, Duration::from_secs(4));
    assert!(quiet.is_empty(), "allowed traffic raised {quiet:#?}");

    // Denied: frontend -> db:5432. Nothing enforces policy here, so it is delivered as well.
    py(&node, 0, GET, &[&db, "1"]);
    let raised = collect(&alerts, Duration::from_secs(4));
    let violation = raised
        .iter()
        .find(|a| a["type"] == "policy-violation")
        .unwrap_or_else(|| panic!("no policy-violation in {raised:#?}"));
    assert_eq!(violation["source"]["name"], "Pod/frontend");
    assert_eq!(violation["destination"]["name"], "Pod/db");
    assert_eq!(violation["port"], 5432);
    assert!(
        violation["policies"]
            .as_array()
            .unwrap()
            .contains(&"ingress shop/db".into()),
        "{violation:#}"
    );
    assert!(
        kinds(&raised).contains(&"enforcement-gap".to_owned()),
        "{raised:#?}"
    );

    // A scan of 40 closed ports of api: one scan alert, not forty.
    py(
        &node,
        0,
        SCAN,
        &[&node.pods[1].ip.to_string(), "20000", "20040"],
    );
    let scan = collect(&alerts, Duration::from_secs(5));
    let scans: Vec<_> = scan.iter().filter(|a| a["type"] == "scan").collect();
    assert_eq!(scans.len(), 1, "{scan:#?}");
    assert_eq!(scans[0]["source"]["name"], "Pod/frontend");
    assert!(scans[0]["evidence"]["targets"].as_u64().unwrap() >= 20);
    assert!(
        scan.iter()
            .filter(|a| a["type"] == "policy-violation")
            .count()
            <= 2,
        "the scan flooded: {scan:#?}"
    );

    // The API agrees: the denied edge, the allowed one, and the agent's counters.
    let edges = system.get("/api/v1/edges?namespace=shop");
    let edges = edges["edges"].as_array().unwrap();
    let edge = |dst: &str, port: u64| {
        edges
            .iter()
            .find(|e| e["key"]["dst"]["name"] == dst && e["key"]["port"] == port)
            .unwrap_or_else(|| panic!("no edge to {dst}:{port} in {edges:#?}"))
    };
    assert_eq!(edge("Pod/api", 8080)["verdict"], "allowed");
    assert_eq!(edge("Pod/api", 8080)["flows"], 3);
    assert_eq!(edge("Pod/db", 5432)["verdict"], "denied");
    assert_eq!(edge("Pod/db", 5432)["enforcement_gaps"], 1);
    let status = system.get("/api/v1/status");
    assert_eq!(status["agents"][0]["node"], "node-e");
    let metrics = Command::new("python3")
        .args([
            "-c",
            "import sys,urllib.request;print(urllib.request.urlopen(sys.argv[1]).read().decode())",
            &format!("{}/metrics", system.url()),
        ])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains("weir_alerts_total{type=\"scan\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("weir_agent_dropped_total{node=\"node-e\",reason=\"kernel\"} 0"),
        "{metrics}"
    );

    // Agents without the token are refused.
    let refused = Command::new("python3")
        .args(["-c", "import sys,urllib.request\ntry:\n urllib.request.urlopen(urllib.request.Request(sys.argv[1],data=b'',headers={'x-weir-node':'x','x-weir-epoch':'1'}))\nexcept urllib.error.HTTPError as e: print(e.code)", &format!("{}/api/v1/ingest", system.url())])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&refused.stdout).trim(), "401");
    let _ = Command::new("kill")
        .args(["-INT", &agent.child().id().to_string()])
        .status();
    let _ = agent.child().wait();
}

fn agent_summary(stderr: &str) -> (u64, u64, u64) {
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

#[test]
fn an_aggregator_killed_mid_traffic_loses_no_flow() {
    if !available() {
        eprintln!("skipped: needs root and iproute2");
        return;
    }
    let (node, system, _scratch) = setup("k", 7);
    let mut aggregator = system.aggregator();
    let mut agent = agent(&system, &node);
    let _api = serve(&node, 1, 8080);
    std::thread::sleep(Duration::from_millis(1500));
    let api = format!("http://{}:8080/", node.pods[1].ip);
    // Steady traffic on a thread: 60 connections over about six seconds.
    let traffic = {
        let netns = node.pods[0].netns.clone();
        let api = api.clone();
        std::thread::spawn(move || {
            for _ in 0..60 {
                let _ = Command::new("ip")
                    .args(["netns", "exec", &netns, "python3", "-c", GET, &api, "1"])
                    .status();
                std::thread::sleep(Duration::from_millis(60));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    // SIGKILL: no last checkpoint. Batches it applied but had not stored are still held by the agent.
    aggregator.child().kill().unwrap();
    aggregator.child().wait().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let _aggregator = system.aggregator();
    traffic.join().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // The agent flushes its flow tables on SIGINT and waits until everything is acknowledged.
    let _ = Command::new("kill")
        .args(["-INT", &agent.child().id().to_string()])
        .status();
    let child = agent.0.take().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (made, acked, unacked) = agent_summary(&stderr);
    assert_eq!(unacked, 0, "{stderr}");
    assert_eq!(made, acked, "{stderr}");
    assert!(
        stderr.contains("unreachable"),
        "the agent never noticed the restart: {stderr}"
    );
    std::thread::sleep(Duration::from_millis(800));
    let status = system.get("/api/v1/status");
    // Exactly once: every record the agent made was applied once, across the restart.
    assert_eq!(status["totals"]["records"], made, "{status:#}");
    let edges = system.get("/api/v1/edges?namespace=shop");
    let to_api = edges["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"]["dst"]["name"] == "Pod/api" && e["key"]["port"] == 8080)
        .cloned()
        .unwrap();
    // No connection is missing (one whose two views straddle the restart may be counted twice: the join
    // state is not stored).
    assert!(to_api["flows"].as_u64().unwrap() >= 60, "{to_api:#}");
}

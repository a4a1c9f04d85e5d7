//! Traffic shaped like real clusters rather than the demo's: kubelet probes from a node's own address inside
//! the pod range (kubenet/bridge, Flannel, Calico, Cilium), and Services reached through a LoadBalancer,
//! a NodePort or an external IP. Flow records and snapshots are written by the tests, judged by `weir analyze`.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::system::Scratch;
use serde_json::{Value, json};

fn scratch(tag: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("weir-shapes-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

/// A TCP connection's flow record, answered.
fn tcp(src: &str, sport: u16, dst: &str, dport: u16, at: &str) -> Value {
    let id = weir_model::community_id_v1(
        src.parse().unwrap(),
        dst.parse().unwrap(),
        weir_model::Protocol::TCP,
        sport,
        dport,
    );
    json!({"community_id": id, "src": src, "src_port": sport, "dst": dst, "dst_port": dport, "proto": "TCP",
           "packets": 6, "bytes": 400, "reply_packets": 4, "reply_bytes": 900,
           "start": format!("2026-11-22T10:00:{at}Z"), "end": format!("2026-11-22T10:00:{at}Z"),
           "tcp_flags": "FSPA", "reply_tcp_flags": "FSPA", "orientation": "observed"})
}

fn write_records(dir: &Path, records: &[Value]) -> PathBuf {
    let path = dir.join("flows.jsonl");
    let lines: Vec<String> = records.iter().map(Value::to_string).collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn analyze(snapshot: &Path, flows: &Path, format: &str) -> String {
    common::weir(&[
        "analyze",
        "--cluster",
        snapshot.to_str().unwrap(),
        "--flows",
        flows.to_str().unwrap(),
        "--format",
        format,
    ])
}

/// Two nodes on the kubenet model (the bridge is the first address of each podCIDR), one on Calico, one on
/// Cilium; a web pod on each, isolated for ingress.
const PROBED: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: web}}
- apiVersion: v1
  kind: Node
  metadata: {name: node-a}
  spec: {podCIDR: 10.244.1.0/24}
  status: {addresses: [{type: InternalIP, address: 192.168.0.1}]}
- apiVersion: v1
  kind: Node
  metadata: {name: node-b}
  spec: {podCIDR: 10.244.2.0/24}
  status: {addresses: [{type: InternalIP, address: 192.168.0.2}]}
- apiVersion: v1
  kind: Node
  metadata: {name: node-c, annotations: {projectcalico.org/IPv4VXLANTunnelAddr: 10.50.3.64}}
  status: {addresses: [{type: InternalIP, address: 192.168.0.3}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: web-a, namespace: web, labels: {app: web}}
  spec: {nodeName: node-a, containers: [{name: c, ports: [{containerPort: 8080}]}]}
  status: {phase: Running, podIP: 10.244.1.10}
- apiVersion: v1
  kind: Pod
  metadata: {name: web-c, namespace: web, labels: {app: web}}
  spec: {nodeName: node-c, containers: [{name: c, ports: [{containerPort: 8080}]}]}
  status: {phase: Running, podIP: 10.50.3.70}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: deny-ingress, namespace: web}
  spec: {podSelector: {}, policyTypes: [Ingress]}
"#;

#[test]
fn kubelet_probes_from_a_nodes_own_bridge_or_tunnel_address_are_the_nodes_and_allowed() {
    let dir = scratch("probes");
    let snapshot = dir.0.join("cluster.yaml");
    std::fs::write(&snapshot, PROBED).unwrap();
    let flows = write_records(
        &dir.0,
        &[
            // node-a's bridge probes its own pod, node-c's Calico tunnel address its own pod: allowed.
            tcp("10.244.1.1", 40000, "10.244.1.10", 8080, "01"),
            tcp("10.50.3.64", 40001, "10.50.3.70", 8080, "02"),
            // node-b's bridge reaching node-a's pod is another node's traffic: the policy denies it.
            tcp("10.244.2.1", 40002, "10.244.1.10", 8080, "03"),
            // Any other address of the range is an unknown pod, never guessed to be a node.
            tcp("10.244.2.9", 40003, "10.244.1.10", 8080, "04"),
        ],
    );
    let out: Value = serde_json::from_str(&analyze(&snapshot, &flows, "json")).unwrap();
    let flows = out["flows"].as_array().unwrap();
    let by_source = |ip: &str| {
        flows
            .iter()
            .find(|f| f["src"] == ip)
            .unwrap_or_else(|| panic!("no flow from {ip}: {flows:#?}"))
    };
    let probe = by_source("10.244.1.1");
    assert_eq!(probe["verdict"], "allowed", "{probe:#}");
    assert_eq!(probe["source"]["kind"], "node");
    assert_eq!(probe["source"]["name"], "node-a");
    assert_eq!(
        probe["source"]["address"],
        "the first address of its podCIDR 10.244.1.0/24, held by no pod (the node's bridge, cbr0 or cni0)"
    );
    let calico = by_source("10.50.3.64");
    assert_eq!(calico["verdict"], "allowed", "{calico:#}");
    assert_eq!(
        calico["source"]["address"],
        "its annotation projectcalico.org/IPv4VXLANTunnelAddr"
    );
    let other = by_source("10.244.2.1");
    assert_eq!(other["source"]["name"], "node-b");
    assert_eq!(other["verdict"], "denied", "{other:#}");
    let unknown = by_source("10.244.2.9");
    assert_eq!(unknown["source"]["kind"], "unknown");

    let inferred = out["summary"]["inferred_node_addresses"]
        .as_array()
        .unwrap();
    let listed: Vec<(&str, &str)> = inferred
        .iter()
        .map(|a| (a["ip"].as_str().unwrap(), a["node"].as_str().unwrap()))
        .collect();
    assert_eq!(
        listed,
        [
            ("10.50.3.64", "node-c"),
            ("10.244.1.1", "node-a"),
            ("10.244.2.1", "node-b")
        ]
    );
    // The text report says which rule made each address a node's.
    let text = analyze(&snapshot, &dir.0.join("flows.jsonl"), "text");
    assert!(text.contains("NODE ADDRESSES WEIR INFERRED"), "{text}");
    assert!(
        text.contains("its annotation projectcalico.org/IPv4VXLANTunnelAddr"),
        "{text}"
    );
}

/// A web shop exposed three ways (a LoadBalancer, an external IP, a node port), and its traffic: both views
/// of a load-balanced connection, a node-port connection the node masqueraded, an external-IP connection from
/// a client the policy does not admit, and the load balancer's address on a port the Service lacks.
fn exposed() -> (String, Vec<Value>) {
    let fixtures = common::root().join("tests/fixtures");
    let cluster = std::fs::read_to_string(fixtures.join("exposed.cluster.yaml")).unwrap();
    let records = std::fs::read_to_string(fixtures.join("exposed.flows.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (cluster, records)
}

#[test]
fn load_balancer_external_ip_and_node_port_connections_are_the_services() {
    let dir = scratch("exposed");
    let (cluster, records) = exposed();
    let snapshot = dir.0.join("cluster.yaml");
    std::fs::write(&snapshot, cluster).unwrap();
    let flows = write_records(&dir.0, &records);
    let out: Value = serde_json::from_str(&analyze(&snapshot, &flows, "json")).unwrap();
    assert_eq!(out["summary"]["dnat_joined"], 2, "{:#}", out["summary"]);
    let list = out["flows"].as_array().unwrap();
    assert_eq!(list.len(), 4, "{list:#?}");
    let from = |ip: &str| list.iter().find(|f| f["src"] == ip).unwrap();

    let lb = from("192.0.2.10");
    assert_eq!(lb["destination"]["kind"], "pod", "{lb:#}");
    assert_eq!(lb["destination"]["name"], "web-1");
    assert_eq!(
        lb["service"],
        json!({"namespace": "shop", "name": "web", "port": 80, "target_port": 8080, "via": "load-balancer"})
    );
    assert_eq!(lb["verdict"], "allowed", "{lb:#}");

    let node_port = from("192.0.2.11");
    assert_eq!(node_port["destination"]["name"], "web-1", "{node_port:#}");
    assert_eq!(node_port["service"]["via"], "node-port");
    assert_eq!(node_port["service"]["node_port"], 30080);
    assert_eq!(node_port["service"]["masqueraded_as"], "192.168.0.1");
    // Judged on the real client, which the policy admits.
    assert_eq!(node_port["verdict"], "allowed", "{node_port:#}");

    let external = from("198.18.0.5");
    assert_eq!(external["service"]["via"], "external-ip");
    assert_eq!(external["destination"]["name"], "web-1");
    assert_eq!(external["verdict"], "denied", "{external:#}");

    let other = from("198.18.0.6");
    assert!(other.get("service").is_none(), "{other:#}");
    assert_eq!(other["destination"]["kind"], "external");
}

#[test]
fn suggest_and_diff_take_the_real_client_and_the_target_port() {
    let dir = scratch("exposed-suggest");
    let snapshot = dir.0.join("cluster.yaml");
    // The same cluster without the web policy: what would weir suggest from the traffic?
    let (cluster, records) = exposed();
    let open = &cluster[..cluster.find("- apiVersion: networking.k8s.io/v1").unwrap()];
    std::fs::write(&snapshot, open).unwrap();
    let flows = write_records(&dir.0, &records);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["suggest", "--cluster", snapshot.to_str().unwrap()])
        .args(["--flows", flows.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let yaml = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&yaml).unwrap();
    let web = docs
        .iter()
        .find(|d| d["metadata"]["name"] == "weir-web-1")
        .unwrap_or_else(|| panic!("{yaml}"));
    let ingress = web["spec"]["ingress"].as_array().unwrap();
    let peers: Vec<&str> = ingress
        .iter()
        .flat_map(|r| r["from"].as_array().unwrap())
        .filter_map(|p| p["ipBlock"]["cidr"].as_str())
        .collect();
    // The real clients (not the node that masqueraded one of them), on the port the pod listens on.
    for client in ["192.0.2.10/32", "192.0.2.11/32", "198.18.0.5/32"] {
        assert!(peers.contains(&client), "{client} missing: {yaml}");
    }
    assert!(!peers.contains(&"192.168.0.1/32"), "{yaml}");
    for rule in ingress {
        for port in rule["ports"].as_array().unwrap() {
            assert!(port["port"] == 8080 || port["port"] == "http", "{yaml}");
        }
    }
    assert!(
        stderr
            .contains("proof: the suggested policies alone allow all 3 observed flows they cover"),
        "{stderr}"
    );

    // With the suggestion in force, no observed flow breaks.
    let suggested = dir.0.join("suggested.yaml");
    std::fs::write(&suggested, &yaml).unwrap();
    let diff = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["diff", "--cluster", snapshot.to_str().unwrap()])
        .args(["--flows", flows.to_str().unwrap()])
        .args([
            "--policies-after",
            suggested.to_str().unwrap(),
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&diff.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&diff.stderr)));
    assert_eq!(diff.status.code(), Some(0), "{report:#}");
    assert_eq!(report["would_break_flows"], 0, "{report:#}");
}

/// The aggregator judges the same records the same way: one connection per pair of views.
#[test]
fn the_aggregator_ties_exposed_connections_to_the_service() {
    let dir = scratch("exposed-live");
    let (cluster, records) = exposed();
    let snapshot = dir.0.join("cluster.yaml");
    std::fs::write(&snapshot, cluster).unwrap();
    let (_aggregator, port) =
        common::system::reading_aggregator(&dir.0, &snapshot, "r3ad-t0ken-of-32-bytes-or-more-x");
    let lines: Vec<String> = records.iter().map(Value::to_string).collect();
    common::system::ingest(port, 1, (lines.join("\n") + "\n").as_bytes());
    let (code, body) = common::system::http(
        port,
        "GET",
        "/api/v1/flows?limit=100",
        &[("authorization", "Bearer r3ad-t0ken-of-32-bytes-or-more-x")],
        b"",
    );
    assert_eq!(code, 200, "{body}");
    let flows: Value = serde_json::from_str(&body).unwrap();
    let list = flows["flows"]
        .as_array()
        .unwrap_or_else(|| panic!("{flows:#}"));
    assert_eq!(list.len(), 4, "{flows:#}");
    let node_port = list
        .iter()
        .find(|f| f["src"] == "192.0.2.11")
        .unwrap_or_else(|| panic!("{flows:#}"));
    assert_eq!(node_port["service"], "shop/web", "{node_port:#}");
    assert_eq!(node_port["dst_pod"], "shop/web-1", "{node_port:#}");
    assert_eq!(node_port["port"], 8080, "{node_port:#}");
    assert_eq!(node_port["verdict"], "allowed", "{node_port:#}");
}

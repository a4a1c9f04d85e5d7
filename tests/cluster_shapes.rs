//! Traffic shaped like real clusters rather than the demo's: kubelet probes from a node's own address inside
//! the pod range (kubenet/bridge, Flannel, Calico, Cilium), and Services reached through a LoadBalancer,
//! a NodePort or an external IP. Flow records and snapshots are written by the tests, judged by `weir analyze`.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

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

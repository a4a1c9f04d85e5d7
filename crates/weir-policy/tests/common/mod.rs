//! The test cluster of the truth tables: namespaces x, y, z, each with pods a, b, c (the layout the upstream
//! network policy conformance tests and policy-assistant use), two nodes, and a hostNetwork pod.

#![allow(dead_code)]

use std::fmt::Write;
use std::path::Path;
use std::sync::Arc;

use weir_cluster::{ClusterState, SnapshotLoader};
use weir_model::Protocol;
use weir_policy::{PolicySet, ProbePort};

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];

/// Pod `ns/p` has address 10.244.<ns index + 1>.<pod index + 1>; x pods run on node-1, the rest on node-2.
pub fn pod_ip(ns: usize, pod: usize) -> String {
    format!("10.244.{}.{}", ns + 1, pod + 1)
}

pub const NODE_1: &str = "192.168.0.1";
pub const NODE_2: &str = "192.168.0.2";

pub fn base_yaml() -> String {
    let mut out = String::new();
    for (ni, ns) in NAMESPACES.iter().enumerate() {
        writeln!(
            out,
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    ns: {ns}\n    kubernetes.io/metadata.name: {ns}"
        )
        .unwrap();
        for (pi, pod) in PODS.iter().enumerate() {
            let node = if ni == 0 { "node-1" } else { "node-2" };
            writeln!(
                out,
                "---
apiVersion: v1
kind: Pod
metadata:
  name: {pod}
  namespace: {ns}
  labels:
    pod: {pod}
spec:
  nodeName: {node}
  containers:
  - name: cont-80-tcp
    image: agnhost
    ports:
    - {{name: serve-80-tcp, containerPort: 80, protocol: TCP}}
    - {{name: serve-81-tcp, containerPort: 81}}
    - {{name: serve-80-udp, containerPort: 80, protocol: UDP}}
    - {{name: serve-81-udp, containerPort: 81, protocol: UDP}}
status:
  phase: Running
  podIP: {ip}
  podIPs:
  - ip: {ip}",
                ip = pod_ip(ni, pi)
            )
            .unwrap();
        }
    }
    for (name, ip) in [("node-1", NODE_1), ("node-2", NODE_2)] {
        writeln!(
            out,
            "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\nstatus:\n  addresses:\n  - {{type: InternalIP, address: {ip}}}\n  - {{type: Hostname, address: {name}}}"
        )
        .unwrap();
    }
    out
}

/// The base cluster plus extra YAML documents (policies, usually).
pub fn cluster(extra: &str) -> Arc<ClusterState> {
    let text = format!("{}\n---\n{extra}", base_yaml());
    let mut loader = SnapshotLoader::default();
    loader
        .add_bytes(Path::new("test.yaml"), text.as_bytes())
        .unwrap();
    Arc::new(loader.finish().0)
}

pub fn policy_set(extra: &str) -> PolicySet {
    PolicySet::new(cluster(extra)).unwrap()
}

/// The 9×9 truth table of x/y/z × a/b/c on a probe: one row per source, `.` allowed, `X` denied.
pub fn table(set: &PolicySet, port: ProbePort, protocol: Protocol) -> String {
    let cluster = set.cluster();
    let pods: Vec<_> = NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| cluster.find_pod(ns, p).unwrap()))
        .collect();
    let matrix = set.reach_matrix(&pods, &port, protocol);
    let mut out = String::new();
    for i in 0..pods.len() {
        let from = cluster.pod(pods[i]);
        write!(out, "{}/{} ", from.namespace, from.name).unwrap();
        for j in 0..pods.len() {
            let (e, n) = matrix.get(i, j);
            out.push(if e && n { '.' } else { 'X' });
        }
        out.push('\n');
    }
    out
}

pub fn tcp(port: u16) -> (ProbePort, Protocol) {
    (ProbePort::Number(port), Protocol::TCP)
}

/// Builds an expected table from rows without their labels.
pub fn expect(rows: [&str; 9]) -> String {
    let mut out = String::new();
    let mut i = 0;
    for ns in NAMESPACES {
        for p in PODS {
            writeln!(out, "{ns}/{p} {}", rows[i].replace(' ', "")).unwrap();
            i += 1;
        }
    }
    out
}

//! The suggestion's promise, for random clusters and flows: with only the suggested policies in force, the
//! engine allows every observed flow the suggestion covers.

#![allow(clippy::expect_used)] // test code: a panic is a test failure

use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{Value, json};
use weir_analysis::{Analyzer, SuggestOptions, prove, suggest};
use weir_cluster::{ClusterState, SnapshotLoader};
use weir_model::FlowRecord;
use weir_policy::PolicySet;

/// A workload: namespace, kind, label scheme, replicas, port scheme, whether a Service fronts it.
type WorkloadSpec = (usize, usize, usize, usize, usize, bool);
/// A flow: source, destination (indexes into the candidate lists), port choice, UDP, answered.
type FlowSpec = (usize, usize, usize, bool, bool);

const NAMESPACES: [&str; 3] = ["shop", "payments", "kube-system"];

fn cluster(workloads: &[WorkloadSpec], dns: bool) -> (Value, Vec<(String, u16)>, Vec<String>) {
    let mut items = vec![];
    for ns in NAMESPACES {
        items.push(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}}));
    }
    for (n, ip) in ["172.18.0.2", "172.18.0.3"].iter().enumerate() {
        items.push(
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("node-{n}")},
            "spec": {"podCIDRs": [format!("10.244.{n}.0/24")]},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}),
        );
    }
    // (address, port) destinations: pods on their ports, Services on theirs.
    let mut targets: Vec<(String, u16)> = vec![];
    let mut pod_ips: Vec<String> = vec![];
    let mut next = 10;
    let mut specs: Vec<WorkloadSpec> = workloads.to_vec();
    if dns {
        specs.push((2, 0, 4, 2, 3, true));
    }
    for (w, &(ns, kind, labels, replicas, ports, service)) in specs.iter().enumerate() {
        let ns = NAMESPACES[ns % NAMESPACES.len()];
        let name = if labels == 4 {
            "coredns".to_owned()
        } else {
            format!("app{w}")
        };
        let mut base = match labels % 5 {
            0 => json!({"app": name}),
            1 => json!({"app.kubernetes.io/name": name, "app.kubernetes.io/instance": "x"}),
            2 => json!({"app": "shared"}),
            3 => json!({}),
            _ => json!({"k8s-app": "kube-dns"}),
        };
        let (port_json, port, proto) = match ports % 4 {
            0 => (
                json!([{"name": "http", "containerPort": 8080}]),
                8080u16,
                "TCP",
            ),
            1 => (json!([{"containerPort": 9000}]), 9000, "TCP"),
            2 => (
                json!([{"name": "metrics", "containerPort": 9100}, {"name": "http", "containerPort": 8080}]),
                8080,
                "TCP",
            ),
            _ => (
                json!([{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                         {"name": "dns-tcp", "containerPort": 53}]),
                53,
                "UDP",
            ),
        };
        let mut selector = base.clone();
        for r in 0..replicas.max(1) {
            let ip = format!("10.244.{}.{next}", r % 2);
            next += 1;
            let (pod_name, owner) = match kind % 3 {
                0 => {
                    base["pod-template-hash"] = json!("5d9f7c");
                    (
                        format!("{name}-5d9f7c-{r}x"),
                        json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                        "name": format!("{name}-5d9f7c"), "controller": true, "uid": "u"}]),
                    )
                }
                1 => {
                    base["controller-revision-hash"] = json!(format!("{name}-77"));
                    base["statefulset.kubernetes.io/pod-name"] = json!(format!("{name}-{r}"));
                    (
                        format!("{name}-{r}"),
                        json!([{"apiVersion": "apps/v1", "kind": "StatefulSet",
                        "name": name, "controller": true, "uid": "u"}]),
                    )
                }
                _ => (format!("{name}-{r}"), json!([])),
            };
            items.push(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name, "namespace": ns, "labels": base, "ownerReferences": owner},
                "spec": {"nodeName": format!("node-{}", r % 2), "containers": [{"name": "c", "image": "i", "ports": port_json}]},
                "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}));
            targets.push((ip.clone(), port));
            pod_ips.push(ip);
        }
        if service && selector.as_object().is_some_and(|o| !o.is_empty()) {
            let cluster_ip = format!("10.96.0.{}", w + 10);
            let (svc_port, target) = if proto == "UDP" {
                (53, json!("dns"))
            } else {
                (
                    80,
                    if ports % 2 == 0 {
                        json!("http")
                    } else {
                        json!(port)
                    },
                )
            };
            if labels == 4 {
                selector = json!({"k8s-app": "kube-dns"});
            }
            let svc_name = if labels == 4 {
                "kube-dns".to_owned()
            } else {
                name.clone()
            };
            items.push(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": svc_name, "namespace": ns},
                "spec": {"clusterIP": cluster_ip, "selector": selector,
                    "ports": [{"name": "p", "port": svc_port, "targetPort": target, "protocol": proto}]}}));
            targets.push((cluster_ip, svc_port));
        }
    }
    targets.push(("192.0.2.7".to_owned(), 443));
    targets.push(("172.18.0.3".to_owned(), 10250));
    let mut sources = pod_ips;
    sources.push("198.51.100.9".to_owned());
    sources.push("172.18.0.2".to_owned());
    (
        json!({"apiVersion": "v1", "kind": "List", "items": items}),
        targets,
        sources,
    )
}

fn record(src: &str, dst: &str, port: u16, udp: bool, answered: bool, i: usize) -> FlowRecord {
    let proto = if udp || port == 53 { "UDP" } else { "TCP" };
    let (flags, reply_flags) = if proto == "TCP" {
        ("SPA", "SA")
    } else {
        ("", "")
    };
    let start = format!("2026-11-22T10:00:{:02}.000000Z", i % 50);
    let end = format!("2026-11-22T10:00:{:02}.500000Z", i % 50);
    serde_json::from_value(json!({
        "src": src, "src_port": 40000 + i, "dst": dst, "dst_port": port, "proto": proto,
        "packets": 3, "bytes": 180, "reply_packets": u64::from(answered) * 2, "reply_bytes": u64::from(answered) * 120,
        "start": start, "end": end, "tcp_flags": flags, "reply_tcp_flags": if answered { reply_flags } else { "" },
        "orientation": "observed", "community_id": "1:x"
    }))
    .expect("a flow record")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_covered_flow_is_allowed_by_the_suggestion(
        workloads in prop::collection::vec((0usize..3, 0usize..3, 0usize..4, 1usize..4, 0usize..4, any::<bool>()), 1..7),
        dns in any::<bool>(),
        flows in prop::collection::vec((any::<usize>(), any::<usize>(), 0usize..3, any::<bool>(), any::<bool>()), 1..40),
        include_failed in any::<bool>(),
        all_namespaces in any::<bool>(),
    ) {
        let (list, targets, sources) = cluster(&workloads, dns);
        let mut loader = SnapshotLoader::default();
        loader.add_bytes(std::path::Path::new("random.json"), list.to_string().as_bytes()).expect("the cluster loads");
        let (state, _): (ClusterState, _) = loader.finish();
        let set = PolicySet::new(Arc::new(state)).expect("no policies to compile");
        let records: Vec<FlowRecord> = flows
            .iter()
            .enumerate()
            .map(|(i, &(s, d, p, udp, answered)): (usize, &FlowSpec)| {
                let src = &sources[s % sources.len()];
                let (dst, port) = &targets[d % targets.len()];
                let port = [*port, *port, 5432][p];
                record(src, dst, port, udp && port != 53, answered, i)
            })
            .filter(|r| r.src != r.dst)
            .collect();
        let options = SuggestOptions {
            namespaces: if all_namespaces { NAMESPACES.iter().map(|s| s.to_string()).collect() } else { vec![] },
            include_failed,
            ..SuggestOptions::default()
        };
        let mut sorted = records.clone();
        sorted.sort_by_key(|r| r.sort_key());
        let analysis = Analyzer::new(&set, &[]).analyze(sorted);
        let suggestion = suggest(&set, &analysis.flows, &options);
        let proof = prove(&set, &suggestion, &records, &options).expect("the suggestion compiles");
        prop_assert!(proof.denied.is_empty(), "denied: {:?}\n{}", proof.denied, weir_analysis::suggestion_yaml(&suggestion));
        prop_assert_eq!(proof.allowed, proof.covered);
        prop_assert!(proof.observed_tuples <= proof.allowed_tuples);
        // The YAML people apply says exactly what the engine proved: read back, it is the same objects.
        let yaml = weir_analysis::suggestion_yaml(&suggestion);
        let mut loader = weir_cluster::SnapshotLoader::default();
        if !yaml.is_empty() {
            loader.add_bytes(std::path::Path::new("suggested.yaml"), yaml.as_bytes()).expect("the YAML loads");
        }
        let read_back: Vec<_> = loader.finish().0.policies().iter().map(|p| p.policy.clone()).collect();
        let built: Vec<_> = weir_analysis::policy_objects(&suggestion).into_iter().map(|p| p.policy).collect();
        prop_assert_eq!(read_back, built);
    }
}

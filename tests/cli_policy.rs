//! `weir reach` and `weir explain` on the bundled snapshot: golden outputs, the exact JSON shape, snapshot
//! forms that must give the same answer, and errors on bad input.
//!
//! Run with `WEIR_BLESS=1` to rewrite the expected files after an intended change, then review the diff.

mod common;

use std::process::Command;

use common::{check_golden, root, weir};

const SNAPSHOT: &str = "pcaps/pod-traffic.cluster.yaml";

fn snapshot() -> String {
    root().join(SNAPSHOT).to_string_lossy().into_owned()
}

fn golden(name: &str) -> std::path::PathBuf {
    root().join("pcaps/expected").join(name)
}

#[test]
fn reach_table_of_the_bundled_snapshot() {
    let out = weir(&["reach", "--cluster", &snapshot()]);
    check_golden(&golden("pod-traffic.cluster.reach.txt"), &out);
}

#[test]
fn reach_json_has_every_ordered_pair_in_the_documented_shape() {
    let out = weir(&[
        "reach",
        "--cluster",
        &snapshot(),
        "--probe",
        "8080/tcp",
        "--probe",
        "dns/UDP",
        "--format",
        "json",
    ]);
    let value: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let probes = value["probes"]
        .as_array()
        .unwrap_or_else(|| panic!("{value}"));
    assert_eq!(probes.len(), 2);
    assert_eq!(
        (probes[0]["port"].as_str(), probes[0]["protocol"].as_str()),
        (Some("8080"), Some("TCP"))
    );
    assert_eq!(
        (probes[1]["port"].as_str(), probes[1]["protocol"].as_str()),
        (Some("dns"), Some("UDP"))
    );
    let results = probes[0]["results"]
        .as_array()
        .unwrap_or_else(|| panic!("{value}"));
    assert_eq!(results.len(), 7 * 7, "7 live pods, self pairs included");
    // Key order is part of the format.
    assert!(
        out.contains(r#"{"from":"shop/frontend-7c9d8f6b5-x2x9k","to":"shop/cart-66b7f9d4c8-mq4tn","allowed":true,"egress_allowed":true,"ingress_allowed":true,"egress_tier":"networkpolicy","ingress_tier":"networkpolicy"}"#),
        "{out}"
    );
    assert!(out.contains(
        r#"{"from":"shop/cart-66b7f9d4c8-mq4tn","to":"payments/postgres-0","allowed":false,"egress_allowed":false,"ingress_allowed":false,"egress_tier":"networkpolicy","ingress_tier":"networkpolicy"}"#
    ));
    // The DNS probe: every shop pod may query CoreDNS by its port name.
    let dns = probes[1]["results"]
        .as_array()
        .unwrap_or_else(|| panic!("{value}"));
    let to_coredns_from_shop = dns
        .iter()
        .filter(|r| {
            r["to"]
                .as_str()
                .is_some_and(|t| t.starts_with("kube-system/coredns"))
        })
        .filter(|r| r["from"].as_str().is_some_and(|f| f.starts_with("shop/")));
    assert!(
        to_coredns_from_shop.clone().count() == 3
            && to_coredns_from_shop
                .into_iter()
                .all(|r| r["allowed"] == true)
    );
}

#[test]
fn reach_can_be_limited_to_namespaces() {
    let out = weir(&[
        "reach",
        "--cluster",
        &snapshot(),
        "--probe",
        "6379",
        "--namespace",
        "shop",
    ]);
    check_golden(&golden("pod-traffic.cluster.reach-shop-6379.txt"), &out);
    assert!(
        out.starts_with("6379/TCP: 4 of 9 pod pairs allowed"),
        "{out}"
    );
}

#[test]
fn explain_outputs() {
    let cases: [(&str, &[&str]); 4] = [
        (
            "explain-cart-to-postgres-service.txt",
            &[
                "--from",
                "shop/cart-66b7f9d4c8-mq4tn",
                "--to",
                "svc/payments/postgres",
                "--port",
                "5432",
            ],
        ),
        (
            "explain-frontend-to-cart-named.txt",
            &[
                "--from",
                "10.244.1.10",
                "--to",
                "10.244.2.20",
                "--port",
                "http",
            ],
        ),
        (
            "explain-node-to-cart-metrics.json",
            &[
                "--from",
                "172.18.0.2",
                "--to",
                "shop/cart-66b7f9d4c8-mq4tn",
                "--port",
                "8081/TCP",
                "--format",
                "json",
            ],
        ),
        // A ClusterIP resolves through the Service, like the node's DNAT.
        (
            "explain-frontend-to-dns-clusterip.txt",
            &[
                "--from",
                "shop/frontend-7c9d8f6b5-x2x9k",
                "--to",
                "10.96.0.10",
                "--port",
                "53/udp",
            ],
        ),
    ];
    for (name, args) in cases {
        let snap = snapshot();
        let mut all = vec!["explain", "--cluster", snap.as_str()];
        all.extend_from_slice(args);
        check_golden(&golden(&format!("pod-traffic.cluster.{name}")), &weir(&all));
    }
}

#[test]
fn json_multi_document_and_directory_snapshots_give_the_same_matrix() {
    let text = std::fs::read_to_string(root().join(SNAPSHOT)).unwrap_or_else(|e| panic!("{e}"));
    let list: serde_json::Value = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    let dir = std::env::temp_dir().join(format!("weir-snapshot-forms-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("split")).unwrap_or_else(|e| panic!("{e}"));
    let json_path = dir.join("cluster.json");
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&list).unwrap_or_default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // Multi-document YAML: one document per object (JSON is YAML, so each item is written as a JSON line).
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let multi: String = items.iter().map(|i| format!("---\n{i}\n")).collect();
    let multi_path = dir.join("multi.yaml");
    std::fs::write(&multi_path, multi).unwrap_or_else(|e| panic!("{e}"));
    // A directory with one file per kind.
    for kind in [
        "Namespace",
        "Node",
        "Pod",
        "Service",
        "EndpointSlice",
        "ReplicaSet",
        "Job",
        "NetworkPolicy",
    ] {
        let docs: String = items
            .iter()
            .filter(|i| i["kind"] == kind)
            .map(|i| format!("---\n{i}\n"))
            .collect();
        std::fs::write(dir.join("split").join(format!("{kind}.yml")), docs)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let reference = weir(&["reach", "--cluster", &snapshot(), "--format", "json"]);
    for form in [json_path, multi_path, dir.join("split")] {
        let out = weir(&[
            "reach",
            "--cluster",
            &form.to_string_lossy(),
            "--format",
            "json",
        ]);
        assert!(out == reference, "{} differs", form.display());
    }
    // Two snapshots merge: policies in one file, everything else in the other.
    let merged = weir(&[
        "reach",
        "--cluster",
        &dir.join("split").to_string_lossy(),
        "--cluster",
        &dir.join("split/NetworkPolicy.yml").to_string_lossy(),
        "--format",
        "json",
    ]);
    assert_eq!(merged, reference);
    let _ = std::fs::remove_dir_all(&dir);
}

fn weir_fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running weir: {e}"));
    assert!(!out.status.success(), "weir {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("weir-bad-snapshot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: n}\nspec:\n  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let err = weir_fails(&["reach", "--cluster", &bad.to_string_lossy()]);
    assert!(
        err.contains("bad.yaml: NetworkPolicy n/p: field `spec.ingress[0].from[0].ipBlock.cidr`: \"10.0.0.0/33\" is not a CIDR"),
        "{err}"
    );
    let snap = snapshot();
    let err = weir_fails(&[
        "explain",
        "--cluster",
        &snap,
        "--from",
        "shop/nope",
        "--to",
        "10.244.2.20",
        "--port",
        "80",
    ]);
    assert!(
        err.contains("--from \"shop/nope\": no such pod in the snapshot (did you mean"),
        "{err}"
    );
    let err = weir_fails(&[
        "explain",
        "--cluster",
        &snap,
        "--from",
        "10.244.1.10",
        "--to",
        "svc/shop/cart",
        "--port",
        "9999",
    ]);
    assert!(
        err.contains("Service shop/cart has no port 9999/TCP; it has 80/TCP (http)"),
        "{err}"
    );
    let err = weir_fails(&[
        "explain",
        "--cluster",
        &snap,
        "--from",
        "10.244.1.10",
        "--to",
        "shop/redis-0",
        "--port",
        "http",
    ]);
    assert!(
        err.contains("shop/redis-0 declares no TCP port named \"http\""),
        "{err}"
    );
    let err = weir_fails(&["reach", "--cluster", &snap, "--probe", "80/icmp"]);
    assert!(err.contains("protocol must be TCP, UDP or SCTP"), "{err}");
    let err = weir_fails(&["reach", "--cluster", &snap, "--namespace", "nope"]);
    assert!(
        err.contains("--namespace \"nope\": no such namespace"),
        "{err}"
    );
    let err = weir_fails(&[
        "reach",
        "--cluster",
        &dir.join("missing.yaml").to_string_lossy(),
    ]);
    assert!(err.contains("missing.yaml: No such file"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Cluster-wide policies on the demo cluster (`pcaps/demo.tiers.yaml`): an egress through an Admin Pass to the
/// namespace's NetworkPolicies, an ingress an Admin Accept decides before NetworkPolicy, an Admin Deny to the
/// metadata address, and a Baseline Deny where no NetworkPolicy isolates the pod.
#[test]
fn explain_through_the_tiers() {
    let cases: [(&str, &[&str]); 5] = [
        (
            "demo.tiers.explain-pass.txt",
            &[
                "--from",
                "shop/frontend-5f7c9d8b6-h2x9k",
                "--to",
                "shop/api-6d4b8c7f9-klm2n",
                "--port",
                "8080",
            ],
        ),
        (
            "demo.tiers.explain-pass.json",
            &[
                "--from",
                "shop/frontend-5f7c9d8b6-h2x9k",
                "--to",
                "shop/api-6d4b8c7f9-klm2n",
                "--port",
                "8080",
                "--format",
                "json",
            ],
        ),
        (
            "demo.tiers.explain-admin-accept.txt",
            &[
                "--from",
                "monitoring/prometheus-0",
                "--to",
                "shop/api-6d4b8c7f9-klm2n",
                "--port",
                "9100",
            ],
        ),
        (
            "demo.tiers.explain-admin-deny.txt",
            &[
                "--from",
                "shop/api-6d4b8c7f9-klm2n",
                "--to",
                "169.254.169.254",
                "--port",
                "80",
            ],
        ),
        (
            "demo.tiers.explain-baseline-deny.txt",
            &[
                "--from",
                "shop/frontend-5f7c9d8b6-h2x9k",
                "--to",
                "monitoring/prometheus-0",
                "--port",
                "9090",
            ],
        ),
    ];
    let cluster = root().join("pcaps/demo.cluster.yaml");
    let tiers = root().join("pcaps/demo.tiers.yaml");
    for (name, args) in cases {
        let mut all = vec![
            "explain",
            "--cluster",
            cluster.to_str().unwrap(),
            "--cluster",
            tiers.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        check_golden(&golden(name), &weir(&all));
    }
}

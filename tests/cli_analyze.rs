//! `weir analyze` on the bundled demo: golden reports in every format, the same answers from a Linux cooked
//! (`tcpdump -i any`) capture and from flow records, and the findings the demo was built to contain.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{check_golden, root, weir};
use serde_json::Value;

const CLUSTER: &str = "pcaps/demo.cluster.yaml";

fn analyze(input: &str, format: &str) -> String {
    let root = root();
    let input = root.join(input);
    let cluster = root.join(CLUSTER);
    weir(&[
        "analyze",
        input.to_str().unwrap(),
        "--cluster",
        cluster.to_str().unwrap(),
        "--format",
        format,
    ])
}

/// Paths differ between checkouts; goldens keep the repository-relative ones.
fn relative(text: &str) -> String {
    let prefix = format!("{}/", root().display());
    text.replace(&prefix, "")
}

fn json(input: &str) -> Value {
    serde_json::from_str(&analyze(input, "json")).unwrap()
}

#[test]
fn demo_reports_match_their_goldens() {
    let expected = root().join("pcaps/expected");
    check_golden(
        &expected.join("demo.analyze.txt"),
        &relative(&analyze("pcaps/demo.pcap", "text")),
    );
    check_golden(
        &expected.join("demo.analyze.md"),
        &relative(&analyze("pcaps/demo.pcap", "markdown")),
    );
    check_golden(
        &expected.join("demo.analyze.json"),
        &relative(&analyze("pcaps/demo.pcap", "json")),
    );
    check_golden(
        &expected.join("demo.analyze.edges.json"),
        &analyze("pcaps/demo.pcap", "edges"),
    );
}

#[test]
fn a_linux_cooked_capture_gives_the_same_analysis() {
    let mut ethernet = json("pcaps/demo.pcap");
    let mut cooked = json("pcaps/demo-any.pcapng");
    for doc in [&mut ethernet, &mut cooked] {
        doc["summary"]["inputs"] = Value::Null;
    }
    assert_eq!(ethernet, cooked);
    assert_eq!(
        analyze("pcaps/demo.pcap", "edges"),
        analyze("pcaps/demo-any.pcapng", "edges")
    );
    let text = |input| {
        relative(&analyze(input, "text"))
            .lines()
            .skip(2)
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(text("pcaps/demo.pcap"), text("pcaps/demo-any.pcapng"));
}

#[test]
fn flow_records_give_the_same_analysis_as_the_capture() {
    let records = weir(&[
        "flows",
        "--format",
        "jsonl",
        root().join("pcaps/demo.pcap").to_str().unwrap(),
    ]);
    let dir = std::env::temp_dir().join(format!("weir-analyze-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("demo.flows.jsonl");
    std::fs::write(&file, records).unwrap();
    let out = weir(&[
        "analyze",
        "--flows",
        file.to_str().unwrap(),
        "--cluster",
        root().join(CLUSTER).to_str().unwrap(),
        "--format",
        "json",
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    let mut from_flows: Value = serde_json::from_str(&out).unwrap();
    let mut from_capture = json("pcaps/demo.pcap");
    for doc in [&mut from_flows, &mut from_capture] {
        doc["summary"]["inputs"] = Value::Null;
    }
    assert_eq!(from_flows, from_capture);
}

fn flows(doc: &Value) -> &Vec<Value> {
    doc["flows"].as_array().unwrap()
}

fn find(doc: &Value, pred: impl Fn(&Value) -> bool) -> Vec<&Value> {
    flows(doc).iter().filter(|f| pred(f)).collect()
}

#[test]
fn the_demo_findings_are_there() {
    let doc = json("pcaps/demo.pcap");
    let summary = &doc["summary"];

    // A reused address belongs to whoever held it when the flow ran.
    let from_reused = find(&doc, |f| f["src"] == "10.244.0.24" && f["proto"] == "TCP");
    assert!(!from_reused.is_empty());
    for f in from_reused {
        let name = f["source"]["workload"]["name"].as_str().unwrap();
        let start = f["start"].as_str().unwrap();
        let expected = if start < "2026-11-22T10:00:20" {
            "report"
        } else {
            "checkout-worker"
        };
        assert_eq!(name, expected, "{f}");
    }
    let report = find(&doc, |f| f["source"]["workload"]["kind"] == "CronJob");
    assert!(report.iter().any(|f| f["verdict"] == "denied"));

    // Service flows: resolved through named target ports, pre/post-DNAT copies joined into one flow.
    assert!(summary["dnat_joined"].as_u64().unwrap() > 0);
    let joined = find(&doc, |f| {
        f["service"]["name"] == "api" && f["destination"]["kind"] == "pod"
    });
    assert!(!joined.is_empty());
    for f in &joined {
        assert_eq!(f["dst"], "10.96.10.20");
        assert_eq!(f["service"]["port"], 80);
        assert_eq!(f["service"]["target_port"], 8080);
        assert_eq!(f["verdict"], "allowed");
        assert_eq!(
            f["egress"]["policies"],
            serde_json::json!(["shop/frontend"])
        );
        assert_eq!(f["ingress"]["policies"], serde_json::json!(["shop/api"]));
    }
    // No flow to a backend is left over next to its joined Service flow.
    for f in &joined {
        let dup = find(&doc, |g| {
            g["src"] == f["src"] && g["src_port"] == f["src_port"] && g["dst"] != "10.96.10.20"
        });
        assert!(dup.is_empty(), "{dup:?}");
    }
    let unjoined = find(&doc, |f| {
        f["service"]["name"] == "api" && f["destination"]["kind"] == "workload"
    });
    assert!(!unjoined.is_empty());
    assert_eq!(unjoined[0]["destination"]["workload"]["name"], "api");
    assert_eq!(unjoined[0]["destination"]["backends"], 2);

    // Backends that disagree are reported as such, with each backend's verdict.
    let mixed = find(&doc, |f| f["verdict"] == "mixed");
    assert!(!mixed.is_empty());
    for f in mixed {
        assert_eq!(f["service"]["name"], "payments-api");
        let verdicts: Vec<&str> = f["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["verdict"].as_str().unwrap())
            .collect();
        assert!(verdicts.contains(&"allowed") && verdicts.contains(&"denied"));
    }

    // The exporter port outside the policy's range is denied on ingress only.
    let scrape = find(&doc, |f| f["dst_port"] == 9121);
    assert!(!scrape.is_empty());
    for f in scrape {
        assert_eq!(f["verdict"], "denied");
        assert_eq!(f["egress"]["verdict"], "not-isolated");
        assert_eq!(f["ingress"]["verdict"], "denied");
    }

    // Kubelet probes from the pod's own node are allowed whatever the policies say.
    let probes = find(&doc, |f| {
        f["source"]["kind"] == "node" && f["destination"]["workload"]["name"] == "api"
    });
    assert!(!probes.is_empty());
    assert!(probes.iter().all(|f| f["verdict"] == "allowed"));

    // The intruder: a scan, an unknown address, and the metadata endpoint.
    let scans = summary["scans"].as_array().unwrap();
    assert_eq!(scans.len(), 1);
    assert_eq!(scans[0]["ip"], "10.244.1.20");
    assert!(scans[0]["targets"].as_u64().unwrap() >= 40);
    let unknown = summary["unattributed"].as_array().unwrap();
    assert_eq!(unknown.len(), 1);
    assert_eq!(unknown[0]["ip"], "10.244.1.99");
    assert!(
        find(&doc, |f| f["dst"] == "169.254.169.254")
            .iter()
            .all(|f| f["destination"]["kind"] == "external" && f["verdict"] == "denied")
    );

    // Namespaces without policy, unused rules.
    let bare: Vec<&str> = summary["namespaces_without_policy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(bare, ["kube-system", "monitoring"]);
    let unused: Vec<(&str, u64)> = summary["unused_rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["policy"].as_str().unwrap(), r["rule"].as_u64().unwrap()))
        .collect();
    assert_eq!(unused, [("shop/cache", 1), ("shop/db", 1)]);

    // Every flow is accounted for once: flows + joined = records of the capture.
    let records = weir(&[
        "flows",
        "--format",
        "jsonl",
        root().join("pcaps/demo.pcap").to_str().unwrap(),
    ]);
    assert_eq!(
        flows(&doc).len() as u64 + summary["dnat_joined"].as_u64().unwrap(),
        records.lines().count() as u64
    );
}

#[test]
fn color_only_on_request_or_a_terminal() {
    let plain = analyze("pcaps/demo.pcap", "text");
    assert!(!plain.contains('\x1b'));
    let root = root();
    let colored = weir(&[
        "analyze",
        root.join("pcaps/demo.pcap").to_str().unwrap(),
        "--cluster",
        root.join(CLUSTER).to_str().unwrap(),
        "--color",
        "always",
    ]);
    assert!(colored.contains("\x1b[31m"));
}

#[test]
fn output_file_and_errors() {
    let dir = std::env::temp_dir().join(format!("weir-analyze-out-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("report.md");
    let root = root();
    weir(&[
        "analyze",
        root.join("pcaps/demo.pcap").to_str().unwrap(),
        "--cluster",
        root.join(CLUSTER).to_str().unwrap(),
        "--format",
        "markdown",
        "--output",
        report.to_str().unwrap(),
    ]);
    let written = std::fs::read_to_string(&report).unwrap();
    assert!(written.starts_with("## weir analyze"));

    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"src\":\"10.0.0.1\"}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["analyze", "--flows", bad.to_str().unwrap(), "--cluster"])
        .arg(root.join(CLUSTER))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.jsonl:1: not a flow record"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["analyze", "--cluster"])
        .arg(root.join(CLUSTER))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_html_report_is_one_self_contained_file() {
    let html = analyze("pcaps/demo.pcap", "html");
    assert!(html.starts_with("<!doctype html>"));
    assert!(html.contains(r#"<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'sha256-"#));
    // Nothing is fetched: no external script, stylesheet, image or font.
    for needle in [
        "src=\"http",
        "href=\"http",
        "src=\"/",
        "href=\"/",
        "url(http",
        "url(/",
        "@import",
    ] {
        assert!(!html.contains(needle), "{needle} in the report");
    }
    assert_eq!(html.matches("<svg").count(), 1);
    assert_eq!(
        html.matches("class=\"edge denied").count(),
        11,
        "the demo's denied edges"
    );
    assert!(html.contains("data-name=\"Deployment/frontend\""));
}

/// Policies weir does not evaluate are never silent: the report's header and the JSON summary name them, and a
/// Calico NetworkPolicy (same kind name, another API group) is not taken for a Kubernetes one.
#[test]
fn policies_weir_does_not_evaluate_are_named_and_change_no_verdict() {
    let dir = std::env::temp_dir().join(format!("weir-unevaluated-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let extra = dir.join("cni-policies.yaml");
    std::fs::write(
        &extra,
        "apiVersion: v1
kind: List
items:
- apiVersion: projectcalico.org/v3
  kind: NetworkPolicy
  metadata: {name: deny-everything, namespace: shop}
  spec: {selector: all(), types: [Ingress, Egress]}
- apiVersion: cilium.io/v2
  kind: CiliumClusterwideNetworkPolicy
  metadata: {name: l7-only}
  spec: {endpointSelector: {}}
",
    )
    .unwrap();
    let demo = root().join("pcaps/demo.pcap");
    let cluster = root().join("pcaps/demo.cluster.yaml");
    let (demo, cluster, extra_s) = (
        demo.to_str().unwrap(),
        cluster.to_str().unwrap(),
        extra.to_str().unwrap(),
    );
    let plain: serde_json::Value = serde_json::from_str(&weir(&[
        "analyze",
        demo,
        "--cluster",
        cluster,
        "--format",
        "json",
    ]))
    .unwrap();
    let with: serde_json::Value = serde_json::from_str(&weir(&[
        "analyze",
        demo,
        "--cluster",
        cluster,
        "--cluster",
        extra_s,
        "--format",
        "json",
    ]))
    .unwrap();
    assert_eq!(
        plain["summary"]["policies_not_evaluated"],
        serde_json::json!({})
    );
    assert_eq!(
        with["summary"]["policies_not_evaluated"],
        serde_json::json!({
            "CiliumClusterwideNetworkPolicy (cilium.io)": 1,
            "NetworkPolicy (projectcalico.org)": 1,
        })
    );
    // The verdicts are those of the Kubernetes NetworkPolicies alone.
    assert_eq!(plain["summary"]["verdicts"], with["summary"]["verdicts"]);
    let text = weir(&[
        "analyze",
        demo,
        "--cluster",
        cluster,
        "--cluster",
        extra_s,
        "--format",
        "text",
    ]);
    let header: Vec<&str> = text.lines().take(4).collect();
    assert!(
        header.iter().any(|l| l
            .contains("warning: verdicts are NetworkPolicy and ClusterNetworkPolicy only")
            && l.contains("NetworkPolicy (projectcalico.org) 1")),
        "{header:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The edge book (`--format edges`) and the map carry each direction's deciding tier and decision chain, so a
/// cluster-wide rule that decided (or passed) shows on the edge itself, and the map's tier filter has its data.
#[test]
fn edges_and_the_map_carry_the_decision_chain() {
    let root = root();
    let input = root.join("pcaps/demo.pcap");
    let cluster = root.join(CLUSTER);
    let tiers = root.join("pcaps/demo.tiers.yaml");
    let run = |format: &str| {
        weir(&[
            "analyze",
            input.to_str().unwrap(),
            "--cluster",
            cluster.to_str().unwrap(),
            "--cluster",
            tiers.to_str().unwrap(),
            "--format",
            format,
        ])
    };
    let book: Value = serde_json::from_str(&run("edges")).unwrap();
    let edge = |src: &str, dst: &str, port: u64| {
        book["edges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| {
                e["key"]["src"]["name"] == src
                    && e["key"]["dst"]["name"] == dst
                    && e["key"]["port"] == port
            })
            .unwrap_or_else(|| panic!("no edge {src} → {dst}:{port}"))
            .clone()
    };
    // Through an Admin Pass to the NetworkPolicies, which decide.
    let pass = edge("Deployment/frontend", "Deployment/api", 8080);
    assert_eq!(pass["egress"]["tier"], "networkpolicy", "{pass}");
    let chain = pass["egress"]["chain"].as_str().unwrap();
    assert!(
        chain.starts_with(r#"Admin sec-ops rule #1 "delegate-in-cluster" Pass → NetworkPolicy"#),
        "{chain}"
    );
    assert_eq!(pass["ingress"]["tier"], "networkpolicy", "{pass}");
    // An Admin Accept decides the ingress before any NetworkPolicy.
    let accept = edge("StatefulSet/prometheus", "Deployment/api", 9100);
    assert_eq!(accept["ingress"]["tier"], "admin", "{accept}");
    assert!(
        accept["ingress"]["chain"]
            .as_str()
            .unwrap()
            .contains(r#""allow-monitoring" Accept"#),
        "{accept}"
    );
    // An end that is not a pod: the default tier.
    let outside = edge("203.0.113.10", "Deployment/frontend", 8080);
    assert_eq!(outside["egress"]["tier"], "default", "{outside}");

    // The map: each edge lists its chains per direction and the tiers that decided, for the tier filter.
    let html = run("html");
    let data = html
        .split(r#"<script type="application/json" id="weir-data">"#)
        .nth(1)
        .and_then(|rest| rest.split("</script>").next())
        .unwrap();
    let map: Value = serde_json::from_str(data).unwrap();
    let edges = map["edges"].as_array().unwrap();
    let decided_by_admin: Vec<&Value> = edges
        .iter()
        .filter(|e| {
            e["tiers"]
                .as_array()
                .is_some_and(|t| t.contains(&Value::from("admin")))
        })
        .collect();
    assert!(
        !decided_by_admin.is_empty(),
        "no map edge decided by the Admin tier"
    );
    assert!(
        decided_by_admin.iter().any(|e| e["chains"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c.as_str().unwrap().starts_with("ingress: Admin sec-ops"))),
        "{decided_by_admin:?}"
    );
    assert!(
        edges
            .iter()
            .any(|e| e["chains"].as_array().is_some_and(|c| c
                .iter()
                .any(|c| c.as_str().unwrap().contains("Pass → NetworkPolicy")))),
        "no map edge shows a Pass"
    );
    assert!(
        html.contains(r#"data-tiers="admin "#),
        "no drawn edge carries the admin tier"
    );
    assert!(html.contains(r#"<fieldset id="f-tiers">"#));
}

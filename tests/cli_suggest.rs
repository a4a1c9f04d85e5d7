//! `weir suggest` on the bundled demo: golden YAML and summary, one file per policy, and the suggestion put to
//! work: the demo capture judged against it allows the application's traffic and denies the intruder's.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{check_golden, root};
use serde_json::Value;

const CLUSTER: &str = "pcaps/demo.cluster.yaml";
const CAPTURE: &str = "pcaps/demo.pcap";

/// Runs `weir` and returns (stdout, stderr), failing the test on an error exit.
fn run(args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .current_dir(root())
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "weir {args:?}: {stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

fn suggest(extra: &[&str]) -> (String, String) {
    let mut args = vec!["suggest", CAPTURE, "--cluster", CLUSTER];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn demo_suggestion_matches_its_goldens() {
    let (yaml, summary) = suggest(&[]);
    let expected = root().join("pcaps/expected");
    check_golden(&expected.join("demo.suggest.yaml"), &yaml);
    check_golden(&expected.join("demo.suggest.summary.txt"), &summary);
    assert!(summary.contains("proof: the suggested policies alone allow all"));
    // Selectors survive rollouts; system namespaces are left alone.
    for volatile in ["pod-template-hash", "controller-revision-hash", "job-name"] {
        assert!(!yaml.contains(volatile), "{volatile} in a suggested policy");
    }
    assert!(!yaml.contains("namespace: \"kube-system\""));
    // Re-running gives the same bytes, so a re-run diffs cleanly.
    assert_eq!(suggest(&[]).0, yaml);
}

#[test]
fn one_file_per_policy_holds_the_same_documents() {
    let dir = tempdir("out-dir");
    let (stdout, summary) = suggest(&["--out-dir", dir.to_str().unwrap()]);
    assert!(stdout.is_empty());
    assert!(summary.contains("wrote 9 files"), "{summary}");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let documents: Vec<String> = names
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let (stream, _) = suggest(&[]);
    let mut from_stream: Vec<&str> = stream.split("---\n").collect();
    let mut from_files: Vec<&str> = documents.iter().map(String::as_str).collect();
    from_stream.sort();
    from_files.sort();
    assert_eq!(from_stream, from_files);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn system_namespaces_on_request() {
    let (yaml, _) = suggest(&["--namespace", "kube-system"]);
    assert!(yaml.contains("name: \"weir-coredns\""), "{yaml}");
    assert!(!yaml.contains("namespace: \"shop\""));
}

/// A fresh directory per test (tests run in parallel in one process).
fn tempdir(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("weir-suggest-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn workload(end: &Value) -> String {
    end["workload"]["name"].as_str().unwrap_or("").to_owned()
}

#[test]
fn the_demo_judged_against_the_suggestion() {
    let dir = tempdir("judged").join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    let policies = dir.join("suggested.yaml");
    std::fs::write(&policies, suggest(&[]).0).unwrap();
    let (json, _) = run(&[
        "analyze",
        CAPTURE,
        "--cluster",
        CLUSTER,
        "--policies",
        policies.to_str().unwrap(),
        "--format",
        "json",
    ]);
    let doc: Value = serde_json::from_str(&json).unwrap();
    let flows = doc["flows"].as_array().unwrap();
    let mut app_allowed = 0;
    let mut intruder_denied = 0;
    for f in flows {
        let proto = f["proto"].as_str().unwrap_or("");
        let answered = f["reply_packets"].as_u64().unwrap_or(0) > 0
            && !f["reply_tcp_flags"].as_str().unwrap_or("").contains('R');
        let pods = f["source"]["kind"] != "unknown" && f["destination"]["kind"] != "unknown";
        if (proto == "TCP" || proto == "UDP") && answered && pods {
            // The application's traffic: allowed, every flow of it.
            assert_eq!(f["verdict"], "allowed", "{f}");
            app_allowed += 1;
        }
        if workload(&f["source"]) == "frontend" && !answered {
            // The intruder in a frontend pod: its probes and its reach for the metadata service.
            assert_eq!(f["verdict"], "denied", "{f}");
            intruder_denied += 1;
        }
    }
    assert!(app_allowed >= 80, "{app_allowed}");
    assert!(intruder_denied >= 50, "{intruder_denied}");
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

#[test]
fn the_proof_attributes_with_the_same_cluster_ranges() {
    // 8.8.8.8 becomes an address of the cluster nobody held: no rule for it, and the proof must agree.
    let (_, summary) = suggest(&["--cluster-cidr", "8.8.8.0/24"]);
    assert!(
        summary.contains("proof: the suggested policies alone allow all 83"),
        "{summary}"
    );
}

/// Under an Admin tier (`pcaps/demo.tiers.yaml`), traffic an Admin rule decides gets no NetworkPolicy rule and
/// the policy says why; the proof still holds with the cluster-wide policies in force.
#[test]
fn traffic_the_admin_tier_decides_gets_no_rule() {
    let (yaml, summary) = suggest(&["--cluster", "pcaps/demo.tiers.yaml"]);
    assert!(
        yaml.contains(
            "# note: ingress from StatefulSet monitoring/prometheus needs no rule: the Admin tier decides it \
             (Admin sec-ops rule #0 \"allow-monitoring\" Accept)"
        ),
        "{yaml}"
    );
    // Without the tiers, the scrapes of the API's metrics port get an ingress rule; with them, none.
    let (plain, _) = suggest(&[]);
    let scrape_rule = "# 8 flows from StatefulSet monitoring/prometheus";
    assert!(plain.contains(scrape_rule), "{plain}");
    assert!(!yaml.contains(scrape_rule), "{yaml}");
    assert!(
        summary.contains("proof: the suggested policies alone allow all"),
        "{summary}"
    );
}

/// `--baseline-deny` adds a Baseline-tier default deny for the namespaces in scope; the proof holds with it, and
/// the capture judged against the suggestion with it is judged as without it (every workload in scope that had
/// traffic got a NetworkPolicy, which overrides the Baseline tier).
#[test]
fn a_baseline_default_deny_on_request() {
    let (yaml, summary) = suggest(&["--baseline-deny"]);
    let documents: Vec<Value> = serde_saphyr::from_multiple(&yaml).unwrap();
    let last = documents.last().unwrap();
    assert_eq!(last["kind"], "ClusterNetworkPolicy");
    assert_eq!(last["spec"]["tier"], "Baseline");
    assert_eq!(
        last["spec"]["subject"]["namespaces"]["matchExpressions"][0]["values"],
        serde_json::json!(["monitoring", "payments", "shop"])
    );
    assert!(
        summary.contains("and ClusterNetworkPolicy weir-baseline-deny (Baseline tier)"),
        "{summary}"
    );
    assert!(
        summary.contains("proof: the suggested policies alone allow all"),
        "{summary}"
    );
    let dir = tempdir("baseline-deny");
    let with = dir.join("with.yaml");
    std::fs::write(&with, &yaml).unwrap();
    let (plain, _) = suggest(&[]);
    let without = dir.join("without.yaml");
    std::fs::write(&without, &plain).unwrap();
    let verdicts = |policies: &std::path::Path| {
        let (json, _) = run(&[
            "analyze",
            CAPTURE,
            "--cluster",
            CLUSTER,
            "--policies",
            policies.to_str().unwrap(),
            "--format",
            "json",
        ]);
        let v: Value = serde_json::from_str(&json).unwrap();
        v["summary"]["verdicts"].clone()
    };
    assert_eq!(verdicts(&with), verdicts(&without));
    let _ = std::fs::remove_dir_all(&dir);
}

//! `weir diff` on the bundled demo: the policies in force against the capture, and policy changes against
//! each other and against the capture, with the exit code a CI check relies on.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Output};

use common::{check_golden, root};
use serde_json::Value;

const CLUSTER: &str = "pcaps/demo.cluster.yaml";
const CAPTURE: &str = "pcaps/demo.pcap";

fn weir(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .current_dir(root())
        .args(args)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn the_policies_in_force_against_the_capture() {
    let out = weir(&["diff", CAPTURE, "--cluster", CLUSTER]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    check_golden(&root().join("pcaps/expected/demo.diff.txt"), &text);
    for section in [
        "DENIED BY THE POLICIES IN FORCE",
        "ALLOWED ONLY BECAUSE A POD IS NOT ISOLATED",
        "WITHOUT ANY NETWORKPOLICY",
        "RULES THAT ALLOWED NOTHING OBSERVED",
    ] {
        assert!(text.contains(section), "{section}");
    }
    assert!(
        !text.contains("ALLOWED BY POLICY"),
        "only findings about the policies"
    );
}

#[test]
fn a_change_that_breaks_observed_traffic_fails_the_check() {
    let args = [
        "diff",
        CAPTURE,
        "--cluster",
        CLUSTER,
        "--policies-after",
        "pcaps/policies",
    ];
    let out = weir(&[&args[..], &["--format", "markdown"]].concat());
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_golden(
        &root().join("pcaps/expected/demo.diff-lockdown.md"),
        &stdout(&out),
    );

    let out = weir(&[&args[..], &["--format", "json"]].concat());
    assert_eq!(out.status.code(), Some(3));
    let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(doc["observed_flows"], 144);
    assert_eq!(doc["would_break_flows"], 55);
    let broken: Vec<(String, String)> = doc["would_break"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["from"].as_str().unwrap().to_owned(),
                e["to"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        broken.contains(&(
            "Deployment shop/frontend".into(),
            "Deployment shop/api".into()
        )),
        "{broken:?}"
    );
    // Payments is untouched by a shop lockdown.
    assert!(
        broken
            .iter()
            .all(|(from, to)| from.contains("shop/") || to.contains("shop/"))
    );
    let denied = doc["now_denied"].as_array().unwrap();
    assert!(
        denied
            .iter()
            .any(|c| c["from"]["name"] == "frontend" && c["to"]["name"] == "api")
    );
}

#[test]
fn the_suggestion_breaks_nothing_it_saw() {
    let dir = std::env::temp_dir().join(format!("weir-diff-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let suggested = weir(&[
        "suggest",
        CAPTURE,
        "--cluster",
        CLUSTER,
        "--out-dir",
        dir.to_str().unwrap(),
    ]);
    assert!(suggested.status.success());
    let out = weir(&[
        "diff",
        CAPTURE,
        "--cluster",
        CLUSTER,
        "--policies-after",
        dir.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(doc["would_break_flows"], 0);
    // Answered flows the snapshot's policies deny (the canary, the outside resolver) become allowed.
    assert_eq!(doc["would_allow_flows"], 4);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn two_policy_sets_without_traffic() {
    let out = weir(&[
        "diff",
        "--cluster",
        CLUSTER,
        "--policies-after",
        "pcaps/policies",
    ]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("observed: no traffic given"), "{text}");
    assert!(text.contains("CONNECTIVITY THAT BECOMES DENIED"));

    let out = weir(&["diff", "--cluster", CLUSTER]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("give traffic"));
}

/// Policy files as repositories keep them, without `metadata.namespace`: refused with a word about `-n`,
/// placed by `-n` as `kubectl apply -n` places them (the same answer as the file with its namespace), and an
/// object naming another namespace refused as kubectl refuses it.
#[test]
fn namespace_less_policy_files_go_where_n_says() {
    let dir = std::env::temp_dir().join(format!("weir-nsless-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lockdown =
        std::fs::read_to_string(root().join("pcaps/policies/shop-lockdown.yaml")).unwrap();
    let bare = dir.join("lockdown.yaml");
    std::fs::write(&bare, lockdown.replace("  namespace: shop\n", "")).unwrap();
    let bare = bare.to_str().unwrap();
    let args = ["diff", CAPTURE, "--cluster", CLUSTER, "--format", "json"];

    let refused = weir(&[&args[..], &["--policies-after", bare]].concat());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("metadata.namespace") && stderr.contains("-n/--namespace"),
        "{stderr}"
    );

    let placed = weir(&[&args[..], &["--policies-after", bare, "-n", "shop"]].concat());
    let kept = weir(&[&args[..], &["--policies-after", "pcaps/policies"]].concat());
    assert_eq!(placed.status.code(), Some(3));
    // The same answer; only the description of where the policies came from differs.
    let answer = |out: &Output| {
        let mut doc: Value = serde_json::from_str(&stdout(out)).unwrap();
        doc.as_object_mut().unwrap().remove("after");
        doc
    };
    assert!(
        answer(&placed) == answer(&kept),
        "-n shop gave another answer"
    );

    let other = weir(
        &[
            &args[..],
            &["--policies-after", "pcaps/policies", "-n", "payments"],
        ]
        .concat(),
    );
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert_eq!(other.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("\"shop\" does not match the namespace \"payments\""),
        "{stderr}"
    );

    // analyze takes it the same way.
    let analyzed = weir(&[
        "analyze",
        CAPTURE,
        "--cluster",
        CLUSTER,
        "--policies",
        bare,
        "-n",
        "shop",
        "--format",
        "json",
    ]);
    assert!(
        analyzed.status.success(),
        "{}",
        String::from_utf8_lossy(&analyzed.stderr)
    );
    assert!(stdout(&analyzed).contains("shop/lockdown"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A new Admin policy is the most dangerous change: a file of only cluster-wide policies keeps the
/// NetworkPolicies in force and shows what it would break. `networks: 0.0.0.0/0` covers pod addresses too, so
/// the payments pods lose cluster DNS as well as the outside.
#[test]
fn a_new_admin_policy_shows_what_it_would_break() {
    let dir = std::env::temp_dir().join(format!("weir-diff-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("no-internet.yaml");
    std::fs::write(
        &file,
        "apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: no-internet}
spec:
  tier: Admin
  priority: 5
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: payments}}}
  egress:
  - {name: deny-outside, action: Deny, to: [{networks: [0.0.0.0/0]}]}
",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "diff",
            "pcaps/demo.pcap",
            "--cluster",
            "pcaps/demo.cluster.yaml",
            "--policies-after",
        ])
        .arg(&file)
        .current_dir(root())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("(9 NetworkPolicies and 1 cluster-wide policy)"),
        "{text}"
    );
    let broken = text
        .lines()
        .find(|l| l.contains("payments/payments-api  192.0.2.80"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        broken.contains("egress ClusterNetworkPolicy/no-internet"),
        "{broken}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("payments/payments-api") && l.contains("kube-system/coredns")),
        "{text}"
    );
}

//! The aggregator's `suggest` and `diff` over HTTP, on the demo sent through ingest: the live suggestion names
//! the same policies as `weir suggest` on the capture, says what its comments count, breaks nothing observed, and
//! a change that does break traffic is shown as breaking it.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::root;
use common::system::{Scratch, http, ingest, reading_aggregator, weir};
use serde_json::Value;

const TOKEN: &str = "r3ad-t0ken-7Qx9-Lm2v-Zp8w-Kc4n-Hs6d";

/// `metadata.name` of every NetworkPolicy document in `yaml`, as `namespace/name`.
fn policy_names(yaml: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for doc in yaml.split("\n---\n") {
        let field = |key: &str| {
            doc.lines()
                .find_map(|l| l.trim().strip_prefix(key))
                .map(|v| v.trim().trim_matches('"').to_owned())
        };
        if doc.contains("kind: NetworkPolicy")
            && let (Some(ns), Some(name)) = (field("namespace:"), field("name:"))
        {
            names.insert(format!("{ns}/{name}"));
        }
    }
    names
}

/// `weir.dev/observed-flows` of every policy in `yaml`, by `namespace/name`.
fn observed(yaml: &str) -> BTreeMap<String, u64> {
    yaml.split("\n---\n")
        .filter_map(|doc| {
            let name = policy_names(doc).into_iter().next()?;
            let n = doc
                .lines()
                .find_map(|l| l.trim().strip_prefix("\"weir.dev/observed-flows\": "))?;
            Some((name, n.trim_matches('"').parse().unwrap()))
        })
        .collect()
}

#[test]
fn the_live_suggestion_matches_the_offline_one_and_diff_finds_what_breaks() {
    let dir = std::env::temp_dir().join(format!("weir-api-suggest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _scratch = Scratch(dir.clone());
    let cluster = root().join("pcaps/demo.cluster.yaml");
    let pcap = root().join("pcaps/demo.pcap");
    let (_aggregator, port) = reading_aggregator(&dir, &cluster, TOKEN);
    let flows = weir()
        .arg("flows")
        .arg(&pcap)
        .args(["--format", "jsonl"])
        .output()
        .unwrap();
    ingest(port, 1, &flows.stdout);
    let auth = format!("Bearer {TOKEN}");
    let bearer = [("authorization", auth.as_str())];

    assert_eq!(http(port, "GET", "/api/v1/suggest", &[], b"").0, 401);
    let (status, live) = http(port, "GET", "/api/v1/suggest", &bearer, b"");
    assert_eq!(status, 200, "{live}");
    assert!(
        live.starts_with("# worked out by the aggregator from the "),
        "{live}"
    );
    let offline = weir()
        .arg("suggest")
        .arg(&pcap)
        .arg("--cluster")
        .arg(&cluster)
        .output()
        .unwrap();
    assert!(offline.status.success());
    let offline = String::from_utf8(offline.stdout).unwrap();
    let names = policy_names(&live);
    assert!(names.len() >= 5, "{names:?}");
    assert_eq!(names, policy_names(&offline));
    // Each sample counts as its edge's connections, so the evidence adds up as it does offline (one sample per
    // edge alone would give shop/api 9 flows instead of 35). Payments' backends take one more each live: the
    // sample of a Service edge is the client's record, whose backend only the other end's record named, so
    // judged again it could have reached either backend.
    let (live_counts, offline_counts) = (observed(&live), observed(&offline));
    for (name, &n) in &offline_counts {
        let live_n = live_counts[name];
        if name.starts_with("payments/") {
            assert!(
                (n..=n + 1).contains(&live_n),
                "{name}: {live_n} live, {n} offline"
            );
        } else {
            assert_eq!(live_n, n, "{name}");
        }
    }
    assert_eq!(live_counts["shop/weir-api"], 35);

    // With proof: the suggestion allows every observed edge it covers.
    let (status, json) = http(port, "GET", "/api/v1/suggest?format=json", &bearer, b"");
    assert_eq!(status, 200, "{json}");
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["policies"].as_u64().unwrap() as usize, names.len());
    assert_eq!(json["proof"]["denied"], serde_json::json!([]), "{json}");
    assert!(json["proof"]["allowed"].as_u64().unwrap() > 0, "{json}");
    assert_eq!(
        http(port, "GET", "/api/v1/suggest?format=xml", &bearer, b"").0,
        400
    );

    // Replacing the policies with the suggestion breaks nothing observed.
    let (status, diff) = http(port, "POST", "/api/v1/diff", &bearer, live.as_bytes());
    assert_eq!(status, 200, "{diff}");
    let diff: Value = serde_json::from_str(&diff).unwrap();
    assert_eq!(diff["breaks"], false, "{diff}");
    assert!(diff["observed_edges"].as_u64().unwrap() > 0);

    // A default deny for shop alone breaks shop's traffic, and says which.
    let deny = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all, namespace: shop}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress, Egress]\n";
    let (status, diff) = http(port, "POST", "/api/v1/diff", &bearer, deny.as_bytes());
    assert_eq!(status, 200, "{diff}");
    let diff: Value = serde_json::from_str(&diff).unwrap();
    assert_eq!(diff["breaks"], true, "{diff}");
    let broken = diff["broken_flows"].as_array().unwrap();
    assert!(
        broken
            .iter()
            .any(|f| f.to_string().contains("shop") && f.to_string().contains("deny-all")),
        "{broken:?}"
    );

    // A body with no policy is refused with the reason.
    let (status, body) = http(
        port,
        "POST",
        "/api/v1/diff",
        &bearer,
        b"kind: List\nitems: []\n",
    );
    assert_eq!(status, 400);
    assert!(body.contains("no NetworkPolicy"), "{body}");
}

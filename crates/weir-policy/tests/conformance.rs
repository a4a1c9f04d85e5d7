//! The network-policy-api conformance suite (ClusterNetworkPolicy: Admin and Baseline tiers, and their
//! integration with NetworkPolicy), replayed against weir's engine: the suite's own manifests, and its checks
//! transcribed as facts in `data/network-policy-api/steps.txt` (see PROVENANCE.md there). Each `poke` is the
//! suite's `PokeServer(client, protocol, server, port, expected)`; weir must give the same answer.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};
use weir_cluster::SnapshotLoader;
use weir_model::Protocol;
use weir_policy::{PolicySet, VerdictCache};

const PREFIX: &str = "network-policy-conformance-";
/// The suite's first host-network port; `{{ index .HostNetworkPorts N }}` is this plus N.
const HOST_PORT_BASE: u16 = 34345;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/network-policy-api")
}

fn documents(text: &str) -> Vec<Value> {
    let mut text = text.to_owned();
    for n in 0..8 {
        text = text.replace(
            &format!("{{{{ index .HostNetworkPorts {n} }}}}"),
            &(HOST_PORT_BASE + n).to_string(),
        );
    }
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap()
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

/// The cluster and the policies as the suite's cluster holds them at one step.
struct World {
    cluster: Vec<Value>,
    policies: Vec<Value>,
}

impl World {
    fn new() -> World {
        World {
            cluster: documents(&std::fs::read_to_string(dir().join("cluster.yaml")).unwrap()),
            policies: Vec::new(),
        }
    }

    fn set(&self) -> PolicySet {
        let mut loader = SnapshotLoader::default();
        for v in self.cluster.iter().chain(&self.policies) {
            loader.add_value("conformance", v.clone()).unwrap();
        }
        let (state, report) = loader.finish();
        assert!(
            state.unevaluated_policies().is_empty(),
            "policies left unevaluated: {:?}",
            report
        );
        PolicySet::new(Arc::new(state)).unwrap()
    }

    fn object(&mut self, kind: &str, name: &str) -> &mut Value {
        self.policies
            .iter_mut()
            .find(|v| v["kind"] == kind && v["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    }

    fn rules(&mut self, policy: &str, direction: &str) -> &mut Vec<Value> {
        self.object("ClusterNetworkPolicy", policy)["spec"][direction]
            .as_array_mut()
            .unwrap()
    }

    fn pod_ip(&self, pod: &str) -> String {
        let (ns, name) = pod.split_once('/').unwrap();
        self.cluster
            .iter()
            .find(|v| {
                v["kind"] == "Pod"
                    && v["metadata"]["name"] == name
                    && v["metadata"]["namespace"] == format!("{PREFIX}{ns}").as_str()
            })
            .and_then(|v| v["status"]["podIP"].as_str())
            .unwrap_or_else(|| panic!("no pod {pod}"))
            .to_owned()
    }
}

fn direction(word: &str) -> &'static str {
    match word {
        "egress" => "egress",
        "ingress" => "ingress",
        other => panic!("direction {other}"),
    }
}

fn protocol(word: &str) -> Protocol {
    match word {
        "tcp" => Protocol::TCP,
        "udp" => Protocol::UDP,
        "sctp" => Protocol::SCTP,
        other => panic!("protocol {other}"),
    }
}

#[test]
fn network_policy_api_conformance() {
    let steps = std::fs::read_to_string(dir().join("steps.txt")).unwrap();
    let mut world: Option<(String, World)> = None;
    let mut checked = 0;
    let mut failures = Vec::new();
    let mut set: Option<PolicySet> = None;
    for (n, line) in steps.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some((&verb, args)) = words.split_first() else {
            continue;
        };
        let at = format!("steps.txt:{}", n + 1);
        if verb == "test" {
            world = Some((args[0].to_owned(), World::new()));
            set = None;
            continue;
        }
        let (test, w) = world.as_mut().expect("a step before any test");
        if verb != "poke" {
            set = None;
        }
        match (verb, args) {
            ("apply", [file]) => {
                let text = std::fs::read_to_string(dir().join(file)).unwrap();
                w.policies.extend(documents(&text));
            }
            ("poke", [client, proto, server, port, expected]) => {
                let set = set.get_or_insert_with(|| w.set());
                let port: u16 = match port.strip_prefix("{port").and_then(|p| p.strip_suffix('}')) {
                    Some(n) => HOST_PORT_BASE + n.parse::<u16>().unwrap(),
                    None => port.parse().unwrap(),
                };
                let (src, dst) = (w.pod_ip(client), w.pod_ip(server));
                let verdict = set.judge(
                    &mut VerdictCache::new(),
                    src.parse().unwrap(),
                    dst.parse().unwrap(),
                    Some(port),
                    protocol(proto),
                );
                let want = *expected == "allow";
                checked += 1;
                if verdict.allowed() != want || !verdict.decided() {
                    failures.push(format!(
                        "{at} {test}: {client} → {server} {port}/{proto}: expected {expected}, got {verdict:?}"
                    ));
                }
            }
            ("swap", [policy, dir, i, j]) => {
                let rules = w.rules(policy, direction(dir));
                rules.swap(i.parse().unwrap(), j.parse().unwrap());
            }
            ("action", [policy, dir, i, action]) => {
                let i: usize = i.parse().unwrap();
                w.rules(policy, direction(dir))[i]["action"] = json!(action);
            }
            ("priority", [policy, n]) => {
                let n: u64 = n.parse().unwrap();
                w.object("ClusterNetworkPolicy", policy)["spec"]["priority"] = json!(n);
            }
            ("named-port", [policy, dir, i, name]) => {
                let i: usize = i.parse().unwrap();
                w.rules(policy, direction(dir))[i]["protocols"] =
                    json!([{"destinationNamedPort": name}]);
            }
            ("prepend-networks", [policy, dir, name, action, pods @ ..]) => {
                let networks: Vec<String> =
                    pods.iter().map(|p| format!("{}/32", w.pod_ip(p))).collect();
                let rule = json!({"name": name, "action": action, "to": [{"networks": networks}]});
                w.rules(policy, direction(dir)).insert(0, rule);
            }
            ("labels", [ns, pairs @ ..]) => {
                let labels: serde_json::Map<String, Value> = pairs
                    .iter()
                    .map(|p| {
                        let (k, v) = p.split_once('=').unwrap();
                        (k.to_owned(), json!(v))
                    })
                    .collect();
                let name = format!("{PREFIX}{ns}");
                let object = w
                    .cluster
                    .iter_mut()
                    .find(|v| v["kind"] == "Namespace" && v["metadata"]["name"] == name.as_str())
                    .unwrap();
                object["metadata"]["labels"] = Value::Object(labels);
            }
            ("delete-networkpolicy", [key]) => {
                let (ns, name) = key.split_once('/').unwrap();
                let ns = format!("{PREFIX}{ns}");
                let before = w.policies.len();
                w.policies.retain(|v| {
                    !(v["kind"] == "NetworkPolicy"
                        && v["metadata"]["name"] == *name
                        && v["metadata"]["namespace"] == ns.as_str())
                });
                assert_eq!(w.policies.len(), before - 1, "{at}: no NetworkPolicy {key}");
            }
            _ => panic!("{at}: cannot read {line:?}"),
        }
    }
    assert!(checked >= 300, "only {checked} checks read");
    assert!(
        failures.is_empty(),
        "{} of {checked} conformance checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

//! Suggested policies as NetworkPolicy objects: k8s-openapi values for the engine, and YAML for people and
//! `kubectl apply`,
//! with every rule commented with the flows behind it.

use std::fmt::Write as _;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weir_cluster::Labels;

use crate::suggest::{Evidence, RulePeer, RulePort, SuggestedPolicy, SuggestedRule, Suggestion};

fn ports(rule: &SuggestedRule) -> Vec<NetworkPolicyPort> {
    rule.ports
        .iter()
        .map(|(proto, port)| NetworkPolicyPort {
            protocol: Some(proto.to_string()),
            port: Some(match port {
                RulePort::Name(name) => IntOrString::String(name.clone()),
                RulePort::Number(n) => IntOrString::Int(i32::from(*n)),
            }),
            end_port: None,
        })
        .collect()
}

fn match_labels(labels: &Labels) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels.clone().into_iter().collect()),
        match_expressions: None,
    }
}

fn peer(peer: &RulePeer) -> NetworkPolicyPeer {
    match peer {
        RulePeer::Pods {
            namespace,
            selector,
        } => NetworkPolicyPeer {
            namespace_selector: namespace.as_ref().map(|ns| LabelSelector {
                match_labels: Some(
                    [("kubernetes.io/metadata.name".to_owned(), ns.clone())]
                        .into_iter()
                        .collect(),
                ),
                match_expressions: None,
            }),
            pod_selector: Some(match_labels(selector)),
            ip_block: None,
        },
        RulePeer::Block(cidr) => NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: cidr.to_string(),
                except: None,
            }),
            namespace_selector: None,
            pod_selector: None,
        },
    }
}

fn annotations(p: &SuggestedPolicy) -> Vec<(&'static str, String)> {
    let mut out = vec![
        ("weir.dev/generated-by", "weir suggest".to_owned()),
        (
            "weir.dev/workload",
            format!("{}/{}", p.workload.kind, p.workload.name),
        ),
        ("weir.dev/observed-flows", p.evidence.flows.to_string()),
    ];
    if let (Some(first), Some(last)) = (p.evidence.first, p.evidence.last) {
        out.push(("weir.dev/first-seen", first.to_string()));
        out.push(("weir.dev/last-seen", last.to_string()));
    }
    out
}

/// One suggested policy as the NetworkPolicy object the engine and `kubectl` take (the YAML below says the same,
/// with comments).
pub(crate) fn policy_object(p: &SuggestedPolicy) -> NetworkPolicy {
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(p.name.clone()),
            namespace: Some(p.workload.namespace.clone()),
            labels: Some(
                [("app.kubernetes.io/managed-by".to_owned(), "weir".to_owned())]
                    .into_iter()
                    .collect(),
            ),
            annotations: Some(
                annotations(p)
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(match_labels(&p.selector)),
            policy_types: Some(vec!["Ingress".to_owned(), "Egress".to_owned()]),
            ingress: Some(
                p.ingress
                    .iter()
                    .map(|r| NetworkPolicyIngressRule {
                        from: Some(vec![peer(&r.peer)]),
                        ports: Some(ports(r)),
                    })
                    .collect(),
            ),
            egress: Some(
                p.egress
                    .iter()
                    .map(|r| NetworkPolicyEgressRule {
                        to: Some(vec![peer(&r.peer)]),
                        ports: Some(ports(r)),
                    })
                    .collect(),
            ),
        }),
    }
}

/// A YAML scalar: JSON strings are YAML, and quoting every string keeps `yes`, `1.0` or `on` strings.
fn scalar(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

fn labels_yaml(out: &mut String, indent: &str, labels: &Labels) {
    for (k, v) in labels {
        let _ = writeln!(out, "{indent}{}: {}", scalar(k), scalar(v));
    }
}

fn span(e: &Evidence) -> String {
    match (e.first, e.last) {
        (Some(first), Some(last)) => format!(", {first} to {last}"),
        _ => String::new(),
    }
}

fn evidence_comment(e: &Evidence, direction: &str) -> String {
    let mut parties: Vec<&str> = e.parties.iter().map(String::as_str).collect();
    let more = parties.len().saturating_sub(4);
    parties.truncate(4);
    let mut who = parties.join(", ");
    if more > 0 {
        let _ = write!(who, " and {more} more");
    }
    format!(
        "{} flow{} {direction} {who}{}",
        e.flows,
        if e.flows == 1 { "" } else { "s" },
        span(e)
    )
}

fn rules_yaml(out: &mut String, rules: &[SuggestedRule], key: &str, direction: &str) {
    if rules.is_empty() {
        let _ = writeln!(out, "  {key}: []");
        return;
    }
    let _ = writeln!(out, "  {key}:");
    for rule in rules {
        if let Some(note) = &rule.note {
            let _ = writeln!(out, "  # {note}");
        }
        if rule.evidence.flows > 0 {
            let _ = writeln!(out, "  # {}", evidence_comment(&rule.evidence, direction));
        }
        let peer_key = if key == "ingress" { "from" } else { "to" };
        let _ = writeln!(out, "  - {peer_key}:");
        match &rule.peer {
            RulePeer::Pods {
                namespace,
                selector,
            } => {
                let mut lead = "    - ";
                if let Some(ns) = namespace {
                    let _ = writeln!(out, "{lead}namespaceSelector:");
                    let _ = writeln!(out, "        matchLabels:");
                    let _ = writeln!(
                        out,
                        "          \"kubernetes.io/metadata.name\": {}",
                        scalar(ns)
                    );
                    lead = "      ";
                }
                let _ = writeln!(out, "{lead}podSelector:");
                let _ = writeln!(out, "        matchLabels:");
                labels_yaml(out, "          ", selector);
            }
            RulePeer::Block(cidr) => {
                let _ = writeln!(out, "    - ipBlock:");
                let _ = writeln!(out, "        cidr: {}", scalar(&cidr.to_string()));
            }
        }
        let _ = writeln!(out, "    ports:");
        for (proto, port) in &rule.ports {
            let port = match port {
                RulePort::Name(name) => scalar(name),
                RulePort::Number(n) => n.to_string(),
            };
            let _ = writeln!(out, "    - protocol: {proto}");
            let _ = writeln!(out, "      port: {port}");
        }
    }
}

/// One suggested policy as a YAML document (without the `---` separator).
pub fn policy_yaml(p: &SuggestedPolicy) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {}: {}", p.name, p.workload);
    let _ = writeln!(
        out,
        "# {} observed flow{}{}",
        p.evidence.flows,
        if p.evidence.flows == 1 { "" } else { "s" },
        span(&p.evidence)
    );
    for note in &p.notes {
        let _ = writeln!(out, "# note: {note}");
    }
    out.push_str("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n");
    let _ = writeln!(out, "  name: {}", scalar(&p.name));
    let _ = writeln!(out, "  namespace: {}", scalar(&p.workload.namespace));
    out.push_str("  labels:\n    \"app.kubernetes.io/managed-by\": \"weir\"\n  annotations:\n");
    for (k, v) in annotations(p) {
        let _ = writeln!(out, "    {}: {}", scalar(k), scalar(&v));
    }
    out.push_str("spec:\n  podSelector:\n    matchLabels:\n");
    labels_yaml(&mut out, "      ", &p.selector);
    out.push_str("  policyTypes:\n  - Ingress\n  - Egress\n");
    rules_yaml(&mut out, &p.ingress, "ingress", "from");
    rules_yaml(&mut out, &p.egress, "egress", "to");
    out
}

/// Every suggested policy as one multi-document YAML stream (the Baseline default deny last, when asked for).
pub fn suggestion_yaml(s: &Suggestion) -> String {
    let mut out = String::new();
    for (i, p) in s.policies.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&policy_yaml(p));
    }
    if let Some(baseline) = &s.baseline {
        if !out.is_empty() {
            out.push_str("---\n");
        }
        out.push_str(&baseline_yaml(baseline));
    }
    out
}

/// The suggested Baseline-tier default deny as a YAML document.
pub fn baseline_yaml(p: &weir_cluster::cnp::ClusterPolicy) -> String {
    use weir_cluster::cnp::{Peer, Subject};
    let selector = match &p.subject {
        Subject::Namespaces(s) => serde_json::to_value(s).unwrap_or_default(),
        Subject::Pods { namespaces, .. } => serde_json::to_value(namespaces).unwrap_or_default(),
    };
    let peers = |rule: &weir_cluster::cnp::Rule| -> Vec<serde_json::Value> {
        rule.peers
            .iter()
            .filter_map(|peer| match peer {
                Peer::Namespaces(s) => Some(serde_json::json!({"namespaces": s})),
                Peer::Networks(cidrs) => Some(serde_json::json!({
                    "networks": cidrs.iter().map(ToString::to_string).collect::<Vec<_>>()
                })),
                _ => None,
            })
            .collect()
    };
    let rules = |rules: &[weir_cluster::cnp::Rule], list: &str| -> Vec<serde_json::Value> {
        rules
            .iter()
            .map(|r| serde_json::json!({"name": r.name, "action": r.action.name(), list: peers(r)}))
            .collect()
    };
    let value = serde_json::json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": {
            "name": p.name,
            "labels": {"app.kubernetes.io/managed-by": "weir"},
        },
        "spec": {
            "tier": p.tier.name(),
            "priority": p.priority,
            "subject": {"namespaces": selector},
            "ingress": rules(&p.ingress, "from"),
            "egress": rules(&p.egress, "to"),
        }
    });
    let mut out = String::new();
    out.push_str(
        "# Baseline tier: in these namespaces, traffic no NetworkPolicy above governs is denied (ingress from pods,\n\
         # egress to pods and every address). NetworkPolicies override it where they isolate a pod; traffic from\n\
         # nodes (kubelet probes) and from outside the cluster is not a pod peer and stays as it was.\n",
    );
    out.push_str(&weir_cluster::yaml::to_yaml(&value));
    out
}

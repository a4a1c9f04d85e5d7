//! Suggested policies as NetworkPolicy objects: JSON for the engine, and YAML for people and `kubectl apply`,
//! with every rule commented with the flows behind it.

use std::fmt::Write as _;

use serde_json::{Value, json};
use weir_cluster::Labels;

use crate::suggest::{Evidence, RulePeer, RulePort, SuggestedPolicy, SuggestedRule, Suggestion};

fn ports_json(rule: &SuggestedRule) -> Vec<Value> {
    rule.ports
        .iter()
        .map(|(proto, port)| {
            let port = match port {
                RulePort::Name(name) => json!(name),
                RulePort::Number(n) => json!(n),
            };
            json!({"protocol": proto.to_string(), "port": port})
        })
        .collect()
}

fn peer_json(peer: &RulePeer) -> Value {
    match peer {
        RulePeer::Pods {
            namespace: None,
            selector,
        } => json!({"podSelector": {"matchLabels": selector}}),
        RulePeer::Pods {
            namespace: Some(ns),
            selector,
        } => json!({
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
            "podSelector": {"matchLabels": selector},
        }),
        RulePeer::Block(cidr) => json!({"ipBlock": {"cidr": cidr.to_string()}}),
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

/// One suggested policy as a NetworkPolicy object.
pub(crate) fn policy_json(p: &SuggestedPolicy) -> Value {
    let rules = |rules: &[SuggestedRule], key: &str| -> Vec<Value> {
        rules
            .iter()
            .map(|r| json!({key: [peer_json(&r.peer)], "ports": ports_json(r)}))
            .collect()
    };
    let annotations: serde_json::Map<String, Value> = annotations(p)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), json!(v)))
        .collect();
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": p.name,
            "namespace": p.workload.namespace,
            "labels": {"app.kubernetes.io/managed-by": "weir"},
            "annotations": annotations,
        },
        "spec": {
            "podSelector": {"matchLabels": p.selector},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": rules(&p.ingress, "from"),
            "egress": rules(&p.egress, "to"),
        }
    })
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

/// Every suggested policy as one multi-document YAML stream.
pub fn suggestion_yaml(s: &Suggestion) -> String {
    let mut out = String::new();
    for (i, p) in s.policies.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&policy_yaml(p));
    }
    out
}

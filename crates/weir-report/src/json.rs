//! The analysis as JSON: `{"summary":{...},"flows":[...]}` (`docs/analysis-json.md`), each flow written by
//! [`weir_analysis::write_flow`] as the live API writes it.

use std::io::{self, Write};

use serde::Serialize;
use weir_analysis::{Analysis, Decided, Edge, Group, Report, write_flow};
use weir_model::Timestamp;
use weir_policy::PolicySet;

#[derive(Serialize)]
struct GroupEdgeView<'a> {
    from: String,
    to: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<&'a str>,
    ports: Vec<String>,
    flows: u64,
    answered: u64,
    packets: u64,
    bytes: u64,
    first: String,
    last: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    denied_by: Vec<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    not_isolated: Vec<&'static str>,
    egress_policies: &'a [String],
    ingress_policies: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_because: Option<&'static str>,
    decided: &'a [std::sync::Arc<Decided>],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    decided_truncated: bool,
}

fn group_view(g: &Group) -> String {
    match g {
        Group::Workload(w) => format!("{} {}/{}", w.kind, w.namespace, w.name),
        other => other.to_string(),
    }
}

fn time(t: Timestamp) -> String {
    t.to_string()
}

fn edge_view(e: &Edge) -> GroupEdgeView<'_> {
    let mut denied_by = Vec::new();
    if e.egress_denied {
        denied_by.push("egress");
    }
    if e.ingress_denied {
        denied_by.push("ingress");
    }
    let mut not_isolated = Vec::new();
    if e.not_isolated.0 {
        not_isolated.push("egress");
    }
    if e.not_isolated.1 {
        not_isolated.push("ingress");
    }
    GroupEdgeView {
        from: group_view(&e.from),
        to: group_view(&e.to),
        service: e.service.as_deref(),
        ports: e
            .ports
            .iter()
            .map(|(proto, port)| match port {
                Some(p) => format!("{p}/{proto}"),
                None => proto.to_string(),
            })
            .collect(),
        flows: e.flows,
        answered: e.answered,
        packets: e.packets,
        bytes: e.bytes,
        first: time(e.first),
        last: time(e.last),
        denied_by,
        not_isolated,
        egress_policies: &e.egress_policies,
        ingress_policies: &e.ingress_policies,
        allowed_because: e.exception,
        decided: &e.decided,
        decided_truncated: e.decided_truncated,
    }
}

/// An edge as the JSON reports show it.
pub fn edge_json(e: &Edge) -> serde_json::Value {
    serde_json::to_value(edge_view(e)).unwrap_or(serde_json::Value::Null)
}

/// Writes `{"summary":{...},"flows":[...]}`, one flow per line, to `out`.
pub fn write_analysis_json<W: Write + ?Sized>(
    set: &PolicySet,
    analysis: &Analysis,
    report: &Report,
    inputs: &[String],
    out: &mut W,
) -> io::Result<()> {
    let t = &report.totals;
    let edges =
        |class| -> Vec<GroupEdgeView<'_>> { report.edges_of(class).map(edge_view).collect() };
    use weir_model::EdgeVerdict;
    let summary = serde_json::json!({
        "inputs": inputs,
        "policies_not_evaluated": set.cluster().unevaluated_policies(),
        "flows": t.flows,
        "packets": t.packets,
        "bytes": t.bytes,
        "first": t.first.map(time),
        "last": t.last.map(time),
        "verdicts": {
            "allowed": t.allowed,
            "allowed_not_isolated": t.allowed_not_isolated,
            "denied": t.denied,
            "mixed": t.mixed,
            "unknown": t.unjudged,
        },
        "via_service": t.via_service,
        "dnat_joined": t.dnat_joined,
        "pods_seen": t.pods_seen,
        "unexpected": edges(EdgeVerdict::Denied),
        "mixed": edges(EdgeVerdict::Mixed),
        "allowed_not_isolated": edges(EdgeVerdict::NotIsolated),
        "allowed": edges(EdgeVerdict::Allowed),
        "unjudged": edges(EdgeVerdict::Unknown),
        "namespaces_without_policy": report.namespaces_without_policy.iter()
            .map(|(ns, pods)| serde_json::json!({"namespace": ns, "pods": pods})).collect::<Vec<_>>(),
        "workloads_without_policy": report.workloads_without_policy.iter()
            .map(|w| serde_json::json!({"namespace": w.namespace, "kind": w.kind.to_string(), "name": w.name}))
            .collect::<Vec<_>>(),
        "policies_selecting_nothing": report.policies_selecting_nothing,
        "unused_rules": report.unused_rules.iter().map(|r| serde_json::json!({
            "policy": r.policy, "direction": r.direction.field(), "rule": r.rule, "text": r.text,
            "pods_observed": r.pods_observed,
        })).collect::<Vec<_>>(),
        "unattributed": report.unattributed.iter().map(|u| serde_json::json!({
            "ip": u.ip, "flows": u.flows, "peers": u.peers,
        })).collect::<Vec<_>>(),
        "inferred_node_addresses": report.inferred_node_addresses.iter().map(|a| serde_json::json!({
            "ip": a.ip, "node": a.node, "rule": a.source.to_string(), "flows": a.flows,
        })).collect::<Vec<_>>(),
        "external": report.external.iter().map(|(ip, flows, initiated)| serde_json::json!({
            "ip": ip, "flows": flows, "initiated": initiated,
        })).collect::<Vec<_>>(),
        "scans": report.scans.iter().map(|s| serde_json::json!({
            "source": group_view(&s.source), "ip": s.ip, "targets": s.targets, "hosts": s.hosts,
            "ports": s.ports, "flows": s.flows, "failed": s.failed, "denied": s.denied,
            "first": time(s.first), "last": time(s.last),
        })).collect::<Vec<_>>(),
    });
    out.write_all(b"{\"summary\":")?;
    serde_json::to_writer(&mut *out, &summary)?;
    out.write_all(b",\n\"flows\":[")?;
    let mut buf = Vec::with_capacity(1 << 16);
    for (i, flow) in analysis.flows.iter().enumerate() {
        buf.extend_from_slice(if i == 0 { b"\n" } else { b",\n" });
        write_flow(set, flow, &mut buf);
        if buf.len() >= 1 << 16 {
            out.write_all(&buf)?;
            buf.clear();
        }
    }
    out.write_all(&buf)?;
    out.write_all(b"\n]}\n")
}

/// Writes `{"edges":[...]}`, one edge of the report's edge book per line, each as `GET /api/v1/edges` shows it
/// (`docs/analysis-json.md`): an offline analysis and a live aggregator given the same flows list the same edges.
pub fn write_edges_json<W: Write + ?Sized>(report: &Report, out: &mut W) -> io::Result<()> {
    let mut buf = Vec::with_capacity(1 << 16);
    buf.extend_from_slice(b"{\"edges\":[");
    for (i, e) in report.book.iter().enumerate() {
        buf.extend_from_slice(if i == 0 { b"\n" } else { b",\n" });
        serde_json::to_writer(&mut buf, &weir_analysis::EdgeView::from(e))?;
        if buf.len() >= 1 << 16 {
            out.write_all(&buf)?;
            buf.clear();
        }
    }
    buf.extend_from_slice(b"\n]}\n");
    out.write_all(&buf)
}

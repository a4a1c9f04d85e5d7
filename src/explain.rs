//! `weir explain`: one connection's verdict, with the policies and rules behind it.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};
use weir_cluster::{IpOwner, ServiceId};
use weir_model::Protocol;
use weir_policy::{
    Action, Address, DecidingTier, Decision, Direction, DirectionDetail, Endpoint, Explanation,
    PolicySet, RuleRef, Tier, TierCheck, TierOutcome, TierRuleRef, Verdict,
};

use crate::snapshot::{self, KubeArgs, describe};

#[derive(Args)]
pub struct ExplainArgs {
    /// Cluster snapshot(s), as for `weir reach`.
    #[arg(long, value_name = "PATH")]
    cluster: Vec<PathBuf>,
    /// The client: NAMESPACE/POD or an IP address.
    #[arg(long, value_name = "NS/POD|IP")]
    from: String,
    /// The server: NAMESPACE/POD, an IP address, or svc/NAMESPACE/NAME for a Service (judged on each backend
    /// at its target port, as after the node's DNAT).
    #[arg(long, value_name = "NS/POD|IP|svc/NS/NAME")]
    to: String,
    /// PORT[/PROTOCOL]: a number or a port name (a container port of the pod, or a Service port name).
    #[arg(long, value_name = "PORT[/PROTO]")]
    port: String,
    /// The namespace of a bare pod name in --from or --to, and of `svc/NAME`.
    #[arg(long, short = 'n', value_name = "NS")]
    namespace: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ExplainFormat::Text)]
    format: ExplainFormat,
}

/// `POD` as `NS/POD` and `svc/NAME` as `svc/NS/NAME` when a namespace is given; anything else as it is.
fn qualify(text: &str, namespace: Option<&str>) -> String {
    let Some(ns) = namespace else {
        return text.to_owned();
    };
    if text.parse::<IpAddr>().is_ok() {
        return text.to_owned();
    }
    match text.strip_prefix("svc/") {
        Some(name) if !name.contains('/') => format!("svc/{ns}/{name}"),
        Some(_) => text.to_owned(),
        None if !text.contains('/') => format!("{ns}/{text}"),
        None => text.to_owned(),
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum ExplainFormat {
    /// Sentences for people.
    Text,
    /// The same as one JSON object.
    Json,
}

/// One judged connection: to a pod or address directly, or to one backend of a Service.
struct Case {
    dst: Address,
    port: Option<u16>,
    note: Option<String>,
    explanation: Explanation,
}

pub fn run(mut args: ExplainArgs, kube: &KubeArgs) -> Result<ExitCode> {
    args.from = qualify(&args.from, args.namespace.as_deref());
    args.to = qualify(&args.to, args.namespace.as_deref());
    let set = snapshot::load(&args.cluster, kube)?;
    let cluster = set.cluster();
    let src = snapshot::resolve(&set, &args.from, "--from")?;
    let (port_text, protocol) = snapshot::parse_port(&args.port)?;
    let number = port_text.parse::<u16>().ok();

    let service = match args.to.strip_prefix("svc/") {
        Some(rest) => {
            let Some((ns, name)) = rest.split_once('/') else {
                bail!("--to {:?}: expected svc/NAMESPACE/NAME", args.to);
            };
            match cluster.find_service(ns, name) {
                Some(id) => Some(id),
                None => bail!("--to {:?}: no Service {ns}/{name} in the snapshot", args.to),
            }
        }
        None => match args
            .to
            .parse::<IpAddr>()
            .ok()
            .and_then(|ip| cluster.owner_of(ip))
        {
            Some(IpOwner::Service(id)) => Some(id),
            _ => None,
        },
    };
    let mut cases = Vec::new();
    let header;
    match service {
        Some(id) => {
            header = service_cases(&set, id, &src, &port_text, number, protocol, &mut cases)?;
        }
        None => {
            let dst = snapshot::resolve(&set, &args.to, "--to")?;
            let port = match (number, dst.endpoint) {
                (Some(n), _) => n,
                (None, Endpoint::Pod(pod)) => {
                    match cluster.pod(pod).named_port(&port_text, protocol) {
                        Some(n) => n,
                        None => bail!(
                            "--port {:?}: {} declares no {} port named {port_text:?}",
                            args.port,
                            cluster.pod(pod).key(),
                            protocol.name().unwrap_or("?")
                        ),
                    }
                }
                (None, _) => bail!("--port {:?}: a port name needs a pod as --to", args.port),
            };
            header = None;
            cases.push(Case {
                dst,
                port: Some(port),
                note: None,
                explanation: set.explain(&src, &dst, Some(port), protocol),
            });
        }
    }
    let mut out = io::stdout().lock();
    match args.format {
        ExplainFormat::Text => {
            let mut text = String::new();
            if let Some(header) = &header {
                writeln!(text, "{header}")?;
            }
            for case in &cases {
                if header.is_some() {
                    writeln!(text)?;
                }
                write_text(&mut text, &set, &src, case, protocol)?;
            }
            out.write_all(text.as_bytes())?;
        }
        ExplainFormat::Json => {
            let mut value = json!({
                "from": endpoint_json(&set, &src),
                "protocol": protocol.name(),
                "allowed": !cases.is_empty() && cases.iter().all(|c| c.explanation.verdict.allowed()),
                "connections": cases.iter().map(|c| case_json(&set, c)).collect::<Vec<_>>(),
            });
            if let Some(id) = service {
                value["service"] = json!(cluster.service(id).key());
                value["service_port"] = json!(port_text);
            }
            serde_json::to_writer_pretty(&mut out, &value)?;
            writeln!(out)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn service_cases(
    set: &PolicySet,
    id: ServiceId,
    src: &Address,
    port_text: &str,
    number: Option<u16>,
    protocol: Protocol,
    cases: &mut Vec<Case>,
) -> Result<Option<String>> {
    let cluster = set.cluster();
    let service = cluster.service(id);
    let service_port = service
        .ports
        .iter()
        .find(|p| p.protocol == protocol && (Some(p.port) == number || p.name == port_text));
    let Some(service_port) = service_port else {
        let ports: Vec<String> = service
            .ports
            .iter()
            .map(|p| {
                let name = if p.name.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", p.name)
                };
                format!("{}/{}{name}", p.port, p.protocol.name().unwrap_or("?"))
            })
            .collect();
        bail!(
            "Service {} has no port {port_text}/{}; it has {}",
            service.key(),
            protocol.name().unwrap_or("?"),
            if ports.is_empty() {
                "none".to_owned()
            } else {
                ports.join(", ")
            }
        );
    };
    let (_, backends) = cluster
        .resolve_service(id, service_port.port, protocol)
        .unwrap_or((service_port, Vec::new()));
    let header = format!(
        "Service {} port {}/{} → {} backend{}{}",
        service.key(),
        service_port.port,
        protocol.name().unwrap_or("?"),
        backends.len(),
        if backends.len() == 1 { "" } else { "s" },
        if backends.is_empty() {
            ": no connection can be made"
        } else {
            ""
        }
    );
    for backend in backends {
        let dst = match backend.pod {
            Some(pod) => Address {
                ip: Some(backend.ip),
                ..set.address_of_pod(pod)
            },
            None => set.address_of_ip(backend.ip),
        };
        cases.push(Case {
            dst,
            port: Some(backend.port),
            note: (!backend.ready).then(|| "endpoint not ready".to_owned()),
            explanation: set.explain(src, &dst, Some(backend.port), protocol),
        });
    }
    Ok(Some(header))
}

fn ends(set: &PolicySet, src: &Address, dst: &Address) -> (String, String) {
    let with_ip = |a: &Address| match (a.endpoint, a.ip) {
        (Endpoint::External, _) | (_, None) => describe(set, a),
        (_, Some(ip)) => format!("{} ({ip})", describe(set, a)),
    };
    (with_ip(src), with_ip(dst))
}

fn write_text(
    out: &mut String,
    set: &PolicySet,
    src: &Address,
    case: &Case,
    protocol: Protocol,
) -> std::fmt::Result {
    let (from, to) = ends(set, src, &case.dst);
    let e = &case.explanation;
    let port = case.port.map_or("-".to_owned(), |p| p.to_string());
    let verdict = if !e.verdict.decided() {
        "UNDECIDED"
    } else if e.verdict.allowed() {
        "ALLOWED"
    } else {
        "DENIED"
    };
    write!(
        out,
        "{from} → {to} port {port}/{}: {verdict}",
        protocol.name().unwrap_or("?")
    )?;
    if let Some(note) = &case.note {
        write!(out, " ({note})")?;
    }
    writeln!(out)?;
    let src_name = describe(set, src);
    let dst_name = describe(set, &case.dst);
    write_direction(
        out,
        set,
        Direction::Egress,
        &src_name,
        &dst_name,
        &e.verdict,
        &e.egress,
    )?;
    write_direction(
        out,
        set,
        Direction::Ingress,
        &dst_name,
        &src_name,
        &e.verdict,
        &e.ingress,
    )
}

fn rule_text(set: &PolicySet, direction: Direction, r: &RuleRef) -> String {
    let policy = &set.policies()[r.policy as usize];
    let rule = &policy.rules(direction)[r.rule as usize];
    let peer = match (r.peer(), &rule.peers) {
        (Some(i), Some(peers)) => format!(
            "{} #{i}: {}",
            list_name(direction),
            set.peer(peers[i as usize])
        ),
        _ => format!(
            "any {}",
            if direction == Direction::Ingress {
                "source"
            } else {
                "destination"
            }
        ),
    };
    let port = match (r.port(), &rule.ports) {
        (Some(i), Some(ports)) => format!("ports #{i}: {}", ports[i as usize]),
        _ => "any port".to_owned(),
    };
    format!(
        "{} {direction} rule #{} ({peer}; {port})",
        policy.key(),
        r.rule
    )
}

fn list_name(direction: Direction) -> &'static str {
    match direction {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    }
}

fn write_direction(
    out: &mut String,
    set: &PolicySet,
    direction: Direction,
    subject: &str,
    other: &str,
    verdict: &Verdict,
    detail: &DirectionDetail,
) -> std::fmt::Result {
    let (decision, pass) = verdict.side(direction);
    let what = match direction {
        Direction::Egress => "egress of the source",
        Direction::Ingress => "ingress of the destination",
    };
    let word = if !decision.decided() {
        "undecided"
    } else if decision.allowed() {
        "allowed"
    } else {
        "denied"
    };
    writeln!(out, "  {what}, {subject}: {word}")?;
    if decision == Decision::NotApplicable {
        return writeln!(
            out,
            "    not a pod subject to policy (outside the cluster, a node, or hostNetwork)"
        );
    }
    // Without cluster-wide policies the chain is NetworkPolicy alone, which the lines below say in full.
    if !set.tier_policies().is_empty() {
        writeln!(
            out,
            "    decision: {}",
            set.chain(direction, verdict, &detail.isolating)
        )?;
    }
    if !detail.tier_rules.is_empty() {
        write_tier_rules(out, set, direction, other, decision, pass, detail)?;
    }
    for &p in &detail.ambiguous_with {
        let theirs = &set.tier_policies()[p as usize];
        writeln!(
            out,
            "    ambiguous: {} has the same tier and priority ({}) and a rule that matches with another \
             action; the API leaves the order to the implementation, weir takes policies of equal priority in \
             order of kind, then name",
            theirs.label(),
            theirs.priority
        )?;
    }
    let isolating: Vec<String> = detail
        .isolating
        .iter()
        .map(|&p| set.policies()[p as usize].key())
        .collect();
    match decision.tier() {
        DecidingTier::Admin => {
            if !isolating.is_empty() {
                writeln!(
                    out,
                    "    NetworkPolicy not consulted (the Admin tier decided); isolated for {direction} by {}",
                    isolating.join(", ")
                )?;
            }
            return Ok(());
        }
        DecidingTier::Baseline | DecidingTier::Default => {
            return writeln!(
                out,
                "    no NetworkPolicy selects it for {direction}, so it is not isolated"
            );
        }
        DecidingTier::NetworkPolicy => {}
    }
    writeln!(
        out,
        "    isolated for {direction} by {}",
        isolating.join(", ")
    )?;
    for r in &detail.allowed_by {
        writeln!(out, "    allowed by {}", rule_text(set, direction, r))?;
    }
    match decision {
        Decision::SamePod => writeln!(
            out,
            "    no rule allows it, but a pod can always reach itself"
        )?,
        Decision::OwnNode => writeln!(
            out,
            "    no rule allows it, but a pod and its own node can always reach each other"
        )?,
        Decision::Denied if detail.misses.is_empty() => writeln!(
            out,
            "    no rule allows it: the isolating policies have no {direction} rules"
        )?,
        Decision::Denied => writeln!(out, "    no rule allows it:")?,
        _ => {}
    }
    if !decision.allowed() || matches!(decision, Decision::SamePod | Decision::OwnNode) {
        for miss in &detail.misses {
            let policy = &set.policies()[miss.policy as usize];
            let why = match (miss.peer_matched, miss.port_matched) {
                (false, false) => format!("neither its peers nor its ports match {other}"),
                (false, true) => format!("its peers do not match {other}"),
                (true, false) => "its ports do not match".to_owned(),
                (true, true) => "matches".to_owned(),
            };
            let rule = &policy.rules(direction)[miss.rule as usize];
            let peers = match &rule.peers {
                None => "any".to_owned(),
                Some(ids) => ids
                    .iter()
                    .map(|&id| set.peer(id).to_string())
                    .collect::<Vec<_>>()
                    .join(" | "),
            };
            let ports = match &rule.ports {
                None => "any".to_owned(),
                Some(ports) => ports
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" | "),
            };
            writeln!(
                out,
                "      {} {direction} rule #{}: {why} ({}: {peers}; ports: {ports})",
                policy.key(),
                miss.rule,
                list_name(direction)
            )?;
        }
    }
    Ok(())
}

/// Whether evaluation reached each cluster-wide rule: the Admin tier up to its deciding or passing rule; the
/// Baseline tier only when NetworkPolicy does not isolate the end and the Admin tier did not decide, up to its
/// deciding rule.
fn reached(detail: &DirectionDetail, decision: Decision, pass: Option<TierRuleRef>) -> Vec<bool> {
    let stop = |r: &TierRuleRef| {
        detail
            .tier_rules
            .iter()
            .position(|c| c.rule.policy == r.policy && c.rule.rule == r.rule)
    };
    let admin_stop = match (decision, pass) {
        (_, Some(p)) => stop(&p),
        (Decision::Tier(r), None) if r.tier == Tier::Admin => stop(&r),
        _ => None,
    };
    let admin_decided = matches!(decision, Decision::Tier(r) if r.tier == Tier::Admin);
    let baseline_open = !admin_decided && detail.isolating.is_empty();
    let baseline_stop = match decision {
        Decision::Tier(r) if r.tier == Tier::Baseline => stop(&r),
        _ => None,
    };
    detail
        .tier_rules
        .iter()
        .enumerate()
        .map(|(i, c)| match c.rule.tier {
            Tier::Admin => admin_stop.is_none_or(|s| i <= s),
            Tier::Baseline => baseline_open && baseline_stop.is_none_or(|s| i <= s),
        })
        .collect()
}

fn write_tier_rules(
    out: &mut String,
    set: &PolicySet,
    direction: Direction,
    other: &str,
    decision: Decision,
    pass: Option<TierRuleRef>,
    detail: &DirectionDetail,
) -> std::fmt::Result {
    writeln!(out, "    cluster-wide rules, in evaluation order:")?;
    let reached = reached(detail, decision, pass);
    let deciding = |c: &TierCheck| {
        let same = |r: TierRuleRef| r.policy == c.rule.policy && r.rule == c.rule.rule;
        pass.is_some_and(same)
            || matches!(decision, Decision::Tier(r) | Decision::Undecided(r) if same(r))
    };
    for (check, reached) in detail.tier_rules.iter().zip(reached) {
        let how = match (check.outcome, reached) {
            (TierOutcome::Matched, true)
                if deciding(check) && check.rule.action == Action::Pass =>
            {
                match check.rule.tier {
                    Tier::Admin => "matches: passes to NetworkPolicy".to_owned(),
                    Tier::Baseline => "matches: passes to the default (allowed)".to_owned(),
                }
            }
            (TierOutcome::Matched, true) if deciding(check) => "matches: decides".to_owned(),
            (TierOutcome::Matched, true) => "matches".to_owned(),
            (TierOutcome::Matched, false) => "not reached (it would match)".to_owned(),
            (_, false) => "not reached".to_owned(),
            (TierOutcome::Undecided, true) => format!(
                "matches only if {other} was reached by one of its domainNames, which a flow does not tell"
            ),
            (
                TierOutcome::Missed {
                    peer_matched,
                    port_matched,
                },
                _,
            ) => match (peer_matched, port_matched) {
                (false, false) => format!("neither its peers nor its ports match {other}"),
                (false, true) => format!("its peers do not match {other}"),
                _ => "its ports do not match".to_owned(),
            },
        };
        writeln!(
            out,
            "      {}: {how}",
            set.describe_tier_rule(direction, &check.rule)
        )?;
    }
    Ok(())
}

fn endpoint_json(set: &PolicySet, a: &Address) -> Value {
    let cluster = set.cluster();
    let (kind, name) = match a.endpoint {
        Endpoint::Pod(p) => ("pod", Some(cluster.pod(p).key())),
        Endpoint::Node(n) => ("node", Some(cluster.node(n).name.clone())),
        Endpoint::External => ("external", None),
    };
    json!({"kind": kind, "name": name, "ip": a.ip.map(|ip| ip.to_string())})
}

fn decision_name(d: Decision) -> &'static str {
    match d {
        Decision::NotApplicable => "not-applicable",
        Decision::NotIsolated => "not-isolated",
        Decision::AllowedBy(_) => "allowed-by-rule",
        Decision::OwnNode => "own-node",
        Decision::SamePod => "same-pod",
        Decision::Denied => "denied",
        Decision::Tier(r) => match r.action {
            Action::Accept => "accepted-by-rule",
            Action::Deny => "denied-by-rule",
            Action::Pass => "passed-to-default",
        },
        Decision::Undecided(_) => "undecided",
    }
}

fn rule_json(set: &PolicySet, r: &RuleRef) -> Value {
    json!({"policy": set.policies()[r.policy as usize].key(), "rule": r.rule, "peer": r.peer(), "port": r.port()})
}

fn tier_rule_json(set: &PolicySet, direction: Direction, r: &TierRuleRef) -> Value {
    let policy = &set.tier_policies()[r.policy as usize];
    let name = policy
        .rules(direction)
        .get(usize::from(r.rule))
        .and_then(|rule| rule.name.clone());
    json!({
        "policy": policy.key(),
        "tier": r.tier.name(),
        "priority": policy.priority,
        "rule": r.rule,
        "name": name,
        "action": r.action.name(),
        "peer": r.peer(),
        "protocol": r.port(),
    })
}

fn direction_json(
    set: &PolicySet,
    direction: Direction,
    verdict: &Verdict,
    d: &DirectionDetail,
) -> Value {
    let (decision, pass) = verdict.side(direction);
    let deciding = match decision {
        Decision::Tier(r) | Decision::Undecided(r) => Some(tier_rule_json(set, direction, &r)),
        _ => None,
    };
    let reached = reached(d, decision, pass);
    json!({
        "allowed": decision.allowed(),
        "decided": decision.decided(),
        "decision": decision_name(decision),
        "tier": decision.tier().name(),
        "chain": set.chain(direction, verdict, &d.isolating),
        "passed_by": pass.map(|p| tier_rule_json(set, direction, &p)),
        "decided_by": deciding,
        "cluster_rules": d.tier_rules.iter().zip(reached).map(|(c, reached)| {
            let mut v = tier_rule_json(set, direction, &c.rule);
            let (outcome, peer, port) = match c.outcome {
                TierOutcome::Matched => ("matched", true, true),
                TierOutcome::Undecided => ("undecided", false, true),
                TierOutcome::Missed { peer_matched, port_matched } => ("missed", peer_matched, port_matched),
            };
            v["outcome"] = json!(outcome);
            v["reached"] = json!(reached);
            v["peer_matched"] = json!(peer);
            v["port_matched"] = json!(port);
            v
        }).collect::<Vec<_>>(),
        "ambiguous_with": d.ambiguous_with.iter().map(|&p| set.tier_policies()[p as usize].key()).collect::<Vec<_>>(),
        "isolated_by": d.isolating.iter().map(|&p| set.policies()[p as usize].key()).collect::<Vec<_>>(),
        "allowed_by": d.allowed_by.iter().map(|r| rule_json(set, r)).collect::<Vec<_>>(),
        "not_allowed_by": d.misses.iter().map(|m| json!({
            "policy": set.policies()[m.policy as usize].key(),
            "rule": m.rule,
            "peer_matched": m.peer_matched,
            "port_matched": m.port_matched,
        })).collect::<Vec<_>>(),
    })
}

fn case_json(set: &PolicySet, case: &Case) -> Value {
    let e = &case.explanation;
    json!({
        "to": endpoint_json(set, &case.dst),
        "port": case.port,
        "note": case.note,
        "allowed": e.verdict.allowed(),
        "decided": e.verdict.decided(),
        "egress": direction_json(set, Direction::Egress, &e.verdict, &e.egress),
        "ingress": direction_json(set, Direction::Ingress, &e.verdict, &e.ingress),
    })
}

#[cfg(test)]
mod tests {
    use super::qualify;

    #[test]
    fn a_namespace_qualifies_bare_names_only() {
        let ns = Some("shop");
        assert_eq!(qualify("web-0", ns), "shop/web-0");
        assert_eq!(qualify("other/web-0", ns), "other/web-0");
        assert_eq!(qualify("svc/api", ns), "svc/shop/api");
        assert_eq!(qualify("svc/other/api", ns), "svc/other/api");
        assert_eq!(qualify("10.0.0.5", ns), "10.0.0.5");
        assert_eq!(qualify("fd00::5", ns), "fd00::5");
        assert_eq!(qualify("web-0", None), "web-0");
    }
}

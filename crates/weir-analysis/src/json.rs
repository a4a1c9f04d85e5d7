//! A judged flow and an edge as JSON, offline and live alike: the flow record with its endpoints, Service,
//! verdict per direction and a one-line reason ([`write_flow`]), and an edge of the edge book as the analysis
//! document and `GET /api/v1/edges` both show it ([`EdgeView`]). The whole analysis document is weir-report's.

use std::collections::BTreeSet;
use std::hash::BuildHasher as _;
use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;
use weir_cluster::{ClusterState, ServiceFrontend};
use weir_model::{FlowRecord, FlowVerdict, Timestamp};
use weir_policy::{Decision, Direction, Grounds, PolicySet, TierRuleRef, Verdict};

use crate::analyze::{JudgedFlow, Judgement, Unjudged, union};
use crate::attribute::Party;
use crate::book::{Decided, EdgeKey, EdgeStats, SideDecision, SideTier};

/// How one direction judged a flow, as JSON shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DirectionView {
    /// `allowed`, `denied`, `not-isolated` (no policy of any tier decided, or the end is not a pod),
    /// `undecided` (only a `domainNames` rule could allow it), `mixed` (a Service's backends disagree) or
    /// `unknown` (not judged).
    pub verdict: &'static str,
    /// The tier that decided: `admin`, `networkpolicy`, `baseline` or `default`; `mixed` or `unknown` as above.
    pub tier: SideTier,
    /// The deciding policies: NetworkPolicies as `namespace/name` (those allowing it, or those isolating the
    /// end when denied), cluster-wide ones as `Kind/name` (an Admin Pass on the way included).
    pub policies: Vec<String>,
    /// The decision chain in words (`Admin ops rule #0 "delegate" Pass → NetworkPolicy shop/api isolates,
    /// shop/api rule #1 allows`); empty for `mixed` and `unknown`.
    pub chain: String,
}

fn decision_name(d: Decision) -> &'static str {
    match d {
        Decision::NotApplicable | Decision::NotIsolated => "not-isolated",
        Decision::Undecided(_) => "undecided",
        d if d.allowed() => "allowed",
        _ => "denied",
    }
}

fn side(
    set: &PolicySet,
    direction: Direction,
    verdict: &Verdict,
    isolating: &[u32],
    allowing: &[weir_policy::RuleRef],
) -> DirectionView {
    let (decision, pass) = verdict.side(direction);
    let key = |id: u32| set.policies()[id as usize].key();
    let tier_key = |r: &TierRuleRef| set.tier_policies()[r.policy as usize].key();
    let mut policies: Vec<String> = pass.iter().map(tier_key).collect();
    match decision {
        Decision::AllowedBy(_) => union(&mut policies, allowing.iter().map(|r| key(r.policy))),
        Decision::Denied => union(&mut policies, isolating.iter().map(|&id| key(id))),
        Decision::Tier(r) | Decision::Undecided(r) => union(&mut policies, [tier_key(&r)]),
        _ => {}
    }
    DirectionView {
        verdict: decision_name(decision),
        tier: decision.tier().into(),
        policies,
        chain: set.chain(direction, verdict, isolating),
    }
}

fn sides(set: &PolicySet, verdict: &Verdict, g: &Grounds) -> (DirectionView, DirectionView) {
    (
        side(
            set,
            Direction::Egress,
            verdict,
            &g.egress_isolating,
            &g.egress_allowing,
        ),
        side(
            set,
            Direction::Ingress,
            verdict,
            &g.ingress_isolating,
            &g.ingress_allowing,
        ),
    )
}

/// The source's egress and the destination's ingress of a judgement.
pub fn direction_views(set: &PolicySet, judgement: &Judgement) -> (DirectionView, DirectionView) {
    match judgement {
        Judgement::Judged { verdict, grounds } => sides(set, verdict, grounds),
        Judgement::Mixed(backends) => {
            let mut out: Option<(DirectionView, DirectionView)> = None;
            for b in backends {
                let (e, i) = sides(set, &b.verdict, &b.grounds);
                out = Some(match out {
                    None => (e, i),
                    Some((mut oe, mut oi)) => {
                        for (acc, new) in [(&mut oe, e), (&mut oi, i)] {
                            if acc.verdict != new.verdict {
                                acc.verdict = "mixed";
                            }
                            if acc.tier != new.tier {
                                acc.tier = SideTier::Mixed;
                            }
                            if acc.chain != new.chain {
                                acc.chain.clear();
                            }
                            union(&mut acc.policies, new.policies);
                        }
                        (oe, oi)
                    }
                });
            }
            out.unwrap_or_else(unknown_sides)
        }
        Judgement::Unjudged(_) => unknown_sides(),
    }
}

fn unknown_sides() -> (DirectionView, DirectionView) {
    let unknown = || DirectionView {
        verdict: "unknown",
        tier: SideTier::Unknown,
        policies: Vec::new(),
        chain: String::new(),
    };
    (unknown(), unknown())
}

impl DirectionView {
    /// The tier and chain, as an edge keeps them.
    pub fn decision(&self) -> SideDecision {
        SideDecision {
            tier: self.tier,
            chain: self.chain.clone(),
        }
    }
}

/// How judgements were decided, each way computed and held once: the chain of a judgement depends on its
/// verdict and the isolating policies alone, which far fewer judgements differ in than in their grounds.
/// Looking one up allocates nothing.
#[derive(Default)]
pub struct DecidedMemo {
    by_key: hashbrown::HashTable<DecidedEntry>,
    hasher: foldhash::fast::FixedState,
}

/// A verdict and the policies isolating each end, and how that was decided.
struct DecidedEntry {
    verdict: Verdict,
    egress_isolating: Box<[u32]>,
    ingress_isolating: Box<[u32]>,
    decided: Arc<Decided>,
}

impl DecidedMemo {
    /// How a judgement was decided.
    pub fn get(&mut self, set: &PolicySet, judgement: &Judgement) -> Arc<Decided> {
        let Judgement::Judged { verdict, grounds } = judgement else {
            return Arc::new(decided(set, judgement));
        };
        let (egress, ingress) = (
            grounds.egress_isolating.as_slice(),
            grounds.ingress_isolating.as_slice(),
        );
        let hash = self.hasher.hash_one((verdict, egress, ingress));
        let same = |e: &DecidedEntry| {
            e.verdict == *verdict
                && *e.egress_isolating == *egress
                && *e.ingress_isolating == *ingress
        };
        if let Some(e) = self.by_key.find(hash, same) {
            return Arc::clone(&e.decided);
        }
        let entry = DecidedEntry {
            verdict: *verdict,
            egress_isolating: egress.into(),
            ingress_isolating: ingress.into(),
            decided: Arc::new(decided(set, judgement)),
        };
        let d = Arc::clone(&entry.decided);
        let hasher = self.hasher.clone();
        self.by_key.insert_unique(hash, entry, |e| {
            hasher.hash_one((&e.verdict, &*e.egress_isolating, &*e.ingress_isolating))
        });
        d
    }
}

/// How each direction of a judgement was decided, as an edge keeps it.
pub fn decided(set: &PolicySet, judgement: &Judgement) -> Decided {
    let (egress, ingress) = direction_views(set, judgement);
    Decided {
        egress: egress.decision(),
        ingress: ingress.decision(),
    }
}

/// The deciding policies of a judgement as an edge keeps them: `egress ns/name`, then `ingress ns/name`.
pub fn policy_names(set: &PolicySet, judgement: &Judgement) -> Vec<String> {
    let (egress, ingress) = direction_views(set, judgement);
    let mut policies = Vec::with_capacity(egress.policies.len() + ingress.policies.len());
    for (dir, view) in [("egress", egress), ("ingress", ingress)] {
        for p in view.policies {
            policies.push(format!("{dir} {p}"));
        }
    }
    policies
}

/// An edge of the edge book as JSON shows it, offline (the analysis document's `edges`) and live
/// (`GET /api/v1/edges`): its form changes only here, whatever the book keeps.
#[derive(Debug, Serialize)]
pub struct EdgeView<'a> {
    key: &'a EdgeKey,
    flows: u64,
    packets: u64,
    bytes: u64,
    allowed: u64,
    denied: u64,
    other: u64,
    verdict: FlowVerdict,
    not_isolated: bool,
    policies: &'a [String],
    egress: &'a SideDecision,
    ingress: &'a SideDecision,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    services: &'a [String],
    nodes: &'a BTreeSet<String>,
    delivered: u64,
    dropped_in_transit: u64,
    enforcement_gaps: u64,
    first_seen: Timestamp,
    last_seen: Timestamp,
    baseline: bool,
    sample: &'a FlowRecord,
}

impl<'a> From<&'a EdgeStats> for EdgeView<'a> {
    fn from(e: &'a EdgeStats) -> EdgeView<'a> {
        EdgeView {
            key: &e.key,
            flows: e.flows,
            packets: e.packets,
            bytes: e.bytes,
            allowed: e.allowed,
            denied: e.denied,
            other: e.other,
            verdict: e.verdict,
            not_isolated: e.not_isolated,
            policies: &e.policies,
            egress: &e.decided.egress,
            ingress: &e.decided.ingress,
            services: &e.services,
            nodes: &e.nodes,
            delivered: e.delivered,
            dropped_in_transit: e.dropped_in_transit,
            enforcement_gaps: e.enforcement_gaps,
            first_seen: e.first_seen,
            last_seen: e.last_seen,
            baseline: e.baseline,
            sample: &e.sample,
        }
    }
}

/// The verdict on a flow: allowed, denied, mixed (a Service's backends disagree) or unknown (not judged).
pub fn flow_verdict(judgement: &Judgement) -> FlowVerdict {
    match judgement {
        Judgement::Judged { verdict, .. } if !verdict.decided() => FlowVerdict::Unknown,
        Judgement::Judged { verdict, .. } if verdict.allowed() => FlowVerdict::Allowed,
        Judgement::Judged { .. } => FlowVerdict::Denied,
        Judgement::Mixed(_) => FlowVerdict::Mixed,
        Judgement::Unjudged(_) => FlowVerdict::Unknown,
    }
}

#[derive(Serialize)]
struct WorkloadRef<'a> {
    kind: String,
    name: &'a str,
}

#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum EndpointView<'a> {
    Pod {
        namespace: &'a str,
        name: &'a str,
        workload: WorkloadRef<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        node: Option<&'a str>,
        ip: IpAddr,
    },
    Node {
        name: &'a str,
        ip: IpAddr,
        /// The rule that made the address the node's.
        #[serde(skip_serializing_if = "Option::is_none")]
        address: Option<String>,
    },
    Workload {
        namespace: &'a str,
        workload: WorkloadRef<'a>,
        backends: usize,
    },
    Service {
        namespace: &'a str,
        name: &'a str,
        ip: IpAddr,
    },
    External {
        ip: IpAddr,
    },
    Unknown {
        ip: IpAddr,
    },
}

fn endpoint<'a>(cluster: &'a ClusterState, party: Party, ip: IpAddr) -> EndpointView<'a> {
    match party {
        Party::Pod(id) => {
            let pod = cluster.pod(id);
            EndpointView::Pod {
                namespace: &pod.namespace,
                name: &pod.name,
                workload: WorkloadRef {
                    kind: pod.workload.kind.to_string(),
                    name: &pod.workload.name,
                },
                node: pod.node_name.as_deref(),
                ip,
            }
        }
        Party::Node(id) => {
            let node = cluster.node(id);
            EndpointView::Node {
                name: &node.name,
                ip,
                address: node.address_source(ip).map(ToString::to_string),
            }
        }
        Party::Backends(id) => {
            let service = cluster.service(id);
            match cluster.backend_workload(id) {
                Some(w) => EndpointView::Workload {
                    namespace: &w.namespace,
                    workload: WorkloadRef {
                        kind: w.kind.to_string(),
                        name: &w.name,
                    },
                    backends: service.backends.len(),
                },
                None => EndpointView::Service {
                    namespace: &service.namespace,
                    name: &service.name,
                    ip,
                },
            }
        }
        Party::Service(id) => {
            let service = cluster.service(id);
            EndpointView::Service {
                namespace: &service.namespace,
                name: &service.name,
                ip,
            }
        }
        Party::External => EndpointView::External { ip },
        Party::Unknown => EndpointView::Unknown { ip },
    }
}

#[derive(Serialize)]
struct ServiceView<'a> {
    namespace: &'a str,
    name: &'a str,
    port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_port: Option<u16>,
    /// How the client reached it, when not through the ClusterIP: `load-balancer`, `external-ip`,
    /// `node-port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    via: Option<&'static str>,
    /// The node port the client used.
    #[serde(skip_serializing_if = "Option::is_none")]
    node_port: Option<u16>,
    /// The source address the backend saw, when the node masqueraded the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    masqueraded_as: Option<IpAddr>,
}

#[derive(Serialize)]
struct BackendView {
    pod: Option<String>,
    ip: IpAddr,
    port: u16,
    verdict: FlowVerdict,
}

#[derive(Serialize)]
struct FlowExtras<'a> {
    source: EndpointView<'a>,
    destination: EndpointView<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<ServiceView<'a>>,
    verdict: FlowVerdict,
    egress: DirectionView,
    ingress: DirectionView,
    #[serde(skip_serializing_if = "Option::is_none")]
    backends: Option<Vec<BackendView>>,
    reason: String,
}

/// One line saying why a flow got its verdict.
pub fn reason(set: &PolicySet, flow: &JudgedFlow) -> String {
    let cluster = set.cluster();
    match &flow.judgement {
        Judgement::Judged { verdict, .. } => {
            let (egress, ingress) = direction_views(set, &flow.judgement);
            // Without cluster-wide policies in the chain, the short NetworkPolicy wording; with them, the chain.
            let says = |(d, pass): (Decision, Option<TierRuleRef>),
                        view: &DirectionView,
                        dir: &str,
                        end: &str|
             -> Option<String> {
                Some(match (d, pass) {
                    (Decision::NotApplicable, _) => return None,
                    (Decision::NotIsolated, None) => format!("{end} not isolated for {dir}"),
                    (Decision::AllowedBy(_), None) => {
                        format!("{dir} allowed by {}", view.policies.join(", "))
                    }
                    (Decision::OwnNode, _) => {
                        "a pod and its own node may always connect".to_owned()
                    }
                    (Decision::SamePod, _) => "a pod may always reach itself".to_owned(),
                    (Decision::Denied, None) => {
                        format!("no {dir} rule of {} allows it", view.policies.join(", "))
                    }
                    _ => format!("{dir}: {}", view.chain),
                })
            };
            let parts: Vec<String> = [
                says(verdict.side(Direction::Egress), &egress, "egress", "source"),
                says(
                    verdict.side(Direction::Ingress),
                    &ingress,
                    "ingress",
                    "destination",
                ),
            ]
            .into_iter()
            .flatten()
            .collect();
            let head = if !verdict.decided() {
                "undecided"
            } else if verdict.allowed() {
                "allowed"
            } else {
                "denied"
            };
            if parts.is_empty() {
                format!("{head}: neither end is a pod subject to NetworkPolicy")
            } else {
                format!("{head}: {}", parts.join("; "))
            }
        }
        Judgement::Mixed(backends) => {
            let allowed = backends.iter().filter(|b| b.verdict.allowed()).count();
            format!(
                "the Service's backends disagree: {allowed} allow it, {} deny it",
                backends.len() - allowed
            )
        }
        Judgement::Unjudged(why) => {
            let service = flow
                .service
                .map(|s| (cluster.service(s.service).key(), s.port))
                .unwrap_or_default();
            let proto = flow.record.proto;
            match why {
                Unjudged::NoBackends => format!(
                    "not judged: Service {} has no backend for {}/{proto}",
                    service.0, service.1
                ),
                Unjudged::PortNotServed => format!(
                    "not judged: Service {} does not serve {}/{proto}",
                    service.0,
                    flow.record.dst_port.unwrap_or(0)
                ),
                Unjudged::FromService => {
                    "not judged: the flow starts at a Service address".to_owned()
                }
            }
        }
    }
}

/// Appends one judged flow as a JSON object (no trailing newline), as the `flows` of
/// [`write_analysis_json`] hold them.
pub fn write_flow(set: &PolicySet, flow: &JudgedFlow, out: &mut Vec<u8>) {
    let cluster = set.cluster();
    let record: &FlowRecord = &flow.record;
    let start = out.len();
    record.write_json_line(out);
    // The record's own object, reopened: drop its closing brace and newline.
    while out.len() > start && matches!(out.last(), Some(b'\n' | b'}')) {
        out.pop();
    }
    let (egress, ingress) = direction_views(set, &flow.judgement);
    let backends = match &flow.judgement {
        Judgement::Mixed(list) => Some(
            list.iter()
                .map(|b| BackendView {
                    pod: b.pod.map(|p| cluster.pod(p).key()),
                    ip: b.ip,
                    port: b.port,
                    verdict: if b.verdict.allowed() {
                        FlowVerdict::Allowed
                    } else {
                        FlowVerdict::Denied
                    },
                })
                .collect(),
        ),
        _ => None,
    };
    let extras = FlowExtras {
        source: endpoint(cluster, flow.source, record.src),
        destination: endpoint(cluster, flow.destination, flow.destination_ip()),
        service: flow.service.map(|s| {
            let service = cluster.service(s.service);
            ServiceView {
                namespace: &service.namespace,
                name: &service.name,
                port: s.port,
                target_port: s.target_port,
                via: (s.via != ServiceFrontend::ClusterIp).then(|| s.via.name()),
                node_port: flow
                    .record
                    .dst_port
                    .filter(|_| s.via == ServiceFrontend::NodePort),
                masqueraded_as: s.masqueraded_as,
            }
        }),
        verdict: flow_verdict(&flow.judgement),
        egress,
        ingress,
        backends,
        reason: reason(set, flow),
    };
    let at = out.len();
    if serde_json::to_writer(&mut *out, &extras).is_ok() && out.get(at) == Some(&b'{') {
        out[at] = b',';
    }
}

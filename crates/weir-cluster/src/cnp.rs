//! Cluster-wide network policies of the network-policy-api (kubernetes-sigs/network-policy-api):
//! `ClusterNetworkPolicy` (`policy.networking.k8s.io/v1alpha2`, Admin and Baseline tiers) read as it is, and its
//! predecessors `AdminNetworkPolicy` and `BaselineAdminNetworkPolicy` (`v1alpha1`) translated into it (an ANP
//! is an Admin-tier policy at its priority with Allow read as Accept; the BANP is the Baseline tier). Each is
//! checked as the API server's validation would (priority 0–1000, at most 25 rules per direction, a peer or
//! subject with exactly one field, port ranges in order), so an error names the file, the object and the field.
//!
//! The records here are plain data; the policy engine evaluates them.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::Deserialize;
use weir_model::{Cidr, Protocol};

/// Where a cluster-wide policy sits in the order of evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// Before NetworkPolicy: its Accept and Deny are final.
    Admin,
    /// After NetworkPolicy, only for pods no NetworkPolicy isolates in that direction.
    Baseline,
}

impl Tier {
    /// `Admin` or `Baseline`, as the API spells it.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        }
    }
}

/// What a rule does with the traffic it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Allowed: no later rule of the tier, nor NetworkPolicy, is consulted for this direction.
    Accept,
    /// Dropped.
    Deny,
    /// The rest of this tier is skipped: the next tier decides.
    Pass,
}

impl Action {
    /// `Accept`, `Deny` or `Pass`.
    pub fn name(self) -> &'static str {
        match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        }
    }
}

/// The pods a policy applies to (host-network pods never are).
#[derive(Clone, Debug, PartialEq)]
pub enum Subject {
    /// Every pod in the namespaces selected.
    Namespaces(LabelSelector),
    /// The pods selected in the namespaces selected.
    Pods {
        /// Namespaces.
        namespaces: LabelSelector,
        /// Pods in them.
        pods: LabelSelector,
    },
}

/// One peer of a rule.
#[derive(Clone, Debug, PartialEq)]
pub enum Peer {
    /// Every pod (not host-network) in the namespaces selected.
    Namespaces(LabelSelector),
    /// The pods (not host-network) selected in the namespaces selected.
    Pods {
        /// Namespaces.
        namespaces: LabelSelector,
        /// Pods in them.
        pods: LabelSelector,
    },
    /// The addresses of the nodes selected (egress only; experimental).
    Nodes(LabelSelector),
    /// Addresses in these ranges, pods' included (egress only).
    Networks(Vec<Cidr>),
    /// Destinations by DNS name (egress Accept only; experimental): decided only where the names a flow went
    /// to are known.
    DomainNames(Vec<String>),
    /// A peer with none of the fields weir knows (a newer API version): the API says to fail closed, that is to
    /// match nothing in an Accept rule and everything in a Deny or Pass rule.
    Unknown,
}

/// One protocol match of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortMatch {
    /// TCP, UDP or SCTP to a destination port in `first..=last` (every port when `None`).
    Port {
        /// The protocol.
        protocol: Protocol,
        /// Inclusive range; one port is a range of one.
        range: Option<(u16, u16)>,
    },
    /// A named container port of the destination pod (a pod without it does not match).
    Named(String),
}

/// A rule: its name (for people), its action, its peers (any one matching) and its protocols (none: any
/// traffic).
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// The rule's name, when it has one.
    pub name: Option<String>,
    /// What it does.
    pub action: Action,
    /// `from` (ingress) or `to` (egress).
    pub peers: Vec<Peer>,
    /// Protocol matches; empty: every protocol and port.
    pub ports: Vec<PortMatch>,
}

/// Which object a cluster-wide policy was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// A `ClusterNetworkPolicy` (`v1alpha2`).
    ClusterNetworkPolicy,
    /// An `AdminNetworkPolicy` (`v1alpha1`), translated to the Admin tier.
    AdminNetworkPolicy,
    /// The `BaselineAdminNetworkPolicy` (`v1alpha1`), translated to the Baseline tier.
    BaselineAdminNetworkPolicy,
}

impl Origin {
    /// The kind it was read as.
    pub fn kind(self) -> &'static str {
        match self {
            Origin::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            Origin::AdminNetworkPolicy => "AdminNetworkPolicy",
            Origin::BaselineAdminNetworkPolicy => "BaselineAdminNetworkPolicy",
        }
    }
}

/// A cluster-wide policy, checked and in the v1alpha2 form whatever it was read as.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterPolicy {
    /// Its name (cluster-scoped).
    pub name: String,
    /// Admin or Baseline.
    pub tier: Tier,
    /// 0–1000, lower first within the tier (a translated BANP has 0).
    pub priority: u16,
    /// The pods it applies to.
    pub subject: Subject,
    /// Ingress rules, in order.
    pub ingress: Vec<Rule>,
    /// Egress rules, in order.
    pub egress: Vec<Rule>,
    /// What it was read as.
    pub origin: Origin,
    /// The file it came from.
    pub source: Arc<str>,
}

impl ClusterPolicy {
    /// `Kind/name`, as messages name it.
    pub fn label(&self) -> String {
        format!("{}/{}", self.origin.kind(), self.name)
    }
}

/// A problem with one field, found while reading: the field's path and what is wrong.
#[derive(Debug, PartialEq, Eq)]
pub struct FieldError {
    /// `spec.egress[2].to[0]`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// The network-policy-api's API group.
pub const GROUP: &str = "policy.networking.k8s.io";

/// Most rules per direction, as the API validates.
pub const MAX_RULES: usize = 25;

// The API's shapes, as read from a snapshot (both versions; a field of one is absent from the other).

#[derive(Deserialize)]
pub(crate) struct Object {
    pub(crate) metadata: ObjectMeta,
    pub(crate) spec: Spec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Spec {
    #[serde(default)]
    tier: Option<String>,
    #[serde(default)]
    priority: Option<i64>,
    subject: RawSubject,
    #[serde(default)]
    ingress: Vec<RawRule>,
    #[serde(default)]
    egress: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSubject {
    #[serde(default)]
    namespaces: Option<LabelSelector>,
    #[serde(default)]
    pods: Option<RawNamespacedPod>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawNamespacedPod {
    #[serde(default)]
    namespace_selector: LabelSelector,
    #[serde(default)]
    pod_selector: Option<LabelSelector>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRule {
    #[serde(default)]
    name: Option<String>,
    action: String,
    #[serde(default)]
    from: Option<Vec<RawPeer>>,
    #[serde(default)]
    to: Option<Vec<RawPeer>>,
    /// v1alpha2.
    #[serde(default)]
    protocols: Option<Vec<RawProtocol>>,
    /// v1alpha1.
    #[serde(default)]
    ports: Option<Vec<RawAnpPort>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPeer {
    #[serde(default)]
    namespaces: Option<LabelSelector>,
    #[serde(default)]
    pods: Option<RawNamespacedPod>,
    #[serde(default)]
    nodes: Option<LabelSelector>,
    #[serde(default)]
    networks: Option<Vec<String>>,
    #[serde(default)]
    domain_names: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProtocol {
    #[serde(default)]
    tcp: Option<RawProtocolPorts>,
    #[serde(default)]
    udp: Option<RawProtocolPorts>,
    #[serde(default)]
    sctp: Option<RawProtocolPorts>,
    #[serde(default)]
    destination_named_port: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProtocolPorts {
    #[serde(default)]
    destination_port: Option<RawPort>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPort {
    #[serde(default)]
    number: Option<i64>,
    #[serde(default)]
    range: Option<RawRange>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRange {
    start: i64,
    end: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAnpPort {
    #[serde(default)]
    port_number: Option<RawAnpPortNumber>,
    #[serde(default)]
    named_port: Option<String>,
    #[serde(default)]
    port_range: Option<RawAnpRange>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAnpPortNumber {
    #[serde(default)]
    protocol: Option<String>,
    port: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAnpRange {
    #[serde(default)]
    protocol: Option<String>,
    start: i64,
    end: i64,
}

fn port_number(n: i64, field: &str) -> Result<u16, FieldError> {
    u16::try_from(n)
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| error(field, format!("{n} is not a port (1-65535)")))
}

fn range(start: i64, end: i64, field: &str) -> Result<(u16, u16), FieldError> {
    let (s, e) = (
        port_number(start, &format!("{field}.start"))?,
        port_number(end, &format!("{field}.end"))?,
    );
    if s >= e {
        return Err(error(field, format!("start {s} must be less than end {e}")));
    }
    Ok((s, e))
}

/// An ANP port's protocol (`TCP` when unset, as the API defaults it).
fn anp_protocol(p: Option<&str>, field: &str) -> Result<Protocol, FieldError> {
    match p.unwrap_or("TCP") {
        "TCP" => Ok(Protocol::TCP),
        "UDP" => Ok(Protocol::UDP),
        "SCTP" => Ok(Protocol::SCTP),
        other => Err(error(
            format!("{field}.protocol"),
            format!("{other:?} is not TCP, UDP or SCTP"),
        )),
    }
}

fn namespaced_pod(
    p: RawNamespacedPod,
    field: &str,
) -> Result<(LabelSelector, LabelSelector), FieldError> {
    let pods = p
        .pod_selector
        .ok_or_else(|| error(format!("{field}.podSelector"), "required"))?;
    Ok((p.namespace_selector, pods))
}

fn subject(s: RawSubject) -> Result<Subject, FieldError> {
    match (s.namespaces, s.pods) {
        (Some(ns), None) => Ok(Subject::Namespaces(ns)),
        (None, Some(p)) => {
            let (namespaces, pods) = namespaced_pod(p, "spec.subject.pods")?;
            Ok(Subject::Pods { namespaces, pods })
        }
        _ => Err(error(
            "spec.subject",
            "exactly one of namespaces and pods must be set",
        )),
    }
}

fn peer(p: RawPeer, ingress: bool, field: &str) -> Result<Peer, FieldError> {
    let set = [
        p.namespaces.is_some(),
        p.pods.is_some(),
        p.nodes.is_some(),
        p.networks.is_some(),
        p.domain_names.is_some(),
    ]
    .iter()
    .filter(|&&x| x)
    .count();
    if set > 1 {
        return Err(error(field, "exactly one peer field must be set"));
    }
    if ingress && (p.nodes.is_some() || p.networks.is_some() || p.domain_names.is_some()) {
        return Err(error(
            field,
            "ingress peers are namespaces or pods (nodes, networks and domainNames are egress only)",
        ));
    }
    if let Some(ns) = p.namespaces {
        return Ok(Peer::Namespaces(ns));
    }
    if let Some(pods) = p.pods {
        let (namespaces, pods) = namespaced_pod(pods, &format!("{field}.pods"))?;
        return Ok(Peer::Pods { namespaces, pods });
    }
    if let Some(nodes) = p.nodes {
        return Ok(Peer::Nodes(nodes));
    }
    if let Some(networks) = p.networks {
        if networks.is_empty() || networks.len() > 25 {
            return Err(error(format!("{field}.networks"), "between 1 and 25 CIDRs"));
        }
        let cidrs = networks
            .iter()
            .enumerate()
            .map(|(i, n)| {
                Cidr::parse(n).ok_or_else(|| {
                    error(
                        format!("{field}.networks[{i}]"),
                        format!("{n:?} is not a CIDR (like 10.0.0.0/8 or fd00::/8)"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        return Ok(Peer::Networks(cidrs));
    }
    if let Some(names) = p.domain_names {
        if names.is_empty() || names.len() > 25 {
            return Err(error(
                format!("{field}.domainNames"),
                "between 1 and 25 names",
            ));
        }
        return Ok(Peer::DomainNames(
            names.iter().map(|n| n.to_ascii_lowercase()).collect(),
        ));
    }
    Ok(Peer::Unknown)
}

fn ports(r: &mut RawRule, field: &str) -> Result<Vec<PortMatch>, FieldError> {
    let mut out = Vec::new();
    if let Some(protocols) = r.protocols.take() {
        for (i, p) in protocols.into_iter().enumerate() {
            let f = format!("{field}.protocols[{i}]");
            let given = [
                p.tcp.is_some(),
                p.udp.is_some(),
                p.sctp.is_some(),
                p.destination_named_port.is_some(),
            ]
            .iter()
            .filter(|&&x| x)
            .count();
            if given != 1 {
                return Err(error(
                    f,
                    "exactly one of tcp, udp, sctp and destinationNamedPort must be set",
                ));
            }
            if let Some(name) = p.destination_named_port {
                out.push(PortMatch::Named(name));
                continue;
            }
            let (protocol, ports, name) = match (p.tcp, p.udp, p.sctp) {
                (Some(t), _, _) => (Protocol::TCP, t, "tcp"),
                (_, Some(u), _) => (Protocol::UDP, u, "udp"),
                (_, _, Some(s)) => (Protocol::SCTP, s, "sctp"),
                _ => continue,
            };
            let f = format!("{f}.{name}.destinationPort");
            let range = match ports.destination_port {
                None => None,
                Some(RawPort {
                    number: Some(n),
                    range: None,
                }) => {
                    let n = port_number(n, &format!("{f}.number"))?;
                    Some((n, n))
                }
                Some(RawPort {
                    number: None,
                    range: Some(r),
                }) => Some(range(r.start, r.end, &format!("{f}.range"))?),
                Some(_) => return Err(error(f, "exactly one of number and range must be set")),
            };
            out.push(PortMatch::Port { protocol, range });
        }
    }
    if let Some(anp_ports) = r.ports.take() {
        for (i, p) in anp_ports.into_iter().enumerate() {
            let f = format!("{field}.ports[{i}]");
            match (p.port_number, p.named_port, p.port_range) {
                (Some(n), None, None) => {
                    let protocol = anp_protocol(n.protocol.as_deref(), &format!("{f}.portNumber"))?;
                    let port = port_number(n.port, &format!("{f}.portNumber.port"))?;
                    out.push(PortMatch::Port {
                        protocol,
                        range: Some((port, port)),
                    });
                }
                (None, Some(name), None) => out.push(PortMatch::Named(name)),
                (None, None, Some(r)) => {
                    let protocol = anp_protocol(r.protocol.as_deref(), &format!("{f}.portRange"))?;
                    out.push(PortMatch::Port {
                        protocol,
                        range: Some(range(r.start, r.end, &format!("{f}.portRange"))?),
                    });
                }
                _ => {
                    return Err(error(
                        f,
                        "exactly one of portNumber, namedPort and portRange must be set",
                    ));
                }
            }
        }
    }
    Ok(out)
}

fn action(text: &str, origin: Origin, field: &str) -> Result<Action, FieldError> {
    let action = match (origin, text) {
        (Origin::ClusterNetworkPolicy, "Accept") => Action::Accept,
        (Origin::AdminNetworkPolicy | Origin::BaselineAdminNetworkPolicy, "Allow") => {
            Action::Accept
        }
        (_, "Deny") => Action::Deny,
        (Origin::ClusterNetworkPolicy | Origin::AdminNetworkPolicy, "Pass") => Action::Pass,
        _ => {
            let allowed = match origin {
                Origin::ClusterNetworkPolicy => "Accept, Deny or Pass",
                Origin::AdminNetworkPolicy => "Allow, Deny or Pass",
                Origin::BaselineAdminNetworkPolicy => "Allow or Deny",
            };
            return Err(error(
                format!("{field}.action"),
                format!("{text:?} is not {allowed}"),
            ));
        }
    };
    Ok(action)
}

fn rules(raw: Vec<RawRule>, ingress: bool, origin: Origin) -> Result<Vec<Rule>, FieldError> {
    let direction = if ingress { "ingress" } else { "egress" };
    if raw.len() > MAX_RULES {
        return Err(error(
            format!("spec.{direction}"),
            format!("{} rules; at most {MAX_RULES}", raw.len()),
        ));
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, mut r)| {
            let field = format!("spec.{direction}[{i}]");
            let action = action(&r.action, origin, &field)?;
            let (peers_field, peers) = if ingress {
                ("from", r.from.take())
            } else {
                ("to", r.to.take())
            };
            let peers = peers.filter(|p| !p.is_empty()).ok_or_else(|| {
                error(
                    format!("{field}.{peers_field}"),
                    "at least one peer is required",
                )
            })?;
            let peers = peers
                .into_iter()
                .enumerate()
                .map(|(j, p)| peer(p, ingress, &format!("{field}.{peers_field}[{j}]")))
                .collect::<Result<Vec<_>, _>>()?;
            if peers.iter().any(|p| matches!(p, Peer::DomainNames(_))) && action != Action::Accept {
                return Err(error(
                    format!("{field}.{peers_field}"),
                    "domainNames peers are only allowed in Accept rules",
                ));
            }
            if let Some(name) = &r.name
                && name.len() > 100
            {
                return Err(error(format!("{field}.name"), "at most 100 characters"));
            }
            let ports = ports(&mut r, &field)?;
            if origin == Origin::ClusterNetworkPolicy
                && ports.iter().any(|p| matches!(p, PortMatch::Named(_)))
                && peers
                    .iter()
                    .any(|p| matches!(p, Peer::Nodes(_) | Peer::Networks(_) | Peer::DomainNames(_)))
            {
                return Err(error(
                    format!("{field}.protocols"),
                    "destinationNamedPort cannot be used with nodes, networks or domainNames peers",
                ));
            }
            Ok(Rule {
                name: r.name.filter(|n| !n.is_empty()),
                action,
                peers,
                ports,
            })
        })
        .collect()
}

/// Reads one object of `origin`'s kind into a checked policy.
pub(crate) fn read(
    object: Object,
    origin: Origin,
    source: Arc<str>,
) -> Result<ClusterPolicy, FieldError> {
    let name = object
        .metadata
        .name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| error("metadata.name", "missing"))?;
    let spec = object.spec;
    let tier = match (origin, spec.tier.as_deref()) {
        (Origin::ClusterNetworkPolicy, Some("Admin")) | (Origin::AdminNetworkPolicy, _) => {
            Tier::Admin
        }
        (Origin::ClusterNetworkPolicy, Some("Baseline"))
        | (Origin::BaselineAdminNetworkPolicy, _) => Tier::Baseline,
        (Origin::ClusterNetworkPolicy, Some(other)) => {
            return Err(error(
                "spec.tier",
                format!("{other:?} is not Admin or Baseline"),
            ));
        }
        (Origin::ClusterNetworkPolicy, None) => return Err(error("spec.tier", "required")),
    };
    let priority = match (origin, spec.priority) {
        (Origin::BaselineAdminNetworkPolicy, _) => 0,
        (_, Some(p)) => u16::try_from(p)
            .ok()
            .filter(|&p| p <= 1000)
            .ok_or_else(|| error("spec.priority", format!("{p} is not in 0-1000")))?,
        (_, None) => return Err(error("spec.priority", "required")),
    };
    Ok(ClusterPolicy {
        name,
        tier,
        priority,
        subject: subject(spec.subject)?,
        ingress: rules(spec.ingress, true, origin)?,
        egress: rules(spec.egress, false, origin)?,
        origin,
        source,
    })
}

/// Sorts policies in the order of evaluation: tier, priority, then (for equal priorities, which the API leaves
/// to the implementation) kind and name, so that the order is the same everywhere.
pub fn in_evaluation_order(mut policies: Vec<ClusterPolicy>) -> Vec<ClusterPolicy> {
    policies.sort_by(|a, b| {
        (a.tier, a.priority, a.origin.kind(), &a.name).cmp(&(
            b.tier,
            b.priority,
            b.origin.kind(),
            &b.name,
        ))
    });
    policies
}

/// The origin of a kind in the network-policy-api's group at `version`, if weir reads it.
pub(crate) fn origin_of(kind: &str, version: &str) -> Option<Origin> {
    match (kind, version) {
        ("ClusterNetworkPolicy", "v1alpha2") => Some(Origin::ClusterNetworkPolicy),
        ("AdminNetworkPolicy", "v1alpha1") => Some(Origin::AdminNetworkPolicy),
        ("BaselineAdminNetworkPolicy", "v1alpha1") => Some(Origin::BaselineAdminNetworkPolicy),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_yaml(origin: Origin, text: &str) -> Result<ClusterPolicy, FieldError> {
        let value: serde_json::Value =
            serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{e}"));
        let object: Object = serde_json::from_value(value).unwrap_or_else(|e| panic!("{e}"));
        read(object, origin, Arc::from("test.yaml"))
    }

    #[test]
    fn a_cluster_network_policy_reads_with_its_tier_rules_and_protocols() {
        let p = read_yaml(
            Origin::ClusterNetworkPolicy,
            "
metadata: {name: sec-ops}
spec:
  tier: Admin
  priority: 10
  subject: {pods: {namespaceSelector: {matchLabels: {team: shop}}, podSelector: {}}}
  ingress:
  - name: monitoring
    action: Pass
    from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]
  egress:
  - action: Deny
    to: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: db}}}}]
    protocols:
    - tcp: {destinationPort: {number: 5432}}
    - udp: {destinationPort: {range: {start: 53, end: 54}}}
    - destinationNamedPort: http
  - action: Accept
    to: [{domainNames: ['*.Example.com']}]
",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            (p.tier, p.priority, p.label().as_str()),
            (Tier::Admin, 10, "ClusterNetworkPolicy/sec-ops")
        );
        assert_eq!(p.ingress[0].name.as_deref(), Some("monitoring"));
        assert_eq!(p.ingress[0].action, Action::Pass);
        assert_eq!(
            p.egress[0].ports,
            [
                PortMatch::Port {
                    protocol: Protocol::TCP,
                    range: Some((5432, 5432))
                },
                PortMatch::Port {
                    protocol: Protocol::UDP,
                    range: Some((53, 54))
                },
                PortMatch::Named("http".into()),
            ]
        );
        assert_eq!(
            p.egress[1].peers,
            [Peer::DomainNames(vec!["*.example.com".into()])]
        );
    }

    #[test]
    fn a_named_port_with_address_peers_is_refused_as_the_api_does() {
        let err = read_yaml(
            Origin::ClusterNetworkPolicy,
            "
metadata: {name: p}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  egress:
  - action: Deny
    to: [{networks: [10.0.0.0/8]}]
    protocols: [{destinationNamedPort: http}]
",
        )
        .unwrap_err();
        assert_eq!(err.field, "spec.egress[0].protocols");
    }

    #[test]
    fn v1alpha1_policies_are_translated() {
        let anp = read_yaml(
            Origin::AdminNetworkPolicy,
            "
metadata: {name: allow-dns}
spec:
  priority: 3
  subject: {namespaces: {}}
  egress:
  - action: Allow
    to: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {k8s-app: kube-dns}}}}]
    ports: [{portNumber: {protocol: UDP, port: 53}}, {portRange: {start: 8000, end: 9000}}, {namedPort: dns}]
",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((anp.tier, anp.priority), (Tier::Admin, 3));
        assert_eq!(anp.egress[0].action, Action::Accept, "Allow is Accept");
        assert_eq!(
            anp.egress[0].ports,
            [
                PortMatch::Port {
                    protocol: Protocol::UDP,
                    range: Some((53, 53))
                },
                PortMatch::Port {
                    protocol: Protocol::TCP,
                    range: Some((8000, 9000))
                },
                PortMatch::Named("dns".into()),
            ]
        );
        let banp = read_yaml(
            Origin::BaselineAdminNetworkPolicy,
            "
metadata: {name: default}
spec:
  subject: {namespaces: {}}
  ingress: [{action: Deny, from: [{namespaces: {}}]}]
",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            (banp.tier, banp.priority, banp.ingress[0].action),
            (Tier::Baseline, 0, Action::Deny)
        );
        // A BANP has no Pass.
        let pass = read_yaml(
            Origin::BaselineAdminNetworkPolicy,
            "
metadata: {name: default}
spec: {subject: {namespaces: {}}, ingress: [{action: Pass, from: [{namespaces: {}}]}]}
",
        );
        assert_eq!(
            pass.err().map(|e| e.field),
            Some("spec.ingress[0].action".to_owned())
        );
    }

    #[test]
    fn what_the_api_server_would_refuse_is_refused_by_field() {
        let field = |text: &str| {
            read_yaml(Origin::ClusterNetworkPolicy, text)
                .err()
                .map(|e| e.field)
                .unwrap_or_default()
        };
        let base = |rest: &str| {
            format!(
                "metadata: {{name: p}}\nspec: {{tier: Admin, priority: 1, subject: {{namespaces: {{}}}}, {rest}}}"
            )
        };
        assert_eq!(
            field(
                "metadata: {name: p}\nspec: {tier: Admin, priority: 1001, subject: {namespaces: {}}}"
            ),
            "spec.priority"
        );
        assert_eq!(
            field(
                "metadata: {name: p}\nspec: {tier: Middle, priority: 1, subject: {namespaces: {}}}"
            ),
            "spec.tier"
        );
        assert_eq!(
            field(
                "metadata: {name: p}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}, pods: {podSelector: {}}}}"
            ),
            "spec.subject"
        );
        assert_eq!(
            field(&base("egress: [{action: Deny, to: []}]")),
            "spec.egress[0].to"
        );
        assert_eq!(
            field(&base(
                "ingress: [{action: Deny, from: [{networks: [10.0.0.0/8]}]}]"
            )),
            "spec.ingress[0].from[0]"
        );
        assert_eq!(
            field(&base(
                "egress: [{action: Deny, to: [{domainNames: [example.com]}]}]"
            )),
            "spec.egress[0].to"
        );
        assert_eq!(
            field(&base(
                "egress: [{action: Deny, to: [{networks: [10.0.0.0/33]}]}]"
            )),
            "spec.egress[0].to[0].networks[0]"
        );
        assert_eq!(
            field(&base(
                "egress: [{action: Deny, to: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {range: {start: 9, end: 9}}}}]}]"
            )),
            "spec.egress[0].protocols[0].tcp.destinationPort.range"
        );
        let many = (0..26)
            .map(|_| "{action: Deny, to: [{namespaces: {}}]}")
            .collect::<Vec<_>>()
            .join(", ");
        assert_eq!(field(&base(&format!("egress: [{many}]"))), "spec.egress");
        // A peer of a newer API version: read, to fail closed when evaluated.
        let p = read_yaml(
            Origin::ClusterNetworkPolicy,
            &base("egress: [{action: Deny, to: [{services: {}}]}]"),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(p.egress[0].peers, [Peer::Unknown]);
    }
}

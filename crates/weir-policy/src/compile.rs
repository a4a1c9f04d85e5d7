//! NetworkPolicy objects compiled into the form the engine evaluates, with the API's defaults applied and
//! its validation rules checked, so evaluation itself can never meet an invalid policy.

use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::networking::v1::{NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weir_cluster::PolicyObject;
use weir_model::Protocol;

use crate::selector::Selector;
use weir_model::Cidr;

/// A policy that the Kubernetes API server would have rejected, or that weir cannot evaluate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_file}: {kind} {policy}: field `{field}`: {message}")]
pub struct PolicyError {
    /// The policy's kind (`NetworkPolicy`, `ClusterNetworkPolicy`, ...).
    pub kind: &'static str,
    /// The snapshot file the policy came from.
    pub source_file: Arc<str>,
    /// `namespace/name` (a cluster-wide policy: `name`).
    pub policy: String,
    /// The path of the bad field (`spec.ingress[0].from[1].ipBlock.cidr`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Ingress (traffic into the selected pods) or egress (traffic out of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Traffic into the selected pods.
    Ingress,
    /// Traffic out of the selected pods.
    Egress,
}

impl Direction {
    /// `ingress` or `egress`, as the policy spec spells the rule lists.
    pub fn field(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.field())
    }
}

/// Which namespaces a selector peer looks in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NamespaceScope {
    /// Only the policy's own namespace (the peer has no `namespaceSelector`).
    Own(String),
    /// Namespaces whose labels match.
    Matching(Selector),
}

/// One entry of a rule's `from` or `to` list (of a NetworkPolicy, or of a cluster-wide policy).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    /// `podSelector` and/or `namespaceSelector`: both must match (AND) when both are given.
    Pods {
        /// Where to look.
        namespaces: NamespaceScope,
        /// Which pods there; `None` (no `podSelector`) means every pod.
        pods: Option<Selector>,
    },
    /// `ipBlock`: every address in `cidr` but not in any `except` block, pod addresses included.
    IpBlock {
        /// The block.
        cidr: Cidr,
        /// Blocks carved out of it.
        except: Vec<Cidr>,
    },
    /// A cluster-wide policy's `nodes`: the addresses the API lists for the nodes whose labels match
    /// (`status.addresses`, which host-network pods share).
    Nodes(Selector),
    /// A cluster-wide policy's `networks`: every address in these ranges, pod addresses included.
    Networks(Vec<Cidr>),
}

impl Peer {
    /// Whether an address is in this ipBlock or networks peer (always false for selector peers).
    pub fn ip_block_contains(&self, ip: std::net::IpAddr) -> bool {
        match self {
            Peer::IpBlock { cidr, except } => {
                cidr.contains(ip) && !except.iter().any(|e| e.contains(ip))
            }
            Peer::Networks(cidrs) => cidrs.iter().any(|c| c.contains(ip)),
            Peer::Pods { .. } | Peer::Nodes(_) => false,
        }
    }

    /// Whether the peer is matched by address (ipBlock, networks) rather than by labels.
    pub fn by_address(&self) -> bool {
        matches!(self, Peer::IpBlock { .. } | Peer::Networks(_))
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Pods { namespaces, pods } => {
                match pods {
                    Some(s) if s.is_everything() => f.write_str("all pods")?,
                    Some(s) => write!(f, "pods [{s}]")?,
                    None => f.write_str("all pods")?,
                }
                match namespaces {
                    NamespaceScope::Own(ns) => write!(f, " in namespace {ns}"),
                    NamespaceScope::Matching(s) if s.is_everything() => {
                        f.write_str(" in all namespaces")
                    }
                    NamespaceScope::Matching(s) => write!(f, " in namespaces [{s}]"),
                }
            }
            Peer::IpBlock { cidr, except } => {
                write!(f, "ipBlock {cidr}")?;
                if !except.is_empty() {
                    let list: Vec<String> = except.iter().map(Cidr::to_string).collect();
                    write!(f, " except {}", list.join(", "))?;
                }
                Ok(())
            }
            Peer::Nodes(s) if s.is_everything() => f.write_str("all nodes"),
            Peer::Nodes(s) => write!(f, "nodes [{s}]"),
            Peer::Networks(cidrs) => {
                let list: Vec<String> = cidrs.iter().map(Cidr::to_string).collect();
                write!(f, "networks {}", list.join(", "))
            }
        }
    }
}

/// The port part of a `ports` entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PortSpec {
    /// No `port`: every port of the protocol.
    Any,
    /// `port` alone (`first == last`) or `port`..`endPort`.
    Range(u16, u16),
    /// A container port name, resolved against the destination pod.
    Named(String),
}

/// One entry of a rule's `ports` list.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PortMatch {
    /// The protocol (TCP when the entry leaves it out).
    pub protocol: Protocol,
    /// The ports.
    pub port: PortSpec,
}

impl fmt::Display for PortMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = self.protocol.name().unwrap_or("?");
        match &self.port {
            PortSpec::Any => write!(f, "any {proto} port"),
            PortSpec::Range(a, b) if a == b => write!(f, "{a}/{proto}"),
            PortSpec::Range(a, b) => write!(f, "{a}-{b}/{proto}"),
            PortSpec::Named(name) => write!(f, "{name}/{proto} (named)"),
        }
    }
}

/// One ingress or egress rule. `None` lists mean "all" (the API treats an empty list and a missing one alike).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Global ids of the peers (indexes into [`crate::PolicySet::peer`]); `None` matches every peer.
    pub peers: Option<Vec<u32>>,
    /// The ports; `None` matches all traffic, any protocol.
    pub ports: Option<Vec<PortMatch>>,
}

/// A NetworkPolicy ready for evaluation.
#[derive(Clone, Debug)]
pub struct CompiledPolicy {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `spec.podSelector` (absent selects every pod of the namespace).
    pub selector: Selector,
    /// Whether the policy isolates the pods it selects for ingress (`policyTypes` after defaulting).
    pub isolates_ingress: bool,
    /// Whether it isolates them for egress.
    pub isolates_egress: bool,
    /// `spec.ingress`.
    pub ingress: Vec<Rule>,
    /// `spec.egress`.
    pub egress: Vec<Rule>,
}

impl CompiledPolicy {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether it isolates its pods in a direction.
    pub fn isolates(&self, direction: Direction) -> bool {
        match direction {
            Direction::Ingress => self.isolates_ingress,
            Direction::Egress => self.isolates_egress,
        }
    }

    /// The rules of a direction.
    pub fn rules(&self, direction: Direction) -> &[Rule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// Compiles one policy, appending its peers to the global peer list.
pub(crate) fn compile(
    object: &PolicyObject,
    peers: &mut Vec<Peer>,
) -> Result<CompiledPolicy, PolicyError> {
    let namespace = object.policy.metadata.namespace.clone().unwrap_or_default();
    let name = object.policy.metadata.name.clone().unwrap_or_default();
    let fail = |field: String, message: String| PolicyError {
        kind: "NetworkPolicy",
        source_file: object.source.clone(),
        policy: format!("{namespace}/{name}"),
        field,
        message,
    };
    let spec = object.policy.spec.clone().unwrap_or_default();
    let selector = match &spec.pod_selector {
        Some(s) => Selector::compile(s, "spec.podSelector").map_err(|(f, m)| fail(f, m))?,
        None => Selector::everything(),
    };
    // policyTypes defaulting, as the API server does it: Ingress always, Egress when egress rules exist.
    let (isolates_ingress, isolates_egress) = match spec.policy_types.as_deref() {
        Some(types) if !types.is_empty() => {
            let mut ingress = false;
            let mut egress = false;
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => ingress = true,
                    "Egress" => egress = true,
                    other => {
                        return Err(fail(
                            format!("spec.policyTypes[{i}]"),
                            format!("unknown policy type {other:?} (expected Ingress or Egress)"),
                        ));
                    }
                }
            }
            (ingress, egress)
        }
        _ => (
            true,
            spec.egress.as_ref().is_some_and(|rules| !rules.is_empty()),
        ),
    };
    let mut ingress = Vec::new();
    for (i, rule) in spec.ingress.iter().flatten().enumerate() {
        let at = format!("spec.ingress[{i}]");
        ingress.push(
            compile_rule(
                &namespace,
                &at,
                "from",
                rule.from.as_deref(),
                rule.ports.as_deref(),
                peers,
            )
            .map_err(|(f, m)| fail(f, m))?,
        );
    }
    let mut egress = Vec::new();
    for (i, rule) in spec.egress.iter().flatten().enumerate() {
        let at = format!("spec.egress[{i}]");
        egress.push(
            compile_rule(
                &namespace,
                &at,
                "to",
                rule.to.as_deref(),
                rule.ports.as_deref(),
                peers,
            )
            .map_err(|(f, m)| fail(f, m))?,
        );
    }
    Ok(CompiledPolicy {
        namespace,
        name,
        selector,
        isolates_ingress,
        isolates_egress,
        ingress,
        egress,
    })
}

type FieldError = (String, String);

fn compile_rule(
    namespace: &str,
    at: &str,
    list: &str,
    rule_peers: Option<&[NetworkPolicyPeer]>,
    rule_ports: Option<&[NetworkPolicyPort]>,
    peers: &mut Vec<Peer>,
) -> Result<Rule, FieldError> {
    let peer_ids = match rule_peers {
        None | Some([]) => None,
        Some(list_peers) => {
            let mut ids = Vec::with_capacity(list_peers.len());
            for (j, peer) in list_peers.iter().enumerate() {
                let field = format!("{at}.{list}[{j}]");
                ids.push(peers.len() as u32);
                peers.push(compile_peer(namespace, &field, peer)?);
            }
            Some(ids)
        }
    };
    let ports = match rule_ports {
        None | Some([]) => None,
        Some(list_ports) => Some(
            list_ports
                .iter()
                .enumerate()
                .map(|(j, p)| compile_port(&format!("{at}.ports[{j}]"), p))
                .collect::<Result<_, _>>()?,
        ),
    };
    Ok(Rule {
        peers: peer_ids,
        ports,
    })
}

fn compile_peer(
    namespace: &str,
    field: &str,
    peer: &NetworkPolicyPeer,
) -> Result<Peer, FieldError> {
    let has_selector = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
    match (&peer.ip_block, has_selector) {
        (Some(_), true) => Err((
            field.to_owned(),
            "ipBlock cannot be combined with podSelector or namespaceSelector".into(),
        )),
        (None, false) => Err((
            field.to_owned(),
            "a peer needs podSelector, namespaceSelector or ipBlock".into(),
        )),
        (Some(block), false) => {
            let cidr = Cidr::parse(&block.cidr).ok_or_else(|| {
                (
                    format!("{field}.ipBlock.cidr"),
                    format!("{:?} is not a CIDR (like 10.0.0.0/16)", block.cidr),
                )
            })?;
            let mut except = Vec::new();
            for (k, text) in block.except.iter().flatten().enumerate() {
                let at = format!("{field}.ipBlock.except[{k}]");
                let e = Cidr::parse(text)
                    .ok_or_else(|| (at.clone(), format!("{text:?} is not a CIDR")))?;
                if !cidr.covers(&e) {
                    return Err((at, format!("{e} is not inside the ipBlock's cidr {cidr}")));
                }
                except.push(e);
            }
            Ok(Peer::IpBlock { cidr, except })
        }
        (None, true) => {
            let namespaces = match &peer.namespace_selector {
                Some(s) => NamespaceScope::Matching(Selector::compile(
                    s,
                    &format!("{field}.namespaceSelector"),
                )?),
                None => NamespaceScope::Own(namespace.to_owned()),
            };
            let pods = peer
                .pod_selector
                .as_ref()
                .map(|s| Selector::compile(s, &format!("{field}.podSelector")))
                .transpose()?;
            Ok(Peer::Pods { namespaces, pods })
        }
    }
}

fn compile_port(field: &str, port: &NetworkPolicyPort) -> Result<PortMatch, FieldError> {
    let Some(protocol) = Protocol::from_kubernetes(port.protocol.as_deref()) else {
        return Err((
            format!("{field}.protocol"),
            format!(
                "unsupported protocol {:?} (expected TCP, UDP or SCTP)",
                port.protocol.as_deref().unwrap_or("")
            ),
        ));
    };
    let number = |n: i32, what: &str| {
        u16::try_from(n)
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| (format!("{field}.{what}"), format!("{n} is outside 1-65535")))
    };
    let spec = match (&port.port, port.end_port) {
        (None, None) => PortSpec::Any,
        (None, Some(_)) => {
            return Err((
                format!("{field}.endPort"),
                "endPort needs a numeric port".into(),
            ));
        }
        (Some(IntOrString::Int(n)), end) => {
            let first = number(*n, "port")?;
            let last = match end {
                Some(e) => number(e, "endPort")?,
                None => first,
            };
            if last < first {
                return Err((
                    format!("{field}.endPort"),
                    format!("endPort {last} is below port {first}"),
                ));
            }
            PortSpec::Range(first, last)
        }
        (Some(IntOrString::String(name)), end) => {
            if end.is_some() {
                return Err((
                    format!("{field}.endPort"),
                    "endPort cannot be used with a named port".into(),
                ));
            }
            if name.is_empty() || name.len() > 15 || !name.bytes().any(|b| b.is_ascii_alphabetic())
            {
                return Err((
                    format!("{field}.port"),
                    format!(
                        "{name:?} is neither a port number nor a port name (1-15 characters with a letter)"
                    ),
                ));
            }
            PortSpec::Named(name.clone())
        }
    };
    Ok(PortMatch {
        protocol,
        port: spec,
    })
}

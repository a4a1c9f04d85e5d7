//! Cluster-wide policies (ClusterNetworkPolicy, and the AdminNetworkPolicy and BaselineAdminNetworkPolicy it
//! replaced) compiled into the form the engine evaluates: selectors compiled, peers put in the engine's one peer
//! list (so an identity says which of them match an endpoint, as for NetworkPolicy peers), and a rule with a peer
//! of unknown shape failed closed as the API asks.

use std::fmt;
use std::sync::Arc;

use weir_cluster::cnp::{self, Action, ClusterPolicy, Origin, Tier};

use crate::compile::{NamespaceScope, Peer, PolicyError};
use crate::selector::Selector;

/// One entry of a cluster-wide rule's `from` or `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TierPeer {
    /// A peer the engine matches through identities (pods, namespaces, nodes, networks): its global id (see
    /// [`crate::PolicySet::peer`]).
    Matched(u32),
    /// `domainNames`: which names a connection went to is not in a flow record, so a rule with only these peers
    /// cannot be decided; the engine says so instead of guessing.
    DomainNames(Vec<String>),
    /// A peer of a shape weir does not know (a newer API version).
    Unknown,
}

/// How a rule's peers act, after the API's fail-closed reading of unknown peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Effect {
    /// As written.
    AsWritten,
    /// An Accept rule with a peer weir cannot read: it matches no traffic.
    MatchesNothing,
    /// A Deny or Pass rule with a peer weir cannot read: it denies all traffic.
    DeniesAll,
}

/// One rule of a cluster-wide policy, ready for evaluation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierRule {
    /// Its `name`, when it has one.
    pub name: Option<String>,
    /// What it does with the traffic it matches (a Deny for a rule failed closed to "deny all").
    pub action: Action,
    /// `from`/`to`: any one matching is enough.
    pub peers: Vec<TierPeer>,
    /// `protocols` (or an ANP's `ports`); empty matches every protocol and port.
    pub ports: Vec<cnp::PortMatch>,
    /// How it acts after failing closed.
    pub effect: Effect,
}

/// A cluster-wide policy ready for evaluation.
#[derive(Clone, Debug)]
pub struct TierPolicy {
    /// Its name (cluster-scoped).
    pub name: String,
    /// Admin or Baseline.
    pub tier: Tier,
    /// Its priority in the tier (lower first).
    pub priority: u16,
    /// What it was read as.
    pub origin: Origin,
    /// The namespaces of its subject.
    pub namespaces: Selector,
    /// The pods of its subject in those namespaces (`None`: every pod there).
    pub pods: Option<Selector>,
    /// Ingress rules, in order.
    pub ingress: Vec<TierRule>,
    /// Egress rules, in order.
    pub egress: Vec<TierRule>,
    /// The file it came from.
    pub source: Arc<str>,
}

impl TierPolicy {
    /// `Admin sec-ops/allow-monitoring`-style label: the tier and the name (with the kind when it was translated).
    pub fn label(&self) -> String {
        match self.origin {
            Origin::ClusterNetworkPolicy => format!("{} {}", self.tier.name(), self.name),
            other => format!("{} {} ({})", self.tier.name(), self.name, other.kind()),
        }
    }

    /// `ClusterNetworkPolicy/name` (or the kind it was read as): how JSON and lists name it, never confused with
    /// a NetworkPolicy's `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.origin.kind(), self.name)
    }

    /// The rules of a direction.
    pub fn rules(&self, direction: crate::Direction) -> &[TierRule] {
        match direction {
            crate::Direction::Ingress => &self.ingress,
            crate::Direction::Egress => &self.egress,
        }
    }
}

impl fmt::Display for TierPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// Compiles one cluster-wide policy, appending its matched peers to the engine's peer list.
pub(crate) fn compile(
    policy: &ClusterPolicy,
    peers: &mut Vec<Peer>,
) -> Result<TierPolicy, PolicyError> {
    let fail = |(field, message): (String, String)| PolicyError {
        kind: policy.origin.kind(),
        source_file: policy.source.clone(),
        policy: policy.name.clone(),
        field,
        message,
    };
    let (namespaces, pods) = match &policy.subject {
        cnp::Subject::Namespaces(ns) => (
            Selector::compile(ns, "spec.subject.namespaces").map_err(fail)?,
            None,
        ),
        cnp::Subject::Pods { namespaces, pods } => (
            Selector::compile(namespaces, "spec.subject.pods.namespaceSelector").map_err(fail)?,
            Some(Selector::compile(pods, "spec.subject.pods.podSelector").map_err(fail)?),
        ),
    };
    let mut direction = |rules: &[cnp::Rule], name: &str| {
        rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let list = if name == "ingress" { "from" } else { "to" };
                compile_rule(rule, &format!("spec.{name}[{i}].{list}"), peers).map_err(fail)
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let ingress = direction(&policy.ingress, "ingress")?;
    let egress = direction(&policy.egress, "egress")?;
    Ok(TierPolicy {
        name: policy.name.clone(),
        tier: policy.tier,
        priority: policy.priority,
        origin: policy.origin,
        namespaces,
        pods,
        ingress,
        egress,
        source: policy.source.clone(),
    })
}

fn compile_rule(
    rule: &cnp::Rule,
    field: &str,
    peers: &mut Vec<Peer>,
) -> Result<TierRule, (String, String)> {
    let mut out = Vec::with_capacity(rule.peers.len());
    for (j, peer) in rule.peers.iter().enumerate() {
        let at = format!("{field}[{j}]");
        let compiled = match peer {
            cnp::Peer::Namespaces(ns) => Peer::Pods {
                namespaces: NamespaceScope::Matching(Selector::compile(
                    ns,
                    &format!("{at}.namespaces"),
                )?),
                pods: None,
            },
            cnp::Peer::Pods { namespaces, pods } => Peer::Pods {
                namespaces: NamespaceScope::Matching(Selector::compile(
                    namespaces,
                    &format!("{at}.pods.namespaceSelector"),
                )?),
                pods: Some(Selector::compile(pods, &format!("{at}.pods.podSelector"))?),
            },
            cnp::Peer::Nodes(nodes) => {
                Peer::Nodes(Selector::compile(nodes, &format!("{at}.nodes"))?)
            }
            cnp::Peer::Networks(cidrs) => Peer::Networks(cidrs.clone()),
            cnp::Peer::DomainNames(names) => {
                out.push(TierPeer::DomainNames(names.clone()));
                continue;
            }
            cnp::Peer::Unknown => {
                out.push(TierPeer::Unknown);
                continue;
            }
        };
        out.push(TierPeer::Matched(peers.len() as u32));
        peers.push(compiled);
    }
    let unknown = out.contains(&TierPeer::Unknown);
    let (action, effect) = match (rule.action, unknown) {
        (action, false) => (action, Effect::AsWritten),
        (Action::Accept, true) => (Action::Accept, Effect::MatchesNothing),
        (Action::Deny | Action::Pass, true) => (Action::Deny, Effect::DeniesAll),
    };
    Ok(TierRule {
        name: rule.name.clone(),
        action,
        peers: out,
        ports: rule.ports.clone(),
        effect,
    })
}

/// A port match in words: `80/TCP`, `8080-8090/UDP`, `any SCTP port`, `named port web`.
pub(crate) fn describe_port(port: &cnp::PortMatch) -> String {
    match port {
        cnp::PortMatch::Port {
            protocol,
            range: None,
        } => format!("any {} port", protocol.name().unwrap_or("?")),
        cnp::PortMatch::Port {
            protocol,
            range: Some((a, b)),
        } if a == b => format!("{a}/{}", protocol.name().unwrap_or("?")),
        cnp::PortMatch::Port {
            protocol,
            range: Some((a, b)),
        } => format!("{a}-{b}/{}", protocol.name().unwrap_or("?")),
        cnp::PortMatch::Named(name) => format!("named port {name}"),
    }
}

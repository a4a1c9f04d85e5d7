//! weir's service map: the observed traffic as a graph (workloads grouped by namespace, nodes, addresses outside
//! the cluster), laid out here in Rust and drawn as SVG, and the page that shows it, live from the aggregator or
//! offline as one self-contained HTML file.
//!
//! Everything in a [`Map`] comes from the cluster or the traffic and is untrusted: every name reaches the SVG
//! and HTML through [`escape`], and the page's script writes text with `textContent` only.

#![deny(missing_docs)]

mod build;
mod collapse;
mod layout;
mod page;
mod svg;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub use build::{add_suggestions, build, describe_pod, describe_pods, graph, node_id};
pub use collapse::{collapse, namespace_id};
pub use layout::{Layout, Placed, layout};
pub use page::{APP_CSS, APP_JS, CONTENT_SECURITY_POLICY, live_page, offline_page};
pub use svg::render_svg;

/// What a map node stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeKind {
    /// A workload (its pods taken together).
    Workload,
    /// The backends of a Service that span several workloads.
    Service,
    /// A node (its address, shared by its hostNetwork pods).
    Node,
    /// An address outside the cluster.
    External,
    /// An address in the cluster's ranges that nobody held.
    Unknown,
    /// A namespace folded into one node (its workloads are its members).
    Namespace,
    /// One pod of a workload shown pod by pod.
    Pod,
}

pub use weir_analysis::{Decided, SideTier};
pub use weir_model::EdgeVerdict;

/// The most decision chains an edge lists.
const MAX_CHAINS: usize = 12;
/// The line that says an edge was decided in more ways than it lists.
const MORE_CHAINS: &str =
    "… decided in more ways than listed here (weir explain shows any one connection).";

/// A node of the map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapNode {
    /// Stable identity (`pod:NS/Kind/name`, `node:NAME`, `external:IP`, ...), the key edges use.
    pub id: String,
    /// What it is.
    pub kind: NodeKind,
    /// The box it is drawn in: its namespace, or `nodes`, `outside the cluster`, `unknown addresses`.
    pub group: String,
    /// Its name in the box (`Deployment/frontend`, a node name, an address).
    pub name: String,
    /// Its pods seen in the traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<String>,
    /// Its pods' labels, as `key=value`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// The NetworkPolicies selecting it (`ns/name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    /// The least-privilege NetworkPolicy weir suggests for it, as YAML.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<String>,
    /// What that suggestion would deny among the observed flows (one line each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suggestion_denies: Vec<String>,
    /// A folded namespace: the nodes folded into it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    /// A pod: the id of its workload's node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

impl MapNode {
    /// A node with nothing known yet but what it is.
    pub fn new(id: String, kind: NodeKind, group: String, name: String) -> MapNode {
        MapNode {
            id,
            kind,
            group,
            name,
            pods: Vec::new(),
            labels: Vec::new(),
            policies: Vec::new(),
            suggestion: None,
            suggestion_denies: Vec::new(),
            members: Vec::new(),
            parent: None,
        }
    }
}

/// An edge of the map: the observed flows from one node to another.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MapEdge {
    /// Stable identity within the map.
    pub id: String,
    /// Source node id.
    pub from: String,
    /// Destination node id.
    pub to: String,
    /// The verdict (its colour).
    pub verdict: EdgeVerdict,
    /// Not seen while the baseline was learned.
    #[serde(default)]
    pub new: bool,
    /// Ports, as `8080/TCP`.
    pub ports: Vec<String>,
    /// Connections.
    pub flows: u64,
    /// Bytes, both directions.
    pub bytes: u64,
    /// First seen (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<String>,
    /// Last seen (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<String>,
    /// Nodes that reported it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// Services the traffic went through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// The deciding policies (`ingress ns/name`, `egress ns/name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    /// How its connections were decided: one decision chain per line and direction
    /// (`egress: Admin ClusterNetworkPolicy/ops rule #0 "delegate" Pass → NetworkPolicy shop/api isolates, ...`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chains: Vec<String>,
    /// The tiers that decided either direction (`admin`, `networkpolicy`, `baseline`, `default`), sorted: the
    /// page's tier filter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<SideTier>,
    /// The engine's explanation, a sentence per line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub explanation: Vec<String>,
    /// Alerts raised on it (one line each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<String>,
}

impl MapEdge {
    /// An edge with nothing counted yet.
    pub fn new(id: String, from: String, to: String, verdict: EdgeVerdict) -> MapEdge {
        MapEdge {
            id,
            from,
            to,
            verdict,
            new: false,
            ports: Vec::new(),
            flows: 0,
            bytes: 0,
            first: None,
            last: None,
            nodes: Vec::new(),
            services: Vec::new(),
            policies: Vec::new(),
            chains: Vec::new(),
            tiers: Vec::new(),
            explanation: Vec::new(),
            alerts: Vec::new(),
        }
    }

    /// Adds the ways its connections were decided: each direction's chain once, and the deciding tiers.
    /// `truncated`: the edge was decided in more ways than it kept.
    pub fn add_decisions<'a>(
        &mut self,
        decided: impl IntoIterator<Item = &'a Decided>,
        truncated: bool,
    ) {
        for d in decided {
            for (dir, side) in [("egress", &d.egress), ("ingress", &d.ingress)] {
                if matches!(side.tier, SideTier::Mixed | SideTier::Unknown) {
                    continue;
                }
                if let Err(at) = self.tiers.binary_search(&side.tier) {
                    self.tiers.insert(at, side.tier);
                }
                if side.chain.is_empty() || self.chains.len() >= MAX_CHAINS {
                    continue;
                }
                let line = format!("{dir}: {}", side.chain);
                if !self.chains.contains(&line) {
                    self.chains.push(line);
                }
            }
        }
        if truncated && self.chains.last().is_none_or(|l| l != MORE_CHAINS) {
            self.chains.push(MORE_CHAINS.to_owned());
        }
    }

    /// Adds another edge's chains and tiers (edges drawn as one).
    pub fn add_chains_of(&mut self, other: &MapEdge) {
        for t in &other.tiers {
            if let Err(at) = self.tiers.binary_search(t) {
                self.tiers.insert(at, *t);
            }
        }
        for line in &other.chains {
            if self.chains.len() >= MAX_CHAINS {
                if self.chains.last().is_none_or(|l| l != MORE_CHAINS) {
                    self.chains.push(MORE_CHAINS.to_owned());
                }
                break;
            }
            if !self.chains.contains(line) {
                self.chains.push(line.clone());
            }
        }
    }
}

/// The whole map.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Map {
    /// What it shows (a capture's name, or the live cluster).
    pub title: String,
    /// Nodes.
    pub nodes: Vec<MapNode>,
    /// Edges.
    pub edges: Vec<MapEdge>,
}

impl Map {
    /// Each node's position in [`Map::nodes`], by id.
    pub(crate) fn node_index(&self) -> HashMap<&str, usize> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.as_str(), i))
            .collect()
    }

    /// The node positions of an edge's ends; none when an end is not in the map.
    pub(crate) fn ends(index: &HashMap<&str, usize>, edge: &MapEdge) -> Option<(usize, usize)> {
        Some((
            *index.get(edge.from.as_str())?,
            *index.get(edge.to.as_str())?,
        ))
    }
}

/// Text made safe for HTML and SVG, in element content and in quoted attributes alike.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters are not allowed in XML; show them as the replacement character.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            escape("<img src=x onerror=alert(1)> & \"'\u{1}"),
            "&lt;img src=x onerror=alert(1)&gt; &amp; &quot;&#39;\u{fffd}"
        );
    }
}

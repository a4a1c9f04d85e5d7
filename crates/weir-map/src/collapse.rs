//! Folding namespaces: a cluster of a few hundred workloads is read namespace by namespace. A folded namespace
//! is one node; its traffic with the rest is one edge per peer, coloured by the worst verdict among the edges it
//! stands for, and its traffic inside is a loop on it. Whoever opens an edge still sees each edge folded into it.

use std::collections::{BTreeMap, BTreeSet};

use crate::{Map, MapEdge, MapNode, NodeKind};

/// Most folded edges listed in a folded edge's explanation.
const LISTED: usize = 40;

/// The id of a folded namespace's node.
pub fn namespace_id(namespace: &str) -> String {
    format!("namespace:{namespace}")
}

fn folds(kind: NodeKind) -> bool {
    matches!(kind, NodeKind::Workload | NodeKind::Service | NodeKind::Pod)
}

/// The map with every namespace folded into one node, except those in `open`. Nodes, addresses outside the
/// cluster and unknown addresses are never folded.
pub fn collapse(map: &Map, open: &BTreeSet<String>) -> Map {
    let mut folded: BTreeMap<String, MapNode> = BTreeMap::new();
    let mut moved: BTreeMap<&str, String> = BTreeMap::new();
    let mut nodes = Vec::new();
    for node in &map.nodes {
        if !folds(node.kind) || open.contains(&node.group) {
            nodes.push(node.clone());
            continue;
        }
        let id = namespace_id(&node.group);
        let ns = folded.entry(id.clone()).or_insert_with(|| {
            MapNode::new(
                id.clone(),
                NodeKind::Namespace,
                node.group.clone(),
                node.group.clone(),
            )
        });
        ns.members.push(node.name.clone());
        ns.pods.extend(node.pods.iter().cloned());
        ns.policies.extend(node.policies.iter().cloned());
        moved.insert(&node.id, id);
    }
    for mut ns in folded.into_values() {
        ns.members.sort();
        ns.policies.sort();
        ns.policies.dedup();
        ns.name = format!(
            "{} · {} workload{}",
            ns.group,
            ns.members.len(),
            if ns.members.len() == 1 { "" } else { "s" }
        );
        nodes.push(ns);
    }

    let index = map.node_index();
    let name = |id: &str| -> String {
        index.get(id).map_or_else(
            || id.to_owned(),
            |&i| format!("{}/{}", map.nodes[i].group, map.nodes[i].name),
        )
    };
    let mut merged: BTreeMap<(String, String), Vec<&MapEdge>> = BTreeMap::new();
    for edge in &map.edges {
        let end = |id: &String| moved.get(id.as_str()).unwrap_or(id).clone();
        merged
            .entry((end(&edge.from), end(&edge.to)))
            .or_default()
            .push(edge);
    }
    let edges = merged
        .into_iter()
        .map(|((from, to), parts)| {
            if let [only] = parts.as_slice() {
                return MapEdge {
                    from,
                    to,
                    ..(*only).clone()
                };
            }
            let mut edge = MapEdge::new(
                format!("{}+{}", parts[0].id, parts.len() - 1),
                from,
                to,
                parts[0].verdict,
            );
            let mut ports = BTreeSet::new();
            let mut nodes = BTreeSet::new();
            let mut services = BTreeSet::new();
            let mut policies = BTreeSet::new();
            let mut alerts = BTreeSet::new();
            for part in &parts {
                edge.verdict = edge.verdict.worst(part.verdict);
                edge.new |= part.new;
                edge.flows += part.flows;
                edge.bytes = edge.bytes.saturating_add(part.bytes);
                ports.extend(&part.ports);
                nodes.extend(&part.nodes);
                services.extend(&part.services);
                policies.extend(&part.policies);
                edge.add_chains_of(part);
                alerts.extend(&part.alerts);
                edge.first = match (edge.first.take(), &part.first) {
                    (Some(a), Some(b)) => Some(a.min(b.clone())),
                    (a, b) => a.or_else(|| b.clone()),
                };
                edge.last = match (edge.last.take(), &part.last) {
                    (Some(a), Some(b)) => Some(a.max(b.clone())),
                    (a, b) => a.or_else(|| b.clone()),
                };
            }
            let owned = |set: BTreeSet<&String>| set.into_iter().cloned().collect::<Vec<_>>();
            edge.ports = owned(ports);
            edge.nodes = owned(nodes);
            edge.services = owned(services);
            edge.policies = owned(policies);
            let more = alerts.len().saturating_sub(LISTED);
            edge.alerts = alerts.into_iter().take(LISTED).cloned().collect();
            if more > 0 {
                edge.alerts.push(format!("… and {more} more alerts."));
            }
            edge.explanation.push(format!(
                "{} edges drawn as one (a namespace is folded); its colour is the worst verdict among them:",
                parts.len()
            ));
            for part in parts.iter().take(LISTED) {
                edge.explanation.push(format!(
                    "{} → {} · {} · {} · {}",
                    name(&part.from),
                    name(&part.to),
                    part.ports.join(" "),
                    part.verdict.label(),
                    part.flows
                ));
            }
            if parts.len() > LISTED {
                edge.explanation
                    .push(format!("… and {} more.", parts.len() - LISTED));
            }
            edge
        })
        .collect();
    Map {
        title: map.title.clone(),
        nodes,
        edges,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EdgeVerdict;

    fn node(id: &str, kind: NodeKind, group: &str) -> MapNode {
        MapNode::new(id.into(), kind, group.into(), id.into())
    }

    fn edge(from: &str, to: &str, verdict: EdgeVerdict, port: &str, flows: u64) -> MapEdge {
        MapEdge {
            ports: vec![port.into()],
            flows,
            bytes: flows * 100,
            first: Some(format!("2026-11-22T10:00:0{flows}.000000Z")),
            last: Some(format!("2026-11-22T10:01:0{flows}.000000Z")),
            ..MapEdge::new(format!("{from}>{to}"), from.into(), to.into(), verdict)
        }
    }

    fn sample() -> Map {
        Map {
            title: "t".into(),
            nodes: vec![
                node("pod:shop/a", NodeKind::Workload, "shop"),
                node("pod:shop/b", NodeKind::Workload, "shop"),
                node("pod:db/pg", NodeKind::Workload, "db"),
                node("node:n1", NodeKind::Node, "nodes"),
                node(
                    "external:1.1.1.1",
                    NodeKind::External,
                    "outside the cluster",
                ),
            ],
            edges: vec![
                edge(
                    "pod:shop/a",
                    "pod:db/pg",
                    EdgeVerdict::Allowed,
                    "5432/TCP",
                    3,
                ),
                edge(
                    "pod:shop/b",
                    "pod:db/pg",
                    EdgeVerdict::Denied,
                    "5432/TCP",
                    1,
                ),
                edge(
                    "pod:shop/b",
                    "pod:db/pg",
                    EdgeVerdict::NotIsolated,
                    "6432/TCP",
                    2,
                ),
                edge(
                    "pod:shop/a",
                    "pod:shop/b",
                    EdgeVerdict::Allowed,
                    "80/TCP",
                    4,
                ),
                edge("node:n1", "pod:shop/a", EdgeVerdict::Allowed, "8080/TCP", 5),
                edge(
                    "pod:shop/a",
                    "external:1.1.1.1",
                    EdgeVerdict::NotIsolated,
                    "443/TCP",
                    6,
                ),
            ],
        }
    }

    #[test]
    fn folded_namespaces_keep_every_count_and_the_worst_verdict() {
        let map = collapse(&sample(), &BTreeSet::new());
        let ids: Vec<&str> = map.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "node:n1",
                "external:1.1.1.1",
                "namespace:db",
                "namespace:shop"
            ]
        );
        let shop = &map.nodes[3];
        assert_eq!(shop.kind, NodeKind::Namespace);
        assert_eq!(shop.members, ["pod:shop/a", "pod:shop/b"]);
        assert_eq!(shop.name, "shop · 2 workloads");

        let find = |from: &str, to: &str| {
            map.edges
                .iter()
                .find(|e| e.from == from && e.to == to)
                .unwrap()
        };
        let across = find("namespace:shop", "namespace:db");
        assert_eq!(across.verdict, EdgeVerdict::Denied, "denied wins");
        assert_eq!(across.flows, 6);
        assert_eq!(across.bytes, 600);
        assert_eq!(across.ports, ["5432/TCP", "6432/TCP"]);
        assert_eq!(across.first.as_deref(), Some("2026-11-22T10:00:01.000000Z"));
        assert_eq!(across.last.as_deref(), Some("2026-11-22T10:01:03.000000Z"));
        assert_eq!(across.explanation.len(), 4, "a header and each folded edge");
        // Traffic inside a folded namespace is a loop on it.
        assert_eq!(find("namespace:shop", "namespace:shop").flows, 4);
        // Node and external ends stay as they are.
        assert_eq!(find("node:n1", "namespace:shop").flows, 5);
        assert_eq!(
            find("namespace:shop", "external:1.1.1.1").verdict,
            EdgeVerdict::NotIsolated
        );
        // Nothing lost: the connections add up.
        let total = |m: &Map| m.edges.iter().map(|e| e.flows).sum::<u64>();
        assert_eq!(total(&map), total(&sample()));
    }

    #[test]
    fn an_open_namespace_stays_as_it_is() {
        let open = BTreeSet::from(["shop".to_owned()]);
        let map = collapse(&sample(), &open);
        assert!(map.nodes.iter().any(|n| n.id == "pod:shop/a"));
        assert!(map.nodes.iter().any(|n| n.id == "namespace:db"));
        let e = map
            .edges
            .iter()
            .find(|e| e.from == "pod:shop/a" && e.to == "namespace:db")
            .unwrap();
        assert_eq!(
            (e.id.as_str(), e.flows),
            ("pod:shop/a>pod:db/pg", 3),
            "a single edge keeps its identity and explanation"
        );
        let e = map
            .edges
            .iter()
            .find(|e| e.from == "pod:shop/b" && e.to == "namespace:db")
            .unwrap();
        assert_eq!(e.verdict, EdgeVerdict::Denied);
    }
}

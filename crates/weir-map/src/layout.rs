//! Where everything goes: one box per group (namespace, nodes, outside), groups ordered so that traffic flows
//! mostly left to right (groups that mostly send first, groups that mostly receive last), nodes in columns
//! inside their box in the same order. Deterministic: the same map always gets the same picture.

use std::collections::BTreeMap;

use crate::{Map, NodeKind};

/// A node's box.
pub const NODE_WIDTH: f64 = 200.0;
/// A node's box.
pub const NODE_HEIGHT: f64 = 34.0;
const NODE_GAP_X: f64 = 70.0;
const NODE_GAP_Y: f64 = 14.0;
const GROUP_PAD: f64 = 16.0;
const GROUP_HEADER: f64 = 30.0;
const GROUP_GAP: f64 = 90.0;
const MARGIN: f64 = 24.0;
/// Nodes per column inside a group.
const ROWS: usize = 8;
/// Groups per row of the picture.
const GROUPS_PER_ROW: usize = 4;

/// A placed rectangle.
#[derive(Clone, Debug, PartialEq)]
pub struct Placed {
    /// What it is (a group name or a node id).
    pub key: String,
    /// Left.
    pub x: f64,
    /// Top.
    pub y: f64,
    /// Width.
    pub w: f64,
    /// Height.
    pub h: f64,
}

/// The layout of a map.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Layout {
    /// Group boxes, in drawing order.
    pub groups: Vec<Placed>,
    /// Node boxes, by node index in the map.
    pub nodes: Vec<Placed>,
    /// The whole picture.
    pub width: f64,
    /// The whole picture.
    pub height: f64,
}

fn group_rank(kind: NodeKind) -> u8 {
    match kind {
        NodeKind::External => 2,
        NodeKind::Unknown => 3,
        NodeKind::Node => 1,
        NodeKind::Workload | NodeKind::Service | NodeKind::Namespace | NodeKind::Pod => 0,
    }
}

/// Lays out a map.
pub fn layout(map: &Map) -> Layout {
    let index = map.node_index();
    // Net sending of each node and group: out-edges minus in-edges, by distinct peers.
    let mut node_net = vec![0i64; map.nodes.len()];
    let mut group_net: BTreeMap<&str, i64> = BTreeMap::new();
    for edge in &map.edges {
        let Some((from, to)) = Map::ends(&index, edge) else {
            continue;
        };
        node_net[from] += 1;
        node_net[to] -= 1;
        let (gf, gt) = (map.nodes[from].group.as_str(), map.nodes[to].group.as_str());
        if gf != gt {
            *group_net.entry(gf).or_default() += 1;
            *group_net.entry(gt).or_default() -= 1;
        }
    }
    let mut groups: BTreeMap<&str, (u8, Vec<usize>)> = BTreeMap::new();
    for (i, node) in map.nodes.iter().enumerate() {
        let entry = groups
            .entry(node.group.as_str())
            .or_insert((group_rank(node.kind), Vec::new()));
        entry.0 = entry.0.min(group_rank(node.kind));
        entry.1.push(i);
    }
    let mut order: Vec<(&str, u8, Vec<usize>)> = groups
        .into_iter()
        .map(|(g, (rank, nodes))| (g, rank, nodes))
        .collect();
    // Cluster namespaces first, senders before receivers; then nodes, the outside, unknown addresses.
    order.sort_by(|a, b| {
        a.1.cmp(&b.1)
            .then(
                group_net
                    .get(b.0)
                    .unwrap_or(&0)
                    .cmp(group_net.get(a.0).unwrap_or(&0)),
            )
            .then(a.0.cmp(b.0))
    });

    let mut out = Layout {
        nodes: vec![
            Placed {
                key: String::new(),
                x: 0.0,
                y: 0.0,
                w: 0.0,
                h: 0.0
            };
            map.nodes.len()
        ],
        ..Layout::default()
    };
    let (mut x, mut y, mut row_height, mut in_row) = (MARGIN, MARGIN, 0.0f64, 0usize);
    let mut width = 0.0f64;
    for (name, _, mut members) in order {
        members.sort_by(|&a, &b| {
            node_net[b]
                .cmp(&node_net[a])
                .then(map.nodes[a].name.cmp(&map.nodes[b].name))
        });
        let columns = members.len().div_ceil(ROWS).max(1);
        let rows = members.len().clamp(1, ROWS);
        let w = GROUP_PAD * 2.0 + columns as f64 * NODE_WIDTH + (columns - 1) as f64 * NODE_GAP_X;
        let h =
            GROUP_HEADER + GROUP_PAD + rows as f64 * NODE_HEIGHT + (rows - 1) as f64 * NODE_GAP_Y;
        if in_row == GROUPS_PER_ROW {
            x = MARGIN;
            y += row_height + GROUP_GAP;
            row_height = 0.0;
            in_row = 0;
        }
        for (k, &node) in members.iter().enumerate() {
            let (col, row) = (k / ROWS, k % ROWS);
            out.nodes[node] = Placed {
                key: map.nodes[node].id.clone(),
                x: x + GROUP_PAD + col as f64 * (NODE_WIDTH + NODE_GAP_X),
                y: y + GROUP_HEADER + row as f64 * (NODE_HEIGHT + NODE_GAP_Y),
                w: NODE_WIDTH,
                h: NODE_HEIGHT,
            };
        }
        out.groups.push(Placed {
            key: name.to_owned(),
            x,
            y,
            w,
            h,
        });
        x += w + GROUP_GAP;
        width = width.max(x);
        row_height = row_height.max(h);
        in_row += 1;
    }
    out.width = (width - GROUP_GAP + MARGIN).max(2.0 * MARGIN);
    out.height = y + row_height + MARGIN;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EdgeVerdict, MapEdge, MapNode};

    fn node(id: &str, group: &str) -> MapNode {
        MapNode::new(id.into(), NodeKind::Workload, group.into(), id.into())
    }

    fn edge(from: &str, to: &str) -> MapEdge {
        MapEdge {
            ports: vec!["80/TCP".into()],
            flows: 1,
            bytes: 1,
            ..MapEdge::new(
                format!("{from}>{to}"),
                from.into(),
                to.into(),
                EdgeVerdict::Allowed,
            )
        }
    }

    #[test]
    fn senders_are_left_of_receivers_and_boxes_do_not_overlap() {
        let map = Map {
            title: "t".into(),
            nodes: (0..30)
                .map(|i| node(&format!("n{i}"), ["db", "web", "api"][i % 3]))
                .collect(),
            edges: vec![edge("n1", "n2"), edge("n2", "n0"), edge("n4", "n5")],
        };
        let l = layout(&map);
        let group = |name: &str| l.groups.iter().find(|g| g.key == name).unwrap().x;
        assert!(group("web") < group("api") && group("api") < group("db"));
        for (i, a) in l.nodes.iter().enumerate() {
            assert!(a.x + a.w <= l.width && a.y + a.h <= l.height);
            for b in &l.nodes[i + 1..] {
                let apart =
                    a.x + a.w <= b.x || b.x + b.w <= a.x || a.y + a.h <= b.y || b.y + b.h <= a.y;
                assert!(apart, "{a:?} overlaps {b:?}");
            }
        }
        assert_eq!(layout(&map), l, "deterministic");
    }
}

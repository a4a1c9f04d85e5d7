//! The map as SVG: group boxes, edges coloured by verdict (CSS classes, so the page's stylesheet decides the
//! colours and no inline style is needed under the Content Security Policy), nodes on top. Every element that
//! can be clicked carries its identity in a `data-` attribute; every text is escaped.

use std::fmt::Write as _;

use crate::layout::Placed;
use crate::{EdgeVerdict, Layout, Map, MapEdge, escape};

const VERDICTS: [EdgeVerdict; 5] = [
    EdgeVerdict::Allowed,
    EdgeVerdict::Denied,
    EdgeVerdict::NotIsolated,
    EdgeVerdict::Mixed,
    EdgeVerdict::Unknown,
];

/// Longest name drawn in a node box; the whole name is in its tooltip and details.
const NAME_CHARS: usize = 27;

fn short(name: &str) -> String {
    if name.chars().count() <= NAME_CHARS {
        name.to_owned()
    } else {
        let head: String = name.chars().take(NAME_CHARS - 1).collect();
        format!("{head}…")
    }
}

/// The stroke width for an edge's volume: logarithmic in connections, 1.5 to 7 pixels.
fn width(edge: &MapEdge) -> f64 {
    1.5 + (((1 + edge.flows) as f64).log10() * 1.6).min(5.5)
}

/// The path from one box to another: out of the side facing the destination, into the side facing the source;
/// boxes in one column are joined by an arc on their right. Opposite directions between two boxes are drawn a
/// little apart.
fn path(from: &Placed, to: &Placed, apart: f64) -> String {
    let (fy, ty) = (from.y + from.h / 2.0 + apart, to.y + to.h / 2.0 + apart);
    let (fc, tc) = (from.x + from.w / 2.0, to.x + to.w / 2.0);
    let (x1, x2, c1, c2) = if tc > fc + 1.0 {
        let (x1, x2) = (from.x + from.w, to.x);
        let bend = ((x2 - x1) / 2.0).max(40.0);
        (x1, x2, x1 + bend, x2 - bend)
    } else if tc < fc - 1.0 {
        let (x1, x2) = (from.x, to.x + to.w);
        let bend = ((x1 - x2) / 2.0).max(40.0);
        (x1, x2, x1 - bend, x2 + bend)
    } else {
        let (x1, x2) = (from.x + from.w, to.x + to.w);
        let bulge = 40.0 + (ty - fy).abs() * 0.25;
        (x1, x2, x1 + bulge, x2 + bulge)
    };
    format!("M{x1:.1},{fy:.1} C{c1:.1},{fy:.1} {c2:.1},{ty:.1} {x2:.1},{ty:.1}")
}

/// Draws a laid-out map.
pub fn render_svg(map: &Map, layout: &Layout) -> String {
    let mut out = String::with_capacity(256 + map.nodes.len() * 400 + map.edges.len() * 500);
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="weir-map" viewBox="0 0 {w:.0} {h:.0}" width="{w:.0}" height="{h:.0}" role="img" aria-label="{label}">"#,
        w = layout.width,
        h = layout.height,
        label = escape(&format!("Service map: {}", map.title)),
    );
    out.push_str("<defs>");
    for verdict in VERDICTS {
        let _ = write!(
            out,
            r#"<marker id="arrow-{v}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="5" markerHeight="5" orient="auto-start-reverse"><path class="arrow {v}" d="M0,0 L10,5 L0,10 z"/></marker>"#,
            v = verdict.name()
        );
    }
    out.push_str("</defs><g class=\"groups\">");
    for group in &layout.groups {
        let name = escape(&group.key);
        let _ = write!(
            out,
            r#"<g class="group" data-group="{name}"><rect class="group-box" x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" rx="10"/><text class="group-title" x="{tx:.1}" y="{ty:.1}">{title}</text></g>"#,
            x = group.x,
            y = group.y,
            w = group.w,
            h = group.h,
            tx = group.x + 14.0,
            ty = group.y + 20.0,
            title = escape(&short(&group.key)),
        );
    }
    out.push_str("</g><g class=\"edges\">");
    let index = map.node_index();
    let name = |id: &str| -> String {
        index
            .get(id)
            .map_or_else(|| id.to_owned(), |&i| map.nodes[i].name.clone())
    };
    for edge in &map.edges {
        let Some((from, to)) = Map::ends(&index, edge) else {
            continue;
        };
        let apart = if from == to {
            0.0
        } else if edge.from < edge.to {
            -4.0
        } else {
            4.0
        };
        let d = if from == to {
            // A workload talking to itself: a small loop on its right.
            let p = &layout.nodes[from];
            let (x, y) = (p.x + p.w, p.y + p.h / 2.0);
            format!(
                "M{x:.1},{y0:.1} C{c:.1},{a:.1} {c:.1},{b:.1} {x:.1},{y1:.1}",
                y0 = y - 6.0,
                y1 = y + 6.0,
                c = x + 36.0,
                a = y - 24.0,
                b = y + 24.0
            )
        } else {
            path(&layout.nodes[from], &layout.nodes[to], apart)
        };
        let v = edge.verdict.name();
        let title = format!(
            "{} → {} · {} · {} · {} connection{}{}",
            name(&edge.from),
            name(&edge.to),
            edge.ports.join(" "),
            edge.verdict.label(),
            edge.flows,
            if edge.flows == 1 { "" } else { "s" },
            if edge.new { " · new" } else { "" }
        );
        let _ = write!(
            out,
            r#"<path class="edge {v}{new}" data-edge="{id}" data-from="{f}" data-to="{t}" data-verdict="{v}" data-ports="{ports}" data-tiers="{tiers}" d="{d}" stroke-width="{sw:.1}" marker-end="url(#arrow-{v})"><title>{title}</title></path>"#,
            new = if edge.new { " new" } else { "" },
            id = escape(&edge.id),
            f = escape(&edge.from),
            t = escape(&edge.to),
            ports = escape(&edge.ports.join(" ")),
            tiers = edge
                .tiers
                .iter()
                .map(|t| t.name())
                .collect::<Vec<_>>()
                .join(" "),
            sw = width(edge),
            title = escape(&title),
        );
    }
    out.push_str("</g><g class=\"nodes\">");
    for (node, placed) in map.nodes.iter().zip(&layout.nodes) {
        let kind = serde_json::to_value(node.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let _ = write!(
            out,
            r#"<g class="node kind-{kind}" data-node="{id}" data-group="{group}" data-name="{name}" tabindex="0"><rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" rx="6"/><text x="{tx:.1}" y="{ty:.1}">{label}</text><title>{full}</title></g>"#,
            id = escape(&node.id),
            group = escape(&node.group),
            name = escape(&node.name),
            x = placed.x,
            y = placed.y,
            w = placed.w,
            h = placed.h,
            tx = placed.x + 10.0,
            ty = placed.y + placed.h / 2.0 + 4.5,
            label = escape(&short(&node.name)),
            full = escape(&format!("{} ({})", node.name, node.group)),
        );
    }
    out.push_str("</g></svg>");
    out
}

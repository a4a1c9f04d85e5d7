//! The page around the map. Live, the aggregator serves it at `/` with the script and stylesheet as files of
//! their own, under a Content Security Policy that allows no inline script or style. Offline, everything is in
//! one file, and the same policy is given in a `<meta>` element that allows exactly the embedded script and
//! stylesheet by their SHA-256 hashes: the data rides in a JSON block that is never executed.

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::{Map, escape, layout, render_svg};

/// The page's stylesheet.
pub const APP_CSS: &str = include_str!("../assets/app.css");
/// The page's script (an ES module): filters, search, details, the live alerts panel.
pub const APP_JS: &str = include_str!("../assets/app.js");

/// The policy the aggregator sends with its pages: its own scripts and styles only, requests to itself only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn body(title: &str, live: bool) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        r#"<header><h1>weir</h1><span id="title">{}</span><span id="counts"></span></header>
<nav id="filters" aria-label="filters">
<label>Namespace <select id="f-namespace"><option value="">all</option></select></label>
<fieldset id="f-verdicts"><legend>Verdict</legend>
<label class="allowed"><input type="checkbox" value="allowed" checked> allowed</label>
<label class="not-isolated"><input type="checkbox" value="not-isolated" checked> not isolated</label>
<label class="mixed"><input type="checkbox" value="mixed" checked> mixed</label>
<label class="denied"><input type="checkbox" value="denied" checked> denied</label>
<label class="unknown"><input type="checkbox" value="unknown" checked> unknown</label>
</fieldset>
<fieldset id="f-tiers"><legend>Decided by</legend>
<label title="an Admin-tier rule of a cluster-wide policy"><input type="checkbox" value="admin" checked> admin</label>
<label title="a NetworkPolicy isolating the end"><input type="checkbox" value="networkpolicy" checked> NetworkPolicy</label>
<label title="a Baseline-tier rule of a cluster-wide policy"><input type="checkbox" value="baseline" checked> baseline</label>
<label title="no policy of any tier: allowed by default, or not a pod"><input type="checkbox" value="default" checked> default</label>
</fieldset>
<label>Port <input id="f-port" type="search" placeholder="5432, udp, 80/TCP" size="10"></label>
<label>Search <input id="f-search" type="search" placeholder="name" size="14"></label>
"#,
        escape(title)
    ));
    if live {
        out.push_str(
            r#"<label>Window <select id="f-window"><option value="">all</option><option value="5m">5 min</option><option value="1h">1 hour</option><option value="24h">24 hours</option></select></label>
<label>Namespaces <select id="f-collapse"><option value="auto">fold when large</option><option value="all">fold all</option><option value="none">open all</option></select></label>
"#,
        );
    }
    out.push_str(
        r#"<span class="legend"><i class="new"></i> new edge (dashed)</span>
</nav>
<main>
<div id="map" tabindex="-1">"#,
    );
    out
}

const TAIL: &str = r#"</div>
<aside id="details" hidden><button id="close" type="button" aria-label="close">×</button><div id="details-body"></div></aside>
</main>
<section id="alerts" aria-label="alerts"><h2>Alerts</h2><ol id="alert-list"></ol></section>
"#;

/// The page the aggregator serves at `/`: the map comes from `/ui/map.svg`, its details from `/ui/map.json`,
/// alerts from the SSE stream.
pub fn live_page(title: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>weir: {t}</title><link rel="stylesheet" href="/ui/app.css"><script type="module" src="/ui/app.js"></script></head>
<body data-mode="live">{body}{TAIL}</body></html>
"#,
        t = escape(title),
        body = body(title, true),
    )
}

fn sha256(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()))
}

/// JSON that may sit inside a `<script>` element: no `<`, `>` or `&` (they are written as `\u003c` and so on,
/// which JSON reads back the same), so no `</script>` or comment can end the block.
fn script_safe_json(map: &Map) -> String {
    let json = serde_json::to_string(map).unwrap_or_else(|_| "{}".to_owned());
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// One self-contained HTML file: the map drawn, its data, the script and the stylesheet, no network needed.
pub fn offline_page(map: &Map) -> String {
    let svg = render_svg(map, &layout(map));
    let csp = format!(
        "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; img-src data:; base-uri 'none'; form-action 'none'",
        sha256(APP_JS),
        sha256(APP_CSS)
    );
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<title>weir: {t}</title><style>{APP_CSS}</style></head>
<body data-mode="offline">{body}{svg}{TAIL}<script type="application/json" id="weir-data">{data}</script>
<script type="module">{APP_JS}</script></body></html>
"#,
        t = escape(&map.title),
        body = body(&map.title, false),
        data = script_safe_json(map),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MapNode, NodeKind};

    #[test]
    fn the_live_page_loads_its_script_and_style_as_files_and_escapes_its_title() {
        let page = live_page("<b>prod</b>");
        assert!(page.contains(r#"<script type="module" src="/ui/app.js"></script>"#));
        assert!(page.contains(r#"<link rel="stylesheet" href="/ui/app.css">"#));
        assert_eq!(page.matches("<script").count(), 1, "no inline script");
        assert!(!page.contains("<style") && !page.contains("<b>"));
        assert!(page.contains("&lt;b&gt;prod&lt;/b&gt;"));
    }

    #[test]
    fn the_offline_page_carries_hostile_names_as_text_only() {
        let evil = "<img src=x onerror=alert(1)></script><!--";
        let map = Map {
            title: evil.into(),
            nodes: vec![MapNode {
                pods: vec![evil.into()],
                labels: vec![format!("team={evil}")],
                suggestion: Some(evil.into()),
                ..MapNode::new(
                    format!("pod:shop/{evil}"),
                    NodeKind::Workload,
                    evil.into(),
                    evil.into(),
                )
            }],
            edges: Vec::new(),
        };
        let page = offline_page(&map);
        assert!(!page.contains("<img"), "markup got through");
        assert_eq!(
            page.matches("</script>").count(),
            2,
            "only the two real script ends"
        );
        // The data block reads back to the same map.
        let start = page.find(r#"id="weir-data">"#).unwrap() + r#"id="weir-data">"#.len();
        let end = start + page[start..].find("</script>").unwrap();
        let back: Map = serde_json::from_str(&page[start..end]).unwrap();
        assert_eq!(back, map);
        // The policy names the embedded script and stylesheet exactly.
        assert!(page.contains(&sha256(APP_JS)) && page.contains(&sha256(APP_CSS)));
    }
}

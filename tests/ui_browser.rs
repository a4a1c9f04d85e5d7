//! The map in a real browser: Debian's Chromium, headless, driven through chromedriver with fantoccini
//! (WebDriver).
//!
//! - The offline report of the demo capture must draw its workloads and coloured edges, show an edge's deciding
//!   policies on a click, show a workload's labels and suggested policy, and keep a hostile pod label as text.
//! - The live map, served by `weir aggregator` and fed the demo's flows through the ingest API: sign-in with the
//!   read token, the same map, an alert arriving on the stream and highlighting its edge when clicked, folding
//!   namespaces and showing a workload pod by pod.
//! - The live map of real traffic between pods in network namespaces (root only).
//!
//! Screenshots are kept in `target/ui-artifacts/` (`.ci/run` installs chromium and chromium-driver; elsewhere
//! the tests are skipped with a message).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::browser::*;
use common::root;
use common::system::{Scratch, http, ingest, reading_aggregator};
use fantoccini::{Client, Locator};
use serde_json::{Value, json};

/// The stylesheet's verdict colours, as the browser computes them.
const ALLOWED: &str = "rgb(63, 179, 107)";
const DENIED: &str = "rgb(239, 83, 80)";
const NOT_ISOLATED: &str = "rgb(240, 164, 58)";

fn scratch(tag: &str) -> (PathBuf, Scratch) {
    let dir = std::env::temp_dir().join(format!("weir-ui-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    (dir.clone(), Scratch(dir))
}

/// The demo cluster with a hostile label on the frontend's pods, as a snapshot file.
fn hostile_cluster(dir: &Path) -> PathBuf {
    let mut cluster = weir_synth::demo_cluster();
    for item in cluster["items"].as_array_mut().unwrap() {
        if item["kind"] == "Pod"
            && item["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("frontend"))
        {
            item["metadata"]["labels"]["team"] = json!(EVIL);
        }
    }
    let snapshot = dir.join("cluster.json");
    std::fs::write(&snapshot, cluster.to_string()).unwrap();
    snapshot
}

/// The report of the demo capture, against the demo cluster with a hostile label.
fn report(dir: &Path) -> PathBuf {
    let snapshot = hostile_cluster(dir);
    let html = dir.join("report.html");
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("analyze")
        .arg(root().join("pcaps/demo.pcap"))
        .arg("--cluster")
        .arg(&snapshot)
        .args(["--format", "html", "--output"])
        .arg(&html)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    html
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a browser: Chromium and chromedriver (the README's test command runs it)"]
async fn the_offline_report_draws_the_map_explains_edges_and_runs_no_markup() {
    let driver = chromedriver();
    let (dir, _scratch) = scratch("report");
    let html = report(&dir);
    let c = browser(&driver).await;
    c.goto(&format!("file://{}", html.display())).await.unwrap();

    // The script ran (under the page's Content Security Policy) and counted what it drew.
    let counts = c
        .find(Locator::Id("counts"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(counts.contains("edges shown"), "{counts:?}");
    let nodes = c.find_all(Locator::Css("g.node")).await.unwrap();
    assert!(nodes.len() >= 15, "{} nodes", nodes.len());
    let names: Vec<String> = {
        let mut v = Vec::new();
        for n in &nodes {
            v.push(n.attr("data-name").await.unwrap().unwrap_or_default());
        }
        v
    };
    for expected in [
        "Deployment/frontend",
        "StatefulSet/db",
        "Deployment/coredns",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not drawn: {names:?}"
        );
    }
    // Edges are drawn in their verdict's colour, from the stylesheet.
    assert_eq!(edge_colour(&c, "allowed").await, json!(ALLOWED));
    assert_eq!(edge_colour(&c, "denied").await, json!(DENIED));
    assert_eq!(edge_colour(&c, "not-isolated").await, json!(NOT_ISOLATED));

    // Click a denied edge: its details name the deciding policies and say why.
    click_svg(&c, "path.edge.denied").await;
    let details = c.find(Locator::Id("details")).await.unwrap();
    assert!(details.is_displayed().await.unwrap());
    let text = details.text().await.unwrap();
    assert!(text.to_lowercase().contains("deciding policies"), "{text}");
    assert!(text.contains("denied"), "{text}");
    assert!(
        text.contains("ingress ") || text.contains("egress "),
        "no deciding policy in {text}"
    );
    assert!(text.to_lowercase().contains("decision chain"), "{text}");
    assert!(
        text.contains(": NetworkPolicy ") && text.contains(" isolates"),
        "no decision chain in {text}"
    );

    // Filters: only denied edges, then a search.
    for verdict in ["allowed", "not-isolated", "mixed", "unknown"] {
        c.find(Locator::Css(&format!(
            "#f-verdicts input[value='{verdict}']"
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    }
    let visible: Value = c
        .execute(
            "return [...document.querySelectorAll('path.edge:not(.hidden)')].map(e => e.dataset.verdict);",
            vec![],
        )
        .await
        .unwrap();
    let visible = visible.as_array().unwrap();
    assert!(
        !visible.is_empty() && visible.iter().all(|v| v == "denied"),
        "{visible:?}"
    );
    // The tier filter: without the NetworkPolicy tier, only the denied edges another tier also decided (here
    // the default: an end no policy isolates in that direction) stay.
    c.find(Locator::Css("#f-tiers input[value='networkpolicy']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let tiers: Value = c
        .execute(
            "return [...document.querySelectorAll('path.edge:not(.hidden)')].map(e => e.dataset.tiers);",
            vec![],
        )
        .await
        .unwrap();
    let tiers = tiers.as_array().unwrap();
    assert!(
        tiers.len() < visible.len()
            && tiers.iter().all(|t| t
                .as_str()
                .unwrap()
                .split(' ')
                .any(|t| ["admin", "baseline", "default"].contains(&t))),
        "{tiers:?} of {} denied edges",
        visible.len()
    );
    c.find(Locator::Css("#f-tiers input[value='networkpolicy']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // The frontend: its hostile label shows as text, its suggested policy is there, nothing ran.
    click_svg(&c, "g.node[data-name='Deployment/frontend']").await;
    let details = texts(&c, "#details li").await;
    assert!(
        details.iter().any(|t| t == &format!("team={EVIL}")),
        "the label is not shown as text: {details:?}"
    );
    let pre = texts(&c, "#details pre").await;
    assert!(
        pre.iter().any(|t| t.contains("kind: NetworkPolicy")),
        "{pre:?}"
    );
    assert_eq!(
        injected(&c).await,
        json!(0),
        "markup from the cluster became elements"
    );
    assert!(c.get_alert_text().await.is_err(), "a dialog opened");

    screenshot(&c, "report-demo.png").await;
    c.close().await.unwrap();
}

/// Types into an input and presses a button, both found by CSS.
async fn fill_and_press(c: &Client, input: &str, text: &str, button: &str) {
    let field = c.find(Locator::Css(input)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
    c.find(Locator::Css(button))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Presses the details panel's button with this text.
async fn press(c: &Client, text: &str) {
    let pressed = c
        .execute(
            "for (const b of document.querySelectorAll('#details button.action')) if (b.textContent === arguments[0]) { b.click(); return true; } return false;",
            vec![json!(text)],
        )
        .await
        .unwrap();
    assert_eq!(pressed, json!(true), "no button {text:?}");
}

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a browser: Chromium and chromedriver (the README's test command runs it)"]
async fn the_live_map_signs_in_draws_the_demo_and_takes_alerts_as_they_come() {
    let driver = chromedriver();
    let (dir, _scratch) = scratch("live");
    let snapshot = hostile_cluster(&dir);
    let (_aggregator, port) =
        reading_aggregator(&dir, &snapshot, "r3ad-t0ken-7Qx9-Lm2v-Zp8w-Kc4n-Hs6d");

    // The demo's flows, sent as an agent sends them.
    let flows = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("flows")
        .arg(root().join("pcaps/demo.pcap"))
        .args(["--format", "jsonl"])
        .output()
        .unwrap();
    assert!(flows.status.success());
    ingest(port, 1, &flows.stdout);
    // Reads want the token: the map is refused without it.
    assert_eq!(http(port, "GET", "/ui/map.json", &[], b"").0, 401);

    let c = browser(&driver).await;
    c.goto(&format!("http://127.0.0.1:{port}/")).await.unwrap();
    until(
        &c,
        "return document.querySelector('#details input[type=password]') !== null",
        WAIT,
        "the sign-in form",
    )
    .await;
    fill_and_press(&c, "#token", "wrong", "#details-body button").await;
    until(
        &c,
        "return document.querySelector('#details').textContent.includes('not the read token')",
        WAIT,
        "a wrong token refused",
    )
    .await;
    fill_and_press(
        &c,
        "#token",
        "r3ad-t0ken-7Qx9-Lm2v-Zp8w-Kc4n-Hs6d",
        "#details-body button",
    )
    .await;
    let drawn = until(
        &c,
        "const n = document.querySelectorAll('g.node').length; return n >= 15 ? n : 0;",
        WAIT,
        "the map after signing in",
    )
    .await;
    assert!(drawn.as_u64().unwrap() >= 15, "{drawn}");

    // The aggregator's map of the demo: its workloads, edges in their verdict's colours, the stream's alerts.
    let names: Value = js(
        &c,
        "return [...document.querySelectorAll('g.node')].map(g => g.dataset.name);",
    )
    .await;
    for expected in [
        "Deployment/frontend",
        "StatefulSet/db",
        "Deployment/coredns",
    ] {
        assert!(
            names.as_array().unwrap().iter().any(|n| n == expected),
            "{expected} not drawn: {names}"
        );
    }
    assert_eq!(edge_colour(&c, "allowed").await, json!(ALLOWED));
    assert_eq!(edge_colour(&c, "denied").await, json!(DENIED));
    assert_eq!(edge_colour(&c, "not-isolated").await, json!(NOT_ISOLATED));
    until(
        &c,
        "return document.querySelectorAll('#alert-list li.policy-violation').length >= 5",
        WAIT,
        "the demo's alerts in the panel",
    )
    .await;

    // An edge's details: deciding policies, the engine's reasons and its alerts.
    click_svg(
        &c,
        "path.edge[data-from='pod:shop/Deployment/frontend'][data-to='pod:shop/StatefulSet/db']",
    )
    .await;
    let text = text_of(&c, "#details").await;
    assert!(text.contains("ingress shop/db"), "{text}");
    assert!(text.contains("policy-violation"), "{text}");
    assert!(text.contains("isolated for ingress"), "{text}");

    // The frontend's hostile label is text; nothing ran.
    click_svg(&c, "g.node[data-node='pod:shop/Deployment/frontend']").await;
    let labels = texts(&c, "#details li").await;
    assert!(
        labels.iter().any(|t| t == &format!("team={EVIL}")),
        "{labels:?}"
    );
    until(
        &c,
        "return [...document.querySelectorAll('#details pre')].some(p => p.textContent.includes('kind: NetworkPolicy'))",
        WAIT,
        "the frontend's suggested policy",
    )
    .await;
    assert_eq!(injected(&c).await, json!(0));
    assert!(c.get_alert_text().await.is_err(), "a dialog opened");

    // A new flow: an address outside the cluster reaches the database. Its alert arrives on the stream, the
    // map draws its edge, and clicking the alert highlights that edge.
    let cluster: Value = serde_json::from_slice(&std::fs::read(&snapshot).unwrap()).unwrap();
    let db_ip = cluster["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| {
            i["kind"] == "Pod"
                && i["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("db-"))
        })
        .map(|p| p["status"]["podIP"].as_str().unwrap().to_owned())
        .unwrap();
    let template = String::from_utf8_lossy(&flows.stdout)
        .lines()
        .find(|l| l.contains("\"proto\":\"TCP\""))
        .unwrap()
        .to_owned();
    let mut record: Value = serde_json::from_str(&template).unwrap();
    record["src"] = json!("203.0.113.66");
    record["src_port"] = json!(51515);
    record["dst"] = json!(db_ip);
    record["dst_port"] = json!(5432);
    record["start"] = json!("2026-11-22T10:01:30Z");
    record["end"] = json!("2026-11-22T10:01:31Z");
    ingest(port, 2, format!("{record}\n").as_bytes());
    let from = "external:203.0.113.66";
    until(
        &c,
        &format!("return [...document.querySelectorAll('#alert-list li.policy-violation')].some(li => li.dataset.from === '{from}');"),
        WAIT,
        "the new alert in the panel",
    )
    .await;
    until(
        &c,
        &format!(
            "return document.querySelector(\"path.edge.denied[data-from='{from}']\") !== null;"
        ),
        WAIT,
        "the new edge drawn",
    )
    .await;
    let clicked = js(
        &c,
        &format!("const li = [...document.querySelectorAll('#alert-list li.policy-violation')].find(li => li.dataset.from === '{from}'); li.click(); return li.textContent;"),
    )
    .await;
    assert!(
        clicked.as_str().unwrap().contains("policy-violation"),
        "{clicked}"
    );
    let highlighted = js(
        &c,
        "return [...document.querySelectorAll('path.edge.highlight')].map(p => [p.dataset.from, p.dataset.to]);",
    )
    .await;
    assert_eq!(
        highlighted,
        json!([[from, "pod:shop/StatefulSet/db"]]),
        "the alert's edge is highlighted"
    );
    let text = text_of(&c, "#details").await;
    assert!(
        text.contains("203.0.113.66") && text.contains("5432/TCP"),
        "{text}"
    );
    screenshot(&c, "live-demo.png").await;

    // Fold every namespace: shop becomes one node; open it again.
    js(
        &c,
        "const s = document.getElementById('f-collapse'); s.value = 'all'; s.dispatchEvent(new Event('change'));",
    )
    .await;
    until(
        &c,
        "return document.querySelector(\"g.node.kind-namespace[data-node='namespace:shop']\") !== null && document.querySelector(\"g.node[data-node='pod:shop/Deployment/frontend']\") === null",
        WAIT,
        "shop folded",
    )
    .await;
    let loop_edge = js(
        &c,
        "const e = document.querySelector(\"path.edge[data-from='namespace:shop'][data-to='namespace:shop']\"); return e && e.dataset.verdict;",
    )
    .await;
    assert_eq!(
        loop_edge,
        json!("denied"),
        "shop's own traffic, worst first"
    );
    click_svg(&c, "g.node[data-node='namespace:shop']").await;
    press(&c, "Open namespace").await;
    until(
        &c,
        "return document.querySelector(\"g.node[data-node='pod:shop/Deployment/frontend']\") !== null && document.querySelector(\"g.node[data-node='namespace:payments']\") !== null",
        WAIT,
        "shop open, the others folded",
    )
    .await;

    // The frontend pod by pod.
    click_svg(&c, "g.node[data-node='pod:shop/Deployment/frontend']").await;
    press(&c, "Show pods").await;
    let pods = until(
        &c,
        "return [...document.querySelectorAll('g.node.kind-pod')].map(g => g.dataset.name);",
        WAIT,
        "the frontend's pods",
    )
    .await;
    assert!(
        pods.as_array()
            .unwrap()
            .iter()
            .all(|p| p.as_str().unwrap().starts_with("frontend-")),
        "{pods}"
    );
    let pod_edges = js(
        &c,
        "return document.querySelectorAll(\"path.edge[data-from^='instance:shop/frontend-']\").length;",
    )
    .await;
    assert!(pod_edges.as_u64().unwrap() > 0, "{pod_edges}");
    assert_eq!(injected(&c).await, json!(0));
    screenshot(&c, "live-demo-folded.png").await;
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and a browser: network namespaces, Chromium (the README's test command runs it)"]
async fn the_live_map_follows_real_traffic_between_pods() {
    use common::system::{GET, agent, py, serve, setup};
    common::process::require_root();
    let driver = chromedriver();
    let (node, system, _scratch) = setup("ui", 7);
    let _aggregator = system.aggregator();
    let _agent = agent(&system, &node);
    let _api = serve(&node, 1, 8080);
    let _db = serve(&node, 2, 5432);
    std::thread::sleep(Duration::from_millis(1500));

    // The page is open before any traffic: it must follow what happens.
    let c = browser(&driver).await;
    c.goto(&system.url()).await.unwrap();
    until(
        &c,
        "return document.getElementById('counts').textContent.includes('edges shown')",
        WAIT,
        "the (empty) live map",
    )
    .await;

    // frontend -> api:8080 is allowed; frontend -> db:5432 is denied (and delivered: nothing enforces here).
    let api = format!("http://{}:8080/", node.pods[1].ip);
    let db = format!("http://{}:5432/", node.pods[2].ip);
    py(&node, 0, GET, &[&api, "3"]);
    py(&node, 0, GET, &[&db, "1"]);

    let (frontend, to_api, to_db) = (
        "pod:shop/Pod/frontend",
        "pod:shop/Pod/api",
        "pod:shop/Pod/db",
    );
    until(
        &c,
        &format!("return [...document.querySelectorAll('#alert-list li.policy-violation')].some(li => li.dataset.from === '{frontend}' && li.dataset.to === '{to_db}');"),
        WAIT,
        "the violation's alert from the stream",
    )
    .await;
    until(
        &c,
        &format!("return document.querySelector(\"path.edge.denied[data-from='{frontend}'][data-to='{to_db}']\") !== null && document.querySelector(\"path.edge.allowed[data-from='{frontend}'][data-to='{to_api}']\") !== null;"),
        WAIT,
        "the denied and the allowed edge drawn",
    )
    .await;
    assert_eq!(edge_colour(&c, "denied").await, json!(DENIED));
    assert_eq!(edge_colour(&c, "allowed").await, json!(ALLOWED));

    // Click the alert: its edge lights up and its details name the policy that denies it.
    js(
        &c,
        &format!("[...document.querySelectorAll('#alert-list li.policy-violation')].find(li => li.dataset.to === '{to_db}').click();"),
    )
    .await;
    let highlighted = js(
        &c,
        "return [...document.querySelectorAll('path.edge.highlight')].map(p => p.dataset.to);",
    )
    .await;
    assert_eq!(highlighted, json!([to_db]));
    let text = text_of(&c, "#details").await;
    assert!(text.contains("ingress shop/db"), "{text}");
    assert!(text.contains("node-e"), "the reporting node: {text}");
    assert!(text.contains("CNI did not enforce"), "{text}");
    screenshot(&c, "live-netns.png").await;
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a browser: Chromium and chromedriver (the README's test command runs it)"]
async fn two_hundred_workloads_stay_readable() {
    let driver = chromedriver();
    let (dir, _scratch) = scratch("scale");
    let (_aggregator, port) =
        common::system::scale_aggregator(&dir, 4000, "r3ad-t0ken-7Qx9-Lm2v-Zp8w-Kc4n-Hs6d");
    let c = browser(&driver).await;
    c.goto(&format!("http://127.0.0.1:{port}/")).await.unwrap();
    until(
        &c,
        "return document.querySelector('#token') !== null",
        WAIT,
        "the sign-in form",
    )
    .await;
    fill_and_press(
        &c,
        "#token",
        "r3ad-t0ken-7Qx9-Lm2v-Zp8w-Kc4n-Hs6d",
        "#details-body button",
    )
    .await;
    // Folded by default: twenty namespaces, each one node.
    let folded = until(
        &c,
        "return document.querySelectorAll('g.node.kind-namespace').length",
        WAIT,
        "the folded map",
    )
    .await;
    assert_eq!(folded, json!(20));
    screenshot(&c, "live-scale-folded.png").await;
    // Search finds a workload inside a folded namespace by its namespace's node; opening it shows its ten.
    click_svg(&c, "g.node[data-node='namespace:ns-003']").await;
    let members = texts(&c, "#details dd").await;
    assert!(
        members.iter().any(|m| m.contains("Deployment/app-00")),
        "{members:?}"
    );
    press(&c, "Open namespace").await;
    let open = until(
        &c,
        "return document.querySelectorAll(\"g.node.kind-workload[data-group='ns-003']\").length",
        WAIT,
        "ns-003 open",
    )
    .await;
    assert_eq!(open, json!(10));
    assert_eq!(
        js(
            &c,
            "return document.querySelectorAll('g.node.kind-namespace').length"
        )
        .await,
        json!(19)
    );
    // The namespace filter keeps to ns-003 and its peers.
    js(
        &c,
        "const s = document.getElementById('f-namespace'); s.value = 'ns-003'; s.dispatchEvent(new Event('input'));",
    )
    .await;
    let hidden = js(
        &c,
        "return [...document.querySelectorAll('path.edge')].filter(p => !p.classList.contains('hidden')).every(p => p.dataset.from.includes('ns-003') || p.dataset.to.includes('ns-003'))",
    )
    .await;
    assert_eq!(hidden, json!(true));
    screenshot(&c, "live-scale-open.png").await;
    c.close().await.unwrap();
}

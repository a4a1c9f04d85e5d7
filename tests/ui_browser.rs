//! The offline HTML report in a real browser: Debian's Chromium, headless, driven through chromedriver with
//! fantoccini (WebDriver). The demo's report must draw its workloads and coloured edges, show an edge's deciding
//! policies on a click, show a workload's labels and suggested policy, and keep a hostile pod label as text:
//! nothing it contains may run. A screenshot is kept in `target/ui-artifacts/` (`.ci/run` installs chromium and
//! chromium-driver; elsewhere the test is skipped with a message).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::root;
use common::system::{Scratch, free_port};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const EVIL: &str = "<img src=x onerror=alert(1)>";

struct Driver(Child, u16);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromedriver() -> Option<Driver> {
    let path = Path::new("/usr/bin/chromedriver");
    if !path.exists() || !Path::new("/usr/bin/chromium").exists() {
        eprintln!(
            "skipped: chromium and chromium-driver are not installed (.ci/run installs them)"
        );
        return None;
    }
    let port = free_port();
    let child = Command::new(path)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Driver(child, port))
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"binary": "/usr/bin/chromium",
               "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--window-size=1600,1000"]}),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.1))
        .await
        .expect("a browser session")
}

fn artifacts() -> PathBuf {
    let dir = root().join("target/ui-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The demo cluster with a hostile label on the frontend's pods, and the report of the demo capture.
fn report(dir: &Path) -> PathBuf {
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

async fn texts(c: &Client, css: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in c.find_all(Locator::Css(css)).await.unwrap() {
        out.push(e.text().await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offline_report_draws_the_map_explains_edges_and_runs_no_markup() {
    let Some(driver) = chromedriver() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("weir-ui-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _scratch = Scratch(dir.clone());
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
    let colour = |verdict: &'static str| {
        let c = c.clone();
        async move {
            c.execute(
                "const e = document.querySelector(`path.edge.${arguments[0]}`); return e ? getComputedStyle(e).stroke : null;",
                vec![json!(verdict)],
            )
            .await
            .unwrap()
        }
    };
    assert_eq!(colour("allowed").await, json!("rgb(63, 179, 107)"));
    assert_eq!(colour("denied").await, json!("rgb(239, 83, 80)"));
    assert_eq!(colour("not-isolated").await, json!("rgb(240, 164, 58)"));

    // Click a denied edge: its details name the deciding policies and say why.
    c.execute(
        "document.querySelector('path.edge.denied').dispatchEvent(new MouseEvent('click', {bubbles: true}));",
        vec![],
    )
    .await
    .unwrap();
    let details = c.find(Locator::Id("details")).await.unwrap();
    assert!(details.is_displayed().await.unwrap());
    let text = details.text().await.unwrap();
    assert!(text.to_lowercase().contains("deciding policies"), "{text}");
    assert!(text.contains("denied"), "{text}");
    assert!(
        text.contains("ingress ") || text.contains("egress "),
        "no deciding policy in {text}"
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

    // The frontend: its hostile label shows as text, its suggested policy is there, nothing ran.
    c.execute(
        "for (const g of document.querySelectorAll('g.node')) if (g.dataset.name === 'Deployment/frontend') g.dispatchEvent(new MouseEvent('click', {bubbles: true}));",
        vec![],
    )
    .await
    .unwrap();
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
    let injected: Value = c
        .execute(
            "return document.querySelectorAll('img').length + document.querySelectorAll('[onerror]').length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        injected,
        json!(0),
        "markup from the cluster became elements"
    );
    assert!(c.get_alert_text().await.is_err(), "a dialog opened");

    let png = c.screenshot().await.unwrap();
    std::fs::write(artifacts().join("report-demo.png"), png).unwrap();
    c.close().await.unwrap();
}

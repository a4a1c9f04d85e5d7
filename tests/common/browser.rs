//! A real browser for the UI tests: Debian's Chromium, headless, driven through chromedriver with fantoccini
//! (WebDriver). The tests are ignored by a plain `cargo test`; the README's test command installs chromium and
//! chromium-driver and runs them, and without them they fail saying what to install.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};

use super::root;
use super::system::free_port;

/// A label no page may turn into markup.
pub const EVIL: &str = "<img src=x onerror=alert(1)>";

/// chromedriver, stopped when the test ends.
pub struct Driver(Child, u16);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts chromedriver on a free port; fails the test, saying what to install, without Chromium.
pub fn chromedriver() -> Driver {
    let path = Path::new("/usr/bin/chromedriver");
    assert!(
        path.exists() && Path::new("/usr/bin/chromium").exists(),
        "this test needs a real browser: apt-get install chromium chromium-driver (the README's test command \
         installs them)"
    );
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
    Driver(child, port)
}

/// A headless browser session.
pub async fn browser(driver: &Driver) -> Client {
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

/// Where screenshots are kept: `target/ui-artifacts/`.
pub fn artifacts() -> PathBuf {
    let dir = root().join("target/ui-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Keeps a screenshot of the page.
pub async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(artifacts().join(name), png).unwrap();
}

/// The rendered text of every element matching a selector, read in one step in the page: the live map redraws
/// its panes when answers arrive, and an element found in one WebDriver call may be gone by the next.
pub async fn texts(c: &Client, css: &str) -> Vec<String> {
    let v = c
        .execute(
            "return [...document.querySelectorAll(arguments[0])].map(e => e.innerText);",
            vec![json!(css)],
        )
        .await
        .unwrap();
    serde_json::from_value(v).unwrap()
}

/// The rendered text of the first element matching a selector (empty when there is none), as [`texts`].
pub async fn text_of(c: &Client, css: &str) -> String {
    texts(c, css).await.into_iter().next().unwrap_or_default()
}

/// Runs a script in the page and returns its value.
pub async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap()
}

/// Waits (up to `limit`) until a script returns something truthy; returns that, or fails with `what`.
pub async fn until(c: &Client, script: &str, limit: Duration, what: &str) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let v = js(c, script).await;
        let truthy = match &v {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Object(_) => true,
        };
        if truthy {
            return v;
        }
        assert!(Instant::now() < deadline, "waited {limit:?} for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clicks the SVG element matching a selector (SVG elements take a dispatched click; WebDriver's own click
/// wants an element with a box of its own).
pub async fn click_svg(c: &Client, css: &str) {
    let clicked = c
        .execute(
            "const e = document.querySelector(arguments[0]); if (!e) return false; e.dispatchEvent(new MouseEvent('click', {bubbles: true})); return true;",
            vec![json!(css)],
        )
        .await
        .unwrap();
    assert_eq!(clicked, json!(true), "nothing matches {css}");
}

/// The computed stroke colour of the first edge of a verdict.
pub async fn edge_colour(c: &Client, verdict: &str) -> Value {
    c.execute(
        "const e = document.querySelector(`path.edge.${arguments[0]}`); return e ? getComputedStyle(e).stroke : null;",
        vec![json!(verdict)],
    )
    .await
    .unwrap()
}

/// Counts of elements that markup from the cluster would have made.
pub async fn injected(c: &Client) -> Value {
    js(
        c,
        "return document.querySelectorAll('img').length + document.querySelectorAll('[onerror]').length;",
    )
    .await
}

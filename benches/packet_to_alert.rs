//! Packet-to-alert latency on a real "node" (needs root): pods in network namespaces, `weir agent` capturing
//! their veths and `weir aggregator` judging against a snapshot, as in `tests/live_system.rs`. While the
//! frontend pod keeps calling the api pod (allowed background load), it opens one denied connection to the db
//! pod every 200 ms; the time from its first packet (taken in the pod just before `connect`) to the
//! `policy-violation` alert naming its source port on `weir watch` is recorded in an hdrhistogram.
//!
//! `cargo bench --bench packet_to_alert [-- PROBES]` (default 60). The agent runs with `--flush 200ms`; the
//! figure is end to end: capture, the flow's end, the batch, the aggregator's verdict, the SSE stream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::process::{Proc, require_root};
use common::system::{agent, serve, setup, weir};
use hdrhistogram::Histogram;

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// Opens `n` connections to `db:5432`, one every 200 ms, printing `source-port start-ns` for each.
const PROBE: &str = "import socket,sys,time
src,dst,n=sys.argv[1],sys.argv[2],int(sys.argv[3])
for _ in range(n):
    s=socket.socket();s.bind((src,0));s.settimeout(0.5)
    t=time.time_ns();s.connect_ex((dst,5432))
    print(s.getsockname()[1],t,flush=True);s.close();time.sleep(0.2)";

/// Calls the api pod until told to stop (at most `n` requests).
const LOAD: &str = "import sys,urllib.request
for _ in range(int(sys.argv[2])):
    try: urllib.request.urlopen(sys.argv[1],timeout=2).read()
    except OSError: pass";

fn main() {
    require_root();
    let probes: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(60);
    let (node, system, _scratch) = setup("pa", 7);
    // Every update of the violation delivered (not rate-limited), and no scan folding the probes together.
    let _aggregator = system.aggregator_with(&[
        "--alert-repeat",
        "0s",
        "--scan-min-denied",
        "1000000",
        "--scan-min-targets",
        "1000000",
    ]);
    let _agent = agent(&system, &node);
    let _api = serve(&node, 1, 8080);
    std::thread::sleep(Duration::from_secs(2));

    // The alert stream, each line stamped on arrival.
    let mut watch = Proc::spawn(
        weir()
            .args(["watch", "--aggregator", &system.url(), "--output", "json"])
            .args(["--type", "policy-violation"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let stdout = watch.child().stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<(i64, serde_json::Value)>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send((now_ns(), v));
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));

    let (front, api, db) = (
        node.pods[0].ip.to_string(),
        node.pods[1].ip.to_string(),
        node.pods[2].ip.to_string(),
    );
    let load = node.spawn(
        0,
        &[
            "python3",
            "-c",
            LOAD,
            &format!("http://{api}:8080/"),
            "100000",
        ],
    );
    let started = Instant::now();
    let out = node.exec(
        0,
        &["python3", "-c", PROBE, &front, &db, &probes.to_string()],
    );
    let probing = started.elapsed();
    // The last probe's alert: the flow ends, the agent flushes, the aggregator judges.
    std::thread::sleep(Duration::from_secs(4));
    drop(load);
    drop(watch);

    let sent: HashMap<String, i64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_owned(), parts.next()?.parse().ok()?))
        })
        .collect();
    let mut latency = Histogram::<u64>::new(3).unwrap();
    let mut seen = std::collections::HashSet::new();
    while let Ok((at, alert)) = rx.try_recv() {
        let Some(flow) = alert["evidence"]["last_flow"].as_str() else {
            continue;
        };
        // `10.251.7.2:41234 -> 10.251.7.4:5432 tcp`: the source port names the probe.
        let Some(port) = flow
            .split_whitespace()
            .next()
            .and_then(|src| src.rsplit(':').next())
        else {
            continue;
        };
        if let Some(&t) = sent.get(port)
            && seen.insert(port.to_owned())
        {
            latency.record(((at - t) / 1_000).max(1) as u64).unwrap();
        }
    }
    let requests = node.counter(1, "tx_packets");
    println!(
        "packet-to-alert: {} of {} denied connections alerted, over {:.1} s of background load ({} packets to the api pod)",
        seen.len(),
        sent.len(),
        probing.as_secs_f64(),
        requests
    );
    if seen.is_empty() {
        println!("  no alert matched a probe");
        return;
    }
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "  latency: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (agent --flush 200ms, --active-timeout 1s)",
        ms(0.5),
        ms(0.99),
        latency.max() as f64 / 1000.0
    );
}

//! SIGTERM, as Kubernetes sends it on every rolling update and node drain: the agent sends what it holds and
//! says what was left unacknowledged, the aggregator writes a last checkpoint and exits 0, `weir watch` ends.
//! Once with weir as PID 1 of its own PID namespace, as in the container image (no init), where the kernel
//! drops every signal the process has no handler for.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::process::{Proc, require_root, require_tool, signal};
use common::system::{
    Scratch, System, agent_summary, agent_with, free_port, ingest, setup, wait_for, weir,
};

/// The demo's flow records and the aggregator's arguments for the demo snapshot at `port`, checkpointing only
/// once an hour: whatever it has stored after a stop, the last checkpoint wrote.
fn demo_aggregator(command: &mut Command, dir: &Path, port: u16) {
    let root = common::root();
    command
        .args(["aggregator", "--cluster"])
        .arg(root.join("pcaps/demo.cluster.yaml"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(dir.join("data"))
        .args(["--learn", "1h", "--no-alert-lines", "--checkpoint", "1h"])
        // The demo was captured weeks ago: keep its edges, which the default retention would let go.
        .args(["--retention", "10000d"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
}

fn demo_records() -> Vec<u8> {
    let demo = common::root().join("pcaps/demo.pcap");
    common::weir(&["flows", "--format", "jsonl", demo.to_str().unwrap()]).into_bytes()
}

fn status(port: u16) -> serde_json::Value {
    let (code, body) = common::system::http(port, "GET", "/api/v1/status", &[], b"");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn scratch(tag: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("weir-signals-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

/// Feeds the demo to an aggregator, stops it with SIGTERM sent to `pid`, and checks that a new aggregator on
/// the same data directory holds everything the first one had applied.
fn stops_on_sigterm_with_a_last_checkpoint(mut aggregator: Proc, pid: u32, dir: &Path, port: u16) {
    wait_for(&format!("http://127.0.0.1:{port}/readyz"));
    ingest(port, 1, &demo_records());
    let before = status(port);
    let applied = before["totals"]["records"].as_u64().unwrap();
    assert!(applied > 100, "{before:#}");
    signal(pid, "TERM");
    let exit = aggregator.wait_for_exit(Duration::from_secs(15));
    let mut stderr = String::new();
    std::io::Read::read_to_string(aggregator.child().stderr.as_mut().unwrap(), &mut stderr)
        .unwrap();
    assert!(exit.success(), "{exit}: {stderr}");
    assert!(
        stderr.contains("the last checkpoint is written"),
        "{stderr}"
    );

    let mut command = weir();
    demo_aggregator(&mut command, dir, port);
    let again = Proc::spawn(command.stderr(Stdio::null()));
    wait_for(&format!("http://127.0.0.1:{port}/readyz"));
    let after = status(port);
    assert_eq!(after["totals"]["records"], applied, "{after:#}");
    assert_eq!(after["edges"], before["edges"], "{after:#}");
    drop(again);
}

#[test]
fn the_aggregator_writes_a_last_checkpoint_on_sigterm_and_exits_0() {
    let scratch = scratch("agg");
    let port = free_port();
    let mut command = weir();
    demo_aggregator(&mut command, &scratch.0, port);
    let aggregator = Proc::spawn(&mut command);
    let pid = aggregator.id();
    stops_on_sigterm_with_a_last_checkpoint(aggregator, pid, &scratch.0, port);
}

#[test]
#[ignore = "needs root: a PID namespace of its own (the README's test command runs it)"]
fn the_aggregator_as_pid_1_stops_on_sigterm() {
    require_root();
    require_tool("unshare", "util-linux");
    let scratch = scratch("pid1");
    let port = free_port();
    let mut command = Command::new("unshare");
    command
        .args(["--pid", "--fork", "--kill-child"])
        .arg(env!("CARGO_BIN_EXE_weir"));
    demo_aggregator(&mut command, &scratch.0, port);
    let unshare = Proc::spawn(&mut command);
    // The aggregator is unshare's child, PID 1 inside; the signal goes to it, not to unshare.
    let children = format!("/proc/{0}/task/{0}/children", unshare.id());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let pid = loop {
        let listed = std::fs::read_to_string(&children).unwrap_or_default();
        if let Some(pid) = listed.split_whitespace().next() {
            break pid.parse::<u32>().unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "unshare started nothing"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .unwrap()
        .to_owned();
    assert!(nspid.split_whitespace().last() == Some("1"), "{nspid}");
    stops_on_sigterm_with_a_last_checkpoint(unshare, pid, &scratch.0, port);
}

#[test]
fn weir_watch_ends_on_sigterm() {
    let scratch = scratch("watch");
    let port = free_port();
    let mut command = weir();
    demo_aggregator(&mut command, &scratch.0, port);
    let _aggregator = Proc::spawn(command.stderr(Stdio::null()));
    wait_for(&format!("http://127.0.0.1:{port}/readyz"));
    let mut watch = Proc::spawn(
        weir()
            .args(["watch", "--aggregator", &format!("http://127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    std::thread::sleep(Duration::from_millis(800));
    watch.signal("TERM");
    let exit = watch.wait_for_exit(Duration::from_secs(5));
    assert!(exit.success(), "{exit}");
}

/// UDP datagrams from pod 0 to pod 1: a flow the agent holds open in its table.
fn send_udp(node: &common::netns::Node, count: u32) {
    let ip = node.pods[1].ip.to_string();
    common::system::py(
        node,
        0,
        "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor _ in range(int(sys.argv[2])): s.sendto(b'x'*64,(sys.argv[1],9999))",
        &[&ip, &count.to_string()],
    );
}

fn stderr_of(agent: Proc) -> (std::process::ExitStatus, String) {
    let out = agent.output();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
#[ignore = "needs root: network namespaces and AF_PACKET (the README's test command runs it)"]
fn the_agent_sends_its_open_flows_on_sigterm_and_counts_what_was_not_acknowledged() {
    require_root();
    let (node, system, _scratch) = setup("t", 7);
    let aggregator = system.aggregator();
    // Flows are reported only when they end or every hour: what reaches the aggregator after SIGTERM was
    // still open in the agent's flow table when the signal came.
    let agent = agent_with(
        &system,
        &node,
        &["--active-timeout", "1h", "--drain", "10s"],
    );
    std::thread::sleep(Duration::from_millis(1500));
    send_udp(&node, 5);
    std::thread::sleep(Duration::from_millis(500));
    let flows = |system: &System| system.get("/api/v1/status")["totals"]["records"].clone();
    assert_eq!(flows(&system), 0, "the flow was reported before the stop");
    agent.signal("TERM");
    let started = std::time::Instant::now();
    let (exit, stderr) = stderr_of(agent);
    assert!(exit.success(), "{exit}: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(10), "{stderr}");
    let (made, acked, unacked) = agent_summary(&stderr);
    assert!(made >= 2, "both veths saw the flow: {stderr}");
    assert_eq!((acked, unacked), (made, 0), "{stderr}");
    assert_eq!(flows(&system), made, "{stderr}");

    // With the aggregator gone, the agent tries for its --drain, then says what it could not deliver.
    drop(aggregator);
    let agent = agent_with(&system, &node, &["--active-timeout", "1h", "--drain", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    send_udp(&node, 5);
    std::thread::sleep(Duration::from_millis(500));
    agent.signal("TERM");
    let started = std::time::Instant::now();
    let (exit, stderr) = stderr_of(agent);
    assert!(started.elapsed() < Duration::from_secs(6), "{stderr}");
    assert_eq!(exit.code(), Some(2), "{stderr}");
    let (made, acked, unacked) = agent_summary(&stderr);
    assert_eq!((acked, unacked), (0, made), "{stderr}");
    assert!(made >= 2, "{stderr}");
}

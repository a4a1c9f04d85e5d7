//! What a live test leaves behind when it fails: nothing. Processes a test starts are killed and reaped when it
//! ends, however it ends, and a pod's namespace is deleted with everything still running in it.

#![allow(clippy::unwrap_used)]

mod common;

use std::panic::AssertUnwindSafe;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::Node;
use common::process::{Proc, exists, require_root, running};

#[test]
#[ignore = "needs root: network namespaces (the README's test command runs it)"]
fn a_failing_live_test_leaves_nothing_running() {
    require_root();
    let mut started: Vec<u32> = Vec::new();
    let mut orphan = 0;
    let mut namespaces: Vec<String> = Vec::new();
    let failed = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let node = Node::new("h", 9, 2);
        namespaces.extend(node.pods.iter().map(|p| p.netns.clone()));
        let ip = node.pods[1].ip.to_string();
        let server = node.spawn(1, &["python3", "-m", "http.server", "8080", "--bind", &ip]);
        let capture = Proc::spawn(
            Command::new(env!("CARGO_BIN_EXE_weir"))
                .args([
                    "capture",
                    "-i",
                    &node.pods[0].host_veth,
                    "--duration",
                    "120s",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        // A process the test holds no handle to: started in the background inside the pod, as a shell would.
        let out = node.exec(0, &["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"]);
        orphan = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        started.extend([server.id(), capture.id()]);
        assert!(started.iter().chain([&orphan]).all(|&p| running(p)));
        panic!("failing on purpose, with a server, a capture and an orphan running");
    }));
    assert!(failed.is_err(), "the test body was meant to fail");
    // The test's own children are killed and reaped by the time the failure has unwound.
    for pid in &started {
        assert!(!exists(*pid), "process {pid} outlived the failed test");
    }
    // The orphan was killed with its pod (init reaps it in its own time).
    let deadline = Instant::now() + Duration::from_secs(5);
    while running(orphan) {
        assert!(
            Instant::now() < deadline,
            "process {orphan}, started in a pod, outlived the failed test"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    for ns in &namespaces {
        assert!(
            !listed.split_whitespace().any(|n| n == ns),
            "{ns} was left behind"
        );
    }
}

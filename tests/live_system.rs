//! End to end on a real "node": pods in network namespaces, `weir agent` capturing their veths, `weir
//! aggregator` judging against a snapshot, `weir watch` tailing the alert stream. Real traffic, real HTTP.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::process::require_root;
use common::system::*;

#[test]
#[ignore = "needs root: network namespaces and AF_PACKET (the README's test command runs it)"]
fn allowed_traffic_is_quiet_denied_traffic_and_a_scan_raise_alerts() {
    require_root();
    let (node, mut system, _scratch) = setup("s", 7);
    // Agents send to their own listener, as in deploy/kubernetes (the other test uses one listener).
    system.ingest_port = Some(free_port());
    let _aggregator = system.aggregator();
    wait_for(&format!("{}/readyz", system.ingest_url()));
    let (_watch, alerts) = watch(&system);
    let mut agent = agent(&system, &node);
    let _api = serve(&node, 1, 8080);
    let _db = serve(&node, 2, 5432);
    std::thread::sleep(Duration::from_millis(1500));
    let api = format!("http://{}:8080/", node.pods[1].ip);
    let db = format!("http://{}:5432/", node.pods[2].ip);

    // Allowed: frontend -> api:8080. Nothing is raised.
    py(&node, 0, GET, &[&api, "3"]);
    let quiet = collect(&alerts, Duration::from_secs(4));
    assert!(quiet.is_empty(), "allowed traffic raised {quiet:#?}");

    // Denied: frontend -> db:5432. Nothing enforces policy here, so it is delivered as well.
    py(&node, 0, GET, &[&db, "1"]);
    let raised = collect(&alerts, Duration::from_secs(4));
    let violation = raised
        .iter()
        .find(|a| a["type"] == "policy-violation")
        .unwrap_or_else(|| panic!("no policy-violation in {raised:#?}"));
    assert_eq!(violation["source"]["name"], "Pod/frontend");
    assert_eq!(violation["destination"]["name"], "Pod/db");
    assert_eq!(violation["port"], 5432);
    assert!(
        violation["policies"]
            .as_array()
            .unwrap()
            .contains(&"ingress shop/db".into()),
        "{violation:#}"
    );
    assert!(
        kinds(&raised).contains(&"enforcement-gap".to_owned()),
        "{raised:#?}"
    );

    // A scan of 40 closed ports of api: one scan alert, not forty.
    py(
        &node,
        0,
        SCAN,
        &[&node.pods[1].ip.to_string(), "20000", "20040"],
    );
    let scan = collect(&alerts, Duration::from_secs(5));
    let scans: Vec<_> = scan.iter().filter(|a| a["type"] == "scan").collect();
    assert_eq!(scans.len(), 1, "{scan:#?}");
    assert_eq!(scans[0]["source"]["name"], "Pod/frontend");
    assert!(scans[0]["evidence"]["targets"].as_u64().unwrap() >= 20);
    assert!(
        scan.iter()
            .filter(|a| a["type"] == "policy-violation")
            .count()
            <= 2,
        "the scan flooded: {scan:#?}"
    );

    // The API agrees: the denied edge, the allowed one, and the agent's counters.
    let edges = system.get("/api/v1/edges?namespace=shop");
    let edges = edges["edges"].as_array().unwrap();
    let edge = |dst: &str, port: u64| {
        edges
            .iter()
            .find(|e| e["key"]["dst"]["name"] == dst && e["key"]["port"] == port)
            .unwrap_or_else(|| panic!("no edge to {dst}:{port} in {edges:#?}"))
    };
    assert_eq!(edge("Pod/api", 8080)["verdict"], "allowed");
    assert_eq!(edge("Pod/api", 8080)["flows"], 3);
    assert_eq!(edge("Pod/db", 5432)["verdict"], "denied");
    assert_eq!(edge("Pod/db", 5432)["enforcement_gaps"], 1);
    let status = system.get("/api/v1/status");
    assert_eq!(status["agents"][0]["node"], "node-e");
    let metrics = Command::new("python3")
        .args([
            "-c",
            "import sys,urllib.request;print(urllib.request.urlopen(sys.argv[1]).read().decode())",
            &format!("{}/metrics", system.url()),
        ])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains("weir_alerts_total{type=\"scan\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("weir_agent_dropped_total{node=\"node-e\",reason=\"kernel\"} 0"),
        "{metrics}"
    );

    // Agents without the token are refused; the API listener sends agents to the ingest listener, which
    // serves nothing else.
    let code = |method: &str, url: String| {
        let out = Command::new("python3")
            .args(["-c", "import sys,urllib.request\ntry:\n r=urllib.request.urlopen(urllib.request.Request(sys.argv[2],method=sys.argv[1],data=b'' if sys.argv[1]=='POST' else None,headers={'x-weir-node':'x','x-weir-epoch':'1'}));print(r.status)\nexcept urllib.error.HTTPError as e: print(e.code)", method, &url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(
        code("POST", format!("{}/api/v1/ingest", system.ingest_url())),
        "401"
    );
    assert_eq!(
        code("POST", format!("{}/api/v1/ingest", system.url())),
        "421"
    );
    assert_eq!(
        code("GET", format!("{}/api/v1/edges", system.ingest_url())),
        "404"
    );
    assert_eq!(
        code("GET", format!("{}/metrics", system.ingest_url())),
        "404"
    );
    let _ = Command::new("kill")
        .args(["-INT", &agent.child().id().to_string()])
        .status();
    let _ = agent.child().wait();
}

#[test]
#[ignore = "needs root: network namespaces and AF_PACKET (the README's test command runs it)"]
fn an_aggregator_killed_mid_traffic_loses_no_flow() {
    require_root();
    let (node, system, _scratch) = setup("k", 7);
    let mut aggregator = system.aggregator();
    let mut agent = agent(&system, &node);
    let _api = serve(&node, 1, 8080);
    std::thread::sleep(Duration::from_millis(1500));
    let api = format!("http://{}:8080/", node.pods[1].ip);
    // Steady traffic on a thread: 60 connections over about six seconds.
    let traffic = {
        let netns = node.pods[0].netns.clone();
        let api = api.clone();
        std::thread::spawn(move || {
            for _ in 0..60 {
                let _ = Command::new("ip")
                    .args(["netns", "exec", &netns, "python3", "-c", GET, &api, "1"])
                    .status();
                std::thread::sleep(Duration::from_millis(60));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    // SIGKILL: no last checkpoint. Batches it applied but had not stored are still held by the agent.
    aggregator.child().kill().unwrap();
    aggregator.child().wait().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let _aggregator = system.aggregator();
    traffic.join().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // The agent flushes its flow tables on SIGINT and waits until everything is acknowledged.
    let _ = Command::new("kill")
        .args(["-INT", &agent.child().id().to_string()])
        .status();
    let child = agent.0.take().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (made, acked, unacked) = agent_summary(&stderr);
    assert_eq!(unacked, 0, "{stderr}");
    assert_eq!(made, acked, "{stderr}");
    assert!(
        stderr.contains("unreachable"),
        "the agent never noticed the restart: {stderr}"
    );
    std::thread::sleep(Duration::from_millis(800));
    let status = system.get("/api/v1/status");
    // Exactly once: every record the agent made was applied once, across the restart.
    assert_eq!(status["totals"]["records"], made, "{status:#}");
    let edges = system.get("/api/v1/edges?namespace=shop");
    let to_api = edges["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"]["dst"]["name"] == "Pod/api" && e["key"]["port"] == 8080)
        .cloned()
        .unwrap();
    // No connection is missing (one whose two views straddle the restart may be counted twice: the join
    // state is not stored).
    assert!(to_api["flows"].as_u64().unwrap() >= 60, "{to_api:#}");
}

/// A probe from the node's own address inside the pod range, as a kubelet on Calico, Cilium or Flannel sends
/// it: no cluster object names the address, the agent reports it as one of its node's interfaces, and the
/// aggregator judges the probe as the node's traffic, which the policies allow (the pod runs on that node).
#[test]
#[ignore = "needs root: network namespaces and AF_PACKET (the README's test command runs it)"]
fn a_probe_from_the_nodes_own_address_is_the_nodes_and_raises_nothing() {
    require_root();
    let (node, system, _scratch) = setup("p", 7);
    // An address of the pod range on the node's bridge, not its first: only the agent's report makes it the
    // node's (the snapshot's podCIDR rule would already cover 10.251.7.1).
    common::netns::sh(&["ip", "addr", "add", "10.251.7.200/24", "dev", &node.bridge]);
    let _aggregator = system.aggregator();
    let (_watch, alerts) = watch(&system);
    let _agent = agent(&system, &node);
    let _api = serve(&node, 1, 8080);
    std::thread::sleep(Duration::from_millis(1500));
    // The "kubelet": GETs from the host, whose route to the pods leaves from the bridge address.
    let api = format!("http://{}:8080/", node.pods[1].ip);
    let probe = Command::new("python3")
        .args(["-c", GET, &api, "3"])
        .status()
        .unwrap();
    assert!(probe.success());
    let raised = collect(&alerts, Duration::from_secs(4));
    assert!(raised.is_empty(), "the node's probes raised {raised:#?}");

    let status = system.get("/api/v1/status");
    let reported = status["node_addresses"]["node-e"].as_array().unwrap();
    assert!(
        reported
            .iter()
            .any(|a| a["interface"] == node.bridge.as_str() && a["ip"] == "10.251.7.200"),
        "{status:#}"
    );
    let edges = system.get("/api/v1/edges");
    let probes = edges["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"]["port"] == 8080 && e["key"]["dst"]["name"] == "Pod/api")
        .cloned()
        .unwrap_or_else(|| panic!("{edges:#}"));
    assert_eq!(probes["key"]["src"]["kind"], "node", "{probes:#}");
    assert_eq!(probes["verdict"], "allowed", "{probes:#}");
}

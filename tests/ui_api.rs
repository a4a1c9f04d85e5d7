//! The aggregator's UI over HTTP, without a browser: the page's headers, the sign-in cookie, and the live map's
//! numbers against the API's own (folding namespaces and splitting a workload into pods lose nothing).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::root;
use common::system::{Scratch, http, ingest, reading_aggregator, weir};
use serde_json::Value;

const TOKEN: &str = "r3ad-t0ken-7Qx9-Lm2v-Zp8w-Kc4n-Hs6d";

fn get(port: u16, path: &str, cookie: &str) -> (u16, Value) {
    let (status, body) = http(port, "GET", path, &[("cookie", cookie)], b"");
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn headers(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split("\r\n\r\n").next().unwrap().to_lowercase()
}

fn total(map: &Value, field: &str) -> u64 {
    map["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[field].as_u64().unwrap())
        .sum()
}

#[test]
fn the_live_map_adds_up_to_the_engines_edges_however_it_is_drawn() {
    let dir = std::env::temp_dir().join(format!("weir-ui-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _scratch = Scratch(dir.clone());
    let (_aggregator, port) =
        reading_aggregator(&dir, &root().join("pcaps/demo.cluster.yaml"), TOKEN);
    let flows = weir()
        .arg("flows")
        .arg(root().join("pcaps/demo.pcap"))
        .args(["--format", "jsonl"])
        .output()
        .unwrap();
    ingest(port, 1, &flows.stdout);

    // The page: no data in it, so no token needed; hardened headers.
    let page = headers(port, "/");
    assert!(page.starts_with("http/1.1 200"), "{page}");
    for h in [
        "content-security-policy: default-src 'none'; script-src 'self'",
        "x-content-type-options: nosniff",
        "x-frame-options: deny",
        "content-type: text/html",
    ] {
        assert!(page.contains(h), "{h} missing in {page}");
    }
    assert!(headers(port, "/ui/app.js").contains("content-type: text/javascript"));
    assert!(headers(port, "/ui/app.css").contains("content-type: text/css"));

    // The map is data: it wants the token, as a bearer or in the cookie the sign-in sets (and only then).
    assert_eq!(get(port, "/ui/map.json", "").0, 401);
    let (status, _) = http(port, "POST", "/ui/session", &[], b"wrong");
    assert_eq!(status, 401);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    {
        use std::io::{Read, Write};
        write!(s, "POST /ui/session HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{TOKEN}", TOKEN.len()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let out = out.to_lowercase();
        assert!(out.starts_with("http/1.1 204"), "{out}");
        assert!(
            out.contains(
                &format!("set-cookie: weir_read={TOKEN}; path=/; httponly; samesite=strict")
                    .to_lowercase()
            ),
            "{out}"
        );
    }
    let cookie = format!("weir_read={TOKEN}");
    assert_eq!(get(port, "/ui/map.json", "weir_read=nope").0, 401);
    let (status, map) = get(port, "/ui/map.json", &cookie);
    assert_eq!(status, 200, "{map}");
    let (_, by_bearer) = {
        let (s, b) = http(
            port,
            "GET",
            "/ui/map.json",
            &[("authorization", &format!("Bearer {TOKEN}"))],
            b"",
        );
        (s, serde_json::from_str::<Value>(&b).unwrap())
    };
    assert_eq!(by_bearer["edges"], map["edges"]);

    // Every connection and byte of the engine's edges is on the map, once.
    let (_, api) = http(
        port,
        "GET",
        "/api/v1/edges?limit=100000",
        &[("authorization", &format!("Bearer {TOKEN}"))],
        b"",
    );
    let api: Value = serde_json::from_str(&api).unwrap();
    let api_edges = api["edges"].as_array().unwrap();
    let api_flows: u64 = api_edges.iter().map(|e| e["flows"].as_u64().unwrap()).sum();
    let api_bytes: u64 = api_edges.iter().map(|e| e["bytes"].as_u64().unwrap()).sum();
    assert!(api_flows > 100);
    assert_eq!(total(&map, "flows"), api_flows);
    assert_eq!(total(&map, "bytes"), api_bytes);
    // An edge is denied on the map when any of its engine edges is.
    let mut denied: BTreeMap<String, bool> = BTreeMap::new();
    for e in api_edges {
        let id = |end: &Value| {
            format!(
                "{}:{}{}",
                end["kind"].as_str().unwrap(),
                end["namespace"]
                    .as_str()
                    .map_or(String::new(), |n| format!("{n}/")),
                end["name"].as_str().unwrap()
            )
        };
        *denied
            .entry(format!("{}>{}", id(&e["key"]["src"]), id(&e["key"]["dst"])))
            .or_default() |= e["verdict"] == "denied";
    }
    for e in map["edges"].as_array().unwrap() {
        let id = e["id"].as_str().unwrap();
        assert_eq!(
            denied.get(id).copied(),
            Some(e["verdict"] == "denied"),
            "{id}: {e}"
        );
    }
    // Workload nodes carry every current pod, their labels and selecting policies.
    let frontend = map["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "pod:shop/Deployment/frontend")
        .unwrap();
    assert!(
        frontend["pods"].as_array().unwrap().len() >= 2,
        "{frontend}"
    );
    assert!(
        frontend["policies"]
            .as_array()
            .unwrap()
            .contains(&"shop/frontend".into()),
        "{frontend}"
    );
    // Its suggested policy is worked out when asked for, from its edges, with what it would deny.
    let (status, suggestion) = get(
        port,
        "/ui/workload?id=pod:shop/Deployment/frontend",
        &cookie,
    );
    assert_eq!(status, 200, "{suggestion}");
    let yaml = suggestion["suggestion"].as_str().unwrap();
    assert!(
        yaml.contains("kind: NetworkPolicy") && yaml.contains("namespace: \"shop\""),
        "{yaml}"
    );
    assert!(suggestion["edges"].as_u64().unwrap() > 5, "{suggestion}");
    assert!(yaml.starts_with("# worked out by the aggregator from the "));
    let denies = suggestion["suggestion_denies"].as_array().unwrap();
    assert!(
        denies
            .iter()
            .any(|d| d.as_str().unwrap().ends_with("shop/db-0 22/TCP")),
        "the intruder's probes of port 22 would be denied: {denies:?}"
    );
    assert_eq!(
        get(port, "/ui/workload?id=pod:shop/Deployment/frontend", "").0,
        401
    );
    assert!(map["svg"].as_str().unwrap().starts_with("<svg"));

    // Folded: fewer nodes, the same connections and bytes, and shop's own traffic a loop on it.
    let (_, folded) = get(port, "/ui/map.json?collapse=all", &cookie);
    assert_eq!(folded["folded"], true);
    assert!(folded["nodes"].as_array().unwrap().len() < map["nodes"].as_array().unwrap().len());
    assert_eq!(total(&folded, "flows"), api_flows);
    assert_eq!(total(&folded, "bytes"), api_bytes);
    let (_, open) = get(port, "/ui/map.json?collapse=all&open=shop", &cookie);
    let ids: Vec<&str> = open["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"pod:shop/Deployment/frontend") && ids.contains(&"namespace:payments"));
    // The demo is small: `auto` leaves it open.
    assert_eq!(
        get(port, "/ui/map.json?collapse=auto", &cookie).1["folded"],
        false
    );

    // The frontend pod by pod: its pods are nodes with their workload as parent, and its edges are split
    // among them (the aggregator still keeps every demo flow, so none stays on the workload).
    let (_, pods) = get(
        port,
        "/ui/map.json?expand=pod:shop/Deployment/frontend",
        &cookie,
    );
    assert_eq!(
        pods["expanded"],
        serde_json::json!(["pod:shop/Deployment/frontend"])
    );
    let nodes = pods["nodes"].as_array().unwrap();
    let instances: Vec<&Value> = nodes.iter().filter(|n| n["kind"] == "pod").collect();
    assert!(instances.len() >= 2, "{instances:?}");
    assert!(
        instances
            .iter()
            .all(|n| n["parent"] == "pod:shop/Deployment/frontend")
    );
    assert!(
        !nodes
            .iter()
            .any(|n| n["id"] == "pod:shop/Deployment/frontend")
    );
    assert!(pods["edges"].as_array().unwrap().iter().all(|e| {
        e["from"] != "pod:shop/Deployment/frontend" && e["to"] != "pod:shop/Deployment/frontend"
    }));
    // Split by pod, a denied edge stays denied.
    assert!(pods["edges"].as_array().unwrap().iter().any(|e| {
        e["from"]
            .as_str()
            .unwrap()
            .starts_with("instance:shop/frontend-")
            && e["to"] == "pod:shop/StatefulSet/db"
            && e["verdict"] == "denied"
    }));

    // The drawing alone, with its stylesheet and a policy that runs nothing.
    let svg = headers(port, "/ui/map.svg");
    assert!(svg.starts_with("http/1.1 401"), "{svg}");
    let (status, body) = http(port, "GET", "/ui/map.svg", &[("cookie", &cookie)], b"");
    assert_eq!(status, 200);
    assert!(body.starts_with("<svg") && body.contains("<style><![CDATA["));
    // A window that excludes the demo (it was captured on 2026-11-22): nothing.
    let (_, later) = get(port, "/ui/map.json?window=2030-01-01T00:00:00Z", &cookie);
    assert_eq!(later["edges"], serde_json::json!([]));
    let (status, err) = get(port, "/ui/map.json?window=yesterday", &cookie);
    assert_eq!(status, 400, "{err}");
}

#[test]
fn two_hundred_workloads_fold_into_twenty_namespaces() {
    let dir = std::env::temp_dir().join(format!("weir-ui-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _scratch = Scratch(dir.clone());
    let (_aggregator, port) = common::system::scale_aggregator(&dir, 4000, TOKEN);
    let cookie = format!("weir_read={TOKEN}");
    let (_, open) = get(port, "/ui/map.json?collapse=none", &cookie);
    let workloads = open["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["kind"] == "workload")
        .count();
    assert_eq!(workloads, 200);
    // `auto` folds a map this big: one node per namespace, every connection kept, a drawing a browser can hold.
    let (_, auto) = get(port, "/ui/map.json?collapse=auto", &cookie);
    assert_eq!(auto["folded"], true);
    let nodes = auto["nodes"].as_array().unwrap();
    assert_eq!(
        nodes.len(),
        20,
        "{:?}",
        nodes.iter().map(|n| &n["id"]).collect::<Vec<_>>()
    );
    assert!(
        nodes
            .iter()
            .all(|n| n["kind"] == "namespace" && n["members"].as_array().unwrap().len() == 10)
    );
    assert_eq!(total(&auto, "flows"), total(&open, "flows"));
    assert_eq!(total(&auto, "bytes"), total(&open, "bytes"));
    assert!(auto["edges"].as_array().unwrap().len() <= 400);
    let svg = auto["svg"].as_str().unwrap().len();
    let full = open["svg"].as_str().unwrap().len();
    assert!(svg * 5 < full, "folded {svg} bytes, open {full}");
    // One namespace opened among the folded ones.
    let (_, one) = get(port, "/ui/map.json?collapse=auto&open=ns-003", &cookie);
    let kinds: Vec<(&str, &str)> = one["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["group"].as_str().unwrap(), n["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|(g, k)| *g == "ns-003" && *k == "workload")
            .count(),
        10
    );
    assert_eq!(kinds.iter().filter(|(_, k)| *k == "namespace").count(), 19);
    assert_eq!(total(&one, "flows"), total(&open, "flows"));
}

/// Authentication is a layer in front of every read route: a reader without the token is refused before its
/// query is parsed or its body read (a 5 MiB diff body is refused as unauthorized, not as too large), and the
/// sign-in page and assets stay open.
#[test]
fn reads_are_refused_before_their_query_or_body_is_looked_at() {
    let scratch =
        Scratch(std::env::temp_dir().join(format!("weir-ui-auth-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0).unwrap();
    let snapshot = root().join("pcaps/demo.cluster.yaml");
    let (_aggregator, port) =
        reading_aggregator(&scratch.0, &snapshot, "r3ad-t0ken-r3ad-t0ken-r3ad-t0ken");
    for path in [
        "/api/v1/status",
        "/api/v1/flows?since=not-a-time",
        "/api/v1/edges?limit=x",
        "/api/v1/alerts/some-id",
        "/ui/map.json?window=bogus",
        "/ui/workload",
    ] {
        let (code, body) = http(port, "GET", path, &[], b"");
        assert_eq!(code, 401, "{path}: {body}");
    }
    // The answer comes before the body is read: the server may close the connection while it is still being
    // sent, so the write's outcome is not the point, the status line is.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let big = vec![b'x'; 5 << 20];
    let head = format!(
        "POST /api/v1/diff HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {}\r\n\r\n",
        big.len()
    );
    std::io::Write::write_all(&mut stream, head.as_bytes()).unwrap();
    // Read on a thread of its own, so the answer is taken as it arrives, whatever becomes of the write.
    let mut reader = stream.try_clone().unwrap();
    let answer = std::thread::spawn(move || {
        let mut answer = [0u8; 64];
        let n = std::io::Read::read(&mut reader, &mut answer).unwrap_or(0);
        String::from_utf8_lossy(&answer[..n]).into_owned()
    });
    let _ = std::io::Write::write_all(&mut stream, &big);
    let status = answer.join().unwrap();
    assert!(status.starts_with("HTTP/1.1 401"), "{status:?}");
    for path in ["/", "/ui/app.js", "/ui/app.css", "/healthz"] {
        let (code, _) = http(port, "GET", path, &[], b"");
        assert_eq!(code, 200, "{path}");
    }
    let (code, _) = http(
        port,
        "GET",
        "/api/v1/status",
        &[("authorization", "Bearer r3ad-t0ken-r3ad-t0ken-r3ad-t0ken")],
        b"",
    );
    assert_eq!(code, 200);
}

/// One edge book, offline and live: the edges `weir analyze --format edges` lists for the demo capture are the
/// edges the aggregator keeps for the same flows, with the same counts, verdicts and deciding policies.
#[test]
fn the_offline_analysis_keeps_the_edge_book_the_aggregator_keeps() {
    let dir = std::env::temp_dir().join(format!("weir-ui-book-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _scratch = Scratch(dir.clone());
    // The demo cluster with its cluster-wide policies, so the decision chains through the tiers are compared too.
    let snapshot = dir.join("cluster.yaml");
    let mut text = std::fs::read_to_string(root().join("pcaps/demo.cluster.yaml")).unwrap();
    text.push_str("\n---\n");
    text.push_str(&std::fs::read_to_string(root().join("pcaps/demo.tiers.yaml")).unwrap());
    std::fs::write(&snapshot, text).unwrap();
    let (_aggregator, port) = reading_aggregator(&dir, &snapshot, TOKEN);
    let capture = root().join("pcaps/demo.pcap");
    let flows = weir()
        .arg("flows")
        .arg(&capture)
        .args(["--format", "jsonl"])
        .output()
        .unwrap();
    assert!(flows.status.success());
    ingest(port, 1, &flows.stdout);
    let analysis = weir()
        .arg("analyze")
        .arg(&capture)
        .arg("--cluster")
        .arg(&snapshot)
        .args(["--format", "edges"])
        .output()
        .unwrap();
    assert!(analysis.status.success());
    let offline: Value = serde_json::from_slice(&analysis.stdout).unwrap();

    let (status, live) = get(
        port,
        "/api/v1/edges?limit=100000",
        &format!("weir_read={TOKEN}"),
    );
    assert_eq!(status, 200, "{live}");
    // Everything but what only the live system knows: which node reported a connection, and whether it was
    // seen while the baseline was learned. (One-ended records: delivered means answered, as offline.)
    let fields = [
        "flows",
        "packets",
        "bytes",
        "allowed",
        "denied",
        "other",
        "verdict",
        "not_isolated",
        "policies",
        "egress",
        "ingress",
        "services",
        "first_seen",
        "last_seen",
        "delivered",
        "enforcement_gaps",
    ];
    let book = |edges: &Value| -> BTreeMap<String, Vec<Value>> {
        edges
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["key"].to_string(),
                    fields.iter().map(|f| e[*f].clone()).collect(),
                )
            })
            .collect()
    };
    let offline = book(&offline["edges"]);
    let live = book(&live["edges"]);
    assert!(offline.len() > 50, "{} edges", offline.len());
    assert_eq!(
        offline.keys().collect::<Vec<_>>(),
        live.keys().collect::<Vec<_>>()
    );
    for (key, counts) in &offline {
        assert_eq!(Some(counts), live.get(key), "{key}: {fields:?}");
    }
    // The tiers took part: some edge was decided by an Admin rule, and its chain says which.
    assert!(
        live.values()
            .flat_map(|v| [&v[9], &v[10]])
            .any(|side| side["tier"] == "admin"
                && side["chain"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("Admin sec-ops rule #"))),
        "no live edge decided by the Admin tier"
    );
}

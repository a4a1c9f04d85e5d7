//! `weir snapshot`, live `--cluster`-less commands and the kubectl plugin, against a scripted API server that
//! speaks the real list protocol: JSON `*List` bodies whose items carry neither kind nor apiVersion (as the API
//! server sends them), `managedFields` on every object, pages cut short with continue tokens, bearer tokens
//! checked, and a `403 Forbidden` Status on demand. The objects are the bundled demo cluster, so a snapshot
//! taken from the server must give the same `weir analyze` report as the bundled snapshot file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::root;
use common::system::Scratch;
use serde_json::{Value, json};

const TOKEN: &str = "scripted-token";
/// The server returns at most this many items per page, whatever the client's limit, as an API server may.
const PAGE: usize = 7;

/// (group-version prefix, resource) → kind, for the kinds weir reads.
const RESOURCES: [(&str, &str, &str); 9] = [
    ("/api/v1", "namespaces", "Namespace"),
    ("/api/v1", "nodes", "Node"),
    ("/api/v1", "pods", "Pod"),
    ("/api/v1", "services", "Service"),
    (
        "/apis/discovery.k8s.io/v1",
        "endpointslices",
        "EndpointSlice",
    ),
    ("/apis/apps/v1", "replicasets", "ReplicaSet"),
    ("/apis/batch/v1", "jobs", "Job"),
    (
        "/apis/networking.k8s.io/v1",
        "networkpolicies",
        "NetworkPolicy",
    ),
    // The network-policy-api's v1alpha2 CRD is installed; its v1alpha1 ones are not (404, as an API server
    // without them answers).
    (
        "/apis/policy.networking.k8s.io/v1alpha2",
        "clusternetworkpolicies",
        "ClusterNetworkPolicy",
    ),
];

/// The demo cluster's cluster-wide policies (`pcaps/demo.tiers.yaml`).
fn demo_tiers() -> Vec<Value> {
    let text = std::fs::read_to_string(root().join("pcaps/demo.tiers.yaml")).unwrap();
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap()
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

struct Api {
    objects: BTreeMap<&'static str, Vec<Value>>,
    forbidden: Option<&'static str>,
    log: Vec<String>,
}

type Shared = Arc<Mutex<Api>>;

/// The kind and namespace a list path names: `/api/v1/pods` or `/api/v1/namespaces/shop/pods`.
fn route(path: &str) -> Option<(&'static str, Option<String>)> {
    RESOURCES.iter().find_map(|(prefix, resource, kind)| {
        let rest = path.strip_prefix(prefix)?;
        if rest == format!("/{resource}") {
            return Some((*kind, None));
        }
        let ns = rest
            .strip_prefix("/namespaces/")?
            .strip_suffix(&format!("/{resource}"))?;
        (!ns.contains('/') && *kind != "Namespace" && *kind != "Node")
            .then(|| (*kind, Some(ns.to_owned())))
    })
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code});
    (
        StatusCode::from_u16(code).unwrap(),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn serve_api(State(api): State<Shared>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let mut api = api.lock().unwrap();
    api.log
        .push(format!("{path}?{}", req.uri().query().unwrap_or("")));
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    if bearer != Some(&format!("Bearer {TOKEN}")) {
        return status(401, "Unauthorized", "Unauthorized");
    }
    let Some((kind, namespace)) = route(&path) else {
        return status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    if api.forbidden == Some(kind) {
        return status(
            403,
            "Forbidden",
            &format!(
                "{kind} is forbidden: User \"reader\" cannot list resource at the cluster scope"
            ),
        );
    }
    let items: Vec<Value> = api
        .objects
        .get(kind)
        .into_iter()
        .flatten()
        .filter(|o| {
            namespace
                .as_deref()
                .is_none_or(|ns| o["metadata"]["namespace"] == ns)
        })
        .cloned()
        .collect();
    let start: usize = query
        .get("continue")
        .and_then(|c| c.strip_prefix("page-"))
        .map_or(0, |n| n.parse().unwrap());
    let limit: usize = query
        .get("limit")
        .map_or(usize::MAX, |l| l.parse().unwrap());
    let end = (start + limit.min(PAGE)).min(items.len());
    let mut page: Vec<Value> = items[start..end].to_vec();
    for item in &mut page {
        // List items come without kind and apiVersion.
        let map = item.as_object_mut().unwrap();
        map.remove("kind");
        map.remove("apiVersion");
    }
    let mut metadata = json!({"resourceVersion": "4242"});
    if end < items.len() {
        metadata["continue"] = json!(format!("page-{end}"));
        metadata["remainingItemCount"] = json!(items.len() - end);
    }
    let body = json!({"kind": format!("{kind}List"), "apiVersion": "v1", "metadata": metadata, "items": page});
    ([("content-type", "application/json")], body.to_string()).into_response()
}

/// The demo cluster as the API server holds it: with resource versions and managedFields.
fn demo_objects() -> BTreeMap<&'static str, Vec<Value>> {
    let list = weir_synth::demo_cluster();
    let mut objects: BTreeMap<&'static str, Vec<Value>> = BTreeMap::new();
    let items = list["items"].as_array().unwrap().iter().cloned();
    for mut item in items.chain(demo_tiers()) {
        let kind = RESOURCES
            .iter()
            .find(|(_, _, k)| item["kind"] == *k)
            .map(|(_, _, k)| *k)
            .unwrap_or_else(|| panic!("the demo has a kind weir does not read: {}", item["kind"]));
        let meta = item["metadata"].as_object_mut().unwrap();
        meta.insert("resourceVersion".into(), json!("4242"));
        meta.insert(
            "managedFields".into(),
            json!([{"manager": "kubectl", "operation": "Apply", "apiVersion": "v1",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}}]),
        );
        objects.entry(kind).or_default().push(item);
    }
    objects
}

struct Server {
    api: Shared,
    port: u16,
    _runtime: tokio::runtime::Runtime,
}

fn server() -> Server {
    let api: Shared = Arc::new(Mutex::new(Api {
        objects: demo_objects(),
        forbidden: None,
        log: Vec::new(),
    }));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = Router::new()
        .fallback(serve_api)
        .with_state(Arc::clone(&api));
    runtime.spawn(async move { axum::serve(listener, app).await });
    Server {
        api,
        port,
        _runtime: runtime,
    }
}

/// A scratch directory with a kubeconfig whose current context points nowhere and whose `scripted` context
/// points at the server.
fn scratch(tag: &str, port: u16) -> (Scratch, PathBuf) {
    let dir = std::env::temp_dir().join(format!("weir-snapshot-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: nowhere
  cluster:
    server: http://127.0.0.1:1
- name: scripted
  cluster:
    server: http://127.0.0.1:{port}
users:
- name: reader
  user:
    token: {TOKEN}
contexts:
- name: nowhere
  context:
    cluster: nowhere
    user: reader
- name: scripted
  context:
    cluster: scripted
    user: reader
current-context: nowhere
"
        ),
    )
    .unwrap();
    (Scratch(dir), kubeconfig)
}

fn weir(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(args).env_remove("KUBECONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The JSON report of the demo capture against a cluster (paths, or none for the live one).
fn demo_report(cluster: &[&Path], kube: &[&str]) -> Value {
    let demo = root().join("pcaps/demo.pcap");
    let mut args = vec!["analyze", demo.to_str().unwrap(), "--format", "json"];
    for path in cluster {
        args.extend(["--cluster", path.to_str().unwrap()]);
    }
    args.extend(kube);
    serde_json::from_str(&ok(&weir(&args, &[]))).unwrap()
}

#[test]
fn a_snapshot_of_the_live_cluster_gives_the_same_analysis_as_the_bundled_one() {
    let server = server();
    let (scratch, kubeconfig) = scratch("same", server.port);
    let out = scratch.0.join("cluster.yaml");
    let kc = kubeconfig.to_str().unwrap();
    let run = weir(
        &[
            "snapshot",
            "--kubeconfig",
            kc,
            "--context",
            "scripted",
            "-o",
            out.to_str().unwrap(),
        ],
        &[],
    );
    ok(&run);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("Namespace 4, Node 3, Pod 16,"), "{stderr}");

    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        text.starts_with("# weir snapshot of http://127.0.0.1:"),
        "{}",
        &text[..200]
    );
    assert!(!text.contains("managedFields"), "managedFields were kept");
    assert!(text.contains("\nkind: List\n"));

    // Every kind was listed whole, in pages, following the continue tokens.
    let log = server.api.lock().unwrap().log.clone();
    for (prefix, resource, _) in RESOURCES {
        assert!(
            log.iter()
                .any(|l| l.starts_with(&format!("{prefix}/{resource}?"))),
            "{resource} never listed: {log:#?}"
        );
    }
    assert!(
        log.iter()
            .any(|l| l.starts_with("/api/v1/pods?") && l.contains("continue=page-7")),
        "no second page of pods: {log:#?}"
    );

    // The cluster-wide policies were listed too, and the kinds whose CRDs are not installed were no error.
    assert!(
        text.contains("kind: ClusterNetworkPolicy"),
        "no ClusterNetworkPolicy taken"
    );
    assert!(
        log.iter()
            .any(|l| l.starts_with("/apis/policy.networking.k8s.io/v1alpha1/adminnetworkpolicies?")),
        "{log:#?}"
    );

    // The snapshot loads, and judges the demo capture exactly as the bundled snapshot (with the same
    // cluster-wide policies) does.
    let (cluster, tiers) = (
        root().join("pcaps/demo.cluster.yaml"),
        root().join("pcaps/demo.tiers.yaml"),
    );
    let bundled = demo_report(&[&cluster, &tiers], &[]);
    let taken = demo_report(&[&out], &[]);
    assert_eq!(bundled["summary"], taken["summary"]);
    assert_eq!(bundled["flows"], taken["flows"]);
    assert!(
        bundled["flows"]
            .to_string()
            .contains("ClusterNetworkPolicy/sec-ops"),
        "the cluster-wide policies decide nothing"
    );

    // Without --cluster, analyze reads the live cluster itself; JSON output is the same snapshot again.
    let live = demo_report(&[], &["--kubeconfig", kc, "--context", "scripted"]);
    assert_eq!(bundled["summary"], live["summary"]);
    let json = ok(&weir(
        &[
            "snapshot",
            "--kubeconfig",
            kc,
            "--context",
            "scripted",
            "--format",
            "json",
        ],
        &[],
    ));
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["kind"], "List");
    assert_eq!(
        json["items"].as_array().unwrap().len(),
        weir_synth::demo_cluster()["items"]
            .as_array()
            .unwrap()
            .len()
            + demo_tiers().len()
    );
    assert!(
        json["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["apiVersion"].is_string())
    );
}

#[test]
fn kubeconfig_context_and_namespace_are_honoured() {
    let server = server();
    let (scratch, kubeconfig) = scratch("scope", server.port);
    let kc = kubeconfig.to_str().unwrap();

    // The current context points nowhere: without --context the read fails, naming the cluster.
    let nowhere = weir(&["snapshot", "--kubeconfig", kc], &[]);
    assert!(!nowhere.status.success());
    let err = String::from_utf8_lossy(&nowhere.stderr);
    assert!(err.contains("127.0.0.1:1"), "{err}");

    // $KUBECONFIG is read like kubectl reads it; -n takes one namespace's objects (and every namespace, node
    // and cluster-wide policy, which selectors, addresses and every pod's verdicts need).
    let scoped = weir(
        &[
            "snapshot",
            "--context",
            "scripted",
            "-n",
            "shop",
            "--format",
            "json",
        ],
        &[("KUBECONFIG", &kubeconfig)],
    );
    let scoped: Value = serde_json::from_str(&ok(&scoped)).unwrap();
    let items = scoped["items"].as_array().unwrap();
    assert!(
        items
            .iter()
            .any(|i| i["kind"] == "Namespace" && i["metadata"]["name"] != "shop")
    );
    assert!(items.iter().any(|i| i["kind"] == "Pod"));
    assert!(items.iter().any(|i| i["kind"] == "ClusterNetworkPolicy"));
    for item in items.iter().filter(|i| {
        !["Namespace", "Node", "ClusterNetworkPolicy"].contains(&i["kind"].as_str().unwrap_or(""))
    }) {
        assert_eq!(item["metadata"]["namespace"], "shop", "{item:#}");
    }
    let log = server.api.lock().unwrap().log.clone();
    assert!(
        log.iter()
            .any(|l| l.starts_with("/api/v1/namespaces/shop/pods?")),
        "{log:#?}"
    );
    assert!(
        log.iter().any(|l| l.starts_with("/api/v1/nodes?")),
        "{log:#?}"
    );
    drop(scratch);
}

#[test]
fn a_refused_list_is_a_clear_error_and_leaves_the_old_snapshot() {
    let server = server();
    server.api.lock().unwrap().forbidden = Some("NetworkPolicy");
    let (scratch, kubeconfig) = scratch("forbidden", server.port);
    let out = scratch.0.join("cluster.yaml");
    std::fs::write(&out, "# the previous snapshot\n").unwrap();
    let run = weir(
        &[
            "snapshot",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--context",
            "scripted",
            "-o",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("listing NetworkPolicy objects: forbidden"),
        "{err}"
    );
    assert!(err.contains("cannot list resource"), "{err}");
    assert!(err.contains("get and list on"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "# the previous snapshot\n"
    );
    assert_eq!(
        std::fs::read_dir(&scratch.0).unwrap().count(),
        2,
        "a temporary file was left"
    );
}

#[test]
fn the_binary_is_a_kubectl_plugin() {
    common::process::require_tool("kubectl", "kubernetes-client");
    let server = server();
    let (scratch, kubeconfig) = scratch("plugin", server.port);
    let bin = scratch.0.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_weir"), bin.join("kubectl-weir")).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let kubectl = |args: &[&str]| {
        Command::new("kubectl")
            .args(args)
            .env("PATH", &path)
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .unwrap()
    };
    let help = ok(&kubectl(&["weir", "--help"]));
    assert!(help.contains("Usage: kubectl weir"), "{help}");
    let listed = ok(&kubectl(&["plugin", "list"]));
    assert!(listed.contains("kubectl-weir"), "{listed}");

    // kubectl hands every argument to the plugin; the plugin reads the same kubeconfig, context and namespace.
    let snapshot = ok(&kubectl(&[
        "weir",
        "snapshot",
        "--context",
        "scripted",
        "-n",
        "shop",
    ]));
    assert!(snapshot.contains("kind: List"));
    let demo = root().join("pcaps/demo.pcap");
    let report = ok(&kubectl(&[
        "weir",
        "analyze",
        demo.to_str().unwrap(),
        "--context",
        "scripted",
        "--format",
        "json",
    ]));
    let report: Value = serde_json::from_str(&report).unwrap();
    assert!(
        report["summary"]["flows"].as_u64().unwrap() > 0,
        "{:#}",
        report["summary"]
    );

    // A bare pod name takes -n's namespace in explain.
    let pods: Vec<String> = weir_synth::demo_cluster()["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == "Pod" && i["metadata"]["namespace"] == "shop")
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    let explained = ok(&kubectl(&[
        "weir",
        "explain",
        "--context",
        "scripted",
        "-n",
        "shop",
        "--from",
        &pods[0],
        "--to",
        &pods[1],
        "--port",
        "80",
    ]));
    assert!(
        explained.contains(&format!("shop/{}", pods[0])),
        "{explained}"
    );
}

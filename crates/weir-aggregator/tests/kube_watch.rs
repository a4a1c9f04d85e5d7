//! The kube-rs watchers against a scripted API server that speaks the real list/watch protocol (JSON lists with
//! a resourceVersion, then `?watch=true` streams of JSON events): objects added and changed mid-stream, a
//! dropped watch, a `410 Gone` that forces a re-list, a pod deleted while the watch was down. No cluster needed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::Response;
use futures::StreamExt;
use serde_json::{Value, json};
use weir_kube::{ClusterStatus, watch};
use weir_model::Timestamp;
use weir_policy::PolicySet;

fn pod(name: &str, ip: &str, app: &str, rv: u32) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                     "resourceVersion": rv.to_string(), "labels": {"app": app},
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "x"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

fn policy(rv: u32) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "deny-web", "namespace": "shop", "uid": "uid-np", "resourceVersion": rv.to_string()},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]}
    })
}

fn event(kind: &str, object: Value) -> String {
    format!("{}\n", json!({"type": kind, "object": object}))
}

fn gone() -> String {
    event(
        "ERROR",
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "too old resource version: 12 (40)", "reason": "Expired", "code": 410}),
    )
}

/// What the server answers, per resource path: lists in order (the last one repeats), and watches in order
/// (each a list of lines, then either the end of the stream or a stream that stays open).
#[derive(Default)]
struct Script {
    lists: HashMap<&'static str, Vec<(Vec<Value>, u32)>>,
    watches: HashMap<&'static str, Vec<(Vec<String>, bool)>>,
    calls: HashMap<String, usize>,
    log: Vec<String>,
    /// Resources answered 403 Forbidden, as RBAC without list and watch on them does.
    forbidden: Vec<&'static str>,
}

type Shared = Arc<Mutex<Script>>;

fn resource(path: &str) -> Option<(&'static str, &'static str)> {
    Some(match path {
        "/api/v1/namespaces" => ("namespaces", "NamespaceList"),
        "/api/v1/nodes" => ("nodes", "NodeList"),
        "/api/v1/pods" => ("pods", "PodList"),
        "/api/v1/services" => ("services", "ServiceList"),
        "/apis/discovery.k8s.io/v1/endpointslices" => ("endpointslices", "EndpointSliceList"),
        "/apis/apps/v1/replicasets" => ("replicasets", "ReplicaSetList"),
        "/apis/batch/v1/jobs" => ("jobs", "JobList"),
        "/apis/networking.k8s.io/v1/networkpolicies" => ("networkpolicies", "NetworkPolicyList"),
        // The network-policy-api's v1alpha2 CRD is installed here; its v1alpha1 ones are not (404).
        "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies" => {
            ("clusternetworkpolicies", "ClusterNetworkPolicyList")
        }
        _ => return None,
    })
}

async fn api(State(script): State<Shared>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let Some((name, list_kind)) = resource(&path) else {
        // What an API server answers for a resource it does not serve (a CRD not installed).
        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "the server could not find the requested resource", "reason": "NotFound",
            "details": {}, "code": 404});
        script.lock().unwrap().log.push(format!("404 {path}"));
        return Response::builder()
            .status(404)
            .header("content-type", "application/json")
            .body(Body::from(status.to_string()))
            .unwrap();
    };
    let watching = query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1");
    let mut s = script.lock().unwrap();
    let key = format!("{name}:{}", if watching { "watch" } else { "list" });
    let n = {
        let c = s.calls.entry(key.clone()).or_default();
        *c += 1;
        *c - 1
    };
    s.log.push(format!("{key} #{n} ?{query}"));
    if s.forbidden.contains(&name) {
        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("{name} is forbidden: User \"system:serviceaccount:weir:weir-aggregator\" cannot list resource \"{name}\""),
            "reason": "Forbidden", "code": 403});
        return Response::builder()
            .status(403)
            .header("content-type", "application/json")
            .body(Body::from(status.to_string()))
            .unwrap();
    }
    if !watching {
        let lists = s.lists.get(name).cloned().unwrap_or_default();
        let (items, rv) = lists
            .get(n.min(lists.len().saturating_sub(1)))
            .cloned()
            .unwrap_or((Vec::new(), 1));
        let body = json!({"apiVersion": "v1", "kind": list_kind,
                          "metadata": {"resourceVersion": rv.to_string()}, "items": items});
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
    }
    let watches = s.watches.get(name).cloned().unwrap_or_default();
    let (lines, stays_open) = watches.get(n).cloned().unwrap_or((Vec::new(), true));
    drop(s);
    // Events trickle out a little apart, as a real API server's would.
    let events = futures::stream::iter(lines).then(|line| async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        Ok::<Bytes, Infallible>(Bytes::from(line))
    });
    let body = if stays_open {
        Body::from_stream(events.chain(futures::stream::pending()))
    } else {
        Body::from_stream(events)
    };
    Response::builder()
        .header("content-type", "application/json")
        .body(body)
        .unwrap()
}

fn latest(sets: &Mutex<Vec<Arc<PolicySet>>>) -> Option<Arc<PolicySet>> {
    sets.lock().unwrap().last().cloned()
}

type Sets = Arc<Mutex<Vec<Arc<PolicySet>>>>;

/// Serves the script and watches it: the status and every policy set published.
async fn watching(script: &Shared) -> (Arc<Mutex<ClusterStatus>>, Sets) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().fallback(api).with_state(Arc::clone(script));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let status = Arc::new(Mutex::new(ClusterStatus::default()));
    let sets: Sets = Arc::default();
    let publish = {
        let sets = Arc::clone(&sets);
        move |set: Arc<PolicySet>| sets.lock().unwrap().push(set)
    };
    tokio::spawn(watch(
        client,
        Duration::from_millis(50),
        Arc::clone(&status),
        publish,
    ));
    (status, sets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_object_is_left_out_and_a_forbidden_optional_kind_does_not_hold_the_rest_back() {
    let mut script = Script::default();
    script
        .lists
        .insert("pods", vec![(vec![pod("a", "10.0.0.5", "web", 10)], 10)]);
    let mut broken = policy(7);
    broken["metadata"]["name"] = json!("broken");
    broken["spec"]["ingress"] = json!([{"from": [{"ipBlock": {"cidr": "10.0.0.0/99"}}]}]);
    script
        .lists
        .insert("networkpolicies", vec![(vec![policy(6), broken], 7)]);
    script.forbidden = vec!["replicasets"];
    let script: Shared = Arc::new(Mutex::new(script));
    let (status, sets) = watching(&script).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while latest(&sets).is_none() {
        assert!(
            Instant::now() < deadline,
            "no cluster state was built; status: {:?}",
            status.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let set = latest(&sets).unwrap();
    // Built from the rest: the pod and the good policy.
    assert!(set.cluster().find_pod("shop", "a").is_some());
    assert_eq!(set.cluster().policies().len(), 1);
    let status = status.lock().unwrap().clone();
    assert_eq!(status.rejected_objects.get("NetworkPolicy"), Some(&1));
    assert!(
        status
            .last_rejected
            .as_deref()
            .is_some_and(|m| m.contains("shop/broken")),
        "{status:?}"
    );
    assert!(status.forbidden.contains("ReplicaSet"), "{status:?}");
    assert!(status.forbidden_required().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_required_kind_keeps_the_state_unbuilt_and_is_named() {
    let script = Script {
        forbidden: vec!["pods"],
        ..Script::default()
    };
    let script: Shared = Arc::new(Mutex::new(script));
    let (status, sets) = watching(&script).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !status.lock().unwrap().forbidden.contains("Pod") {
        assert!(Instant::now() < deadline, "the 403 was never noticed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Everything else is listed; without pods no verdict can be trusted, so none is published.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(latest(&sets).is_none());
    assert_eq!(status.lock().unwrap().forbidden_required(), ["Pod"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_follow_changes_dropped_watches_and_gone_relists() {
    let mut script = Script::default();
    script.lists.insert(
        "pods",
        vec![
            (vec![pod("a", "10.0.0.5", "web", 10)], 10),
            // After 410 Gone: b was deleted meanwhile, c was created, a kept its new label.
            (
                vec![
                    pod("a", "10.0.0.5", "web-v2", 41),
                    pod("c", "10.0.0.7", "db", 42),
                ],
                42,
            ),
        ],
    );
    script.watches.insert(
        "pods",
        vec![
            // Mid-stream: b added, a relabelled, then the connection drops.
            (
                vec![
                    event("ADDED", pod("b", "10.0.0.6", "cache", 11)),
                    event("MODIFIED", pod("a", "10.0.0.5", "web-v2", 12)),
                ],
                false,
            ),
            // Resuming from 12 is too old: 410 Gone.
            (vec![gone()], false),
        ],
    );
    script
        .lists
        .insert("networkpolicies", vec![(Vec::new(), 5)]);
    script.watches.insert(
        "networkpolicies",
        vec![(vec![event("ADDED", policy(6))], true)],
    );
    let script: Shared = Arc::new(Mutex::new(script));
    let (status, sets) = watching(&script).await;

    // Wait for the end state: a relabelled, b gone (kept as deleted), c present, the policy in force.
    let deadline = Instant::now() + Duration::from_secs(20);
    let done = |set: &PolicySet| {
        let c = set.cluster();
        let a = c.find_pod("shop", "a").map(|id| c.pod(id));
        let b = c.find_pod("shop", "b").map(|id| c.pod(id));
        a.is_some_and(|p| p.labels.get("app").map(String::as_str) == Some("web-v2"))
            && b.is_some_and(|p| p.is_terminated())
            && c.find_pod("shop", "c").is_some()
            && c.policies().len() == 1
    };
    loop {
        if latest(&sets).is_some_and(|s| done(&s)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the watch never caught up; calls: {:#?}",
            script.lock().unwrap().log
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let set = latest(&sets).unwrap();
    let c = set.cluster();

    // The deleted pod still owns its address for flows from before it went away, and not after.
    let b = c.find_pod("shop", "b").unwrap();
    let ip: std::net::IpAddr = "10.0.0.6".parse().unwrap();
    let finished = c.pod(b).finished.unwrap();
    assert!(
        c.owner_at(ip, Timestamp(finished.0 - 1_000_000_000))
            .is_some()
    );
    assert!(
        c.owner_at(ip, Timestamp(finished.0 + 1_000_000_000))
            .is_none()
    );
    // The mid-stream relabelling reached the policy engine: the policy selects a only while labelled web.
    let a = c.find_pod("shop", "a").unwrap();
    assert_eq!(
        set.isolating(a).0.len(),
        0,
        "a is web-v2 now: deny-web no longer selects it"
    );

    let log = script.lock().unwrap().log.clone();
    let count = |prefix: &str| log.iter().filter(|l| l.starts_with(prefix)).count();
    // Pods: listed, watched, re-watched after the drop from where it left off, 410, listed again.
    assert!(count("pods:list") >= 2, "{log:#?}");
    assert!(count("pods:watch") >= 3, "{log:#?}");
    assert!(
        log.iter()
            .any(|l| l.starts_with("pods:watch #1") && l.contains("resourceVersion=12")),
        "the dropped watch did not resume from the last version: {log:#?}"
    );
    let status = status.lock().unwrap().clone();
    assert!(status.synced);
    assert_eq!(status.objects["Pod"], 2);
    assert_eq!(status.deleted_pods, 1);
    assert!(
        status.watch_errors.get("Pod").copied().unwrap_or(0) >= 1,
        "{status:?}"
    );
    // Changes that came together were built together, not once per event.
    assert!(
        status.generation >= 2 && status.generation < 10,
        "{status:?}"
    );
}

fn admin_policy(action: &str, rv: u32) -> Value {
    json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
        "metadata": {"name": "sec-ops", "uid": "uid-cnp", "resourceVersion": rv.to_string()},
        "spec": {"tier": "Admin", "priority": 10, "subject": {"namespaces": {}},
                 "ingress": [{"name": "web", "action": action,
                              "from": [{"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "client"}}}}]}]}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_network_policies_are_watched_and_missing_crds_are_no_error() {
    let mut script = Script::default();
    script.lists.insert(
        "pods",
        vec![(
            vec![
                pod("web", "10.0.0.5", "web", 10),
                pod("client", "10.0.0.6", "client", 11),
            ],
            11,
        )],
    );
    script.lists.insert(
        "clusternetworkpolicies",
        vec![(vec![admin_policy("Deny", 20)], 20)],
    );
    // The Admin Deny becomes a Pass mid-watch.
    script.watches.insert(
        "clusternetworkpolicies",
        vec![(vec![event("MODIFIED", admin_policy("Pass", 21))], true)],
    );
    let script: Shared = Arc::new(Mutex::new(script));
    let (status, sets) = watching(&script).await;
    let judge = |set: &PolicySet| {
        set.judge(
            &mut weir_policy::VerdictCache::new(),
            "10.0.0.6".parse().unwrap(),
            "10.0.0.5".parse().unwrap(),
            Some(80),
            weir_model::Protocol::TCP,
        )
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut denied_first = false;
    loop {
        if let Some(set) = latest(&sets) {
            let v = judge(&set);
            if !v.allowed() {
                denied_first = true;
                assert_eq!(set.tier_policies().len(), 1);
            } else if denied_first {
                // The Pass reaches NetworkPolicy (none isolates web): allowed, and the chain says so.
                assert!(v.ingress_pass.is_some(), "{v:?}");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the cluster-wide policy was not followed; status: {:?}",
            status.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = status.lock().unwrap().clone();
    // The kinds whose CRDs are not installed: said, not errors, and they held nothing back.
    assert_eq!(
        status
            .not_served
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ["AdminNetworkPolicy", "BaselineAdminNetworkPolicy"]
    );
    assert!(status.watch_errors.is_empty(), "{status:?}");
    assert_eq!(status.objects.get("ClusterNetworkPolicy"), Some(&1));
}

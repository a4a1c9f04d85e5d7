//! Agents prove which node they are: the aggregator, following a scripted API server (real list/watch JSON, and
//! `POST /apis/authentication.k8s.io/v1/tokenreviews` answered as a real API server answers it), takes a batch
//! only with a ServiceAccount token of the agents' account issued on the node the batch names. A holder of one
//! node's token cannot send as another node; the answer comes before any of the body is read, and each token
//! is reviewed once, not once per batch.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::Response;
use serde_json::{Value, json};
use weir_aggregator::{AgentAuthConfig, AggregatorConfig, ClusterConfig, EngineConfig};

const AGENTS: &str = "system:serviceaccount:weir-agent:weir-agent";

fn node(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": "1"},
           "spec": {"podCIDR": "10.244.0.0/24"},
           "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
}

fn agent_pod(name: &str, node: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "weir-agent", "uid": format!("uid-{name}"),
                        "resourceVersion": "1", "labels": {"app.kubernetes.io/name": "weir-agent"}},
           "spec": {"nodeName": node, "hostNetwork": true, "containers": [{"name": "agent", "image": "weir"}]},
           "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

/// What each token is, as the API server would say: (username, node-name extra, pod-name extra).
fn tokens() -> HashMap<&'static str, (&'static str, Option<&'static str>, &'static str)> {
    HashMap::from([
        // Kubernetes 1.30+: the token names its node.
        ("token-of-node-1", (AGENTS, Some("node-1"), "weir-agent-a")),
        // An older API server: only the pod, which runs on node-2.
        ("token-without-node", (AGENTS, None, "weir-agent-b")),
        // A valid token of another account.
        (
            "token-of-a-shop-pod",
            ("system:serviceaccount:shop:api", Some("node-1"), "api-1"),
        ),
        // Bound to a pod the aggregator does not know.
        ("token-of-an-unknown-pod", (AGENTS, None, "weir-agent-gone")),
    ])
}

#[derive(Default)]
struct Api {
    reviews: Vec<(String, Vec<String>)>,
}

async fn api(State(api): State<Arc<Mutex<Api>>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let watching = req.uri().query().unwrap_or("").contains("watch=");
    let json_response = |status: u16, body: Value| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    if path == "/apis/authentication.k8s.io/v1/tokenreviews" {
        let body = axum::body::to_bytes(req.into_body(), 1 << 20)
            .await
            .unwrap();
        let review: Value = serde_json::from_slice(&body).unwrap();
        let token = review["spec"]["token"].as_str().unwrap_or("").to_owned();
        let audiences: Vec<String> = review["spec"]["audiences"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        api.lock()
            .unwrap()
            .reviews
            .push((token.clone(), audiences.clone()));
        let status = match tokens().get(token.as_str()) {
            Some((user, node, pod)) if audiences == ["weir"] => {
                let mut extra = json!({"authentication.kubernetes.io/pod-name": [pod],
                                       "authentication.kubernetes.io/pod-uid": [format!("uid-{pod}")]});
                if let Some(node) = node {
                    extra["authentication.kubernetes.io/node-name"] = json!([node]);
                }
                json!({"authenticated": true, "audiences": ["weir"],
                       "user": {"username": user, "uid": "u", "groups": ["system:serviceaccounts"],
                                "extra": extra}})
            }
            _ => json!({"authenticated": false, "error": "invalid bearer token"}),
        };
        return json_response(
            201,
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                   "metadata": {"creationTimestamp": null}, "spec": review["spec"], "status": status}),
        );
    }
    let (kind, items) = match path.as_str() {
        "/api/v1/nodes" => (
            "NodeList",
            vec![
                node("node-1", "192.168.50.1"),
                node("node-2", "192.168.50.2"),
            ],
        ),
        "/api/v1/pods" => (
            "PodList",
            vec![
                agent_pod("weir-agent-a", "node-1", "192.168.50.1"),
                agent_pod("weir-agent-b", "node-2", "192.168.50.2"),
            ],
        ),
        "/api/v1/namespaces"
        | "/api/v1/services"
        | "/apis/discovery.k8s.io/v1/endpointslices"
        | "/apis/apps/v1/replicasets"
        | "/apis/batch/v1/jobs"
        | "/apis/networking.k8s.io/v1/networkpolicies" => ("List", Vec::new()),
        // A resource the server does not serve (the network-policy-api's CRDs are not installed here).
        _ => {
            return json_response(
                404,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": "the server could not find the requested resource",
                       "reason": "NotFound", "details": {}, "code": 404}),
            );
        }
    };
    if watching {
        // A watch that stays open with nothing to say.
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(futures::stream::pending::<
                Result<Bytes, std::convert::Infallible>,
            >()))
            .unwrap();
    }
    json_response(
        200,
        json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items}),
    )
}

struct Aggregator {
    url: String,
    api: Arc<Mutex<Api>>,
    stop: Arc<AtomicBool>,
    _dir: tempdir::Dir,
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn start() -> Aggregator {
    let api_state = Arc::new(Mutex::new(Api::default()));
    let app = Router::new()
        .fallback(api)
        .with_state(Arc::clone(&api_state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = kube::Client::try_from(kube::Config::new(
        format!("http://{api_addr}").parse().unwrap(),
    ))
    .unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("weir-identity-{}-{port}", std::process::id()));
    let config = AggregatorConfig {
        cluster: ClusterConfig::Client(client),
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        ingest_listen: None,
        data: dir.clone(),
        engine: EngineConfig::default(),
        agent_auth: AgentAuthConfig::Kubernetes {
            audience: "weir".into(),
            namespace: "weir-agent".into(),
            name: "weir-agent".into(),
        },
        read_token: None,
        ingest_concurrency: 4,
        tls: None,
        webhook: None,
        alerts_stdout: false,
        checkpoint: Duration::from_millis(200),
        max_body: 4 << 20,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let running = Arc::clone(&stop);
    tokio::spawn(async move { weir_aggregator::serve(config, running).await });
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if let Ok(r) = http.get(format!("{url}/readyz")).send().await
            && r.status().is_success()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Aggregator {
        url,
        api: api_state,
        stop,
        _dir: tempdir::Dir(dir),
    }
}

impl Drop for Aggregator {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A heartbeat from `node` with `token`: the status and the answer's text.
async fn send(url: &str, token: Option<&str>, node: &str, seq: Option<u64>) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .post(format!("{url}/api/v1/ingest"))
        .header("x-weir-node", node)
        .header("x-weir-epoch", "e1");
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if let Some(seq) = seq {
        req = req.header("x-weir-seq", seq.to_string()).body("");
    }
    let response = req.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_sends_only_as_the_node_its_token_was_issued_on() {
    let agg = start().await;
    let url = agg.url.as_str();

    // The token's own node: taken, five times, reviewed once.
    for seq in 1..=5 {
        let (status, text) = send(url, Some("token-of-node-1"), "node-1", Some(seq)).await;
        assert_eq!(status, 200, "{text}");
    }
    // Another node's name with it: refused, naming both.
    let (status, text) = send(url, Some("token-of-node-1"), "node-2", Some(1)).await;
    assert_eq!(status, 403, "{text}");
    assert!(
        text.contains("\\\"node-1\\\"") && text.contains("\\\"node-2\\\""),
        "{text}"
    );

    // An API server that does not say the node: the pod's node from the cluster state.
    let (status, text) = send(url, Some("token-without-node"), "node-2", None).await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = send(url, Some("token-without-node"), "node-1", None).await;
    assert_eq!(status, 403, "{text}");
    let (status, text) = send(url, Some("token-of-an-unknown-pod"), "node-1", None).await;
    assert_eq!(status, 403, "{text}");
    assert!(
        text.contains("not bound to a pod on a known node"),
        "{text}"
    );

    // Another account's valid token, a forged token, none at all.
    let (status, text) = send(url, Some("token-of-a-shop-pod"), "node-1", None).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("system:serviceaccount:shop:api"), "{text}");
    let (status, _) = send(url, Some("forged"), "node-1", None).await;
    assert_eq!(status, 401);
    let (status, _) = send(url, None, "node-1", None).await;
    assert_eq!(status, 401);

    // Each token was reviewed once, for the weir audience.
    let reviews = agg.api.lock().unwrap().reviews.clone();
    let mut per_token: HashMap<String, usize> = HashMap::new();
    for (token, audiences) in &reviews {
        assert_eq!(audiences, &["weir".to_owned()]);
        *per_token.entry(token.clone()).or_default() += 1;
    }
    assert_eq!(per_token.get("token-of-node-1"), Some(&1), "{reviews:?}");
    assert_eq!(per_token.get("token-without-node"), Some(&1), "{reviews:?}");
    assert!(
        !per_token.contains_key(""),
        "an empty token was sent for review"
    );

    // The refusals are counted by reason.
    let metrics = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("weir_ingest_rejected_requests_total{reason=\"forbidden\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("weir_ingest_rejected_requests_total{reason=\"unauthorized\"} 2"),
        "{metrics}"
    );
    // Epochs are not published: a token holder learns no other run's identifiers from the status.
    let status: Value = reqwest::get(format!("{url}/api/v1/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["agents"][0]["node"], "node-1", "{status:#}");
    assert!(
        !status.to_string().contains("\"e1\""),
        "the status publishes the agent's epoch: {status:#}"
    );
}

//! The web UI: the page at `/`, its script and stylesheet (from `weir-map`, built into the binary), and the
//! live service map.
//!
//! The map is the engine's edges. Its nodes and counts (connections, bytes, first and last seen, reporting
//! nodes, new against the baseline, the verdict colour) are the engine's own; the explanations, the pods and
//! labels of each workload, the policies selecting it and its suggested least-privilege policy come from judging
//! one sample flow per edge again against the policies in force, as `GET /api/v1/suggest` does. A workload can
//! be shown pod by pod (from the flows the aggregator still keeps), and namespaces can be folded.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use weir_analysis::{Analyzer, Report, port_summary};
use weir_cluster::PodId;
use weir_map::{
    CONTENT_SECURITY_POLICY, EdgeVerdict, Map, MapEdge, MapNode, NodeKind, collapse, describe_pods,
    layout, render_svg,
};
use weir_model::{Alert, Cidr, EndpointKind, FlowVerdict, Protocol, Timestamp};
use weir_policy::PolicySet;

use crate::api::{parse_time, samples, samples_caveat};
use crate::engine::StoredFlow;
use crate::http::{ApiError, internal};
use crate::state::Shared;
use crate::telemetry::LockSite;
use weir_analysis::EdgeStats;
use weir_model::EndpointKey;

/// The cookie the page's sign-in sets, so the browser's own requests (the map, the alert stream) carry the
/// read token without the script ever holding it.
pub use crate::http::SESSION_COOKIE;

/// Namespaces are folded on `collapse=auto` when the map has more workloads than this.
pub const AUTO_FOLD: usize = 60;

/// The UI's routes.
pub fn pages(router: Router<Arc<Shared>>) -> Router<Arc<Shared>> {
    router
        .route("/", get(page))
        .route("/ui/app.js", get(script))
        .route("/ui/app.css", get(style))
        .route("/ui/session", post(session))
}

/// The map's data, for readers only (the server puts its read authentication in front of these).
pub fn reads(router: Router<Arc<Shared>>) -> Router<Arc<Shared>> {
    router
        .route("/ui/map.json", get(map_json))
        .route("/ui/map.svg", get(map_svg))
        .route("/ui/workload", get(workload))
}

fn hardened(mut response: Response, content_type: &'static str) -> Response {
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// What the page and the map are called: live, and where the cluster state comes from.
fn title(s: &Shared) -> String {
    let source = s
        .cluster
        .lock()
        .map(|c| c.source.clone())
        .unwrap_or_default();
    match source.as_str() {
        "" => "live".to_owned(),
        "kubernetes" => "live cluster".to_owned(),
        other => format!("live, cluster from a {other}"),
    }
}

async fn page(State(s): State<Arc<Shared>>) -> Response {
    let mut response = hardened(
        weir_map::live_page(&title(&s)).into_response(),
        "text/html; charset=utf-8",
    );
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

async fn script() -> Response {
    hardened(
        weir_map::APP_JS.into_response(),
        "text/javascript; charset=utf-8",
    )
}

async fn style() -> Response {
    hardened(weir_map::APP_CSS.into_response(), "text/css; charset=utf-8")
}

/// `POST /ui/session` with the read token as the body: sets the session cookie (HttpOnly, SameSite=Strict,
/// Secure behind TLS). A wrong token gets 401 and no cookie.
async fn session(State(s): State<Arc<Shared>>, body: Bytes) -> Result<Response, ApiError> {
    let Some(token) = &s.read_token else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let given = std::str::from_utf8(&body).unwrap_or("").trim();
    if !token.matches(given.as_bytes()) {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "that is not the read token".into(),
        ));
    }
    let token = token.expose();
    let cookie = format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{}",
        if s.secure_cookie { "; Secure" } else { "" }
    );
    let fits = token
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b',' | b'"' | b'\\'));
    let value = HeaderValue::from_str(&cookie).ok().filter(|_| fits).ok_or_else(|| {
        ApiError(
            StatusCode::BAD_REQUEST,
            "the read token holds characters a cookie cannot carry; send it as a bearer token instead".into(),
        )
    })?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(header::SET_COOKIE, value);
    Ok(response)
}

/// What the map shows.
#[derive(Debug, Default, Deserialize)]
pub struct MapQuery {
    /// Only edges seen in this last while (`5m`, `1h`, `24h`) or since a time (RFC 3339).
    pub window: Option<String>,
    /// `all` folds every namespace, `auto` when there are more than [`AUTO_FOLD`] workloads, `none` (default).
    pub collapse: Option<String>,
    /// Namespaces left open while the others are folded, comma-separated.
    pub open: Option<String>,
    /// Workloads shown pod by pod: node ids (`pod:NS/Kind/name`), comma-separated.
    pub expand: Option<String>,
}

fn list(text: &Option<String>) -> BTreeSet<String> {
    text.iter()
        .flat_map(|t| t.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The live map with its drawing, as `/ui/map.json` answers.
#[derive(Debug, Serialize)]
pub struct LiveMap {
    /// The map.
    #[serde(flatten)]
    pub map: Map,
    /// The map drawn.
    pub svg: String,
    /// Whether namespaces are folded.
    pub folded: bool,
    /// Workloads shown pod by pod.
    pub expanded: Vec<String>,
}

/// What the map is built from, copied out of the engine under its lock.
struct Snapshot {
    set: Arc<PolicySet>,
    ranges: Vec<Cidr>,
    edges: Vec<EdgeStats>,
    alerts: Vec<Alert>,
    flows: Vec<StoredFlow>,
    kept: usize,
    title: String,
    /// Workloads to show pod by pod (`expand`).
    expand: BTreeSet<String>,
}

fn endpoint_id(e: &EndpointKey) -> String {
    format!("{}:{}", e.kind, e.label())
}

fn alert_end_id(kind: EndpointKind, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{kind}:{ns}/{name}"),
        None => format!("{kind}:{name}"),
    }
}

fn endpoint_node(e: &EndpointKey) -> MapNode {
    let ns = e.namespace.as_deref().unwrap_or_default().to_owned();
    let (kind, group, name) = match e.kind {
        EndpointKind::Pod => (NodeKind::Workload, ns, e.name.to_string()),
        EndpointKind::Service => (NodeKind::Service, ns, format!("svc {}", e.label())),
        EndpointKind::Node => (NodeKind::Node, "nodes".to_owned(), e.name.to_string()),
        EndpointKind::External => (
            NodeKind::External,
            "outside the cluster".to_owned(),
            e.name.to_string(),
        ),
        EndpointKind::Unknown => (
            NodeKind::Unknown,
            "unknown addresses".to_owned(),
            e.name.to_string(),
        ),
    };
    MapNode::new(endpoint_id(e), kind, group, name)
}

/// The map's verdict for the engine's flow verdict; `not_isolated` tells an allowed one only because an end is
/// open.
fn map_verdict(verdict: FlowVerdict, not_isolated: bool) -> EdgeVerdict {
    match verdict {
        FlowVerdict::Denied => EdgeVerdict::Denied,
        FlowVerdict::Allowed if not_isolated => EdgeVerdict::NotIsolated,
        FlowVerdict::Allowed => EdgeVerdict::Allowed,
        FlowVerdict::Mixed => EdgeVerdict::Mixed,
        FlowVerdict::Unknown => EdgeVerdict::Unknown,
    }
}

fn edge_verdict(e: &EdgeStats) -> EdgeVerdict {
    map_verdict(e.verdict, e.not_isolated)
}

fn alert_line(a: &Alert) -> String {
    format!(
        "{} ({}): {} · {} flow{} · last {}",
        a.kind,
        format!("{:?}", a.severity).to_lowercase(),
        a.summary,
        a.count,
        if a.count == 1 { "" } else { "s" },
        a.last_seen
    )
}

fn push_unique(list: &mut Vec<String>, item: &str) {
    if !list.iter().any(|x| x == item) {
        list.push(item.to_owned());
    }
}

/// Builds the live map (blocking: it judges one flow per edge again).
fn build(snap: &Snapshot, q: &MapQuery) -> LiveMap {
    let set = &*snap.set;
    let records = snap.edges.iter().map(|e| e.sample.clone()).collect();
    let analysis = Analyzer::new(set, &snap.ranges).analyze_sorted(records);
    let report = Report::new(set, &analysis);
    let judged = weir_map::graph(set, &analysis, &report, "");
    let judged_edges: HashMap<(&str, &str), &MapEdge> = judged
        .edges
        .iter()
        .map(|e| ((e.from.as_str(), e.to.as_str()), e))
        .collect();

    // Nodes: the engine's endpoints, with what judging again knows of each.
    let mut nodes: BTreeMap<String, MapNode> = BTreeMap::new();
    for e in &snap.edges {
        for end in [&e.key.src, &e.key.dst] {
            let id = endpoint_id(end);
            if nodes.contains_key(&id) {
                continue;
            }
            nodes.insert(id, endpoint_node(end));
        }
    }
    // Every current pod of each workload, not only those in the sample flows.
    let cluster = set.cluster();
    let current: Vec<PodId> = (0..cluster.pods().len())
        .filter(|&i| cluster.pods()[i].finished.is_none())
        .filter_map(|i| u32::try_from(i).ok().map(PodId))
        .collect();
    describe_pods(set, nodes.values_mut(), current);

    // Edges: the engine's edges of each pair of ends, drawn as one.
    let mut grouped: BTreeMap<(String, String), Vec<&EdgeStats>> = BTreeMap::new();
    for e in &snap.edges {
        grouped
            .entry((endpoint_id(&e.key.src), endpoint_id(&e.key.dst)))
            .or_default()
            .push(e);
    }
    let mut alerts: HashMap<(String, Option<String>), Vec<&Alert>> = HashMap::new();
    for a in &snap.alerts {
        let from = alert_end_id(a.source.kind, a.source.namespace.as_deref(), &a.source.name);
        let to = a
            .destination
            .as_ref()
            .map(|d| alert_end_id(d.kind, d.namespace.as_deref(), &d.name));
        alerts.entry((from, to)).or_default().push(a);
    }
    let mut edges = Vec::with_capacity(grouped.len());
    for ((from, to), parts) in grouped {
        let mut edge = MapEdge::new(
            format!("{from}>{to}"),
            from.clone(),
            to.clone(),
            edge_verdict(parts[0]),
        );
        let mut ports: Vec<(Protocol, Option<u16>)> = Vec::new();
        let (mut first, mut last) = (Timestamp(i64::MAX), Timestamp(i64::MIN));
        let (mut dropped, mut gaps) = (0, 0);
        for e in &parts {
            edge.verdict = edge.verdict.worst(edge_verdict(e));
            edge.new |= !e.baseline;
            edge.flows += e.flows;
            edge.bytes = edge.bytes.saturating_add(e.bytes);
            ports.push((e.key.proto, e.key.port));
            first = first.min(e.first_seen);
            last = last.max(e.last_seen);
            for n in &e.nodes {
                push_unique(&mut edge.nodes, n);
            }
            for s in &e.services {
                push_unique(&mut edge.services, s);
            }
            for p in &e.policies {
                push_unique(&mut edge.policies, p);
            }
            edge.add_decisions([&*e.decided], false);
            dropped += e.dropped_in_transit;
            gaps += e.enforcement_gaps;
        }
        ports.sort();
        ports.dedup();
        edge.ports = port_summary(&ports);
        edge.first = Some(first.to_string());
        edge.last = Some(last.to_string());
        edge.nodes.sort();
        edge.policies.sort();
        if let Some(j) = judged_edges.get(&(from.as_str(), to.as_str())) {
            edge.explanation = j.explanation.clone();
            if j.verdict != edge.verdict {
                edge.explanation.push(format!(
                    "Judged again against the policies in force now: {}.",
                    j.verdict.label()
                ));
            }
        }
        if gaps > 0 {
            edge.explanation.push(format!(
                "{gaps} denied connection{} reached the destination: the CNI did not enforce the policy.",
                if gaps == 1 { "" } else { "s" }
            ));
        }
        if dropped > 0 {
            edge.explanation.push(format!(
                "{dropped} connection{} left the source and never arrived at the destination.",
                if dropped == 1 { "" } else { "s" }
            ));
        }
        let mut raised: Vec<&Alert> = Vec::new();
        raised.extend(
            alerts
                .get(&(from.clone(), Some(to.clone())))
                .into_iter()
                .flatten(),
        );
        raised.extend(alerts.get(&(from.clone(), None)).into_iter().flatten());
        raised.sort_by_key(|a| std::cmp::Reverse(a.updated_at));
        edge.alerts = raised.into_iter().map(alert_line).collect();
        edges.push(edge);
    }

    let mut map = Map {
        title: String::new(),
        nodes: nodes.into_values().collect(),
        edges,
    };
    let expanded = expand_pods(&mut map, snap, &snap.expand);
    let workloads = map
        .nodes
        .iter()
        .filter(|n| matches!(n.kind, NodeKind::Workload | NodeKind::Service))
        .count();
    let folded = match q.collapse.as_deref() {
        Some("all") => true,
        Some("auto") => workloads > AUTO_FOLD,
        _ => false,
    };
    if folded {
        map = collapse(&map, &list(&q.open));
    }
    map.title = snap.title.clone();
    let svg = render_svg(&map, &layout(&map));
    LiveMap {
        map,
        svg,
        folded,
        expanded,
    }
}

/// Connections, bytes and the rest of one pod-level edge, from the flows kept.
#[derive(Default)]
struct PodEdge {
    parents: BTreeSet<(String, String)>,
    verdict: Option<EdgeVerdict>,
    ports: BTreeSet<(Protocol, Option<u16>)>,
    connections: HashMap<String, u64>,
    first: Option<Timestamp>,
    last: Option<Timestamp>,
    nodes: BTreeSet<String>,
    services: BTreeSet<String>,
    policies: BTreeSet<String>,
}

/// Shows the given workloads pod by pod. Their edges are split by pod from the flows the aggregator still
/// keeps; an edge none of whose flows is kept any more stays on the workload. Returns the workloads shown so.
fn expand_pods(map: &mut Map, snap: &Snapshot, expand: &BTreeSet<String>) -> Vec<String> {
    let workloads: BTreeMap<String, MapNode> = map
        .nodes
        .iter()
        .filter(|n| n.kind == NodeKind::Workload && expand.contains(&n.id))
        .map(|n| (n.id.clone(), n.clone()))
        .collect();
    if workloads.is_empty() {
        return Vec::new();
    }
    let parent_verdicts: HashMap<(String, String), EdgeVerdict> = map
        .edges
        .iter()
        .map(|e| ((e.from.clone(), e.to.clone()), e.verdict))
        .collect();
    let pod_id = |pod: &str| format!("instance:{pod}");
    let mut pods: BTreeSet<String> = BTreeSet::new();
    let mut split: BTreeMap<(String, String), PodEdge> = BTreeMap::new();
    for f in &snap.flows {
        let v = &f.view;
        let (src, dst) = (endpoint_id(&v.source), endpoint_id(&v.destination));
        let end = |id: &String, pod: &Option<Arc<str>>, pods: &mut BTreeSet<String>| match pod {
            Some(p) if workloads.contains_key(id) => {
                pods.insert(p.to_string());
                pod_id(p)
            }
            _ => id.clone(),
        };
        let from = end(&src, &v.src_pod, &mut pods);
        let to = end(&dst, &v.dst_pod, &mut pods);
        if from == src && to == dst {
            continue;
        }
        let parent = parent_verdicts
            .get(&(src.clone(), dst.clone()))
            .copied()
            .unwrap_or(EdgeVerdict::Unknown);
        let e = split.entry((from, to)).or_default();
        e.parents.insert((src, dst));
        let verdict = map_verdict(v.verdict, parent == EdgeVerdict::NotIsolated);
        e.verdict = Some(e.verdict.map_or(verdict, |w| w.worst(verdict)));
        let r = &f.record;
        e.ports.insert((r.proto, v.port));
        // A connection seen from both ends is one connection: counted by its Community ID, with the larger
        // of the two byte counts.
        let bytes = r.total_bytes();
        let seen = e.connections.entry(r.community_id.clone()).or_default();
        *seen = (*seen).max(bytes);
        e.first = Some(e.first.map_or(r.start, |t| t.min(r.start)));
        e.last = Some(e.last.map_or(r.end, |t| t.max(r.end)));
        if let Some(at) = &r.observed_at {
            e.nodes.insert(at.node.clone());
        }
        if let Some(s) = &v.service {
            e.services.insert(s.to_string());
        }
        e.policies.extend(v.policies.iter().cloned());
    }

    let covered: BTreeSet<(String, String)> = split
        .values()
        .flat_map(|e| e.parents.iter().cloned())
        .collect();
    let parents: HashMap<(String, String), MapEdge> = map
        .edges
        .iter()
        .filter(|e| covered.contains(&(e.from.clone(), e.to.clone())))
        .map(|e| ((e.from.clone(), e.to.clone()), e.clone()))
        .collect();
    map.edges
        .retain(|e| !covered.contains(&(e.from.clone(), e.to.clone())));
    for ((from, to), e) in split {
        let mut edge = MapEdge::new(
            format!("{from}>{to}"),
            from,
            to,
            e.verdict.unwrap_or(EdgeVerdict::Unknown),
        );
        let ports: Vec<_> = e.ports.into_iter().collect();
        edge.ports = port_summary(&ports);
        edge.flows = e.connections.len() as u64;
        edge.bytes = e.connections.values().sum();
        edge.first = e.first.map(|t| t.to_string());
        edge.last = e.last.map(|t| t.to_string());
        edge.nodes = e.nodes.into_iter().collect();
        edge.services = e.services.into_iter().collect();
        edge.policies = e.policies.into_iter().collect();
        for key in &e.parents {
            if let Some(parent) = parents.get(key) {
                edge.new |= parent.new;
                edge.add_chains_of(parent);
                for line in &parent.explanation {
                    push_unique(&mut edge.explanation, line);
                }
                for line in &parent.alerts {
                    push_unique(&mut edge.alerts, line);
                }
            }
        }
        edge.explanation.push(format!(
            "Pod by pod from the flows the aggregator keeps (the last {}): connections are distinct 5-tuples.",
            snap.kept
        ));
        map.edges.push(edge);
    }

    // The pods as nodes, each with its own labels and policies.
    let cluster = snap.set.cluster();
    let by_key: HashMap<String, PodId> = cluster
        .pods()
        .iter()
        .enumerate()
        .filter_map(|(i, p)| Some((p.key(), PodId(u32::try_from(i).ok()?))))
        .collect();
    for pod in &pods {
        let Some((ns, name)) = pod.split_once('/') else {
            continue;
        };
        let parent = by_key
            .get(pod)
            .map(|&id| {
                weir_map::node_id(&weir_analysis::Group::Workload(
                    cluster.pod(id).workload.clone(),
                ))
            })
            .filter(|id| workloads.contains_key(id));
        let mut node = MapNode::new(pod_id(pod), NodeKind::Pod, ns.to_owned(), name.to_owned());
        if let Some(&id) = by_key.get(pod) {
            weir_map::describe_pod(&snap.set, id, &mut node);
        }
        node.parent = parent;
        map.nodes.push(node);
    }
    // A workload stays only for edges no kept flow could split.
    let still: BTreeSet<&str> = map
        .edges
        .iter()
        .flat_map(|e| [e.from.as_str(), e.to.as_str()])
        .collect();
    let gone: BTreeSet<String> = workloads
        .keys()
        .filter(|id| !still.contains(id.as_str()))
        .cloned()
        .collect();
    map.nodes.retain(|n| !gone.contains(&n.id));
    workloads.into_keys().collect()
}

async fn live(s: &Arc<Shared>, q: MapQuery) -> Result<LiveMap, ApiError> {
    let since = q
        .window
        .as_deref()
        .filter(|w| !w.is_empty())
        .map(|w| parse_time(w, Timestamp::now()))
        .transpose()?;
    let expand = list(&q.expand);
    let title = title(s);
    let snap = {
        let core = s
            .lock_core(LockSite::Read)
            .ok_or_else(|| internal("lock poisoned"))?;
        let engine = &core.engine;
        let in_window = |t: Timestamp| since.is_none_or(|s| t >= s);
        let flows = if expand.is_empty() {
            Vec::new()
        } else {
            engine
                .recent()
                .iter()
                .filter(|f| {
                    in_window(f.record.end)
                        && (expand.contains(&endpoint_id(&f.view.source))
                            || expand.contains(&endpoint_id(&f.view.destination)))
                })
                .cloned()
                .collect()
        };
        Snapshot {
            set: Arc::clone(engine.policy_set()),
            ranges: engine.config().cluster_ranges.clone(),
            edges: engine
                .edges()
                .iter()
                .filter(|e| in_window(e.last_seen))
                .cloned()
                .collect(),
            alerts: engine
                .alerts()
                .filter(|a| in_window(a.last_seen))
                .cloned()
                .collect(),
            flows,
            kept: engine.recent().len(),
            title,
            expand,
        }
    };
    tokio::task::spawn_blocking(move || build(&snap, &q))
        .await
        .map_err(|e| internal(e.to_string()))
}

/// Which workload `/ui/workload` is about.
#[derive(Debug, Deserialize)]
pub struct WorkloadQuery {
    /// Its node id, `pod:NS/Kind/name`.
    pub id: String,
}

/// What `/ui/workload` answers: the workload's suggested policy and what it would deny.
#[derive(Debug, Serialize)]
pub struct WorkloadSuggestion {
    /// The node id asked about.
    pub id: String,
    /// The suggested least-privilege NetworkPolicy as YAML; none when nothing observed calls for one.
    pub suggestion: Option<String>,
    /// What it would deny among the observed flows, one line each.
    pub suggestion_denies: Vec<String>,
    /// The edges it was worked out from.
    pub edges: usize,
}

/// `GET /ui/workload?id=pod:NS/Kind/name`: the suggestion for one workload, worked out when a person opens it
/// (for every workload at once it costs seconds on a big cluster, and the map is drawn every few seconds).
async fn workload(
    State(s): State<Arc<Shared>>,
    Query(q): Query<WorkloadQuery>,
) -> Result<Response, ApiError> {
    let samples = samples(&s, |e| {
        endpoint_id(&e.key.src) == q.id || endpoint_id(&e.key.dst) == q.id
    })?;
    let answer = tokio::task::spawn_blocking(move || {
        let edges = samples.records.len();
        let options = samples.suggest_options();
        let analysis = Analyzer::new(&samples.set, &samples.ranges).analyze_sorted(samples.records);
        let (namespace, name) =
            q.id.strip_prefix("pod:")
                .and_then(|rest| rest.split_once('/'))
                .unwrap_or_default();
        let mut node = [MapNode::new(
            q.id.clone(),
            NodeKind::Workload,
            namespace.to_owned(),
            name.to_owned(),
        )];
        weir_map::add_suggestions(&samples.set, &analysis.flows, &options, &mut node);
        let [node] = node;
        WorkloadSuggestion {
            id: q.id,
            suggestion: node
                .suggestion
                .map(|yaml| format!("{}{yaml}", samples_caveat(edges))),
            suggestion_denies: node.suggestion_denies,
            edges,
        }
    })
    .await
    .map_err(|e| internal(e.to_string()))?;
    Ok(axum::Json(answer).into_response())
}

async fn map_json(
    State(s): State<Arc<Shared>>,
    Query(q): Query<MapQuery>,
) -> Result<Response, ApiError> {
    let map = live(&s, q).await?;
    let mut response = axum::Json(map).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

async fn map_svg(
    State(s): State<Arc<Shared>>,
    Query(q): Query<MapQuery>,
) -> Result<Response, ApiError> {
    let map = live(&s, q).await?;
    // Opened on its own, the drawing brings its stylesheet along.
    let svg = match map.svg.find('>') {
        Some(end) => format!(
            "{}<style><![CDATA[{}\nsvg.weir-map {{ background: var(--bg); }}]]></style>{}",
            &map.svg[..=end],
            weir_map::APP_CSS,
            &map.svg[end + 1..]
        ),
        None => map.svg,
    };
    let mut response = hardened(svg.into_response(), "image/svg+xml; charset=utf-8");
    // Opened on its own, the drawing runs nothing and loads nothing.
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    Ok(response)
}

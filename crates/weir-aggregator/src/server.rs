//! The aggregator's HTTP side: ingest from agents, the JSON API under `/api/v1`, the alert stream (SSE),
//! Prometheus metrics and health probes. Mutable state lives in one [`Core`] behind a mutex; batches are
//! applied on the blocking pool, and checkpoints written by one task, which acknowledges batches to agents
//! once they are durable.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::BroadcastStream;
use weir_analysis::{
    Analyzer, SampleWeight, SuggestOptions, observed_diff, suggestion_yaml, write_flow,
};
use weir_model::ingest::{
    AgentCounters, HEADER_COUNTERS, HEADER_EPOCH, HEADER_NODE, HEADER_NODE_ADDRESSES,
    HEADER_OLDEST, HEADER_SEQ, IngestReply, InterfaceAddress,
};
use weir_model::{Alert, AlertKind, FlowRecord, Timestamp};
use weir_policy::PolicySet;

use crate::admission::{Admission, admit};
use crate::engine::{Engine, StoredFlow};
use crate::store::Cursor;
use weir_analysis::EdgeStats;
use weir_kube::ClusterStatus;

/// One agent run as the aggregator knows it.
#[derive(Clone, Debug, Serialize)]
pub struct AgentState {
    /// Node.
    pub node: String,
    /// Agent run.
    pub epoch: String,
    /// Last batch applied.
    pub applied: u64,
    /// Last batch stored durably (acknowledged).
    pub acked: u64,
    /// Batches the agent dropped before sending them (its buffer was full).
    pub missed_batches: u64,
    /// The agent's own counters, as last reported.
    pub counters: AgentCounters,
    /// Last request.
    pub last_seen: Timestamp,
}

/// Everything that changes as batches come in.
pub struct Core {
    /// The judging core.
    pub engine: Engine,
    /// Agent runs by (node, epoch).
    pub agents: BTreeMap<(String, String), AgentState>,
}

/// Ingest counters.
#[derive(Debug, Default)]
pub struct IngestCounters {
    /// Batches applied.
    pub batches: AtomicU64,
    /// Batches already applied, ignored.
    pub duplicates: AtomicU64,
    /// Batches that were not the next one (the agent was told where to resume).
    pub out_of_order: AtomicU64,
    /// Records applied.
    pub records: AtomicU64,
    /// Lines of a batch that were not flow records (counted, skipped).
    pub malformed: AtomicU64,
    /// Requests refused: no or wrong token.
    pub unauthorized: AtomicU64,
    /// Requests refused: bad headers.
    pub bad_requests: AtomicU64,
    /// Requests refused while the cluster state was loading.
    pub not_ready: AtomicU64,
    /// Heartbeats.
    pub heartbeats: AtomicU64,
    /// Checkpoints written.
    pub checkpoints: AtomicU64,
    /// Checkpoints that failed.
    pub checkpoint_failures: AtomicU64,
    /// Time spent writing checkpoints, microseconds.
    pub checkpoint_micros: AtomicU64,
    /// Alerts written to the webhook.
    pub webhook_sent: AtomicU64,
    /// Alerts the webhook did not take after every retry, or that did not fit its queue.
    pub webhook_failed: AtomicU64,
    /// Alert stream subscribers that fell behind, in alerts skipped.
    pub stream_lagged: AtomicU64,
}

/// State shared by every handler.
pub struct Shared {
    /// Engine and agents.
    pub core: Mutex<Core>,
    /// New and updated alerts.
    pub alerts: broadcast::Sender<Arc<Alert>>,
    /// Judged flows, when someone listens.
    pub flows: broadcast::Sender<Arc<StoredFlow>>,
    /// Counters.
    pub counters: IngestCounters,
    /// The cluster source's status.
    pub cluster: Arc<Mutex<ClusterStatus>>,
    /// Set once the cluster state is loaded.
    pub ready: AtomicBool,
    /// Bearer token agents must present, if any.
    pub ingest_token: Option<String>,
    /// Bearer token readers must present, if any.
    pub read_token: Option<String>,
    /// Where alerts go besides the stream.
    pub sink: Option<tokio::sync::mpsc::Sender<Arc<Alert>>>,
    /// Alerts to standard output as JSON lines.
    pub alerts_stdout: bool,
    /// Served over TLS: the UI's session cookie is marked Secure.
    pub secure_cookie: bool,
    /// The cluster source's policy set and the node addresses agents report, which make the set in force.
    pub node_addresses: Mutex<NodeAddresses>,
}

/// The policy set as the cluster source built it, and what agents report of their nodes' interfaces: the set
/// in force is the first with the second's addresses made the nodes' own
/// ([`weir_cluster::ClusterState::with_node_interfaces`]).
#[derive(Default)]
pub struct NodeAddresses {
    base: Option<Arc<PolicySet>>,
    reported: BTreeMap<String, Vec<InterfaceAddress>>,
}

impl NodeAddresses {
    /// The addresses each node's agent reported last.
    pub fn reported(&self) -> &BTreeMap<String, Vec<InterfaceAddress>> {
        &self.reported
    }

    fn compose(&self) -> Option<Arc<PolicySet>> {
        let base = self.base.as_ref()?;
        if self.reported.is_empty() {
            return Some(Arc::clone(base));
        }
        let cluster = base.cluster().with_node_interfaces(&self.reported);
        match PolicySet::new(Arc::new(cluster)) {
            Ok(set) => Some(Arc::new(set)),
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "the node addresses agents reported could not be added"
                );
                Some(Arc::clone(base))
            }
        }
    }
}

impl Shared {
    /// Sends the engine's new and updated alerts to every sink.
    pub fn deliver(&self, alerts: Vec<Alert>) {
        for alert in alerts {
            let alert = Arc::new(alert);
            if self.alerts_stdout
                && let Ok(line) = serde_json::to_string(&*alert)
            {
                println!("{line}");
            }
            if let Some(sink) = &self.sink
                && sink.try_send(Arc::clone(&alert)).is_err()
            {
                self.counters.webhook_failed.fetch_add(1, Ordering::Relaxed);
            }
            let _ = self.alerts.send(alert);
        }
    }

    /// Installs a new policy set (the cluster changed), with the node addresses agents reported; the first
    /// one makes the aggregator ready.
    pub fn set_policy(&self, set: Arc<PolicySet>) {
        if let Ok(mut addresses) = self.node_addresses.lock() {
            addresses.base = Some(set);
            if let (Some(set), Ok(mut core)) = (addresses.compose(), self.core.lock()) {
                core.engine.set_policy(set);
            }
        }
        self.ready.store(true, Ordering::Release);
    }

    /// Takes a node's interface addresses from its agent; when they changed, the policy set in force is
    /// rebuilt with them (later flows from those addresses are the node's).
    pub fn report_node_addresses(&self, node: &str, reported: Vec<InterfaceAddress>) {
        let Ok(mut addresses) = self.node_addresses.lock() else {
            return;
        };
        if addresses.reported.get(node) == Some(&reported) {
            return;
        }
        addresses.reported.insert(node.to_owned(), reported);
        if let (Some(set), Ok(mut core)) = (addresses.compose(), self.core.lock()) {
            core.engine.set_policy(set);
        }
    }
}

/// An API error: a status and a message, as JSON.
#[derive(Debug)]
pub struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.1 });
        (self.0, axum::Json(body)).into_response()
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

pub(crate) fn internal(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, message.into())
}

/// Compares without an early exit, so the time taken does not tell how much of a token was right.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn check_token(headers: &HeaderMap, token: &Option<String>) -> Result<(), ApiError> {
    let Some(token) = token else { return Ok(()) };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if same(given.trim().as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required".into(),
        ))
    }
}

/// Readers present the read token as a bearer token, or, in a browser, in the cookie the UI's sign-in set.
fn read_auth(s: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    if let (Some(token), Some(given)) = (&s.read_token, crate::ui::session_token(headers))
        && same(given.as_bytes(), token.as_bytes())
    {
        return Ok(());
    }
    check_token(headers, &s.read_token)
}

/// The layer in front of every read route: the read token (or the UI's session cookie) before anything of the
/// request is looked at.
async fn require_read(State(s): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    match read_auth(&s, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// The layer in front of ingest: the agents' token before the body is read (and counted when it is wrong).
async fn require_ingest(State(s): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    match check_token(request.headers(), &s.ingest_token) {
        Ok(()) => next.run(request).await,
        Err(e) => {
            s.counters.unauthorized.fetch_add(1, Ordering::Relaxed);
            e.into_response()
        }
    }
}

/// Which routes a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routes {
    /// Everything: ingest, the API, the UI and metrics (one listener).
    All,
    /// The API, the UI and metrics; agents' flows are sent to the ingest listener instead.
    Api,
    /// Agents' flows only (and the health checks).
    Ingest,
}

/// The HTTP routes of one listener.
pub fn router(shared: Arc<Shared>, max_body: usize, routes: Routes) -> Router {
    let health = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz));
    // Authentication is a layer on each group of routes, so no handler can forget it and no body or query is
    // read before it.
    let ingest_route = Router::new()
        .route(
            "/api/v1/ingest",
            post(ingest).layer(DefaultBodyLimit::max(max_body)),
        )
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            require_ingest,
        ));
    let router = match routes {
        Routes::Ingest => return health.merge(ingest_route).with_state(shared),
        Routes::All => health.merge(ingest_route),
        Routes::Api => health.route(
            "/api/v1/ingest",
            post(|| async {
                (
                    StatusCode::MISDIRECTED_REQUEST,
                    "this aggregator takes agents' flows on its ingest listener (--ingest-listen), not here\n",
                )
            }),
        ),
    };
    let reads = crate::ui::reads(Router::new())
        .route("/api/v1/status", get(status))
        .route("/api/v1/flows", get(flows))
        .route("/api/v1/flows/stream", get(flow_stream))
        .route("/api/v1/edges", get(edges))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/alerts/stream", get(alert_stream))
        .route("/api/v1/alerts/{id}", get(alert))
        .route("/api/v1/suggest", get(suggest_policies))
        .route(
            "/api/v1/diff",
            post(diff).layer(DefaultBodyLimit::max(4 << 20)),
        )
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            require_read,
        ));
    crate::ui::pages(router)
        .merge(reads)
        .route("/metrics", get(crate::metrics::metrics))
        .with_state(shared)
}

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the cluster state is not loaded yet\n",
        )
            .into_response()
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn parse_number(headers: &HeaderMap, name: &str) -> Result<Option<u64>, ApiError> {
    header_str(headers, name)
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| bad(format!("{name}: {v:?} is not a number")))
        })
        .transpose()
}

/// Flow records from JSON lines; lines that are not records are counted and skipped.
pub fn parse_json_lines(body: &[u8]) -> (Vec<FlowRecord>, u64) {
    let mut records = Vec::with_capacity(body.len() / 300 + 1);
    let mut malformed = 0;
    for line in body.split(|&b| b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<FlowRecord>(line) {
            Ok(r) => records.push(r),
            Err(_) => malformed += 1,
        }
    }
    (records, malformed)
}

/// The wire format of a batch, from its content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    /// Flow records as JSON lines (the stable record format; any content type but the binary one).
    JsonLines,
    /// [`weir_model::wire`]: the compact binary form agents send.
    Binary,
}

impl BodyFormat {
    fn of(headers: &HeaderMap) -> BodyFormat {
        let binary = header_str(headers, "content-type")
            .and_then(|t| t.split(';').next())
            .is_some_and(|t| {
                t.trim()
                    .eq_ignore_ascii_case(weir_model::wire::CONTENT_TYPE)
            });
        if binary {
            BodyFormat::Binary
        } else {
            BodyFormat::JsonLines
        }
    }
}

/// Reads a batch body: the records and how many were malformed; an error when a binary body cannot be framed.
pub fn parse_records(
    format: BodyFormat,
    body: &[u8],
) -> Result<(Vec<FlowRecord>, u64), weir_model::wire::WireError> {
    match format {
        BodyFormat::JsonLines => Ok(parse_json_lines(body)),
        BodyFormat::Binary if body.is_empty() => Ok((Vec::new(), 0)),
        BodyFormat::Binary => weir_model::wire::decode(body),
    }
}

async fn ingest(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<axum::Json<IngestReply>, Response> {
    let request = (|| {
        let node = header_str(&headers, HEADER_NODE)
            .filter(|n| !n.is_empty() && n.len() <= 253)
            .ok_or_else(|| bad(format!("{HEADER_NODE} is required")))?
            .to_owned();
        let epoch = header_str(&headers, HEADER_EPOCH)
            .filter(|e| {
                !e.is_empty() && e.len() <= 64 && e.bytes().all(|b| b.is_ascii_alphanumeric())
            })
            .ok_or_else(|| bad(format!("{HEADER_EPOCH} is required (letters and digits)")))?
            .to_owned();
        let seq = parse_number(&headers, HEADER_SEQ)?;
        let oldest = parse_number(&headers, HEADER_OLDEST)?;
        let counters = match header_str(&headers, HEADER_COUNTERS) {
            Some(text) => Some(
                AgentCounters::parse_header(text)
                    .map_err(|e| bad(format!("{HEADER_COUNTERS}: {e}")))?,
            ),
            None => None,
        };
        let node_addresses = match header_str(&headers, HEADER_NODE_ADDRESSES) {
            Some(text) => Some(
                InterfaceAddress::parse_header(text)
                    .map_err(|e| bad(format!("{HEADER_NODE_ADDRESSES}: {e}")))?,
            ),
            None => None,
        };
        if seq == Some(0) {
            return Err(bad("batches are numbered from 1"));
        }
        if seq.is_none() && !body.is_empty() {
            return Err(bad(format!("a batch needs {HEADER_SEQ}")));
        }
        Ok((node, epoch, seq, oldest, counters, node_addresses))
    })();
    let (node, epoch, seq, oldest, counters, node_addresses) = match request {
        Ok(r) => r,
        Err(e) => {
            s.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
            return Err(e.into_response());
        }
    };
    if !s.ready.load(Ordering::Acquire) {
        s.counters.not_ready.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the cluster state is not loaded yet; retry".into(),
        )
        .into_response());
    }
    let shared = Arc::clone(&s);
    let format = BodyFormat::of(&headers);
    let reply = tokio::task::spawn_blocking(move || {
        // Before the batch: its flows from those addresses are already the node's.
        if let Some(addresses) = node_addresses {
            shared.report_node_addresses(&node, addresses);
        }
        apply_batch(&shared, node, epoch, seq, oldest, counters, format, &body)
    })
    .await
    .map_err(|e| internal(format!("the batch could not be applied: {e}")).into_response())?;
    match reply {
        Ok(reply) => Ok(axum::Json(reply)),
        Err(e @ BatchError::Body(_)) => {
            s.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
            Err(bad(e.to_string()).into_response())
        }
        Err(e @ BatchError::Poisoned) => Err(internal(e.to_string()).into_response()),
    }
}

/// Why a batch was not applied.
#[derive(Debug, thiserror::Error)]
enum BatchError {
    /// The body could not be framed: the agent's fault, not retryable as it is.
    #[error("the batch body is unreadable: {0}")]
    Body(#[source] weir_model::wire::WireError),
    /// A thread panicked while holding the engine: nothing more can be applied safely until a restart.
    #[error("the engine is unusable after an internal failure; restart the aggregator")]
    Poisoned,
}

/// Applies one request under the core lock: a batch in order, a duplicate ignored, a gap answered with where
/// to resume. Fails only on a binary body that cannot be framed.
#[allow(clippy::too_many_arguments)]
fn apply_batch(
    s: &Shared,
    node: String,
    epoch: String,
    seq: Option<u64>,
    oldest: Option<u64>,
    counters: Option<AgentCounters>,
    format: BodyFormat,
    body: &[u8],
) -> Result<IngestReply, BatchError> {
    let now = Timestamp::now();
    let key = (node.clone(), epoch.clone());
    let cursor = |core: &mut Core| {
        let agent = core
            .agents
            .entry(key.clone())
            .or_insert_with(|| AgentState {
                node: node.clone(),
                epoch: epoch.clone(),
                applied: 0,
                acked: 0,
                missed_batches: 0,
                counters: AgentCounters::default(),
                last_seen: now,
            });
        agent.last_seen = now;
        if let Some(c) = counters {
            agent.counters = c;
        }
        (agent.applied, agent.acked)
    };
    let mut core = s.core.lock().map_err(|_| BatchError::Poisoned)?;
    core.engine.watch_node(&node);
    let (applied, acked) = cursor(&mut core);
    let reply = |applied, expected| IngestReply {
        applied,
        acked,
        expected,
    };
    match admit(applied, seq, oldest) {
        Admission::Heartbeat => {
            s.counters.heartbeats.fetch_add(1, Ordering::Relaxed);
            return Ok(reply(applied, None));
        }
        Admission::Duplicate => {
            s.counters.duplicates.fetch_add(1, Ordering::Relaxed);
            return Ok(reply(applied, None));
        }
        Admission::Resend { expected } => {
            s.counters.out_of_order.fetch_add(1, Ordering::Relaxed);
            return Ok(reply(applied, Some(expected)));
        }
        Admission::Apply { .. } => {}
    }
    // Parsing, attribution and verdicts do not need the lock: only counting does.
    let kit = core.engine.judge_kit();
    drop(core);
    let (records, malformed) = parse_records(format, body).map_err(BatchError::Body)?;
    s.counters.malformed.fetch_add(malformed, Ordering::Relaxed);
    let judged = kit.judge(records);
    let mut core = s.core.lock().map_err(|_| BatchError::Poisoned)?;
    // Another request of the same agent run may have got there first.
    let (applied, acked) = cursor(&mut core);
    let (seq, missed) = match admit(applied, seq, oldest) {
        Admission::Apply { missed } => (seq.unwrap_or(applied + 1), missed),
        _ => {
            s.counters.duplicates.fetch_add(1, Ordering::Relaxed);
            return Ok(IngestReply {
                applied,
                acked,
                expected: None,
            });
        }
    };
    let render = s.flows.receiver_count() > 0;
    let result = match core.engine.apply_judged(judged, now) {
        Some(result) => result,
        // The policy set changed while the batch was judged: judge it again against the new one.
        None => {
            let (records, _) = parse_records(format, body).map_err(BatchError::Body)?;
            core.engine.apply(records, now)
        }
    };
    let n = result.records;
    if let Some(agent) = core.agents.get_mut(&key) {
        agent.missed_batches = agent.missed_batches.saturating_add(missed);
        agent.applied = seq;
    }
    let deliveries = core.engine.take_deliveries();
    let evicted = core.engine.take_evicted();
    let listened: Vec<Arc<StoredFlow>> = if render {
        let recent = core.engine.recent();
        let added = (result.connections + result.joined_views) as usize;
        recent
            .iter()
            .skip(recent.len().saturating_sub(added))
            .map(|f| Arc::new(f.clone()))
            .collect()
    } else {
        Vec::new()
    };
    drop(core);
    // Freeing the flows the ring let go of is work too: not under the lock.
    drop(evicted);
    s.counters.batches.fetch_add(1, Ordering::Relaxed);
    s.counters.records.fetch_add(n, Ordering::Relaxed);
    for flow in listened {
        let _ = s.flows.send(flow);
    }
    s.deliver(deliveries);
    Ok(IngestReply {
        applied: seq,
        acked,
        expected: None,
    })
}

/// Collects a checkpoint under the lock; after it is written, acknowledges the batches it covers.
pub async fn checkpoint_loop(
    s: Arc<Shared>,
    store: Arc<Mutex<crate::store::Store>>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // A failure is counted and reported inside; the next tick writes everything again.
        let _ = checkpoint_once(&s, &store).await;
    }
}

/// Why a checkpoint was not written. Retryable: every change stays marked and the next checkpoint writes it.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A thread panicked while holding the engine or the store.
    #[error("the {0} lock is poisoned (a thread panicked while holding it)")]
    Poisoned(&'static str),
    /// The writing task did not finish.
    #[error("the checkpoint task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Writes one checkpoint now; on failure every change is kept for the next one and the reason is returned.
pub async fn checkpoint_once(
    s: &Arc<Shared>,
    store: &Arc<Mutex<crate::store::Store>>,
) -> Result<(), CheckpointError> {
    let now = Timestamp::now();
    let (checkpoint, covered) = {
        let Ok(mut core) = s.core.lock() else {
            return Err(CheckpointError::Poisoned("engine"));
        };
        core.engine.tick(now);
        let deliveries = core.engine.take_deliveries();
        let (edges, alerts, flows) = core.engine.take_changes();
        let totals = core.engine.totals();
        let cursors: Vec<Cursor> = core
            .agents
            .values()
            .map(|a| Cursor {
                node: a.node.clone(),
                epoch: a.epoch.clone(),
                applied: a.applied,
                last_seen: a.last_seen,
            })
            .collect();
        drop(core);
        s.deliver(deliveries);
        let covered: Vec<((String, String), u64)> = cursors
            .iter()
            .map(|c| ((c.node.clone(), c.epoch.clone()), c.applied))
            .collect();
        (
            crate::store::Checkpoint {
                edges,
                alerts,
                flows,
                cursors,
                totals,
            },
            covered,
        )
    };
    let store = Arc::clone(store);
    let started = std::time::Instant::now();
    let written = tokio::task::spawn_blocking(move || {
        store
            .lock()
            .map_err(|_| CheckpointError::Poisoned("store"))
            .and_then(|mut st| Ok(st.write(&checkpoint, now)?))
    })
    .await;
    s.counters
        .checkpoint_micros
        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    let failure = match written {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(e) => Some(CheckpointError::Task(e)),
    };
    match failure {
        None => {
            s.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut core) = s.core.lock() {
                for (key, applied) in covered {
                    if let Some(a) = core.agents.get_mut(&key) {
                        a.acked = a.acked.max(applied);
                    }
                }
            }
            Ok(())
        }
        Some(message) => {
            s.counters
                .checkpoint_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!("a checkpoint failed: {message}; batches stay unacknowledged");
            if let Ok(mut core) = s.core.lock() {
                core.engine.mark_all_dirty();
            }
            Err(message)
        }
    }
}

#[derive(Serialize)]
struct StatusView {
    ready: bool,
    cluster: ClusterStatus,
    learning_started: Timestamp,
    learning_ends: Timestamp,
    learning: bool,
    totals: crate::engine::Totals,
    edges: usize,
    alerts: usize,
    pending_joins: usize,
    agents: Vec<AgentState>,
    /// The interface addresses each node's agent reported last (those the cluster's objects did not already
    /// give to someone are the node's).
    node_addresses: BTreeMap<String, Vec<InterfaceAddress>>,
}

async fn status(State(s): State<Arc<Shared>>) -> Result<Response, ApiError> {
    let cluster = s.cluster.lock().map(|c| c.clone()).unwrap_or_default();
    // Taken before the engine lock, never while holding it (set_policy takes them in this order).
    let node_addresses = s
        .node_addresses
        .lock()
        .map(|a| a.reported().clone())
        .unwrap_or_default();
    let core = s.core.lock().map_err(|_| internal("lock poisoned"))?;
    let now = Timestamp::now();
    let view = StatusView {
        node_addresses,
        ready: s.ready.load(Ordering::Acquire),
        cluster,
        learning_started: core.engine.learning_started(),
        learning_ends: core.engine.learning_ends(),
        learning: now < core.engine.learning_ends(),
        totals: core.engine.totals(),
        edges: core.engine.edges().len(),
        alerts: core.engine.alerts().count(),
        pending_joins: core.engine.pending_joins(),
        agents: core.agents.values().cloned().collect(),
    };
    Ok(axum::Json(view).into_response())
}

/// `since`/`until`: RFC 3339, or a time ago (`90s`, `5m`, `2h`, `1d`).
pub(crate) fn parse_time(text: &str, now: Timestamp) -> Result<Timestamp, ApiError> {
    if let Ok(t) = Timestamp::parse(text) {
        return Ok(t);
    }
    let (number, unit) = text.split_at(
        text.trim_end_matches(|c: char| c.is_ascii_alphabetic())
            .len(),
    );
    let n: i64 = number.parse().map_err(|_| {
        bad(format!(
            "{text:?} is neither RFC 3339 nor a time ago like 5m"
        ))
    })?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(bad(format!("{text:?}: unknown unit {unit:?}"))),
    };
    Ok(Timestamp(now.0 - secs.saturating_mul(1_000_000_000)))
}

/// Filters of the flow and edge queries.
#[derive(Debug, Default, Deserialize)]
pub struct FlowFilter {
    /// Either end in this namespace.
    pub namespace: Option<String>,
    /// Either end's workload, pod, node or address contains this.
    pub workload: Option<String>,
    /// `allowed`, `denied`, `mixed`, `unknown`.
    pub verdict: Option<String>,
    /// Not before (RFC 3339 or `5m`).
    pub since: Option<String>,
    /// Not after.
    pub until: Option<String>,
    /// Most results (default 100, at most 10,000).
    pub limit: Option<usize>,
    /// Edges only: `true` for edges not in the baseline.
    pub new: Option<bool>,
}

fn end_matches(
    e: &weir_model::EndpointKey,
    pod: Option<&str>,
    namespace: Option<&str>,
    needle: Option<&str>,
) -> (bool, bool) {
    let ns_ok = namespace.is_none_or(|ns| e.namespace.as_deref() == Some(ns));
    let name_ok = needle.is_none_or(|n| e.name.contains(n) || pod.is_some_and(|p| p.contains(n)));
    (ns_ok, name_ok)
}

impl FlowFilter {
    fn bounds(&self) -> Result<(Option<Timestamp>, Option<Timestamp>, usize), ApiError> {
        let now = Timestamp::now();
        let since = self
            .since
            .as_deref()
            .map(|t| parse_time(t, now))
            .transpose()?;
        let until = self
            .until
            .as_deref()
            .map(|t| parse_time(t, now))
            .transpose()?;
        Ok((since, until, self.limit.unwrap_or(100).clamp(1, 10_000)))
    }

    fn sides_match(
        &self,
        a: (&weir_model::EndpointKey, Option<&str>),
        b: (&weir_model::EndpointKey, Option<&str>),
    ) -> bool {
        let ns = self.namespace.as_deref();
        let w = self.workload.as_deref();
        let (a_ns, a_name) = end_matches(a.0, a.1, ns, w);
        let (b_ns, b_name) = end_matches(b.0, b.1, ns, w);
        // Namespace and name may be met by either end, but by the same end when both are given.
        (a_ns && a_name) || (b_ns && b_name)
    }

    fn matches_flow(
        &self,
        f: &StoredFlow,
        since: Option<Timestamp>,
        until: Option<Timestamp>,
    ) -> bool {
        let v = &f.view;
        self.verdict
            .as_deref()
            .is_none_or(|want| v.verdict.name() == want)
            && since.is_none_or(|t| f.record.end >= t)
            && until.is_none_or(|t| f.record.start <= t)
            && self.sides_match(
                (&v.source, v.src_pod.as_deref()),
                (&v.destination, v.dst_pod.as_deref()),
            )
    }

    fn matches_edge(
        &self,
        e: &EdgeStats,
        since: Option<Timestamp>,
        until: Option<Timestamp>,
    ) -> bool {
        self.verdict
            .as_deref()
            .is_none_or(|v| e.verdict.name() == v)
            && self.new.is_none_or(|n| n != e.baseline)
            && since.is_none_or(|t| e.last_seen >= t)
            && until.is_none_or(|t| e.first_seen <= t)
            && self.sides_match((&e.key.src, None), (&e.key.dst, None))
    }
}

async fn flows(
    State(s): State<Arc<Shared>>,
    Query(f): Query<FlowFilter>,
) -> Result<Response, ApiError> {
    let (since, until, limit) = f.bounds()?;
    let core = s.core.lock().map_err(|_| internal("lock poisoned"))?;
    let out: Vec<StoredFlow> = core
        .engine
        .recent()
        .iter()
        .rev()
        .filter(|fl| f.matches_flow(fl, since, until))
        .take(limit)
        .cloned()
        .collect();
    drop(core);
    Ok(axum::Json(serde_json::json!({ "flows": out })).into_response())
}

async fn edges(
    State(s): State<Arc<Shared>>,
    Query(f): Query<FlowFilter>,
) -> Result<Response, ApiError> {
    let (since, until, _) = f.bounds()?;
    let limit = f.limit.unwrap_or(10_000).clamp(1, 100_000);
    let core = s.core.lock().map_err(|_| internal("lock poisoned"))?;
    let mut out: Vec<EdgeStats> = core
        .engine
        .edges()
        .iter()
        .filter(|e| f.matches_edge(e, since, until))
        .cloned()
        .collect();
    drop(core);
    out.sort_by(|a, b| {
        b.last_seen
            .cmp(&a.last_seen)
            .then_with(|| a.key.cmp(&b.key))
    });
    out.truncate(limit);
    Ok(axum::Json(serde_json::json!({ "edges": out })).into_response())
}

/// Filters of the alert queries and stream.
#[derive(Debug, Default, Deserialize)]
pub struct AlertFilter {
    /// Either end in this namespace.
    pub namespace: Option<String>,
    /// Alert types, comma-separated.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Changed since (RFC 3339 or `5m`).
    pub since: Option<String>,
}

impl AlertFilter {
    fn kinds(&self) -> Result<Vec<AlertKind>, ApiError> {
        let Some(text) = &self.kind else {
            return Ok(Vec::new());
        };
        text.split(',')
            .filter(|t| !t.is_empty())
            .map(|t| {
                AlertKind::parse(t.trim()).ok_or_else(|| {
                    bad(format!(
                        "unknown alert type {t:?} (policy-violation, enforcement-gap, new-edge, scan)"
                    ))
                })
            })
            .collect()
    }

    fn matches(&self, kinds: &[AlertKind], a: &Alert) -> bool {
        (kinds.is_empty() || kinds.contains(&a.kind))
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| a.touches_namespace(ns))
    }
}

async fn alerts(
    State(s): State<Arc<Shared>>,
    Query(f): Query<AlertFilter>,
) -> Result<Response, ApiError> {
    let kinds = f.kinds()?;
    let since = f
        .since
        .as_deref()
        .map(|t| parse_time(t, Timestamp::now()))
        .transpose()?;
    let core = s.core.lock().map_err(|_| internal("lock poisoned"))?;
    let mut out: Vec<Alert> = core
        .engine
        .alerts()
        .filter(|a| f.matches(&kinds, a) && since.is_none_or(|t| a.updated_at >= t))
        .cloned()
        .collect();
    drop(core);
    out.sort_by(|a, b| {
        b.updated_at
            .cmp(&a.updated_at)
            .then_with(|| a.id.cmp(&b.id))
    });
    Ok(axum::Json(serde_json::json!({ "alerts": out })).into_response())
}

async fn alert(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let core = s.core.lock().map_err(|_| internal("lock poisoned"))?;
    match core.engine.alert(&id) {
        Some(a) => Ok(axum::Json(a.clone()).into_response()),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no alert {id:?}"))),
    }
}

/// A Server-Sent Events response over a broadcast channel: `event(item)` makes the event for an item (or skips
/// it); a subscriber that falls behind gets a `lagged` event with the number of items it missed.
fn sse<T: Clone + Send + 'static>(
    s: &Arc<Shared>,
    rx: broadcast::Receiver<T>,
    event: impl Fn(T) -> Option<Event> + Send + 'static,
) -> Response {
    let shared = Arc::clone(s);
    let stream = BroadcastStream::new(rx).filter_map(move |item| match item {
        Ok(item) => event(item).map(Ok::<Event, Infallible>),
        Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
            shared
                .counters
                .stream_lagged
                .fetch_add(n, Ordering::Relaxed);
            Some(Ok(Event::default().event("lagged").data(n.to_string())))
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

async fn alert_stream(
    State(s): State<Arc<Shared>>,
    Query(f): Query<AlertFilter>,
) -> Result<Response, ApiError> {
    let kinds = f.kinds()?;
    Ok(sse(&s, s.alerts.subscribe(), move |alert: Arc<Alert>| {
        if !f.matches(&kinds, &alert) {
            return None;
        }
        Event::default()
            .event("alert")
            .id(alert.id.clone())
            .json_data(&*alert)
            .ok()
    }))
}

async fn flow_stream(
    State(s): State<Arc<Shared>>,
    Query(f): Query<FlowFilter>,
) -> Result<Response, ApiError> {
    Ok(sse(
        &s,
        s.flows.subscribe(),
        move |flow: Arc<StoredFlow>| {
            if !f.matches_flow(&flow, None, None) {
                return None;
            }
            Event::default().event("flow").json_data(&*flow).ok()
        },
    ))
}

/// One record per edge, what suggest and diff re-judge against the cluster as it is now.
pub(crate) struct Samples {
    /// The policy set in force.
    pub set: Arc<PolicySet>,
    /// Each edge's sample record.
    pub records: Vec<FlowRecord>,
    /// The cluster ranges flows are attributed with.
    pub ranges: Vec<weir_model::Cidr>,
    /// What each sample stands for, by Community ID: its edge's connections and span.
    pub weights: HashMap<String, SampleWeight>,
}

impl Samples {
    /// Suggestion options over these samples: their ranges, and evidence counting the edges' connections.
    pub fn suggest_options(&self) -> SuggestOptions {
        SuggestOptions {
            cluster_ranges: self.ranges.clone(),
            sample_weights: self.weights.clone(),
            ..SuggestOptions::default()
        }
    }
}

/// The samples of the edges `keep` picks.
pub(crate) fn samples(s: &Shared, keep: impl Fn(&EdgeStats) -> bool) -> Result<Samples, ApiError> {
    let core = s.core.lock().map_err(|_| internal("lock poisoned"))?;
    let mut records = Vec::new();
    let mut weights: HashMap<String, SampleWeight> = HashMap::new();
    for e in core.engine.edges().iter().filter(|e| keep(e)) {
        records.push(e.sample.clone());
        if e.sample.community_id.is_empty() {
            continue;
        }
        let weight = SampleWeight {
            flows: e.flows.max(1),
            first: e.first_seen,
            last: e.last_seen,
        };
        // Two edges with one sample are two views of the same connections: the larger count, not the sum.
        weights
            .entry(e.sample.community_id.clone())
            .and_modify(|w| {
                w.flows = w.flows.max(weight.flows);
                w.first = w.first.min(weight.first);
                w.last = w.last.max(weight.last);
            })
            .or_insert(weight);
    }
    Ok(Samples {
        set: Arc::clone(core.engine.policy_set()),
        records,
        ranges: core.engine.config().cluster_ranges.clone(),
        weights,
    })
}

/// The first lines of a suggestion worked out from [`samples`].
pub(crate) fn samples_caveat(edges: usize) -> String {
    format!(
        "# worked out by the aggregator from the {edges} observed edges it holds: one sample flow each, counted\n\
         # as its edge's connections (the first and last seen are the edge's)\n"
    )
}

#[derive(Debug, Default, Deserialize)]
struct SuggestQuery {
    /// Only this namespace's workloads.
    namespace: Option<String>,
    /// `yaml` (default) or `json` (policies, proof, what is left out).
    format: Option<String>,
}

async fn suggest_policies(
    State(s): State<Arc<Shared>>,
    Query(q): Query<SuggestQuery>,
) -> Result<Response, ApiError> {
    let samples = samples(&s, |_| true)?;
    let namespace = q.namespace.clone();
    let format = q.format.clone().unwrap_or_else(|| "yaml".into());
    if format != "yaml" && format != "json" {
        return Err(bad("format is yaml or json"));
    }
    let result = tokio::task::spawn_blocking(move || {
        let options = SuggestOptions {
            namespaces: namespace.into_iter().collect(),
            ..samples.suggest_options()
        };
        let Samples {
            set,
            records,
            ranges,
            ..
        } = samples;
        let analysis = Analyzer::new(&set, &ranges).analyze_sorted(records.clone());
        let weir_analysis::Synthesis {
            suggestion, proof, ..
        } = weir_analysis::synthesize(&set, &analysis.flows, &records, &options)
            .map_err(|e| e.to_string())?;
        let yaml = if suggestion.policies.is_empty() {
            String::new()
        } else {
            format!(
                "{}{}",
                samples_caveat(records.len()),
                suggestion_yaml(&suggestion)
            )
        };
        Ok::<_, String>((yaml, suggestion.policies.len(), proof))
    })
    .await
    .map_err(|e| internal(e.to_string()))?
    .map_err(internal)?;
    let (yaml, policies, proof) = result;
    if format == "yaml" {
        return Ok(([(header::CONTENT_TYPE, "application/yaml")], yaml).into_response());
    }
    Ok(axum::Json(serde_json::json!({
        "policies": policies,
        "yaml": yaml,
        "proof": {
            "observed_edges": proof.covered,
            "allowed": proof.allowed,
            "denied": proof.denied,
            "allowed_tuples": proof.allowed_tuples,
            "observed_tuples": proof.observed_tuples,
        }
    }))
    .into_response())
}

async fn diff(State(s): State<Arc<Shared>>, body: Bytes) -> Result<Response, ApiError> {
    let Samples {
        set,
        records,
        ranges,
        ..
    } = samples(&s, |_| true)?;
    let result = tokio::task::spawn_blocking(move || {
        let mut loader = weir_cluster::SnapshotLoader::default();
        loader
            .add_bytes(std::path::Path::new("request body"), &body)
            .map_err(|e| bad(e.to_string()))?;
        let (proposed, _) = loader.finish();
        if proposed.policies().is_empty() {
            return Err(bad(
                "the body holds no NetworkPolicy (YAML or JSON, one or many)",
            ));
        }
        let after_state = set.cluster().with_policies(proposed.policies().to_vec());
        let after = PolicySet::new(Arc::new(after_state)).map_err(|e| bad(e.to_string()))?;
        let d = observed_diff(&set, &after, records, &ranges);
        let mut broken = Vec::new();
        for flow in &d.broken_flows {
            let mut buf = Vec::new();
            write_flow(&after, flow, &mut buf);
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&buf) {
                broken.push(v);
            }
        }
        Ok(serde_json::json!({
            "observed_edges": d.flows,
            "breaks": !broken.is_empty(),
            "broken_flows": broken,
            "newly_allowed_flows": d.newly_allowed.totals.flows,
        }))
    })
    .await
    .map_err(|e| internal(e.to_string()))??;
    Ok(axum::Json(result).into_response())
}

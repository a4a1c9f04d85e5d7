//! The JSON API under `/api/v1`: status, readiness, flows, edges, alerts (and their SSE streams), suggest and
//! diff.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::BroadcastStream;
use weir_analysis::{
    Analyzer, SampleWeight, SuggestOptions, observed_diff, suggestion_yaml, write_flow,
};
use weir_model::ingest::InterfaceAddress;
use weir_model::{Alert, AlertKind, FlowRecord, Timestamp};
use weir_policy::PolicySet;

use crate::engine::StoredFlow;
use crate::http::{ApiError, bad, internal};
use crate::state::Shared;
use crate::telemetry::LockSite;
use crate::views::{AgentView, EdgeView, FlowView, TotalsView};
use weir_analysis::EdgeStats;
use weir_kube::ClusterStatus;

/// Alive unless a panic left shared state unusable: then a restart (from the last checkpoint) is the mend.
pub(crate) async fn healthz(State(s): State<Arc<Shared>>) -> Response {
    match s.unusable() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(what) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{what} is unusable (a panic, or it ended); restart the aggregator\n"),
        )
            .into_response(),
    }
}

pub(crate) async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    if let Some(what) = s.unusable() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{what} is unusable\n"),
        )
            .into_response()
    } else if let Some((since, why)) = s.store_health.failure() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the store fails since {since}: {why}; batches are not acknowledged\n"),
        )
            .into_response()
    } else if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ok\n").into_response()
    } else if let Some(kinds) = s
        .cluster
        .lock()
        .ok()
        .map(|c| c.forbidden_required().join(", "))
        .filter(|k| !k.is_empty())
    {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the API server refuses to list {kinds}: the aggregator's ClusterRole needs list and watch on them\n"
            ),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the cluster state is not loaded yet\n",
        )
            .into_response()
    }
}

#[derive(Serialize)]
struct StatusView<'a> {
    ready: bool,
    cluster: ClusterStatus,
    learning_started: Timestamp,
    learning_ends: Timestamp,
    learning: bool,
    totals: TotalsView<'a>,
    edges: usize,
    alerts: usize,
    pending_joins: usize,
    agents: Vec<AgentView<'a>>,
    /// The interface addresses each node's agent reported last (those the cluster's objects did not already
    /// give to someone are the node's).
    node_addresses: BTreeMap<String, Vec<InterfaceAddress>>,
    /// Network policies of kinds weir does not evaluate in the snapshot in force, by `Kind (group)`: verdicts
    /// are NetworkPolicy's and ClusterNetworkPolicy's alone.
    policies_not_evaluated: BTreeMap<String, usize>,
    /// Cluster-wide policies in force (`Kind/name` with tier and priority), in evaluation order.
    cluster_policies: Vec<String>,
    /// Pairs of cluster-wide policies whose order the API leaves to the implementation (see `weir explain`).
    cluster_policy_ambiguities: Vec<String>,
}

pub(crate) async fn status(State(s): State<Arc<Shared>>) -> Result<Response, ApiError> {
    let cluster = s
        .cluster
        .lock()
        .map(|c| c.clone())
        .map_err(|_| internal("the cluster status is unusable (lock poisoned)"))?;
    // Taken before the engine lock, never while holding it (set_policy takes them in this order).
    let node_addresses = s
        .node_addresses
        .lock()
        .map(|a| a.reported().clone())
        .map_err(|_| internal("the node addresses are unusable (lock poisoned)"))?;
    let core = s
        .lock_core(LockSite::Read)
        .ok_or_else(|| internal("lock poisoned"))?;
    let now = Timestamp::now();
    let totals = core.engine.totals();
    let set = core.engine.policy_set();
    let policies_not_evaluated = set.cluster().unevaluated_policies().clone();
    let cluster_policies = set
        .tier_policies()
        .iter()
        .map(|p| format!("{} ({} {})", p.key(), p.tier.name(), p.priority))
        .collect();
    let cluster_policy_ambiguities = set
        .ambiguities()
        .iter()
        .map(|a| {
            let name = |i: u32| set.tier_policies()[i as usize].key();
            format!(
                "{} and {} ({}; weir applies the first)",
                name(a.first),
                name(a.second),
                a.direction
            )
        })
        .collect();
    let view = StatusView {
        policies_not_evaluated,
        cluster_policies,
        cluster_policy_ambiguities,
        node_addresses,
        ready: s.ready.load(Ordering::Acquire),
        cluster,
        learning_started: core.engine.learning_started(),
        learning_ends: core.engine.learning_ends(),
        learning: now < core.engine.learning_ends(),
        totals: TotalsView::from(&totals),
        edges: core.engine.edges().len(),
        alerts: core.engine.alerts().count(),
        pending_joins: core.engine.pending_joins(),
        agents: core.agents.values().map(AgentView::from).collect(),
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
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86400),
        _ => return Err(bad(format!("{text:?}: unknown unit {unit:?}"))),
    };
    // Saturating: a query string may say anything.
    Ok(Timestamp(
        now.0.saturating_sub(secs.saturating_mul(1_000_000_000)),
    ))
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

pub(crate) async fn flows(
    State(s): State<Arc<Shared>>,
    Query(f): Query<FlowFilter>,
) -> Result<Response, ApiError> {
    let (since, until, limit) = f.bounds()?;
    let core = s
        .lock_core(LockSite::Read)
        .ok_or_else(|| internal("lock poisoned"))?;
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
    let out: Vec<FlowView<'_>> = out.iter().map(FlowView::from).collect();
    Ok(axum::Json(serde_json::json!({ "flows": out })).into_response())
}

pub(crate) async fn edges(
    State(s): State<Arc<Shared>>,
    Query(f): Query<FlowFilter>,
) -> Result<Response, ApiError> {
    let (since, until, _) = f.bounds()?;
    let limit = f.limit.unwrap_or(10_000).clamp(1, 100_000);
    let core = s
        .lock_core(LockSite::Read)
        .ok_or_else(|| internal("lock poisoned"))?;
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
    let out: Vec<EdgeView<'_>> = out.iter().map(EdgeView::from).collect();
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

pub(crate) async fn alerts(
    State(s): State<Arc<Shared>>,
    Query(f): Query<AlertFilter>,
) -> Result<Response, ApiError> {
    let kinds = f.kinds()?;
    let since = f
        .since
        .as_deref()
        .map(|t| parse_time(t, Timestamp::now()))
        .transpose()?;
    let core = s
        .lock_core(LockSite::Read)
        .ok_or_else(|| internal("lock poisoned"))?;
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

pub(crate) async fn alert(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let core = s
        .lock_core(LockSite::Read)
        .ok_or_else(|| internal("lock poisoned"))?;
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
            shared.telemetry.stream_lagged(n);
            Some(Ok(Event::default().event("lagged").data(n.to_string())))
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

pub(crate) async fn alert_stream(
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

pub(crate) async fn flow_stream(
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
            Event::default()
                .event("flow")
                .json_data(FlowView::from(&*flow))
                .ok()
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
    let core = s
        .lock_core(LockSite::Read)
        .ok_or_else(|| internal("lock poisoned"))?;
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
pub(crate) struct SuggestQuery {
    /// Only this namespace's workloads.
    namespace: Option<String>,
    /// `yaml` (default) or `json` (policies, proof, what is left out).
    format: Option<String>,
}

pub(crate) async fn suggest_policies(
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

pub(crate) async fn diff(State(s): State<Arc<Shared>>, body: Bytes) -> Result<Response, ApiError> {
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
        if proposed.policies().is_empty() && proposed.cluster_policies().is_empty() {
            return Err(bad(
                "the body holds no NetworkPolicy or ClusterNetworkPolicy (YAML or JSON, one or many)",
            ));
        }
        let after_state = set.cluster().with_proposed(&proposed);
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

#[cfg(test)]
mod tests {
    use super::parse_time;
    use weir_model::Timestamp;

    #[test]
    fn times_ago_from_a_query_string_saturate() {
        let now = Timestamp(1_800_000_000_000_000_000);
        let t = |q: &str| parse_time(q, now).ok().map(|t| t.0);
        assert_eq!(t("90s"), Some(now.0 - 90_000_000_000));
        assert_eq!(t("2h"), Some(now.0 - 7_200_000_000_000));
        assert_eq!(t("9223372036854775807d"), Some(now.0 - i64::MAX));
        assert_eq!(t("-9223372036854775808m"), Some(i64::MAX));
        assert!(t("5 fortnights").is_none());
    }
}

//! `POST /api/v1/ingest`: batch bodies parsed and applied under the core lock (admission decided by
//! `crate::admission::admit`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use weir_model::ingest::{
    AgentCounters, HEADER_COUNTERS, HEADER_EPOCH, HEADER_NODE, HEADER_NODE_ADDRESSES,
    HEADER_OLDEST, HEADER_SEQ, IngestReply, InterfaceAddress,
};
use weir_model::{FlowRecord, Timestamp};

use crate::admission::{Admission, admit};
use crate::engine::StoredFlow;
use crate::http::{ApiError, bad, busy_or, internal};
use crate::state::{AgentState, Core, Shared};
use crate::telemetry::{BatchResult, LockSite, Rejection};

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

/// How far ahead of the aggregator's clock a record may end: agents' clocks drift, by seconds under NTP.
pub const FUTURE_SKEW: Duration = Duration::from_secs(300);

/// Puts every record's end no later than `now + FUTURE_SKEW` and its start no later than its end, and returns how
/// many had to be moved: a record dated in 2262 would otherwise never expire, and hold its edge for good.
///
/// The past is left alone: a time is also what attributes an address to the pod that held it then (a Job's pod,
/// a replaced one), so moving an old record forward would judge it against the wrong pod. An old record is
/// judged as it is and expires with the retention (counted there); a record before 1970 is moved to 1970.
pub fn clamp_times(records: &mut [FlowRecord], now: Timestamp) -> u64 {
    let lo = 0;
    let hi = now
        .0
        .saturating_add(weir_model::duration_nanos(FUTURE_SKEW));
    let mut moved = 0;
    for r in records {
        let end = r.end.0.clamp(lo, hi);
        let start = r.start.0.clamp(lo, end);
        if (start, end) != (r.start.0, r.end.0) {
            r.start = Timestamp(start);
            r.end = Timestamp(end);
            moved += 1;
        }
    }
    moved
}

/// Longest interface name a record may carry (Linux's `IFNAMSIZ` less its terminator).
pub const MAX_INTERFACE: usize = 15;
/// Longest Community ID a record may carry (version 1 is 30 characters).
pub const MAX_COMMUNITY_ID: usize = 64;

/// Holds the strings an agent chooses to what a record can truthfully carry, and returns how many records had to
/// be changed: a record's observation point names the node whose batch it came in (the node the aggregator
/// authenticated, not one the record claims), an interface name longer than the kernel allows is cleared, and so
/// is an oversized Community ID. Every string the aggregator keeps is then bounded in length, and node names in
/// number by the nodes that authenticate.
pub fn sanitize_strings(records: &mut [FlowRecord], node: &str) -> u64 {
    let mut changed = 0;
    for r in records {
        let mut touched = false;
        if let Some(o) = &mut r.observed_at {
            if o.node != node {
                node.clone_into(&mut o.node);
                touched = true;
            }
            if o.interface.len() > MAX_INTERFACE {
                o.interface.clear();
                touched = true;
            }
        }
        if r.community_id.len() > MAX_COMMUNITY_ID {
            r.community_id.clear();
            touched = true;
        }
        changed += u64::from(touched);
    }
    changed
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

/// How long a batch body may take to arrive, from the end of its headers.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads a batch body: at most `limit` bytes within [`BODY_TIMEOUT`] (a slow or oversized sender holds no
/// memory or concurrency slot longer than that).
async fn read_body(s: &Shared, body: Body) -> Result<Bytes, Response> {
    let limit = s.max_body;
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => {
            s.telemetry.rejected(Rejection::SlowOrLargeBody);
            Err(ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a batch body is at most {limit} bytes (or it was cut short)"),
            )
            .into_response())
        }
        Err(_) => {
            s.telemetry.rejected(Rejection::SlowOrLargeBody);
            Err(ApiError(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the batch body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            )
            .into_response())
        }
    }
}

pub(crate) async fn ingest(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::Json<IngestReply>, Response> {
    // Headers first: a request that is refused on them is answered before its body is read.
    let declared =
        header_str(&headers, "content-length").and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > s.max_body as u64) {
        s.telemetry.rejected(Rejection::SlowOrLargeBody);
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a batch body is at most {} bytes", s.max_body),
        )
        .into_response());
    }
    let has_body = declared.is_none_or(|n| n > 0);
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
        if let (Some(seq), Some(oldest)) = (seq, oldest)
            && oldest > seq
        {
            return Err(bad(format!(
                "{HEADER_OLDEST} ({oldest}) is after the batch sent ({seq})"
            )));
        }
        if seq.is_none() && has_body && declared.is_some() {
            return Err(bad(format!("a batch needs {HEADER_SEQ}")));
        }
        Ok((node, epoch, seq, oldest, counters, node_addresses))
    })();
    let (node, epoch, seq, oldest, counters, node_addresses) = match request {
        Ok(r) => r,
        Err(e) => {
            s.telemetry.rejected(Rejection::BadRequest);
            return Err(e.into_response());
        }
    };
    if !s.ready.load(Ordering::Acquire) {
        s.telemetry.rejected(Rejection::NotReady);
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the cluster state is not loaded yet; retry".into(),
        )
        .into_response());
    }
    if let Some((since, why)) = s.store_health.failure() {
        s.telemetry.rejected(Rejection::StoreFailing);
        return Err(busy_or(
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the store fails since {since} ({why}): nothing more can be made durable, so nothing is \
                     taken; keep the batch and retry"
                ),
            ),
            true,
        ));
    }
    let body = read_body(&s, body).await?;
    if seq.is_none() && !body.is_empty() {
        s.telemetry.rejected(Rejection::BadRequest);
        return Err(bad(format!("a batch needs {HEADER_SEQ}")).into_response());
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
            s.telemetry.rejected(Rejection::BadRequest);
            Err(bad(e.to_string()).into_response())
        }
        Err(e @ BatchError::TooFar { .. }) => {
            s.telemetry.rejected(Rejection::SequenceJump);
            Err(ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()).into_response())
        }
        Err(e @ BatchError::Poisoned) => Err(internal(e.to_string()).into_response()),
    }
}

/// Why a batch was not applied.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_an_agent_chooses_are_bounded_and_name_the_batch_s_node() {
        let mut r = crate::test_support::tcp([10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 2, 0, 1);
        r.community_id = "1:LQU9qZlK+B5F3KDmev6m5PMibrg=".into();
        r.observed_at = Some(weir_model::ObservationPoint {
            node: "node-a".into(),
            interface: "veth1234abcd".into(),
            direction: weir_model::Direction::FromPod,
        });
        let fine = r.clone();
        let mut other_node = r.clone();
        if let Some(o) = &mut other_node.observed_at {
            o.node = "node-b".into();
        }
        let mut long = r.clone();
        if let Some(o) = &mut long.observed_at {
            o.interface = "x".repeat(10_000);
        }
        long.community_id = "y".repeat(1 << 20);
        let mut records = vec![fine.clone(), other_node, long];
        assert_eq!(sanitize_strings(&mut records, "node-a"), 2);
        assert_eq!(records[0], fine);
        assert_eq!(records[1], fine, "the batch's node, not the one claimed");
        let o = records[2]
            .observed_at
            .clone()
            .unwrap_or_else(|| panic!("kept"));
        assert_eq!((o.node.as_str(), o.interface.as_str()), ("node-a", ""));
        assert!(records[2].community_id.is_empty());
    }

    #[test]
    fn record_times_are_held_to_the_aggregator_s_clock() {
        let now = Timestamp(1_000_000 * 1_000_000_000);
        let s = 1_000_000_000;
        let record = |start: i64, end: i64| {
            crate::test_support::tcp([10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 2, start, end)
        };
        let mut records = vec![
            record(now.0 - 20 * s, now.0 - 10 * s),
            // Dated in 2262 by a broken or hostile clock.
            record(i64::MAX - s, i64::MAX),
            // Dated long ago: left as it is.
            record(s, 2 * s),
            // Before 1970, ending before it started.
            record(-5 * s, -10 * s),
        ];
        assert_eq!(clamp_times(&mut records, now), 2);
        // In range: untouched.
        assert_eq!(records[0].end.0 - records[0].start.0, 10 * s);
        // From the far future: at the skew bound, not later.
        assert_eq!(records[1].end.0, now.0 + 300 * s);
        assert!(records[1].start <= records[1].end);
        // From long ago: as it was (its time says which pod held the address).
        assert_eq!((records[2].start.0, records[2].end.0), (s, 2 * s));
        assert_eq!((records[3].start.0, records[3].end.0), (0, 0));
    }
}

#[derive(Debug, thiserror::Error)]
enum BatchError {
    /// The body could not be framed: the agent's fault, not retryable as it is.
    #[error("the batch body is unreadable: {0}")]
    Body(#[source] weir_model::wire::WireError),
    /// The batch jumps too far past the run's last applied one.
    #[error(
        "batch {seq} jumps more than {} batches past the last one applied ({applied}); the run expects batch {expected}",
        crate::admission::MAX_SEQ_JUMP
    )]
    TooFar {
        /// The batch sent.
        seq: u64,
        /// The last applied.
        applied: u64,
        /// The batch expected.
        expected: u64,
    },
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
        if !core.agents.contains_key(&key) {
            s.telemetry.runs_forgotten(core.make_room_for_run(&node));
        }
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
    let mut core = s.lock_core(LockSite::Ingest).ok_or(BatchError::Poisoned)?;
    core.engine.watch_node(&node);
    let (applied, acked) = cursor(&mut core);
    let reply = |applied, expected| IngestReply {
        applied,
        acked,
        expected,
    };
    match admit(applied, seq, oldest) {
        Admission::Heartbeat => {
            s.telemetry.batch(BatchResult::Heartbeat);
            return Ok(reply(applied, None));
        }
        Admission::Duplicate => {
            s.telemetry.batch(BatchResult::Duplicate);
            return Ok(reply(applied, None));
        }
        Admission::Resend { expected } => {
            s.telemetry.batch(BatchResult::OutOfOrder);
            return Ok(reply(applied, Some(expected)));
        }
        Admission::TooFar { expected } => {
            return Err(BatchError::TooFar {
                seq: seq.unwrap_or_default(),
                applied,
                expected,
            });
        }
        Admission::Apply { .. } => {}
    }
    // Parsing, attribution and verdicts do not need the lock: only counting does.
    let kit = core.engine.judge_kit();
    drop(core);
    let (mut records, malformed) = parse_records(format, body).map_err(BatchError::Body)?;
    s.telemetry.clamped(clamp_times(&mut records, now));
    s.telemetry.sanitized(sanitize_strings(&mut records, &node));
    s.telemetry.malformed(malformed);
    let judged = kit.judge(records);
    let mut core = s.lock_core(LockSite::Ingest).ok_or(BatchError::Poisoned)?;
    // Another request of the same agent run may have got there first.
    let (applied, acked) = cursor(&mut core);
    let (seq, missed) = match admit(applied, seq, oldest) {
        Admission::Apply { missed } => (seq.unwrap_or(applied + 1), missed),
        _ => {
            s.telemetry.batch(BatchResult::Duplicate);
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
            let (mut records, _) = parse_records(format, body).map_err(BatchError::Body)?;
            clamp_times(&mut records, now);
            sanitize_strings(&mut records, &node);
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
    s.telemetry.batch(BatchResult::Applied);
    s.telemetry.records(n);
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

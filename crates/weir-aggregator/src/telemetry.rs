//! The aggregator's own events, counted where they happen: each is a typed event (a stage and its outcome or
//! reason) on a metric family registered once, when the aggregator starts. What only the engine, the cluster
//! source or the agents know is read at scrape time by a collector registered with the same registry
//! (`crate::metrics`).

use std::sync::Mutex;

use prometheus_client::collector::Collector;
use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// What became of an agent's request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BatchResult {
    /// A batch applied.
    Applied,
    /// A batch already applied (acknowledged again).
    Duplicate,
    /// A batch after a gap (answered with where to resume).
    OutOfOrder,
    /// A request without a batch.
    Heartbeat,
}

/// Why an ingest request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// No or a wrong token.
    Unauthorized,
    /// Bad headers, or a body that cannot be framed.
    BadRequest,
    /// The cluster state was still loading.
    NotReady,
    /// A valid credential that may not send this request (another node's token, not the agents' account).
    Forbidden,
    /// The credential could not be checked (the API server was unreachable or too many were being reviewed).
    AuthUnavailable,
    /// As many batches as the aggregator takes at once were being applied.
    Busy,
    /// The body did not arrive within the time allowed, or was larger than allowed.
    SlowOrLargeBody,
    /// A batch number far past the run's last applied one.
    SequenceJump,
    /// The store fails: nothing more can be made durable.
    StoreFailing,
}

/// Where the engine's lock is taken, for the time it is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LockSite {
    /// Ingest: admitting a batch, or counting a judged one.
    Ingest,
    /// A checkpoint collecting its changes, or acknowledging after it.
    Checkpoint,
    /// An API, UI or metrics read.
    Read,
    /// A new policy set installed.
    Cluster,
}

/// What became of an alert sent to the webhook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WebhookResult {
    /// Taken by the receiver.
    Sent,
    /// Not taken after every retry, or did not fit the queue.
    Failed,
}

/// Label values in snake_case, as the metrics have always shown them.
macro_rules! label_values {
    ($($t:ty { $($v:ident => $name:literal),* $(,)? })*) => {$(
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
                encoder.write_str(match self { $(Self::$v => $name),* })
            }
        }
    )*};
}

label_values! {
    BatchResult {
        Applied => "applied",
        Duplicate => "duplicate",
        OutOfOrder => "out_of_order",
        Heartbeat => "heartbeat",
    }
    Rejection {
        Unauthorized => "unauthorized",
        BadRequest => "bad_request",
        NotReady => "not_ready",
        Forbidden => "forbidden",
        AuthUnavailable => "auth_unavailable",
        Busy => "busy",
        SlowOrLargeBody => "slow_or_large_body",
        SequenceJump => "sequence_jump",
        StoreFailing => "store_failing",
    }
    LockSite {
        Ingest => "ingest",
        Checkpoint => "checkpoint",
        Read => "read",
        Cluster => "cluster",
    }
    WebhookResult {
        Sent => "sent",
        Failed => "failed",
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BatchLabel {
    result: BatchResult,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WebhookLabel {
    result: WebhookResult,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TableLabel {
    table: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SiteLabel {
    site: LockSite,
}

/// Lock-hold buckets: 10 µs to 3 s, about three per decade.
fn lock_histogram() -> Histogram {
    Histogram::new([
        1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0,
    ])
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: Rejection,
}

/// The aggregator's counters and the registry they are registered in (once).
#[derive(Debug)]
pub struct Telemetry {
    registry: Mutex<Registry>,
    batches: Family<BatchLabel, Counter>,
    rejected: Family<ReasonLabel, Counter>,
    records: Counter,
    malformed: Counter,
    clamped: Counter,
    sanitized: Counter,
    runs_forgotten: Counter,
    checkpoints: Counter,
    checkpoint_failures: Counter,
    checkpoint_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    webhook: Family<WebhookLabel, Counter>,
    stream_lagged: Counter,
    lock_held: Family<SiteLabel, Histogram, fn() -> Histogram>,
    quarantined: Family<TableLabel, Counter>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

impl Telemetry {
    /// Every family registered, at zero.
    pub fn new() -> Telemetry {
        let t = Telemetry {
            registry: Mutex::new(Registry::with_prefix("weir")),
            batches: Family::default(),
            rejected: Family::default(),
            records: Counter::default(),
            malformed: Counter::default(),
            clamped: Counter::default(),
            sanitized: Counter::default(),
            runs_forgotten: Counter::default(),
            checkpoints: Counter::default(),
            checkpoint_failures: Counter::default(),
            checkpoint_seconds: Counter::default(),
            webhook: Family::default(),
            stream_lagged: Counter::default(),
            lock_held: Family::new_with_constructor(lock_histogram),
            quarantined: Family::default(),
        };
        // Every label value shows from the start, so a rate over a missing series is never needed.
        for r in [
            BatchResult::Applied,
            BatchResult::Duplicate,
            BatchResult::OutOfOrder,
            BatchResult::Heartbeat,
        ] {
            let _ = t.batches.get_or_create(&BatchLabel { result: r });
        }
        for r in [
            Rejection::Unauthorized,
            Rejection::BadRequest,
            Rejection::NotReady,
            Rejection::Forbidden,
            Rejection::AuthUnavailable,
            Rejection::Busy,
            Rejection::SlowOrLargeBody,
            Rejection::SequenceJump,
            Rejection::StoreFailing,
        ] {
            let _ = t.rejected.get_or_create(&ReasonLabel { reason: r });
        }
        for site in [
            LockSite::Ingest,
            LockSite::Checkpoint,
            LockSite::Read,
            LockSite::Cluster,
        ] {
            let _ = t.lock_held.get_or_create(&SiteLabel { site });
        }
        for r in [WebhookResult::Sent, WebhookResult::Failed] {
            let _ = t.webhook.get_or_create(&WebhookLabel { result: r });
        }
        if let Ok(mut r) = t.registry.lock() {
            r.register(
                "ingest_batches",
                "Agent batches by outcome",
                t.batches.clone(),
            );
            r.register(
                "ingest_rejected_requests",
                "Ingest requests refused, by reason",
                t.rejected.clone(),
            );
            r.register("ingest_records", "Flow records applied", t.records.clone());
            r.register(
                "ingest_malformed_records",
                "Lines of agent batches that were not flow records (skipped)",
                t.malformed.clone(),
            );
            r.register(
                "ingest_clamped_records",
                "Flow records dated more than 5 minutes ahead of the aggregator's clock (or before 1970), moved \
                 to that bound",
                t.clamped.clone(),
            );
            r.register(
                "ingest_sanitized_records",
                "Flow records carrying another node's name than their batch's (set to the batch's), an interface \
                 name over 15 bytes or a Community ID over 64 (cleared)",
                t.sanitized.clone(),
            );
            r.register(
                "agent_runs_forgotten",
                "Agent runs forgotten: beyond 4 per node (the least recently heard) or not heard from within the \
                 retention",
                t.runs_forgotten.clone(),
            );
            r.register(
                "store_checkpoints",
                "Checkpoints written to the database",
                t.checkpoints.clone(),
            );
            r.register(
                "store_checkpoint_failures",
                "Checkpoints that failed (their batches stay unacknowledged)",
                t.checkpoint_failures.clone(),
            );
            r.register(
                "store_quarantined_rows",
                "Stored rows that did not parse at start, moved to the quarantine table, by the table they were in",
                t.quarantined.clone(),
            );
            r.register(
                "store_checkpoint_seconds",
                "Time spent writing checkpoints",
                t.checkpoint_seconds.clone(),
            );
            r.register(
                "alert_webhook_alerts",
                "Alerts sent to the webhook, by result",
                t.webhook.clone(),
            );
            r.register(
                "engine_lock_hold_seconds",
                "How long the engine's lock was held, by where it was taken (ingest, ingest and reads wait on it)",
                t.lock_held.clone(),
            );
            r.register(
                "stream_lagged_events",
                "Events skipped for stream subscribers that fell behind",
                t.stream_lagged.clone(),
            );
        }
        t
    }

    /// Registers the scrape-time collector (once, when the shared state exists).
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        if let Ok(mut r) = self.registry.lock() {
            r.register_collector(collector);
        }
    }

    /// The OpenMetrics text of everything registered; `None` when the registry's lock is poisoned.
    pub fn encode(&self) -> Option<String> {
        let r = self.registry.lock().ok()?;
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).ok()?;
        Some(out)
    }

    /// Whether a panic left the registry unusable.
    pub fn is_poisoned(&self) -> bool {
        self.registry.is_poisoned()
    }

    /// An agent request's outcome.
    pub fn batch(&self, result: BatchResult) {
        self.batches.get_or_create(&BatchLabel { result }).inc();
    }

    /// A refused ingest request.
    pub fn rejected(&self, reason: Rejection) {
        self.rejected.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Records applied.
    pub fn records(&self, n: u64) {
        self.records.inc_by(n);
    }

    /// Batch lines that were not records.
    pub fn malformed(&self, n: u64) {
        self.malformed.inc_by(n);
    }

    /// Records whose times were moved inside the aggregator's clock.
    pub fn clamped(&self, n: u64) {
        self.clamped.inc_by(n);
    }

    /// Records whose agent-chosen strings were held to bounds.
    pub fn sanitized(&self, n: u64) {
        self.sanitized.inc_by(n);
    }

    /// Agent runs forgotten.
    pub fn runs_forgotten(&self, n: u64) {
        self.runs_forgotten.inc_by(n);
    }

    /// A checkpoint written.
    pub fn checkpoint(&self) {
        self.checkpoints.inc();
    }

    /// Time spent writing a checkpoint, written or not.
    pub fn checkpoint_time(&self, seconds: f64) {
        self.checkpoint_seconds.inc_by(seconds);
    }

    /// Rows of `table` moved to the quarantine at start.
    pub fn quarantined(&self, table: &str, n: u64) {
        self.quarantined
            .get_or_create(&TableLabel {
                table: table.to_owned(),
            })
            .inc_by(n);
    }

    /// A checkpoint that failed.
    pub fn checkpoint_failed(&self) {
        self.checkpoint_failures.inc();
    }

    /// An alert's fate at the webhook.
    pub fn webhook(&self, result: WebhookResult) {
        self.webhook.get_or_create(&WebhookLabel { result }).inc();
    }

    /// The engine's lock was held this long at `site`.
    pub fn lock_held(&self, site: LockSite, seconds: f64) {
        self.lock_held
            .get_or_create(&SiteLabel { site })
            .observe(seconds);
    }

    /// Events a stream subscriber missed.
    pub fn stream_lagged(&self, n: u64) {
        self.stream_lagged.inc_by(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_registered_once_and_counts_its_events() {
        let t = Telemetry::new();
        t.batch(BatchResult::Applied);
        t.batch(BatchResult::Applied);
        t.rejected(Rejection::Unauthorized);
        t.records(7);
        t.checkpoint_time(0.5);
        t.webhook(WebhookResult::Failed);
        t.lock_held(LockSite::Ingest, 0.002);
        let text = t.encode().unwrap_or_default();
        for line in [
            "weir_ingest_batches_total{result=\"applied\"} 2",
            "weir_ingest_batches_total{result=\"out_of_order\"} 0",
            "weir_ingest_rejected_requests_total{reason=\"unauthorized\"} 1",
            "weir_ingest_records_total 7",
            "weir_store_checkpoint_seconds_total 0.5",
            "weir_alert_webhook_alerts_total{result=\"failed\"} 1",
            "weir_engine_lock_hold_seconds_bucket{le=\"0.003\",site=\"ingest\"} 1",
            "weir_engine_lock_hold_seconds_count{site=\"read\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert_eq!(
            text.matches("# TYPE weir_ingest_batches counter").count(),
            1
        );
        // Encoding twice gives the same families: nothing is registered per scrape.
        assert_eq!(t.encode().unwrap_or_default(), text);
    }
}

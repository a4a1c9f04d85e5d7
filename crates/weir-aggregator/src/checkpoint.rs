//! Checkpoints: what changed, written to the store by one task, which then acknowledges the batches it covers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir_model::Timestamp;

use crate::state::Shared;
use crate::store::Cursor;
use crate::telemetry::LockSite;

/// Collects a checkpoint under the lock; after it is written, acknowledges the batches it covers.
pub async fn checkpoint_loop(
    s: Arc<Shared>,
    store: Arc<Mutex<crate::store::Store>>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures: u32 = 0;
    loop {
        if failures == 0 {
            tick.tick().await;
        } else {
            // A failing store is given room: each attempt rewrites everything, so they come ever less often
            // (twice the wait each time, up to eight intervals and at most 30 s).
            tokio::time::sleep(backoff(every, failures)).await;
            tick.reset();
        }
        // A failure is counted and reported inside; the next attempt writes everything again.
        match checkpoint_once(&s, &store).await {
            Ok(()) => failures = 0,
            Err(_) => failures = failures.saturating_add(1),
        }
    }
}

/// The wait before the next checkpoint after `failures` failed ones in a row.
pub fn backoff(every: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.min(3);
    every
        .saturating_mul(factor)
        .min(Duration::from_secs(30))
        .max(every.min(Duration::from_secs(30)))
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
        let Some(mut core) = s.lock_core(LockSite::Checkpoint) else {
            return Err(CheckpointError::Poisoned("engine"));
        };
        core.engine.tick(now);
        let horizon = Timestamp(
            now.0
                .saturating_sub(weir_model::duration_nanos(core.engine.config().retention)),
        );
        let pruned = core.prune_runs(horizon);
        s.telemetry.runs_forgotten(pruned);
        let deliveries = core.engine.take_deliveries();
        let (edges, alerts, flows) = core.engine.take_changes();
        let forgotten = core.engine.take_forgotten();
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
                forgotten,
            },
            covered,
        )
    };
    // Given back to the engine if the checkpoint fails, for the next one to delete.
    let forgotten = checkpoint.forgotten.clone();
    let store = Arc::clone(store);
    let started = std::time::Instant::now();
    let written = tokio::task::spawn_blocking(move || {
        store
            .lock()
            .map_err(|_| CheckpointError::Poisoned("store"))
            .and_then(|mut st| Ok(st.write(&checkpoint, now)?))
    })
    .await;
    s.telemetry.checkpoint_time(started.elapsed().as_secs_f64());
    let failure = match written {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(e) => Some(CheckpointError::Task(e)),
    };
    match failure {
        None => {
            s.telemetry.checkpoint();
            s.store_health.recovered();
            if let Some(mut core) = s.lock_core(LockSite::Checkpoint) {
                for (key, applied) in covered {
                    if let Some(a) = core.agents.get_mut(&key) {
                        a.acked = a.acked.max(applied);
                    }
                }
            }
            Ok(())
        }
        Some(message) => {
            s.telemetry.checkpoint_failed();
            s.store_health.failed(message.to_string());
            tracing::error!("a checkpoint failed: {message}; batches stay unacknowledged");
            if let Some(mut core) = s.lock_core(LockSite::Checkpoint) {
                core.engine.mark_all_dirty();
                core.engine.keep_forgotten(forgotten);
            }
            Err(message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn failed_checkpoints_back_off_to_eight_intervals_or_30_s() {
        let s = Duration::from_secs;
        let waits: Vec<_> = (1..6).map(|n| backoff(s(1), n)).collect();
        assert_eq!(waits, [s(2), s(4), s(8), s(8), s(8)]);
        assert_eq!(backoff(s(10), 4), s(30));
        assert_eq!(backoff(s(60), 1), s(30));
    }
}

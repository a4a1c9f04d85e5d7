//! weir's node agent.
//!
//! [`capture`] reads the host side of pod veths into flow records (the engine `weir capture` prints from);
//! [`export`] streams them to the aggregator in numbered batches that are kept until the aggregator has stored
//! them durably, so neither a network failure nor an aggregator restart loses a record, and every record that
//! is dropped anyway (kernel ring full, agent buffer full) is counted and reported. [`run`] puts the two
//! together with a small HTTP server for `/metrics`, `/healthz` and `/readyz`.

#![deny(missing_docs)]

pub mod capture;
pub mod export;
mod serve;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir_capture::LiveError;
use weir_model::ingest::AgentCounters;

pub use capture::{
    Backend, Capture, CaptureConfig, CaptureCounters, CaptureEvent, InterfaceSummary,
};
pub use export::{
    BATCH_BYTES, Buffer, ExportConfig, ExportCounters, ExportError, Exporter, SendError,
    WireFormat, install_crypto_provider, read_token,
};

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The exporter could not be set up.
    #[error("setting up the exporter: {0}")]
    Export(#[from] ExportError),
    /// The metrics and health address could not be listened on.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Capture could not go on at all (no permission on any interface).
    #[error("{0}")]
    Capture(#[from] LiveError),
    /// Sending stopped for good.
    #[error("sending: {0}")]
    Send(#[from] SendError),
    /// The send buffer's lock was poisoned by a panic: records could have been lost uncounted, so the agent
    /// stops (and is restarted) rather than go on.
    #[error("the send buffer is unusable (a thread panicked while holding it)")]
    Poisoned,
    /// The sending task panicked (a bug); what it had not sent is counted as unacknowledged.
    #[error("the sending task panicked")]
    SenderPanicked,
}

/// Everything `weir agent` needs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// What to capture.
    pub capture: CaptureConfig,
    /// Where to send it.
    pub export: ExportConfig,
    /// Where to serve `/metrics`, `/healthz` and `/readyz`.
    pub listen: Option<SocketAddr>,
    /// How long to keep sending after a stop before giving up on unacked records.
    pub drain: Duration,
}

/// What a finished agent run did.
#[derive(Clone, Debug, Default)]
pub struct AgentSummary {
    /// The counters at the end.
    pub counters: AgentCounters,
    /// Records acknowledged by the aggregator.
    pub acked: u64,
    /// Records the aggregator had not acknowledged when the drain time ran out (not known to be stored).
    pub unacked: u64,
}

/// The counters an agent reports, read from the capture and the exporter.
pub fn agent_counters(capture: &CaptureCounters, export: &ExportCounters) -> AgentCounters {
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    AgentCounters {
        packets: get(&capture.packets),
        kernel_drops: get(&capture.kernel_drops),
        table_evictions: get(&capture.table_evictions),
        skipped_packets: get(&capture.skipped_packets),
        records: get(&capture.records),
        buffer_drops: get(&export.buffer_drops),
        interfaces: get(&capture.interfaces),
    }
}

/// Runs the agent until `stop` is set (or the capture's deadline passes), then flushes the flow tables and
/// sends what is left for up to `drain`. Capture runs on threads of its own; sending and the metrics server on
/// `runtime`, which the caller provides (one worker thread is plenty) and which must not be the caller's own.
pub fn run(
    config: AgentConfig,
    stop: Arc<AtomicBool>,
    runtime: &tokio::runtime::Handle,
) -> Result<AgentSummary, AgentError> {
    let exporter = Exporter::new(config.export.clone())?;
    tracing::info!(
        "node {}, sending to {} (run {})",
        config.export.node,
        config.export.aggregator,
        exporter.epoch()
    );
    let capture = Capture::start(config.capture.clone());
    let capture_counters = capture.counters();
    let capture_stop = capture.stop_flag();
    let export_stats = Arc::new(ExportCounters::default());
    let buffer = Arc::new(Mutex::new(Buffer::new(
        config.export.buffer_bytes,
        config.export.batch_records,
        config.export.wire,
    )));
    let fatal: Arc<Mutex<Option<AgentError>>> = Arc::new(Mutex::new(None));
    let capture_done = Arc::new(AtomicBool::new(false));

    // Capture events into the buffer, on their own thread: the workers never wait for the network.
    let bridge = {
        let events = capture.events().clone();
        let buffer = Arc::clone(&buffer);
        let stats = Arc::clone(&export_stats);
        let fatal = Arc::clone(&fatal);
        let stop = Arc::clone(&stop);
        let capture_done = Arc::clone(&capture_done);
        std::thread::spawn(move || {
            for event in events {
                match event {
                    CaptureEvent::Records(records) => match buffer.lock() {
                        Ok(mut b) => {
                            let dropped = b.push(&records);
                            stats.buffer_drops.fetch_add(dropped, Ordering::Relaxed);
                        }
                        Err(_) => {
                            // Counted as dropped, and the agent stops: it cannot keep records safely.
                            stats
                                .buffer_drops
                                .fetch_add(records.len() as u64, Ordering::Relaxed);
                            if let Ok(mut f) = fatal.lock() {
                                f.get_or_insert(AgentError::Poisoned);
                            }
                            stop.store(true, Ordering::Relaxed);
                        }
                    },
                    CaptureEvent::Closed(_) => {}
                    CaptureEvent::Warning(w) => tracing::warn!("{w}"),
                    CaptureEvent::Fatal(e) => {
                        if let Ok(mut f) = fatal.lock() {
                            f.get_or_insert(AgentError::Capture(e));
                        }
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            }
            capture_done.store(true, Ordering::Relaxed);
        })
    };

    let result: Result<(), AgentError> = runtime.block_on(async {
        let health = serve::Health {
            capture: Arc::clone(&capture_counters),
            export: Arc::clone(&export_stats),
            stopping: Arc::clone(&stop),
        };
        if let Some(addr) = config.listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::Listen { addr, source })?;
            tokio::spawn(serve::serve(listener, health));
        }
        // The exporter stops once the capture has flushed its tables and everything is acked (or the drain
        // time is up).
        let send_stop = Arc::new(AtomicBool::new(false));
        let sender = {
            let buffer = Arc::clone(&buffer);
            let stats = Arc::clone(&export_stats);
            let capture_counters = Arc::clone(&capture_counters);
            let send_stop = Arc::clone(&send_stop);
            let drain = config.drain;
            tokio::spawn(async move {
                let counters = || agent_counters(&capture_counters, &stats);
                exporter
                    .run(&buffer, counters, &stats, &send_stop, drain)
                    .await
            })
        };
        loop {
            let deadline_passed = config
                .capture
                .deadline
                .is_some_and(|d| std::time::Instant::now() >= d);
            if stop.load(Ordering::Relaxed) || deadline_passed {
                capture_stop.store(true, Ordering::Relaxed);
            }
            if capture_done.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        send_stop.store(true, Ordering::Relaxed);
        match sender.await {
            Ok(Err(e)) => Err(AgentError::Send(e)),
            Ok(Ok(())) => Ok(()),
            Err(_) => Err(AgentError::SenderPanicked),
        }
    });
    capture.stop();
    let _ = bridge.join();
    result?;
    match fatal.lock() {
        Ok(mut f) => {
            if let Some(e) = f.take() {
                return Err(e);
            }
        }
        Err(_) => return Err(AgentError::Poisoned),
    }
    let unacked = buffer
        .lock()
        .map(|b| b.records())
        .map_err(|_| AgentError::Poisoned)?;
    Ok(AgentSummary {
        counters: agent_counters(&capture_counters, &export_stats),
        acked: export_stats.acked_records.load(Ordering::Relaxed),
        unacked,
    })
}

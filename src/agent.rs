//! `weir agent`: live capture on this node's pod veths, streamed to the aggregator.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use weir_agent::{AgentConfig, ExportConfig, WireFormat};

use crate::capture::{Backend, capture_config, node_name};
use crate::duration::parse_duration;

/// The `--wire` choices.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Wire {
    Binary,
    Json,
}

#[derive(Args)]
pub struct AgentArgs {
    /// The aggregator's base URL, such as `http://weir-aggregator.weir-system:9480`.
    #[arg(long, env = "WEIR_AGGREGATOR")]
    aggregator: String,
    /// This node's name (in a DaemonSet: from the downward API). Default: the host name.
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
    /// Interfaces to capture on (`*` is any run of characters). Repeatable. Default: the host-side veth names
    /// of the common CNIs.
    #[arg(long = "interfaces", short = 'i', value_name = "PATTERN")]
    interfaces: Vec<String>,
    /// A file holding the bearer token the aggregator expects: in a cluster, the pod's projected ServiceAccount
    /// token (audience weir); elsewhere the shared token. Read again every minute (the kubelet rotates it).
    #[arg(long, env = "WEIR_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// PEM certificate(s) the aggregator's TLS certificate must chain to (for `https://` URLs).
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// Serve `/metrics`, `/healthz` and `/readyz` here (`none` to turn off).
    #[arg(long, default_value = "0.0.0.0:9479")]
    listen: String,
    /// Report flows that go on every this often (the longest a flow waits before the aggregator hears of it).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    active_timeout: Duration,
    /// Send a batch at least this often.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    flush: Duration,
    /// Most flow records per batch.
    #[arg(long, default_value_t = 2000)]
    batch: u64,
    /// Most MiB of records held while the aggregator is unreachable; beyond it the oldest are dropped (and
    /// counted).
    #[arg(long, default_value_t = 64)]
    buffer_mb: usize,
    /// How batches travel: `binary` (compact) or `json` (flow-record JSON lines, readable for debugging).
    #[arg(long, value_enum, default_value = "binary")]
    wire: Wire,
    /// Stop after this long (default: until SIGINT/SIGTERM).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// On SIGTERM (or SIGINT, or the end of `--duration`): how long to keep sending what is held and waiting
    /// for the aggregator's acknowledgements before exiting. Keep it below the pod's
    /// terminationGracePeriodSeconds (30 s by default), or the kubelet's SIGKILL comes first.
    #[arg(long, env = "WEIR_DRAIN", default_value = "20s", value_parser = parse_duration)]
    drain: Duration,
    /// Capture threads (a fanout group per interface).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
    /// Ring size per interface, in MiB.
    #[arg(long, default_value_t = 4)]
    ring_mb: u32,
    /// Bytes kept of each packet.
    #[arg(long, default_value_t = 256)]
    snaplen: u32,
    /// How packets are read.
    #[arg(long, value_enum, default_value_t = Backend::Ring)]
    backend: Backend,
}

/// Reads a token file: the first line, trimmed; an empty file is an error.
pub fn read_token(path: &std::path::Path) -> Result<String> {
    weir_agent::read_token(path)
        .with_context(|| format!("reading the token file {}", path.display()))
}

/// Sets the flag on SIGINT, SIGTERM and SIGHUP. A handler is installed for each, so the signal also reaches
/// weir when it runs as PID 1 of a container (the kernel drops signals PID 1 has no handler for).
pub fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))
        .context("installing the signal handler")?;
    Ok(stop)
}

pub fn run(args: AgentArgs) -> Result<ExitCode> {
    if !args.aggregator.starts_with("http://") && !args.aggregator.starts_with("https://") {
        bail!(
            "--aggregator {:?} is not an http:// or https:// URL",
            args.aggregator
        );
    }
    if args.backend == Backend::Pnet && args.threads > 1 {
        bail!("--backend pnet reads on one thread; drop --threads");
    }
    let listen: Option<SocketAddr> = match args.listen.as_str() {
        "none" | "" => None,
        text => Some(
            text.parse()
                .with_context(|| format!("--listen {text:?} is not an address:port"))?,
        ),
    };
    // Read once now, so a missing or empty file stops the agent at once; the exporter reads it again as it changes.
    if let Some(path) = &args.token_file {
        read_token(path)?;
    }
    let ca_cert = args
        .ca_cert
        .as_ref()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .transpose()?;
    let node = node_name(args.node.as_deref());
    let config = AgentConfig {
        capture: capture_config(
            &args.interfaces,
            args.threads,
            args.backend,
            args.ring_mb,
            args.snaplen,
            args.active_timeout,
            &node,
            args.duration,
        ),
        export: ExportConfig {
            aggregator: args.aggregator.clone(),
            token_file: args.token_file.clone(),
            ca_cert,
            node,
            flush: args.flush,
            batch_records: args.batch,
            buffer_bytes: args.buffer_mb.saturating_mul(1 << 20),
            wire: match args.wire {
                Wire::Binary => WireFormat::Binary,
                Wire::Json => WireFormat::JsonLines,
            },
            max_backoff: Duration::from_secs(5),
        },
        listen,
        drain: args.drain,
    };
    let stop = stop_on_signals()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let summary = weir_agent::run(config, stop, runtime.handle())?;
    let c = summary.counters;
    eprintln!(
        "weir agent: {} packets, {} flow records, {} acknowledged by the aggregator, {} unacknowledged at exit; \
         dropped: {} packets by the kernel, {} records for lack of buffer",
        c.packets, c.records, summary.acked, summary.unacked, c.kernel_drops, c.buffer_drops
    );
    Ok(if summary.unacked > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

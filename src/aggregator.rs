//! `weir aggregator`: ingest from agents, judging against the cluster's policies, alerts, API and metrics.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use weir_aggregator::webhook::{Webhook, WebhookFormat};
use weir_aggregator::{
    AgentAuthConfig, AggregatorConfig, ClusterConfig, EngineConfig, TlsConfig, Token,
};
use weir_model::Cidr;

use crate::agent::{read_token, stop_on_signals};
use crate::analyze::parse_cidr;
use crate::duration::parse_duration;
use crate::snapshot::{self, KubeArgs};

#[derive(Args)]
pub struct AggregatorArgs {
    /// Judge against cluster snapshot files instead of a live cluster (offline use and tests).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["kubeconfig", "context"])]
    cluster: Vec<PathBuf>,
    /// Where to listen.
    #[arg(long, default_value = "0.0.0.0:9480")]
    listen: SocketAddr,
    /// Take agents' flows on this separate listener (then --listen serves only the API, UI and metrics), so a
    /// NetworkPolicy can tell agents from readers by port.
    #[arg(long, value_name = "ADDR")]
    ingest_listen: Option<SocketAddr>,
    /// The data directory (a SQLite database: edges, baseline, alerts, recent flows, agent cursors).
    #[arg(long, default_value = "weir-data")]
    data: PathBuf,
    /// A file with the bearer token agents must present to send flows: one secret for every agent, so its holder
    /// can send as any node (in a cluster use `--agent-auth kubernetes`). At least 32 random bytes.
    #[arg(long, env = "WEIR_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// How agents prove who they are: `kubernetes` (each agent's projected ServiceAccount token, reviewed by the
    /// API server and bound to its pod's node: an agent can only send as its own node), `token` (--token-file)
    /// or `none` (anyone who reaches the ingest listener; allowed only on loopback unless
    /// --insecure-open-ingest). Default: `token` with --token-file, else `none`.
    #[arg(long, value_enum)]
    agent_auth: Option<AgentAuthArg>,
    /// The audience agents' ServiceAccount tokens are issued for (`--agent-auth kubernetes`).
    #[arg(long, default_value = "weir", value_name = "AUDIENCE")]
    agent_audience: String,
    /// The agents' ServiceAccount, NAMESPACE/NAME (`--agent-auth kubernetes`).
    #[arg(
        long,
        default_value = "weir-agent/weir-agent",
        value_name = "NAMESPACE/NAME"
    )]
    agent_service_account: String,
    /// Take flows from anyone who reaches a non-loopback ingest listener, without a credential.
    #[arg(long)]
    insecure_open_ingest: bool,
    /// A file with the bearer token readers of the API, the map and `/metrics` must present. At least 32 random
    /// bytes. Without it reads are open, which is allowed only on loopback unless --insecure-open-reads.
    #[arg(long)]
    read_token_file: Option<PathBuf>,
    /// Serve the API, the map and `/metrics` without a token on a non-loopback listener.
    #[arg(long)]
    insecure_open_reads: bool,
    /// Batches applied at once at most; more are answered 503 at once and the agents send them again.
    #[arg(long, default_value_t = 4)]
    ingest_concurrency: usize,
    /// TLS certificate chain (PEM); with --tls-key, the listener speaks HTTPS only.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// How long the baseline is learned from the first start on this data directory; afterwards allowed
    /// traffic on edges never seen raises `new-edge`.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    learn: Duration,
    /// Least time between two deliveries of one alert (its count goes on meanwhile).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    alert_repeat: Duration,
    /// The window scans are counted in.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    scan_window: Duration,
    /// Distinct destinations (address and port) that did not answer or were denied, in a window where most
    /// attempts went unanswered, that make a scan.
    #[arg(long, default_value_t = 20)]
    scan_min_targets: u64,
    /// Denied attempts from one source within the window that make a scan.
    #[arg(long, default_value_t = 20)]
    scan_min_denied: u64,
    /// POST every alert to this URL (with retries).
    #[arg(long)]
    webhook: Option<String>,
    /// The webhook's body.
    #[arg(long, value_enum, default_value_t = HookFormat::Weir)]
    webhook_format: HookFormat,
    /// Do not print alerts as JSON lines on standard output.
    #[arg(long)]
    no_alert_lines: bool,
    /// Write a checkpoint (and acknowledge agents' batches) this often.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    checkpoint: Duration,
    /// Keep edges, alerts and flows this long after they were last seen.
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    retention: Duration,
    /// Judged flows kept for the API (and across restarts).
    #[arg(long, default_value_t = 100_000)]
    recent_flows: usize,
    /// Most edges kept: at the cap the least recently seen tenth is forgotten (weir_evicted_total{kind="edge"}).
    #[arg(long, default_value_t = 200_000)]
    max_edges: usize,
    /// Outside (and unknown) addresses kept one by one per workload and direction; beyond that they are counted
    /// under their /24, /16, /8 (IPv6 /48, /32, /16), then 0.0.0.0/0.
    #[arg(long, default_value_t = 256)]
    outside_peers: usize,
    /// Most alerts kept: beyond it the least recently seen tenth is forgotten (weir_evicted_total{kind="alert"}).
    #[arg(long, default_value_t = 50_000)]
    max_alerts: usize,
    /// Address ranges that belong to the cluster besides the nodes' pod ranges. Repeatable.
    #[arg(long = "cluster-cidr", value_parser = parse_cidr)]
    cluster_cidrs: Vec<Cidr>,
    /// Largest batch body agents may send, in MiB (agents seal batches below 3 MiB; a binary batch decodes
    /// to about eight times its size).
    #[arg(long, default_value_t = 4)]
    max_body_mb: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AgentAuthArg {
    /// Projected ServiceAccount tokens, reviewed by the API server (TokenReview) and bound to the node.
    Kubernetes,
    /// One shared token (--token-file).
    Token,
    /// No credential.
    None,
}

/// A token from a file, refused unless it is a real secret.
fn secret(path: &std::path::Path, what: &str) -> Result<Token> {
    let text = read_token(path)?;
    Token::new(&text).map_err(|e| anyhow::anyhow!("{what} in {} is refused: {e}", path.display()))
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum HookFormat {
    /// weir's alert JSON.
    Weir,
    /// A Slack incoming-webhook message.
    Slack,
    /// Alertmanager's `POST /api/v2/alerts` body.
    Alertmanager,
}

pub fn run(args: AggregatorArgs, kube: &KubeArgs) -> Result<ExitCode> {
    let cluster = if args.cluster.is_empty() {
        ClusterConfig::Kubernetes {
            kubeconfig: kube.kubeconfig.clone(),
            context: kube.context.clone(),
        }
    } else {
        ClusterConfig::Snapshot(std::sync::Arc::new(snapshot::load(&args.cluster, kube)?))
    };
    if let Some(url) = &args.webhook
        && !url.starts_with("http://")
        && !url.starts_with("https://")
    {
        bail!("--webhook {url:?} is not an http:// or https:// URL");
    }
    let agent_auth = match (args.agent_auth, &args.token_file) {
        (Some(AgentAuthArg::Kubernetes), Some(_)) => {
            bail!(
                "--agent-auth kubernetes takes no --token-file: each agent presents its own token"
            )
        }
        (Some(AgentAuthArg::None), Some(_)) => bail!("--agent-auth none takes no --token-file"),
        (Some(AgentAuthArg::Kubernetes), None) => {
            if !args.cluster.is_empty() {
                bail!(
                    "--agent-auth kubernetes needs the live cluster (its API server reviews the agents' \
                     tokens); with --cluster snapshots, give agents a --token-file"
                );
            }
            let (namespace, name) = args
                .agent_service_account
                .split_once('/')
                .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
                .with_context(|| {
                    format!(
                        "--agent-service-account {:?} is not NAMESPACE/NAME",
                        args.agent_service_account
                    )
                })?;
            AgentAuthConfig::Kubernetes {
                audience: args.agent_audience.clone(),
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            }
        }
        (Some(AgentAuthArg::Token), None) => bail!("--agent-auth token needs --token-file"),
        (_, Some(path)) => AgentAuthConfig::Token(secret(path, "the agents' token")?),
        (Some(AgentAuthArg::None) | None, None) => AgentAuthConfig::Open,
    };
    let ingest_at = args.ingest_listen.unwrap_or(args.listen);
    if matches!(agent_auth, AgentAuthConfig::Open)
        && !ingest_at.ip().is_loopback()
        && !args.insecure_open_ingest
    {
        bail!(
            "agents' flows on {ingest_at} would be taken from anyone: use --agent-auth kubernetes (in a \
             cluster) or --token-file, listen on loopback, or say --insecure-open-ingest"
        );
    }
    let read_token = args
        .read_token_file
        .as_deref()
        .map(|p| secret(p, "the read token"))
        .transpose()?;
    if read_token.is_none() && !args.listen.ip().is_loopback() && !args.insecure_open_reads {
        bail!(
            "the API, the map and /metrics on {} would be open to anyone: give --read-token-file, listen on \
             loopback, or say --insecure-open-reads",
            args.listen
        );
    }
    let config = AggregatorConfig {
        cluster,
        listen: args.listen,
        ingest_listen: args.ingest_listen,
        data: args.data.clone(),
        engine: EngineConfig {
            cluster_ranges: args.cluster_cidrs.clone(),
            learn: args.learn,
            alert_repeat: args.alert_repeat,
            scan: weir_analysis::ScanRule {
                window: args.scan_window,
                min_targets: args.scan_min_targets,
                min_denied: args.scan_min_denied,
            },
            recent_flows: args.recent_flows.max(1),
            retention: args.retention,
            max_edges: args.max_edges.max(1),
            outside_peers: args.outside_peers.max(1),
            max_alerts: args.max_alerts.max(1),
            ..EngineConfig::default()
        },
        agent_auth,
        read_token,
        ingest_concurrency: args.ingest_concurrency.max(1),
        tls: match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(TlsConfig {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        },
        webhook: args.webhook.as_ref().map(|url| Webhook {
            url: url.clone(),
            format: match args.webhook_format {
                HookFormat::Weir => WebhookFormat::Weir,
                HookFormat::Slack => WebhookFormat::Slack,
                HookFormat::Alertmanager => WebhookFormat::Alertmanager,
            },
            attempts: 5,
        }),
        alerts_stdout: !args.no_alert_lines,
        checkpoint: args.checkpoint,
        max_body: args.max_body_mb.saturating_mul(1 << 20),
    };
    if matches!(config.agent_auth, AgentAuthConfig::Open) {
        eprintln!(
            "weir aggregator: warning: no agent credential: anyone who can reach {ingest_at} can send flows"
        );
    }
    let stop = stop_on_signals()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(weir_aggregator::serve(config, stop))?;
    Ok(ExitCode::SUCCESS)
}

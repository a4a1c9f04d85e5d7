//! weir's aggregator.
//!
//! Agents POST numbered batches of flow records to `/api/v1/ingest`; [`engine::Engine`] attributes and judges
//! them exactly as `weir analyze` does (the same [`weir_analysis::Analyzer`]) against the NetworkPolicies in
//! force at that moment, joins the views of a connection reported from both ends (denied yet delivered: the CNI
//! is not enforcing; sent but never arrived: dropped on the way), keeps workload edges and the learned baseline,
//! and raises alerts (`policy-violation`, `enforcement-gap`, `new-edge`, `scan`) by the rules of
//! [`weir_analysis::alert_kinds`], deduplicated per edge and rate-limited. The edge book, scan detector and alert
//! book are weir-analysis's; the engine adds the join, the resolution cache and the recent flows.
//!
//! Modules, each depending only on those before it: `engine`; `store` (SQLite checkpoints, after which batches
//! are acknowledged, so a restart loses nothing); `state` (the shared core behind its mutex); `http` (errors and
//! authentication layers); `checkpoint`; [`ingest`] (batch admission by the pure `admission::admit`); `api`;
//! [`ui`]; [`metrics`]; [`webhook`]; and [`server`], which assembles each listener's routes. The cluster is
//! followed by [`weir_kube`] (kube-rs watchers) or read from a snapshot.

#![deny(missing_docs)]

mod admission;
mod api;
pub mod auth;
pub mod checkpoint;
pub mod engine;
mod fold;
mod http;
pub mod ingest;
mod join;
pub mod metrics;
mod rows;
pub mod server;
mod state;
pub mod store;
pub mod telemetry;
#[cfg(test)]
mod test_support;
pub mod ui;
mod views;
pub mod webhook;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;
use weir_cluster::ClusterState;
use weir_policy::PolicySet;

pub use auth::{Token, WeakToken};
pub use engine::{Engine, EngineConfig, Forgotten, StoredFlow};
pub use state::{AgentState, Core, Shared};
pub use weir_analysis::{EdgeKey, EdgeStats};
pub use weir_model::EndpointKey;

/// Where the cluster comes from.
pub enum ClusterConfig {
    /// A snapshot, already loaded.
    Snapshot(Arc<PolicySet>),
    /// A live cluster: the kubeconfig (default: in-cluster, then `$KUBECONFIG`, then `~/.kube/config`) and its
    /// context.
    Kubernetes {
        /// A kubeconfig file.
        kubeconfig: Option<PathBuf>,
        /// A context in it.
        context: Option<String>,
    },
    /// A live cluster through an already-built client (tests).
    Client(kube::Client),
}

/// TLS for the listener.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Everything `weir aggregator` needs.
pub struct AggregatorConfig {
    /// The cluster.
    pub cluster: ClusterConfig,
    /// Where to listen.
    pub listen: SocketAddr,
    /// A separate listener for agents' flows (then `listen` serves only the API, UI and metrics), so a
    /// NetworkPolicy can let agents and readers in on different ports.
    pub ingest_listen: Option<SocketAddr>,
    /// The data directory (SQLite database).
    pub data: PathBuf,
    /// Judging, baseline and alert settings.
    pub engine: EngineConfig,
    /// How agents prove who they are.
    pub agent_auth: AgentAuthConfig,
    /// Token readers must present (reads are open without one).
    pub read_token: Option<Token>,
    /// Batches applied at once at most; more are answered 503 (the agent sends them again).
    pub ingest_concurrency: usize,
    /// TLS.
    pub tls: Option<TlsConfig>,
    /// Where alerts are POSTed.
    pub webhook: Option<webhook::Webhook>,
    /// Alerts to standard output as JSON lines.
    pub alerts_stdout: bool,
    /// Checkpoint (and acknowledgement) interval.
    pub checkpoint: Duration,
    /// Largest ingest body.
    pub max_body: usize,
}

/// How agents prove who they are (see [`auth`]).
pub enum AgentAuthConfig {
    /// No credential: anyone who reaches the ingest listener may send as any node.
    Open,
    /// One shared token.
    Token(Token),
    /// Projected ServiceAccount tokens for `audience`, of ServiceAccount `namespace/name`, reviewed by the API
    /// server of the live cluster the aggregator follows.
    Kubernetes {
        /// The audience the agents' tokens are issued for.
        audience: String,
        /// The agents' ServiceAccount's namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
}

fn empty_set() -> Result<Arc<PolicySet>, ServeError> {
    Ok(Arc::new(PolicySet::new(Arc::new(ClusterState::default()))?))
}

/// Why the aggregator could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The data directory could not be created.
    #[error("creating the data directory {path}: {source}")]
    DataDirectory {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The store could not be opened, read or written.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The empty policy set the aggregator starts with could not be built (a bug).
    #[error("an empty policy set: {0}")]
    Policies(#[from] weir_policy::PolicyError),
    /// The cluster could not be reached.
    #[error(transparent)]
    Kube(#[from] weir_kube::KubeError),
    /// The TLS certificate or key could not be loaded.
    #[error("loading the TLS certificate {cert} and key {key}: {source}")]
    Tls {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Agents' tokens are to be reviewed by the API server, but the aggregator follows a snapshot.
    #[error(
        "agents' ServiceAccount tokens can only be reviewed with a live cluster: without one, give agents a \
         shared token (--token-file)"
    )]
    ReviewWithoutCluster,
    /// A listener failed.
    #[error("serving on {addr}: {source}")]
    Listen {
        /// Its address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The last checkpoint before stopping could not be written: what it held is not stored.
    #[error("stopping: the last checkpoint failed: {0}")]
    LastCheckpoint(#[from] checkpoint::CheckpointError),
}

/// Runs the aggregator until `stop` is set; writes a last checkpoint before returning. The caller provides the
/// runtime (a multi-threaded tokio runtime with I/O and time).
pub async fn serve(config: AggregatorConfig, stop: Arc<AtomicBool>) -> Result<(), ServeError> {
    install_crypto_provider();
    std::fs::create_dir_all(&config.data).map_err(|source| ServeError::DataDirectory {
        path: config.data.clone(),
        source,
    })?;
    let mut store = store::Store::open(
        &config.data,
        config.engine.recent_flows,
        config.engine.retention,
    )?;
    let now = weir_model::Timestamp::now();
    let restored = store.restore(now)?;
    let learning_started = restored.learning_started.unwrap_or(now);
    let mut engine = Engine::new(config.engine.clone(), empty_set()?, learning_started);
    let quarantined = restored.quarantined.clone();
    let restored_edges = restored.edges.len();
    let restored_alerts = restored.alerts.len();
    engine.restore(
        restored.edges,
        restored.alerts,
        restored.flows,
        restored.totals,
        now,
    );
    let agents = restored
        .cursors
        .into_iter()
        .map(|c| {
            (
                (c.node.clone(), c.epoch.clone()),
                state::AgentState {
                    node: c.node,
                    epoch: c.epoch,
                    applied: c.applied,
                    acked: c.applied,
                    missed_batches: 0,
                    counters: Default::default(),
                    last_seen: c.last_seen,
                },
            )
        })
        .collect();
    tracing::info!(
        "{} holds {restored_edges} edges and {restored_alerts} alerts; learning the baseline until {}",
        store.path().display(),
        engine.learning_ends()
    );
    let (alerts_tx, _) = broadcast::channel(4096);
    let (flows_tx, _) = broadcast::channel(16384);
    let webhook = config
        .webhook
        .clone()
        .map(|hook| (hook, tokio::sync::mpsc::channel(10_000)));
    let status = Arc::new(Mutex::new(weir_kube::ClusterStatus::default()));
    let (snapshot, client) = match config.cluster {
        ClusterConfig::Snapshot(set) => (Some(set), None),
        ClusterConfig::Kubernetes {
            kubeconfig,
            context,
        } => {
            let (client, _) =
                weir_kube::kube_client(kubeconfig.as_deref(), context.as_deref()).await?;
            (None, Some(client))
        }
        ClusterConfig::Client(client) => (None, Some(client)),
    };
    let agent_auth = match config.agent_auth {
        AgentAuthConfig::Open => auth::AgentAuth::Open,
        AgentAuthConfig::Token(token) => auth::AgentAuth::Token(token),
        AgentAuthConfig::Kubernetes {
            audience,
            namespace,
            name,
        } => match &client {
            Some(client) => auth::AgentAuth::Kubernetes(Box::new(auth::Reviewer::new(
                client.clone(),
                &audience,
                &namespace,
                &name,
            ))),
            None => return Err(ServeError::ReviewWithoutCluster),
        },
    };
    let shared = Arc::new(Shared {
        core: Mutex::new(Core { engine, agents }),
        alerts: alerts_tx,
        flows: flows_tx,
        telemetry: Default::default(),
        cluster: Arc::clone(&status),
        ready: AtomicBool::new(false),
        agent_auth,
        read_token: config.read_token.clone(),
        ingest_permits: Arc::new(tokio::sync::Semaphore::new(
            config.ingest_concurrency.max(1),
        )),
        max_body: config.max_body,
        sink: webhook.as_ref().map(|(_, (tx, _))| tx.clone()),
        alerts_stdout: config.alerts_stdout,
        secure_cookie: config.tls.is_some(),
        store_health: Default::default(),
        tasks: Default::default(),
        node_addresses: Default::default(),
    });
    for (table, n) in quarantined {
        shared.telemetry.quarantined(table, n);
    }
    shared
        .telemetry
        .register_collector(Box::new(metrics::ScrapeCollector(Arc::downgrade(&shared))));
    if let Some((hook, (_, rx))) = webhook {
        state::supervise(
            &shared,
            "webhook task",
            webhook::run(hook, rx, Arc::clone(&shared)),
        );
    }

    if let Some(set) = snapshot {
        if let Ok(mut s) = status.lock() {
            s.source = "snapshot".into();
            s.synced = true;
            s.generation = 1;
            s.updated_at = Some(now);
        }
        shared.set_policy(set);
    }
    if let Some(client) = client {
        spawn_watch(client, &shared, &status);
    }

    let store = Arc::new(Mutex::new(store));
    state::supervise(
        &shared,
        "checkpoint task",
        checkpoint::checkpoint_loop(Arc::clone(&shared), Arc::clone(&store), config.checkpoint),
    );
    let handle = axum_server::Handle::new();
    {
        let handle = handle.clone();
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            handle.graceful_shutdown(Some(Duration::from_secs(2)));
        });
    }
    let tls = match &config.tls {
        Some(tls) => Some(
            axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.cert, &tls.key)
                .await
                .map_err(|source| ServeError::Tls {
                    cert: tls.cert.clone(),
                    key: tls.key.clone(),
                    source,
                })?,
        ),
        None => None,
    };
    match config.ingest_listen {
        None => {
            let app = server::router(Arc::clone(&shared), server::Routes::All);
            serve_on(config.listen, "", tls, handle, app).await?;
        }
        Some(ingest) => {
            let api = server::router(Arc::clone(&shared), server::Routes::Api);
            let flows = server::router(Arc::clone(&shared), server::Routes::Ingest);
            tokio::try_join!(
                serve_on(config.listen, " (API)", tls.clone(), handle.clone(), api),
                serve_on(ingest, " (agents' flows)", tls, handle, flows),
            )?;
        }
    }
    checkpoint::checkpoint_once(&shared, &store).await?;
    tracing::info!(
        "stopped; the last checkpoint is written to {}",
        config.data.display()
    );
    Ok(())
}

/// Serves `app` on `addr` (HTTPS when `tls` is given) until `handle` shuts it down.
async fn serve_on(
    addr: SocketAddr,
    role: &str,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    handle: axum_server::Handle<SocketAddr>,
    app: axum::Router,
) -> Result<(), ServeError> {
    let service = app.into_make_service();
    let served = match tls {
        Some(tls) => {
            let mut server = axum_server::bind_rustls(addr, tls)
                .handle(handle)
                .http1_only();
            harden(server.http_builder());
            tracing::info!("listening on {addr}{role} (TLS)");
            server.serve(service).await
        }
        None => {
            let mut server = axum_server::bind(addr).handle(handle).http1_only();
            harden(server.http_builder());
            tracing::info!("listening on {addr}{role}");
            server.serve(service).await
        }
    };
    served.map_err(|source| ServeError::Listen { addr, source })
}

/// How long a client may take to send a request's headers (a connection that sends none is closed then).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits on every connection: headers within [`HEADER_TIMEOUT`], HTTP/1 only (what agents, browsers and
/// Prometheus speak; HTTP/2's stream multiplexing would need limits of its own).
fn harden(builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>) {
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 << 10);
}

/// rustls with the ring provider, as everywhere in weir (TLS listener, webhook client).
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn spawn_watch(
    client: kube::Client,
    shared: &Arc<Shared>,
    status: &Arc<Mutex<weir_kube::ClusterStatus>>,
) {
    if let Ok(mut s) = status.lock() {
        s.source = "kubernetes".into();
    }
    let publish = {
        let shared = Arc::clone(shared);
        move |set: Arc<PolicySet>| shared.set_policy(set)
    };
    state::supervise(
        shared,
        "cluster watch",
        weir_kube::watch(
            client,
            Duration::from_millis(200),
            Arc::clone(status),
            publish,
        ),
    );
}

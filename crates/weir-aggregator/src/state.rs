//! The aggregator's shared state: the core behind its mutex (engine, agents, cursors), the policy set in force
//! and the nodes' reported addresses, the counters, and the channels alerts and flows are broadcast on. No HTTP.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::{Semaphore, broadcast};
use weir_model::ingest::{AgentCounters, InterfaceAddress};
use weir_model::{Alert, Timestamp};
use weir_policy::PolicySet;

use crate::auth::{AgentAuth, Token};
use crate::engine::{Engine, StoredFlow};
use crate::telemetry::{LockSite, Telemetry};
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

/// Agent runs kept per node: the running one and a few before it (whose last batches may still be resent).
pub const RUNS_PER_NODE: usize = 4;

/// Agent runs kept in all: four for each of 5,000 nodes (the largest cluster Kubernetes supports).
pub const MAX_RUNS: usize = RUNS_PER_NODE * 5000;

impl Core {
    /// Makes room for a new run of `node`: beyond [`RUNS_PER_NODE`] its least recently heard run is forgotten
    /// (a run that comes back starts over: its batches are applied again from where it says it is). Returns how
    /// many were forgotten.
    pub fn make_room_for_run(&mut self, node: &str) -> u64 {
        let mut forgotten = 0;
        loop {
            let runs = self
                .agents
                .range((node.to_owned(), String::new())..)
                .take_while(|((n, _), _)| n == node);
            let (count, oldest) = runs.fold(
                (0usize, None::<(Timestamp, String)>),
                |(c, o), ((_, e), a)| {
                    let older = o.as_ref().is_none_or(|(t, _)| a.last_seen < *t);
                    (
                        c + 1,
                        if older {
                            Some((a.last_seen, e.clone()))
                        } else {
                            o
                        },
                    )
                },
            );
            match oldest {
                Some((_, epoch)) if count >= RUNS_PER_NODE => {
                    self.agents.remove(&(node.to_owned(), epoch));
                    forgotten += 1;
                }
                _ => break,
            }
        }
        // And beyond [`MAX_RUNS`] in all (nodes named by a shared token are not bounded by the cluster), the
        // least recently heard run of any node.
        while self.agents.len() >= MAX_RUNS {
            let oldest = self
                .agents
                .iter()
                .min_by_key(|(_, a)| a.last_seen)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    self.agents.remove(&k);
                    forgotten += 1;
                }
                None => break,
            }
        }
        forgotten
    }

    /// Forgets agent runs not heard from since `horizon` (as the store forgets their cursors).
    pub fn prune_runs(&mut self, horizon: Timestamp) -> u64 {
        let before = self.agents.len();
        self.agents.retain(|_, a| a.last_seen >= horizon);
        (before - self.agents.len()) as u64
    }
}

/// The store as the checkpoints find it: failing since when and why, or fine.
#[derive(Debug, Default)]
pub struct StoreHealth(Mutex<Option<(Timestamp, String)>>);

impl StoreHealth {
    /// A checkpoint failed: failing since the first failure of this run of them.
    pub fn failed(&self, reason: String) {
        if let Ok(mut f) = self.0.lock() {
            let since = f.as_ref().map_or_else(Timestamp::now, |(t, _)| *t);
            *f = Some((since, reason));
        }
    }

    /// A checkpoint was written.
    pub fn recovered(&self) {
        if let Ok(mut f) = self.0.lock()
            && f.take().is_some()
        {
            tracing::info!("the store is written again; batches are acknowledged");
        }
    }

    /// Since when and why the store fails, if it does (a poisoned lock counts as failing).
    pub fn failure(&self) -> Option<(Timestamp, String)> {
        match self.0.lock() {
            Ok(f) => f.clone(),
            Err(_) => Some((Timestamp(0), "its status is unusable".into())),
        }
    }
}

/// Background tasks that ended while the aggregator runs (each should run for as long as it does).
#[derive(Debug, Default)]
pub struct Tasks(Mutex<Vec<&'static str>>);

impl Tasks {
    /// A task ended.
    pub fn ended(&self, name: &'static str) {
        if let Ok(mut t) = self.0.lock() {
            t.push(name);
        }
    }

    /// The first task that ended, if any.
    pub fn first_ended(&self) -> Option<&'static str> {
        self.0.lock().ok().and_then(|t| t.first().copied())
    }
}

/// Runs `task` for as long as the aggregator runs: should it end or panic, that is logged and the aggregator
/// reports itself unhealthy, so Kubernetes restarts it from its last checkpoint (agents send again what was not
/// acknowledged) instead of it running on without, say, checkpoints or the cluster's changes.
pub fn supervise<F>(s: &Arc<Shared>, name: &'static str, task: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let handle = tokio::spawn(task);
    let shared = Arc::downgrade(s);
    tokio::spawn(async move {
        let why = match handle.await {
            Ok(()) => "ended".to_owned(),
            Err(e) if e.is_panic() => "panicked".to_owned(),
            Err(e) => format!("failed: {e}"),
        };
        if let Some(s) = shared.upgrade() {
            tracing::error!(
                "the {name} {why}; the aggregator reports itself unhealthy to be restarted"
            );
            s.tasks.ended(name);
        }
    });
}

/// The engine's lock, held: derefs to the [`Core`]; the hold time is observed when it is dropped.
pub struct CoreGuard<'a> {
    guard: std::sync::MutexGuard<'a, Core>,
    started: std::time::Instant,
    site: LockSite,
    telemetry: &'a Telemetry,
}

impl std::ops::Deref for CoreGuard<'_> {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.guard
    }
}

impl std::ops::DerefMut for CoreGuard<'_> {
    fn deref_mut(&mut self) -> &mut Core {
        &mut self.guard
    }
}

impl Drop for CoreGuard<'_> {
    fn drop(&mut self) {
        self.telemetry
            .lock_held(self.site, self.started.elapsed().as_secs_f64());
    }
}

/// State shared by every handler.
pub struct Shared {
    /// Engine and agents.
    pub core: Mutex<Core>,
    /// New and updated alerts.
    pub alerts: broadcast::Sender<Arc<Alert>>,
    /// Judged flows, when someone listens.
    pub flows: broadcast::Sender<Arc<StoredFlow>>,
    /// The aggregator's own events, counted where they happen.
    pub telemetry: Telemetry,
    /// The cluster source's status.
    pub cluster: Arc<Mutex<ClusterStatus>>,
    /// Set once the cluster state is loaded.
    pub ready: AtomicBool,
    /// How agents prove who they are.
    pub agent_auth: AgentAuth,
    /// Bearer token readers must present, if any.
    pub read_token: Option<Token>,
    /// Batches applied at once at most; more are answered 503 at once.
    pub ingest_permits: Arc<Semaphore>,
    /// Largest batch body, in bytes.
    pub max_body: usize,
    /// Where alerts go besides the stream.
    pub sink: Option<tokio::sync::mpsc::Sender<Arc<Alert>>>,
    /// Alerts to standard output as JSON lines.
    pub alerts_stdout: bool,
    /// The store as the checkpoints find it.
    pub store_health: StoreHealth,
    /// Background tasks that ended.
    pub tasks: Tasks,
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
                self.telemetry
                    .webhook(crate::telemetry::WebhookResult::Failed);
            }
            let _ = self.alerts.send(alert);
        }
    }

    /// The engine, locked: the time it is held is observed per `site` when the guard is dropped
    /// (`weir_engine_lock_hold_seconds`). `None` when a panic poisoned the lock.
    pub fn lock_core(&self, site: LockSite) -> Option<CoreGuard<'_>> {
        let guard = self.core.lock().ok()?;
        Some(CoreGuard {
            guard,
            started: std::time::Instant::now(),
            site,
            telemetry: &self.telemetry,
        })
    }

    /// The shared state a panic left unusable (a poisoned lock), if any: the aggregator then answers 500 to
    /// what needs it, is neither ready nor healthy (so Kubernetes restarts it, and it resumes from its last
    /// checkpoint; unacknowledged batches are sent again by the agents).
    pub fn unusable(&self) -> Option<&'static str> {
        if self.core.is_poisoned() {
            Some("the engine")
        } else if self.node_addresses.is_poisoned() {
            Some("the node addresses")
        } else if self.cluster.is_poisoned() {
            Some("the cluster status")
        } else if self.telemetry.is_poisoned() {
            Some("the metrics registry")
        } else {
            self.tasks.first_ended()
        }
    }

    /// Installs a new policy set (the cluster changed), with the node addresses agents reported; the first
    /// one makes the aggregator ready.
    pub fn set_policy(&self, set: Arc<PolicySet>) {
        let Ok(mut addresses) = self.node_addresses.lock() else {
            tracing::error!("the node addresses are unusable: the new policy set is not installed");
            return;
        };
        addresses.base = Some(set);
        if let Some(set) = addresses.compose() {
            match self.lock_core(LockSite::Cluster) {
                Some(mut core) => core.engine.set_policy(set),
                None => {
                    tracing::error!("the engine is unusable: the new policy set is not installed");
                    return;
                }
            }
        }
        self.ready.store(true, Ordering::Release);
    }

    /// The node a pod runs on, from the cluster state in force (to bind an agent's token to its node when the
    /// API server does not say it).
    pub fn node_of_pod(&self, namespace: &str, pod: &str) -> Option<String> {
        let addresses = self.node_addresses.lock().ok()?;
        let cluster = addresses.base.as_ref()?.cluster();
        cluster
            .pods()
            .iter()
            .find(|p| p.namespace == namespace && p.name == pod)
            .and_then(|p| p.node_name.clone())
    }

    /// Takes a node's interface addresses from its agent; when they changed, the policy set in force is
    /// rebuilt with them (later flows from those addresses are the node's).
    pub fn report_node_addresses(&self, node: &str, reported: Vec<InterfaceAddress>) {
        // A poisoned lock is reported by `unusable` (health, readiness, metrics); nothing more to do here.
        let Ok(mut addresses) = self.node_addresses.lock() else {
            return;
        };
        if addresses.reported.get(node) == Some(&reported) {
            return;
        }
        addresses.reported.insert(node.to_owned(), reported);
        if let (Some(set), Some(mut core)) =
            (addresses.compose(), self.lock_core(LockSite::Cluster))
        {
            core.engine.set_policy(set);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineConfig;
    use weir_cluster::ClusterState;

    fn core() -> Core {
        let set =
            PolicySet::new(Arc::new(ClusterState::default())).unwrap_or_else(|e| panic!("{e}"));
        Core {
            engine: Engine::new(EngineConfig::default(), Arc::new(set), Timestamp(0)),
            agents: BTreeMap::new(),
        }
    }

    fn run(core: &mut Core, node: &str, epoch: &str, seen: i64) {
        core.make_room_for_run(node);
        core.agents.insert(
            (node.into(), epoch.into()),
            AgentState {
                node: node.into(),
                epoch: epoch.into(),
                applied: 0,
                acked: 0,
                missed_batches: 0,
                counters: AgentCounters::default(),
                last_seen: Timestamp(seen),
            },
        );
    }

    #[test]
    fn a_node_keeps_a_few_runs_and_silent_ones_go() {
        let mut c = core();
        // A node restarting its agent a thousand times (or a holder of its token making up epochs).
        for i in 0..1000 {
            run(&mut c, "n1", &format!("e{i:04}"), i);
        }
        run(&mut c, "n2", "only", 5);
        let n1: Vec<&str> = c
            .agents
            .keys()
            .filter(|(n, _)| n == "n1")
            .map(|(_, e)| e.as_str())
            .collect();
        assert_eq!(n1, ["e0996", "e0997", "e0998", "e0999"]);
        assert!(c.agents.contains_key(&("n2".into(), "only".into())));
        // Silent since before the horizon: forgotten.
        assert_eq!(c.prune_runs(Timestamp(998)), 3);
        let left: Vec<_> = c.agents.keys().map(|(n, e)| format!("{n}/{e}")).collect();
        assert_eq!(left, ["n1/e0998", "n1/e0999"]);
    }
}

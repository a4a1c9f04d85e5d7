//! weir's Kubernetes access, for the CLI and the aggregator alike: the kube-rs client as kubectl would find the
//! cluster ([`kube_client`]), every object weir reads listed page by page for a snapshot ([`list_objects`]),
//! and a live cluster watched with kube-rs ([`watch`]: list, then watch; re-list after a dropped watch or
//! `410 Gone`). Every change rebuilds the cluster state and its policy set, which the aggregator judges later
//! flows against. Deleted pods are kept for a grace period, so flows that arrive late are still attributed to
//! the pod that held the address then.

#![deny(missing_docs)]

mod review;
pub use review::{
    EXTRA_NODE_NAME, EXTRA_POD_NAME, EXTRA_POD_UID, ReviewError, Reviewed, review_token,
};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::ListParams;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::mpsc;
use weir_cluster::{ClusterState, SnapshotLoader};
use weir_model::Timestamp;
use weir_policy::PolicySet;

/// The kinds weir reads, in the order they are loaded.
pub const KINDS: [&str; 8] = [
    "Namespace",
    "Node",
    "Pod",
    "Service",
    "EndpointSlice",
    "ReplicaSet",
    "Job",
    "NetworkPolicy",
];

/// How long a deleted pod keeps its address for late flows.
pub const DELETED_POD_GRACE: Duration = Duration::from_secs(300);

/// What the cluster source has done, for status and metrics.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClusterStatus {
    /// `snapshot` or `kubernetes`.
    pub source: String,
    /// Whether every kind has been listed once.
    pub synced: bool,
    /// Policy sets built (the first included).
    pub generation: u64,
    /// Objects held, by kind.
    pub objects: BTreeMap<String, usize>,
    /// Deleted pods kept for late flows.
    pub deleted_pods: usize,
    /// Watch errors (dropped watches, `410 Gone`, refused requests), by kind.
    pub watch_errors: BTreeMap<String, u64>,
    /// Rebuilds that failed (the previous state stayed in force), with the last error.
    pub rebuild_errors: u64,
    /// The last rebuild error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the policy set in force was built.
    pub updated_at: Option<Timestamp>,
}

enum Change {
    Restart(&'static str),
    Add(&'static str, (String, String), Value, bool),
    Delete(&'static str, (String, String)),
    Done(&'static str),
    Error(&'static str, String),
}

/// The objects of a watched cluster.
#[derive(Default)]
struct Objects {
    live: HashMap<&'static str, BTreeMap<(String, String), Value>>,
    relisting: HashMap<&'static str, BTreeMap<(String, String), Value>>,
    synced: HashSet<&'static str>,
    deleted_pods: BTreeMap<(String, String), (Value, Timestamp)>,
}

impl Objects {
    fn apply(&mut self, change: Change, status: &mut ClusterStatus) -> bool {
        match change {
            Change::Restart(kind) => {
                self.relisting.insert(kind, BTreeMap::new());
                false
            }
            Change::Add(kind, key, value, initial) => {
                if initial && let Some(list) = self.relisting.get_mut(kind) {
                    list.insert(key, value);
                    return false;
                }
                if kind == "Pod" {
                    self.deleted_pods.remove(&key);
                }
                self.live.entry(kind).or_default().insert(key, value);
                true
            }
            Change::Delete(kind, key) => {
                let removed = self.live.entry(kind).or_default().remove(&key);
                if kind == "Pod"
                    && let Some(value) = removed
                {
                    self.deleted_pods.insert(key, (value, Timestamp::now()));
                }
                true
            }
            Change::Done(kind) => {
                let fresh = self.relisting.remove(kind).unwrap_or_default();
                let old = self.live.insert(kind, fresh).unwrap_or_default();
                if kind == "Pod" {
                    // Pods missing from the new list were deleted while the watch was down.
                    let at = Timestamp::now();
                    let live = &self.live;
                    for (key, value) in old {
                        if !live.get(kind).is_some_and(|m| m.contains_key(&key)) {
                            self.deleted_pods.insert(key, (value, at));
                        }
                    }
                }
                self.synced.insert(kind);
                true
            }
            Change::Error(kind, message) => {
                *status.watch_errors.entry(kind.to_owned()).or_default() += 1;
                tracing::warn!(kind, "watching {kind}s: {message} (retrying)");
                false
            }
        }
    }

    fn synced(&self) -> bool {
        KINDS.iter().all(|k| self.synced.contains(k))
    }

    /// The cluster state of the objects held, deleted pods included as finished.
    fn build(&mut self) -> Result<ClusterState, RebuildError> {
        let horizon = Timestamp::now().0 - DELETED_POD_GRACE.as_nanos() as i64;
        self.deleted_pods.retain(|_, (_, at)| at.0 >= horizon);
        let mut loader = SnapshotLoader::default();
        for kind in KINDS {
            let Some(objects) = self.live.get(kind) else {
                continue;
            };
            for ((ns, name), value) in objects {
                loader
                    .add_value(&format!("watch:{kind}"), value.clone())
                    .map_err(|source| RebuildError::Object {
                        what: format!("{kind} {ns}/{name}"),
                        source,
                    })?;
            }
        }
        for ((ns, name), (value, at)) in &self.deleted_pods {
            loader
                .add_value("watch:Pod", value.clone())
                .map_err(|source| RebuildError::Object {
                    what: format!("deleted Pod {ns}/{name}"),
                    source,
                })?;
            loader.mark_deleted(ns, name, *at);
        }
        Ok(loader.finish().0)
    }
}

/// Why the cluster state could not be rebuilt from the objects held (the previous state stays in force).
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// An object the loader refused.
    #[error("{what}: {source}")]
    Object {
        /// Kind, namespace and name.
        what: String,
        /// Why.
        #[source]
        source: weir_cluster::LoadError,
    },
    /// The policy set could not be compiled.
    #[error("compiling the policies: {0}")]
    Policies(#[from] weir_policy::PolicyError),
}

/// Why the cluster could not be reached or read. None of these is retried here: a kubeconfig or permission
/// problem needs a person; [`watch`] retries its own failures (with backoff) and counts them instead.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The kubeconfig file could not be read or used.
    #[error("using the kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file, or `$KUBECONFIG`/`~/.kube/config` when none was named.
        path: String,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// No cluster was found: no in-cluster service account, `$KUBECONFIG` or `~/.kube/config`.
    #[error("finding the cluster (in-cluster service account, $KUBECONFIG or ~/.kube/config): {0}")]
    Infer(#[source] kube::config::InferConfigError),
    /// The client could not be built from the configuration.
    #[error("building the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// The API server refused to list a kind.
    #[error(
        "listing {kind} objects: forbidden ({message}); a snapshot needs get and list on {needs}"
    )]
    Forbidden {
        /// The kind.
        kind: &'static str,
        /// The API server's message.
        message: String,
        /// Every kind weir reads.
        needs: String,
    },
    /// Listing a kind failed otherwise.
    #[error("listing {kind} objects: {source}")]
    List {
        /// The kind.
        kind: &'static str,
        /// Why.
        #[source]
        source: kube::Error,
    },
}

/// Where the cluster comes from.
pub enum ClusterSource {
    /// Snapshot files, loaded once.
    Snapshot(Arc<PolicySet>),
    /// A live cluster.
    Kubernetes(Client),
}

fn send_kind<K>(client: Client, kind: &'static str, tx: mpsc::UnboundedSender<Change>)
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    tokio::spawn(async move {
        let api: Api<K> = Api::all(client);
        let mut stream = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        loop {
            let item = stream.try_next().await;
            let change = match item {
                Ok(None) => return,
                Ok(Some(event)) => match event {
                    Event::Init => Change::Restart(kind),
                    Event::InitApply(obj) => added(kind, &obj, true),
                    Event::Apply(obj) => added(kind, &obj, false),
                    Event::Delete(obj) => Change::Delete(kind, key_of(&obj)),
                    Event::InitDone => Change::Done(kind),
                },
                Err(e) => Change::Error(kind, e.to_string()),
            };
            if tx.send(change).is_err() {
                return;
            }
        }
    });
}

fn key_of<K: Resource>(obj: &K) -> (String, String) {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

fn added<K: Resource + Serialize>(kind: &'static str, obj: &K, initial: bool) -> Change
where
    K::DynamicType: Default,
{
    Change::Add(kind, key_of(obj), object_value(kind, obj), initial)
}

/// An object as `kubectl get -o json` shows it: with its kind and apiVersion (whatever the serializer did),
/// without `metadata.managedFields` (bookkeeping of who set which field, often most of an object's bytes).
pub fn object_value<K: Resource + Serialize>(kind: &str, obj: &K) -> Value
where
    K::DynamicType: Default,
{
    let mut value = serde_json::to_value(obj).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.entry("kind")
            .or_insert_with(|| Value::String(kind.to_owned()));
        let api_version = K::api_version(&K::DynamicType::default()).into_owned();
        map.entry("apiVersion")
            .or_insert_with(|| Value::String(api_version));
        if let Some(Value::Object(meta)) = map.get_mut("metadata") {
            meta.remove("managedFields");
        }
    }
    value
}

/// Connects to a cluster with `kubeconfig` and `context` when given; otherwise the in-cluster service account,
/// then `$KUBECONFIG`, then `~/.kube/config`. Returns the client and the API server's address, for messages.
pub async fn kube_client(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<(Client, String), KubeError> {
    let options = kube::config::KubeConfigOptions {
        context: context.map(str::to_owned),
        ..Default::default()
    };
    let config = match kubeconfig {
        Some(path) => {
            let named = |source| KubeError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(named)?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(named)?
        }
        None if options.context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|source| KubeError::Kubeconfig {
                path: "$KUBECONFIG or ~/.kube/config".to_owned(),
                source,
            })?,
        None => kube::Config::infer().await.map_err(KubeError::Infer)?,
    };
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(KubeError::Client)?;
    Ok((client, server))
}

/// Objects per list request when taking a snapshot; larger lists come in pages.
const PAGE_SIZE: u32 = 500;

async fn list_pages<K>(
    api: Api<K>,
    kind: &'static str,
    out: &mut Vec<Value>,
) -> Result<(), KubeError>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
    K::DynamicType: Default,
{
    let mut params = ListParams::default().limit(PAGE_SIZE);
    loop {
        let page = api.list(&params).await.map_err(|source| match &source {
            kube::Error::Api(status) if status.code == 403 => KubeError::Forbidden {
                kind,
                message: status.message.clone(),
                needs: KINDS.join(", "),
            },
            _ => KubeError::List { kind, source },
        })?;
        out.extend(page.items.iter().map(|obj| object_value(kind, obj)));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(()),
        }
    }
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Lists every object weir reads, in [`KINDS`] order, as `kubectl get <those kinds> -A -o json` would (see
/// [`object_value`]), following continue tokens. With `namespace`, the namespaced kinds come from that
/// namespace only; Namespaces and Nodes are always listed whole, because selectors and node addresses need them.
pub async fn list_objects(
    client: &Client,
    namespace: Option<&str>,
) -> Result<Vec<Value>, KubeError> {
    let mut out = Vec::new();
    list_pages(Api::<Namespace>::all(client.clone()), "Namespace", &mut out).await?;
    list_pages(Api::<Node>::all(client.clone()), "Node", &mut out).await?;
    list_pages(scoped::<Pod>(client, namespace), "Pod", &mut out).await?;
    list_pages(scoped::<Service>(client, namespace), "Service", &mut out).await?;
    list_pages(
        scoped::<EndpointSlice>(client, namespace),
        "EndpointSlice",
        &mut out,
    )
    .await?;
    list_pages(
        scoped::<ReplicaSet>(client, namespace),
        "ReplicaSet",
        &mut out,
    )
    .await?;
    list_pages(scoped::<Job>(client, namespace), "Job", &mut out).await?;
    list_pages(
        scoped::<NetworkPolicy>(client, namespace),
        "NetworkPolicy",
        &mut out,
    )
    .await?;
    Ok(out)
}

/// Watches a cluster; calls `publish` with each new policy set, at most every `settle` (changes that come
/// together are built once), and never before every kind has been listed. Runs until the runtime stops.
pub async fn watch(
    client: Client,
    settle: Duration,
    status: Arc<Mutex<ClusterStatus>>,
    publish: impl Fn(Arc<PolicySet>) + Send + 'static,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    send_kind::<Namespace>(client.clone(), "Namespace", tx.clone());
    send_kind::<Node>(client.clone(), "Node", tx.clone());
    send_kind::<Pod>(client.clone(), "Pod", tx.clone());
    send_kind::<Service>(client.clone(), "Service", tx.clone());
    send_kind::<EndpointSlice>(client.clone(), "EndpointSlice", tx.clone());
    send_kind::<ReplicaSet>(client.clone(), "ReplicaSet", tx.clone());
    send_kind::<Job>(client.clone(), "Job", tx.clone());
    send_kind::<NetworkPolicy>(client, "NetworkPolicy", tx);
    let mut objects = Objects::default();
    let mut dirty = false;
    let mut dirty_since: Option<Instant> = None;
    loop {
        let wait = if dirty {
            settle
        } else {
            Duration::from_secs(3600)
        };
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(change)) => {
                if let Ok(mut s) = status.lock() {
                    dirty |= objects.apply(change, &mut s);
                }
                // Changes that come together are built once: when they pause for `settle`, or at the latest
                // after four times that.
                if dirty && dirty_since.get_or_insert_with(Instant::now).elapsed() < settle * 4 {
                    continue;
                }
            }
            Ok(None) => return,
            Err(_) => {}
        }
        if !dirty || !objects.synced() {
            continue;
        }
        dirty = false;
        dirty_since = None;
        let built = objects
            .build()
            .and_then(|state| Ok(PolicySet::new(Arc::new(state))?));
        if let Ok(mut s) = status.lock() {
            s.source = "kubernetes".into();
            s.synced = true;
            s.objects = KINDS
                .iter()
                .map(|k| (k.to_string(), objects.live.get(k).map_or(0, BTreeMap::len)))
                .collect();
            s.deleted_pods = objects.deleted_pods.len();
            match &built {
                Ok(_) => {
                    s.generation += 1;
                    s.updated_at = Some(Timestamp::now());
                }
                Err(e) => {
                    s.rebuild_errors += 1;
                    s.last_error = Some(e.to_string());
                    tracing::error!("the cluster state could not be rebuilt: {e}");
                }
            }
        }
        if let Ok(set) = built {
            publish(Arc::new(set));
        }
    }
}

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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
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
use kube::api::{ApiResource, DynamicObject, ListParams};
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
pub const KINDS: [&str; 11] = [
    "Namespace",
    "Node",
    "Pod",
    "Service",
    "EndpointSlice",
    "ReplicaSet",
    "Job",
    "NetworkPolicy",
    "ClusterNetworkPolicy",
    "AdminNetworkPolicy",
    "BaselineAdminNetworkPolicy",
];

/// The network-policy-api's cluster-wide kinds, served only where their CRDs are installed: (kind, group,
/// version, plural). An API server without one answers 404, which is normal (none is in force) and said once.
pub const CLUSTER_POLICY_KINDS: [(&str, &str, &str, &str); 3] = [
    (
        "ClusterNetworkPolicy",
        weir_cluster::cnp::GROUP,
        "v1alpha2",
        "clusternetworkpolicies",
    ),
    (
        "AdminNetworkPolicy",
        weir_cluster::cnp::GROUP,
        "v1alpha1",
        "adminnetworkpolicies",
    ),
    (
        "BaselineAdminNetworkPolicy",
        weir_cluster::cnp::GROUP,
        "v1alpha1",
        "baselineadminnetworkpolicies",
    ),
];

fn api_resource((kind, group, version, plural): (&str, &str, &str, &str)) -> ApiResource {
    ApiResource {
        group: group.to_owned(),
        version: version.to_owned(),
        api_version: format!("{group}/{version}"),
        kind: kind.to_owned(),
        plural: plural.to_owned(),
    }
}

/// The kinds without which no verdict can be trusted: the aggregator is not ready while one of them is not
/// listed. The others may be refused by RBAC: weir then goes on without them (pods named by themselves instead
/// of their ReplicaSet's or Job's workload, no Services, node ranges only from agents) and says so.
pub const REQUIRED_KINDS: [&str; 3] = ["Namespace", "Pod", "NetworkPolicy"];

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
    /// Kinds the API server refuses to list (403): a required one keeps the aggregator unready; without the
    /// others it goes on, and says which are missing.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub forbidden: BTreeSet<String>,
    /// Objects the loader refused at the last rebuild (left out of the state, which is built from the rest), by
    /// kind.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rejected_objects: BTreeMap<String, u64>,
    /// The last refused object and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_rejected: Option<String>,
    /// Cluster-wide policy kinds the API server does not serve (their CRD is not installed): none is in force.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub not_served: BTreeSet<String>,
}

impl ClusterStatus {
    /// The required kinds the API server refuses to list.
    pub fn forbidden_required(&self) -> Vec<&str> {
        REQUIRED_KINDS
            .iter()
            .copied()
            .filter(|k| self.forbidden.contains(*k))
            .collect()
    }
}

enum Change {
    Restart(&'static str),
    Add(&'static str, (String, String), Value, bool),
    Delete(&'static str, (String, String)),
    Done(&'static str),
    Error(&'static str, String),
    /// Listing or watching the kind was refused (403).
    Forbidden(&'static str, String),
    /// The API server does not serve the kind (404: a CRD not installed).
    NotServed(&'static str),
}

/// The objects of a watched cluster.
#[derive(Default)]
struct Objects {
    live: HashMap<&'static str, BTreeMap<(String, String), Value>>,
    relisting: HashMap<&'static str, BTreeMap<(String, String), Value>>,
    synced: HashSet<&'static str>,
    /// Kinds refused with 403 and not listed since.
    forbidden: HashSet<&'static str>,
    /// Kinds answered 404 and not listed since.
    not_served: HashSet<&'static str>,
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
                if self.forbidden.remove(kind) {
                    status.forbidden.remove(kind);
                    tracing::info!("{kind}s can be listed again");
                }
                if self.not_served.remove(kind) {
                    status.not_served.remove(kind);
                    tracing::info!("the API server now serves {kind}s: they are evaluated");
                }
                true
            }
            Change::NotServed(kind) => {
                // Said once, not per retry: a cluster without the CRD simply has none in force.
                if self.not_served.insert(kind) {
                    status.not_served.insert(kind.to_owned());
                    tracing::info!(
                        kind,
                        "the API server does not serve {kind}s (no CRD installed): none is in force"
                    );
                }
                let had = self.live.remove(kind).is_some_and(|m| !m.is_empty());
                let first = self.synced.insert(kind);
                had || first
            }
            Change::Error(kind, message) => {
                *status.watch_errors.entry(kind.to_owned()).or_default() += 1;
                tracing::warn!(kind, "watching {kind}s: {message} (retrying)");
                false
            }
            Change::Forbidden(kind, message) => {
                *status.watch_errors.entry(kind.to_owned()).or_default() += 1;
                status.forbidden.insert(kind.to_owned());
                // Said once per refusal, not per retry.
                if self.forbidden.insert(kind) {
                    if REQUIRED_KINDS.contains(&kind) {
                        tracing::error!(
                            kind,
                            "listing {kind}s is forbidden ({message}): no verdict can be trusted without them; \
                             not ready until the aggregator's ClusterRole allows list and watch on {kind}s"
                        );
                    } else {
                        tracing::warn!(
                            kind,
                            "listing {kind}s is forbidden ({message}): going on without them (retrying)"
                        );
                    }
                }
                // An optional kind refused counts as listed (empty), so the rest is not held back.
                !REQUIRED_KINDS.contains(&kind) && !self.synced.contains(kind)
            }
        }
    }

    fn synced(&self) -> bool {
        KINDS.iter().all(|k| {
            self.synced.contains(k)
                || self.not_served.contains(k)
                || (self.forbidden.contains(k) && !REQUIRED_KINDS.contains(k))
        })
    }

    /// The cluster state of the objects held, deleted pods included as finished. An object the loader refuses
    /// is left out and counted in `rejected` (one bad object must not freeze the state for everything else).
    /// NetworkPolicies in `left_out` (ones the policy compiler refused) are left out too.
    fn build(
        &mut self,
        rejected: &mut BTreeMap<String, u64>,
        last: &mut Option<String>,
        left_out: &HashSet<(&'static str, String, String)>,
    ) -> ClusterState {
        let horizon = Timestamp::now().0 - DELETED_POD_GRACE.as_nanos() as i64;
        self.deleted_pods.retain(|_, (_, at)| at.0 >= horizon);
        let mut loader = SnapshotLoader::default();
        for kind in KINDS {
            let Some(objects) = self.live.get(kind) else {
                continue;
            };
            for ((ns, name), value) in objects {
                if left_out.contains(&(kind, ns.clone(), name.clone())) {
                    continue;
                }
                if let Err(e) = loader.add_value(&format!("watch:{kind}"), value.clone()) {
                    *rejected.entry(kind.to_string()).or_default() += 1;
                    let what = format!("{kind} {ns}/{name}: {e}");
                    tracing::warn!("left out of the cluster state: {what}");
                    *last = Some(what);
                }
            }
        }
        for ((ns, name), (value, at)) in &self.deleted_pods {
            if let Err(e) = loader.add_value("watch:Pod", value.clone()) {
                *rejected.entry("Pod".to_owned()).or_default() += 1;
                *last = Some(format!("deleted Pod {ns}/{name}: {e}"));
                continue;
            }
            loader.mark_deleted(ns, name, *at);
        }
        loader.finish().0
    }

    /// The policy set of the objects held: a NetworkPolicy the compiler refuses is left out and counted in
    /// `rejected` like an object the loader refuses, and the set is built from the rest.
    fn policy_set(
        &mut self,
        rejected: &mut BTreeMap<String, u64>,
        last: &mut Option<String>,
    ) -> Result<PolicySet, RebuildError> {
        let mut left_out = HashSet::new();
        loop {
            let state = self.build(rejected, last, &left_out);
            let e = match PolicySet::new(Arc::new(state)) {
                Ok(set) => return Ok(set),
                Err(e) => e,
            };
            let Some(kind) = KINDS.iter().copied().find(|k| *k == e.kind) else {
                return Err(e.into());
            };
            let (ns, name) = match e.policy.split_once('/') {
                Some((ns, name)) => (ns.to_owned(), name.to_owned()),
                None => (String::new(), e.policy.clone()),
            };
            // No progress (the error names no policy held): give up on this rebuild.
            if !self
                .live
                .get(kind)
                .is_some_and(|m| m.contains_key(&(ns.clone(), name.clone())))
                || !left_out.insert((kind, ns, name))
            {
                return Err(e.into());
            }
            *rejected.entry(kind.to_owned()).or_default() += 1;
            let what = e.to_string();
            tracing::warn!("left out of the cluster state: {what}");
            *last = Some(what);
        }
    }
}

/// Why the cluster state could not be rebuilt from the objects held (the previous state stays in force; objects
/// the loader refuses are left out, not a reason to stop).
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
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
                Err(e) if forbidden(&e) => Change::Forbidden(kind, e.to_string()),
                Err(e) => Change::Error(kind, e.to_string()),
            };
            if tx.send(change).is_err() {
                return;
            }
        }
    });
}

/// Watches one of [`CLUSTER_POLICY_KINDS`], which the API server serves only when its CRD is installed.
fn send_dynamic(
    client: Client,
    spec: (&'static str, &'static str, &'static str, &'static str),
    tx: mpsc::UnboundedSender<Change>,
) {
    let kind = spec.0;
    let resource = api_resource(spec);
    tokio::spawn(async move {
        let api: Api<DynamicObject> = Api::all_with(client, &resource);
        let mut stream = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let value = |obj: &DynamicObject| dynamic_value(&resource, obj);
        let key = |obj: &DynamicObject| (String::new(), obj.name_any());
        loop {
            let change = match stream.try_next().await {
                Ok(None) => return,
                Ok(Some(event)) => match event {
                    Event::Init => Change::Restart(kind),
                    Event::InitApply(obj) => Change::Add(kind, key(&obj), value(&obj), true),
                    Event::Apply(obj) => Change::Add(kind, key(&obj), value(&obj), false),
                    Event::Delete(obj) => Change::Delete(kind, key(&obj)),
                    Event::InitDone => Change::Done(kind),
                },
                Err(e) if status_code(&e) == Some(404) => Change::NotServed(kind),
                Err(e) if forbidden(&e) => Change::Forbidden(kind, e.to_string()),
                Err(e) => Change::Error(kind, e.to_string()),
            };
            if tx.send(change).is_err() {
                return;
            }
        }
    });
}

/// An object of a dynamic kind as `kubectl get -o json` shows it (see [`object_value`]).
fn dynamic_value(resource: &ApiResource, obj: &DynamicObject) -> Value {
    let mut value = serde_json::to_value(obj).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert("kind".into(), Value::String(resource.kind.clone()));
        map.insert(
            "apiVersion".into(),
            Value::String(resource.api_version.clone()),
        );
        if let Some(Value::Object(meta)) = map.get_mut("metadata") {
            meta.remove("managedFields");
        }
    }
    value
}

/// The HTTP status of a watcher's API error, if it has one.
fn status_code(e: &watcher::Error) -> Option<u16> {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    }
}

/// Whether a watcher's error is the API server refusing the request (403).
fn forbidden(e: &watcher::Error) -> bool {
    let api = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s,
        watcher::Error::WatchError(s) => return s.code == 403,
        _ => return false,
    };
    api.code == 403
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
    // Cluster-wide policies apply in every namespace, so they are listed whole. A kind the API server does not
    // serve (no CRD) has none in force.
    for spec in CLUSTER_POLICY_KINDS {
        let resource = api_resource(spec);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let mut params = ListParams::default().limit(PAGE_SIZE);
        loop {
            let page = match api.list(&params).await {
                Ok(page) => page,
                Err(kube::Error::Api(status)) if status.code == 404 => break,
                Err(kube::Error::Api(status)) if status.code == 403 => {
                    return Err(KubeError::Forbidden {
                        kind: spec.0,
                        message: status.message.clone(),
                        needs: KINDS.join(", "),
                    });
                }
                Err(source) => {
                    return Err(KubeError::List {
                        kind: spec.0,
                        source,
                    });
                }
            };
            out.extend(page.items.iter().map(|obj| dynamic_value(&resource, obj)));
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
    }
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
    send_kind::<NetworkPolicy>(client.clone(), "NetworkPolicy", tx.clone());
    for spec in CLUSTER_POLICY_KINDS {
        send_dynamic(client.clone(), spec, tx.clone());
    }
    drop(tx);
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
        let mut rejected = BTreeMap::new();
        let mut last_rejected = None;
        let built = objects.policy_set(&mut rejected, &mut last_rejected);
        if let Ok(mut s) = status.lock() {
            s.source = "kubernetes".into();
            s.synced = true;
            s.objects = KINDS
                .iter()
                .map(|k| (k.to_string(), objects.live.get(k).map_or(0, BTreeMap::len)))
                .collect();
            s.deleted_pods = objects.deleted_pods.len();
            s.rejected_objects = rejected;
            if last_rejected.is_some() {
                s.last_rejected = last_rejected;
            }
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

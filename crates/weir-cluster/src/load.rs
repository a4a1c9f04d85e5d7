//! Snapshot loading: the one door through which cluster YAML and JSON enter weir.
//!
//! A snapshot is what `kubectl get ... -A -o yaml` (or `-o json`) prints: a `List` of mixed kinds. Single
//! objects, typed lists (`PodList` from the API), multi-document YAML and directories of such files load too,
//! and several snapshots merge (a later object with the same kind, namespace and name replaces an earlier one).
//!
//! Every document is first read into a JSON value under explicit size budgets (serde-saphyr is pure safe Rust
//! and bounds nodes, depth and aliases, so a hostile file cannot exhaust memory), then each object is
//! deserialized into its k8s-openapi type with the path of any bad field recorded. That two-step shape is what
//! lets an error say which file, which object and which field, and lets unknown kinds be counted and skipped
//! instead of failing the load. Loading never panics on any input.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde_json::Value;
use weir_model::{Cidr, Protocol, Timestamp};

use crate::cnp::{self, ClusterPolicy};
use crate::state::{
    Backend, ClusterState, ContainerPort, IpOwner, Labels, Namespace, Node, NodeAddress,
    NodeAddressSource, NodeId, Pod, PodId, PolicyObject, Service, ServiceFrontend, ServiceId,
    ServicePort, TargetPort, Workload, WorkloadKind,
};

/// The largest snapshot file weir reads (1 GiB): far beyond any real cluster dump, small enough to refuse
/// a mistaken path to a disk image.
const MAX_FILE_BYTES: u64 = 1 << 30;

/// The label the API server puts on every namespace, naming it; namespace selectors rely on it.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Why a snapshot could not be loaded. None of these is retryable: each names the input to fix.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file or directory could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file is larger than weir reads.
    #[error("{}: {size} bytes is larger than the {MAX_FILE_BYTES}-byte limit for a snapshot file", path.display())]
    TooLarge {
        /// The path.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// A file is not YAML or JSON, or breaks the parser's budgets.
    #[error("{}: not a valid YAML or JSON snapshot: {message}", path.display())]
    Syntax {
        /// The path.
        path: PathBuf,
        /// The parser's message, with the line and column where it has them.
        message: String,
    },
    /// A document is not a Kubernetes object (no `kind`, or not a mapping).
    #[error("{}: document {document}: {message}", path.display())]
    Document {
        /// The path.
        path: PathBuf,
        /// Which document of the file (1-based).
        document: usize,
        /// What is wrong.
        message: String,
    },
    /// An object has a field with a bad value.
    #[error("{}: {object}: field `{field}`: {message}", path.display())]
    Object {
        /// The path.
        path: PathBuf,
        /// `Kind namespace/name` of the object.
        object: String,
        /// The path of the field in the object (`spec.containers[0].ports[1].containerPort`).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A directory held no `.yaml`, `.yml` or `.json` file.
    #[error("{}: no .yaml, .yml or .json files in this directory", path.display())]
    EmptyDirectory {
        /// The directory.
        path: PathBuf,
    },
}

/// What a load read, kept for the user to check against what they expected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Files read.
    pub files: usize,
    /// Objects loaded, by kind.
    pub loaded: BTreeMap<String, usize>,
    /// Objects of kinds weir does not use, skipped, by kind.
    pub skipped: BTreeMap<String, usize>,
    /// Network policies of kinds weir does not evaluate (a CNI's own, or an API group it does not read), by
    /// `Kind (group)`: traffic they decide is judged as if they were absent, and every command that judges must
    /// say so.
    pub unevaluated_policies: BTreeMap<String, usize>,
    /// Objects replaced by a later object with the same kind, namespace and name.
    pub replaced: usize,
}

/// The kinds weir reads.
const KNOWN_KINDS: [&str; 8] = [
    "Namespace",
    "Node",
    "Pod",
    "Service",
    "EndpointSlice",
    "ReplicaSet",
    "Job",
    "NetworkPolicy",
];

/// Whether `group` (of an object's apiVersion, empty for the core group) is the Kubernetes API group of `kind`.
fn kubernetes_group(kind: &str, group: &str) -> bool {
    match kind {
        "Namespace" | "Node" | "Pod" | "Service" => group.is_empty(),
        "EndpointSlice" => group == "discovery.k8s.io",
        "ReplicaSet" => matches!(group, "apps" | "extensions"),
        "Job" => group == "batch",
        "NetworkPolicy" => matches!(group, "networking.k8s.io" | "extensions"),
        _ => true,
    }
}

/// Whether a kind weir does not read is a network policy of some implementation: Cilium's, Calico's, Antrea's,
/// OVN-Kubernetes', OpenShift's, the network-policy-api's cluster-wide kinds and the like.
fn is_policy_kind(kind: &str) -> bool {
    kind.ends_with("NetworkPolicy") || kind == "EgressFirewall"
}

/// Reads snapshots into a [`ClusterState`].
#[derive(Debug, Default)]
pub struct SnapshotLoader {
    report: LoadReport,
    namespaces: BTreeMap<String, Labels>,
    nodes: BTreeMap<String, Node>,
    pods: BTreeMap<(String, String), (Pod, Option<OwnerReference>)>,
    services: BTreeMap<(String, String), Service>,
    slices: BTreeMap<(String, String), (String, Arc<str>, EndpointSlice)>,
    replica_sets: HashMap<(String, String), Option<OwnerReference>>,
    jobs: HashMap<(String, String), Option<OwnerReference>>,
    policies: BTreeMap<(String, String), PolicyObject>,
    /// Cluster-wide policies by kind and name.
    cluster_policies: BTreeMap<(&'static str, String), ClusterPolicy>,
    /// Where namespaced objects without `metadata.namespace` go (`-n`, as `kubectl apply -n` places them).
    default_namespace: Option<String>,
}

impl ClusterState {
    /// Loads and merges snapshot files and directories.
    pub fn load<P: AsRef<Path>>(paths: &[P]) -> Result<(ClusterState, LoadReport), LoadError> {
        let mut loader = SnapshotLoader::default();
        for path in paths {
            loader.add_path(path.as_ref())?;
        }
        Ok(loader.finish())
    }

    /// [`ClusterState::load`], placing namespaced objects that have no `metadata.namespace` in `namespace`,
    /// as `kubectl apply -n` does (policy files kept in a repository usually leave it out); an object naming
    /// another namespace is an error, as with kubectl.
    pub fn load_in<P: AsRef<Path>>(
        paths: &[P],
        namespace: &str,
    ) -> Result<(ClusterState, LoadReport), LoadError> {
        let mut loader = SnapshotLoader::in_namespace(namespace);
        for path in paths {
            loader.add_path(path.as_ref())?;
        }
        Ok(loader.finish())
    }
}

impl SnapshotLoader {
    /// A loader that places namespaced objects without `metadata.namespace` in `namespace` (see
    /// [`ClusterState::load_in`]).
    pub fn in_namespace(namespace: &str) -> SnapshotLoader {
        SnapshotLoader {
            default_namespace: Some(namespace.to_owned()),
            ..SnapshotLoader::default()
        }
    }

    /// Adds a file, or every `.yaml`/`.yml`/`.json` file under a directory (recursively, in name order).
    pub fn add_path(&mut self, path: &Path) -> Result<(), LoadError> {
        let io = |source| LoadError::Io {
            path: path.to_owned(),
            source,
        };
        if fs::metadata(path).map_err(io)?.is_dir() {
            let mut files = Vec::new();
            collect_files(path, &mut files)?;
            if files.is_empty() {
                return Err(LoadError::EmptyDirectory {
                    path: path.to_owned(),
                });
            }
            for file in files {
                self.add_file(&file)?;
            }
            return Ok(());
        }
        self.add_file(path)
    }

    fn add_file(&mut self, path: &Path) -> Result<(), LoadError> {
        let io = |source| LoadError::Io {
            path: path.to_owned(),
            source,
        };
        let size = fs::metadata(path).map_err(io)?.len();
        if size > MAX_FILE_BYTES {
            return Err(LoadError::TooLarge {
                path: path.to_owned(),
                size,
            });
        }
        let bytes = fs::read(path).map_err(io)?;
        self.add_bytes(path, &bytes)
    }

    /// Adds the documents of one file's contents; `path` is only used to name the file in errors.
    pub fn add_bytes(&mut self, path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
        self.report.files += 1;
        let documents = parse_documents(path, bytes)?;
        let source: Arc<str> = Arc::from(path.display().to_string());
        for (index, document) in documents.into_iter().enumerate() {
            self.add_document(path, &source, index + 1, document)?;
        }
        Ok(())
    }

    /// Adds one object (or List) given as a JSON value, as a watch delivers it; `source` names where it came
    /// from in errors and in policy provenance (`watch:NetworkPolicy`).
    pub fn add_value(&mut self, source: &str, value: Value) -> Result<(), LoadError> {
        let path = Path::new(source);
        let name: Arc<str> = Arc::from(source);
        self.add_document(path, &name, 1, value)
    }

    /// Marks a pod as gone since `at` (deleted from the cluster): it keeps its addresses for flows from before
    /// then, and gives them up after. Returns false when no such pod was added.
    pub fn mark_deleted(&mut self, namespace: &str, name: &str, at: Timestamp) -> bool {
        match self.pods.get_mut(&(namespace.to_owned(), name.to_owned())) {
            Some((pod, _)) => {
                if !pod.is_terminated() {
                    // Ownership only distinguishes finished pods from running ones.
                    pod.phase = "Failed".to_owned();
                }
                pod.finished = Some(pod.finished.map_or(at, |f| f.min(at)));
                true
            }
            None => false,
        }
    }

    fn add_document(
        &mut self,
        path: &Path,
        source: &Arc<str>,
        number: usize,
        document: Value,
    ) -> Result<(), LoadError> {
        let doc_error = |message: String| LoadError::Document {
            path: path.to_owned(),
            document: number,
            message,
        };
        let Value::Object(mut map) = document else {
            return match document {
                Value::Null => Ok(()),
                _ => Err(doc_error(
                    "expected a Kubernetes object or List (a mapping with `kind`)".into(),
                )),
            };
        };
        let Some(kind) = map.get("kind").and_then(Value::as_str).map(str::to_owned) else {
            return Err(doc_error("the object has no `kind`".into()));
        };
        let Some(item_kind) = kind.strip_suffix("List") else {
            return self.add_object(path, source, &kind, Value::Object(map));
        };
        let api_version = map.get("apiVersion").cloned();
        let items = match map.remove("items") {
            Some(Value::Array(items)) => items,
            Some(Value::Null) | None => Vec::new(),
            Some(_) => return Err(doc_error(format!("`items` of this {kind} is not a list"))),
        };
        for (index, item) in items.into_iter().enumerate() {
            let Value::Object(mut item) = item else {
                return Err(doc_error(format!("items[{index}] is not an object")));
            };
            // Typed lists from the API (`PodList`) leave kind and apiVersion off their items.
            if !item_kind.is_empty() {
                item.entry("kind")
                    .or_insert_with(|| Value::String(item_kind.to_owned()));
                if let Some(version) = &api_version {
                    item.entry("apiVersion").or_insert_with(|| version.clone());
                }
            }
            let Some(kind) = item.get("kind").and_then(Value::as_str).map(str::to_owned) else {
                return Err(doc_error(format!("items[{index}] has no `kind`")));
            };
            self.add_object(path, source, &kind, Value::Object(item))?;
        }
        Ok(())
    }

    fn add_object(
        &mut self,
        path: &Path,
        source: &Arc<str>,
        kind: &str,
        value: Value,
    ) -> Result<(), LoadError> {
        let mut value = value;
        if let Some(namespace) = &self.default_namespace
            && !matches!(kind, "Namespace" | "Node")
        {
            place_in_namespace(&mut value, namespace).map_err(|e| LoadError::Object {
                path: path.to_owned(),
                object: ObjectRef::of(kind, &value).to_string(),
                field: "metadata.namespace".to_owned(),
                message: e.to_string(),
            })?;
        }
        // A kind of another API group is not the Kubernetes kind of that name (Calico's and Antrea's
        // NetworkPolicy are not networking.k8s.io's). Objects without an apiVersion are taken as Kubernetes'.
        let group = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .map(|v| v.rsplit_once('/').map_or("", |(group, _)| group).to_owned());
        let foreign = group.as_deref().is_some_and(|g| !kubernetes_group(kind, g));
        let version = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .and_then(|v| v.rsplit_once('/'))
            .map_or("", |(_, version)| version);
        if group.as_deref() == Some(cnp::GROUP)
            && let Some(origin) = cnp::origin_of(kind, version)
        {
            let cx = Context {
                path,
                object: ObjectRef::of(kind, &value),
            };
            let object: cnp::Object = cx.typed(value)?;
            let policy = cnp::read(object, origin, source.clone())
                .map_err(|e| cx.error(e.field, e.message))?;
            let replaced = self
                .cluster_policies
                .insert((origin.kind(), policy.name.clone()), policy)
                .is_some();
            *self.report.loaded.entry(kind.to_owned()).or_default() += 1;
            if replaced {
                self.report.replaced += 1;
            }
            return Ok(());
        }
        if foreign || !KNOWN_KINDS.contains(&kind) {
            let group = group.unwrap_or_default();
            if is_policy_kind(kind) {
                let name = if group.is_empty() {
                    kind.to_owned()
                } else {
                    format!("{kind} ({group})")
                };
                *self.report.unevaluated_policies.entry(name).or_default() += 1;
            } else {
                let name = if foreign {
                    format!("{kind} ({group})")
                } else {
                    kind.to_owned()
                };
                *self.report.skipped.entry(name).or_default() += 1;
            }
            return Ok(());
        }
        let object = ObjectRef::of(kind, &value);
        let cx = Context { path, object };
        let replaced = match kind {
            "Namespace" => {
                let ns: core::Namespace = cx.typed(value)?;
                let name = cx.name(&ns.metadata)?;
                let labels = ns.metadata.labels.unwrap_or_default();
                self.namespaces.insert(name, labels).is_some()
            }
            "Node" => {
                let node: core::Node = cx.typed(value)?;
                let record = cx.node(node)?;
                self.nodes.insert(record.name.clone(), record).is_some()
            }
            "Pod" => {
                let pod: core::Pod = cx.typed(value)?;
                let (record, owner) = cx.pod(pod)?;
                let key = (record.namespace.clone(), record.name.clone());
                self.pods.insert(key, (record, owner)).is_some()
            }
            "Service" => {
                let service: core::Service = cx.typed(value)?;
                let record = cx.service(service)?;
                let key = (record.namespace.clone(), record.name.clone());
                self.services.insert(key, record).is_some()
            }
            "EndpointSlice" => {
                let slice: EndpointSlice = cx.typed(value)?;
                let key = (cx.namespace(&slice.metadata)?, cx.name(&slice.metadata)?);
                let object = cx.object.to_string();
                self.slices
                    .insert(key, (object, source.clone(), slice))
                    .is_some()
            }
            "ReplicaSet" => {
                let rs: ReplicaSet = cx.typed(value)?;
                let key = (cx.namespace(&rs.metadata)?, cx.name(&rs.metadata)?);
                let owner = controller_of(&rs.metadata);
                self.replica_sets.insert(key, owner).is_some()
            }
            "Job" => {
                let job: Job = cx.typed(value)?;
                let key = (cx.namespace(&job.metadata)?, cx.name(&job.metadata)?);
                let owner = controller_of(&job.metadata);
                self.jobs.insert(key, owner).is_some()
            }
            "NetworkPolicy" => {
                let policy: NetworkPolicy = cx.typed(value)?;
                let key = (cx.namespace(&policy.metadata)?, cx.name(&policy.metadata)?);
                let object = PolicyObject {
                    policy,
                    source: source.clone(),
                };
                self.policies.insert(key, object).is_some()
            }
            // Only the kinds of KNOWN_KINDS get here.
            other => {
                *self.report.skipped.entry(other.to_owned()).or_default() += 1;
                return Ok(());
            }
        };
        *self.report.loaded.entry(kind.to_owned()).or_default() += 1;
        if replaced {
            self.report.replaced += 1;
        }
        Ok(())
    }

    /// Builds the cluster state and its indexes.
    pub fn finish(self) -> (ClusterState, LoadReport) {
        let SnapshotLoader {
            report,
            mut namespaces,
            mut nodes,
            pods,
            services,
            slices,
            replica_sets,
            jobs,
            policies,
            cluster_policies,
            default_namespace: _,
        } = self;

        // Pods on nodes the snapshot lacks: the node is still real, and hostNetwork pods carry its address.
        for (pod, _) in pods.values() {
            if let Some(node_name) = &pod.node_name {
                let node = nodes.entry(node_name.clone()).or_insert_with(|| Node {
                    name: node_name.clone(),
                    labels: Labels::new(),
                    addresses: Vec::new(),
                    pod_cidrs: Vec::new(),
                });
                if pod.host_network {
                    for ip in &pod.ips {
                        if !node.has_address(*ip) {
                            node.addresses.push(NodeAddress {
                                ip: *ip,
                                source: NodeAddressSource::HostNetworkPod,
                            });
                        }
                    }
                }
            }
        }
        let nodes: Vec<Node> = nodes.into_values().collect();
        let node_ids: HashMap<&str, NodeId> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), NodeId(i as u32)))
            .collect();

        let mut state_pods = Vec::with_capacity(pods.len());
        for (mut pod, owner) in pods.into_values() {
            pod.node = pod
                .node_name
                .as_deref()
                .and_then(|n| node_ids.get(n).copied());
            pod.workload = workload_of(&pod, owner.as_ref(), &replica_sets, &jobs);
            state_pods.push(pod);
        }

        let mut seen: std::collections::HashSet<String> = namespaces.keys().cloned().collect();
        for namespace in state_pods
            .iter()
            .map(|p| &p.namespace)
            .chain(policies.keys().map(|(ns, _)| ns))
            .chain(services.keys().map(|(ns, _)| ns))
        {
            namespaces.entry(namespace.clone()).or_default();
        }
        let namespaces: Vec<Namespace> = namespaces
            .into_iter()
            .map(|(name, mut labels)| {
                let inferred = !seen.remove(&name);
                labels
                    .entry(NAMESPACE_NAME_LABEL.to_owned())
                    .or_insert_with(|| name.clone());
                Namespace {
                    name,
                    labels,
                    inferred,
                }
            })
            .collect();

        let mut state = ClusterState {
            namespace_index: namespaces
                .iter()
                .enumerate()
                .map(|(i, n)| (n.name.clone(), i))
                .collect(),
            namespaces,
            nodes,
            pods: state_pods,
            services: services.into_values().collect(),
            policies: policies.into_values().collect(),
            unevaluated_policies: report.unevaluated_policies.clone(),
            cluster_policies: cnp::in_evaluation_order(cluster_policies.into_values().collect()),
            ..ClusterState::default()
        };
        for (index, pod) in state.pods.iter().enumerate() {
            let id = PodId(index as u32);
            state
                .pod_index
                .insert((pod.namespace.clone(), pod.name.clone()), id);
            if let (true, Some(node)) = (pod.host_network, pod.node) {
                state.host_network_pods.entry(node).or_default().push(id);
            }
        }
        for (index, node) in state.nodes.iter().enumerate() {
            for address in node.addresses.iter().filter(|a| a.source.is_listed()) {
                state
                    .by_ip
                    .insert(address.ip, IpOwner::Node(NodeId(index as u32)));
            }
        }
        for (index, pod) in state.pods.iter().enumerate() {
            if pod.host_network {
                continue;
            }
            if pod.is_terminated() {
                for ip in &pod.ips {
                    state
                        .former_tenants
                        .entry(*ip)
                        .or_default()
                        .push(PodId(index as u32));
                }
                continue;
            }
            for ip in &pod.ips {
                let previous = state.by_ip.insert(*ip, IpOwner::Pod(PodId(index as u32)));
                if let Some(previous) = previous {
                    state.ip_conflicts += 1;
                    // The first claimant in name order keeps the address, so the result is deterministic.
                    state.by_ip.insert(*ip, previous);
                }
            }
        }
        claim_inferred_node_addresses(&mut state);
        for (index, service) in state.services.iter().enumerate() {
            let id = ServiceId(index as u32);
            state
                .service_index
                .insert((service.namespace.clone(), service.name.clone()), id);
            for ip in &service.cluster_ips {
                state.by_ip.entry(*ip).or_insert(IpOwner::Service(id));
            }
            // Other ways in: the first Service (in namespace and name order) to claim one keeps it.
            for port in &service.ports {
                let frontends = (service.load_balancer_ips.iter())
                    .map(|ip| (ip, ServiceFrontend::LoadBalancer))
                    .chain(
                        service
                            .external_ips
                            .iter()
                            .map(|ip| (ip, ServiceFrontend::ExternalIp)),
                    );
                for (ip, frontend) in frontends {
                    state
                        .frontends
                        .entry((port.protocol, *ip, port.port))
                        .or_insert((id, frontend));
                }
                if let Some(node_port) = port.node_port {
                    state
                        .node_ports
                        .entry((port.protocol, node_port))
                        .or_insert((id, port.port));
                }
            }
        }
        for (_, _, slice) in slices.values() {
            attach_slice(&mut state, slice);
        }
        (state, report)
    }
}

/// Node annotations in which CNIs publish the node's own addresses inside the pod range: Calico's IPIP,
/// VXLAN and WireGuard devices (and the address it detected for the node), Cilium's `cilium_host` (both
/// spellings), Flannel's public address.
const NODE_ADDRESS_ANNOTATIONS: [&str; 12] = [
    "projectcalico.org/IPv4Address",
    "projectcalico.org/IPv6Address",
    "projectcalico.org/IPv4IPIPTunnelAddr",
    "projectcalico.org/IPv4VXLANTunnelAddr",
    "projectcalico.org/IPv6VXLANTunnelAddr",
    "projectcalico.org/IPv4WireguardInterfaceAddr",
    "projectcalico.org/IPv6WireguardInterfaceAddr",
    "network.cilium.io/ipv4-cilium-host",
    "network.cilium.io/ipv6-cilium-host",
    "io.cilium.network.ipv4-cilium-host",
    "io.cilium.network.ipv6-cilium-host",
    "flannel.alpha.coreos.com/public-ip",
];

/// Gives nodes the addresses weir infers for them (annotations, each podCIDR's first host and network
/// address) where no pod holds the address now or held it before: pods come first, and an inferred address
/// never hides one.
fn claim_inferred_node_addresses(state: &mut ClusterState) {
    for index in 0..state.nodes.len() {
        let node = &mut state.nodes[index];
        let (listed, mut candidates): (Vec<NodeAddress>, Vec<NodeAddress>) =
            std::mem::take(&mut node.addresses)
                .into_iter()
                .partition(|a| a.source.is_listed());
        node.addresses = listed;
        for cidr in &node.pod_cidrs {
            if let Some(ip) = cidr.first_host() {
                candidates.push(NodeAddress {
                    ip,
                    source: NodeAddressSource::PodCidrGateway(*cidr),
                });
            }
            candidates.push(NodeAddress {
                ip: cidr.network(),
                source: NodeAddressSource::PodCidrNetwork(*cidr),
            });
        }
        for candidate in candidates {
            state.claim_for_node(NodeId(index as u32), candidate);
        }
    }
}

/// An object whose namespace is not the one given with `-n`.
#[derive(Debug, thiserror::Error)]
#[error(
    "{found:?} does not match the namespace {given:?} given with -n/--namespace (leave -n out, or the namespace \
     out of the file)"
)]
struct NamespaceMismatch {
    found: String,
    given: String,
}

/// Puts a namespaced object without `metadata.namespace` in `namespace`; an object in another namespace is
/// refused, as `kubectl apply -n` refuses it.
fn place_in_namespace(value: &mut Value, namespace: &str) -> Result<(), NamespaceMismatch> {
    let Some(object) = value.as_object_mut() else {
        return Ok(());
    };
    let metadata = object
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()));
    let Some(metadata) = metadata.as_object_mut() else {
        return Ok(());
    };
    match metadata.get("namespace") {
        None | Some(Value::Null) => {
            metadata.insert("namespace".to_owned(), Value::String(namespace.to_owned()));
            Ok(())
        }
        Some(Value::String(s)) if s.is_empty() => {
            metadata.insert("namespace".to_owned(), Value::String(namespace.to_owned()));
            Ok(())
        }
        Some(Value::String(s)) if s == namespace => Ok(()),
        Some(Value::String(s)) => Err(NamespaceMismatch {
            found: s.clone(),
            given: namespace.to_owned(),
        }),
        Some(_) => Ok(()),
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let io = |source| LoadError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            collect_files(&entry, out)?;
        } else if matches!(
            entry.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(entry);
        }
    }
    Ok(())
}

/// Splits a file into documents: JSON when it starts like JSON (faster, and exact about numbers), YAML
/// otherwise (YAML 1.2 core schema: `ns: y` is the string "y", as a person writing a label means). The YAML budgets grow with the file so a real 50 MB dump loads, while a small file full of
/// aliases still cannot expand into gigabytes.
fn parse_documents(path: &Path, bytes: &[u8]) -> Result<Vec<Value>, LoadError> {
    let syntax = |message: String| LoadError::Syntax {
        path: path.to_owned(),
        message,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| syntax(format!("not UTF-8 text ({e})")))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim_start().starts_with(['{', '[']) {
        let mut documents = Vec::new();
        for value in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
            documents.push(value.map_err(|e| syntax(e.to_string()))?);
        }
        return Ok(documents);
    }
    let scale = bytes.len().saturating_mul(2).max(1_000_000);
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_events: scale,
            max_nodes: scale,
            max_documents: scale / 16,
            max_total_scalar_bytes: bytes.len().max(1 << 20),
            max_reader_input_bytes: Some(MAX_FILE_BYTES as usize),
        },
        // YAML 1.2 booleans only: a label value written `y`, `n`, `on` or `off` stays a string.
        strict_booleans: true,
    };
    serde_saphyr::from_multiple_with_options::<Value>(text, options)
        .map_err(|e| syntax(e.to_string()))
}

/// `Kind namespace/name` of an object, read before it is typed so errors can name it.
struct ObjectRef {
    kind: String,
    namespace: Option<String>,
    name: Option<String>,
}

impl ObjectRef {
    fn of(kind: &str, value: &Value) -> ObjectRef {
        let field = |key: &str| {
            value
                .get("metadata")
                .and_then(|m| m.get(key))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        ObjectRef {
            kind: kind.to_owned(),
            namespace: field("namespace"),
            name: field("name"),
        }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ", self.kind)?;
        if let Some(ns) = &self.namespace {
            write!(f, "{ns}/")?;
        }
        f.write_str(self.name.as_deref().unwrap_or("(unnamed)"))
    }
}

/// The file and object being read, for errors.
struct Context<'a> {
    path: &'a Path,
    object: ObjectRef,
}

impl Context<'_> {
    fn error(&self, field: impl Into<String>, message: impl Into<String>) -> LoadError {
        LoadError::Object {
            path: self.path.to_owned(),
            object: self.object.to_string(),
            field: field.into(),
            message: message.into(),
        }
    }

    fn typed<T: DeserializeOwned>(&self, value: Value) -> Result<T, LoadError> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            self.error(
                if field == "." {
                    "(object)".into()
                } else {
                    field
                },
                e.into_inner().to_string(),
            )
        })
    }

    fn name(&self, meta: &ObjectMeta) -> Result<String, LoadError> {
        meta.name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| self.error("metadata.name", "missing"))
    }

    fn namespace(&self, meta: &ObjectMeta) -> Result<String, LoadError> {
        meta.namespace
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                self.error(
                    "metadata.namespace",
                    "missing: give -n/--namespace to place objects without one, as `kubectl apply -n` \
                     does (snapshots from `kubectl get ... -A -o yaml` keep their namespaces)",
                )
            })
    }

    fn ip(&self, field: impl Into<String>, text: &str) -> Result<IpAddr, LoadError> {
        text.parse()
            .map_err(|_| self.error(field, format!("{text:?} is not an IP address")))
    }

    fn protocol(&self, field: String, text: Option<&str>) -> Result<Protocol, LoadError> {
        Protocol::from_kubernetes(text).ok_or_else(|| {
            self.error(
                field,
                format!(
                    "unsupported protocol {:?} (expected TCP, UDP or SCTP)",
                    text.unwrap_or("")
                ),
            )
        })
    }

    fn port(&self, field: String, number: i32) -> Result<u16, LoadError> {
        u16::try_from(number)
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| self.error(field, format!("port {number} is outside 1-65535")))
    }

    fn node(&self, node: core::Node) -> Result<Node, LoadError> {
        let name = self.name(&node.metadata)?;
        let mut addresses: Vec<NodeAddress> = Vec::new();
        let listed = node.status.and_then(|s| s.addresses).unwrap_or_default();
        for (i, address) in listed.iter().enumerate() {
            if address.type_ == "InternalIP" || address.type_ == "ExternalIP" {
                let ip = self.ip(format!("status.addresses[{i}].address"), &address.address)?;
                if !addresses.iter().any(|a| a.ip == ip) {
                    addresses.push(NodeAddress {
                        ip,
                        source: NodeAddressSource::Status(address.type_.clone()),
                    });
                }
            }
        }
        // The CNIs' own word on the node's addresses inside the pod range. These annotations are not part of
        // the API: a value that is not an address is left out rather than refusing the node.
        let annotations = node.metadata.annotations.unwrap_or_default();
        for key in NODE_ADDRESS_ANNOTATIONS {
            let Some(value) = annotations.get(key) else {
                continue;
            };
            let text = value.trim();
            let text = text.split_once('/').map_or(text, |(ip, _)| ip);
            if let Ok(ip) = text.parse::<IpAddr>()
                && !addresses.iter().any(|a| a.ip == ip)
            {
                addresses.push(NodeAddress {
                    ip,
                    source: NodeAddressSource::Annotation(key.to_owned()),
                });
            }
        }
        let spec = node.spec.unwrap_or_default();
        let mut pod_cidrs = Vec::new();
        let listed = spec.pod_cidrs.unwrap_or_default();
        let (field, texts) = if listed.is_empty() {
            ("spec.podCIDR", spec.pod_cidr.into_iter().collect())
        } else {
            ("spec.podCIDRs", listed)
        };
        for (i, text) in texts.iter().enumerate() {
            let cidr = Cidr::parse(text).ok_or_else(|| {
                self.error(
                    format!("{field}[{i}]"),
                    format!("{text:?} is not an address block like 10.244.1.0/24"),
                )
            })?;
            pod_cidrs.push(cidr);
        }
        Ok(Node {
            name,
            labels: node.metadata.labels.unwrap_or_default(),
            addresses,
            pod_cidrs,
        })
    }

    fn pod(&self, pod: core::Pod) -> Result<(Pod, Option<OwnerReference>), LoadError> {
        let namespace = self.namespace(&pod.metadata)?;
        let name = self.name(&pod.metadata)?;
        let owner = controller_of(&pod.metadata);
        let spec = pod.spec.unwrap_or_default();
        let status = pod.status.unwrap_or_default();
        let mut ips = Vec::new();
        if let Some(pod_ips) = &status.pod_ips {
            for (i, entry) in pod_ips.iter().enumerate() {
                ips.push(self.ip(format!("status.podIPs[{i}].ip"), &entry.ip)?);
            }
        }
        if let Some(ip) = status
            .pod_ip
            .as_deref()
            .filter(|ip| !ip.is_empty() && ips.is_empty())
        {
            ips.push(self.ip("status.podIP", ip)?);
        }
        let mut ports = Vec::new();
        let sidecars = spec
            .init_containers
            .iter()
            .flatten()
            .enumerate()
            .filter(|(_, c)| c.restart_policy.as_deref() == Some("Always"))
            .map(|(i, c)| ("initContainers", i, c));
        let containers = spec
            .containers
            .iter()
            .enumerate()
            .map(|(i, c)| ("containers", i, c));
        for (list, ci, container) in containers.chain(sidecars) {
            for (pi, port) in container.ports.iter().flatten().enumerate() {
                let at = format!("spec.{list}[{ci}].ports[{pi}]");
                ports.push(ContainerPort {
                    name: port.name.clone().filter(|n| !n.is_empty()),
                    port: self.port(format!("{at}.containerPort"), port.container_port)?,
                    protocol: self.protocol(format!("{at}.protocol"), port.protocol.as_deref())?,
                });
            }
        }
        let workload = Workload {
            kind: WorkloadKind::Pod,
            namespace: namespace.clone(),
            name: name.clone(),
            inferred: false,
        };
        // A finished pod gave its address back when its last container stopped.
        let finished = status
            .container_statuses
            .iter()
            .flatten()
            .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
            .map(timestamp)
            .max();
        let record = Pod {
            created: pod.metadata.creation_timestamp.as_ref().map(timestamp),
            finished,
            namespace,
            name,
            labels: pod.metadata.labels.unwrap_or_default(),
            ips,
            node_name: spec.node_name.filter(|n| !n.is_empty()),
            node: None,
            host_network: spec.host_network.unwrap_or(false),
            phase: status.phase.unwrap_or_default(),
            ports,
            workload,
        };
        Ok((record, owner))
    }

    fn service(&self, service: core::Service) -> Result<Service, LoadError> {
        let namespace = self.namespace(&service.metadata)?;
        let name = self.name(&service.metadata)?;
        let spec = service.spec.unwrap_or_default();
        let mut cluster_ips = Vec::new();
        let listed = match (&spec.cluster_ips, &spec.cluster_ip) {
            (Some(ips), _) if !ips.is_empty() => ips.clone(),
            (_, Some(ip)) => vec![ip.clone()],
            _ => Vec::new(),
        };
        for (i, ip) in listed.iter().enumerate() {
            if ip.is_empty() || ip == "None" {
                continue;
            }
            cluster_ips.push(self.ip(format!("spec.clusterIPs[{i}]"), ip)?);
        }
        let mut ports = Vec::new();
        for (i, port) in spec.ports.iter().flatten().enumerate() {
            let at = format!("spec.ports[{i}]");
            let number = self.port(format!("{at}.port"), port.port)?;
            let target = match &port.target_port {
                None => TargetPort::Number(number),
                Some(IntOrString::Int(n)) => {
                    TargetPort::Number(self.port(format!("{at}.targetPort"), *n)?)
                }
                Some(IntOrString::String(s)) => match s.parse::<i32>() {
                    Ok(n) => TargetPort::Number(self.port(format!("{at}.targetPort"), n)?),
                    Err(_) => TargetPort::Name(s.clone()),
                },
            };
            let node_port = match port.node_port {
                None | Some(0) => None,
                Some(n) => Some(self.port(format!("{at}.nodePort"), n)?),
            };
            ports.push(ServicePort {
                name: port.name.clone().unwrap_or_default(),
                port: number,
                protocol: self.protocol(format!("{at}.protocol"), port.protocol.as_deref())?,
                target,
                node_port,
            });
        }
        let mut external_ips = Vec::new();
        for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
            external_ips.push(self.ip(format!("spec.externalIPs[{i}]"), ip)?);
        }
        let mut load_balancer_ips = Vec::new();
        let ingress = service
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|lb| lb.ingress)
            .unwrap_or_default();
        for (i, entry) in ingress.iter().enumerate() {
            if let Some(ip) = entry.ip.as_deref().filter(|ip| !ip.is_empty()) {
                load_balancer_ips
                    .push(self.ip(format!("status.loadBalancer.ingress[{i}].ip"), ip)?);
            }
        }
        Ok(Service {
            namespace,
            name,
            cluster_ips,
            external_ips,
            load_balancer_ips,
            ports,
            selector: spec.selector.filter(|s| !s.is_empty()),
            backends: Vec::new(),
            has_endpoint_slices: false,
        })
    }
}

fn timestamp(time: &Time) -> Timestamp {
    let nanos = time.0.as_nanosecond();
    Timestamp(i64::try_from(nanos).unwrap_or(if nanos < 0 { i64::MIN } else { i64::MAX }))
}

fn controller_of(meta: &ObjectMeta) -> Option<OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .cloned()
}

/// Follows a pod's controller upwards: ReplicaSet → Deployment, Job → CronJob, or the controller itself.
fn workload_of(
    pod: &Pod,
    owner: Option<&OwnerReference>,
    replica_sets: &HashMap<(String, String), Option<OwnerReference>>,
    jobs: &HashMap<(String, String), Option<OwnerReference>>,
) -> Workload {
    let make = |kind, name: &str, inferred| Workload {
        kind,
        namespace: pod.namespace.clone(),
        name: name.to_owned(),
        inferred,
    };
    let Some(owner) = owner else {
        return make(WorkloadKind::Pod, &pod.name, false);
    };
    let key = (pod.namespace.clone(), owner.name.clone());
    match owner.kind.as_str() {
        "ReplicaSet" => match replica_sets.get(&key) {
            Some(Some(parent)) if parent.kind == "Deployment" => {
                make(WorkloadKind::Deployment, &parent.name, false)
            }
            Some(Some(parent)) => make(kind_of(&parent.kind), &parent.name, false),
            Some(None) => make(WorkloadKind::ReplicaSet, &owner.name, false),
            // The ReplicaSet is not in the snapshot: a Deployment names its ReplicaSets
            // `<deployment>-<pod-template-hash>`, and the pod carries that hash.
            None => match pod
                .labels
                .get("pod-template-hash")
                .and_then(|hash| owner.name.strip_suffix(hash.as_str()))
                .and_then(|prefix| prefix.strip_suffix('-'))
            {
                Some(deployment) => make(WorkloadKind::Deployment, deployment, true),
                None => make(WorkloadKind::ReplicaSet, &owner.name, false),
            },
        },
        "Job" => match jobs.get(&key) {
            Some(Some(parent)) if parent.kind == "CronJob" => {
                make(WorkloadKind::CronJob, &parent.name, false)
            }
            Some(Some(parent)) => make(kind_of(&parent.kind), &parent.name, false),
            _ => make(WorkloadKind::Job, &owner.name, false),
        },
        other => make(kind_of(other), &owner.name, false),
    }
}

fn kind_of(kind: &str) -> WorkloadKind {
    match kind {
        "Deployment" => WorkloadKind::Deployment,
        "ReplicaSet" => WorkloadKind::ReplicaSet,
        "StatefulSet" => WorkloadKind::StatefulSet,
        "DaemonSet" => WorkloadKind::DaemonSet,
        "Job" => WorkloadKind::Job,
        "CronJob" => WorkloadKind::CronJob,
        other => WorkloadKind::Other(other.to_owned()),
    }
}

/// Adds a slice's endpoints to its Service. Slices for Services not in the snapshot are ignored; malformed
/// addresses are skipped (the API server validates them, so this only drops hand-edited garbage).
fn attach_slice(state: &mut ClusterState, slice: &EndpointSlice) {
    let Some(namespace) = slice.metadata.namespace.as_deref() else {
        return;
    };
    let Some(service_name) = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("kubernetes.io/service-name"))
    else {
        return;
    };
    let Some(service_id) = state.find_service(namespace, service_name) else {
        return;
    };
    let ports: Vec<(String, u16, Protocol)> = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let port = u16::try_from(p.port?).ok()?;
            let protocol = Protocol::from_kubernetes(p.protocol.as_deref())?;
            Some((p.name.clone().unwrap_or_default(), port, protocol))
        })
        .collect();
    let mut backends = Vec::new();
    for endpoint in &slice.endpoints {
        let pod = endpoint
            .target_ref
            .as_ref()
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .and_then(|r| {
                let ns = r.namespace.as_deref().unwrap_or(namespace);
                state.find_pod(ns, r.name.as_deref()?)
            });
        let ready = endpoint
            .conditions
            .as_ref()
            .and_then(|c| c.ready)
            .unwrap_or(true);
        for address in &endpoint.addresses {
            if let Ok(ip) = address.parse() {
                backends.push(Backend {
                    ip,
                    pod,
                    ready,
                    ports: ports.clone(),
                });
            }
        }
    }
    let service = &mut state.services[service_id.0 as usize];
    service.has_endpoint_slices = true;
    service.backends.extend(backends);
}

//! The cluster as weir sees it: plain records distilled from the API objects, and the indexes built over them.
//!
//! Records keep only what attribution and policy evaluation read, so the state of a 5,000-pod cluster is a few
//! megabytes and every lookup is a hash probe. NetworkPolicies stay as their k8s-openapi objects because the
//! policy engine compiles them itself and its explanations quote them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use weir_model::{Cidr, Protocol, Timestamp};

/// Labels of an object, sorted by key.
pub type Labels = BTreeMap<String, String>;

/// The index of a pod in [`ClusterState::pods`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodId(pub u32);

/// The index of a node in [`ClusterState::nodes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

/// The index of a Service in [`ClusterState::services`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(pub u32);

/// A namespace and its labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    /// Name.
    pub name: String,
    /// Labels, always including `kubernetes.io/metadata.name` (the API server sets it on every namespace).
    pub labels: Labels,
    /// True when the snapshot held pods or policies in this namespace but not the Namespace itself.
    pub inferred: bool,
}

/// A node and the addresses its host-network traffic comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// Every address that is the node's, each with the rule that made it so.
    pub addresses: Vec<NodeAddress>,
    /// `spec.podCIDRs` (or `spec.podCIDR`): the ranges its pods get addresses from, when the CNI uses them.
    pub pod_cidrs: Vec<Cidr>,
}

impl Node {
    /// Whether `ip` is one of the node's addresses.
    pub fn has_address(&self, ip: IpAddr) -> bool {
        self.addresses.iter().any(|a| a.ip == ip)
    }

    /// The rule that made `ip` the node's, if it is.
    pub fn address_source(&self, ip: IpAddr) -> Option<&NodeAddressSource> {
        self.addresses
            .iter()
            .find(|a| a.ip == ip)
            .map(|a| &a.source)
    }
}

/// One address of a node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeAddress {
    /// The address.
    pub ip: IpAddr,
    /// Why it is the node's.
    pub source: NodeAddressSource,
}

/// Why an address is a node's. Besides the addresses the API lists, a node talks to its own pods from
/// addresses inside the pod range (kubelet probes come from them), which attribution must not call unknown
/// pods: the bridge of kubenet and bridge CNIs (`cbr0`, `cni0`: the first host of the node's podCIDR), Flannel's
/// VXLAN device (`flannel.1`: the podCIDR's network address), Calico's tunnel and WireGuard devices and
/// Cilium's `cilium_host` (published as node annotations), and whatever else the node's agent reports.
/// Addresses inside the pod range are the node's only while no pod holds them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NodeAddressSource {
    /// `status.addresses` of this type (InternalIP or ExternalIP).
    Status(String),
    /// A hostNetwork pod on the node reports it as its address.
    HostNetworkPod,
    /// The first host of this podCIDR, held by no pod: the node's bridge (`cbr0`, `cni0`).
    PodCidrGateway(Cidr),
    /// The network address of this podCIDR, held by no pod: Flannel's `flannel.1`.
    PodCidrNetwork(Cidr),
    /// This node annotation of the CNI (Calico's tunnel or WireGuard address, Cilium's `cilium_host`).
    Annotation(String),
    /// weir's agent on the node reported it as the address of this interface of the node.
    Interface(String),
}

impl fmt::Display for NodeAddressSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeAddressSource::Status(kind) => write!(f, "status.addresses ({kind})"),
            NodeAddressSource::HostNetworkPod => {
                f.write_str("the address of a hostNetwork pod on it")
            }
            NodeAddressSource::PodCidrGateway(cidr) => write!(
                f,
                "the first address of its podCIDR {cidr}, held by no pod (the node's bridge, cbr0 or cni0)"
            ),
            NodeAddressSource::PodCidrNetwork(cidr) => write!(
                f,
                "the network address of its podCIDR {cidr}, held by no pod (Flannel's flannel.1)"
            ),
            NodeAddressSource::Annotation(key) => write!(f, "its annotation {key}"),
            NodeAddressSource::Interface(name) => {
                write!(f, "its interface {name}, as weir's agent on it reported")
            }
        }
    }
}

impl NodeAddressSource {
    /// Whether the API lists the address as the node's (status, or a hostNetwork pod), as opposed to a rule
    /// weir applies; such an address wins over a pod that claims it, an inferred one only counts while no
    /// pod holds it.
    pub fn is_listed(&self) -> bool {
        matches!(
            self,
            NodeAddressSource::Status(_) | NodeAddressSource::HostNetworkPod
        )
    }
}

/// A port a container declares (`spec.containers[].ports[]`), which named policy and Service ports resolve to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerPort {
    /// The port's name, if it has one.
    pub name: Option<String>,
    /// The port number.
    pub port: u16,
    /// TCP, UDP or SCTP.
    pub protocol: Protocol,
}

/// The kind of a workload that owns pods.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkloadKind {
    /// apps/v1 Deployment (through its ReplicaSet).
    Deployment,
    /// apps/v1 ReplicaSet without a Deployment.
    ReplicaSet,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
    /// batch/v1 Job without a CronJob.
    Job,
    /// batch/v1 CronJob (through its Job).
    CronJob,
    /// A pod no controller owns.
    Pod,
    /// Any other controller kind (a custom resource, for example).
    Other(String),
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::ReplicaSet => "ReplicaSet",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
            WorkloadKind::Job => "Job",
            WorkloadKind::CronJob => "CronJob",
            WorkloadKind::Pod => "Pod",
            WorkloadKind::Other(kind) => kind,
        })
    }
}

/// The workload a pod belongs to, found by following controller ownerReferences upwards.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Workload {
    /// What kind of controller it is.
    pub kind: WorkloadKind,
    /// Namespace (the pod's).
    pub namespace: String,
    /// Name of the controller (or of the pod, for a bare pod).
    pub name: String,
    /// True when a link of the chain was not in the snapshot and was inferred (a ReplicaSet's Deployment
    /// from the `pod-template-hash` naming convention).
    pub inferred: bool,
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// `status.podIPs` (or `status.podIP`); for a hostNetwork pod these are its node's addresses.
    pub ips: Vec<IpAddr>,
    /// `spec.nodeName`, resolved when the Node is in the snapshot.
    pub node_name: Option<String>,
    /// The node it runs on, when that Node is in the snapshot.
    pub node: Option<NodeId>,
    /// `spec.hostNetwork`: the pod shares its node's network namespace and NetworkPolicy does not apply to it.
    pub host_network: bool,
    /// `status.phase` (Pending, Running, Succeeded, Failed, Unknown), empty when absent.
    pub phase: String,
    /// Ports declared by its containers (and restartable init containers, i.e. sidecars).
    pub ports: Vec<ContainerPort>,
    /// The workload that owns it.
    pub workload: Workload,
    /// `metadata.creationTimestamp`: the pod cannot have used an address before this.
    pub created: Option<Timestamp>,
    /// For a finished pod, when its last container stopped (it released its address then).
    pub finished: Option<Timestamp>,
}

impl Pod {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// True when the pod has finished (Succeeded or Failed) and no longer holds its IP.
    pub fn is_terminated(&self) -> bool {
        self.phase == "Succeeded" || self.phase == "Failed"
    }

    /// Whether the pod could have held its addresses at `at`: not before it was created, and for a finished
    /// pod not after it finished (a finished pod without a finish time is given the benefit of the doubt).
    pub fn alive_at(&self, at: Timestamp) -> bool {
        self.created.is_none_or(|c| c <= at)
            && (!self.is_terminated() || self.finished.is_none_or(|f| at <= f))
    }

    /// The port number a container port name stands for under a protocol, if a container declares it.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.protocol == protocol && p.name.as_deref() == Some(name))
            .map(|p| p.port)
    }
}

/// Where a Service port sends traffic on its backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// A container port name, resolved per backend pod.
    Name(String),
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// The port's name (empty for a Service's single unnamed port).
    pub name: String,
    /// The port clients connect to on the ClusterIP.
    pub port: u16,
    /// TCP, UDP or SCTP.
    pub protocol: Protocol,
    /// `targetPort` (defaults to `port`).
    pub target: TargetPort,
    /// `nodePort`: the port every node forwards to this Service port (NodePort and LoadBalancer Services).
    pub node_port: Option<u16>,
}

/// One address of an EndpointSlice, with the port numbers the slice gives each named Service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// The endpoint's address.
    pub ip: IpAddr,
    /// The pod behind it (`targetRef`), when that pod is in the snapshot.
    pub pod: Option<PodId>,
    /// `conditions.ready` (absent counts as ready, as the API defines).
    pub ready: bool,
    /// Slice port name → (port, protocol), as the slice that listed this endpoint gives them.
    pub ports: Vec<(String, u16, Protocol)>,
}

/// A Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `spec.clusterIPs` (empty for headless and ExternalName Services).
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.externalIPs`: addresses the nodes accept the Service's ports on.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`: the load balancer's addresses (an ingress given only as a hostname
    /// has none).
    pub load_balancer_ips: Vec<IpAddr>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// `spec.selector`, if any.
    pub selector: Option<Labels>,
    /// Backends from the Service's EndpointSlices.
    pub backends: Vec<Backend>,
    /// True when at least one EndpointSlice for it was in the snapshot.
    pub has_endpoint_slices: bool,
}

impl Service {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A backend a Service port resolves to: the pod (if known), its address and the port traffic arrives on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedBackend {
    /// The backend's address.
    pub ip: IpAddr,
    /// The pod behind it, when known.
    pub pod: Option<PodId>,
    /// The port after DNAT.
    pub port: u16,
    /// Whether the endpoint is ready.
    pub ready: bool,
}

/// A NetworkPolicy with the file it came from (so later errors can name it).
#[derive(Clone, Debug)]
pub struct PolicyObject {
    /// The object as the API server returned it.
    pub policy: NetworkPolicy,
    /// The file it was read from.
    pub source: Arc<str>,
}

impl PolicyObject {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.policy.metadata.namespace.as_deref().unwrap_or(""),
            self.policy.metadata.name.as_deref().unwrap_or("")
        )
    }
}

/// How a connection reached a Service: the address and port it was sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceFrontend {
    /// A ClusterIP, on the Service port.
    ClusterIp,
    /// A load balancer address (`status.loadBalancer.ingress`), on the Service port.
    LoadBalancer,
    /// One of `spec.externalIPs`, on the Service port.
    ExternalIp,
    /// A node's address, on the port's `nodePort`.
    NodePort,
}

impl ServiceFrontend {
    /// The kebab-case name used in JSON: `cluster-ip`, `load-balancer`, `external-ip`, `node-port`.
    pub fn name(self) -> &'static str {
        match self {
            ServiceFrontend::ClusterIp => "cluster-ip",
            ServiceFrontend::LoadBalancer => "load-balancer",
            ServiceFrontend::ExternalIp => "external-ip",
            ServiceFrontend::NodePort => "node-port",
        }
    }
}

/// Who an address belongs to in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpOwner {
    /// A pod with its own network namespace.
    Pod(PodId),
    /// A node (hostNetwork pods on it share the address).
    Node(NodeId),
    /// A Service ClusterIP.
    Service(ServiceId),
}

/// The whole cluster: objects sorted by namespace and name, and lookups by address.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    pub(crate) namespaces: Vec<Namespace>,
    pub(crate) nodes: Vec<Node>,
    pub(crate) pods: Vec<Pod>,
    pub(crate) services: Vec<Service>,
    pub(crate) policies: Vec<PolicyObject>,
    pub(crate) by_ip: HashMap<IpAddr, IpOwner>,
    pub(crate) namespace_index: HashMap<String, usize>,
    pub(crate) pod_index: HashMap<(String, String), PodId>,
    pub(crate) service_index: HashMap<(String, String), ServiceId>,
    pub(crate) host_network_pods: HashMap<NodeId, Vec<PodId>>,
    /// Load balancer and external addresses by (protocol, address, Service port).
    pub(crate) frontends: HashMap<(Protocol, IpAddr, u16), (ServiceId, ServiceFrontend)>,
    /// Services by (protocol, nodePort), reached on every node's addresses.
    pub(crate) node_ports: HashMap<(Protocol, u16), (ServiceId, u16)>,
    /// Finished pods by the addresses they held, for flows from before they finished.
    pub(crate) former_tenants: HashMap<IpAddr, Vec<PodId>>,
    pub(crate) ip_conflicts: u64,
    /// Network policies of kinds weir does not evaluate, by `Kind (group)` ([`crate::LoadReport`]).
    pub(crate) unevaluated_policies: BTreeMap<String, usize>,
    /// Cluster-wide policies (ClusterNetworkPolicy, and v1alpha1 ANP/BANP translated), in evaluation order.
    pub(crate) cluster_policies: Vec<crate::cnp::ClusterPolicy>,
}

impl ClusterState {
    /// Namespaces, sorted by name.
    pub fn namespaces(&self) -> &[Namespace] {
        &self.namespaces
    }

    /// A namespace by name.
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespace_index.get(name).map(|&i| &self.namespaces[i])
    }

    /// Nodes, sorted by name.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// A node by id.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0 as usize]
    }

    /// Pods, sorted by namespace and name.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The running pods with a network namespace of their own (not hostNetwork, not finished): the ones
    /// NetworkPolicy governs.
    pub fn running_pods(&self) -> impl Iterator<Item = PodId> + '_ {
        self.pods
            .iter()
            .enumerate()
            .filter(|(_, pod)| !pod.host_network && !pod.is_terminated())
            .map(|(i, _)| PodId(i as u32))
    }

    /// A pod by id.
    pub fn pod(&self, id: PodId) -> &Pod {
        &self.pods[id.0 as usize]
    }

    /// A pod by namespace and name.
    pub fn find_pod(&self, namespace: &str, name: &str) -> Option<PodId> {
        self.pod_index
            .get(&(namespace.to_owned(), name.to_owned()))
            .copied()
    }

    /// Services, sorted by namespace and name.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// A Service by id.
    pub fn service(&self, id: ServiceId) -> &Service {
        &self.services[id.0 as usize]
    }

    /// A Service by namespace and name.
    pub fn find_service(&self, namespace: &str, name: &str) -> Option<ServiceId> {
        self.service_index
            .get(&(namespace.to_owned(), name.to_owned()))
            .copied()
    }

    /// NetworkPolicies, sorted by namespace and name.
    pub fn policies(&self) -> &[PolicyObject] {
        &self.policies
    }

    /// Who owns an address: a pod, a node (and its hostNetwork pods) or a Service ClusterIP.
    pub fn owner_of(&self, ip: IpAddr) -> Option<IpOwner> {
        self.by_ip.get(&ip).copied()
    }

    /// Who owned an address at a moment: the current owner if it already existed then, otherwise a finished
    /// pod that held the address at that moment (the latest created, if several did). `None` when nobody
    /// in the snapshot can have held it then: a pod that is gone from the cluster, which must not be guessed.
    pub fn owner_at(&self, ip: IpAddr, at: Timestamp) -> Option<IpOwner> {
        let current = self.by_ip.get(&ip).copied();
        if let Some(owner) = current {
            match owner {
                IpOwner::Pod(pod) if !self.pod(pod).alive_at(at) => {}
                _ => return Some(owner),
            }
        }
        self.former_tenants
            .get(&ip)?
            .iter()
            .copied()
            .filter(|&p| self.pod(p).alive_at(at))
            .max_by_key(|&p| self.pod(p).created)
            .map(IpOwner::Pod)
    }

    /// The Service a connection to `ip`:`port` reaches without a ClusterIP, and the Service port it stands
    /// for: a load balancer or external address on a Service port, or a node's address on a `nodePort`.
    /// A ClusterIP is found through [`ClusterState::owner_of`] instead.
    pub fn service_frontend(
        &self,
        protocol: Protocol,
        ip: IpAddr,
        port: u16,
    ) -> Option<(ServiceId, u16, ServiceFrontend)> {
        if let Some(&(service, frontend)) = self.frontends.get(&(protocol, ip, port)) {
            return Some((service, port, frontend));
        }
        match self.by_ip.get(&ip) {
            Some(IpOwner::Node(_)) => self
                .node_ports
                .get(&(protocol, port))
                .map(|&(service, service_port)| (service, service_port, ServiceFrontend::NodePort)),
            _ => None,
        }
    }

    /// Whether any Service is reached other than through its ClusterIP (load balancer, external IPs, node
    /// ports).
    pub fn has_service_frontends(&self) -> bool {
        !self.frontends.is_empty() || !self.node_ports.is_empty()
    }

    /// Whether an address is in a node's pod range: an address there that no pod owns is an unknown pod, not
    /// something outside the cluster.
    pub fn in_pod_range(&self, ip: IpAddr) -> bool {
        self.nodes
            .iter()
            .any(|n| n.pod_cidrs.iter().any(|c| c.contains(ip)))
    }

    /// The hostNetwork pods running on a node.
    pub fn host_network_pods(&self, node: NodeId) -> &[PodId] {
        self.host_network_pods
            .get(&node)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Network policies of kinds weir does not evaluate that the cluster holds, by `Kind (group)`: a verdict is
    /// then that of NetworkPolicy alone, and whatever shows one must say so.
    pub fn unevaluated_policies(&self) -> &BTreeMap<String, usize> {
        &self.unevaluated_policies
    }

    /// Cluster-wide policies, in the order they are evaluated: the Admin tier by priority, then the Baseline
    /// tier (equal priorities by kind and name).
    pub fn cluster_policies(&self) -> &[crate::cnp::ClusterPolicy] {
        &self.cluster_policies
    }

    /// How many addresses were claimed by two live pods (the later one in name order won).
    pub fn ip_conflicts(&self) -> u64 {
        self.ip_conflicts
    }

    /// The same cluster with other NetworkPolicies in force (a suggestion to prove, a policy change to compare).
    pub fn with_policies(&self, policies: Vec<PolicyObject>) -> ClusterState {
        let mut policies = policies;
        policies.sort_by_key(|p| p.key());
        ClusterState {
            policies,
            ..self.clone()
        }
    }

    /// The same cluster with a proposed set of policies in force (what `weir diff --policies-after` and the
    /// aggregator's diff judge): the proposal's NetworkPolicies replace the cluster's, and its cluster-wide
    /// policies replace the cluster's cluster-wide policies. A proposal of only NetworkPolicies keeps the
    /// cluster-wide policies in force, so a NetworkPolicy change is judged under the Admin tier that applies; a
    /// proposal of only cluster-wide policies keeps the NetworkPolicies, so a new Admin policy is judged against
    /// the NetworkPolicies in force.
    pub fn with_proposed(&self, proposed: &ClusterState) -> ClusterState {
        let mut state = self.clone();
        if !proposed.policies.is_empty() || proposed.cluster_policies.is_empty() {
            state = state.with_policies(proposed.policies.clone());
        }
        if !proposed.cluster_policies.is_empty() {
            state.cluster_policies = proposed.cluster_policies.clone();
        }
        state
    }

    /// The same cluster with these cluster-wide policies in force instead of its own.
    pub fn with_cluster_policies(&self, policies: Vec<crate::cnp::ClusterPolicy>) -> ClusterState {
        ClusterState {
            cluster_policies: crate::cnp::in_evaluation_order(policies),
            ..self.clone()
        }
    }

    /// The same cluster with the interface addresses nodes' agents report (by node name) as those nodes'
    /// own, where nothing else holds them: not a pod (now or before), a Service, or another node. An address
    /// more than one node reports (`docker0`'s 172.17.0.1 on every node) tells no node apart and is left out;
    /// so are reports for nodes the cluster does not have.
    pub fn with_node_interfaces(
        &self,
        reported: &BTreeMap<String, Vec<weir_model::ingest::InterfaceAddress>>,
    ) -> ClusterState {
        let mut reporters: HashMap<IpAddr, usize> = HashMap::new();
        for addresses in reported.values() {
            let mut mine: Vec<IpAddr> = addresses.iter().map(|a| a.ip).collect();
            mine.sort_unstable();
            mine.dedup();
            for ip in mine {
                *reporters.entry(ip).or_default() += 1;
            }
        }
        let mut state = self.clone();
        for (name, addresses) in reported {
            let Some(index) = state.nodes.iter().position(|n| &n.name == name) else {
                continue;
            };
            for address in addresses {
                if reporters.get(&address.ip) == Some(&1) {
                    state.claim_for_node(
                        NodeId(index as u32),
                        NodeAddress {
                            ip: address.ip,
                            source: NodeAddressSource::Interface(address.interface.clone()),
                        },
                    );
                }
            }
        }
        state
    }

    /// Makes an address a node's when nobody holds it: no pod (now, or finished), Service or other node.
    /// Returns whether it did. The one rule for every address weir infers for a node.
    pub(crate) fn claim_for_node(&mut self, node: NodeId, address: NodeAddress) -> bool {
        if self.by_ip.contains_key(&address.ip) || self.former_tenants.contains_key(&address.ip) {
            return false;
        }
        self.by_ip.insert(address.ip, IpOwner::Node(node));
        self.nodes[node.0 as usize].addresses.push(address);
        true
    }

    /// The one workload every backend pod of a Service belongs to, if there is exactly one.
    pub fn backend_workload(&self, id: ServiceId) -> Option<&Workload> {
        let mut pods = self.service(id).backends.iter().filter_map(|b| b.pod);
        let first = &self.pod(pods.next()?).workload;
        pods.all(|p| self.pod(p).workload == *first)
            .then_some(first)
    }

    /// The backends a Service port (by number and protocol) sends traffic to, with the port each receives it
    /// on. EndpointSlices decide when the snapshot has them; otherwise the selector and `targetPort` are
    /// resolved against the pods, as the EndpointSlice controller would.
    pub fn resolve_service(
        &self,
        id: ServiceId,
        port: u16,
        protocol: Protocol,
    ) -> Option<(&ServicePort, Vec<ResolvedBackend>)> {
        let service = self.service(id);
        let service_port = service
            .ports
            .iter()
            .find(|p| p.port == port && p.protocol == protocol)?;
        let mut backends = Vec::new();
        if service.has_endpoint_slices {
            for backend in &service.backends {
                let slice_port = backend
                    .ports
                    .iter()
                    .find(|(name, _, proto)| *name == service_port.name && *proto == protocol);
                if let Some(&(_, number, _)) = slice_port {
                    backends.push(ResolvedBackend {
                        ip: backend.ip,
                        pod: backend.pod,
                        port: number,
                        ready: backend.ready,
                    });
                }
            }
        } else if let Some(selector) = &service.selector {
            for (index, pod) in self.pods.iter().enumerate() {
                if pod.namespace != service.namespace
                    || pod.is_terminated()
                    || !selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
                {
                    continue;
                }
                let number = match &service_port.target {
                    TargetPort::Number(n) => Some(*n),
                    TargetPort::Name(name) => pod.named_port(name, protocol),
                };
                if let (Some(number), Some(&ip)) = (number, pod.ips.first()) {
                    backends.push(ResolvedBackend {
                        ip,
                        pod: Some(PodId(index as u32)),
                        port: number,
                        ready: pod.phase == "Running",
                    });
                }
            }
        }
        Some((service_port, backends))
    }
}

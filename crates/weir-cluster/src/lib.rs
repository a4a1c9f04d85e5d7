//! Kubernetes cluster state for weir: what is in the cluster, and who owns an address.
//!
//! [`ClusterState::load`] reads snapshots (`kubectl get ... -A -o yaml` or `-o json` output, multi-document
//! YAML, directories) through one checked door and builds the indexes attribution needs: address → pod or node
//! (hostNetwork pods share their node's address), Service port → backends and target ports (from
//! EndpointSlices, or from the selector when a snapshot has none), pod → owning workload. Records are plain data;
//! the policy engine and the CLI read them, and nothing here evaluates policy.

#![deny(missing_docs)]

pub mod cnp;
mod load;
mod state;
pub mod yaml;

pub use load::{LoadError, LoadReport, NAMESPACE_NAME_LABEL, SnapshotLoader};
pub use state::{
    Backend, ClusterState, ContainerPort, IpOwner, Labels, Namespace, Node, NodeAddress,
    NodeAddressSource, NodeId, Pod, PodId, PolicyObject, ResolvedBackend, Service, ServiceFrontend,
    ServiceId, ServicePort, TargetPort, Workload, WorkloadKind,
};

//! What a flow's end is counted as: its [`Group`] in a report (a workload, not its pod, so replicas add up), and
//! the same end as the [`EndpointKey`] an edge names it by, offline and live.

use std::fmt;
use std::net::IpAddr;

use weir_cluster::{ClusterState, Workload};
use weir_model::{EndpointKey, EndpointKind};

use crate::attribute::Party;

/// What a flow's end is grouped under in a report: its workload, not its pod, so replicas add up.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    /// A workload (or a bare pod).
    Workload(Workload),
    /// A node (its address, shared by its hostNetwork pods).
    Node(String),
    /// A Service whose backends span several workloads, or that could not be resolved.
    Service(String),
    /// An address outside the cluster.
    External(IpAddr),
    /// An address in the cluster's ranges that nobody held.
    Unknown(IpAddr),
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Group::Workload(w) => write!(f, "{}/{}", w.namespace, w.name),
            Group::Node(name) => write!(f, "node {name}"),
            Group::Service(key) => write!(f, "backends of svc {key}"),
            Group::External(ip) => write!(f, "{ip}"),
            Group::Unknown(ip) => write!(f, "{ip} (unknown)"),
        }
    }
}

impl Group {
    /// The group of a party at an address: a pod's workload, a node, a Service's backends (as their workload when
    /// they are one), or the address itself for outside and unknown ones.
    pub fn of(cluster: &ClusterState, party: Party, ip: IpAddr) -> Group {
        let service = |id| Group::Service(cluster.service(id).key());
        match party {
            Party::Pod(id) => Group::Workload(cluster.pod(id).workload.clone()),
            Party::Node(id) => Group::Node(cluster.node(id).name.clone()),
            Party::Backends(id) => match cluster.backend_workload(id) {
                Some(w) => Group::Workload(w.clone()),
                None => service(id),
            },
            Party::Service(id) => service(id),
            Party::External => Group::External(ip),
            Party::Unknown => Group::Unknown(ip),
        }
    }

    /// The endpoint an edge names it by (the live engine, the API and the analysis JSON's edges).
    pub fn endpoint_key(&self) -> EndpointKey {
        match self {
            Group::Workload(w) => EndpointKey::new(
                EndpointKind::Pod,
                Some(&w.namespace),
                &format!("{}/{}", w.kind, w.name),
            ),
            Group::Node(name) => EndpointKey::new(EndpointKind::Node, None, name),
            Group::Service(key) => match key.split_once('/') {
                Some((namespace, name)) => {
                    EndpointKey::new(EndpointKind::Service, Some(namespace), name)
                }
                None => EndpointKey::new(EndpointKind::Service, None, key),
            },
            Group::External(ip) => EndpointKey::new(EndpointKind::External, None, &ip.to_string()),
            Group::Unknown(ip) => EndpointKey::new(EndpointKind::Unknown, None, &ip.to_string()),
        }
    }
}

/// The endpoint a party at an address is counted as on an edge: [`Group::of`] named as [`Group::endpoint_key`].
pub fn endpoint_key(cluster: &ClusterState, party: Party, ip: IpAddr) -> EndpointKey {
    Group::of(cluster, party, ip).endpoint_key()
}

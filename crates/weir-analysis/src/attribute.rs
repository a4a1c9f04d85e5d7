//! Who an address is, at a moment.

use std::collections::HashMap;
use std::net::IpAddr;

use weir_cluster::{ClusterState, IpOwner, NodeId, PodId, ServiceId};
use weir_model::{Cidr, Timestamp};
use weir_policy::{Address, Endpoint};

/// One end of a flow, as the cluster snapshot knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Party {
    /// A pod with its own network namespace.
    Pod(PodId),
    /// A node's address, which its hostNetwork pods share.
    Node(NodeId),
    /// The backends of a Service, when the capture does not show which of them took the connection.
    Backends(ServiceId),
    /// A Service ClusterIP that could not be resolved to a backend (no backend serves that port, or the
    /// Service does not expose it).
    Service(ServiceId),
    /// Outside the cluster.
    External,
    /// Inside the cluster's address ranges, but nobody in the snapshot held the address at that time (a pod
    /// that is gone, or one the snapshot lacks). Never guessed.
    Unknown,
}

/// Attributes addresses: the snapshot's owners over time, and the address ranges that belong to the cluster.
#[derive(Debug)]
pub struct Attributor<'a> {
    cluster: &'a ClusterState,
    ranges: Vec<Cidr>,
    /// Addresses no one owns, remembered as inside (true) or outside the cluster: the range scan is per node.
    ownerless: HashMap<IpAddr, bool>,
}

impl<'a> Attributor<'a> {
    /// An attributor for a cluster; `cluster_ranges` adds address ranges that belong to the cluster beyond the
    /// nodes' pod ranges (the Service range, or pod ranges of a CNI that does not publish them on nodes).
    pub fn new(cluster: &'a ClusterState, cluster_ranges: &[Cidr]) -> Attributor<'a> {
        let mut ranges: Vec<Cidr> = cluster
            .nodes()
            .iter()
            .flat_map(|n| n.pod_cidrs.iter().copied())
            .collect();
        ranges.extend_from_slice(cluster_ranges);
        Attributor {
            cluster,
            ranges,
            ownerless: HashMap::new(),
        }
    }

    /// The cluster.
    pub fn cluster(&self) -> &'a ClusterState {
        self.cluster
    }

    /// Who held `ip` at `at`.
    pub fn party(&mut self, ip: IpAddr, at: Timestamp) -> Party {
        match self.cluster.owner_at(ip, at) {
            Some(IpOwner::Pod(pod)) => Party::Pod(pod),
            Some(IpOwner::Node(node)) => Party::Node(node),
            Some(IpOwner::Service(service)) => Party::Service(service),
            None => {
                let ranges = &self.ranges;
                let inside = *self
                    .ownerless
                    .entry(ip)
                    .or_insert_with(|| ranges.iter().any(|r| r.contains(ip)));
                if inside {
                    Party::Unknown
                } else {
                    Party::External
                }
            }
        }
    }

    /// The address the policy engine judges for a party at `ip`: pods are judged as themselves (even a finished
    /// pod, for a flow from when it ran), everything else by its address.
    pub fn address(&self, party: Party, ip: IpAddr) -> Address {
        let endpoint = match party {
            Party::Pod(pod) => Endpoint::Pod(pod),
            Party::Node(node) => Endpoint::Node(node),
            Party::Backends(_) | Party::Service(_) | Party::External | Party::Unknown => {
                Endpoint::External
            }
        };
        Address {
            endpoint,
            ip: Some(ip),
        }
    }
}

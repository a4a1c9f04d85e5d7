//! Alerts: what the aggregator tells people about unexpected lateral traffic. The JSON form is stable; it is
//! what the SSE stream, the webhook, `weir watch --output json` and `GET /api/v1/alerts` carry.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{ObservationPoint, Timestamp};

/// What an alert is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlertKind {
    /// An observed flow that the NetworkPolicies in force deny.
    PolicyViolation,
    /// A flow the policies deny reached its destination: the CNI is not enforcing them.
    EnforcementGap,
    /// An allowed flow on an edge never seen while the baseline was learned.
    NewEdge,
    /// One source reaching many destinations or ports in a short time, or denied again and again.
    Scan,
}

impl AlertKind {
    /// Every kind, in a stable order.
    pub const ALL: [AlertKind; 4] = [
        AlertKind::PolicyViolation,
        AlertKind::EnforcementGap,
        AlertKind::NewEdge,
        AlertKind::Scan,
    ];

    /// The name in JSON and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            AlertKind::PolicyViolation => "policy-violation",
            AlertKind::EnforcementGap => "enforcement-gap",
            AlertKind::NewEdge => "new-edge",
            AlertKind::Scan => "scan",
        }
    }

    /// Parses a name.
    pub fn parse(text: &str) -> Option<AlertKind> {
        AlertKind::ALL.into_iter().find(|k| k.name() == text)
    }

    /// How bad it is.
    pub fn severity(self) -> Severity {
        match self {
            AlertKind::EnforcementGap | AlertKind::Scan => Severity::Critical,
            AlertKind::PolicyViolation => Severity::High,
            AlertKind::NewEdge => Severity::Medium,
        }
    }
}

impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How urgent an alert is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    /// Worth a look.
    Medium,
    /// Act soon.
    High,
    /// Act now.
    Critical,
}

/// One end of an alert's edge.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AlertEndpoint {
    /// What it is.
    pub kind: EndpointKind,
    /// Namespace (pods and Services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Workload (`Deployment/frontend`), node name, Service name, or the address.
    pub name: String,
    /// The pod, when one pod is meant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The address seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
}

/// What one end of an edge or alert is. Serialized in kebab-case: `pod` (a workload's pods), `node`,
/// `service` (the backends of a Service that span several workloads, or none), `external` (outside the
/// cluster), `unknown` (in the cluster's ranges, held by nobody known). Ordered by those names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointKind {
    /// Outside the cluster.
    External,
    /// A node (and its hostNetwork pods).
    Node,
    /// A workload's pods.
    Pod,
    /// A Service's backends, when they are not one workload.
    Service,
    /// In the cluster's ranges, but nobody known held the address.
    Unknown,
}

impl EndpointKind {
    /// The name in JSON.
    pub fn name(self) -> &'static str {
        match self {
            EndpointKind::External => "external",
            EndpointKind::Node => "node",
            EndpointKind::Pod => "pod",
            EndpointKind::Service => "service",
            EndpointKind::Unknown => "unknown",
        }
    }
}

impl fmt::Display for EndpointKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for AlertEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// What was seen, for a person to check the alert against.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertEvidence {
    /// Flows counted into the alert.
    pub flows: u64,
    /// Packets in them, both directions.
    pub packets: u64,
    /// Bytes in them, both directions.
    pub bytes: u64,
    /// Of those flows, how many the policies deny.
    pub denied: u64,
    /// Distinct destinations (address and port) reached: scans.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub targets: u64,
    /// Up to 20 of the destination ports, ascending: scans.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// The last flow's Community ID (to find it in other tools).
    pub community_id: String,
    /// The last flow's tuple, `src:port -> dst:port`.
    pub last_flow: String,
    /// Where the last flow was seen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub observed_at: Vec<ObservationPoint>,
    /// Why: the verdict per direction with its policies, or what made it a scan or new.
    pub reason: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// An alert. One per kind and edge (for scans: per source), counting on as the traffic goes on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// Stable identifier of the kind and edge.
    pub id: String,
    /// What it is about.
    #[serde(rename = "type")]
    pub kind: AlertKind,
    /// How urgent.
    pub severity: Severity,
    /// One line for people.
    pub summary: String,
    /// The source.
    pub source: AlertEndpoint,
    /// The destination (absent for scans, which have many).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<AlertEndpoint>,
    /// Protocol name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    /// Destination port (after DNAT, as policy judges it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The deciding policies, `egress ns/name` or `ingress ns/name`.
    pub policies: Vec<String>,
    /// What was seen.
    pub evidence: AlertEvidence,
    /// First flow's start.
    pub first_seen: Timestamp,
    /// Last flow's end.
    pub last_seen: Timestamp,
    /// Occurrences (flows) so far.
    pub count: u64,
    /// When the aggregator raised it (wall clock).
    pub raised_at: Timestamp,
    /// When it was last changed.
    pub updated_at: Timestamp,
}

impl Alert {
    /// Whether the alert involves a namespace, at either end.
    pub fn touches_namespace(&self, namespace: &str) -> bool {
        self.source.namespace.as_deref() == Some(namespace)
            || self
                .destination
                .as_ref()
                .is_some_and(|d| d.namespace.as_deref() == Some(namespace))
    }
}

//! One end of an edge: what the judged-traffic model, the API, the store and the map all name an endpoint by.

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{AlertEndpoint, EndpointKind};

/// One end of an edge: a workload, a node, a Service, or an address. Ordered by kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EndpointKey {
    /// What it is.
    pub kind: EndpointKind,
    /// Namespace, for workloads and Services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<Arc<str>>,
    /// `Deployment/frontend`, the node or Service name, or the address.
    pub name: Arc<str>,
}

impl EndpointKey {
    /// An endpoint.
    pub fn new(kind: EndpointKind, namespace: Option<&str>, name: &str) -> EndpointKey {
        EndpointKey {
            kind,
            namespace: namespace.map(Arc::from),
            name: Arc::from(name),
        }
    }

    /// `namespace/name`, or the name.
    pub fn label(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.to_string(),
        }
    }

    /// Whether the endpoint is inside the cluster (lateral traffic is between such endpoints).
    pub fn in_cluster(&self) -> bool {
        self.kind != EndpointKind::External
    }

    /// The endpoint as an alert names it, with the pod and address seen.
    pub fn alert_endpoint(&self, pod: Option<&str>, ip: Option<IpAddr>) -> AlertEndpoint {
        AlertEndpoint {
            kind: self.kind,
            namespace: self.namespace.as_deref().map(str::to_owned),
            name: self.name.to_string(),
            pod: pod.map(str::to_owned),
            ip,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_as_the_store_and_api_always_have() {
        let pod = EndpointKey::new(EndpointKind::Pod, Some("shop"), "Deployment/api");
        assert_eq!(
            serde_json::to_string(&pod).unwrap_or_default(),
            r#"{"kind":"pod","namespace":"shop","name":"Deployment/api"}"#
        );
        let ext = EndpointKey::new(EndpointKind::External, None, "192.0.2.1");
        assert_eq!(
            serde_json::to_string(&ext).unwrap_or_default(),
            r#"{"kind":"external","name":"192.0.2.1"}"#
        );
        assert_eq!(pod.label(), "shop/Deployment/api");
        assert!(!ext.in_cluster() && pod.in_cluster());
        assert!(ext < pod, "ordered by kind name first");
    }
}

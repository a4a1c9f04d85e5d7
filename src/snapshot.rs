//! `--cluster` arguments: loading snapshots and naming things in them for people.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use weir_cluster::ClusterState;
use weir_model::Protocol;
use weir_policy::{Address, Endpoint, PolicySet};

/// Loads and merges snapshots, reporting skipped kinds on standard error, and compiles the policies.
pub fn load(paths: &[PathBuf]) -> Result<PolicySet> {
    load_with(paths, None)
}

/// The NetworkPolicies in files or directories (anything else in them is ignored).
pub fn load_policies(paths: &[PathBuf]) -> Result<Vec<weir_cluster::PolicyObject>> {
    let (state, _) = ClusterState::load(paths).context("cannot load the policies")?;
    Ok(state.policies().to_vec())
}

/// [`load`], with `policies` (when given) in force instead of the snapshot's own.
pub fn load_with(paths: &[PathBuf], policies: Option<&[PathBuf]>) -> Result<PolicySet> {
    let set = load_cluster(paths)?;
    match policies {
        None => Ok(set),
        Some(policy_paths) => {
            let cluster = set.cluster().with_policies(load_policies(policy_paths)?);
            PolicySet::new(Arc::new(cluster)).context("cannot use the given NetworkPolicies")
        }
    }
}

fn load_cluster(paths: &[PathBuf]) -> Result<PolicySet> {
    let (cluster, report) =
        ClusterState::load(paths).context("cannot load the cluster snapshot")?;
    if !report.skipped.is_empty() {
        let mut kinds = String::new();
        for (kind, count) in &report.skipped {
            let _ = write!(
                kinds,
                "{}{kind} {count}",
                if kinds.is_empty() { "" } else { ", " }
            );
        }
        let total: usize = report.skipped.values().sum();
        eprintln!("weir: note: skipped {total} objects of kinds weir does not use ({kinds})");
    }
    if cluster.ip_conflicts() > 0 {
        eprintln!(
            "weir: warning: {} addresses are claimed by two running pods; the first in name order keeps each",
            cluster.ip_conflicts()
        );
    }
    PolicySet::new(Arc::new(cluster)).context("cannot use the cluster's NetworkPolicies")
}

/// Parses `PORT[/PROTO]`: a number or a name, and TCP, UDP or SCTP (any case; TCP by default).
pub fn parse_port(text: &str) -> Result<(String, Protocol)> {
    let (port, proto) = match text.rsplit_once('/') {
        Some((port, proto)) => (port, proto),
        None => (text, "TCP"),
    };
    let protocol = match proto.to_ascii_uppercase().as_str() {
        "TCP" => Protocol::TCP,
        "UDP" => Protocol::UDP,
        "SCTP" => Protocol::SCTP,
        _ => bail!("{text:?}: protocol must be TCP, UDP or SCTP"),
    };
    if port.is_empty() {
        bail!("{text:?}: expected PORT[/PROTOCOL], like 80/TCP or http");
    }
    if port.parse::<u32>().is_ok_and(|n| !(1..=65535).contains(&n)) {
        bail!("{text:?}: port must be 1-65535");
    }
    Ok((port.to_owned(), protocol))
}

/// `ns/name` of a pod, `node NAME` for a node, or the address.
pub fn describe(set: &PolicySet, address: &Address) -> String {
    let cluster = set.cluster();
    let ip = address.ip.map(|ip| ip.to_string());
    match address.endpoint {
        Endpoint::Pod(pod) => cluster.pod(pod).key(),
        Endpoint::Node(node) => {
            let node = cluster.node(node);
            format!("node {}", node.name)
        }
        Endpoint::External => format!("{} (outside the cluster)", ip.unwrap_or_default()),
    }
}

/// Resolves `NS/POD` or an IP address.
pub fn resolve(set: &PolicySet, text: &str, flag: &str) -> Result<Address> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(set.address_of_ip(ip));
    }
    let Some((ns, name)) = text.split_once('/') else {
        bail!("{flag} {text:?}: expected NAMESPACE/POD or an IP address");
    };
    let cluster = set.cluster();
    match cluster.find_pod(ns, name) {
        Some(pod) => Ok(set.address_of_pod(pod)),
        None => {
            let similar: Vec<String> = cluster
                .pods()
                .iter()
                .filter(|p| p.namespace == ns || p.name.contains(name))
                .take(5)
                .map(|p| p.key())
                .collect();
            if similar.is_empty() {
                bail!("{flag} {text:?}: no such pod in the snapshot");
            }
            bail!(
                "{flag} {text:?}: no such pod in the snapshot (did you mean {}?)",
                similar.join(", ")
            )
        }
    }
}

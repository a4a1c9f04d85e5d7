//! `--cluster` arguments: loading snapshots (or the live cluster, when none is given), `weir snapshot`, and
//! naming things in the cluster for people.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};
use weir_cluster::{ClusterState, LoadReport, SnapshotLoader};
use weir_model::Protocol;
use weir_policy::{Address, Endpoint, PolicySet};

/// Where the live cluster is, as kubectl's own options say it. Used by `weir snapshot`, by `weir aggregator`,
/// and by every command that judges traffic when it is given no `--cluster`.
#[derive(Args, Clone, Default)]
pub struct KubeArgs {
    /// The kubeconfig file [default: $KUBECONFIG, then ~/.kube/config; in a pod, its service account].
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context [default: the current context].
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
}

/// Loads and merges snapshots, reporting skipped kinds on standard error, and compiles the policies. With no
/// paths, reads the live cluster instead (every namespace).
pub fn load(paths: &[PathBuf], kube: &KubeArgs) -> Result<PolicySet> {
    load_with(paths, kube, None)
}

/// NetworkPolicy files given on the command line (`--policies`, `--policies-before`...), and the namespace
/// (`-n`) for the ones that name none.
#[derive(Clone, Copy)]
pub struct PolicyFiles<'a> {
    /// Files or directories.
    pub paths: &'a [PathBuf],
    /// Where objects without `metadata.namespace` go, as with `kubectl apply -n`.
    pub namespace: Option<&'a str>,
}

/// The NetworkPolicies in files or directories (anything else in them is ignored).
/// The policies of a set of policy files, as a cluster state holding only them.
fn load_policy_set(files: PolicyFiles) -> Result<ClusterState> {
    let loaded = match files.namespace {
        Some(namespace) => ClusterState::load_in(files.paths, namespace),
        None => ClusterState::load(files.paths),
    };
    Ok(loaded.context("cannot load the policies")?.0)
}

/// [`load`], with the policies of `policies` (when given) in force instead of the snapshot's own.
pub fn load_with(
    paths: &[PathBuf],
    kube: &KubeArgs,
    policies: Option<PolicyFiles>,
) -> Result<PolicySet> {
    let set = load_cluster(paths, kube)?;
    match policies {
        None => Ok(set),
        Some(files) => with_policies(&set, files),
    }
}

/// The cluster of `set` with the policies in `files` in force instead of its own (see
/// [`ClusterState::with_proposed`]).
pub fn with_policies(set: &PolicySet, files: PolicyFiles) -> Result<PolicySet> {
    let cluster = set.cluster().with_proposed(&load_policy_set(files)?);
    PolicySet::new(Arc::new(cluster)).context("cannot use the given policies")
}

fn load_cluster(paths: &[PathBuf], kube: &KubeArgs) -> Result<PolicySet> {
    let (cluster, report) = if paths.is_empty() {
        let (objects, server) = list_live(kube, None)?;
        eprintln!(
            "weir: no --cluster given: read {} objects from the cluster at {server}",
            objects.len()
        );
        load_objects(&server, objects)?
    } else {
        ClusterState::load(paths).context("cannot load the cluster snapshot")?
    };
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
    if !report.unevaluated_policies.is_empty() {
        eprintln!(
            "weir: warning: {}",
            unevaluated_warning(&report.unevaluated_policies)
        );
    }
    if cluster.ip_conflicts() > 0 {
        eprintln!(
            "weir: warning: {} addresses are claimed by two running pods; the first in name order keeps each",
            cluster.ip_conflicts()
        );
    }
    let set =
        PolicySet::new(Arc::new(cluster)).context("cannot use the cluster's network policies")?;
    for line in ambiguity_warnings(&set) {
        eprintln!("weir: warning: {line}");
    }
    Ok(set)
}

/// One line per pair of cluster-wide policies whose order the API leaves to the implementation.
pub fn ambiguity_warnings(set: &PolicySet) -> Vec<String> {
    set.ambiguities()
        .iter()
        .map(|a| {
            let (first, second) = (
                &set.tier_policies()[a.first as usize],
                &set.tier_policies()[a.second as usize],
            );
            let pod = set.cluster().pod(a.example).key();
            format!(
                "{} and {} have the same tier and priority ({}), both apply to {pod} (and maybe more pods) and \
                 have {} rules with different actions: where both match a connection the API leaves the choice to \
                 the implementation; weir applies {} first (policies of equal priority in order of kind, then \
                 name), and the datapath may not",
                first.label(),
                second.label(),
                first.priority,
                a.direction,
                first.key()
            )
        })
        .collect()
}

/// What every command that judges says when the cluster holds network policies weir does not evaluate.
pub fn unevaluated_warning(kinds: &std::collections::BTreeMap<String, usize>) -> String {
    let total: usize = kinds.values().sum();
    let list = kinds
        .iter()
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "verdicts are NetworkPolicy and ClusterNetworkPolicy only: {total} network policies of kinds weir does not evaluate are in the \
         cluster ({list}); what they allow or deny is judged as if they were absent"
    )
}

/// Every object weir reads from the live cluster, and the API server's address.
fn list_live(kube: &KubeArgs, namespace: Option<&str>) -> Result<(Vec<Value>, String)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the Kubernetes client's runtime")?;
    runtime.block_on(async {
        let (client, server) =
            weir_kube::kube_client(kube.kubeconfig.as_deref(), kube.context.as_deref()).await?;
        let objects = weir_kube::list_objects(&client, namespace)
            .await
            .with_context(|| format!("reading the cluster at {server}"))?;
        Ok((objects, server))
    })
}

/// Loads listed objects through the snapshot loader (the same checks a snapshot file gets).
fn load_objects(source: &str, objects: Vec<Value>) -> Result<(ClusterState, LoadReport)> {
    let mut loader = SnapshotLoader::default();
    for object in objects {
        loader
            .add_value(source, object)
            .with_context(|| format!("the cluster at {source}"))?;
    }
    Ok(loader.finish())
}

#[derive(Args)]
pub struct SnapshotArgs {
    /// Write the snapshot here (atomically: a failed run leaves an existing file as it was) [default: standard
    /// output].
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Only namespaced objects of this namespace (Namespaces and Nodes are always taken whole). Pods of other
    /// namespaces are then unknown addresses to whatever reads the snapshot.
    #[arg(
        long,
        short = 'n',
        value_name = "NS",
        conflicts_with = "all_namespaces"
    )]
    namespace: Option<String>,
    /// Every namespace (the default; accepted for kubectl habits).
    #[arg(long, short = 'A')]
    all_namespaces: bool,
    /// Output format: what `kubectl get -o yaml` or `-o json` prints.
    #[arg(long, value_enum, default_value_t = SnapshotFormat::Yaml)]
    format: SnapshotFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SnapshotFormat {
    /// A `List` as `kubectl get -o yaml` lays it out.
    Yaml,
    /// The same `List` as JSON.
    Json,
}

/// `weir snapshot`: the objects `kubectl get namespaces,nodes,pods,services,endpointslices,replicasets,jobs,
/// networkpolicies -A -o yaml` prints, and the network-policy-api's cluster-wide policies where the API server
/// serves them, as one `List`, checked by loading it as `--cluster` would.
pub fn run_snapshot(args: SnapshotArgs, kube: &KubeArgs) -> Result<ExitCode> {
    let namespace = args.namespace.filter(|_| !args.all_namespaces);
    let (objects, server) = list_live(kube, namespace.as_deref())?;
    let mut counts: Vec<(String, usize)> = Vec::new();
    for object in &objects {
        let kind = object.get("kind").and_then(Value::as_str).unwrap_or("?");
        match counts.iter_mut().find(|(k, _)| k == kind) {
            Some((_, n)) => *n += 1,
            None => counts.push((kind.to_owned(), 1)),
        }
    }
    // Checked before it is written, so a snapshot weir cannot read never replaces a good one.
    load_objects(&server, objects.clone())
        .context("the cluster's objects do not load as a snapshot; nothing was written")?;
    let list = json!({
        "apiVersion": "v1",
        "kind": "List",
        "metadata": {"resourceVersion": ""},
        "items": objects,
    });
    let scope = match &namespace {
        Some(ns) => format!("namespace {ns}"),
        None => "all namespaces".to_owned(),
    };
    let text = match args.format {
        SnapshotFormat::Yaml => format!(
            "# weir snapshot of {server} ({scope}), taken {}\n{}",
            weir_model::Timestamp::now(),
            weir_cluster::yaml::to_yaml(&list)
        ),
        SnapshotFormat::Json => {
            let mut text = serde_json::to_string_pretty(&list)?;
            text.push('\n');
            text
        }
    };
    let output = args.output.filter(|p| p != Path::new("-"));
    match &output {
        Some(path) => write_atomically(path, text.as_bytes())?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
    }
    let summary: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
    eprintln!(
        "weir snapshot: wrote {} from {server} ({scope}): {}",
        output.map_or_else(|| "standard output".to_owned(), |p| p.display().to_string()),
        if summary.is_empty() {
            "no objects".to_owned()
        } else {
            summary.join(", ")
        },
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes beside the target, then renames over it.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file name", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".weir-tmp");
    let tmp = path.with_file_name(tmp_name);
    let result = std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("writing {}", path.display()));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
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

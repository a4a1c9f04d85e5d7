//! `weir suggest`: least-privilege NetworkPolicies from observed traffic, proven by the engine before they are
//! printed.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use weir_analysis::{
    Analyzer, SuggestOptions, Synthesis, baseline_yaml, policy_yaml, suggestion_yaml, synthesize,
};
use weir_model::Cidr;

use crate::analyze::{parse_cidr, read_records};
use crate::snapshot::{self, KubeArgs};

#[derive(Args)]
pub struct SuggestArgs {
    /// Capture files (pcap or pcapng, optionally gzip-compressed) of the traffic to allow.
    #[arg(value_name = "CAPTURE", required_unless_present = "flows")]
    captures: Vec<PathBuf>,
    /// Flow records (`weir flows --format jsonl` output) instead of, or as well as, captures.
    #[arg(long, value_name = "FILE.jsonl")]
    flows: Vec<PathBuf>,
    /// Cluster snapshot(s): `kubectl get ... -o yaml/json` output, multi-document YAML, or directories.
    #[arg(long, value_name = "PATH")]
    cluster: Vec<PathBuf>,
    /// Only workloads in these namespaces (default: every namespace but kube-* and the CNI's own).
    #[arg(long = "namespace", short = 'n', value_name = "NS")]
    namespaces: Vec<String>,
    /// Write one file per policy (`NAMESPACE.NAME.yaml`) here instead of one stream to standard output.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
    /// Widen outside IPv4 peers to this prefix length (32 keeps the address alone).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u8).range(0..=32))]
    ipv4_prefix: u8,
    /// Widen outside IPv6 peers to this prefix length.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u8).range(0..=128))]
    ipv6_prefix: u8,
    /// Allow failed TCP attempts too (refused or never answered); by default they are not evidence of need.
    #[arg(long)]
    include_failed: bool,
    /// Address ranges of the cluster besides the nodes' pod ranges (see `weir analyze`).
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    cluster_cidr: Vec<Cidr>,
    /// Also write a Baseline-tier ClusterNetworkPolicy that denies, in the namespaces in scope, the traffic no
    /// NetworkPolicy governs (workloads without observed traffic or without a stable selector become
    /// default-deny too); the proof judges it with the suggested NetworkPolicies.
    #[arg(long)]
    baseline_deny: bool,
    /// Worker threads per capture.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
}

pub fn run(args: SuggestArgs, kube: &KubeArgs) -> Result<ExitCode> {
    let set = snapshot::load(&args.cluster, kube)?;
    let (records, inputs) = read_records(&args.captures, &args.flows, args.threads)?;
    let analysis = Analyzer::new(&set, &args.cluster_cidr).analyze_sorted(records.clone());
    let options = SuggestOptions {
        namespaces: args.namespaces.clone(),
        ipv4_prefix: args.ipv4_prefix,
        ipv6_prefix: args.ipv6_prefix,
        include_failed: args.include_failed,
        baseline_deny: args.baseline_deny,
        cluster_ranges: args.cluster_cidr.clone(),
        ..SuggestOptions::default()
    };
    let Synthesis {
        suggestion, proof, ..
    } = synthesize(&set, &analysis.flows, &records, &options)
        .context("the suggested policies do not compile")?;

    // The summary goes to stderr, so standard output is the YAML alone.
    let mut err = std::io::stderr().lock();
    let namespaces: std::collections::BTreeSet<&str> = suggestion
        .policies
        .iter()
        .map(|p| p.workload.namespace.as_str())
        .collect();
    writeln!(
        err,
        "weir suggest: {} polic{} in {} namespace{}, from {} flows in {}",
        suggestion.policies.len(),
        if suggestion.policies.len() == 1 {
            "y"
        } else {
            "ies"
        },
        namespaces.len(),
        if namespaces.len() == 1 { "" } else { "s" },
        analysis.flows.len(),
        inputs.names.join(", ")
    )?;
    if let Some(baseline) = &suggestion.baseline {
        writeln!(
            err,
            "  and ClusterNetworkPolicy {} (Baseline tier): default deny wherever no NetworkPolicy isolates a pod",
            baseline.name
        )?;
    }
    match &suggestion.dns {
        Some(dns) => writeln!(err, "  cluster DNS: {dns} (every policy allows it)")?,
        None => writeln!(
            err,
            "  cluster DNS: no Service serving 53/UDP in the snapshot"
        )?,
    }
    let u = &suggestion.uncovered;
    let not = "not allowed";
    for (n, verb, what) in [
        (
            u.failed,
            not,
            "failed TCP attempts (refused or unanswered; --include-failed allows them)",
        ),
        (
            u.icmp,
            not,
            "ICMP flows (NetworkPolicy allows ICMP only by allowing every port)",
        ),
        (
            u.unattributed,
            not,
            "flows with an end nobody in the snapshot held",
        ),
        (
            u.unjudged,
            not,
            "flows to Services without backends for their port",
        ),
        (
            u.no_selector,
            not,
            "flows of workloads without a stable selector (below)",
        ),
        (
            u.admin_decided,
            "left to the Admin tier",
            "flows it decides (an Admin Deny blocks them, or Admin Accepts allow them whatever NetworkPolicy \
             says): no NetworkPolicy rule is written for them",
        ),
    ] {
        if n > 0 {
            writeln!(err, "  {verb}: {n} {what}")?;
        }
    }
    for w in &suggestion.unsuggested {
        writeln!(err, "  no policy for {}: {}", w.workload, w.why)?;
    }
    if proof.denied.is_empty() {
        writeln!(
            err,
            "proof: the suggested policies alone allow all {} observed flows they cover",
            proof.covered
        )?;
    } else {
        writeln!(
            err,
            "proof FAILED: {} of {} covered flows are denied by the suggested policies:",
            proof.denied.len(),
            proof.covered
        )?;
        for d in proof.denied.iter().take(20) {
            writeln!(err, "  {d}")?;
        }
    }
    writeln!(
        err,
        "slack: on the observed ports, they allow {} ordered pod pairs x ports involving a pod they select; \
         {} were observed, {} were not",
        proof.allowed_tuples,
        proof.observed_tuples,
        proof.slack()
    )?;

    match &args.out_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            for p in &suggestion.policies {
                let path = dir.join(format!("{}.{}.yaml", p.workload.namespace, p.name));
                std::fs::write(&path, policy_yaml(p))
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            if let Some(baseline) = &suggestion.baseline {
                let path = dir.join(format!("cluster.{}.yaml", baseline.name));
                std::fs::write(&path, baseline_yaml(baseline))
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            writeln!(
                err,
                "wrote {} files to {}",
                suggestion.policies.len() + usize::from(suggestion.baseline.is_some()),
                dir.display()
            )?;
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(suggestion_yaml(&suggestion).as_bytes())?;
            out.flush()?;
        }
    }
    if !proof.denied.is_empty() {
        bail!(
            "the suggestion does not allow every observed flow it should (a bug in weir: please report it)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

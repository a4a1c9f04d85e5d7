//! `weir reach`: the pod-to-pod reachability matrix the policies in force allow.

use std::collections::BTreeSet;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use weir_cluster::PodId;
use weir_model::Protocol;
use weir_policy::{DecidingTier, PolicySet, ProbePort, ReachMatrix};

use crate::snapshot::{self, KubeArgs};

#[derive(Args)]
pub struct ReachArgs {
    /// Cluster snapshot: `kubectl get ... -A -o yaml` output, JSON, multi-document YAML or a directory;
    /// repeat to merge several.
    #[arg(long, value_name = "PATH")]
    cluster: Vec<PathBuf>,
    /// Port to probe, as PORT[/PROTOCOL] with a number or a container port name (repeatable)
    /// [default: every container port declared in the cluster].
    #[arg(long, value_name = "PORT/PROTO")]
    probe: Vec<String>,
    /// Only pods in these namespaces (repeatable) [default: all].
    #[arg(long, short = 'n', value_name = "NS")]
    namespace: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReachFormat::Table)]
    format: ReachFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum ReachFormat {
    /// A truth table per probe, for people.
    Table,
    /// One JSON document with every ordered pair per probe.
    Json,
}

struct Probe {
    label: String,
    port: ProbePort,
    protocol: Protocol,
}

pub fn run(args: ReachArgs, kube: &KubeArgs) -> Result<ExitCode> {
    let set = snapshot::load(&args.cluster, kube)?;
    let cluster = set.cluster();
    for ns in &args.namespace {
        if cluster.namespace(ns).is_none() {
            bail!("--namespace {ns:?}: no such namespace in the snapshot");
        }
    }
    let pods: Vec<PodId> = cluster
        .pods()
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.is_terminated())
        .filter(|(_, p)| args.namespace.is_empty() || args.namespace.contains(&p.namespace))
        .map(|(i, _)| PodId(i as u32))
        .collect();
    let probes = if args.probe.is_empty() {
        declared_ports(&set, &pods)
    } else {
        args.probe
            .iter()
            .map(|text| {
                let (port, protocol) = snapshot::parse_port(text)?;
                Ok(Probe {
                    port: match port.parse::<u16>() {
                        Ok(n) => ProbePort::Number(n),
                        Err(_) => ProbePort::Name(port.clone()),
                    },
                    label: port,
                    protocol,
                })
            })
            .collect::<Result<Vec<_>>>()?
    };
    let mut out = BufWriter::with_capacity(1 << 16, io::stdout().lock());
    if matches!(args.format, ReachFormat::Json) {
        write!(out, "{{\"probes\":[")?;
    }
    for (index, probe) in probes.iter().enumerate() {
        let matrix = set.reach_matrix(&pods, &probe.port, probe.protocol);
        match args.format {
            ReachFormat::Table => {
                if index > 0 {
                    writeln!(out)?;
                }
                write_table(&mut out, &set, probe, &matrix)?;
            }
            ReachFormat::Json => {
                if index > 0 {
                    write!(out, ",")?;
                }
                write_json(&mut out, &set, probe, &matrix)?;
            }
        }
    }
    if matches!(args.format, ReachFormat::Json) {
        writeln!(out, "]}}")?;
    } else if probes.is_empty() {
        writeln!(
            out,
            "no probes: the cluster declares no container ports; pass --probe PORT/PROTO"
        )?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn declared_ports(set: &PolicySet, pods: &[PodId]) -> Vec<Probe> {
    let ports: BTreeSet<(u8, u16)> = pods
        .iter()
        .flat_map(|&p| set.cluster().pod(p).ports.iter())
        .map(|c| (c.protocol.0, c.port))
        .collect();
    let mut probes: Vec<Probe> = ports
        .into_iter()
        .map(|(proto, port)| Probe {
            label: port.to_string(),
            port: ProbePort::Number(port),
            protocol: Protocol(proto),
        })
        .collect();
    // TCP first, then UDP, then SCTP; by port within each.
    probes.sort_by_key(|p| {
        (
            p.protocol != Protocol::TCP,
            p.protocol.0,
            p.label.parse::<u16>().unwrap_or(0),
        )
    });
    probes
}

fn proto_name(protocol: Protocol) -> &'static str {
    protocol.name().unwrap_or("?")
}

fn write_json(
    out: &mut impl Write,
    set: &PolicySet,
    probe: &Probe,
    matrix: &ReachMatrix,
) -> io::Result<()> {
    let names: Vec<String> = matrix
        .pods
        .iter()
        .map(|&p| serde_json::to_string(&set.cluster().pod(p).key()).unwrap_or_default())
        .collect();
    write!(
        out,
        "{{\"port\":{},\"protocol\":\"{}\",\"results\":[",
        serde_json::to_string(&probe.label).unwrap_or_default(),
        proto_name(probe.protocol)
    )?;
    let n = names.len();
    for i in 0..n {
        for j in 0..n {
            let (egress, ingress) = matrix.get(i, j);
            let (egress_tier, ingress_tier) = matrix.tiers(i, j);
            if i + j > 0 {
                out.write_all(b",")?;
            }
            write!(
                out,
                "{{\"from\":{},\"to\":{},\"allowed\":{},\"egress_allowed\":{egress},\"ingress_allowed\":{ingress},\"egress_tier\":\"{}\",\"ingress_tier\":\"{}\"}}",
                names[i],
                names[j],
                egress && ingress,
                egress_tier.name(),
                ingress_tier.name()
            )?;
        }
    }
    write!(out, "]}}")
}

/// A box table like policy-assistant's: rows are sources, columns destinations.
fn write_table(
    out: &mut impl Write,
    set: &PolicySet,
    probe: &Probe,
    matrix: &ReachMatrix,
) -> io::Result<()> {
    let names: Vec<String> = matrix
        .pods
        .iter()
        .map(|&p| set.cluster().pod(p).key())
        .collect();
    let n = names.len();
    writeln!(
        out,
        "{}/{}: {} of {} pod pairs allowed",
        probe.label,
        proto_name(probe.protocol),
        matrix.allowed_pairs(),
        n * n
    )?;
    if n == 0 {
        return Ok(());
    }
    let first = names
        .iter()
        .map(|s| s.chars().count())
        .max()
        .unwrap_or(0)
        .max(4);
    let tiered = !set.tier_policies().is_empty();
    let cell_width = if tiered { 2 } else { 1 };
    let widths: Vec<usize> = names
        .iter()
        .map(|s| s.chars().count().max(cell_width))
        .collect();
    let rule = {
        let mut line = format!("+{}+", "-".repeat(first + 2));
        for w in &widths {
            line.push_str(&"-".repeat(w + 2));
            line.push('+');
        }
        line
    };
    writeln!(out, "{rule}")?;
    write!(out, "| {:<first$} |", "from\\to")?;
    for name in &names {
        write!(out, " {name} |")?;
    }
    writeln!(out)?;
    writeln!(out, "{rule}")?;
    for (i, name) in names.iter().enumerate() {
        write!(out, "| {name:<first$} |")?;
        for (j, w) in widths.iter().enumerate() {
            let verdict = match matrix.get(i, j) {
                (true, true) => ".",
                (false, true) => "E",
                (true, false) => "I",
                (false, false) => "X",
            };
            // With cluster-wide policies, which tier decided: `a` when an Admin rule decided a direction, `b`
            // when a Baseline rule did (and no Admin rule).
            let tier = match matrix.tiers(i, j) {
                (DecidingTier::Admin, _) | (_, DecidingTier::Admin) => "a",
                (DecidingTier::Baseline, _) | (_, DecidingTier::Baseline) => "b",
                _ if tiered => " ",
                _ => "",
            };
            let cell = format!("{verdict}{tier}");
            let len = cell.chars().count();
            let left = w.saturating_sub(len) / 2;
            write!(
                out,
                " {}{cell}{} |",
                " ".repeat(left),
                " ".repeat(w.saturating_sub(len + left))
            )?;
        }
        writeln!(out)?;
    }
    writeln!(out, "{rule}")?;
    writeln!(
        out,
        ". allowed   E denied by the source's egress   I denied by the destination's ingress   X denied by both"
    )?;
    if tiered {
        writeln!(
            out,
            "a an Admin-tier rule decided a direction   b a Baseline-tier rule did (weir explain says which)"
        )?;
    }
    Ok(())
}

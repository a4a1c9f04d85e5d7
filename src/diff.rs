//! `weir diff`: the policies in force against observed traffic, or two policy sets against each other (and
//! against observed traffic: which flows the change would break, for a CI check on a policy pull request).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;
use weir_analysis::{
    Analysis, Analyzer, Change, ConnectivityDiff, EdgeVerdict, ObservedDiff, Report,
    connectivity_diff, observed_diff,
};
use weir_model::{Cidr, FlowRecord};
use weir_policy::PolicySet;

use crate::analyze::{
    AnalyzeFormat, ColorChoice, open_output, parse_cidr, read_records, use_color,
};
use crate::snapshot::{self, KubeArgs};
use weir_report::{
    self as report, Section, SectionKind, Style, Tone, edge_json, edge_row, sides, span, take,
    write_analysis_json,
};

/// The exit code when observed flows would break.
const BREAKS: u8 = 3;

#[derive(Args)]
pub struct DiffArgs {
    /// Capture files of the traffic to check (pcap or pcapng, optionally gzip-compressed).
    #[arg(value_name = "CAPTURE")]
    captures: Vec<PathBuf>,
    /// Flow records (`weir flows --format jsonl` output) instead of, or as well as, captures.
    #[arg(long, value_name = "FILE.jsonl")]
    flows: Vec<PathBuf>,
    /// Cluster snapshot(s): `kubectl get ... -o yaml/json` output, multi-document YAML, or directories.
    #[arg(long, value_name = "PATH")]
    cluster: Vec<PathBuf>,
    /// The policies before the change (files or directories; default: the snapshot's).
    #[arg(long, value_name = "PATH")]
    policies_before: Vec<PathBuf>,
    /// The policies after the change (files or directories; default: the snapshot's).
    #[arg(long, value_name = "PATH")]
    policies_after: Vec<PathBuf>,
    /// The namespace of --policies-before/--policies-after objects that name none (as `kubectl apply -n`
    /// places them).
    #[arg(long, short = 'n', value_name = "NS")]
    namespace: Option<String>,
    /// Report format.
    #[arg(long, value_enum, default_value_t = AnalyzeFormat::Text)]
    format: AnalyzeFormat,
    /// Write the report to this file instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Rows shown per section of the text and Markdown reports.
    #[arg(long, default_value_t = 15)]
    top: usize,
    /// Color in the text report.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    color: ColorChoice,
    /// Address ranges of the cluster besides the nodes' pod ranges (see `weir analyze`).
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    cluster_cidr: Vec<Cidr>,
    /// Worker threads per capture.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
}

fn given(paths: &[PathBuf]) -> Option<&[PathBuf]> {
    (!paths.is_empty()).then_some(paths)
}

fn names(paths: &[PathBuf]) -> Vec<String> {
    paths.iter().map(|p| p.display().to_string()).collect()
}

pub fn run(args: DiffArgs, kube: &KubeArgs) -> Result<ExitCode> {
    if args.format == AnalyzeFormat::Html {
        bail!("--format html is for `weir analyze`; diff writes text, markdown or json");
    }
    let traffic = !args.captures.is_empty() || !args.flows.is_empty();
    if args.policies_before.is_empty() && args.policies_after.is_empty() {
        if args.namespace.is_some() {
            bail!(
                "-n/--namespace places the objects of --policies-before/--policies-after; give one of them"
            );
        }
        if !traffic {
            bail!(
                "give traffic (captures or --flows) to compare with the policies in force, or \
                 --policies-before/--policies-after to compare two policy sets"
            );
        }
        return in_force(&args, kube);
    }
    // One read of the cluster, so both sides judge the same pods even when it is the live cluster.
    let base = snapshot::load(&args.cluster, kube)?;
    let side = |paths: Option<&[PathBuf]>| -> Result<PolicySet> {
        match paths {
            Some(paths) => snapshot::with_policies(
                &base,
                snapshot::PolicyFiles {
                    paths,
                    namespace: args.namespace.as_deref(),
                },
            ),
            None => PolicySet::new(std::sync::Arc::new(base.cluster().clone()))
                .context("cannot use the cluster's policies"),
        }
    };
    let before = side(given(&args.policies_before)).context("the policies before")?;
    let after = side(given(&args.policies_after)).context("the policies after")?;
    let (records, inputs) = if traffic {
        read_records(&args.captures, &args.flows, args.threads)?
    } else {
        (Vec::new(), Default::default())
    };
    let extra: Vec<_> = records
        .iter()
        .filter_map(|r: &FlowRecord| Some((r.proto, r.dst_port?)))
        .filter(|(proto, _)| proto.has_ports())
        .collect();
    let connectivity = connectivity_diff(&before, &after, &extra);
    let observed = traffic.then(|| observed_diff(&before, &after, records, &args.cluster_cidr));

    let describe = |paths: &[PathBuf], set: &PolicySet| {
        let n = set.policies().len();
        let mut count = format!("{n} polic{}", if n == 1 { "y" } else { "ies" });
        let tiers = set.tier_policies().len();
        if tiers > 0 {
            count = format!(
                "{n} NetworkPolic{} and {tiers} cluster-wide polic{}",
                if n == 1 { "y" } else { "ies" },
                if tiers == 1 { "y" } else { "ies" }
            );
        }
        if paths.is_empty() {
            format!("the snapshot's {count}")
        } else {
            format!("{} ({count})", names(paths).join(", "))
        }
    };
    let context = ChangeContext {
        before: describe(&args.policies_before, &before),
        after: describe(&args.policies_after, &after),
        inputs: inputs.names,
    };
    let mut out = open_output(args.output.as_deref())?;
    match args.format {
        AnalyzeFormat::Json => {
            let doc = change_json(&context, &connectivity, observed.as_ref());
            serde_json::to_writer(&mut out, &doc)?;
            out.write_all(b"\n")?;
        }
        format => {
            let style = if format == AnalyzeFormat::Markdown {
                Style::Markdown
            } else {
                Style::Text {
                    color: use_color(args.color, args.output.as_deref()),
                }
            };
            let text = report::render(
                "weir diff",
                &change_header(&context, &connectivity, observed.as_ref()),
                &change_sections(&connectivity, observed.as_ref(), args.top.max(1)),
                style,
            );
            out.write_all(text.as_bytes())?;
        }
    }
    out.flush().context("writing the report")?;
    let breaks = observed.is_some_and(|o| o.broken.totals.flows > 0);
    Ok(if breaks {
        ExitCode::from(BREAKS)
    } else {
        ExitCode::SUCCESS
    })
}

/// The policies in force against observed traffic: the findings of `weir analyze` about the policies.
fn in_force(args: &DiffArgs, kube: &KubeArgs) -> Result<ExitCode> {
    let set = snapshot::load(&args.cluster, kube)?;
    let (records, inputs) = read_records(&args.captures, &args.flows, args.threads)?;
    let analysis = Analyzer::new(&set, &args.cluster_cidr).analyze_sorted(records);
    let report = Report::new(&set, &analysis);
    let mut out = open_output(args.output.as_deref())?;
    match args.format {
        AnalyzeFormat::Json => {
            // The summary alone: the flows are `weir analyze`'s business.
            let summary_only = Analysis::default();
            write_analysis_json(&set, &summary_only, &report, &inputs.names, &mut out)?;
        }
        format => {
            let style = if format == AnalyzeFormat::Markdown {
                Style::Markdown
            } else {
                Style::Text {
                    color: use_color(args.color, args.output.as_deref()),
                }
            };
            let clusters = names(&args.cluster);
            let context = report::Context {
                inputs: &inputs.names,
                clusters: &clusters,
                stats: &inputs.stats,
                top: args.top.max(1),
                unevaluated_policies: set.cluster().unevaluated_policies(),
            };
            let sections: Vec<Section> = report::sections(&report, args.top.max(1))
                .into_iter()
                .filter(|s| s.kind.is_about_policies())
                .collect();
            let text = report::render(
                "weir diff: the policies in force against observed traffic",
                &report::header(&report, &context, style),
                &sections,
                style,
            );
            out.write_all(text.as_bytes())?;
        }
    }
    out.flush().context("writing the report")?;
    Ok(ExitCode::SUCCESS)
}

struct ChangeContext {
    before: String,
    after: String,
    inputs: Vec<String>,
}

fn change_header(
    context: &ChangeContext,
    connectivity: &ConnectivityDiff,
    observed: Option<&ObservedDiff>,
) -> Vec<String> {
    let count = |change: Change| {
        connectivity
            .changes
            .iter()
            .filter(|c| c.change == change)
            .count()
    };
    let mut lines = vec![
        format!("before: {}", context.before),
        format!("after: {}", context.after),
        format!(
            "connectivity: {} pods on {} ports compared; {} workload pairs lose access, {} gain it",
            connectivity.pods,
            connectivity.ports.len(),
            count(Change::NowDenied),
            count(Change::NowAllowed)
        ),
    ];
    match observed {
        Some(o) => lines.push(format!(
            "observed: {} flows from {}; the change would break {} and newly allow {}",
            o.flows,
            context.inputs.join(", "),
            o.broken.totals.flows,
            o.newly_allowed.totals.flows
        )),
        None => lines.push("observed: no traffic given, so no flow is checked".to_owned()),
    }
    lines
}

fn change_sections(
    connectivity: &ConnectivityDiff,
    observed: Option<&ObservedDiff>,
    top: usize,
) -> Vec<Section> {
    let mut out = Vec::new();
    if let Some(o) = observed {
        let (shown, more) = take(o.broken.edges_of(EdgeVerdict::Denied), top);
        out.push(Section {
            kind: SectionKind::WouldBreak,
            tone: Tone::Bad,
            note: format!(
                "{} flows that the policies before allow and the policies after deny",
                o.broken.totals.flows
            ),
            empty: "no observed flow would break",
            columns: &[
                "FROM",
                "TO",
                "VIA",
                "PORT",
                "FLOWS",
                "SEEN",
                "DENIED BY (AFTER)",
            ],
            rows: shown
                .iter()
                .map(|e| {
                    edge_row(
                        e,
                        [
                            span(e.first, e.last),
                            sides(e, e.egress_denied, e.ingress_denied),
                        ],
                    )
                })
                .collect(),
            more,
        });
        let (shown, more) = take(o.newly_allowed.edges.iter(), top);
        out.push(Section {
            kind: SectionKind::WouldAllow,
            tone: Tone::Warn,
            note: format!(
                "{} flows that the policies before deny and the policies after allow",
                o.newly_allowed.totals.flows
            ),
            empty: "no observed flow becomes allowed",
            columns: &[
                "FROM",
                "TO",
                "VIA",
                "PORT",
                "FLOWS",
                "SEEN",
                "ALLOWED BY (AFTER)",
            ],
            rows: shown
                .iter()
                .map(|e| edge_row(e, [span(e.first, e.last), sides(e, true, true)]))
                .collect(),
            more,
        });
    }
    for (change, kind, tone, empty, note) in [
        (
            Change::NowDenied,
            SectionKind::NowDenied,
            Tone::Warn,
            "no pod loses access to another",
            "workload pairs and ports allowed before and denied after",
        ),
        (
            Change::NowAllowed,
            SectionKind::NowAllowed,
            Tone::Warn,
            "no pod gains access to another",
            "workload pairs and ports denied before and allowed after",
        ),
    ] {
        let (shown, more) = take(
            connectivity.changes.iter().filter(|c| c.change == change),
            top,
        );
        out.push(Section {
            kind,
            tone,
            note: note.to_owned(),
            empty,
            columns: &["FROM", "TO", "PORTS", "POD PAIRS"],
            rows: shown
                .iter()
                .map(|c| {
                    vec![
                        format!("{}/{}", c.from.namespace, c.from.name),
                        format!("{}/{}", c.to.namespace, c.to.name),
                        port_list(&c.ports),
                        c.pod_pairs.to_string(),
                    ]
                })
                .collect(),
            more,
        });
    }
    out
}

fn port_list(ports: &[(weir_model::Protocol, u16)]) -> String {
    ports
        .iter()
        .map(|(proto, port)| format!("{port}/{proto}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn change_json(
    context: &ChangeContext,
    connectivity: &ConnectivityDiff,
    observed: Option<&ObservedDiff>,
) -> serde_json::Value {
    let changes = |change: Change| -> Vec<serde_json::Value> {
        connectivity
            .changes
            .iter()
            .filter(|c| c.change == change)
            .map(|c| {
                json!({
                    "from": {"kind": c.from.kind.to_string(), "namespace": c.from.namespace, "name": c.from.name},
                    "to": {"kind": c.to.kind.to_string(), "namespace": c.to.namespace, "name": c.to.name},
                    "ports": c.ports.iter().map(|(proto, port)| format!("{port}/{proto}")).collect::<Vec<_>>(),
                    "pod_pairs": c.pod_pairs,
                })
            })
            .collect()
    };
    let mut doc = json!({
        "before": context.before,
        "after": context.after,
        "pods": connectivity.pods,
        "ports": connectivity.ports.len(),
        "now_denied": changes(Change::NowDenied),
        "now_allowed": changes(Change::NowAllowed),
    });
    if let Some(o) = observed {
        doc["inputs"] = json!(context.inputs);
        doc["observed_flows"] = json!(o.flows);
        doc["would_break_flows"] = json!(o.broken.totals.flows);
        doc["would_break"] = o.broken.edges.iter().map(edge_json).collect();
        doc["would_allow_flows"] = json!(o.newly_allowed.totals.flows);
        doc["would_allow"] = o.newly_allowed.edges.iter().map(edge_json).collect();
    }
    doc
}

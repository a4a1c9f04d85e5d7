//! Text and Markdown: the same sections as aligned text (colored on a terminal) or Markdown.
//!
//! Every section is built once as rows of cells and rendered by either style, so the two never drift apart.
//! Cells carry names from the cluster, which are untrusted: control characters are dropped for the terminal
//! and Markdown metacharacters are escaped.

use std::fmt::Write as _;

use weir_analysis::{Edge, EdgeVerdict, Group, Report};
use weir_flow::ExtractStats;
use weir_model::Timestamp;

/// How sections are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Aligned columns.
    Text {
        /// ANSI colors.
        color: bool,
    },
    /// Markdown tables.
    Markdown,
}

/// What the report was made from.
pub struct Context<'a> {
    /// The captures and flow files read.
    pub inputs: &'a [String],
    /// The cluster snapshots.
    pub clusters: &'a [String],
    /// How the captures decoded (packets skipped, by reason).
    pub stats: &'a ExtractStats,
    /// Rows shown per section.
    pub top: usize,
    /// Network policies of kinds weir does not evaluate in the cluster, by `Kind (group)`
    /// (`ClusterState::unevaluated_policies`): the report then says its verdicts are NetworkPolicy's alone.
    pub unevaluated_policies: &'a std::collections::BTreeMap<String, usize>,
}

/// How a section's title is colored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    /// Red: something is wrong.
    Bad,
    /// Yellow: worth a look.
    Warn,
    /// Uncolored.
    Plain,
}

/// The sections of weir's reports. A section is picked by its kind, never by its title.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SectionKind {
    /// Flows the policies deny.
    Denied,
    /// Suspected scans.
    Scans,
    /// Service backends that disagree.
    DisagreeingBackends,
    /// Allowed only because a pod is not isolated.
    NotIsolated,
    /// Namespaces and workloads without policy.
    WithoutPolicy,
    /// Rules no flow used.
    UnusedRules,
    /// Addresses in the cluster's ranges nobody held.
    Unattributed,
    /// Node addresses a rule (not the node's status) gave the node.
    InferredNodeAddresses,
    /// Flows that could not be judged.
    NotJudged,
    /// Allowed edges.
    Allowed,
    /// Outside peers.
    ExternalPeers,
    /// `weir diff`: observed flows a policy change would break.
    WouldBreak,
    /// `weir diff`: observed flows a policy change would allow.
    WouldAllow,
    /// `weir diff`: workload pairs and ports that become denied.
    NowDenied,
    /// `weir diff`: workload pairs and ports that become allowed.
    NowAllowed,
}

impl SectionKind {
    /// The title, as the text and Markdown reports print it.
    pub fn title(self) -> &'static str {
        match self {
            SectionKind::Denied => "Denied by the policies in force",
            SectionKind::Scans => "Suspected scans",
            SectionKind::DisagreeingBackends => "Service backends that disagree",
            SectionKind::NotIsolated => "Allowed only because a pod is not isolated",
            SectionKind::WithoutPolicy => "Without any NetworkPolicy",
            SectionKind::UnusedRules => "Rules that allowed nothing observed",
            SectionKind::Unattributed => "Unattributed addresses",
            SectionKind::InferredNodeAddresses => "Node addresses weir inferred",
            SectionKind::NotJudged => "Not judged",
            SectionKind::Allowed => "Allowed by policy",
            SectionKind::ExternalPeers => "External peers",
            SectionKind::WouldBreak => "Observed flows the change would break",
            SectionKind::WouldAllow => "Observed flows the change would allow",
            SectionKind::NowDenied => "Connectivity that becomes denied",
            SectionKind::NowAllowed => "Connectivity that becomes allowed",
        }
    }

    /// Whether the section is about the policies in force (what `weir diff` shows against traffic).
    pub fn is_about_policies(self) -> bool {
        matches!(
            self,
            SectionKind::Denied
                | SectionKind::DisagreeingBackends
                | SectionKind::NotIsolated
                | SectionKind::WithoutPolicy
                | SectionKind::UnusedRules
        )
    }
}

/// A section: a title (by kind), a note and a table.
pub struct Section {
    /// What it is.
    pub kind: SectionKind,
    /// Its title's color.
    pub tone: Tone,
    /// Shown under the title.
    pub note: String,
    /// Said instead of a table when there are no rows.
    pub empty: &'static str,
    /// Column headers.
    pub columns: &'static [&'static str],
    /// The cells.
    pub rows: Vec<Vec<String>>,
    /// Rows left out (beyond `--top`).
    pub more: usize,
}

const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const GREEN: &str = "\x1b[32m";
const BOLD: &str = "\x1b[1m";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

fn clock(t: Timestamp) -> String {
    let text = t.to_string();
    text.get(11..19).unwrap_or(&text).to_owned()
}

/// `10:00:30–10:00:33` (one clock time when both are the same second).
pub fn span(first: Timestamp, last: Timestamp) -> String {
    let (a, b) = (clock(first), clock(last));
    if a == b { a } else { format!("{a}–{b}") }
}

fn port(e: &Edge) -> String {
    e.port_summary().join(" ")
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `shop/{a,b}, payments/c`: policies grouped by namespace, in their order.
fn policy_list(policies: &[String]) -> String {
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for key in policies {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        match groups.iter_mut().find(|(n, _)| *n == ns) {
            Some((_, names)) => names.push(name),
            None => groups.push((ns, vec![name])),
        }
    }
    let parts: Vec<String> = groups
        .into_iter()
        .map(|(ns, names)| match names.as_slice() {
            [one] => format!("{ns}/{one}"),
            many => format!("{ns}/{{{}}}", many.join(",")),
        })
        .collect();
    parts.join(", ")
}

/// `egress shop/{a,b}; ingress payments/c`.
pub fn sides(e: &Edge, egress: bool, ingress: bool) -> String {
    let mut parts = Vec::new();
    if egress && !e.egress_policies.is_empty() {
        parts.push(format!("egress {}", policy_list(&e.egress_policies)));
    }
    if ingress && !e.ingress_policies.is_empty() {
        parts.push(format!("ingress {}", policy_list(&e.ingress_policies)));
    }
    parts.join("; ")
}

/// FROM, TO, VIA, PORT and FLOWS of an edge, then the section's own cells.
pub fn edge_row<const N: usize>(e: &Edge, rest: [String; N]) -> Vec<String> {
    let mut row = vec![
        group(&e.from),
        group(&e.to),
        via(e),
        port(e),
        e.flows.to_string(),
    ];
    row.extend(rest);
    row
}

fn group(g: &Group) -> String {
    g.to_string()
}

fn via(e: &Edge) -> String {
    e.service
        .as_ref()
        .map(|s| format!("svc {s}"))
        .unwrap_or_default()
}

/// The first `top` items, and how many were left out.
pub fn take<T>(items: impl Iterator<Item = T>, top: usize) -> (Vec<T>, usize) {
    let all: Vec<T> = items.collect();
    let more = all.len().saturating_sub(top);
    let mut all = all;
    all.truncate(top);
    (all, more)
}

fn edge_count(report: &Report, class: EdgeVerdict) -> (u64, usize) {
    report
        .edges_of(class)
        .fold((0, 0), |(flows, edges), e| (flows + e.flows, edges + 1))
}

/// The analysis report's sections, findings first.
pub fn sections(report: &Report, top: usize) -> Vec<Section> {
    let mut out = Vec::new();

    let (flows, edges) = edge_count(report, EdgeVerdict::Denied);
    let (shown, more) = take(report.edges_of(EdgeVerdict::Denied), top);
    out.push(Section {
        kind: SectionKind::Denied,
        tone: Tone::Bad,
        note: format!(
            "{flows} observed flows on {edges} edges that the policies in force deny: either an attack, or traffic the policies would break"
        ),
        empty: "no observed flow is denied",
        columns: &["FROM", "TO", "VIA", "PORT", "FLOWS", "ANSWERED", "SEEN", "DENIED BY"],
        rows: shown
            .iter()
            .map(|e| {
                edge_row(
                    e,
                    [
                    e.answered.to_string(),
                    span(e.first, e.last),
                    sides(e, e.egress_denied, e.ingress_denied),
                    ],
                )
            })
            .collect(),
        more,
    });

    let (shown, more) = take(report.scans.iter(), top);
    out.push(Section {
        kind: SectionKind::Scans,
        tone: Tone::Bad,
        note: "sources reaching many addresses or ports, mostly unanswered".to_owned(),
        empty: "none",
        columns: &[
            "SOURCE",
            "ADDRESS",
            "TARGETS",
            "HOSTS",
            "PORTS",
            "UNANSWERED",
            "DENIED",
            "SEEN",
        ],
        rows: shown
            .iter()
            .map(|s| {
                vec![
                    group(&s.source),
                    s.ip.to_string(),
                    s.targets.to_string(),
                    s.hosts.to_string(),
                    s.ports.to_string(),
                    format!("{}/{}", s.failed, s.flows),
                    s.denied.to_string(),
                    span(s.first, s.last),
                ]
            })
            .collect(),
        more,
    });

    if report.edges_of(EdgeVerdict::Mixed).next().is_some() {
        let (shown, more) = take(report.edges_of(EdgeVerdict::Mixed), top);
        out.push(Section {
            kind: SectionKind::DisagreeingBackends,
            tone: Tone::Bad,
            note: "flows to a Service some of whose backends allow them and some deny them"
                .to_owned(),
            empty: "none",
            columns: &[
                "FROM",
                "TO",
                "VIA",
                "PORT",
                "FLOWS",
                "SEEN",
                "DENYING POLICIES",
            ],
            rows: shown
                .iter()
                .map(|e| edge_row(e, [span(e.first, e.last), sides(e, true, true)]))
                .collect(),
            more,
        });
    }

    let (flows, edges) = edge_count(report, EdgeVerdict::NotIsolated);
    let (shown, more) = take(report.edges_of(EdgeVerdict::NotIsolated), top);
    out.push(Section {
        kind: SectionKind::NotIsolated,
        tone: Tone::Warn,
        note: format!(
            "{flows} flows on {edges} edges that no policy rule allows; they pass because no policy selects that end"
        ),
        empty: "none",
        columns: &["FROM", "TO", "VIA", "PORT", "FLOWS", "SEEN", "NOT ISOLATED"],
        rows: shown
            .iter()
            .map(|e| {
                let open = match e.not_isolated {
                    (true, true) => "source egress, destination ingress",
                    (true, false) => "source egress",
                    _ => "destination ingress",
                };
                edge_row(
                    e,
                    [
                    span(e.first, e.last),
                    open.to_owned(),
                    ],
                )
            })
            .collect(),
        more,
    });

    let mut rows: Vec<Vec<String>> = report
        .namespaces_without_policy
        .iter()
        .map(|(ns, pods)| {
            vec![
                "namespace".to_owned(),
                ns.clone(),
                format!(
                    "{}, no NetworkPolicy in the namespace",
                    plural(*pods, "pod", "pods")
                ),
            ]
        })
        .collect();
    rows.extend(report.workloads_without_policy.iter().map(|w| {
        vec![
            w.kind.to_string(),
            format!("{}/{}", w.namespace, w.name),
            "no policy selects its pods".to_owned(),
        ]
    }));
    let (rows, more) = take(rows.into_iter(), top);
    out.push(Section {
        kind: SectionKind::WithoutPolicy,
        tone: Tone::Warn,
        note: "no NetworkPolicy selects these pods: unless a cluster-wide policy decides, everything may reach them and they may reach everything".to_owned(),
        empty: "every pod is selected by a policy",
        columns: &["KIND", "NAME", "DETAIL"],
        rows,
        more,
    });

    let mut rows: Vec<Vec<String>> = report
        .policies_selecting_nothing
        .iter()
        .map(|p| vec![format!("{p} (whole policy)"), "selects no pod".to_owned()])
        .collect();
    rows.extend(report.unused_rules.iter().map(|r| {
        vec![
            r.text.clone(),
            if r.pods_observed {
                "its pods were seen; nothing used this rule".to_owned()
            } else {
                "its pods were not seen in the capture".to_owned()
            },
        ]
    }));
    let count = rows.len();
    let (rows, more) = take(rows.into_iter(), top);
    out.push(Section {
        kind: SectionKind::UnusedRules,
        tone: Tone::Plain,
        note: format!("{count} candidates for tightening (or traffic the capture missed)"),
        empty: "every rule allowed some observed flow",
        columns: &["RULE", "NOTE"],
        rows,
        more,
    });

    let (shown, more) = take(report.unattributed.iter(), top);
    out.push(Section {
        kind: SectionKind::Unattributed,
        tone: Tone::Warn,
        note: "in the cluster's address ranges, but held by no pod in the snapshot at the time"
            .to_owned(),
        empty: "every cluster address was attributed",
        columns: &["ADDRESS", "FLOWS", "TALKED TO"],
        rows: shown
            .iter()
            .map(|u| vec![u.ip.to_string(), u.flows.to_string(), u.peers.join(", ")])
            .collect(),
        more,
    });

    if !report.inferred_node_addresses.is_empty() {
        let (shown, more) = take(report.inferred_node_addresses.iter(), top);
        out.push(Section {
            kind: SectionKind::InferredNodeAddresses,
            tone: Tone::Plain,
            note: "not in the nodes' status, made the node's by the rule shown: traffic from a pod's own node \
                   (kubelet probes) is allowed"
                .to_owned(),
            empty: "none",
            columns: &["ADDRESS", "NODE", "FLOWS", "WHY IT IS THE NODE'S"],
            rows: shown
                .iter()
                .map(|a| {
                    vec![
                        a.ip.to_string(),
                        a.node.clone(),
                        a.flows.to_string(),
                        a.source.to_string(),
                    ]
                })
                .collect(),
            more,
        });
    }

    if report.edges_of(EdgeVerdict::Unknown).next().is_some() {
        let (shown, more) = take(report.edges_of(EdgeVerdict::Unknown), top);
        out.push(Section {
            kind: SectionKind::NotJudged,
            tone: Tone::Warn,
            note: "flows to Service addresses that no backend serves".to_owned(),
            empty: "none",
            columns: &["FROM", "TO", "PORT", "FLOWS", "SEEN"],
            rows: shown
                .iter()
                .map(|e| {
                    vec![
                        group(&e.from),
                        group(&e.to),
                        port(e),
                        e.flows.to_string(),
                        span(e.first, e.last),
                    ]
                })
                .collect(),
            more,
        });
    }

    let (flows, edges) = edge_count(report, EdgeVerdict::Allowed);
    let (shown, more) = take(report.edges_of(EdgeVerdict::Allowed), top);
    out.push(Section {
        kind: SectionKind::Allowed,
        tone: Tone::Plain,
        note: format!(
            "{flows} flows on {edges} edges: who talks to whom, and the policies that allow it"
        ),
        empty: "none",
        columns: &["FROM", "TO", "VIA", "PORT", "FLOWS", "POLICIES"],
        rows: shown
            .iter()
            .map(|e| {
                edge_row(
                    e,
                    [match e.exception {
                        Some(why) => format!("({why})"),
                        None => sides(e, true, true),
                    }],
                )
            })
            .collect(),
        more,
    });

    let (shown, more) = take(report.external.iter(), top);
    out.push(Section {
        kind: SectionKind::ExternalPeers,
        tone: Tone::Plain,
        note: "addresses outside the cluster, by flows".to_owned(),
        empty: "none",
        columns: &["ADDRESS", "FLOWS", "STARTED BY THEM"],
        rows: shown
            .iter()
            .map(|(ip, flows, initiated)| {
                vec![ip.to_string(), flows.to_string(), initiated.to_string()]
            })
            .collect(),
        more,
    });
    out
}

/// Drops control characters (terminal escapes) from untrusted text.
fn terminal_safe(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

/// Escapes what Markdown (and the HTML it may become) would interpret.
fn markdown_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().filter(|c| !c.is_control()) {
        match c {
            '|' | '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '#' => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// The lines above the sections: inputs, snapshot, totals.
pub fn header(report: &Report, context: &Context, style: Style) -> Vec<String> {
    let t = &report.totals;
    let mut lines = Vec::new();
    let list = |items: &[String]| items.join(", ");
    lines.push(format!(
        "{} against {}",
        list(context.inputs),
        list(context.clusters)
    ));
    if !context.unevaluated_policies.is_empty() {
        let kinds = context
            .unevaluated_policies
            .iter()
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let warning = format!(
            "warning: verdicts are NetworkPolicy and ClusterNetworkPolicy only: the cluster also holds policies weir does not evaluate \
             ({kinds}); what they allow or deny is judged as if they were absent"
        );
        lines.push(match style {
            Style::Text { color: true } => format!("{YELLOW}{warning}{RESET}"),
            _ => warning,
        });
    }
    let s = context.stats;
    if s.packets > 0 {
        lines.push(format!(
            "{} packets read, {} skipped ({} malformed)",
            s.packets,
            s.skipped.total(),
            s.skipped.malformed()
        ));
    }
    if let (Some(first), Some(last)) = (t.first, t.last) {
        let date = first.to_string();
        let seconds = (last.0 - first.0) as f64 / 1e9;
        lines.push(format!(
            "traffic {} {}–{} UTC ({seconds:.1} s): {} flows, {} packets, {}B",
            date.get(..10).unwrap_or(""),
            clock(first),
            clock(last),
            t.flows,
            t.packets,
            human(t.bytes)
        ));
    } else {
        lines.push("no flows".to_owned());
    }
    let paint = |text: String, code: &str, on: bool| match style {
        Style::Text { color: true } if on => format!("{code}{text}{RESET}"),
        _ => text,
    };
    lines.push(format!(
        "verdicts: {} allowed ({} only because a pod is not isolated), {}, {} mixed, {} not judged",
        t.allowed,
        t.allowed_not_isolated,
        paint(format!("{} denied", t.denied), RED, t.denied > 0),
        t.mixed,
        t.unjudged
    ));
    lines.push(format!(
        "attribution: {} seen, {} through Services ({} joined), {}",
        plural(t.pods_seen, "pod", "pods"),
        plural(t.via_service, "flow", "flows"),
        plural(t.dnat_joined, "pre/post-DNAT pair", "pre/post-DNAT pairs"),
        plural(
            report.unattributed.len() as u64,
            "unknown address",
            "unknown addresses"
        )
    ));
    lines
}

/// The whole report in a style.
pub fn render_report(report: &Report, context: &Context, style: Style) -> String {
    render(
        "weir analyze",
        &header(report, context, style),
        &sections(report, context.top),
        style,
    )
}

/// A titled report: header lines, then each section as a table (or what its emptiness means).
pub fn render(title: &str, header: &[String], sections: &[Section], style: Style) -> String {
    let mut out = String::new();
    match style {
        Style::Text { color } => {
            let paint = |code: &str, text: &str| {
                if color {
                    format!("{code}{text}{RESET}")
                } else {
                    text.to_owned()
                }
            };
            let _ = writeln!(out, "{}", paint(BOLD, title));
            for line in header {
                let _ = writeln!(out, "  {}", terminal_safe(line));
            }
            for section in sections {
                out.push('\n');
                let tone = match (section.tone, section.rows.is_empty()) {
                    (_, true) => GREEN,
                    (Tone::Bad, false) => RED,
                    (Tone::Warn, false) => YELLOW,
                    (Tone::Plain, false) => "",
                };
                let title = section.kind.title().to_uppercase();
                if section.rows.is_empty() {
                    let _ = writeln!(
                        out,
                        "{}: {}",
                        paint(&format!("{BOLD}{tone}"), &title),
                        section.empty
                    );
                    continue;
                }
                let _ = writeln!(out, "{}", paint(&format!("{BOLD}{tone}"), &title));
                let _ = writeln!(out, "{}", paint(DIM, &format!("  {}", section.note)));
                write_table(&mut out, section, color);
                if section.more > 0 {
                    let _ = writeln!(
                        out,
                        "  … and {} more (--top, or --format json for all)",
                        section.more
                    );
                }
            }
        }
        Style::Markdown => {
            let _ = writeln!(out, "## {title}\n");
            for line in header {
                let _ = writeln!(out, "- {}", markdown_safe(line));
            }
            for section in sections {
                let _ = writeln!(out, "\n### {}\n", section.kind.title());
                if section.rows.is_empty() {
                    let _ = writeln!(out, "{}.", capitalize(section.empty));
                    continue;
                }
                let _ = writeln!(out, "{}.\n", capitalize(&section.note));
                let _ = writeln!(out, "| {} |", section.columns.join(" | "));
                let _ = writeln!(
                    out,
                    "|{}|",
                    section
                        .columns
                        .iter()
                        .map(|_| "---")
                        .collect::<Vec<_>>()
                        .join("|")
                );
                for row in &section.rows {
                    let cells: Vec<String> = row.iter().map(|c| markdown_safe(c)).collect();
                    let _ = writeln!(out, "| {} |", cells.join(" | "));
                }
                if section.more > 0 {
                    let _ = writeln!(
                        out,
                        "\n… and {} more (`--format json` has all).",
                        section.more
                    );
                }
            }
        }
    }
    out
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn write_table(out: &mut String, section: &Section, color: bool) {
    let rows: Vec<Vec<String>> = section
        .rows
        .iter()
        .map(|r| r.iter().map(|c| terminal_safe(c)).collect())
        .collect();
    // Columns empty in every row (no Service in a section, say) are left out.
    let shown: Vec<usize> = (0..section.columns.len())
        .filter(|&i| rows.iter().any(|r| r.get(i).is_some_and(|c| !c.is_empty())))
        .collect();
    let width = |i: usize| {
        rows.iter()
            .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
            .chain([section.columns[i].len()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = shown.iter().map(|&i| width(i)).collect();
    let line = |cells: Vec<&str>| -> String {
        let mut text = String::from(" ");
        let last = cells.len().saturating_sub(1);
        for (k, cell) in cells.iter().enumerate() {
            text.push(' ');
            text.push_str(cell);
            if k < last {
                let pad = widths[k].saturating_sub(cell.chars().count());
                text.push_str(&" ".repeat(pad + 1));
            }
        }
        text
    };
    let head = line(shown.iter().map(|&i| section.columns[i]).collect());
    let _ = writeln!(
        out,
        "{}",
        if color {
            format!("{DIM}{head}{RESET}")
        } else {
            head
        }
    );
    for row in &rows {
        let _ = writeln!(
            out,
            "{}",
            line(
                shown
                    .iter()
                    .map(|&i| row.get(i).map_or("", String::as_str))
                    .collect()
            )
        );
    }
}

/// `1.2K`, `34M`: a count in a few characters.
pub fn human(n: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1_000_000_000_000, "T"),
        (1_000_000_000, "G"),
        (1_000_000, "M"),
        (1_000, "K"),
    ];
    for (size, unit) in UNITS {
        if n >= size {
            let v = n as f64 / size as f64;
            return if v < 10.0 {
                format!("{v:.1}{unit}")
            } else {
                format!("{v:.0}{unit}")
            };
        }
    }
    n.to_string()
}

//! `weir analyze`: captures (or flow records) judged against a cluster snapshot, as a report.

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use weir_analysis::{Analysis, AnalysisStream, Report};
use weir_flow::{ExtractStats, FinishedFlow, FlowConfig};
use weir_model::{Cidr, FlowRecord};
use weir_policy::PolicySet;

use crate::pipeline::{FileFlows, extract_file_streaming, extract_routed};
use crate::snapshot::{self, KubeArgs};
use weir_report::{Format, Rendering, write_report};

#[derive(Args)]
pub struct AnalyzeArgs {
    /// Capture files (pcap or pcapng, optionally gzip-compressed).
    #[arg(value_name = "CAPTURE", required_unless_present = "flows")]
    captures: Vec<PathBuf>,
    /// Flow records (`weir flows --format jsonl` output) instead of, or as well as, captures; `-` reads
    /// standard input.
    #[arg(long, value_name = "FILE.jsonl")]
    flows: Vec<PathBuf>,
    /// Cluster snapshot(s): `kubectl get ... -o yaml/json` output, multi-document YAML, or directories.
    #[arg(long, value_name = "PATH")]
    cluster: Vec<PathBuf>,
    /// Judge against the NetworkPolicies in these files or directories instead of the snapshot's own (a
    /// `weir suggest` output, a policy change under review).
    #[arg(long, value_name = "PATH")]
    policies: Vec<PathBuf>,
    /// The namespace of --policies objects that name none (as `kubectl apply -n` places them).
    #[arg(long, short = 'n', value_name = "NS", requires = "policies")]
    namespace: Option<String>,
    /// Report format.
    #[arg(long, value_enum, default_value_t = AnalyzeFormat::Text)]
    format: AnalyzeFormat,
    /// Write the report to this file instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Address ranges that belong to the cluster besides the nodes' pod ranges (the Service range, or the pod
    /// range of a CNI that does not publish per-node ranges): addresses there that no one holds are reported
    /// as unknown, not external.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    cluster_cidr: Vec<Cidr>,
    /// Rows shown per section of the text and Markdown reports (the JSON has everything).
    #[arg(long, default_value_t = 15)]
    top: usize,
    /// Color in the text report.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    color: ColorChoice,
    /// Worker threads per capture.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AnalyzeFormat {
    /// A report for people (colored on a terminal).
    Text,
    /// One JSON document: `{"summary":{...},"flows":[...]}`.
    Json,
    /// The edge book as JSON, `{"edges":[...]}`: every edge by endpoint, protocol and port with its counts,
    /// verdict and deciding policies, the objects the aggregator's `GET /api/v1/edges` answers with.
    Edges,
    /// The text report's content as Markdown, for a ticket or a pull request.
    Markdown,
    /// weir's service map with every edge's details and each workload's suggested policy, as one
    /// self-contained HTML file (opens offline; attach it to an incident ticket).
    Html,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// On a terminal, unless NO_COLOR is set.
    Auto,
    Always,
    Never,
}

pub fn parse_cidr(text: &str) -> Result<Cidr, String> {
    Cidr::parse(text).ok_or_else(|| format!("{text:?} is not an address block like 10.96.0.0/12"))
}

/// What reading the inputs gave, besides the records.
#[derive(Default)]
pub struct Inputs {
    pub stats: ExtractStats,
    pub names: Vec<String>,
    pub from_flow_files: u64,
}

impl Inputs {
    /// Counts a capture read, and warns of what went wrong in it (the flows before the damage count).
    fn add_capture(&mut self, path: &Path, result: &FileFlows) {
        for w in &result.warnings {
            eprintln!("weir: warning: {w}");
        }
        if let Some(e) = &result.error {
            eprintln!("weir: warning: {e}");
        }
        self.stats.merge(&result.stats);
        self.names.push(path.display().to_string());
    }
}

/// Records on their way from the reading thread to the judging one.
enum Chunk {
    /// Flows a capture finished (turned into records on the judging thread).
    Flows(Vec<FinishedFlow>),
    /// Records from a flow file.
    Records(Vec<FlowRecord>),
}

/// Reads a flow file, handing records to `sink` in chunks; false from the sink stops reading.
fn read_flow_file(path: &Path, sink: &mut impl FnMut(Chunk) -> bool) -> Result<u64> {
    const CHUNK: usize = 4096;
    let reader: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(BufReader::new(io::stdin().lock()))
    } else {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        Box::new(BufReader::with_capacity(1 << 16, file))
    };
    let mut count = 0;
    let mut chunk = Vec::with_capacity(CHUNK);
    for (index, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("{}: cannot read", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let record: FlowRecord = serde_json::from_str(&line).with_context(|| {
            format!(
                "{}:{}: not a flow record (expected `weir flows --format jsonl` output)",
                path.display(),
                index + 1
            )
        })?;
        chunk.push(record);
        count += 1;
        if chunk.len() == CHUNK && !sink(Chunk::Records(std::mem::take(&mut chunk))) {
            return Ok(count);
        }
    }
    if !chunk.is_empty() {
        sink(Chunk::Records(chunk));
    }
    Ok(count)
}

/// Reads every capture and flow file, handing what they hold to `sink` as it comes; false from the sink stops
/// reading. A capture that cannot be opened is an error; one that ends early is a warning (the flows before the
/// damage count).
fn read_inputs(
    captures: &[PathBuf],
    flow_files: &[PathBuf],
    threads: u16,
    mut sink: impl FnMut(Chunk) -> bool,
) -> Result<Inputs> {
    let mut inputs = Inputs::default();
    let config = FlowConfig::default();
    for path in captures {
        let mut source = weir_capture::FileSource::open(path)
            .with_context(|| format!("cannot read capture {}", path.display()))?;
        let result = extract_file_streaming(&mut source, &config, usize::from(threads), |flows| {
            sink(Chunk::Flows(flows))
        })?;
        inputs.add_capture(path, &result);
    }
    for path in flow_files {
        inputs.from_flow_files += read_flow_file(path, &mut sink)?;
        inputs.names.push(path.display().to_string());
    }
    Ok(inputs)
}

/// Reads every input into flow records (in input order, each capture's in the order its flows finished).
pub fn read_records(
    captures: &[PathBuf],
    flow_files: &[PathBuf],
    threads: u16,
) -> Result<(Vec<FlowRecord>, Inputs)> {
    let mut records = Vec::new();
    let inputs = read_inputs(captures, flow_files, threads, |chunk| {
        match chunk {
            Chunk::Flows(flows) => records.extend(flows.iter().map(FinishedFlow::to_record)),
            Chunk::Records(mut more) => records.append(&mut more),
        }
        true
    })?;
    Ok((records, inputs))
}

/// With several threads: the reading thread frames and routes packets to flow workers ([`flow_workers`]; the
/// reading thread is one of them), which turn the flows they finish into records and route each by its client
/// end to one of `threads` analysis shards
/// ([`weir_analysis::shard_of`]: both views of a DNAT-ed connection meet on one shard); each shard judges and
/// counts its records, and the shards' reports and analyses merge into the one a single thread makes.
fn analyze_sharded(
    args: &AnalyzeArgs,
    kube: &KubeArgs,
) -> Result<(PolicySet, Inputs, Analysis, Report)> {
    let keep_flows = matches!(args.format, AnalyzeFormat::Json | AnalyzeFormat::Html);
    let edge_book = matches!(args.format, AnalyzeFormat::Edges);
    let shards = usize::from(args.threads.max(1));
    let set_cell: std::sync::OnceLock<PolicySet> = std::sync::OnceLock::new();
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<bool>(shards);
    let mut inboxes = Vec::with_capacity(shards);
    let mut outboxes = Vec::with_capacity(shards);
    for _ in 0..shards {
        // Bounded, so slow judging holds the flow workers (and so the reader) back instead of letting records
        // pile up.
        let (tx, rx) = crossbeam_channel::bounded::<Vec<FlowRecord>>(64);
        outboxes.push(tx);
        inboxes.push(rx);
    }
    let to_records = |flows: Vec<FinishedFlow>| -> Vec<FlowRecord> {
        // The reports that keep no flows never show a Community ID.
        if keep_flows {
            flows.iter().map(FinishedFlow::to_record).collect()
        } else {
            flows.iter().map(FinishedFlow::record_without_id).collect()
        }
    };
    std::thread::scope(|scope| {
        let set_cell = &set_cell;
        let loader = scope.spawn(move || -> Result<()> {
            let policies = (!args.policies.is_empty()).then_some(snapshot::PolicyFiles {
                paths: &args.policies,
                namespace: args.namespace.as_deref(),
            });
            let loaded = snapshot::load_with(&args.cluster, kube, policies);
            let ok = loaded.is_ok();
            let result = loaded.map(|set| {
                let _ = set_cell.set(set);
            });
            for _ in 0..shards {
                let _ = ready_tx.send(ok);
            }
            result
        });
        let mut workers = Vec::with_capacity(shards);
        for inbox in inboxes {
            let ready_rx = ready_rx.clone();
            workers.push(scope.spawn(move || {
                let set = match (ready_rx.recv(), set_cell.get()) {
                    (Ok(true), Some(set)) => set,
                    // The snapshot did not load: the loader says why; drain so no flow worker waits on us.
                    _ => {
                        for _ in inbox {}
                        return None;
                    }
                };
                let stream = AnalysisStream::new(set, &args.cluster_cidr, keep_flows);
                let mut stream = if edge_book {
                    stream.with_edge_book()
                } else {
                    stream
                };
                for records in inbox {
                    stream.push_batch(records);
                }
                let shard = stream.finish_shard();
                // The process ends soon: its verdict cache need not be freed entry by entry.
                std::mem::forget(stream);
                Some(shard)
            }));
        }
        // Every outbox is dropped once the inputs are read, which tells the shards there is no more.
        let inputs = {
            let outboxes = outboxes;
            let route = |records: Vec<FlowRecord>| {
                let mut parts: Vec<Vec<FlowRecord>> = vec![Vec::new(); shards];
                for r in records {
                    let shard = weir_analysis::shard_of(&r, shards);
                    parts[shard].push(r);
                }
                for (tx, part) in outboxes.iter().zip(parts) {
                    // A send fails only when the shard has ended early (the snapshot did not load).
                    if !part.is_empty() {
                        let _ = tx.send(part);
                    }
                }
            };
            read_inputs_routed(
                &args.captures,
                &args.flows,
                flow_workers(shards),
                &|flows| route(to_records(flows)),
                &route,
            )
        };
        let loaded = loader
            .join()
            .map_err(|_| anyhow::anyhow!("the snapshot loading thread panicked"))?;
        let mut merged: Option<(Analysis, weir_analysis::ReportBuilder<'_>)> = None;
        for worker in workers {
            let shard = worker
                .join()
                .map_err(|_| anyhow::anyhow!("an analysis thread panicked"))?;
            if let Some((analysis, report)) = shard {
                merged = Some(match merged {
                    None => (analysis, report),
                    Some((mut all, mut whole)) => {
                        all.merge(analysis);
                        whole.merge(report);
                        (all, whole)
                    }
                });
            }
        }
        loaded?;
        let inputs = inputs?;
        let (analysis, report) =
            merged.ok_or_else(|| anyhow::anyhow!("no analysis shard finished"))?;
        let report = report.finish();
        Ok((analysis, report, inputs))
    })
    .map(|(analysis, report, inputs)| {
        let set = set_cell.into_inner();
        (set, inputs, analysis, report)
    })
    .and_then(|(set, inputs, analysis, report)| {
        let set = set.ok_or_else(|| anyhow::anyhow!("the snapshot was not loaded"))?;
        Ok((set, inputs, analysis, report))
    })
}

/// How many flow workers feed `shards` analysis shards: half as many (at least one), since decoding a packet
/// costs less than judging its flow. On 2 cores, a reader that is also the one flow worker and 2 shards matched
/// the single-threaded pipeline, where 2 flow workers and 2 shards (5 busy threads) were 1.2x slower.
fn flow_workers(shards: usize) -> usize {
    shards.div_ceil(2).max(1)
}

/// Reads every capture with `workers` flow workers, handing their flows to `on_flows` on the workers' threads,
/// and every flow file's records to `on_records` on this one.
fn read_inputs_routed(
    captures: &[PathBuf],
    flow_files: &[PathBuf],
    workers: usize,
    on_flows: &(dyn Fn(Vec<FinishedFlow>) + Sync),
    on_records: &dyn Fn(Vec<FlowRecord>),
) -> Result<Inputs> {
    let mut inputs = Inputs::default();
    let config = FlowConfig::default();
    for path in captures {
        let mut source = weir_capture::FileSource::open(path)
            .with_context(|| format!("cannot read capture {}", path.display()))?;
        let result = extract_routed(&mut source, &config, workers, on_flows)?;
        inputs.add_capture(path, &result);
    }
    for path in flow_files {
        inputs.from_flow_files += read_flow_file(path, &mut |chunk| {
            match chunk {
                Chunk::Records(records) => on_records(records),
                Chunk::Flows(flows) => on_flows(flows),
            }
            true
        })?;
        inputs.names.push(path.display().to_string());
    }
    Ok(inputs)
}

/// Reads the inputs on this thread while another loads the snapshot and then judges flows as they finish, so
/// attribution and judging run beside decoding.
fn analyze_inputs(
    args: &AnalyzeArgs,
    kube: &KubeArgs,
) -> Result<(PolicySet, Inputs, Analysis, Report)> {
    if args.threads > 1 {
        return analyze_sharded(args, kube);
    }
    let keep_flows = matches!(args.format, AnalyzeFormat::Json | AnalyzeFormat::Html);
    // Bounded, so a slow judge holds the reader back instead of letting finished flows pile up; deep enough to
    // let the reader run on while the snapshot loads.
    let (tx, rx) = crossbeam_channel::bounded::<Chunk>(1024);
    std::thread::scope(|scope| {
        let judge = scope.spawn(move || -> Result<(PolicySet, Analysis, Report)> {
            let policies = (!args.policies.is_empty()).then_some(snapshot::PolicyFiles {
                paths: &args.policies,
                namespace: args.namespace.as_deref(),
            });
            let set = snapshot::load_with(&args.cluster, kube, policies)?;
            let (analysis, report) = {
                let stream = AnalysisStream::new(&set, &args.cluster_cidr, keep_flows);
                let mut stream = if matches!(args.format, AnalyzeFormat::Edges) {
                    stream.with_edge_book()
                } else {
                    stream
                };
                for chunk in rx {
                    // The reports that keep no flows never show a Community ID.
                    let records = match chunk {
                        Chunk::Flows(flows) if keep_flows => {
                            flows.iter().map(FinishedFlow::to_record).collect()
                        }
                        Chunk::Flows(flows) => {
                            flows.iter().map(FinishedFlow::record_without_id).collect()
                        }
                        Chunk::Records(records) => records,
                    };
                    stream.push_batch(records);
                }
                let result = stream.finish();
                // The process ends soon: its verdict cache need not be freed entry by entry.
                std::mem::forget(stream);
                result
            };
            Ok((set, analysis, report))
        });
        // A send fails only when the judging thread has ended early, on an error `join` returns.
        let inputs = read_inputs(&args.captures, &args.flows, args.threads, |chunk| {
            tx.send(chunk).is_ok()
        });
        drop(tx);
        let judged = judge
            .join()
            .map_err(|_| anyhow::anyhow!("the judging thread panicked"))?;
        let (set, analysis, report) = judged?;
        Ok((set, inputs?, analysis, report))
    })
}

/// Whether to color a text report.
pub fn use_color(choice: ColorChoice, output: Option<&Path>) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            output.is_none()
                && io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        }
    }
}

/// The report's destination: a file, or standard output.
pub fn open_output(output: Option<&Path>) -> Result<Box<dyn Write>> {
    Ok(match output {
        Some(path) => Box::new(
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => Box::new(io::stdout().lock()),
    })
}

pub fn run(args: AnalyzeArgs, kube: &KubeArgs) -> Result<ExitCode> {
    if args.captures.is_empty() && args.flows.is_empty() {
        bail!("give at least one capture or --flows file");
    }
    let (set, inputs, analysis, report) = analyze_inputs(&args, kube)?;

    let color = use_color(args.color, args.output.as_deref());
    let mut out = open_output(args.output.as_deref())?;
    let mut out = io::BufWriter::with_capacity(1 << 16, &mut out);
    let cluster_names: Vec<String> = args
        .cluster
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let format = match args.format {
        AnalyzeFormat::Json => Format::Json,
        AnalyzeFormat::Edges => Format::Edges,
        AnalyzeFormat::Html => Format::Html,
        AnalyzeFormat::Markdown => Format::Markdown,
        AnalyzeFormat::Text => Format::Text { color },
    };
    let rendering = Rendering {
        set: &set,
        analysis: &analysis,
        report: &report,
        context: weir_report::Context {
            inputs: &inputs.names,
            clusters: &cluster_names,
            stats: &inputs.stats,
            top: args.top.max(1),
            unevaluated_policies: set.cluster().unevaluated_policies(),
        },
        cluster_ranges: &args.cluster_cidr,
    };
    write_report(&rendering, format, &mut out)
        .and_then(|()| out.flush())
        .context("writing the report")?;
    // The process ends here: freeing hundreds of thousands of flows one by one would only cost time.
    std::mem::forget(analysis);
    std::mem::forget(report);
    std::mem::forget(set);
    Ok(ExitCode::SUCCESS)
}

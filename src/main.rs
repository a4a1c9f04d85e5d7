//! `weir`: Kubernetes network security from packets: flows, NetworkPolicy verdicts, alerts, policy synthesis.

mod agent;
mod aggregator;
mod analyze;
mod capture;
mod diff;
mod duration;
mod explain;
mod flows;
mod output;
mod pipeline;
mod reach;
mod snapshot;
mod suggest;
mod watch;

use std::process::ExitCode;

/// The static (musl) build, which the container image ships, allocates with mimalloc: musl's own allocator
/// costs 1.2-1.4x in `weir analyze` and more under the aggregator's threads.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "weir", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    kube: snapshot::KubeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Turn pcap/pcapng captures into bidirectional flow records.
    Flows(flows::FlowsArgs),
    /// Capture live on pod veth interfaces (AF_PACKET ring) and print flow records as they end.
    Capture(capture::CaptureArgs),
    /// Judge captured traffic against a cluster snapshot: who talked to whom, what the policies deny, what is
    /// unexpected.
    Analyze(analyze::AnalyzeArgs),
    /// Pod-to-pod reachability matrix under the cluster's NetworkPolicies.
    Reach(reach::ReachArgs),
    /// Explain the verdict on one connection: which policies isolate each end and which rules allow it.
    Explain(explain::ExplainArgs),
    /// Write least-privilege NetworkPolicies (one per workload) from observed traffic, proven by the engine.
    Suggest(suggest::SuggestArgs),
    /// Compare the policies in force with observed traffic, or two policy sets with each other (exit code 3
    /// when observed flows would break).
    Diff(diff::DiffArgs),
    /// Run on every node: capture pod traffic and stream flow records to the aggregator.
    Agent(agent::AgentArgs),
    /// Run once: take flows from agents, judge them against the cluster's policies as they arrive, raise
    /// alerts, keep the baseline, serve the API and metrics.
    Aggregator(Box<aggregator::AggregatorArgs>),
    /// Write a cluster snapshot from the live cluster: the objects every `--cluster` option reads.
    Snapshot(snapshot::SnapshotArgs),
    /// Tail the aggregator's alerts (or judged flows) as they happen.
    Watch(watch::WatchArgs),
}

/// The command line; named `kubectl weir` in help and errors when run as the kubectl plugin `kubectl-weir`
/// (kubectl finds `kubectl-*` executables on the PATH and runs them with the rest of the command line).
fn parse() -> Cli {
    let invoked = std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()));
    let command = Cli::command();
    let command = if invoked.as_deref() == Some("kubectl-weir") {
        command
            .name("kubectl-weir")
            .bin_name("kubectl weir")
            .display_name("kubectl weir")
    } else {
        command
    };
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// What weir's libraries report (the agent's and the aggregator's progress and trouble, the cluster watch,
/// kube-rs and hyper) goes to standard error through `tracing`: `RUST_LOG` filters it (default: weir's own at
/// info, everything else at warn), and `WEIR_LOG_FORMAT=json` writes one JSON object a line for a log
/// collector. Commands' own output and summaries are not logs and are printed as before.
fn init_logging() {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(
            "warn,weir=info,weir_agent=info,weir_aggregator=info,weir_kube=info,weir_analysis=info",
        )
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if std::env::var("WEIR_LOG_FORMAT").is_ok_and(|v| v == "json") {
        let _ = builder.json().try_init();
    } else {
        let color = std::io::stderr().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        let _ = builder.with_ansi(color).try_init();
    }
}

fn main() -> ExitCode {
    let cli = parse();
    init_logging();
    let kube = &cli.kube;
    let result = match cli.command {
        Command::Flows(args) => flows::run(args),
        Command::Capture(args) => capture::run(args),
        Command::Analyze(args) => analyze::run(args, kube),
        Command::Reach(args) => reach::run(args, kube),
        Command::Explain(args) => explain::run(args, kube),
        Command::Suggest(args) => suggest::run(args, kube),
        Command::Diff(args) => diff::run(args, kube),
        Command::Agent(args) => agent::run(args),
        Command::Aggregator(args) => aggregator::run(*args, kube),
        Command::Snapshot(args) => snapshot::run_snapshot(args, kube),
        Command::Watch(args) => watch::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // A closed pipe (`weir flows x.pcap | head`) is how the reader says it has enough.
            if err
                .chain()
                .filter_map(|e| e.downcast_ref::<std::io::Error>())
                .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("weir: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

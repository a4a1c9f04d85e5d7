//! `weir flows`: captures to flow records.

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use weir_flow::{ExtractStats, FlowConfig};
use weir_model::FlowRecord;

use crate::duration::{apply_idle_timeouts, parse_duration};
use crate::output::{FlowFormat, human, write_csv, write_table};
use crate::pipeline::{extract_file, sort_flows, write_parallel};

#[derive(Args)]
pub struct FlowsArgs {
    /// Capture files (pcap or pcapng, optionally gzip-compressed); `-` reads standard input.
    #[arg(required = true, value_name = "CAPTURE")]
    captures: Vec<PathBuf>,
    /// Output format [default: table on a terminal, jsonl otherwise].
    #[arg(long, value_enum)]
    format: Option<FlowFormat>,
    /// Worker threads per capture (each owns a share of the flows).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
    /// Idle timeout: one duration for all protocols (`60s`) or per protocol
    /// (`tcp=300s,tcp-closed=10s,udp=60s,icmp=30s,other=60s`, the defaults).
    #[arg(long, value_name = "TIMEOUT")]
    idle_timeout: Option<String>,
    /// Split flows longer than this into several records (as live capture exports them).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    active_timeout: Option<Duration>,
    /// Most flows held open at once per capture; beyond it the least recently active are closed early
    /// (counted as evictions).
    #[arg(long, default_value_t = 1 << 20)]
    max_flows: usize,
    /// Print totals (packets read, decoded, flows, skipped packets by reason) on standard error.
    #[arg(long)]
    summary: bool,
}

/// Totals over every capture.
#[derive(Default)]
struct Totals {
    files: usize,
    capture_bytes: u64,
    stats: ExtractStats,
}

fn progress_wanted() -> bool {
    // Draw on a terminal only, and never when the output feeds another program.
    let stdout_is_pipe = {
        use std::os::unix::fs::FileTypeExt as _;
        std::fs::metadata("/dev/stdout").is_ok_and(|m| m.file_type().is_fifo())
    };
    io::stderr().is_terminal() && !stdout_is_pipe
}

const PROGRESS_MIN_BYTES: u64 = 64 << 20;

pub fn run(args: FlowsArgs) -> Result<ExitCode> {
    let mut config = FlowConfig {
        active_timeout: args.active_timeout,
        max_flows: args.max_flows.max(1),
        ..FlowConfig::default()
    };
    if let Some(spec) = &args.idle_timeout {
        apply_idle_timeouts(&mut config, spec).map_err(anyhow::Error::msg)?;
    }
    let format = args.format.unwrap_or(if io::stdout().is_terminal() {
        FlowFormat::Table
    } else {
        FlowFormat::Jsonl
    });
    let started = Instant::now();
    let mut totals = Totals::default();
    let mut finished = Vec::new();
    let mut failed = false;
    for path in &args.captures {
        let mut source = match weir_capture::FileSource::open(path) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("weir: error: {e}");
                failed = true;
                continue;
            }
        };
        let bar = (progress_wanted() && source.size().is_some_and(|s| s >= PROGRESS_MIN_BYTES))
            .then(|| progress_bar(&source));
        let result = extract_file(&mut source, &config, usize::from(args.threads))?;
        if let Some((bar, stop, handle)) = bar {
            stop.store(true, Ordering::Relaxed);
            let _ = handle.join();
            bar.finish_and_clear();
        }
        for w in &result.warnings {
            eprintln!("weir: warning: {w}");
        }
        if let Some(e) = &result.error {
            eprintln!("weir: warning: {e}");
        }
        totals.files += 1;
        totals.capture_bytes += result.reader.bytes;
        totals.stats.merge(&result.stats);
        finished.extend(result.flows);
    }
    sort_flows(&mut finished);
    let threads = usize::from(args.threads);
    let mut out = io::BufWriter::with_capacity(1 << 16, io::stdout().lock());
    match format {
        FlowFormat::Jsonl => write_parallel(&finished, threads, &mut out, |flows, buf| {
            for f in flows {
                f.to_record().write_json_line(buf);
            }
        }),
        FlowFormat::Csv => {
            let records: Vec<FlowRecord> = finished.iter().map(|f| f.to_record()).collect();
            write_csv(&mut out, &records)
        }
        FlowFormat::Table => {
            let records: Vec<FlowRecord> = finished.iter().map(|f| f.to_record()).collect();
            write_table(&mut out, &records)
        }
    }
    .and_then(|()| out.flush())
    .context("writing flow records")?;
    let flow_count = finished.len();
    if args.summary {
        print_summary(&totals, flow_count, started.elapsed());
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

type Progress = (
    indicatif::ProgressBar,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<()>,
);

fn progress_bar(source: &weir_capture::FileSource) -> Progress {
    let size = source.size().unwrap_or(0);
    let bar = indicatif::ProgressBar::new(size);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(source.name().to_owned());
    let counter = source.progress_counter();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (bar2, stop2) = (bar.clone(), std::sync::Arc::clone(&stop));
    let handle = std::thread::spawn(move || {
        while !stop2.load(Ordering::Relaxed) {
            bar2.set_position(counter.load(Ordering::Relaxed));
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    (bar, stop, handle)
}

fn print_summary(t: &Totals, flows: usize, elapsed: Duration) {
    let s = &t.stats;
    let mut err = io::stderr().lock();
    let secs = elapsed.as_secs_f64().max(1e-9);
    let _ = writeln!(
        err,
        "captures: {}  packets read: {}  decoded: {}  skipped: {} ({} malformed)",
        t.files,
        s.packets,
        s.decoded,
        s.skipped.total(),
        s.skipped.malformed()
    );
    let _ = writeln!(
        err,
        "flows: {flows}  peak open: {}  evicted (table full): {}",
        s.table.peak_flows, s.table.evicted
    );
    for (reason, n) in s.skipped.iter() {
        let _ = writeln!(
            err,
            "  skipped  {:<9} {:<22} {n:>12}{}",
            reason.layer(),
            reason.name(),
            if reason.is_malformed() {
                "  (malformed)"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(
        err,
        "time: {:.3}s  {} packets/s  {}B/s",
        secs,
        human((s.packets as f64 / secs) as u64),
        human((t.capture_bytes as f64 / secs) as u64)
    );
}

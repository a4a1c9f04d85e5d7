//! `weir watch`: tails the aggregator's alerts (or judged flows), like `hubble observe --follow`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use weir_model::{Alert, AlertKind, Severity};

use crate::agent::read_token;

#[derive(Args)]
pub struct WatchArgs {
    /// The aggregator's base URL.
    #[arg(long, env = "WEIR_AGGREGATOR", default_value = "http://127.0.0.1:9480")]
    aggregator: String,
    /// Only alerts (or flows) with an end in this namespace.
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Only these alert types (policy-violation, enforcement-gap, new-edge, scan). Repeatable.
    #[arg(long = "type", short = 't', value_parser = parse_kind)]
    types: Vec<AlertKind>,
    /// Tail judged flows instead of alerts.
    #[arg(long)]
    flows: bool,
    /// Print the alerts raised so far before following.
    #[arg(long)]
    existing: bool,
    /// Output: compact lines on a terminal, JSON lines when piped.
    #[arg(long, value_enum, default_value_t = WatchOutput::Auto)]
    output: WatchOutput,
    /// A file with the bearer token, when the aggregator requires one for reads.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// PEM certificate(s) the aggregator's certificate must chain to.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum WatchOutput {
    /// Compact on a terminal, JSON when piped.
    Auto,
    /// One line per event, for people.
    Compact,
    /// One JSON object per line.
    Json,
}

fn parse_kind(text: &str) -> Result<AlertKind, String> {
    AlertKind::parse(text).ok_or_else(|| {
        format!("unknown alert type {text:?}: policy-violation, enforcement-gap, new-edge or scan")
    })
}

/// Percent-encodes a query value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn query(args: &WatchArgs) -> String {
    let mut parts = Vec::new();
    if let Some(ns) = &args.namespace {
        parts.push(format!("namespace={}", encode(ns)));
    }
    if !args.types.is_empty() && !args.flows {
        let names: Vec<&str> = args.types.iter().map(|k| k.name()).collect();
        parts.push(format!("type={}", encode(&names.join(","))));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// One alert as a line: time, severity, type, edge, count, reason.
pub fn alert_line(a: &Alert, color: bool) -> String {
    let paint = |code: &str, text: &str| {
        if color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    };
    let severity = match a.severity {
        Severity::Critical => paint("1;31", "CRITICAL"),
        Severity::High => paint("31", "HIGH    "),
        Severity::Medium => paint("33", "MEDIUM  "),
    };
    let clean = |s: &str| -> String { s.chars().filter(|c| !c.is_control()).collect() };
    let edge = match &a.destination {
        Some(d) => format!(
            "{} -> {}",
            clean(&a.source.to_string()),
            clean(&d.to_string())
        ),
        None => clean(&a.source.to_string()),
    };
    let port = match (&a.proto, a.port) {
        (Some(p), Some(port)) => format!(" {p}/{port}"),
        (Some(p), None) => format!(" {p}"),
        _ => String::new(),
    };
    format!(
        "{}  {severity} {:<16} {edge}{port}  x{}  {}",
        a.updated_at,
        a.kind.name(),
        a.count,
        clean(&a.evidence.reason)
    )
}

fn flow_line(v: &serde_json::Value) -> String {
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("");
    let end = |ip: &str, port: Option<u64>| match port {
        Some(p) => format!("{ip}:{p}"),
        None => ip.to_owned(),
    };
    let label = |k: &str| {
        v.get(k)
            .map(|e| {
                let ns = e.get("namespace").and_then(|x| x.as_str());
                let name = e.get("name").and_then(|x| x.as_str()).unwrap_or("");
                match ns {
                    Some(ns) => format!("{ns}/{name}"),
                    None => name.to_owned(),
                }
            })
            .unwrap_or_default()
    };
    let line = format!(
        "{}  {:<8} {:<5} {} ({}) -> {} ({})",
        s("start"),
        s("verdict"),
        s("proto"),
        end(s("src"), v.get("src_port").and_then(|x| x.as_u64())),
        label("source"),
        end(s("dst"), v.get("dst_port").and_then(|x| x.as_u64())),
        label("destination"),
    );
    line.chars().filter(|c| !c.is_control()).collect()
}

pub fn run(args: WatchArgs) -> Result<ExitCode> {
    weir_agent::install_crypto_provider();
    let token = args.token_file.as_deref().map(read_token).transpose()?;
    let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
    if let Some(path) = &args.ca_cert {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{} holds no usable certificate", path.display()))?;
        builder = builder.tls_certs_only(certs);
    }
    let client = builder.build().context("building the HTTP client")?;
    let json = match args.output {
        WatchOutput::Json => true,
        WatchOutput::Compact => false,
        WatchOutput::Auto => !std::io::stdout().is_terminal(),
    };
    let color = !json
        && std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let base = args.aggregator.trim_end_matches('/').to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let follow = async move {
        let mut out = std::io::stdout().lock();
        let mut printed = 0u64;
        let get = |url: String| {
            let mut req = client.get(url);
            if let Some(t) = &token {
                req = req.bearer_auth(t);
            }
            req
        };
        if args.existing && !args.flows {
            let response = get(format!("{base}/api/v1/alerts{}", query(&args)))
                .send()
                .await
                .with_context(|| format!("reaching {base}"))?;
            if !response.status().is_success() {
                bail!("{base}: {}", response.status());
            }
            let body: serde_json::Value = response.json().await.context("reading the alerts")?;
            let mut alerts: Vec<Alert> =
                serde_json::from_value(body.get("alerts").cloned().unwrap_or_default())
                    .context("the alerts do not parse")?;
            alerts.reverse();
            for a in alerts {
                print_alert(&mut out, &a, json, color)?;
                printed += 1;
            }
        }
        let path = if args.flows {
            "flows/stream"
        } else {
            "alerts/stream"
        };
        let url = format!("{base}/api/v1/{path}{}", query(&args));
        let mut backoff = Duration::from_millis(250);
        loop {
            if args.count.is_some_and(|c| printed >= c) {
                return Ok(ExitCode::SUCCESS);
            }
            let response = match get(url.clone()).send().await {
                Ok(r) if r.status().is_success() => r,
                Ok(r) if r.status().is_client_error() => {
                    bail!(
                        "{url}: {} {}",
                        r.status(),
                        r.text().await.unwrap_or_default().trim()
                    );
                }
                Ok(r) => {
                    eprintln!("weir watch: {url}: {}; retrying", r.status());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
                Err(e) => {
                    eprintln!("weir watch: {base} is unreachable ({e}); retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(250);
            let mut response = response;
            let mut pending = Vec::new();
            let (mut event, mut data) = (String::new(), String::new());
            while let Ok(Some(chunk)) = response.chunk().await {
                pending.extend_from_slice(&chunk);
                while let Some(at) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=at).collect();
                    let line = String::from_utf8_lossy(&line);
                    let line = line.trim_end_matches(['\n', '\r']);
                    if line.is_empty() {
                        if !data.is_empty() {
                            match event.as_str() {
                                "alert" => match serde_json::from_str::<Alert>(&data) {
                                    Ok(a) => print_alert(&mut out, &a, json, color)?,
                                    Err(e) => eprintln!("weir watch: an alert did not parse: {e}"),
                                },
                                "flow" => {
                                    if json {
                                        writeln!(out, "{data}")?;
                                    } else if let Ok(v) = serde_json::from_str(&data) {
                                        writeln!(out, "{}", flow_line(&v))?;
                                    }
                                }
                                "lagged" => eprintln!(
                                    "weir watch: {data} events skipped (this client fell behind)"
                                ),
                                _ => {}
                            }
                            out.flush()?;
                            if matches!(event.as_str(), "alert" | "flow") {
                                printed += 1;
                                if args.count.is_some_and(|c| printed >= c) {
                                    return Ok(ExitCode::SUCCESS);
                                }
                            }
                        }
                        event.clear();
                        data.clear();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if !data.is_empty() {
                            data.push('\n');
                        }
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
            }
            eprintln!("weir watch: the stream ended; reconnecting");
            tokio::time::sleep(backoff).await;
        }
    };
    runtime.block_on(async {
        tokio::select! {
            result = follow => result,
            stopped = stop_signal() => stopped.map(|()| ExitCode::SUCCESS),
        }
    })
}

/// SIGINT, SIGTERM or SIGHUP: `weir watch` ends as a finished stream does (exit 0). The handlers also make it
/// stoppable as PID 1 of a container, where signals without a handler are dropped.
async fn stop_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => interrupted.context("installing the SIGINT handler")?,
        _ = term.recv() => {}
        _ = hangup.recv() => {}
    }
    Ok(())
}

fn print_alert(out: &mut impl Write, a: &Alert, json: bool, color: bool) -> Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string(a)?)?;
    } else {
        writeln!(out, "{}", alert_line(a, color))?;
    }
    Ok(())
}

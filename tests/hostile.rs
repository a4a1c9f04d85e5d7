//! The aggregator against hostile clients, on loopback with real sockets: no usable default secret, nothing of
//! a body read before the sender is known (the answer comes to a request's head alone), bodies bounded in size
//! and time, and memory flat while 64 strangers each try to push 32 MiB at once.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::process::Proc;
use common::root;
use common::system::{free_port, wait_for};

const AGENT_TOKEN: &str = "agent-t0ken-Qm4x-Wz8v-Lp2k-Rt6n-Yc9s";
const READ_TOKEN: &str = "r3ad-t0ken-7Qx9-Lm2v-Zp8w-Kc4n-Hs6d";

struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(tag: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("weir-hostile-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

/// `weir aggregator` on the demo snapshot, listening on `listen`, with no credential given.
fn bare_aggregator(dir: &Path, listen: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.arg("aggregator")
        .arg("--cluster")
        .arg(root().join("pcaps/demo.cluster.yaml"))
        .args(["--listen", listen, "--data"])
        .arg(dir.join("data"))
        .args(["--no-alert-lines"]);
    cmd
}

/// The same with both tokens.
fn aggregator_command(dir: &Path, listen: &str, agent_token: &str, read_token: &str) -> Command {
    std::fs::write(dir.join("agent-token"), format!("{agent_token}\n")).unwrap();
    std::fs::write(dir.join("read-token"), format!("{read_token}\n")).unwrap();
    let mut cmd = bare_aggregator(dir, listen);
    cmd.arg("--token-file")
        .arg(dir.join("agent-token"))
        .arg("--read-token-file")
        .arg(dir.join("read-token"));
    cmd
}

/// Runs a command that must fail at start; its standard error.
fn refusal(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "started: {stderr}");
    stderr
}

/// Starting with `agent_token`/`read_token` (and `extra` arguments) fails, saying `why`.
fn refused_at_start(listen: &str, agent_token: &str, read_token: &str, extra: &[&str], why: &str) {
    let dir = scratch("start");
    let stderr = refusal(aggregator_command(&dir.0, listen, agent_token, read_token).args(extra));
    assert!(
        stderr.contains(why),
        "expected {why:?} with {extra:?} in: {stderr}"
    );
}

#[test]
fn placeholders_short_tokens_and_open_doors_are_refused_at_start() {
    let port = free_port();
    let local = format!("127.0.0.1:{port}");
    refused_at_start(
        &local,
        "change-me-weir-agent-token",
        READ_TOKEN,
        &[],
        "the agents' token in",
    );
    refused_at_start(
        &local,
        "change-me-weir-agent-token-but-long-enough",
        READ_TOKEN,
        &[],
        "a placeholder",
    );
    refused_at_start(
        &local,
        AGENT_TOKEN,
        "r3ad-t0ken",
        &[],
        "is 10 bytes long; use at least 32",
    );
    // Without a read token, only loopback may serve reads; without an agent credential, only loopback takes
    // flows. Both are said, with what to do.
    let dir = scratch("open");
    let anywhere = format!("0.0.0.0:{port}");
    let stderr = refusal(&mut bare_aggregator(&dir.0, &anywhere));
    assert!(
        stderr.contains("would be taken from anyone") && stderr.contains("--agent-auth kubernetes"),
        "{stderr}"
    );
    std::fs::write(dir.0.join("t"), AGENT_TOKEN).unwrap();
    let stderr = refusal(
        bare_aggregator(&dir.0, &anywhere)
            .arg("--token-file")
            .arg(dir.0.join("t")),
    );
    assert!(
        stderr.contains("would be open to anyone") && stderr.contains("--read-token-file"),
        "{stderr}"
    );
    // Agents' tokens reviewed by the API server need a live cluster.
    refused_at_start(
        &local,
        AGENT_TOKEN,
        READ_TOKEN,
        &["--agent-auth", "kubernetes"],
        "takes no --token-file",
    );
}

/// A running aggregator with both tokens, on loopback; stopped when dropped.
fn running(dir: &Path) -> (Proc, u16) {
    let port = free_port();
    let child = aggregator_command(dir, &format!("127.0.0.1:{port}"), AGENT_TOKEN, READ_TOKEN)
        .args(["--max-body-mb", "4"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let proc = Proc(Some(child));
    wait_for(&format!("http://127.0.0.1:{port}/readyz"));
    (proc, port)
}

/// Sends only a request's head (announcing `length` body bytes) and reads the answer, which must come within
/// two seconds while not one byte of the body has been sent.
fn answer_to_head(port: u16, head: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(e) => panic!(
                "no answer to the head alone ({e}): the server waits for the body. Got {:?}",
                String::from_utf8_lossy(&answer)
            ),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

fn ingest_head(token: &str, length: u64) -> String {
    format!(
        "POST /api/v1/ingest HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nx-weir-node: n1\r\n\
         x-weir-epoch: e1\r\nx-weir-seq: 1\r\ncontent-type: application/x-ndjson\r\ncontent-length: {length}\r\n\r\n"
    )
}

#[test]
fn a_sender_is_known_before_any_of_its_body_is_read() {
    let dir = scratch("before");
    let (_aggregator, port) = running(&dir.0);

    // A stranger announcing 32 MiB: 401 with the body unsent.
    let answer = answer_to_head(port, &ingest_head("wrong-token", 32 << 20));
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // The agents' token, but more than the limit announced: 413, again before the body.
    let answer = answer_to_head(port, &ingest_head(AGENT_TOKEN, 32 << 20));
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // Reads too: a diff body of 4 MiB without the read token.
    let answer = answer_to_head(
        port,
        "POST /api/v1/diff HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 4194000\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // And /metrics wants the read token.
    let answer = answer_to_head(port, "GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    let answer = answer_to_head(
        port,
        &format!("GET /metrics HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {READ_TOKEN}\r\n\r\n"),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A sender who knows the token but sends the body slowly is cut off: here it never sends it, and the
    // answer comes once the time allowed for a body is over (30 s); a client that never finishes its headers is
    // cut off after 10 s.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    slow.write_all(b"POST /api/v1/ingest HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let n = slow.read(&mut buf).unwrap_or(0);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(14),
        "half a head held the connection {waited:?} ({n} bytes answered)"
    );
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn sixty_four_strangers_pushing_32_mib_each_leave_memory_flat() {
    let dir = scratch("flood");
    let (aggregator, port) = running(&dir.0);
    let pid = aggregator.id();
    let before_rss = rss_kib(pid);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before_rss));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let senders: Vec<_> = (0..64)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let _ = s.write_all(ingest_head("a-stranger", 32 << 20).as_bytes());
                let chunk = vec![b'x'; 1 << 20];
                let mut sent = 0u64;
                for _ in 0..32 {
                    match s.write_all(&chunk) {
                        Ok(()) => sent += chunk.len() as u64,
                        Err(_) => break,
                    }
                }
                let mut answer = [0u8; 64];
                let n = s.read(&mut answer).unwrap_or(0);
                (sent, String::from_utf8_lossy(&answer[..n]).into_owned())
            })
        })
        .collect();
    let mut refused = 0;
    for sender in senders {
        let (_, answer) = sender.join().unwrap();
        if answer.starts_with("HTTP/1.1 401") {
            refused += 1;
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.join().unwrap();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(refused, 64, "every stranger was answered 401");
    assert!(
        peak < 512 << 10,
        "the aggregator grew to {peak} KiB (from {before_rss} KiB)"
    );
    eprintln!("64 × 32 MiB unauthenticated: RSS {before_rss} → peak {peak} KiB");
}

/// A tmpfs of `size` mounted on `dir` for one test, unmounted when dropped (also when the test fails).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "weir-test"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs on {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Batch `seq` of run n1/e1: 20 JSON-lines records, distinct by their source port.
fn batch(seq: u64) -> Vec<u8> {
    let mut body = Vec::new();
    for i in 0..20u64 {
        let port = 10_000 + seq * 100 + i;
        body.extend_from_slice(
            format!(
                "{{\"src\":\"10.244.1.10\",\"src_port\":{port},\"dst\":\"10.244.2.20\",\"dst_port\":8080,\
                 \"proto\":\"TCP\",\"packets\":3,\"bytes\":180,\"reply_packets\":2,\"reply_bytes\":120,\
                 \"start\":\"2026-12-04T10:00:00Z\",\"end\":\"2026-12-04T10:00:01Z\",\"tcp_flags\":\"S\",\
                 \"reply_tcp_flags\":\"SA\",\"orientation\":\"observed\",\"end_reason\":\"idle-timeout\",\
                 \"community_id\":\"\"}}\n"
            )
            .as_bytes(),
        );
    }
    body
}

/// Posts batch `seq` (or a heartbeat) as agent n1/e1; the status and the reply.
fn post(port: u16, seq: Option<u64>) -> (u16, serde_json::Value) {
    let seq_text = seq.map(|s| s.to_string());
    let mut headers = vec![
        ("authorization", format!("Bearer {AGENT_TOKEN}")),
        ("x-weir-node", "n1".to_owned()),
        ("x-weir-epoch", "e1".to_owned()),
        ("content-type", "application/x-ndjson".to_owned()),
    ];
    if let Some(s) = &seq_text {
        headers.push(("x-weir-seq", s.clone()));
    }
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let body = seq.map(batch).unwrap_or_default();
    let (status, text) = common::system::http(port, "POST", "/api/v1/ingest", &headers, &body);
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// Waits up to `limit` for `check`; how long it took.
fn within(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

fn records_applied(port: u16) -> u64 {
    let auth = format!("Bearer {READ_TOKEN}");
    let (_, text) = common::system::http(
        port,
        "GET",
        "/api/v1/status",
        &[("authorization", &auth)],
        b"",
    );
    let status: serde_json::Value = serde_json::from_str(&text).unwrap();
    status["totals"]["records"].as_u64().unwrap()
}

fn ready(port: u16) -> (u16, String) {
    common::system::http(port, "GET", "/readyz", &[], b"")
}

#[test]
fn a_full_disk_stops_acknowledgements_and_nothing_is_lost_when_space_returns() {
    common::process::require_root();
    let dir = scratch("enospc");
    let data = dir.0.join("data");
    let _tmpfs = Tmpfs::mount(&data, "2m");
    let port = free_port();
    let start = || {
        let child = aggregator_command(
            &dir.0,
            &format!("127.0.0.1:{port}"),
            AGENT_TOKEN,
            READ_TOKEN,
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        let proc = Proc(Some(child));
        wait_for(&format!("http://127.0.0.1:{port}/readyz"));
        proc
    };
    let aggregator = start();

    // Batch 1 applied and acknowledged once a checkpoint holds it.
    assert_eq!(post(port, Some(1)).0, 200);
    within(Duration::from_secs(10), "batch 1 acknowledged", || {
        post(port, None).1["acked"] == 1
    });

    // The disk fills up.
    let filler = data.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 << 10];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    // Batch 2 may still be taken into memory, but it is never acknowledged while nothing can be written ...
    let (status, reply) = post(port, Some(2));
    assert!(status == 200 || status == 503, "{status} {reply}");
    // ... the aggregator says it is not ready within 10 s, and takes no more batches.
    let took = within(Duration::from_secs(10), "unready on a full disk", || {
        ready(port).0 == 503
    });
    let (_, why) = ready(port);
    assert!(why.contains("the store fails"), "{why}");
    let (status, reply) = post(port, Some(3));
    assert_eq!(status, 503, "{reply}");
    for _ in 0..3 {
        let (status, reply) = post(port, None);
        assert!(status == 503 || reply["acked"] == 1, "{status} {reply}");
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("unready {took:?} after the disk filled up");

    // Space returns: ready again, and every batch is applied exactly once.
    std::fs::remove_file(&filler).unwrap();
    within(Duration::from_secs(20), "ready once space returned", || {
        ready(port).0 == 200
    });
    if status_applied(port) < 2 {
        assert_eq!(post(port, Some(2)).0, 200);
    }
    assert_eq!(post(port, Some(3)).0, 200);
    within(Duration::from_secs(10), "batch 3 acknowledged", || {
        post(port, None).1["acked"] == 3
    });
    // Sent again (an agent that missed the acknowledgement): duplicates, applied once.
    assert_eq!(post(port, Some(2)).1["applied"], 3);
    assert_eq!(records_applied(port), 60);
    let text = common::system::http(
        port,
        "GET",
        "/metrics",
        &[("authorization", &format!("Bearer {READ_TOKEN}"))],
        b"",
    )
    .1;
    assert!(text.contains("weir_store_failing 0"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("weir_store_checkpoint_failures_total") && !l.ends_with(" 0")),
        "{text}"
    );

    // And after a restart from the disk: the same, nothing applied twice.
    drop(aggregator);
    let _again = start();
    assert_eq!(records_applied(port), 60);
    assert_eq!(post(port, Some(3)).1["applied"], 3);
}

/// The last batch applied for run n1/e1, from a heartbeat.
fn status_applied(port: u16) -> u64 {
    post(port, None).1["applied"].as_u64().unwrap_or(0)
}

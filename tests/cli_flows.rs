//! `weir flows` as a user runs it: inputs, formats, threads, errors and warnings.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use weir_synth::{PcapOptions, bench_mix, write_pcap};

fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

fn run(args: &[&str]) -> Output {
    weir()
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running weir: {e}"))
}

fn bundled(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("pcaps")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// A scratch directory removed when dropped, even if the test fails.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("weir-cli-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        Scratch(dir)
    }
    fn file(&self, name: &str, bytes: &[u8]) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap_or_else(|e| panic!("{e}"));
        p.to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn standard_input_and_gzip_give_the_same_flows_as_the_file() {
    let file = bundled("pod-traffic.pcap");
    let direct = run(&["flows", "--format", "jsonl", &file]);
    assert!(direct.status.success());
    let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{e}"));
    let mut child = weir()
        .args(["flows", "--format", "jsonl", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&bytes).unwrap_or_else(|e| panic!("{e}"));
    }
    let piped = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    assert!(piped.status.success());
    assert_eq!(direct.stdout, piped.stdout);

    let scratch = Scratch::new("gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&bytes).unwrap_or_else(|e| panic!("{e}"));
    let gz = scratch.file("x.pcap.gz", &gz.finish().unwrap_or_else(|e| panic!("{e}")));
    let from_gz = run(&["flows", "--format", "jsonl", &gz]);
    assert_eq!(direct.stdout, from_gz.stdout);
}

#[test]
fn thread_count_does_not_change_the_output() {
    let scratch = Scratch::new("threads");
    let cap = bench_mix(60_000, 3_000, 9);
    let mut bytes = Vec::new();
    write_pcap(&mut bytes, cap.link, &cap.packets, PcapOptions::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let file = scratch.file("mix.pcap", &bytes);
    let one = run(&["flows", "--format", "jsonl", "--threads", "1", &file]);
    assert!(one.status.success());
    assert_eq!(
        String::from_utf8_lossy(&one.stdout).lines().count(),
        cap.truth.len()
    );
    for threads in ["2", "3"] {
        let many = run(&["flows", "--format", "jsonl", "--threads", threads, &file]);
        assert!(many.status.success());
        assert!(
            one.stdout == many.stdout,
            "--threads {threads} changed the flows"
        );
    }
}

#[test]
fn a_file_that_is_not_a_capture_is_an_error_naming_it_and_the_others_still_print() {
    let scratch = Scratch::new("bad");
    let bad = scratch.file("notes.txt", b"these are not packets\n");
    let good = bundled("pod-traffic.pcap");
    let out = run(&["flows", "--format", "jsonl", &bad, &good]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{bad}: not a pcap or pcapng capture: found text \"these are not packets\""
        )),
        "{stderr}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 27);

    let empty = scratch.file("empty.pcap", b"");
    let out = run(&["flows", &empty]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty file, not a capture"));
    let out = run(&["flows", &scratch.0.to_string_lossy()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a directory"));
    let out = run(&["flows", "/nonexistent/capture.pcap"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/capture.pcap: No such file")
    );
}

#[test]
fn a_killed_capture_warns_about_the_last_record_and_prints_the_rest() {
    let scratch = Scratch::new("cut");
    let mut bytes = std::fs::read(bundled("pod-traffic.pcap")).unwrap_or_else(|e| panic!("{e}"));
    bytes.truncate(bytes.len() - 20);
    let cut = scratch.file("cut.pcap", &bytes);
    let out = run(&["flows", "--format", "jsonl", "--summary", &cut]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning") && stderr.contains("the last record is truncated"),
        "{stderr}"
    );
    assert!(stderr.contains("packets read: 353"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 27);
}

#[test]
fn piped_output_defaults_to_json_lines_and_summary_counts_reasons() {
    let out = run(&["flows", "--summary", &bundled("pod-traffic.pcap")]);
    let first = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(first.starts_with("{\"src\":"), "{first}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("packets read: 354  decoded: 354  skipped: 0"),
        "{stderr}"
    );

    let corpus = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/corpus/tcpdump-tests/arp-too-long-tha.pcap");
    if corpus.exists() {
        let out = run(&["flows", "--summary", &corpus.to_string_lossy()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("skipped  link      arp"), "{stderr}");
    }
    let csv = run(&["flows", "--format", "csv", &bundled("pod-traffic.pcap")]);
    assert!(String::from_utf8_lossy(&csv.stdout).starts_with("src,src_port,dst,dst_port,proto,"));
}

#[test]
fn bad_arguments_are_explained() {
    let out = run(&[
        "flows",
        "--idle-timeout",
        "tcp=5x",
        &bundled("pod-traffic.pcap"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid duration unit"));
    let out = run(&["flows", "--threads", "0", &bundled("pod-traffic.pcap")]);
    assert!(!out.status.success());
}

//! The robustness corpus: tcpdump's 830 test captures, about 200 malformed on purpose, through the reader, the
//! decoder and the CLI. No panic, no hang, every packet accounted for, errors reported cleanly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use weir_capture::{Batch, FileSource};
use weir_flow::{FlowConfig, FlowExtractor};

fn corpus_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/tcpdump-tests");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "the robustness corpus is missing at {}: {e} (it ships in ../shared, beside the repository)",
            dir.display()
        )
    });
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pcap" || x == "pcapng"))
        .collect();
    files.sort();
    files
}

#[derive(Debug)]
struct Outcome {
    packets: u64,
    decoded: u64,
    skipped: u64,
    flow_packets: u64,
    error: Option<String>,
}

fn run_one(path: &Path) -> Outcome {
    let mut source = match FileSource::open(path) {
        Ok(s) => s,
        Err(e) => {
            return Outcome {
                packets: 0,
                decoded: 0,
                skipped: 0,
                flow_packets: 0,
                error: Some(e.to_string()),
            };
        }
    };
    let mut extractor = FlowExtractor::new(FlowConfig::default());
    let mut batch = Batch::default();
    let mut error = None;
    loop {
        match source.next_batch(&mut batch) {
            Ok(true) => {
                for p in batch.iter() {
                    extractor.packet(p.timestamp, p.link, p.data);
                }
            }
            Ok(false) => break,
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    let read = source.stats().packets;
    let (flows, stats) = extractor.finish();
    assert_eq!(read, stats.packets, "{}", path.display());
    Outcome {
        packets: stats.packets,
        decoded: stats.decoded,
        skipped: stats.skipped.total(),
        flow_packets: flows.iter().map(|f| f.to_record().total_packets()).sum(),
        error,
    }
}

#[test]
fn every_corpus_capture_is_read_without_panic_or_hang_and_every_packet_is_accounted() {
    let files = corpus_files();
    assert!(
        files.len() >= 800,
        "expected the whole corpus, found {} files",
        files.len()
    );
    let mut totals = (0u64, 0u64, 0u64);
    let mut errors = Vec::new();
    for path in &files {
        // Each file runs on its own thread so that a hang is reported by name instead of stalling the suite.
        let (tx, rx) = mpsc::channel();
        let p = path.clone();
        let worker = std::thread::spawn(move || {
            let _ = tx.send(run_one(&p));
        });
        let outcome = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(o) => o,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("{} hangs", path.display()),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let why = worker.join().err().map(|e| format!("{e:?}"));
                panic!("{} panicked: {why:?}", path.display())
            }
        };
        let _ = worker.join();
        assert_eq!(
            outcome.packets,
            outcome.decoded + outcome.skipped,
            "{}: every packet is either in a flow or skipped with a reason",
            path.display()
        );
        assert_eq!(outcome.flow_packets, outcome.decoded, "{}", path.display());
        if let Some(e) = outcome.error {
            let name = path.display().to_string();
            assert!(e.starts_with(&name), "error must name the file: {e}");
            errors.push(e);
        }
        totals.0 += outcome.packets;
        totals.1 += outcome.decoded;
        totals.2 += outcome.skipped;
    }
    println!(
        "{} captures: {} packets, {} in flows, {} skipped with a reason, {} stopped early: {errors:#?}",
        files.len(),
        totals.0,
        totals.1,
        totals.2,
        errors.len()
    );
    assert!(totals.1 > 5000, "most IP traffic in the corpus decodes");
}

#[test]
fn the_cli_reads_the_whole_corpus_in_one_run() {
    let files = corpus_files();
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("flows")
        .arg("--format=jsonl")
        .arg("--summary")
        .args(&files)
        .output()
        .unwrap_or_else(|e| panic!("running weir: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("captures: 8"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout.lines() {
        let record: weir_model::FlowRecord =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(record.total_packets() > 0);
    }
}

/// Corrupt containers: cut every corpus capture at several points and flip bytes in its headers. The reader must
/// report a clean error or warning and never panic.
#[test]
fn damaged_copies_of_corpus_captures_fail_cleanly() {
    let files = corpus_files();
    for path in files.iter().step_by(7) {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{e}"));
        let mut variants: Vec<Vec<u8>> = Vec::new();
        for cut in [
            1,
            3,
            10,
            23,
            24,
            25,
            40,
            bytes.len() / 2,
            bytes.len().saturating_sub(1),
        ] {
            variants.push(bytes[..cut.min(bytes.len())].to_vec());
        }
        for at in [8, 12, 20, 28, 32, 36, 44] {
            let mut v = bytes.clone();
            if let Some(b) = v.get_mut(at) {
                *b ^= 0xff;
                variants.push(v);
            }
        }
        for v in variants {
            let Ok(mut src) = FileSource::new("damaged".into(), std::io::Cursor::new(v), None)
            else {
                continue;
            };
            let mut x = FlowExtractor::new(FlowConfig::default());
            let mut batch = Batch::with_capacity(1024);
            while let Ok(true) = src.next_batch(&mut batch) {
                for p in batch.iter() {
                    x.packet(p.timestamp, p.link, p.data);
                }
            }
            let _ = x.finish();
        }
    }
}

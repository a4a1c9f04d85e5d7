//! `--threads` changes how fast, never what: `weir flows` and `weir analyze` give byte-identical output, order
//! included, for every thread count, on the demo (Services, DNAT joins, cluster-wide policies) and on random
//! captures among the benchmark's 2,000 pods.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::root;
use proptest::prelude::*;
use weir_synth::{PcapOptions, bench_mix, bench_pod_address, synthetic_cluster_with, write_pcap};

fn weir(args: &[&str]) -> Vec<u8> {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "weir {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(tag: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("weir-threads-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

fn same_for_every_thread_count(args: &[&str], counts: &[&str]) {
    let mut one = args.to_vec();
    one.extend(["--threads", "1"]);
    let expected = weir(&one);
    assert!(!expected.is_empty());
    for threads in counts {
        let mut many = args.to_vec();
        many.extend(["--threads", threads]);
        let got = weir(&many);
        assert!(
            got == expected,
            "--threads {threads} changed the output of weir {args:?}"
        );
    }
}

#[test]
fn the_demo_is_analyzed_alike_on_any_number_of_threads() {
    let capture = root().join("pcaps/demo.pcap");
    let cluster = root().join("pcaps/demo.cluster.yaml");
    let tiers = root().join("pcaps/demo.tiers.yaml");
    let (capture, cluster, tiers) = (
        capture.to_str().unwrap(),
        cluster.to_str().unwrap(),
        tiers.to_str().unwrap(),
    );
    same_for_every_thread_count(&["flows", "--format", "jsonl", capture], &["2", "3", "4"]);
    for format in ["text", "json", "edges", "markdown"] {
        same_for_every_thread_count(
            &[
                "analyze",
                capture,
                "--cluster",
                cluster,
                "--cluster",
                tiers,
                "--format",
                format,
                "--color",
                "never",
            ],
            &["2", "3", "4", "7"],
        );
    }
}

fn bench_cluster(dir: &Path) -> PathBuf {
    let path = dir.join("cluster.json");
    if !path.exists() {
        let cluster =
            synthetic_cluster_with(20, 10, 10, 200, true, |i| bench_pod_address(i as u64));
        std::fs::write(&path, cluster.json).unwrap();
    }
    path
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]

    /// Random captures among the benchmark's pods (its snapshot has a Service on every Deployment, so every TCP
    /// flow may be a post-DNAT view), any thread count, any report.
    #[test]
    fn random_captures_are_analyzed_alike_on_any_number_of_threads(
        seed in 0u64..1_000_000,
        flows in 50u64..600,
        threads in 2u16..6,
        format in prop::sample::select(vec!["text", "json", "edges"]),
    ) {
        let dir = scratch(&format!("{seed}"));
        let cap = bench_mix(flows * 8, flows, seed);
        let mut bytes = Vec::new();
        write_pcap(&mut bytes, cap.link, &cap.packets, PcapOptions::default()).unwrap();
        let capture = dir.0.join("mix.pcap");
        std::fs::write(&capture, bytes).unwrap();
        let cluster = bench_cluster(&dir.0);
        let (capture, cluster) = (capture.to_str().unwrap(), cluster.to_str().unwrap());
        let threads = threads.to_string();
        same_for_every_thread_count(&["flows", "--format", "jsonl", capture], &[&threads]);
        same_for_every_thread_count(
            &["analyze", capture, "--cluster", cluster, "--format", format, "--color", "never"],
            &[&threads],
        );
    }
}

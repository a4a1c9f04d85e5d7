//! Helpers shared by the CLI tests: running the built `weir` and comparing with golden files.

#![allow(dead_code)]

pub mod browser;
pub mod netns;
pub mod process;
pub mod system;

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `weir` with arguments and returns its standard output; fails the test if it exits with an error.
pub fn weir(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running weir: {e}"));
    assert!(
        out.status.success(),
        "weir {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("{e}"))
}

pub fn check_golden(expected: &Path, actual: &str) {
    if std::env::var_os("WEIR_BLESS").is_some() {
        if let Some(dir) = expected.parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::write(expected, actual).unwrap_or_else(|e| panic!("{e}"));
        return;
    }
    let want = std::fs::read_to_string(expected).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with WEIR_BLESS=1 to create it)",
            expected.display()
        )
    });
    if want != actual {
        let first = want
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(want.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs at line {}:\n  expected: {}\n  actual:   {}\n(run with WEIR_BLESS=1 to accept)",
            expected.display(),
            first + 1,
            want.lines().nth(first).unwrap_or("<end>"),
            actual.lines().nth(first).unwrap_or("<end>")
        );
    }
}

/// The bundled captures in `pcaps/` (not their snapshots, scripts or golden files).
pub fn bundled_captures() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("pcaps"))
        .unwrap_or_else(|e| panic!("pcaps/: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.to_string_lossy();
            name.ends_with(".pcap") || name.ends_with(".pcapng") || name.ends_with(".pcap.gz")
        })
        .collect();
    files.sort();
    assert!(files.len() >= 4, "bundled captures missing: {files:?}");
    files
}

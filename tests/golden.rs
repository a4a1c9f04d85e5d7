//! Golden outputs of `weir flows` for every capture in `pcaps/`, and the generator's determinism.
//!
//! Run with `WEIR_BLESS=1` to rewrite the expected files after an intended change, then review the diff.

mod common;

use std::path::PathBuf;

use common::{bundled_captures, check_golden, root, weir};

#[test]
fn flows_of_every_bundled_capture_match_the_golden_files() {
    for capture in bundled_captures() {
        let name = capture
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = capture.to_string_lossy().into_owned();
        let jsonl = weir(&["flows", "--format", "jsonl", &path]);
        check_golden(
            &root()
                .join("pcaps/expected")
                .join(format!("{name}.flows.jsonl")),
            &jsonl,
        );
        let csv = weir(&["flows", "--format", "csv", &path]);
        check_golden(
            &root()
                .join("pcaps/expected")
                .join(format!("{name}.flows.csv")),
            &csv,
        );
        let table = weir(&["flows", "--format", "table", &path]);
        check_golden(
            &root()
                .join("pcaps/expected")
                .join(format!("{name}.flows.txt")),
            &table,
        );
    }
}

#[test]
fn the_generated_captures_are_reproduced_byte_for_byte() {
    let dir = std::env::temp_dir().join(format!("weir-synth-{}", std::process::id()));
    weir_synth::write_bundled_pcaps(&dir).unwrap_or_else(|e| panic!("{e}"));
    let mut generated: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    generated.sort();
    assert!(generated.len() >= 3);
    for file in &generated {
        let name = file.file_name().unwrap_or_default();
        let fresh = std::fs::read(file).unwrap_or_else(|e| panic!("{e}"));
        let committed = std::fs::read(root().join("pcaps").join(name))
            .unwrap_or_else(|e| panic!("pcaps/{}: {e}", name.to_string_lossy()));
        assert!(
            fresh == committed,
            "pcaps/{} is not what the generator writes",
            name.to_string_lossy()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

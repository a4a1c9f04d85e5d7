//! A cluster snapshot file (YAML or JSON, one document or many, a List or not) through the loader and the
//! policy compiler.
#![no_main]

use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use weir_cluster::SnapshotLoader;
use weir_policy::PolicySet;

fuzz_target!(|data: &[u8]| {
    let mut loader = SnapshotLoader::default();
    let name = if data.first() == Some(&b'{') { "s.json" } else { "s.yaml" };
    if loader.add_bytes(Path::new(name), data).is_err() {
        return;
    }
    let (state, _report) = loader.finish();
    let _ = PolicySet::new(Arc::new(state));
});

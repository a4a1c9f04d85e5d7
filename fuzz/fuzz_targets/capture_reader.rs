//! Arbitrary bytes as a capture file: the reader either rejects them with an error or yields packets, and the
//! whole pipeline accounts for every packet, without panic and with bounded memory.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use weir_capture::{Batch, FileSource};
use weir_flow::{FlowConfig, FlowExtractor};

fuzz_target!(|data: &[u8]| {
    let Ok(mut src) = FileSource::new("fuzz".into(), Cursor::new(data.to_vec()), None) else {
        return;
    };
    let mut batch = Batch::with_capacity(256);
    let mut x = FlowExtractor::new(FlowConfig::default());
    let mut read = 0u64;
    while let Ok(true) = src.next_batch(&mut batch) {
        for p in batch.iter() {
            read += 1;
            x.packet(p.timestamp, p.link, p.data);
        }
    }
    let _ = src.warnings();
    let (_, stats) = x.finish();
    assert_eq!(read, stats.packets);
});

//! An agent's binary batch body: decoded without panic; what decodes is encoded again to the same records.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_model::wire::{MAGIC, decode};

fuzz_target!(|data: &[u8]| {
    // Half the inputs start with the magic, so the fuzzer reaches the records.
    let mut body = Vec::with_capacity(data.len() + MAGIC.len());
    if data.first().is_some_and(|b| b & 1 == 0) {
        body.extend_from_slice(MAGIC);
        body.extend_from_slice(&data[1..]);
    } else {
        body.extend_from_slice(data);
    }
    let Ok((records, _skipped)) = decode(&body) else {
        return;
    };
    let mut again = MAGIC.to_vec();
    for r in &records {
        r.write_binary(&mut again);
    }
    let (decoded, skipped) = decode(&again).expect("re-encoded records decode");
    assert_eq!(skipped, 0);
    assert_eq!(decoded, records);
});

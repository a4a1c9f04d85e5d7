//! Times and durations as users and the API's query strings give them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_model::{Timestamp, parse_duration};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = Timestamp::parse(text) {
        // Shown and read again: the same instant.
        let shown = t.to_string();
        assert_eq!(Timestamp::parse(&shown).ok(), Some(t), "{text:?} shown as {shown:?}");
    }
    let _ = parse_duration(text);
});

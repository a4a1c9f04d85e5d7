//! The headers an agent sends with a batch: its counters and its node's interface addresses. Whatever parses
//! is written back to a header that parses to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_model::ingest::{AgentCounters, InterfaceAddress};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = AgentCounters::parse_header(text) {
        let again = AgentCounters::parse_header(&c.to_header()).expect("written counters parse");
        assert_eq!(again, c);
    }
    if let Ok(a) = InterfaceAddress::parse_header(text) {
        let again =
            InterfaceAddress::parse_header(&InterfaceAddress::to_header(&a)).expect("written addresses parse");
        assert_eq!(again, a);
    }
});

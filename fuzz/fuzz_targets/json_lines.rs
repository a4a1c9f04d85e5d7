//! An agent's JSON-lines batch body, through what the aggregator does before judging: parsed line by line,
//! times held to the clock, agent-chosen strings bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_aggregator::ingest::{
    FUTURE_SKEW, MAX_COMMUNITY_ID, MAX_INTERFACE, clamp_times, parse_json_lines, sanitize_strings,
};
use weir_model::Timestamp;

fuzz_target!(|data: &[u8]| {
    let (mut records, malformed) = parse_json_lines(data);
    let lines = data
        .split(|&b| b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .count() as u64;
    assert!(records.len() as u64 + malformed <= lines.max(1));
    let now = Timestamp(1_800_000_000_000_000_000);
    clamp_times(&mut records, now);
    sanitize_strings(&mut records, "node-a");
    let bound = now.0 + weir_model::duration_nanos(FUTURE_SKEW);
    for r in &records {
        assert!(0 <= r.start.0 && r.start <= r.end && r.end.0 <= bound);
        assert!(r.community_id.len() <= MAX_COMMUNITY_ID);
        if let Some(o) = &r.observed_at {
            assert_eq!(o.node, "node-a");
            assert!(o.interface.len() <= MAX_INTERFACE);
        }
    }
});

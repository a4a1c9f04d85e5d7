//! Cross-check against an independent reader: tshark's TCP and UDP conversation tables (`tshark -q -z conv,tcp`)
//! on every bundled capture.
//!
//! tshark counts frame bytes where weir counts IP bytes, so within one capture `tshark − weir` must be the same
//! link-header size for every conversation; tshark prints large byte counts rounded to kB/MB, which are checked
//! to their precision. Frames are compared exactly in both directions.

use std::collections::BTreeMap;
use std::process::Command;

use weir_model::FlowRecord;

mod common;

#[derive(Debug, Default, Clone, Copy)]
struct Side {
    frames: u64,
    bytes: u64,
    /// The unit tshark printed: 1 for exact bytes, 1000 for kB, ...
    unit: u64,
}

type Endpoints = (String, String);

fn parse_bytes(value: &str, unit: &str) -> Option<(u64, u64)> {
    let v: u64 = value.replace(',', "").parse().ok()?;
    let scale = match unit {
        "bytes" => 1,
        "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    Some((v * scale, scale))
}

/// Conversations keyed by (A, B) as tshark prints them, with A→B and B→A.
fn tshark_conversations(capture: &str, proto: &str) -> BTreeMap<Endpoints, (Side, Side)> {
    let out = Command::new("tshark")
        .args(["-n", "-q", "-z", &format!("conv,{proto}"), "-r", capture])
        .output()
        .unwrap_or_else(|e| panic!("running tshark: {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut convs = BTreeMap::new();
    for line in text.lines() {
        let t: Vec<&str> = line.split_whitespace().collect();
        if t.len() < 11 || t[1] != "<->" {
            continue;
        }
        // A <-> B | frames bytes unit (B→A) | frames bytes unit (A→B) | ...
        let (Some((b_to_a, ua)), Some((a_to_b, ub))) =
            (parse_bytes(t[4], t[5]), parse_bytes(t[7], t[8]))
        else {
            panic!("unparsed tshark line: {line}");
        };
        let frames = |s: &str| {
            s.replace(',', "")
                .parse::<u64>()
                .unwrap_or_else(|e| panic!("{e}: {line}"))
        };
        convs.insert(
            (t[0].to_owned(), t[2].to_owned()),
            (
                Side {
                    frames: frames(t[6]),
                    bytes: a_to_b,
                    unit: ub,
                },
                Side {
                    frames: frames(t[3]),
                    bytes: b_to_a,
                    unit: ua,
                },
            ),
        );
    }
    convs
}

fn endpoint(addr: std::net::IpAddr, port: Option<u16>) -> String {
    format!("{addr}:{}", port.unwrap_or(0))
}

fn weir_flows(capture: &str) -> Vec<FlowRecord> {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["flows", "--format", "jsonl", capture])
        .output()
        .unwrap_or_else(|e| panic!("running weir: {e}"));
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
#[ignore = "needs tshark, the independent reader it compares with (the README's test command runs it)"]
fn tcp_and_udp_conversations_agree_with_tshark() {
    common::process::require_tool("tshark", "tshark");
    let captures = common::bundled_captures();
    let mut compared = 0;
    for capture in &captures {
        let path = capture.to_string_lossy().into_owned();
        let flows = weir_flows(&path);
        let mut overhead: Option<u64> = None;
        for (proto, name) in [
            (weir_model::Protocol::TCP, "tcp"),
            (weir_model::Protocol::UDP, "udp"),
        ] {
            // Merge weir's records per tuple (tshark keeps one row per address/port pair).
            let mut ours: BTreeMap<Endpoints, [u64; 4]> = BTreeMap::new();
            for f in flows.iter().filter(|f| f.proto == proto) {
                let key = (endpoint(f.src, f.src_port), endpoint(f.dst, f.dst_port));
                let e = ours.entry(key).or_default();
                e[0] += f.packets;
                e[1] += f.bytes;
                e[2] += f.reply_packets;
                e[3] += f.reply_bytes;
            }
            let theirs = tshark_conversations(&path, name);
            // tshark reassembles IP fragments and shows the datagram once, at its last fragment.
            let fragmented_port = ":8472";
            let theirs: BTreeMap<_, _> = theirs
                .into_iter()
                .filter(|(k, _)| !k.0.ends_with(fragmented_port) && !k.1.ends_with(fragmented_port))
                .collect();
            let ours_len = ours
                .keys()
                .filter(|k| !k.0.ends_with(fragmented_port) && !k.1.ends_with(fragmented_port))
                .count();
            assert_eq!(ours_len, theirs.len(), "{path} {name}: conversation count");
            for ((a, b), (ab, ba)) in theirs {
                let (fwd, rev, counts) = if let Some(c) = ours.get(&(a.clone(), b.clone())) {
                    (ab, ba, *c)
                } else if let Some(c) = ours.get(&(b.clone(), a.clone())) {
                    (ba, ab, *c)
                } else {
                    panic!("{path}: tshark has {a} <-> {b}, weir has no such flow");
                };
                assert_eq!(
                    (fwd.frames, rev.frames),
                    (counts[0], counts[2]),
                    "{path} {a} <-> {b}: frames"
                );
                for (side, frames, ip_bytes) in
                    [(fwd, counts[0], counts[1]), (rev, counts[2], counts[3])]
                {
                    if frames == 0 {
                        continue;
                    }
                    if side.unit == 1 {
                        let diff = side.bytes - ip_bytes;
                        assert_eq!(
                            diff % frames,
                            0,
                            "{path} {a} <-> {b}: {side:?} vs {ip_bytes}"
                        );
                        let per_frame = diff / frames;
                        assert!(
                            [14, 16, 20, 22].contains(&per_frame),
                            "{path}: {per_frame} bytes of link header per frame?"
                        );
                        assert_eq!(
                            *overhead.get_or_insert(per_frame),
                            per_frame,
                            "{path}: link header size varies"
                        );
                    } else {
                        let frame_bytes = ip_bytes + frames * overhead.unwrap_or(14);
                        assert!(
                            frame_bytes.abs_diff(side.bytes) < side.unit,
                            "{path} {a} <-> {b}: {frame_bytes} vs {side:?}"
                        );
                    }
                }
                compared += 1;
            }
        }
    }
    assert!(compared >= 60, "compared only {compared} conversations");
}

//! Property tests of flow accounting over random packet sequences.

use std::collections::BTreeMap;
use std::net::IpAddr;

use proptest::prelude::*;
use weir_flow::{DecodedPacket, FlowConfig, FlowExtractor, FlowHasher};
use weir_model::{FlowRecord, Protocol, Timestamp};

#[derive(Clone, Debug)]
struct Pkt {
    src: u8,
    dst: u8,
    sport: u16,
    dport: u16,
    kind: u8,
    flags: u8,
    len: u16,
    gap_ms: u32,
}

fn pkt() -> impl Strategy<Value = Pkt> {
    (
        0u8..4,
        0u8..4,
        prop::sample::select(vec![80u16, 443, 40000, 53]),
        prop::sample::select(vec![80u16, 443, 40000, 53]),
        0u8..4,
        prop::sample::select(vec![0x02u8, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14]),
        40u16..1500,
        prop::sample::select(vec![0u32, 1, 10, 1_000, 20_000, 70_000, 400_000]),
    )
        .prop_map(|(src, dst, sport, dport, kind, flags, len, gap_ms)| Pkt {
            src,
            dst,
            sport,
            dport,
            kind,
            flags,
            len,
            gap_ms,
        })
}

fn decoded(p: &Pkt) -> DecodedPacket {
    let addr = |n: u8| {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[10, 0, 0, n]);
        a
    };
    let (proto, l4_type) = match p.kind {
        0 | 1 => (Protocol::TCP, 0),
        2 => (Protocol::UDP, 0),
        _ => (Protocol::ICMP, if p.flags & 0x10 != 0 { 0 } else { 8 }),
    };
    DecodedPacket {
        src: addr(p.src),
        dst: addr(p.dst),
        v6: false,
        proto,
        src_port: if proto.has_ports() { p.sport } else { 0 },
        dst_port: if proto.has_ports() { p.dport } else { 0 },
        tcp_flags: if proto == Protocol::TCP { p.flags } else { 0 },
        l4_type,
        icmp_code: 0,
        icmp_id: if proto == Protocol::ICMP { p.sport } else { 0 },
        has_l4: true,
        ip_len: u32::from(p.len),
        fragment: None,
    }
}

fn run(packets: &[Pkt], workers: usize, max_flows: usize) -> Vec<FlowRecord> {
    let hasher = FlowHasher::default();
    let config = FlowConfig {
        max_flows,
        ..FlowConfig::default()
    };
    let mut xs: Vec<FlowExtractor> = (0..workers)
        .map(|w| FlowExtractor::partitioned(config.clone(), hasher.clone(), w, workers))
        .collect();
    let mut ts = 1_700_000_000_000_000_000i64;
    for p in packets {
        ts += i64::from(p.gap_ms) * 1_000_000;
        let d = decoded(p);
        for x in &mut xs {
            x.decoded(Timestamp(ts), &d);
        }
    }
    let mut records: Vec<FlowRecord> = xs
        .into_iter()
        .flat_map(|x| x.finish().0)
        .map(|f| f.to_record())
        .collect();
    records.sort_by_key(|r| r.sort_key());
    records
}

type Directed = (IpAddr, Option<u16>, IpAddr, Option<u16>, Protocol);

/// Packets and bytes per directed tuple, from the records (forward and reply sides separately).
fn per_direction(records: &[FlowRecord]) -> BTreeMap<Directed, (u64, u64)> {
    let mut m: BTreeMap<Directed, (u64, u64)> = BTreeMap::new();
    for r in records {
        // ICMP: the identifier plays the part of the ports.
        let (sp, dp) = if r.proto == Protocol::ICMP {
            (r.icmp_id, r.icmp_id)
        } else {
            (r.src_port, r.dst_port)
        };
        let f = m.entry((r.src, sp, r.dst, dp, r.proto)).or_default();
        f.0 += r.packets;
        f.1 += r.bytes;
        let b = m.entry((r.dst, dp, r.src, sp, r.proto)).or_default();
        b.0 += r.reply_packets;
        b.1 += r.reply_bytes;
    }
    m.retain(|_, v| v.0 > 0);
    m
}

fn truth(packets: &[Pkt]) -> BTreeMap<Directed, (u64, u64)> {
    let mut m: BTreeMap<Directed, (u64, u64)> = BTreeMap::new();
    for p in packets {
        let d = decoded(p);
        let ip = |a: [u8; 16]| IpAddr::from([a[0], a[1], a[2], a[3]]);
        let (sp, dp) = match d.proto {
            Protocol::ICMP => (Some(d.icmp_id), Some(d.icmp_id)),
            _ => (Some(d.src_port), Some(d.dst_port)),
        };
        let e = m
            .entry((ip(d.src), sp, ip(d.dst), dp, d.proto))
            .or_default();
        e.0 += 1;
        e.1 += u64::from(d.ip_len);
    }
    m
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn every_packet_and_byte_lands_in_its_direction(packets in prop::collection::vec(pkt(), 1..300)) {
        let records = run(&packets, 1, 1 << 20);
        prop_assert_eq!(per_direction(&records), truth(&packets));
        for r in &records {
            prop_assert!(r.start <= r.end);
            prop_assert!(r.total_packets() > 0);
        }
    }

    #[test]
    fn splitting_between_workers_changes_nothing(packets in prop::collection::vec(pkt(), 1..300)) {
        let one = run(&packets, 1, 1 << 20);
        let three = run(&packets, 3, 1 << 20);
        prop_assert_eq!(one, three);
    }

    #[test]
    fn a_tiny_table_evicts_but_loses_nothing(packets in prop::collection::vec(pkt(), 1..300)) {
        let records = run(&packets, 1, 3);
        prop_assert_eq!(per_direction(&records), truth(&packets));
    }
}

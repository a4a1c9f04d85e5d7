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

/// The packet as an Ethernet frame, as a capture holds it.
fn frame(p: &Pkt) -> Vec<u8> {
    let d = decoded(p);
    let mut l4 = Vec::new();
    let proto = match d.proto {
        Protocol::TCP => {
            l4.extend_from_slice(&d.src_port.to_be_bytes());
            l4.extend_from_slice(&d.dst_port.to_be_bytes());
            l4.extend_from_slice(&[
                0,
                0,
                0,
                1,
                0,
                0,
                0,
                0,
                0x50,
                d.tcp_flags,
                0xff,
                0xff,
                0,
                0,
                0,
                0,
            ]);
            6
        }
        Protocol::UDP => {
            l4.extend_from_slice(&d.src_port.to_be_bytes());
            l4.extend_from_slice(&d.dst_port.to_be_bytes());
            l4.extend_from_slice(&[0, 8, 0, 0]);
            17
        }
        _ => {
            l4.extend_from_slice(&[d.l4_type, 0, 0, 0]);
            l4.extend_from_slice(&d.icmp_id.to_be_bytes());
            l4.extend_from_slice(&[0, 1]);
            1
        }
    };
    let total = u16::try_from(20 + l4.len()).unwrap_or(u16::MAX).max(p.len);
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0]);
    f[16..18].copy_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&d.src[..4]);
    f.extend_from_slice(&d.dst[..4]);
    f.extend_from_slice(&l4);
    f
}

/// A reader routing each frame to one of `workers` workers ([`weir_flow::route`]), in batches of the given
/// sizes (taken in turn), each worker told the latest time after each batch: as `weir flows --threads` reads.
fn run_routed(packets: &[Pkt], workers: usize, batches: &[usize]) -> (Vec<FlowRecord>, u64) {
    let hasher = FlowHasher::default();
    let link = weir_model::LinkType::ETHERNET;
    let mut xs: Vec<FlowExtractor> = (0..workers)
        .map(|_| FlowExtractor::routed(FlowConfig::default(), hasher.clone()))
        .collect();
    let frames: Vec<(Timestamp, Vec<u8>)> = {
        let mut ts = 1_700_000_000_000_000_000i64;
        packets
            .iter()
            .map(|p| {
                ts += i64::from(p.gap_ms) * 1_000_000;
                (Timestamp(ts), frame(p))
            })
            .collect()
    };
    let mut at = 0;
    let mut sizes = batches.iter().cycle();
    while at < frames.len() {
        let n = sizes.next().copied().unwrap_or(1).max(1);
        let batch = &frames[at..(at + n).min(frames.len())];
        let mut clock = Timestamp(i64::MIN);
        for (ts, data) in batch {
            clock = clock.max(*ts);
            let w = weir_flow::route(&hasher, link, data, workers);
            xs[w].packet(*ts, link, data);
        }
        for x in &mut xs {
            x.advance(clock);
        }
        at += n;
    }
    let mut packets_counted = 0;
    let mut records = Vec::new();
    for x in xs {
        let (flows, stats) = x.finish();
        packets_counted += stats.packets;
        records.extend(flows.iter().map(|f| f.to_record()));
    }
    records.sort_by_key(|r| r.sort_key());
    (records, packets_counted)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Frames routed by a reader to workers that see only their own give the flows one extractor gives, for
    /// any number of workers and any batch boundaries, and every frame is counted once.
    #[test]
    fn routing_frames_to_workers_changes_nothing(
        packets in prop::collection::vec(pkt(), 1..300),
        workers in 1usize..7,
        batches in prop::collection::vec(1usize..64, 1..5),
    ) {
        let (one, n) = run_routed(&packets, 1, &[usize::MAX]);
        prop_assert_eq!(n, packets.len() as u64);
        prop_assert_eq!(per_direction(&one), truth(&packets));
        let (many, n) = run_routed(&packets, workers, &batches);
        prop_assert_eq!(n, packets.len() as u64);
        prop_assert_eq!(one, many);
    }
}

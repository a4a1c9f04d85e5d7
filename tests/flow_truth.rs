//! Exact flows from generated captures: every link type and container format against the generator's ground truth.

use std::io::Cursor;
use std::net::{IpAddr, SocketAddr};

use weir_capture::{Batch, FileSource};
use weir_flow::{FlowConfig, FlowExtractor, FlowHasher};
use weir_model::{EndReason, FlowRecord, Orientation, Timestamp};
use weir_synth::{
    Capture, Close, ExpectedFlow, Link, PcapNgOptions, PcapOptions, Synth, TcpSpec, write_pcap,
    write_pcapng,
};

fn sock(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

const T0: i64 = 1_795_342_800_000_000_000;

fn at(ms: i64) -> Timestamp {
    Timestamp(T0 + ms * 1_000_000)
}

/// Pod traffic with every feature the flow table must get right.
fn scenario(link: Link) -> Capture {
    let mut s = Synth::new(link, 7);
    s.tcp(TcpSpec::new(
        sock("10.244.1.5:43512"),
        sock("10.244.2.9:8080"),
        at(0),
        3,
    ));
    s.tcp(TcpSpec {
        close: Close::Rst,
        ..TcpSpec::new(sock("10.244.1.5:43514"), sock("10.244.3.2:5432"), at(1), 2)
    });
    s.tcp(TcpSpec {
        close: Close::Open,
        ..TcpSpec::new(sock("10.244.1.7:50000"), sock("10.96.0.1:443"), at(2), 1)
    });
    // Running before the capture started: the first packet is the server's.
    s.tcp(TcpSpec {
        handshake: false,
        close: Close::Open,
        ..TcpSpec::new(sock("10.244.4.4:39000"), sock("10.244.5.5:6379"), at(3), 4)
    });
    // The same ports twice: two connections, two flows.
    s.tcp(TcpSpec::new(
        sock("10.244.1.9:40000"),
        sock("10.244.2.9:80"),
        at(10),
        1,
    ));
    s.tcp(TcpSpec::new(
        sock("10.244.1.9:40000"),
        sock("10.244.2.9:80"),
        at(50),
        2,
    ));
    s.udp(
        sock("10.244.1.5:53001"),
        sock("10.96.0.10:53"),
        at(4),
        2,
        (40, 120),
        1_000_000,
    );
    s.icmp_echo(
        ip("10.244.1.5"),
        ip("10.244.2.9"),
        0x1234,
        3,
        at(5),
        1_000_000,
    );
    s.icmp_echo(ip("fd00::5"), ip("fd00::9"), 77, 2, at(6), 1_000_000);
    s.tcp(TcpSpec::new(
        sock("[fd00::5]:41000"),
        sock("[fd00::9]:9090"),
        at(7),
        2,
    ));
    s.udp_fragmented(
        sock("10.244.1.5:40001"),
        sock("10.244.2.9:4789"),
        at(8),
        3000,
        1400,
    );
    s.other_protocol(ip("10.244.1.5"), ip("10.244.9.9"), 47, 3, at(9), 1000);
    s.finish()
}

fn extract(bytes: Vec<u8>, workers: usize) -> Vec<FlowRecord> {
    let mut src = FileSource::new("synthetic".into(), Cursor::new(bytes), None)
        .unwrap_or_else(|e| panic!("{e}"));
    let hasher = FlowHasher::default();
    let mut extractors: Vec<FlowExtractor> = (0..workers)
        .map(|w| FlowExtractor::partitioned(FlowConfig::default(), hasher.clone(), w, workers))
        .collect();
    let mut batch = Batch::with_capacity(4096);
    while src.next_batch(&mut batch).unwrap_or_else(|e| panic!("{e}")) {
        for p in batch.iter() {
            for x in &mut extractors {
                x.packet(p.timestamp, p.link, p.data);
            }
        }
    }
    assert!(src.warnings().is_empty(), "{:?}", src.warnings());
    let mut total_decoded = 0;
    let mut records = Vec::new();
    for x in extractors {
        let (flows, stats) = x.finish();
        total_decoded += stats.decoded;
        if stats.packets > 0 {
            assert_eq!(stats.skipped.total(), 0, "{stats:?}");
        }
        records.extend(flows.iter().map(|f| f.to_record()));
    }
    let packets: u64 = records.iter().map(FlowRecord::total_packets).sum();
    assert_eq!(packets, total_decoded);
    records.sort_by_key(|r| r.sort_key());
    records
}

fn assert_matches(records: &[FlowRecord], truth: &[ExpectedFlow], what: &str) {
    assert_eq!(
        records.len(),
        truth.len(),
        "{what}: flow count\n{records:#?}"
    );
    for t in truth {
        let found = records.iter().find(|r| {
            r.src == t.src
                && r.dst == t.dst
                && r.src_port == t.src_port
                && r.dst_port == t.dst_port
                && r.proto == t.proto
                && r.start == t.start
        });
        let Some(r) = found else {
            panic!("{what}: no flow for {t:?}\nhave {records:#?}");
        };
        let got = (
            r.packets,
            r.bytes,
            r.reply_packets,
            r.reply_bytes,
            r.end,
            r.tcp_flags,
            r.reply_tcp_flags,
            r.orientation,
            r.icmp_id,
        );
        let want = (
            t.packets,
            t.bytes,
            t.reply_packets,
            t.reply_bytes,
            t.end,
            t.tcp_flags,
            t.reply_tcp_flags,
            t.orientation,
            t.icmp_id,
        );
        assert_eq!(got, want, "{what}: {t:?}");
        assert_eq!(r.community_id, r.compute_community_id());
    }
}

#[test]
fn every_link_type_and_format_gives_the_exact_flows() {
    let links = [
        Link::Ethernet,
        Link::Vlan(100),
        Link::QinQ(200, 300),
        Link::LinuxSll,
        Link::LinuxSll2,
        Link::RawIp,
    ];
    for link in links {
        let cap = scenario(link);
        let mut outputs: Vec<(String, Vec<u8>)> = Vec::new();
        for (nanos, big_endian) in [(false, false), (true, true)] {
            let mut buf = Vec::new();
            let opts = PcapOptions {
                nanos,
                big_endian,
                snaplen: 0,
            };
            write_pcap(&mut buf, cap.link, &cap.packets, opts).unwrap_or_else(|e| panic!("{e}"));
            outputs.push((format!("pcap nanos={nanos} be={big_endian}"), buf));
        }
        for (tsresol, interfaces, section_every, big_endian) in
            [(6, 1, 0, false), (9, 3, 7, true), (3 + 6, 2, 0, false)]
        {
            let mut buf = Vec::new();
            let opts = PcapNgOptions {
                tsresol,
                interfaces,
                section_every,
                big_endian,
            };
            write_pcapng(&mut buf, cap.link, &cap.packets, opts).unwrap_or_else(|e| panic!("{e}"));
            outputs.push((
                format!("pcapng resol={tsresol} ifaces={interfaces} sections={section_every}"),
                buf,
            ));
        }
        for (what, bytes) in outputs {
            let what = format!("{link:?} {what}");
            assert_matches(&extract(bytes.clone(), 1), &cap.truth, &what);
            assert_matches(&extract(bytes, 3), &cap.truth, &format!("{what} 3 workers"));
        }
    }
}

#[test]
fn orientation_end_reasons_and_reuse_are_reported() {
    let cap = scenario(Link::Ethernet);
    let mut buf = Vec::new();
    write_pcap(&mut buf, cap.link, &cap.packets, PcapOptions::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let records = extract(buf, 1);
    let reason = |port: u16, start: Timestamp| {
        records
            .iter()
            .find(|r| r.dst_port == Some(port) && r.start == start)
            .map(|r| (r.end_reason, r.orientation))
    };
    assert_eq!(
        reason(8080, at(0)),
        Some((EndReason::TcpClosed, Orientation::Observed))
    );
    assert_eq!(
        reason(443, at(2)),
        Some((EndReason::EndOfCapture, Orientation::Observed))
    );
    assert_eq!(
        reason(6379, at(3)),
        Some((EndReason::EndOfCapture, Orientation::Inferred))
    );
    // The first connection on reused ports ends when the new SYN arrives.
    assert_eq!(
        reason(80, at(10)),
        Some((EndReason::TcpClosed, Orientation::Observed))
    );
    assert_eq!(
        reason(80, at(50)),
        Some((EndReason::TcpClosed, Orientation::Observed))
    );
}

#[test]
fn idle_timeouts_split_flows_and_snaplen_keeps_ip_lengths() {
    let mut s = Synth::new(Link::Ethernet, 1);
    s.udp(
        sock("10.0.0.1:5000"),
        sock("10.0.0.2:53"),
        at(0),
        1,
        (40, 60),
        1_000_000,
    );
    s.udp(
        sock("10.0.0.1:5000"),
        sock("10.0.0.2:53"),
        at(120_000),
        1,
        (40, 60),
        1_000_000,
    );
    s.tcp(TcpSpec::new(
        sock("10.0.0.1:6000"),
        sock("10.0.0.2:80"),
        at(200_000),
        1,
    ));
    let cap = s.finish();
    let mut buf = Vec::new();
    let opts = PcapOptions {
        snaplen: 54,
        ..PcapOptions::default()
    };
    write_pcap(&mut buf, cap.link, &cap.packets, opts).unwrap_or_else(|e| panic!("{e}"));
    let records = extract(buf, 1);
    // 120 s apart with a 60 s UDP idle timeout: two flows, as the generator's truth says.
    assert_matches(&records, &cap.truth, "snaplen 54");
    assert_eq!(records[0].end_reason, EndReason::IdleTimeout);
}

#[test]
fn a_full_table_evicts_the_least_recent_flows_and_loses_no_packet() {
    let mut s = Synth::new(Link::Ethernet, 3);
    for i in 0..200u16 {
        s.udp(
            sock(&format!("10.1.{}.{}:{}", i / 200, i % 200 + 1, 30000 + i)),
            sock("10.2.0.1:53"),
            at(i64::from(i)),
            1,
            (40, 80),
            100_000,
        );
    }
    let cap = s.finish();
    let mut buf = Vec::new();
    write_pcap(&mut buf, cap.link, &cap.packets, PcapOptions::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut src =
        FileSource::new("t".into(), Cursor::new(buf), None).unwrap_or_else(|e| panic!("{e}"));
    let config = FlowConfig {
        max_flows: 64,
        ..FlowConfig::default()
    };
    let mut x = FlowExtractor::new(config);
    let mut batch = Batch::default();
    while src.next_batch(&mut batch).unwrap_or_else(|e| panic!("{e}")) {
        for p in batch.iter() {
            x.packet(p.timestamp, p.link, p.data);
        }
    }
    let (flows, stats) = x.finish();
    assert!(stats.table.evicted > 0);
    assert!(stats.table.peak_flows <= 64);
    let evicted = flows
        .iter()
        .filter(|f| f.end_reason() == EndReason::Evicted)
        .count() as u64;
    assert_eq!(evicted, stats.table.evicted);
    let packets: u64 = flows.iter().map(|f| f.to_record().total_packets()).sum();
    assert_eq!(packets, 400);
    // Each conversation ends before the next begins, so eviction never splits one.
    assert_eq!(flows.len(), 200);
}

//! Named traffic mixes: the bundled example captures and the benchmark captures.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use weir_model::Timestamp;

use crate::{
    Capture, Close, Link, PcapNgOptions, PcapOptions, Synth, TcpSpec, write_pcap, write_pcapng,
};

fn create(path: &Path) -> io::Result<BufWriter<File>> {
    Ok(BufWriter::with_capacity(1 << 20, File::create(path)?))
}

/// 2026-11-22T10:00:00Z.
pub const EPOCH: i64 = 1_795_341_600_000_000_000;

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn at(ms: i64) -> Timestamp {
    Timestamp(EPOCH + ms * 1_000_000)
}

/// A few seconds of a small cluster: web requests through the stack, DNS, health checks, a database
/// connection running since before the capture, a reset, pings, IPv6, and fragments.
pub fn pod_traffic(link: Link) -> Capture {
    let mut s = Synth::new(link, 2026);
    let frontend = v4(10, 244, 1, 10);
    let api = v4(10, 244, 2, 20);
    let cache = v4(10, 244, 2, 21);
    let db = v4(10, 244, 3, 30);
    let dns = v4(10, 244, 0, 5);
    let node = v4(172, 18, 0, 2);
    for i in 0..6u16 {
        let t = i64::from(i) * 400;
        s.udp(
            SocketAddr::new(frontend, 40_000 + i),
            SocketAddr::new(dns, 53),
            at(t),
            1,
            (62, 140),
            300_000,
        );
        s.tcp(TcpSpec {
            request: 320,
            response: 1200,
            ..TcpSpec::new(
                SocketAddr::new(frontend, 45_000 + i),
                SocketAddr::new(api, 8080),
                at(t + 2),
                2,
            )
        });
        s.tcp(TcpSpec {
            request: 40,
            response: 90,
            gap: 50_000,
            ..TcpSpec::new(
                SocketAddr::new(api, 50_000 + i),
                SocketAddr::new(cache, 6379),
                at(t + 5),
                3,
            )
        });
    }
    s.tcp(TcpSpec {
        handshake: false,
        close: Close::Open,
        request: 180,
        response: 2400,
        gap: 20_000_000,
        ..TcpSpec::new(
            SocketAddr::new(api, 38_211),
            SocketAddr::new(db, 5432),
            at(1),
            40,
        )
    });
    for i in 0..3u16 {
        s.tcp(TcpSpec {
            request: 110,
            response: 160,
            ..TcpSpec::new(
                SocketAddr::new(node, 52_000 + i),
                SocketAddr::new(api, 8081),
                at(i64::from(i) * 1000 + 100),
                1,
            )
        });
    }
    s.tcp(TcpSpec {
        close: Close::Rst,
        exchanges: 0,
        ..TcpSpec::new(
            SocketAddr::new(frontend, 46_001),
            SocketAddr::new(db, 5432),
            at(1500),
            0,
        )
    });
    s.icmp_echo(frontend, api, 0x0a0b, 4, at(700), 250_000_000);
    let (f6, a6): (IpAddr, IpAddr) = (
        "fd00:10:244:1::a".parse().unwrap_or(frontend),
        "fd00:10:244:2::14".parse().unwrap_or(api),
    );
    s.tcp(TcpSpec::new(
        SocketAddr::new(f6, 41_000),
        SocketAddr::new(a6, 8080),
        at(900),
        2,
    ));
    s.icmp_echo(f6, a6, 9, 2, at(950), 100_000_000);
    s.udp_fragmented(
        SocketAddr::new(api, 51_000),
        SocketAddr::new(v4(10, 244, 4, 40), 8472),
        at(1200),
        4000,
        1480,
    );
    s.finish()
}

/// The address of pod `n` in [`bench_mix`] traffic.
pub fn bench_pod_address(n: u64) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, (n / 250) as u8, (n % 250 + 1) as u8)
}

/// Benchmark traffic: about `packets` packets in about `flows` flows (TCP with handshake, data and FIN, DNS
/// over UDP, pings) among 2,000 pods, over 60 seconds.
pub fn bench_mix(packets: u64, flows: u64, seed: u64) -> Capture {
    let mut s = Synth::new(Link::Ethernet, seed);
    let per_flow = (packets / flows.max(1)).max(3);
    let span_ms = 60_000i64;
    let pod = |n: u64| IpAddr::V4(bench_pod_address(n));
    for f in 0..flows {
        let start = at(s.range(0, span_ms as u64) as i64);
        let client = pod(s.range(0, 2000));
        let server = pod(s.range(0, 2000));
        let cport = 32_768 + (f % 28_000) as u16;
        let roll = s.range(0, 100);
        if roll < 10 {
            let n = (per_flow / 2).max(1) as u32;
            s.udp(
                SocketAddr::new(client, cport),
                SocketAddr::new(server, 53),
                start,
                n,
                (60, 120),
                2_000_000,
            );
        } else if roll < 12 {
            let n = (per_flow / 2).max(1) as u16;
            s.icmp_echo(client, server, f as u16, n, start, 1_000_000);
        } else {
            // Handshake (3) and close (3) plus 3 packets per exchange.
            let exchanges = (per_flow.saturating_sub(6) / 3).max(1) as u32;
            let ports = [80u16, 443, 8080, 5432, 6379, 9090];
            let sport = ports[(f % ports.len() as u64) as usize];
            let request = s.range(60, 400) as usize;
            let response = s.range(100, 1400) as usize;
            s.tcp(TcpSpec {
                request,
                response,
                gap: 300_000,
                ..TcpSpec::new(
                    SocketAddr::new(client, cport),
                    SocketAddr::new(server, sport),
                    start,
                    exchanges,
                )
            });
        }
    }
    s.finish()
}

/// gzip without a compression dependency: "stored" deflate blocks are valid gzip that every reader accepts.
pub(crate) fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut chunks = data.chunks(65_535).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        out.push(u8::from(chunks.peek().is_none()));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Writes the generated captures bundled in `pcaps/`: the same bytes on every run.
pub fn write_bundled_pcaps(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let eth = pod_traffic(Link::Ethernet);
    write_pcap(
        create(&dir.join("pod-traffic.pcap"))?,
        eth.link,
        &eth.packets,
        PcapOptions::default(),
    )?;
    let any = pod_traffic(Link::LinuxSll2);
    let opts = PcapNgOptions {
        tsresol: 9,
        interfaces: 2,
        ..PcapNgOptions::default()
    };
    write_pcapng(
        create(&dir.join("pod-traffic-any.pcapng"))?,
        any.link,
        &any.packets,
        opts,
    )?;
    let qinq = pod_traffic(Link::QinQ(100, 200));
    let mut raw = Vec::new();
    let opts = PcapOptions {
        nanos: true,
        big_endian: true,
        snaplen: 96,
    };
    write_pcap(&mut raw, qinq.link, &qinq.packets, opts)?;
    create(&dir.join("pod-traffic-qinq-snap96.pcap.gz"))?.write_all(&gzip_stored(&raw))?;

    // The demo: its cluster snapshot, and its traffic as an Ethernet capture and as `tcpdump -i any` writes it.
    create(&dir.join("demo.cluster.yaml"))?
        .write_all(weir_cluster::yaml::to_yaml(&crate::demo_cluster()).as_bytes())?;
    let eth = crate::demo_traffic(Link::Ethernet);
    write_pcap(
        create(&dir.join("demo.pcap"))?,
        eth.link,
        &eth.packets,
        PcapOptions::default(),
    )?;
    let any = crate::demo_traffic(Link::LinuxSll2);
    let opts = PcapNgOptions {
        tsresol: 9,
        ..PcapNgOptions::default()
    };
    write_pcapng(
        create(&dir.join("demo-any.pcapng"))?,
        any.link,
        &any.packets,
        opts,
    )?;
    Ok(())
}

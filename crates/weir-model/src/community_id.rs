//! Community ID v1 flow hashing, so weir's flows join with Zeek, Suricata, Wireshark and Elastic records.

use std::net::IpAddr;

use base64::Engine as _;
use sha1::{Digest, Sha1};

use crate::Protocol;

/// The counterpart of an ICMP or ICMPv6 message type that comes in request/reply pairs (echo, timestamp,
/// information, address mask, router and neighbour discovery, MLD, node information, home agent discovery), as
/// the Community ID specification and Zeek define them. `None` for one-way messages such as errors.
pub fn icmp_counterpart(proto: Protocol, icmp_type: u8) -> Option<u8> {
    let pairs: &[(u8, u8)] = if proto == Protocol::ICMPV6 {
        &[
            (128, 129),
            (133, 134),
            (135, 136),
            (130, 131),
            (139, 140),
            (144, 145),
        ]
    } else {
        &[(8, 0), (13, 14), (15, 16), (10, 9), (17, 18)]
    };
    pairs.iter().find_map(|&(a, b)| match icmp_type {
        t if t == a => Some(b),
        t if t == b => Some(a),
        _ => None,
    })
}

/// The Community ID v1 of a flow (seed 0): `1:` followed by the base64 SHA-1 of the ordered tuple.
///
/// `src_port`/`dst_port` are the transport ports for TCP, UDP and SCTP; for ICMP and ICMPv6 pass the message type
/// and code of the packet as seen from `src` (they are mapped as the specification says). Other protocols ignore
/// them. Addresses of different families hash as given, which no real flow has.
pub fn community_id_v1(
    src: IpAddr,
    dst: IpAddr,
    proto: Protocol,
    src_port: u16,
    dst_port: u16,
) -> String {
    let (mut sport, mut dport) = (src_port, dst_port);
    let mut one_way = false;
    if proto.is_icmp() {
        let icmp_type = src_port as u8;
        match icmp_counterpart(proto, icmp_type) {
            Some(other) => dport = u16::from(other),
            None => one_way = true,
        }
        sport = u16::from(icmp_type);
    }
    let has_ports = proto.has_ports() || proto.is_icmp();
    let ordered = one_way || (src, sport) < (dst, dport) || !has_ports && src <= dst;
    let (a, b, pa, pb) = if ordered {
        (src, dst, sport, dport)
    } else {
        (dst, src, dport, sport)
    };
    let mut hasher = Sha1::new();
    hasher.update([0u8, 0u8]);
    for addr in [a, b] {
        match addr {
            IpAddr::V4(v4) => hasher.update(v4.octets()),
            IpAddr::V6(v6) => hasher.update(v6.octets()),
        }
    }
    hasher.update([proto.0, 0]);
    if has_ports {
        hasher.update(pa.to_be_bytes());
        hasher.update(pb.to_be_bytes());
    }
    let digest = hasher.finalize();
    format!(
        "1:{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    // The Community ID specification's baseline data set (seed 0): for ICMP the inputs are type and code.
    #[test]
    fn matches_specification_baseline() {
        let table: &[(u8, &str, &str, u16, u16, &str)] = &[
            (
                58,
                "fe80::200:86ff:fe05:80da",
                "fe80::260:97ff:fe07:69ea",
                135,
                0,
                "1:dGHyGvjMfljg6Bppwm3bg0LO8TY=",
            ),
            (
                58,
                "fe80::260:97ff:fe07:69ea",
                "fe80::200:86ff:fe05:80da",
                136,
                0,
                "1:dGHyGvjMfljg6Bppwm3bg0LO8TY=",
            ),
            (
                58,
                "fe80::260:97ff:fe07:69ea",
                "fe80::200:86ff:fe05:80da",
                135,
                0,
                "1:zavyT/cezQr1fmImYCwYnMXbgck=",
            ),
            (
                58,
                "3ffe:501:1800:2345::2",
                "3ffe:507:0:1:200:86ff:fe05:80da",
                3,
                0,
                "1:2ObVBgIn28oZvibYZhZMBgh7WdQ=",
            ),
            (
                58,
                "3ffe:501:410:0:2c0:dfff:fe47:33e",
                "3ffe:507:0:1:200:86ff:fe05:80da",
                1,
                4,
                "1:hLZd0XGWojozrvxqE0dWB1iM6R0=",
            ),
            (
                58,
                "3ffe:507:0:1:200:86ff:fe05:80da",
                "3ffe:501:0:1001::2",
                128,
                0,
                "1:+TW+HtLHvV1xnGhV1lv7XoJrqQg=",
            ),
            (
                58,
                "3ffe:501:0:1001::2",
                "3ffe:507:0:1:200:86ff:fe05:80da",
                129,
                0,
                "1:+TW+HtLHvV1xnGhV1lv7XoJrqQg=",
            ),
            (
                58,
                "fe80::200:86ff:fe05:80da",
                "ff02::2",
                133,
                0,
                "1:hO+sN4H+MG5MY/8hIrXPqc4ZQz0=",
            ),
            (
                58,
                "fe80::260:97ff:fe07:69ea",
                "ff02::1",
                134,
                0,
                "1:pkvHqCL88/tg1k4cPigmZXUtL00=",
            ),
            (
                1,
                "192.168.0.89",
                "192.168.0.1",
                8,
                0,
                "1:X0snYXpgwiv9TZtqg64sgzUn6Dk=",
            ),
            (
                1,
                "192.168.0.1",
                "192.168.0.89",
                0,
                0,
                "1:X0snYXpgwiv9TZtqg64sgzUn6Dk=",
            ),
            (
                1,
                "10.0.0.1",
                "10.0.0.2",
                11,
                0,
                "1:YHxtAirCG//0OzkcVAukqKQN9xM=",
            ),
            (
                6,
                "2001:470:e5bf:dead:4957:2174:e82c:4887",
                "2607:f8b0:400c:c03::1a",
                63943,
                25,
                "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4=",
            ),
            (
                6,
                "2607:f8b0:400c:c03::1a",
                "2001:470:e5bf:dead:4957:2174:e82c:4887",
                25,
                63943,
                "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4=",
            ),
            (
                132,
                "192.168.170.8",
                "192.168.170.56",
                7,
                7,
                "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs=",
            ),
            (
                132,
                "192.168.170.56",
                "192.168.170.8",
                7,
                7,
                "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs=",
            ),
            (
                6,
                "128.232.110.120",
                "66.35.250.204",
                34855,
                80,
                "1:LQU9qZlK+B5F3KDmev6m5PMibrg=",
            ),
            (
                6,
                "66.35.250.204",
                "128.232.110.120",
                80,
                34855,
                "1:LQU9qZlK+B5F3KDmev6m5PMibrg=",
            ),
            (
                17,
                "192.168.1.52",
                "8.8.8.8",
                54585,
                53,
                "1:d/FP5EW3wiY1vCndhwleRRKHowQ=",
            ),
            (
                17,
                "8.8.8.8",
                "192.168.1.52",
                53,
                54585,
                "1:d/FP5EW3wiY1vCndhwleRRKHowQ=",
            ),
            (
                46,
                "10.1.12.1",
                "10.1.12.2",
                0,
                0,
                "1:KHlLkgoJW7ifUTyTSgyVfkFHzKw=",
            ),
            (
                46,
                "10.1.12.2",
                "10.1.12.1",
                0,
                0,
                "1:KHlLkgoJW7ifUTyTSgyVfkFHzKw=",
            ),
        ];
        for &(proto, src, dst, sport, dport, want) in table {
            let got = community_id_v1(ip(src), ip(dst), Protocol(proto), sport, dport);
            assert_eq!(got, want, "{proto} {src} -> {dst} {sport} {dport}");
        }
    }
}

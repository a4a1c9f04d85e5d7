//! Frame decoding: link layer → IP → the transport fields a flow table needs.
//!
//! # Panic contract
//! [`decode`] is the one door for packet bytes. It never panics and never reads outside `data`, whatever the
//! bytes: every offset goes through a checked accessor, and the IP layer is sliced by etherparse's lax slicers,
//! which accept snap-length-truncated packets. What cannot be decoded comes back as a [`SkipReason`], so every
//! packet is either accounted to a flow or counted with a reason.

use etherparse::{IpNumber, Ipv6ExtensionSlice, LaxIpv4Slice, LaxIpv6Slice, err};
use weir_model::{LinkType, Protocol, icmp_counterpart};

/// Why a packet was not accounted to a flow. Each reason belongs to one layer; see [`SkipReason::layer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipReason {
    /// The capture's link type is not one weir decodes.
    UnsupportedLinkType,
    /// The frame is shorter than its link-layer header.
    LinkTruncated,
    /// A VLAN tag is cut short.
    VlanTruncated,
    /// More than eight stacked VLAN tags.
    VlanTooDeep,
    /// ARP: not IP traffic.
    Arp,
    /// An 802.3 length-field frame (LLC, STP, CDP, ...): not IP traffic.
    Llc,
    /// Another non-IP ethertype (LLDP, MPLS, PPPoE, ...).
    OtherEthertype,
    /// A raw-IP frame whose version nibble is neither 4 nor 6.
    BadIpVersion,
    /// An IPv4 header cut short.
    Ipv4Truncated,
    /// An IPv4 header with an invalid version or header length.
    Ipv4BadHeader,
    /// An IPv6 header cut short.
    Ipv6Truncated,
    /// An IPv6 header with an invalid version.
    Ipv6BadHeader,
    /// IPv6 extension headers that are malformed or cut short.
    Ipv6Extensions,
    /// A non-first fragment whose first fragment was not seen (or expired), so its flow is unknown.
    OrphanFragment,
    /// A TCP header too short for ports and flags.
    TcpTruncated,
    /// A UDP header too short for ports.
    UdpTruncated,
    /// An SCTP common header too short for ports.
    SctpTruncated,
    /// An ICMP/ICMPv6 header too short for type, code and identifier.
    IcmpTruncated,
}

impl SkipReason {
    /// Every reason, in report order.
    pub const ALL: [SkipReason; 18] = [
        SkipReason::UnsupportedLinkType,
        SkipReason::LinkTruncated,
        SkipReason::VlanTruncated,
        SkipReason::VlanTooDeep,
        SkipReason::Arp,
        SkipReason::Llc,
        SkipReason::OtherEthertype,
        SkipReason::BadIpVersion,
        SkipReason::Ipv4Truncated,
        SkipReason::Ipv4BadHeader,
        SkipReason::Ipv6Truncated,
        SkipReason::Ipv6BadHeader,
        SkipReason::Ipv6Extensions,
        SkipReason::OrphanFragment,
        SkipReason::TcpTruncated,
        SkipReason::UdpTruncated,
        SkipReason::SctpTruncated,
        SkipReason::IcmpTruncated,
    ];

    /// Position in [`SkipReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The layer the reason belongs to: `link`, `network` or `transport`.
    pub fn layer(self) -> &'static str {
        use SkipReason::*;
        match self {
            UnsupportedLinkType | LinkTruncated | VlanTruncated | VlanTooDeep | Arp | Llc
            | OtherEthertype => "link",
            BadIpVersion | Ipv4Truncated | Ipv4BadHeader | Ipv6Truncated | Ipv6BadHeader
            | Ipv6Extensions | OrphanFragment => "network",
            TcpTruncated | UdpTruncated | SctpTruncated | IcmpTruncated => "transport",
        }
    }

    /// A stable machine name (`snake_case`), used in JSON summaries and metrics labels.
    pub fn name(self) -> &'static str {
        use SkipReason::*;
        match self {
            UnsupportedLinkType => "unsupported_link_type",
            LinkTruncated => "link_truncated",
            VlanTruncated => "vlan_truncated",
            VlanTooDeep => "vlan_too_deep",
            Arp => "arp",
            Llc => "llc",
            OtherEthertype => "other_ethertype",
            BadIpVersion => "bad_ip_version",
            Ipv4Truncated => "ipv4_truncated",
            Ipv4BadHeader => "ipv4_bad_header",
            Ipv6Truncated => "ipv6_truncated",
            Ipv6BadHeader => "ipv6_bad_header",
            Ipv6Extensions => "ipv6_extensions",
            OrphanFragment => "orphan_fragment",
            TcpTruncated => "tcp_truncated",
            UdpTruncated => "udp_truncated",
            SctpTruncated => "sctp_truncated",
            IcmpTruncated => "icmp_truncated",
        }
    }

    /// Whether the packet is damaged (as opposed to valid traffic weir does not track, such as ARP).
    pub fn is_malformed(self) -> bool {
        use SkipReason::*;
        !matches!(
            self,
            UnsupportedLinkType | Arp | Llc | OtherEthertype | OrphanFragment
        )
    }
}

/// Fragmentation of an IP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// IPv4 identification or IPv6 fragment identification.
    pub id: u32,
    /// Whether this is the first fragment (offset 0), which carries the transport header.
    pub first: bool,
}

/// What a flow table needs of one packet. Addresses are 16 bytes; IPv4 uses the first 4 and `v6` is false.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodedPacket {
    /// Source address.
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// IP protocol of the payload (after IPv6 extension headers and IPv4 AH).
    pub proto: Protocol,
    /// Source port (TCP, UDP, SCTP).
    pub src_port: u16,
    /// Destination port (TCP, UDP, SCTP).
    pub dst_port: u16,
    /// TCP flags.
    pub tcp_flags: u8,
    /// ICMP type (ICMP/ICMPv6) or the first chunk type (SCTP).
    pub l4_type: u8,
    /// ICMP code.
    pub icmp_code: u8,
    /// ICMP identifier of request/reply messages that carry one.
    pub icmp_id: u16,
    /// Whether the transport header was present (false for non-first fragments).
    pub has_l4: bool,
    /// IP packet length: header and payload, as the IP header states it.
    pub ip_len: u32,
    /// Fragmentation, if the packet is a fragment.
    pub fragment: Option<Fragment>,
}

const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;
const ETH_ARP: u16 = 0x0806;
const ETH_VLAN: [u16; 3] = [0x8100, 0x88a8, 0x9100];
const MAX_VLAN_TAGS: usize = 8;
const ARPHRD_NETLINK: u16 = 824;

fn be16(data: &[u8], at: usize) -> Option<u16> {
    let b = data.get(at..at + 2)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

/// The IP packet inside a frame.
#[derive(Clone, Copy, Debug)]
enum Network<'a> {
    V4(&'a [u8]),
    V6(&'a [u8]),
}

/// Decodes one captured frame of the given link type.
pub fn decode(link: LinkType, data: &[u8]) -> Result<DecodedPacket, SkipReason> {
    match network(link, data)? {
        Network::V4(ip) => ipv4(ip),
        Network::V6(ip) => ipv6(ip),
    }
}

/// The source and destination address bytes of a frame (4 or 16 each), found with the link layer alone and no
/// validation of the IP header. Workers that split a stream use it to skip, cheaply, the packets of flows they
/// do not own; every packet of a flow (fragments included) has the same pair.
pub fn address_pair(link: LinkType, data: &[u8]) -> Option<(&[u8], &[u8])> {
    match network(link, data).ok()? {
        Network::V4(ip) => Some((ip.get(12..16)?, ip.get(16..20)?)),
        Network::V6(ip) => Some((ip.get(8..24)?, ip.get(24..40)?)),
    }
}

fn network(link: LinkType, data: &[u8]) -> Result<Network<'_>, SkipReason> {
    match link {
        LinkType::ETHERNET => {
            let ethertype = be16(data, 12).ok_or(SkipReason::LinkTruncated)?;
            ethertype_payload(ethertype, data, 14)
        }
        LinkType::LINUX_SLL => {
            let (Some(hatype), Some(protocol)) = (be16(data, 2), be16(data, 14)) else {
                return Err(SkipReason::LinkTruncated);
            };
            if hatype == ARPHRD_NETLINK {
                return Err(SkipReason::OtherEthertype);
            }
            ethertype_payload(protocol, data, 16)
        }
        LinkType::LINUX_SLL2 => {
            let (Some(protocol), Some(hatype)) = (be16(data, 0), be16(data, 8)) else {
                return Err(SkipReason::LinkTruncated);
            };
            if data.len() < 20 {
                return Err(SkipReason::LinkTruncated);
            }
            if hatype == ARPHRD_NETLINK {
                return Err(SkipReason::OtherEthertype);
            }
            ethertype_payload(protocol, data, 20)
        }
        LinkType::NULL | LinkType::LOOP => {
            let family = data.get(0..4).ok_or(SkipReason::LinkTruncated)?;
            let family = [family[0], family[1], family[2], family[3]];
            // NULL is in the capturing host's byte order; whichever reading is small is the right one.
            let value = if link == LinkType::LOOP {
                u32::from_be_bytes(family)
            } else {
                match u32::from_le_bytes(family) {
                    v if v <= 0xffff => v,
                    _ => u32::from_be_bytes(family),
                }
            };
            match value {
                2 => Ok(Network::V4(&data[4..])),
                10 | 23 | 24 | 28 | 30 => Ok(Network::V6(&data[4..])),
                _ => Err(SkipReason::OtherEthertype),
            }
        }
        LinkType::RAW | LinkType::RAW_BSD_12 | LinkType::RAW_BSD_14 => raw_ip(data),
        LinkType::IPV4 => Ok(Network::V4(data)),
        LinkType::IPV6 => Ok(Network::V6(data)),
        _ => Err(SkipReason::UnsupportedLinkType),
    }
}

fn raw_ip(data: &[u8]) -> Result<Network<'_>, SkipReason> {
    match data.first().map(|b| b >> 4) {
        Some(4) => Ok(Network::V4(data)),
        Some(6) => Ok(Network::V6(data)),
        Some(_) => Err(SkipReason::BadIpVersion),
        None => Err(SkipReason::LinkTruncated),
    }
}

fn ethertype_payload(
    mut ethertype: u16,
    data: &[u8],
    mut at: usize,
) -> Result<Network<'_>, SkipReason> {
    let mut tags = 0;
    while ETH_VLAN.contains(&ethertype) {
        tags += 1;
        if tags > MAX_VLAN_TAGS {
            return Err(SkipReason::VlanTooDeep);
        }
        ethertype = be16(data, at + 2).ok_or(SkipReason::VlanTruncated)?;
        at += 4;
    }
    let payload = data.get(at..).ok_or(SkipReason::LinkTruncated)?;
    match ethertype {
        ETH_IPV4 => Ok(Network::V4(payload)),
        ETH_IPV6 => Ok(Network::V6(payload)),
        ETH_ARP => Err(SkipReason::Arp),
        t if t < 0x0600 => Err(SkipReason::Llc),
        _ => Err(SkipReason::OtherEthertype),
    }
}

fn ipv4(data: &[u8]) -> Result<DecodedPacket, SkipReason> {
    let (slice, _auth_err) = LaxIpv4Slice::from_slice(data).map_err(|e| match e {
        err::ipv4::HeaderSliceError::Len(_) => SkipReason::Ipv4Truncated,
        err::ipv4::HeaderSliceError::Content(_) => SkipReason::Ipv4BadHeader,
    })?;
    let header = slice.header();
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src[..4].copy_from_slice(&header.source());
    dst[..4].copy_from_slice(&header.destination());
    let header_len = header.slice().len();
    let total_len = usize::from(header.total_len());
    // A total length below the header's own is bogus; the captured length is the best remaining measure.
    let ip_len = if total_len >= header_len {
        total_len
    } else {
        data.len()
    };
    let fragment = header.is_fragmenting_payload().then(|| Fragment {
        id: u32::from(header.identification()),
        first: header.fragments_offset().value() == 0,
    });
    let payload = slice.payload();
    transport(
        src,
        dst,
        false,
        payload.ip_number,
        payload.payload,
        ip_len as u32,
        fragment,
    )
}

fn ipv6(data: &[u8]) -> Result<DecodedPacket, SkipReason> {
    let (slice, ext_err) = LaxIpv6Slice::from_slice(data).map_err(|e| match e {
        err::ipv6::HeaderSliceError::Len(_) => SkipReason::Ipv6Truncated,
        err::ipv6::HeaderSliceError::Content(_) => SkipReason::Ipv6BadHeader,
    })?;
    if ext_err.is_some() {
        return Err(SkipReason::Ipv6Extensions);
    }
    let header = slice.header();
    let payload_len = usize::from(header.payload_length());
    // A zero payload length means a jumbogram (or a sloppy writer): fall back to what was captured.
    let ip_len = if payload_len == 0 {
        data.len()
    } else {
        40 + payload_len
    };
    let mut fragment = None;
    if slice.is_payload_fragmented() {
        for ext in slice.extensions().clone().into_iter() {
            if let Ipv6ExtensionSlice::Fragment(frag) = ext {
                fragment = Some(Fragment {
                    id: frag.identification(),
                    first: frag.fragment_offset().value() == 0,
                });
            }
        }
    }
    let payload = slice.payload();
    transport(
        header.source(),
        header.destination(),
        true,
        payload.ip_number,
        payload.payload,
        ip_len as u32,
        fragment,
    )
}

/// Whether an ICMP message type carries a request/reply identifier at bytes 4-5.
fn icmp_has_id(proto: Protocol, icmp_type: u8) -> bool {
    if proto == Protocol::ICMPV6 {
        matches!(icmp_type, 128 | 129)
    } else {
        matches!(icmp_type, 0 | 8 | 13 | 14 | 15 | 16 | 17 | 18)
    }
}

fn transport(
    src: [u8; 16],
    dst: [u8; 16],
    v6: bool,
    ip_number: IpNumber,
    l4: &[u8],
    ip_len: u32,
    fragment: Option<Fragment>,
) -> Result<DecodedPacket, SkipReason> {
    let proto = Protocol(ip_number.0);
    let mut pkt = DecodedPacket {
        src,
        dst,
        v6,
        proto,
        src_port: 0,
        dst_port: 0,
        tcp_flags: 0,
        l4_type: 0,
        icmp_code: 0,
        icmp_id: 0,
        has_l4: false,
        ip_len,
        fragment,
    };
    if fragment.is_some_and(|f| !f.first) {
        return Ok(pkt);
    }
    let ports = || Some((be16(l4, 0)?, be16(l4, 2)?));
    match proto {
        Protocol::TCP => {
            let (Some((s, d)), Some(&flags)) = (ports(), l4.get(13)) else {
                return Err(SkipReason::TcpTruncated);
            };
            (pkt.src_port, pkt.dst_port, pkt.tcp_flags) = (s, d, flags);
        }
        Protocol::UDP => {
            let (s, d) = ports().ok_or(SkipReason::UdpTruncated)?;
            (pkt.src_port, pkt.dst_port) = (s, d);
        }
        Protocol::SCTP => {
            let (s, d) = ports().ok_or(SkipReason::SctpTruncated)?;
            (pkt.src_port, pkt.dst_port) = (s, d);
            pkt.l4_type = l4.get(12).copied().unwrap_or(0);
        }
        Protocol::ICMP | Protocol::ICMPV6 => {
            let (Some(&t), Some(&c)) = (l4.first(), l4.get(1)) else {
                return Err(SkipReason::IcmpTruncated);
            };
            (pkt.l4_type, pkt.icmp_code) = (t, c);
            if icmp_has_id(proto, t) {
                pkt.icmp_id = be16(l4, 4).ok_or(SkipReason::IcmpTruncated)?;
            }
        }
        _ => {}
    }
    pkt.has_l4 = true;
    Ok(pkt)
}

/// The request type of an ICMP request/reply pair, if `icmp_type` belongs to one.
pub(crate) fn icmp_request_type(proto: Protocol, icmp_type: u8) -> Option<u8> {
    let other = icmp_counterpart(proto, icmp_type)?;
    let is_request = if proto == Protocol::ICMPV6 {
        matches!(icmp_type, 128 | 133 | 135 | 130 | 139 | 144)
    } else {
        matches!(icmp_type, 8 | 13 | 15 | 10 | 17)
    };
    Some(if is_request { icmp_type } else { other })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn tcp_frame(flags_syn: bool) -> Vec<u8> {
        let builder = PacketBuilder::ethernet2([1; 6], [2; 6])
            .single_vlan(100.try_into().unwrap_or_default())
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 80, 1, 1000);
        let builder = if flags_syn {
            builder.syn()
        } else {
            builder.ack(5)
        };
        let mut out = Vec::new();
        builder.write(&mut out, b"hello").unwrap_or_default();
        out
    }

    #[test]
    fn ethernet_vlan_ipv4_tcp() {
        let pkt = decode(LinkType::ETHERNET, &tcp_frame(true));
        let Ok(pkt) = pkt else { panic!("{pkt:?}") };
        assert_eq!(
            (pkt.src_port, pkt.dst_port, pkt.proto),
            (40000, 80, Protocol::TCP)
        );
        assert_eq!(pkt.tcp_flags & 0x02, 0x02);
        assert_eq!(pkt.ip_len, 20 + 20 + 5);
        assert_eq!(&pkt.src[..4], &[10, 0, 0, 1]);
    }

    #[test]
    fn every_prefix_of_a_frame_decodes_or_is_skipped_without_panic() {
        let frame = tcp_frame(false);
        for len in 0..frame.len() {
            let _ = decode(LinkType::ETHERNET, &frame[..len]);
            let _ = decode(LinkType::LINUX_SLL, &frame[..len]);
            let _ = decode(LinkType::RAW, &frame[..len]);
        }
        assert_eq!(
            decode(LinkType::ETHERNET, &frame[..10]),
            Err(SkipReason::LinkTruncated)
        );
        assert_eq!(
            decode(LinkType::ETHERNET, &frame[..16]),
            Err(SkipReason::VlanTruncated)
        );
        assert_eq!(
            decode(LinkType::ETHERNET, &frame[..30]),
            Err(SkipReason::Ipv4Truncated)
        );
        assert_eq!(
            decode(LinkType::ETHERNET, &frame[..50]),
            Err(SkipReason::TcpTruncated)
        );
    }

    #[test]
    fn icmp_echo_keeps_identifier_and_v6_extension_headers_are_walked() {
        let mut out = Vec::new();
        PacketBuilder::ipv6([0xfd; 16], [0xfe; 16], 64)
            .icmpv6_echo_request(0x1234, 7)
            .write(&mut out, b"ping")
            .unwrap_or_default();
        let pkt = decode(LinkType::RAW, &out);
        let Ok(pkt) = pkt else { panic!("{pkt:?}") };
        assert_eq!(
            (pkt.proto, pkt.l4_type, pkt.icmp_id),
            (Protocol::ICMPV6, 128, 0x1234)
        );
        assert!(pkt.v6);
        assert_eq!(icmp_request_type(Protocol::ICMPV6, 129), Some(128));
        assert_eq!(icmp_request_type(Protocol::ICMP, 3), None);
    }

    #[test]
    fn non_ip_and_unknown_links_are_skipped_with_reasons() {
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&ETH_ARP.to_be_bytes());
        assert_eq!(decode(LinkType::ETHERNET, &arp), Err(SkipReason::Arp));
        arp[12..14].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(decode(LinkType::ETHERNET, &arp), Err(SkipReason::Llc));
        assert_eq!(
            decode(LinkType(147), &arp),
            Err(SkipReason::UnsupportedLinkType)
        );
        assert_eq!(
            decode(LinkType::RAW, &[0x50, 0, 0]),
            Err(SkipReason::BadIpVersion)
        );
        for (i, r) in SkipReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}

//! The flow record: one bidirectional conversation, oriented initiator → responder.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Protocol, Timestamp, community_id_v1};

/// TCP flags as a bit set (`FIN` = 0x01 … `CWR` = 0x80, the header's own bit order).
///
/// Prints as the letters of the flags set, in bit order: `F` `S` `R` `P` `A` `U` `E` `C` (so a complete
/// connection's initiator side is `FSPA`); the empty string when none were seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags(pub u8);

const FLAG_LETTERS: [u8; 8] = *b"FSRPAUEC";

impl TcpFlags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;

    /// Whether every bit of `flags` is set.
    pub fn contains(self, flags: u8) -> bool {
        self.0 & flags == flags
    }
}

impl fmt::Display for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (bit, letter) in FLAG_LETTERS.iter().enumerate() {
            if self.0 & (1 << bit) != 0 {
                write!(f, "{}", *letter as char)?;
            }
        }
        Ok(())
    }
}

impl Serialize for TcpFlags {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TcpFlags {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
        let mut bits = 0u8;
        for c in text.bytes() {
            let bit = FLAG_LETTERS.iter().position(|l| *l == c).ok_or_else(|| {
                serde::de::Error::custom(format!("unknown TCP flag {:?} in {text:?}", c as char))
            })?;
            bits |= 1 << bit;
        }
        Ok(TcpFlags(bits))
    }
}

/// What became of a connection attempt, from its responder's side: the one definition weir uses everywhere
/// (the report's answered counts and scans, the aggregator's delivery and scan detector, synthesis leaving out
/// failed attempts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionOutcome {
    /// The responder took it. TCP: it sent a SYN-ACK or data, or (a capture that began mid-connection)
    /// anything but a reset; other protocols: it sent anything back.
    Answered,
    /// TCP only: the responder's only word was a reset, as a closed port or a REJECT rule sends.
    Refused,
    /// Nothing came back.
    Unanswered,
}

impl ConnectionOutcome {
    /// Whether the responder took the connection.
    pub fn answered(self) -> bool {
        self == ConnectionOutcome::Answered
    }
}

/// How the initiator of a flow was determined.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Orientation {
    /// Seen: a TCP SYN or SCTP INIT (or their answers), or the first packet of a flow of another protocol.
    #[default]
    Observed,
    /// Guessed from ports because the capture started mid-conversation (well-known or service port = responder).
    Inferred,
}

/// Why a flow record was closed.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum EndReason {
    /// The capture ended while the flow was still active.
    #[default]
    EndOfCapture,
    /// No packet for longer than the protocol's idle timeout.
    IdleTimeout,
    /// A live export of a flow that goes on (active timeout); later records continue it.
    ActiveTimeout,
    /// TCP: FIN in both directions, or RST, and then quiet.
    TcpClosed,
    /// TCP: a new SYN reused the ports of this connection.
    TcpReused,
    /// Removed early because the flow table was full (counted as an eviction).
    Evicted,
}

impl EndReason {
    /// The name in flow records (`end-of-capture`, `idle-timeout`, ...).
    pub fn name(self) -> &'static str {
        match self {
            EndReason::EndOfCapture => "end-of-capture",
            EndReason::IdleTimeout => "idle-timeout",
            EndReason::ActiveTimeout => "active-timeout",
            EndReason::TcpClosed => "tcp-closed",
            EndReason::TcpReused => "tcp-reused",
            EndReason::Evicted => "evicted",
        }
    }
}

/// Which way a packet crossed an interface, from the pod's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// The pod sent it (the host side of the veth received it).
    FromPod,
    /// The pod receives it (the host side of the veth transmitted it).
    ToPod,
}

/// Where a live flow was seen.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObservationPoint {
    /// Node name.
    pub node: String,
    /// Interface name on the node (host side of the pod's veth).
    pub interface: String,
    /// Direction of the flow's initiator packets at that interface.
    pub direction: Direction,
}

/// One bidirectional flow, oriented initiator → responder. The JSON form is weir's stable flow record format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// Initiator address.
    pub src: IpAddr,
    /// Initiator port (TCP, UDP, SCTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_port: Option<u16>,
    /// Responder address.
    pub dst: IpAddr,
    /// Responder port (TCP, UDP, SCTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    /// IP protocol.
    pub proto: Protocol,
    /// ICMP/ICMPv6 type of the initiator's first packet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    /// ICMP/ICMPv6 code of the initiator's first packet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<u8>,
    /// ICMP/ICMPv6 identifier that keys request/reply flows (echo and the like).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_id: Option<u16>,
    /// Packets initiator → responder.
    pub packets: u64,
    /// IP bytes (header + payload) initiator → responder.
    pub bytes: u64,
    /// Packets responder → initiator.
    pub reply_packets: u64,
    /// IP bytes responder → initiator.
    pub reply_bytes: u64,
    /// Time of the first packet.
    pub start: Timestamp,
    /// Time of the last packet.
    pub end: Timestamp,
    /// TCP flags seen initiator → responder (empty for other protocols).
    pub tcp_flags: TcpFlags,
    /// TCP flags seen responder → initiator.
    #[serde(default)]
    pub reply_tcp_flags: TcpFlags,
    /// How the initiator was determined.
    pub orientation: Orientation,
    /// Why the record was closed.
    #[serde(default)]
    pub end_reason: EndReason,
    /// Community ID v1, to join with Zeek, Suricata or Wireshark.
    pub community_id: String,
    /// Where the flow was seen (live capture only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<ObservationPoint>,
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(octet));
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

fn push_field(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

fn push_opt(out: &mut Vec<u8>, name: &str, value: Option<u64>) {
    if let Some(v) = value {
        push_field(out, name);
        push_u64(out, v);
    }
}

impl FlowRecord {
    /// A flow between two ends over `start..=end` with nothing counted yet: no packets, no flags, no ICMP
    /// fields, observed nowhere. Callers set what they know (`FlowRecord { packets: 3, ..FlowRecord::new(..) }`).
    pub fn new(
        (src, src_port): (IpAddr, Option<u16>),
        (dst, dst_port): (IpAddr, Option<u16>),
        proto: Protocol,
        start: Timestamp,
        end: Timestamp,
    ) -> FlowRecord {
        FlowRecord {
            src,
            src_port,
            dst,
            dst_port,
            proto,
            icmp_type: None,
            icmp_code: None,
            icmp_id: None,
            packets: 0,
            bytes: 0,
            reply_packets: 0,
            reply_bytes: 0,
            start,
            end,
            tcp_flags: TcpFlags::default(),
            reply_tcp_flags: TcpFlags::default(),
            orientation: Orientation::default(),
            end_reason: EndReason::default(),
            community_id: String::new(),
            observed_at: None,
        }
    }

    /// Appends the record as one line of JSON, byte for byte what `serde_json` writes, but several times faster:
    /// bulk output writes millions of records. Records with an observation point go through `serde_json`.
    pub fn write_json_line(&self, out: &mut Vec<u8>) {
        if self.observed_at.is_some() {
            if serde_json::to_writer(&mut *out, self).is_ok() {
                out.push(b'\n');
            }
            return;
        }
        out.extend_from_slice(b"{\"src\":\"");
        push_ip(out, self.src);
        out.push(b'"');
        push_opt(out, "src_port", self.src_port.map(u64::from));
        push_field(out, "dst");
        out.push(b'"');
        push_ip(out, self.dst);
        out.push(b'"');
        push_opt(out, "dst_port", self.dst_port.map(u64::from));
        push_field(out, "proto");
        match self.proto.name() {
            Some(name) => {
                out.push(b'"');
                out.extend_from_slice(name.as_bytes());
                out.push(b'"');
            }
            None => push_u64(out, u64::from(self.proto.0)),
        }
        push_opt(out, "icmp_type", self.icmp_type.map(u64::from));
        push_opt(out, "icmp_code", self.icmp_code.map(u64::from));
        push_opt(out, "icmp_id", self.icmp_id.map(u64::from));
        for (name, v) in [
            ("packets", self.packets),
            ("bytes", self.bytes),
            ("reply_packets", self.reply_packets),
            ("reply_bytes", self.reply_bytes),
        ] {
            push_field(out, name);
            push_u64(out, v);
        }
        for (name, t) in [("start", self.start), ("end", self.end)] {
            push_field(out, name);
            out.push(b'"');
            t.write_rfc3339(out);
            out.push(b'"');
        }
        for (name, flags) in [
            ("tcp_flags", self.tcp_flags),
            ("reply_tcp_flags", self.reply_tcp_flags),
        ] {
            push_field(out, name);
            out.push(b'"');
            for (bit, letter) in FLAG_LETTERS.iter().enumerate() {
                if flags.0 & (1 << bit) != 0 {
                    out.push(*letter);
                }
            }
            out.push(b'"');
        }
        push_field(out, "orientation");
        out.extend_from_slice(match self.orientation {
            Orientation::Observed => b"\"observed\"".as_slice(),
            Orientation::Inferred => b"\"inferred\"".as_slice(),
        });
        push_field(out, "end_reason");
        out.push(b'"');
        out.extend_from_slice(self.end_reason.name().as_bytes());
        out.push(b'"');
        push_field(out, "community_id");
        // Community IDs are base64 with a version prefix: nothing to escape. Anything else goes through serde.
        if self
            .community_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=:".contains(&b))
        {
            out.push(b'"');
            out.extend_from_slice(self.community_id.as_bytes());
            out.push(b'"');
        } else if serde_json::to_writer(&mut *out, &self.community_id).is_err() {
            out.extend_from_slice(b"\"\"");
        }
        out.extend_from_slice(b"}\n");
    }

    /// The Community ID of this record's tuple.
    pub fn compute_community_id(&self) -> String {
        let (a, b) = match (self.icmp_type, self.icmp_code) {
            (Some(t), Some(c)) if self.proto.is_icmp() => (u16::from(t), u16::from(c)),
            _ => (self.src_port.unwrap_or(0), self.dst_port.unwrap_or(0)),
        };
        community_id_v1(self.src, self.dst, self.proto, a, b)
    }

    /// What became of the connection ([`ConnectionOutcome`]).
    pub fn outcome(&self) -> ConnectionOutcome {
        if self.reply_packets == 0 {
            return ConnectionOutcome::Unanswered;
        }
        if self.proto == Protocol::TCP {
            let flags = self.reply_tcp_flags;
            let took_it =
                flags.contains(TcpFlags::SYN | TcpFlags::ACK) || flags.contains(TcpFlags::PSH);
            if !took_it && flags.contains(TcpFlags::RST) {
                return ConnectionOutcome::Refused;
            }
        }
        ConnectionOutcome::Answered
    }

    /// Total packets, both directions (saturating: the counts come from the wire).
    pub fn total_packets(&self) -> u64 {
        self.packets.saturating_add(self.reply_packets)
    }

    /// Total IP bytes, both directions (saturating).
    pub fn total_bytes(&self) -> u64 {
        self.bytes.saturating_add(self.reply_bytes)
    }

    /// A deterministic order for output: by start time, then by tuple.
    pub fn sort_key(&self) -> impl Ord + use<> {
        (
            self.start,
            self.src,
            self.src_port,
            self.dst,
            self.dst_port,
            self.proto,
            self.icmp_id,
            self.icmp_type,
            self.end,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_print_in_bit_order_and_parse_back() {
        let f = TcpFlags(TcpFlags::SYN | TcpFlags::ACK | TcpFlags::FIN | TcpFlags::PSH);
        assert_eq!(f.to_string(), "FSPA");
        let json = serde_json::to_string(&f).unwrap_or_default();
        assert_eq!(serde_json::from_str::<TcpFlags>(&json).ok(), Some(f));
        assert!(serde_json::from_str::<TcpFlags>("\"SX\"").is_err());
    }

    #[test]
    fn totals_of_counts_from_the_wire_saturate() {
        // Found by the engine fuzz target (fuzz/regressions/engine): an agent may send any u64.
        let r: FlowRecord = serde_json::from_str(
            r#"{"src":"10.0.0.1","dst":"10.0.0.2","proto":"ICMP","packets":18446744073709551615,
                "bytes":18446744073709551615,"reply_packets":2,"reply_bytes":2,
                "start":"2026-01-01T00:00:00Z","end":"2026-01-01T00:00:01Z","tcp_flags":"",
                "reply_tcp_flags":"","orientation":"observed","end_reason":"idle-timeout","community_id":""}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r.total_packets(), r.total_bytes()), (u64::MAX, u64::MAX));
    }

    #[test]
    fn record_json_has_schema_field_order_and_omits_absent_fields() {
        let record = FlowRecord {
            src: IpAddr::from([10, 244, 1, 5]),
            src_port: Some(43512),
            dst: IpAddr::from([10, 96, 0, 10]),
            dst_port: Some(53),
            proto: Protocol::UDP,
            icmp_type: None,
            icmp_code: None,
            icmp_id: None,
            packets: 1,
            bytes: 74,
            reply_packets: 1,
            reply_bytes: 120,
            start: Timestamp(1_795_342_800_123_456_000),
            end: Timestamp(1_795_342_800_124_001_000),
            tcp_flags: TcpFlags(0),
            reply_tcp_flags: TcpFlags(0),
            orientation: Orientation::Observed,
            end_reason: EndReason::EndOfCapture,
            community_id: String::new(),
            observed_at: None,
        };
        let json = serde_json::to_string(&record).unwrap_or_default();
        assert!(json.starts_with(r#"{"src":"10.244.1.5","src_port":43512,"dst":"10.96.0.10","dst_port":53,"proto":"UDP","packets":1,"bytes":74,"reply_packets":1,"reply_bytes":120,"start":"2026-11-22T10:20:00.123456Z""#), "{json}");
        let back: FlowRecord = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, record);
    }

    #[test]
    fn one_definition_of_an_answered_connection() {
        let outcome = |proto: Protocol, replies: u64, flags: &str| {
            let mut r: FlowRecord = serde_json::from_str(r#"{"src":"10.0.0.1","dst":"10.0.0.2","proto":"TCP","packets":1,"bytes":60,"reply_packets":0,"reply_bytes":0,"start":"2026-11-22T10:00:00Z","end":"2026-11-22T10:00:00Z","tcp_flags":"S","orientation":"observed","community_id":"1:x"}"#)
                .unwrap_or_else(|e| panic!("{e}"));
            r.proto = proto;
            r.reply_packets = replies;
            r.reply_tcp_flags =
                serde_json::from_value(serde_json::json!(flags)).unwrap_or_default();
            r.outcome()
        };
        use ConnectionOutcome::*;
        // TCP: the handshake, or data, is an answer, whatever ended the connection after it.
        assert_eq!(outcome(Protocol::TCP, 3, "SA"), Answered);
        assert_eq!(outcome(Protocol::TCP, 5, "FSRPA"), Answered);
        assert_eq!(outcome(Protocol::TCP, 2, "PA"), Answered);
        // Picked up mid-connection: ACKs and FINs from the responder still answer.
        assert_eq!(outcome(Protocol::TCP, 2, "FA"), Answered);
        // A reset alone is a refusal (a closed port, a REJECT rule), silence is unanswered.
        assert_eq!(outcome(Protocol::TCP, 1, "RA"), Refused);
        assert_eq!(outcome(Protocol::TCP, 1, "R"), Refused);
        assert_eq!(outcome(Protocol::TCP, 0, ""), Unanswered);
        // Other protocols: any reply.
        assert_eq!(outcome(Protocol::UDP, 1, ""), Answered);
        assert_eq!(outcome(Protocol::UDP, 0, ""), Unanswered);
        assert_eq!(outcome(Protocol::ICMP, 1, ""), Answered);
        assert!(Answered.answered() && !Refused.answered() && !Unanswered.answered());
    }

    #[test]
    fn fast_json_writer_is_byte_identical_to_serde() {
        let base: FlowRecord = serde_json::from_str(r#"{"src":"10.0.0.1","dst":"10.0.0.2","proto":47,"packets":0,"bytes":0,"reply_packets":0,"reply_bytes":0,"start":"1970-01-01T00:00:00Z","end":"2262-04-11T23:47:16.854775807Z","tcp_flags":"","orientation":"inferred","community_id":"1:x"}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut variants = vec![base.clone()];
        let mut v = base.clone();
        v.src = "fd00::1".parse().unwrap_or(v.src);
        v.dst = "::ffff:10.0.0.2".parse().unwrap_or(v.dst);
        v.proto = Protocol::ICMPV6;
        (v.icmp_type, v.icmp_code, v.icmp_id) = (Some(128), Some(0), Some(65535));
        v.packets = u64::MAX;
        v.tcp_flags = TcpFlags(0xff);
        v.end_reason = EndReason::TcpReused;
        variants.push(v);
        let mut v = base.clone();
        (v.src_port, v.dst_port, v.proto) = (Some(0), Some(65535), Protocol::TCP);
        v.community_id = "weird \"quoted\"\n".into();
        v.start = Timestamp(-5);
        variants.push(v);
        for reason in [
            EndReason::IdleTimeout,
            EndReason::ActiveTimeout,
            EndReason::TcpClosed,
            EndReason::Evicted,
        ] {
            let mut v = base.clone();
            v.end_reason = reason;
            variants.push(v);
        }
        for r in variants {
            let mut fast = Vec::new();
            r.write_json_line(&mut fast);
            let mut slow = serde_json::to_vec(&r).unwrap_or_default();
            slow.push(b'\n');
            assert_eq!(
                String::from_utf8_lossy(&fast),
                String::from_utf8_lossy(&slow)
            );
        }
    }
}

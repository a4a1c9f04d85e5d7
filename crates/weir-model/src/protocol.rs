//! IP protocol numbers with the names weir prints.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IP protocol number (IPv4 `protocol`, IPv6 final `next header`).
///
/// Serializes as `"TCP"`, `"UDP"`, `"SCTP"`, `"ICMP"`, `"ICMPv6"`, or the bare number for any other protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Protocol(pub u8);

impl Protocol {
    /// ICMP for IPv4 (1).
    pub const ICMP: Protocol = Protocol(1);
    /// TCP (6).
    pub const TCP: Protocol = Protocol(6);
    /// UDP (17).
    pub const UDP: Protocol = Protocol(17);
    /// ICMP for IPv6 (58).
    pub const ICMPV6: Protocol = Protocol(58);
    /// SCTP (132).
    pub const SCTP: Protocol = Protocol(132);

    /// The name weir prints, if the protocol has one.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Protocol::TCP => "TCP",
            Protocol::UDP => "UDP",
            Protocol::SCTP => "SCTP",
            Protocol::ICMP => "ICMP",
            Protocol::ICMPV6 => "ICMPv6",
            _ => return None,
        })
    }

    /// A Kubernetes `protocol` field: `TCP` when absent, `TCP`, `UDP` or `SCTP` exactly as the API spells them;
    /// `None` for anything else.
    pub fn from_kubernetes(field: Option<&str>) -> Option<Protocol> {
        match field {
            None | Some("TCP") => Some(Protocol::TCP),
            Some("UDP") => Some(Protocol::UDP),
            Some("SCTP") => Some(Protocol::SCTP),
            Some(_) => None,
        }
    }

    /// Parses a protocol name (case-insensitive) or number.
    pub fn parse(text: &str) -> Option<Protocol> {
        let known = [
            Protocol::TCP,
            Protocol::UDP,
            Protocol::SCTP,
            Protocol::ICMP,
            Protocol::ICMPV6,
        ];
        known
            .into_iter()
            .find(|p| p.name().is_some_and(|n| n.eq_ignore_ascii_case(text)))
            .or_else(|| text.parse::<u8>().ok().map(Protocol))
    }

    /// Whether flows of this protocol are keyed by ports (TCP, UDP, SCTP).
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::TCP | Protocol::UDP | Protocol::SCTP)
    }

    /// Whether this is ICMP or ICMPv6.
    pub fn is_icmp(self) -> bool {
        matches!(self, Protocol::ICMP | Protocol::ICMPV6)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.name() {
            Some(name) => serializer.serialize_str(name),
            None => serializer.serialize_u8(self.0),
        }
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ProtocolVisitor;
        impl Visitor<'_> for ProtocolVisitor {
            type Value = Protocol;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a protocol name (TCP, UDP, SCTP, ICMP, ICMPv6) or number 0-255")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Protocol, E> {
                u8::try_from(v)
                    .map(Protocol)
                    .map_err(|_| E::custom(format!("protocol number {v} is out of range 0-255")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Protocol, E> {
                Protocol::parse(v).ok_or_else(|| E::custom(format!("unknown protocol {v:?}")))
            }
        }
        deserializer.deserialize_any(ProtocolVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_json() {
        for (p, json) in [
            (Protocol::TCP, "\"TCP\""),
            (Protocol::ICMPV6, "\"ICMPv6\""),
            (Protocol(47), "47"),
        ] {
            assert_eq!(serde_json::to_string(&p).ok().as_deref(), Some(json));
            assert_eq!(serde_json::from_str::<Protocol>(json).ok(), Some(p));
        }
        assert!(serde_json::from_str::<Protocol>("300").is_err());
        assert_eq!(Protocol::parse("udp"), Some(Protocol::UDP));
    }
}

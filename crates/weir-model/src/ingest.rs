//! The agent → aggregator protocol (`POST /api/v1/ingest`).
//!
//! A request carries one batch: a body of flow records and these headers. The body is in the compact binary form
//! of [`crate::wire`] (content type `application/x-weir-flows`, what `weir agent` sends by default) or, with any
//! other content type, JSON lines (the stable flow record format; `weir agent --wire json`). Batches are numbered per agent run (`epoch`, random at agent start) from 1 without gaps. The
//! aggregator applies batch `n` only after `n - 1`, answers with the last batch it has applied and the last one
//! that is durable (`acked`), and the agent keeps every batch until it is acked, so an aggregator restart loses
//! nothing: the agent sends again from the first unacked batch and the aggregator ignores what it already has.
//! A request without `x-weir-seq` and without a body is a heartbeat: it only reports the agent's counters and
//! fetches the cursor.

use serde::{Deserialize, Serialize};

/// The node the agent runs on.
pub const HEADER_NODE: &str = "x-weir-node";
/// The agent run, 16 hex digits.
pub const HEADER_EPOCH: &str = "x-weir-epoch";
/// The batch number (absent on heartbeats).
pub const HEADER_SEQ: &str = "x-weir-seq";
/// The oldest batch the agent still holds: batches before it that the aggregator lacks were dropped by the
/// agent (its buffer was full) and are not coming.
pub const HEADER_OLDEST: &str = "x-weir-oldest";
/// The agent's counters, [`AgentCounters`] in its header form.
pub const HEADER_COUNTERS: &str = "x-weir-counters";
/// The addresses of the node's own interfaces, [`InterfaceAddress::to_header`]: the node talks to its pods
/// from some of them (a bridge, a tunnel device) inside the pod range, where the cluster's objects do not say
/// whose they are.
pub const HEADER_NODE_ADDRESSES: &str = "x-weir-node-addresses";

/// The most interface addresses one agent reports (a node with more is not one weir can tell apart anyway).
pub const MAX_NODE_ADDRESSES: usize = 64;

/// An address of one of the node's interfaces, as its agent reports it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InterfaceAddress {
    /// The interface (`cni0`, `cilium_host`, `eth0`).
    pub interface: String,
    /// The address.
    pub ip: std::net::IpAddr,
}

impl InterfaceAddress {
    /// Whether the address can tell this node apart from the others and is worth reporting: not loopback,
    /// link-local, multicast or unspecified (those are alike on every node), and on an interface whose name
    /// survives the header form. `kube-ipvs0` holds every Service ClusterIP in IPVS mode: never a source.
    pub fn reportable(&self) -> bool {
        let ip = self.ip;
        let local = match ip {
            std::net::IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local() || v4.is_multicast(),
            std::net::IpAddr::V6(v6) => {
                v6.is_loopback() || v6.is_multicast() || (v6.segments()[0] & 0xffc0) == 0xfe80
            }
        };
        !local
            && !ip.is_unspecified()
            && interface_name_ok(&self.interface)
            && self.interface != "kube-ipvs0"
    }

    /// The header form: `cni0=10.244.1.1,eth0=192.168.0.10`.
    pub fn to_header(addresses: &[InterfaceAddress]) -> String {
        addresses
            .iter()
            .map(|a| format!("{}={}", a.interface, a.ip))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Parses the header form; at most [`MAX_NODE_ADDRESSES`], each a valid interface name and address.
    pub fn parse_header(text: &str) -> Result<Vec<InterfaceAddress>, HeaderError> {
        let mut out = Vec::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if out.len() == MAX_NODE_ADDRESSES {
                return Err(HeaderError::TooManyAddresses);
            }
            let (interface, ip) = pair
                .split_once('=')
                .ok_or_else(|| HeaderError::NotAPair(pair.to_owned()))?;
            if !interface_name_ok(interface) {
                return Err(HeaderError::NotAnInterface(interface.to_owned()));
            }
            let ip = ip.parse().map_err(|_| HeaderError::NotAnAddress {
                interface: interface.to_owned(),
                value: ip.to_owned(),
            })?;
            out.push(InterfaceAddress {
                interface: interface.to_owned(),
                ip,
            });
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// Linux interface names: 1 to 15 bytes; here only the characters real names use, so the header form cannot
/// be broken by one.
fn interface_name_ok(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'@'))
}

/// Why a header of an agent's request could not be read. Never retryable as sent: the request is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// An item is not `name=value`.
    #[error("{0:?} is not name=value")]
    NotAPair(String),
    /// A counter's value is not a number.
    #[error("{name}: {value:?} is not a count")]
    NotACount {
        /// The counter.
        name: String,
        /// What was sent.
        value: String,
    },
    /// More addresses than [`MAX_NODE_ADDRESSES`].
    #[error("more than {MAX_NODE_ADDRESSES} addresses")]
    TooManyAddresses,
    /// Not an interface name.
    #[error("{0:?} is not an interface name")]
    NotAnInterface(String),
    /// Not an address.
    #[error("{interface}: {value:?} is not an IP address")]
    NotAnAddress {
        /// The interface.
        interface: String,
        /// What was sent.
        value: String,
    },
}

/// What an agent counted since it started, reported with every request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCounters {
    /// Packets read from the rings.
    pub packets: u64,
    /// Packets the kernel dropped because a ring was full.
    pub kernel_drops: u64,
    /// Flows closed early because a flow table was full (their records were still sent).
    pub table_evictions: u64,
    /// Packets not accounted to any flow (malformed or unsupported).
    pub skipped_packets: u64,
    /// Flow records made.
    pub records: u64,
    /// Flow records dropped because the agent's buffer was full (the aggregator was unreachable too long).
    pub buffer_drops: u64,
    /// Interfaces being captured.
    pub interfaces: u64,
}

const FIELDS: [&str; 7] = [
    "packets",
    "kernel_drops",
    "table_evictions",
    "skipped_packets",
    "records",
    "buffer_drops",
    "interfaces",
];

impl AgentCounters {
    fn values(&self) -> [u64; 7] {
        [
            self.packets,
            self.kernel_drops,
            self.table_evictions,
            self.skipped_packets,
            self.records,
            self.buffer_drops,
            self.interfaces,
        ]
    }

    /// The header form: `packets=1,kernel_drops=0,...`.
    pub fn to_header(&self) -> String {
        FIELDS
            .iter()
            .zip(self.values())
            .map(|(name, v)| format!("{name}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Parses the header form; unknown names are ignored (a newer agent), malformed pairs are an error.
    pub fn parse_header(text: &str) -> Result<AgentCounters, HeaderError> {
        let mut c = AgentCounters::default();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| HeaderError::NotAPair(pair.to_owned()))?;
            let value: u64 = value.parse().map_err(|_| HeaderError::NotACount {
                name: name.to_owned(),
                value: value.to_owned(),
            })?;
            match name {
                "packets" => c.packets = value,
                "kernel_drops" => c.kernel_drops = value,
                "table_evictions" => c.table_evictions = value,
                "skipped_packets" => c.skipped_packets = value,
                "records" => c.records = value,
                "buffer_drops" => c.buffer_drops = value,
                "interfaces" => c.interfaces = value,
                _ => {}
            }
        }
        Ok(c)
    }
}

/// The aggregator's answer to an ingest request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestReply {
    /// The last batch applied (0: none).
    pub applied: u64,
    /// The last batch stored durably: the agent may forget it and every batch before it.
    pub acked: u64,
    /// Set when the batch was not the next one: send from this batch on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::{AgentCounters, InterfaceAddress, MAX_NODE_ADDRESSES};

    #[test]
    fn node_addresses_round_trip_and_bad_ones_are_refused() {
        let a = |interface: &str, ip: &str| InterfaceAddress {
            interface: interface.into(),
            ip: ip.parse().unwrap_or_else(|e| panic!("{e}")),
        };
        let list = vec![a("cni0", "10.244.1.1"), a("eth0", "fd00::5")];
        assert_eq!(
            InterfaceAddress::parse_header(&InterfaceAddress::to_header(&list)),
            Ok(list)
        );
        for bad in [
            "cni0",
            "=10.0.0.1",
            "a b=10.0.0.1",
            "cni0=10.0.0",
            "sixteen-chars-xx=10.0.0.1",
        ] {
            assert!(InterfaceAddress::parse_header(bad).is_err(), "{bad}");
        }
        let many = (0..=MAX_NODE_ADDRESSES)
            .map(|i| format!("e{i}=10.0.0.{}", i % 250))
            .collect::<Vec<_>>()
            .join(",");
        assert!(InterfaceAddress::parse_header(&many).is_err());
        assert!(!a("lo", "127.0.0.1").reportable());
        assert!(!a("eth0", "169.254.20.10").reportable());
        assert!(!a("eth0", "fe80::1").reportable());
        assert!(!a("kube-ipvs0", "10.96.0.1").reportable());
        assert!(a("cilium_host", "10.0.1.77").reportable());
    }

    #[test]
    fn counters_round_trip_through_the_header() {
        let c = AgentCounters {
            packets: 10,
            kernel_drops: 1,
            table_evictions: 2,
            skipped_packets: 3,
            records: 4,
            buffer_drops: 5,
            interfaces: 6,
        };
        assert_eq!(AgentCounters::parse_header(&c.to_header()), Ok(c));
        assert!(AgentCounters::parse_header("packets=x").is_err());
        assert_eq!(
            AgentCounters::parse_header("future=1,packets=2").map(|c| c.packets),
            Ok(2)
        );
    }
}

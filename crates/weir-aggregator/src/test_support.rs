//! Records for the unit tests of this crate.

use std::net::IpAddr;

use weir_model::{FlowRecord, Protocol, Timestamp};

/// A one-packet TCP record from `src` to `dst:port`, spanning `start`..`end` (ns).
pub(crate) fn tcp(src: IpAddr, dst: IpAddr, port: u16, start: i64, end: i64) -> FlowRecord {
    FlowRecord {
        src,
        src_port: Some(40000),
        dst,
        dst_port: Some(port),
        proto: Protocol::TCP,
        icmp_type: None,
        icmp_code: None,
        icmp_id: None,
        packets: 1,
        bytes: 60,
        reply_packets: 0,
        reply_bytes: 0,
        start: Timestamp(start),
        end: Timestamp(end),
        tcp_flags: Default::default(),
        reply_tcp_flags: Default::default(),
        orientation: Default::default(),
        end_reason: Default::default(),
        community_id: String::new(),
        observed_at: None,
    }
}

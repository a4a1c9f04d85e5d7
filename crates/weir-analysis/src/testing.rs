//! Records for the unit tests.

use std::net::IpAddr;

use weir_model::{EndReason, FlowRecord, Orientation, Protocol, TcpFlags, Timestamp};

/// A TCP record from `src:40000` to `dst:port`, starting at `start_ms`, lasting a microsecond.
pub(crate) fn tcp(src: &str, dst: &str, port: u16, start_ms: i64, packets: u64) -> FlowRecord {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap_or_else(|e| panic!("{s}: {e}"));
    FlowRecord {
        src: ip(src),
        src_port: Some(40_000),
        dst: ip(dst),
        dst_port: Some(port),
        proto: Protocol::TCP,
        icmp_type: None,
        icmp_code: None,
        icmp_id: None,
        packets,
        bytes: packets * 60,
        reply_packets: 0,
        reply_bytes: 0,
        start: Timestamp(start_ms * 1_000_000),
        end: Timestamp(start_ms * 1_000_000 + 1_000),
        tcp_flags: TcpFlags(TcpFlags::SYN),
        reply_tcp_flags: TcpFlags(0),
        orientation: Orientation::Observed,
        end_reason: EndReason::IdleTimeout,
        community_id: String::new(),
        observed_at: None,
    }
}

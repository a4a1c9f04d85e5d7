//! Records for the unit tests of this crate.

use std::net::IpAddr;

use weir_model::{FlowRecord, Protocol, Timestamp};

/// A one-packet TCP record from `src` to `dst:port`, spanning `start`..`end` (ns).
pub(crate) fn tcp(src: IpAddr, dst: IpAddr, port: u16, start: i64, end: i64) -> FlowRecord {
    FlowRecord {
        packets: 1,
        bytes: 60,
        ..FlowRecord::new(
            (src, Some(40000)),
            (dst, Some(port)),
            Protocol::TCP,
            Timestamp(start),
            Timestamp(end),
        )
    }
}

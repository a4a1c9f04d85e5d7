//! Plain data shared by every weir crate.
//!
//! This crate holds the types that cross crate boundaries and the stable wire formats built from them: the flow
//! record (`weir flows --format jsonl`, documented in `docs/flow-record.md`), protocols, timestamps, link types
//! and observation points. It does no I/O and has no logic beyond conversions and formatting, so every other
//! crate can depend on it.

#![deny(missing_docs)]

mod alert;
mod cidr;
mod community_id;
mod endpoint;
mod flow;
pub mod ingest;
mod link;
mod protocol;
mod time;
mod verdict;
pub mod wire;

pub use alert::{Alert, AlertEndpoint, AlertEvidence, AlertKind, EndpointKind, Severity};
pub use cidr::Cidr;
pub use community_id::{community_id_v1, icmp_counterpart};
pub use endpoint::EndpointKey;
pub use flow::{
    ConnectionOutcome, Direction, EndReason, FlowRecord, ObservationPoint, Orientation, TcpFlags,
};
pub use link::LinkType;
pub use protocol::Protocol;
pub use time::{Timestamp, TimestampParseError, duration_nanos, parse_duration};
pub use verdict::{EdgeVerdict, FlowVerdict};

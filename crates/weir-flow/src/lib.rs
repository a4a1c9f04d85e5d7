//! Packets to flows, with no I/O.
//!
//! [`decode`] turns a captured frame into the few fields a flow needs (or a counted [`SkipReason`]);
//! [`FlowTable`] folds decoded packets into bidirectional flows; [`FlowExtractor`] joins the two with IP
//! fragment tracking and per-reason counters, and is what capture front ends drive. Nothing here reads files,
//! spawns threads or looks at the system clock: callers bring packets and time, which keeps this crate fast to
//! test, fuzz and benchmark.

#![deny(missing_docs)]

mod decode;
mod extract;
mod table;

pub use decode::{DecodedPacket, Fragment, SkipReason, address_pair, decode};
pub use extract::{ExtractStats, FlowExtractor, SkipCounts, route};
pub use table::{FinishedFlow, FlowConfig, FlowKey, FlowTable, TableStats, is_service_port};

/// The seeded hasher of flow keys. Tables that split one packet stream must share one (clone it).
pub type FlowHasher = foldhash::fast::RandomState;

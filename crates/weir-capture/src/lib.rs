//! Packet sources for weir.
//!
//! Today: capture files. [`FileSource`] reads pcap (microsecond and nanosecond, either byte order, and the
//! "modified" Kuznetzov variant) and pcapng (any number of sections and interfaces, any `if_tsresol` and
//! `if_tsoffset`), plain or gzip-compressed, from a path or standard input.
//!
//! # Why batches
//! libpcap hands out one record per call and copies it; that alone caps near 4 M packets/s. A [`FileSource`]
//! instead fills a large [`Batch`] buffer with one sequential `read` and describes the complete records in it in
//! place: packet data is never copied, and only a record that straddles two reads is moved. A batch is plain owned
//! data, so a reader thread can hand whole batches to worker threads.
//!
//! # Untrusted input
//! Capture files are untrusted. The one entry point is [`FileSource::new`] / [`FileSource::open`]; after it no
//! method panics on any input, record lengths are bounded ([`MAX_RECORD_LEN`]) so memory stays bounded, a file that
//! is not a capture is an error that says what was found, corruption mid-file ends the file with an error after the
//! packets before it are delivered, and a truncated last record is a [`CaptureWarning`].

#![deny(missing_docs)]

mod batch;
mod error;
mod file;
mod format;
#[cfg(target_os = "linux")]
mod pnet;
#[cfg(target_os = "linux")]
mod ring;

pub use batch::{Batch, Packet};
pub use error::{CaptureError, CaptureWarning};
pub use file::{FileSource, ReaderStats};
pub use format::{CaptureFormat, MAX_RECORD_LEN};
#[cfg(target_os = "linux")]
pub use pnet::{PnetSource, host_addresses};
#[cfg(target_os = "linux")]
pub use ring::{KernelStats, LiveError, RingConfig, RingSource, interface_index, wait_any};

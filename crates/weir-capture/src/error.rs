//! Errors and warnings of capture sources.

use std::io;

/// A capture that cannot be read (further).
///
/// None of these is retryable: they describe the input, not a passing condition.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The file could not be opened or read.
    #[error("{name}: {source}")]
    Io {
        /// File name (`-` for standard input).
        name: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The input holds no bytes at all.
    #[error("{name}: empty file, not a capture")]
    Empty {
        /// File name.
        name: String,
    },
    /// The input does not start like a pcap or pcapng file.
    #[error("{name}: not a pcap or pcapng capture: found {found}")]
    NotACapture {
        /// File name.
        name: String,
        /// What the first bytes look like.
        found: String,
    },
    /// The input is damaged at `offset`; the packets before it were delivered.
    #[error("{name}: corrupt capture at byte {offset}: {reason}; the packets before it were read")]
    Corrupt {
        /// File name.
        name: String,
        /// Offset of the damaged record, in the (decompressed) capture.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

/// Something wrong with the input that did not stop reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureWarning {
    /// The file ends in the middle of a record, as when the capturing program was killed.
    TruncatedRecord {
        /// File name.
        name: String,
        /// Offset of the incomplete record.
        offset: u64,
        /// Bytes present.
        have: usize,
        /// Bytes the record needs (header and data), when the header was complete.
        need: Option<usize>,
    },
    /// pcapng packet blocks that named an interface no Interface Description Block defined.
    UnknownInterface {
        /// File name.
        name: String,
        /// Number of such blocks (their packets are skipped).
        count: u64,
    },
}

impl std::fmt::Display for CaptureWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaptureWarning::TruncatedRecord {
                name,
                offset,
                have,
                need,
            } => {
                write!(
                    f,
                    "{name}: the last record is truncated at byte {offset} ({have} bytes"
                )?;
                if let Some(need) = need {
                    write!(f, " of {need}")?;
                }
                write!(
                    f,
                    "), as when a capture is killed; the packets before it were read"
                )
            }
            CaptureWarning::UnknownInterface { name, count } => write!(
                f,
                "{name}: {count} pcapng packet blocks name an undefined interface and were skipped"
            ),
        }
    }
}

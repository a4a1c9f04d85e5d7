//! Framing of pcap and pcapng records inside a byte buffer.
//!
//! A framer looks at the bytes from one position and says what record starts there: a packet, another block,
//! "need more bytes", or corruption. It never reads outside the slice it is given.

use weir_model::{LinkType, Timestamp};

use crate::batch::PacketMeta;

/// The largest record (pcap record or pcapng block) accepted. libpcap caps snapshots at 256 KiB for every common
/// link type; anything beyond a few MiB is a corrupt length field, and accepting it would let a 4-byte field make
/// the reader allocate without bound.
pub const MAX_RECORD_LEN: usize = 16 << 20;

/// The container format of a capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureFormat {
    /// Classic pcap.
    Pcap {
        /// Timestamps in nanoseconds (magic `a1b23c4d`) rather than microseconds.
        nanos: bool,
        /// Written big-endian.
        big_endian: bool,
        /// The "modified" (Kuznetzov) variant with 24-byte record headers.
        modified: bool,
    },
    /// pcapng.
    PcapNg,
}

impl std::fmt::Display for CaptureFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaptureFormat::Pcap {
                nanos, modified, ..
            } => write!(
                f,
                "pcap{}{}",
                if *nanos { " (ns)" } else { "" },
                if *modified { " (modified)" } else { "" }
            ),
            CaptureFormat::PcapNg => f.write_str("pcapng"),
        }
    }
}

/// What starts at a position of the buffer.
#[derive(Debug)]
pub(crate) enum Step {
    /// A packet record of the given total length.
    Packet(PacketMeta, usize),
    /// A record that is not a packet (pcapng metadata), of the given length.
    Other(usize),
    /// The record is incomplete; it needs this many bytes in all, when that is known.
    NeedMore(Option<usize>),
    /// The bytes cannot be a valid record.
    Corrupt(String),
}

fn bytes<const N: usize>(buf: &[u8], at: usize) -> Option<[u8; N]> {
    buf.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn u16_at(buf: &[u8], at: usize, big_endian: bool) -> Option<u16> {
    let b = bytes::<2>(buf, at)?;
    Some(if big_endian {
        u16::from_be_bytes(b)
    } else {
        u16::from_le_bytes(b)
    })
}

fn u32_at(buf: &[u8], at: usize, big_endian: bool) -> Option<u32> {
    let b = bytes::<4>(buf, at)?;
    Some(if big_endian {
        u32::from_be_bytes(b)
    } else {
        u32::from_le_bytes(b)
    })
}

/// Magic numbers of the first four bytes.
pub(crate) fn sniff(magic: [u8; 4]) -> Option<CaptureFormat> {
    let (nanos, modified, big_endian) = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] => (false, false, false),
        [0xa1, 0xb2, 0xc3, 0xd4] => (false, false, true),
        [0x4d, 0x3c, 0xb2, 0xa1] => (true, false, false),
        [0xa1, 0xb2, 0x3c, 0x4d] => (true, false, true),
        [0x34, 0xcd, 0xb2, 0xa1] => (false, true, false),
        [0xa1, 0xb2, 0xcd, 0x34] => (false, true, true),
        [0x0a, 0x0d, 0x0d, 0x0a] => return Some(CaptureFormat::PcapNg),
        _ => return None,
    };
    Some(CaptureFormat::Pcap {
        nanos,
        big_endian,
        modified,
    })
}

/// Length of the pcap file header.
pub(crate) const PCAP_HEADER_LEN: usize = 24;

/// Frames the records of a pcap file after its header.
#[derive(Debug)]
pub(crate) struct PcapFramer {
    big_endian: bool,
    nanos: bool,
    record_header_len: usize,
    link: LinkType,
}

impl PcapFramer {
    /// From the 24-byte file header.
    pub(crate) fn new(format: CaptureFormat, header: &[u8; PCAP_HEADER_LEN]) -> Option<PcapFramer> {
        let CaptureFormat::Pcap {
            nanos,
            big_endian,
            modified,
        } = format
        else {
            return None;
        };
        // The link type is the low 16 bits; the high bits carry FCS information.
        let network = u32_at(header, 20, big_endian)?;
        Some(PcapFramer {
            big_endian,
            nanos,
            record_header_len: if modified { 24 } else { 16 },
            link: LinkType((network & 0xffff) as u16),
        })
    }

    fn step(&self, buf: &[u8], pos: usize) -> Step {
        let rec = buf.get(pos..).unwrap_or(&[]);
        let hl = self.record_header_len;
        let (Some(secs), Some(frac), Some(caplen), Some(orig_len)) = (
            u32_at(rec, 0, self.big_endian),
            u32_at(rec, 4, self.big_endian),
            u32_at(rec, 8, self.big_endian),
            u32_at(rec, 12, self.big_endian),
        ) else {
            return Step::NeedMore(None);
        };
        if caplen as usize > MAX_RECORD_LEN {
            return Step::Corrupt(format!(
                "record claims {caplen} captured bytes, more than the {MAX_RECORD_LEN} any capture holds"
            ));
        }
        let total = hl + caplen as usize;
        if rec.len() < total {
            return Step::NeedMore(Some(total));
        }
        let frac_nanos = if self.nanos {
            i64::from(frac)
        } else {
            i64::from(frac) * 1000
        };
        let ts = Timestamp(
            i64::from(secs)
                .saturating_mul(1_000_000_000)
                .saturating_add(frac_nanos),
        );
        Step::Packet(
            PacketMeta {
                offset: pos + hl,
                caplen,
                orig_len: orig_len.max(caplen),
                ts,
                link: self.link,
                interface: 0,
                direction: None,
            },
            total,
        )
    }
}

/// Timestamp units of a pcapng interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TsResolution {
    /// 10^-n seconds.
    Decimal(u8),
    /// 2^-n seconds.
    Binary(u8),
}

#[derive(Clone, Copy, Debug)]
struct Interface {
    link: LinkType,
    snaplen: u32,
    resolution: TsResolution,
    offset_secs: i64,
}

impl Interface {
    fn timestamp(&self, units: u64) -> Timestamp {
        let nanos: u64 = match self.resolution {
            TsResolution::Decimal(n) if n <= 9 => units.saturating_mul(10u64.pow(u32::from(9 - n))),
            TsResolution::Decimal(n) => 10u64
                .checked_pow(u32::from(n - 9))
                .map_or(0, |div| units / div),
            TsResolution::Binary(n) => {
                let scaled = (u128::from(units) * 1_000_000_000) >> n.min(127);
                u64::try_from(scaled).unwrap_or(u64::MAX)
            }
        };
        let nanos = i64::try_from(nanos).unwrap_or(i64::MAX);
        Timestamp(nanos.saturating_add(self.offset_secs.saturating_mul(1_000_000_000)))
    }
}

const SHB: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];
const IDB: u32 = 1;
const OBSOLETE_PB: u32 = 2;
const SPB: u32 = 3;
const EPB: u32 = 6;
const OPT_END: u16 = 0;
const OPT_IF_TSRESOL: u16 = 9;
const OPT_IF_TSOFFSET: u16 = 14;

/// Frames the blocks of a pcapng file, keeping the interfaces of the current section.
#[derive(Debug, Default)]
pub(crate) struct PcapNgFramer {
    big_endian: bool,
    interfaces: Vec<Interface>,
    /// Packet blocks whose interface was never described.
    pub(crate) unknown_interface: u64,
}

impl PcapNgFramer {
    fn step(&mut self, buf: &[u8], pos: usize) -> Step {
        let block = buf.get(pos..).unwrap_or(&[]);
        let Some(kind) = bytes::<4>(block, 0) else {
            return Step::NeedMore(None);
        };
        if kind == SHB {
            // The byte order of a section is announced by its own header.
            match bytes::<4>(block, 8) {
                None => return Step::NeedMore(None),
                Some([0x1a, 0x2b, 0x3c, 0x4d]) => self.big_endian = true,
                Some([0x4d, 0x3c, 0x2b, 0x1a]) => self.big_endian = false,
                Some(other) => {
                    return Step::Corrupt(format!(
                        "section header has byte-order magic {other:02x?}, expected 1a2b3c4d"
                    ));
                }
            }
        }
        let be = self.big_endian;
        let Some(total) = u32_at(block, 4, be).map(|t| t as usize) else {
            return Step::NeedMore(None);
        };
        if total < 12 || total % 4 != 0 || total > MAX_RECORD_LEN + 64 {
            return Step::Corrupt(format!("block length {total} is invalid"));
        }
        if block.len() < total {
            return Step::NeedMore(Some(total));
        }
        let block = &block[..total];
        if u32_at(block, total - 4, be) != Some(total as u32) {
            return Step::Corrupt(format!(
                "block length {total} does not match its trailing copy"
            ));
        }
        if kind == SHB {
            self.interfaces.clear();
            return Step::Other(total);
        }
        let kind = u32_at(block, 0, be).unwrap_or(0);
        let body_end = total - 4;
        match kind {
            IDB => match self.interface_description(block, body_end) {
                Ok(()) => Step::Other(total),
                Err(reason) => Step::Corrupt(reason.to_string()),
            },
            EPB | OBSOLETE_PB => {
                let (iface, ts_high, ts_low, caplen, orig_len) = if kind == EPB {
                    (
                        u32_at(block, 8, be),
                        u32_at(block, 12, be),
                        u32_at(block, 16, be),
                        u32_at(block, 20, be),
                        u32_at(block, 24, be),
                    )
                } else {
                    (
                        u16_at(block, 8, be).map(u32::from),
                        u32_at(block, 12, be),
                        u32_at(block, 16, be),
                        u32_at(block, 20, be),
                        u32_at(block, 24, be),
                    )
                };
                let (Some(iface), Some(hi), Some(lo), Some(caplen), Some(orig_len)) =
                    (iface, ts_high, ts_low, caplen, orig_len)
                else {
                    return Step::Corrupt(format!("packet block of {total} bytes is too short"));
                };
                if 28 + caplen as usize > body_end {
                    return Step::Corrupt(format!(
                        "packet block of {total} bytes claims {caplen} captured bytes"
                    ));
                }
                self.packet(
                    pos,
                    28,
                    iface,
                    (u64::from(hi) << 32) | u64::from(lo),
                    caplen,
                    orig_len,
                    total,
                )
            }
            SPB => {
                let Some(orig_len) = u32_at(block, 8, be) else {
                    return Step::Corrupt(format!(
                        "simple packet block of {total} bytes is too short"
                    ));
                };
                let snaplen = self
                    .interfaces
                    .first()
                    .map_or(u32::MAX, |i| match i.snaplen {
                        0 => u32::MAX,
                        s => s,
                    });
                let room = u32::try_from(body_end.saturating_sub(12)).unwrap_or(u32::MAX);
                let caplen = orig_len.min(snaplen).min(room);
                // Simple packet blocks carry no timestamp.
                self.packet(pos, 12, 0, 0, caplen, orig_len, total)
            }
            _ => Step::Other(total),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn packet(
        &mut self,
        pos: usize,
        data_at: usize,
        iface: u32,
        ts_units: u64,
        caplen: u32,
        orig_len: u32,
        total: usize,
    ) -> Step {
        let Some(interface) = self.interfaces.get(iface as usize) else {
            self.unknown_interface += 1;
            return Step::Other(total);
        };
        Step::Packet(
            PacketMeta {
                offset: pos + data_at,
                caplen,
                orig_len: orig_len.max(caplen),
                ts: interface.timestamp(ts_units),
                link: interface.link,
                interface: iface,
                direction: None,
            },
            total,
        )
    }

    fn interface_description(&mut self, block: &[u8], body_end: usize) -> Result<(), IdbError> {
        let be = self.big_endian;
        let (Some(link), Some(snaplen)) = (u16_at(block, 8, be), u32_at(block, 12, be)) else {
            return Err(IdbError::TooShort);
        };
        let mut iface = Interface {
            link: LinkType(link),
            snaplen,
            resolution: TsResolution::Decimal(6),
            offset_secs: 0,
        };
        // Options are advisory: a malformed option list ends option parsing, it does not void the interface.
        let mut at = 16;
        while at + 4 <= body_end {
            let (Some(code), Some(len)) = (u16_at(block, at, be), u16_at(block, at + 2, be)) else {
                break;
            };
            let value_at = at + 4;
            let len = usize::from(len);
            if code == OPT_END || value_at + len > body_end {
                break;
            }
            match (code, len) {
                (OPT_IF_TSRESOL, 1) => {
                    let v = block[value_at];
                    iface.resolution = if v & 0x80 != 0 {
                        TsResolution::Binary(v & 0x7f)
                    } else {
                        TsResolution::Decimal(v)
                    };
                }
                (OPT_IF_TSOFFSET, 8) => {
                    if let Some(b) = bytes::<8>(block, value_at) {
                        iface.offset_secs = if be {
                            i64::from_be_bytes(b)
                        } else {
                            i64::from_le_bytes(b)
                        };
                    }
                }
                _ => {}
            }
            at = value_at + len.next_multiple_of(4);
        }
        // A file with thousands of interfaces is corrupt or hostile; bound the table.
        if self.interfaces.len() >= 65_536 {
            return Err(IdbError::TooMany);
        }
        self.interfaces.push(iface);
        Ok(())
    }
}

/// Why an interface description block was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IdbError {
    #[error("interface description block is too short")]
    TooShort,
    /// A file with thousands of interfaces is corrupt or hostile: the table is bounded.
    #[error("more than 65536 interfaces in one section")]
    TooMany,
}

/// A framer for either format.
#[derive(Debug)]
pub(crate) enum Framer {
    Pcap(PcapFramer),
    PcapNg(PcapNgFramer),
}

impl Framer {
    pub(crate) fn step(&mut self, buf: &[u8], pos: usize) -> Step {
        match self {
            Framer::Pcap(f) => f.step(buf, pos),
            Framer::PcapNg(f) => f.step(buf, pos),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcapng_resolutions_convert_to_nanoseconds() {
        let iface = |resolution| Interface {
            link: LinkType::ETHERNET,
            snaplen: 0,
            resolution,
            offset_secs: 0,
        };
        assert_eq!(
            iface(TsResolution::Decimal(6)).timestamp(1_500_000).0,
            1_500_000_000
        );
        assert_eq!(iface(TsResolution::Decimal(9)).timestamp(7).0, 7);
        assert_eq!(iface(TsResolution::Decimal(12)).timestamp(7_000).0, 7);
        assert_eq!(
            iface(TsResolution::Binary(10)).timestamp(1024).0,
            1_000_000_000
        );
        assert_eq!(iface(TsResolution::Decimal(120)).timestamp(u64::MAX).0, 0);
        let mut with_offset = iface(TsResolution::Decimal(0));
        with_offset.offset_secs = 10;
        assert_eq!(with_offset.timestamp(1).0, 11_000_000_000);
    }

    #[test]
    fn pcap_framer_rejects_absurd_lengths_and_waits_for_partial_records() {
        let mut header = [0u8; PCAP_HEADER_LEN];
        header[20] = 1;
        let format = sniff([0xd4, 0xc3, 0xb2, 0xa1]);
        let framer = format.and_then(|f| PcapFramer::new(f, &header));
        let Some(framer) = framer else {
            panic!("framer")
        };
        let mut rec = vec![0u8; 16];
        rec[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(framer.step(&rec, 0), Step::Corrupt(_)));
        rec[8..12].copy_from_slice(&10u32.to_le_bytes());
        assert!(matches!(framer.step(&rec, 0), Step::NeedMore(Some(26))));
        assert!(matches!(framer.step(&rec[..7], 0), Step::NeedMore(None)));
    }
}

//! Batches: one buffer of raw capture bytes and the packet records found in it.

use weir_model::{Direction, LinkType, Timestamp};

/// The default size of a batch buffer: large enough that one `read` per batch costs little per packet, small
/// enough to stay in the L2 cache while the packets are decoded.
pub(crate) const DEFAULT_BATCH_BYTES: usize = 512 * 1024;

/// Where one packet lies in a batch buffer, and its metadata.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PacketMeta {
    pub(crate) offset: usize,
    pub(crate) caplen: u32,
    pub(crate) orig_len: u32,
    pub(crate) ts: Timestamp,
    pub(crate) link: LinkType,
    pub(crate) interface: u32,
    pub(crate) direction: Option<Direction>,
}

/// One packet of a batch.
#[derive(Clone, Copy, Debug)]
pub struct Packet<'a> {
    /// Capture time.
    pub timestamp: Timestamp,
    /// Link-layer header type of `data`.
    pub link: LinkType,
    /// Captured bytes (possibly fewer than `orig_len`, when the capture used a snap length).
    pub data: &'a [u8],
    /// Length of the packet on the wire.
    pub orig_len: u32,
    /// Interface index within the capture (pcapng interface id; 0 for pcap; the kernel's ifindex live).
    pub interface: u32,
    /// Live, on the host side of a pod's veth: whether the pod sent the packet or receives it.
    pub direction: Option<Direction>,
}

/// A buffer of capture bytes and the packets it holds. Reuse one batch across calls to avoid allocations.
#[derive(Debug)]
pub struct Batch {
    pub(crate) buf: Vec<u8>,
    pub(crate) filled: usize,
    pub(crate) packets: Vec<PacketMeta>,
}

impl Default for Batch {
    fn default() -> Self {
        Batch::with_capacity(DEFAULT_BATCH_BYTES)
    }
}

impl Batch {
    /// A batch whose buffer holds `bytes` bytes (it grows when a single record is larger).
    pub fn with_capacity(bytes: usize) -> Batch {
        Batch {
            buf: vec![0; bytes.max(64)],
            filled: 0,
            packets: Vec::with_capacity(bytes / 64),
        }
    }

    /// Appends a copy of a packet held elsewhere (a live ring's block, a pnet buffer), growing the buffer when
    /// it is full.
    pub(crate) fn push_copy(&mut self, p: Packet<'_>) {
        let start = self.filled;
        let end = start + p.data.len();
        if end > self.buf.len() {
            let grown = end.max(self.buf.len() * 2);
            self.buf.resize(grown, 0);
        }
        self.buf[start..end].copy_from_slice(p.data);
        self.filled = end;
        self.packets.push(PacketMeta {
            offset: start,
            caplen: p.data.len() as u32,
            orig_len: p.orig_len,
            ts: p.timestamp,
            link: p.link,
            interface: p.interface,
            direction: p.direction,
        });
    }

    /// Number of packets.
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    /// Whether the batch holds no packet.
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// The packet at `index` (capture order), if the batch holds that many.
    #[inline]
    pub fn get(&self, index: usize) -> Option<Packet<'_>> {
        let meta = self.packets.get(index)?;
        Some(Packet {
            timestamp: meta.ts,
            link: meta.link,
            data: self
                .buf
                .get(meta.offset..meta.offset + meta.caplen as usize)
                .unwrap_or(&[]),
            orig_len: meta.orig_len,
            interface: meta.interface,
            direction: meta.direction,
        })
    }

    /// The packets in capture order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Packet<'_>> + '_ {
        let buf = &self.buf[..self.filled];
        self.packets.iter().map(move |meta| Packet {
            timestamp: meta.ts,
            link: meta.link,
            // Every meta was checked against the buffer when it was created; an empty slice is unreachable.
            data: buf
                .get(meta.offset..meta.offset + meta.caplen as usize)
                .unwrap_or(&[]),
            orig_len: meta.orig_len,
            interface: meta.interface,
            direction: meta.direction,
        })
    }
}

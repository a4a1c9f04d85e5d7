//! Live capture from one network interface through an AF_PACKET socket with a TPACKET_V3 memory-mapped ring.
//!
//! The kernel writes packets into blocks of a ring shared with this process and hands a block over when it is
//! full or when the block timeout expires, so a quiet interface still delivers within that timeout. Reading a
//! block costs no system call; `poll` is called only when the next block is still the kernel's. Packets (cut to
//! the snap length by a one-instruction socket filter in the kernel) are either handed to a callback in place
//! ([`RingSource::for_each_packet`], the fast path: no copy) or copied into a [`Batch`]
//! ([`RingSource::next_batch`], for consumers that keep packets); either way the block goes back to the kernel
//! as soon as its packets are processed.
//!
//! Every `unsafe` block of the crate is in this file.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use weir_model::{Direction, LinkType, Timestamp};

use crate::batch::{Batch, Packet};

/// `TPACKET_V3` from `enum tpacket_versions` (libc exposes it only as an enum).
const TPACKET_V3: libc::c_int = 2;
/// The fixed header of a TPACKET_V3 packet (`struct tpacket3_hdr`), after which the `sockaddr_ll` follows
/// (aligned to `TPACKET_ALIGNMENT`, 16).
const TPACKET3_HDR_LEN: usize = 48;
/// Offsets in `struct tpacket_block_desc` (version, offset_to_priv, then `tpacket_hdr_v1`).
const BLOCK_STATUS: usize = 8;
const BLOCK_NUM_PKTS: usize = 12;
const BLOCK_FIRST_PKT: usize = 16;
/// `ARPHRD_NONE`: an interface without a link layer (tun, some CNIs' devices): packets start at the IP header.
const ARPHRD_NONE: u16 = 0xfffe;

/// How a ring is laid out and filled.
#[derive(Clone, Debug)]
pub struct RingConfig {
    /// Size of one block (a power of two, a multiple of the page size).
    pub block_size: u32,
    /// Number of blocks.
    pub blocks: u32,
    /// How long the kernel fills a block before handing it over anyway, in milliseconds.
    pub block_timeout_ms: u32,
    /// Bytes kept of each packet (the original length is still reported).
    pub snaplen: u32,
    /// Join this `PACKET_FANOUT_HASH` group: sockets in one group on one interface share its packets, each flow
    /// on one socket.
    pub fanout: Option<u16>,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            block_size: 1 << 20,
            blocks: 8,
            block_timeout_ms: 50,
            snaplen: 256,
            fanout: None,
        }
    }
}

/// Counters the kernel keeps for a socket, summed over reads (`PACKET_STATISTICS` resets on every read).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// Packets the socket received (including the dropped ones).
    pub packets: u64,
    /// Packets dropped because the ring was full.
    pub drops: u64,
    /// Times the ring was frozen (full).
    pub freezes: u64,
}

/// Why a live capture could not start or continue.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// The process may not open packet sockets.
    #[error(
        "capturing on {interface} needs CAP_NET_RAW (run as root, or grant the capability: \
         setcap cap_net_raw,cap_net_admin+ep $(command -v weir))"
    )]
    Permission {
        /// The interface.
        interface: String,
    },
    /// No such interface.
    #[error("no network interface named {0:?}")]
    NoSuchInterface(String),
    /// A system call failed.
    #[error("{interface}: {what}: {source}")]
    Io {
        /// The interface.
        interface: String,
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// A memory-mapped TPACKET_V3 receive ring on one interface.
pub struct RingSource {
    fd: OwnedFd,
    map: NonNull<u8>,
    map_len: usize,
    block_size: usize,
    blocks: usize,
    next_block: usize,
    interface: String,
    ifindex: u32,
    link: LinkType,
    snaplen: u32,
    stats: KernelStats,
}

// SAFETY: the mapping is owned by this value alone (no other handle to it exists in the process) and is only
// touched through `&mut self`, so moving the source to another thread is sound.
unsafe impl Send for RingSource {}

fn last_error(interface: &str, what: &'static str) -> LiveError {
    let source = io::Error::last_os_error();
    if matches!(source.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
        return LiveError::Permission {
            interface: interface.to_owned(),
        };
    }
    LiveError::Io {
        interface: interface.to_owned(),
        what,
        source,
    }
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` for the duration of the call and its size is passed with it; the
    // kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The index of an interface, or `None` when there is no such interface.
pub fn interface_index(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

impl RingSource {
    /// Opens a ring on `interface`. Fails with [`LiveError::Permission`] without CAP_NET_RAW.
    pub fn open(interface: &str, config: &RingConfig) -> Result<RingSource, LiveError> {
        let ifindex = interface_index(interface)
            .ok_or_else(|| LiveError::NoSuchInterface(interface.to_owned()))?;
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket creation; the result is checked before use.
        let raw =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, libc::c_int::from(protocol)) };
        if raw < 0 {
            return Err(last_error(interface, "opening a packet socket"));
        }
        // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let io_err = |what: &'static str| {
            move |source: io::Error| LiveError::Io {
                interface: interface.to_owned(),
                what,
                source,
            }
        };

        // Truncate in the kernel: a classic BPF program of one instruction, `ret #snaplen`.
        let snaplen = config.snaplen.max(64);
        let mut program = [libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: snaplen,
        }];
        let filter = libc::sock_fprog {
            len: 1,
            filter: program.as_mut_ptr(),
        };
        setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &filter,
        )
        .map_err(io_err("attaching the snap-length filter"))?;
        setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_VERSION,
            &TPACKET_V3,
        )
        .map_err(io_err("selecting TPACKET_V3"))?;

        let page = 4096u32;
        let block_size = config.block_size.max(page).next_power_of_two();
        let blocks = config.blocks.max(2);
        let frame_size = 2048u32;
        let request = libc::tpacket_req3 {
            tp_block_size: block_size,
            tp_block_nr: blocks,
            tp_frame_size: frame_size,
            tp_frame_nr: block_size / frame_size * blocks,
            tp_retire_blk_tov: config.block_timeout_ms.max(1),
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_RX_RING,
            &request,
        )
        .map_err(io_err("setting up the receive ring"))?;
        let map_len = block_size as usize * blocks as usize;
        // SAFETY: maps the ring the kernel just allocated for this socket; the length is the ring's size and
        // the result is checked against MAP_FAILED before use.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(last_error(interface, "mapping the receive ring"));
        }
        let Some(map) = NonNull::new(map.cast::<u8>()) else {
            return Err(last_error(interface, "mapping the receive ring"));
        };
        let source = RingSource {
            fd,
            map,
            map_len,
            block_size: block_size as usize,
            blocks: blocks as usize,
            next_block: 0,
            interface: interface.to_owned(),
            ifindex,
            link: LinkType::ETHERNET,
            snaplen,
            stats: KernelStats::default(),
        };

        // SAFETY: an all-zero `sockaddr_ll` is a valid value of this plain C struct.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = protocol;
        address.sll_ifindex = ifindex as i32;
        // SAFETY: `address` is a valid `sockaddr_ll` and its exact size is passed.
        let rc = unsafe {
            libc::bind(
                source.fd.as_raw_fd(),
                (&address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(last_error(interface, "binding to the interface"));
        }
        if let Some(group) = config.fanout {
            let value: u32 = u32::from(group) | (libc::PACKET_FANOUT_HASH << 16);
            setsockopt(
                source.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_FANOUT,
                &value,
            )
            .map_err(io_err("joining the fanout group"))?;
        }
        let mut source = source;
        source.link = source.link_type();
        Ok(source)
    }

    /// The interface's name.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The interface's index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The snap length in force.
    pub fn snaplen(&self) -> u32 {
        self.snaplen
    }

    fn link_type(&self) -> LinkType {
        let path = format!("/sys/class/net/{}/type", self.interface);
        match std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.trim().parse::<u16>().ok())
        {
            Some(ARPHRD_NONE) => LinkType::RAW,
            _ => LinkType::ETHERNET,
        }
    }

    fn block(&self, index: usize) -> *mut u8 {
        // SAFETY: `index < self.blocks`, so the offset stays inside the mapping of `blocks * block_size` bytes.
        unsafe { self.map.as_ptr().add(index * self.block_size) }
    }

    /// The status word of a block, shared with the kernel.
    fn status(&self, index: usize) -> &AtomicU32 {
        // SAFETY: the status word is a naturally aligned u32 inside the block header, which lives as long as the
        // mapping (and so as long as `&self`); the kernel and this process access it concurrently, which is what
        // an atomic is for.
        unsafe { AtomicU32::from_ptr(self.block(index).add(BLOCK_STATUS).cast::<u32>()) }
    }

    fn read_u32(&self, at: *const u8) -> u32 {
        // SAFETY: callers pass addresses inside a block the kernel has handed over (TP_STATUS_USER was seen with
        // acquire ordering), at offsets the kernel wrote; unaligned reads are allowed.
        unsafe { at.cast::<u32>().read_unaligned() }
    }

    fn read_u16(&self, at: *const u8) -> u16 {
        // SAFETY: as for `read_u32`.
        unsafe { at.cast::<u16>().read_unaligned() }
    }

    fn read_u8(&self, at: *const u8) -> u8 {
        // SAFETY: as for `read_u32`.
        unsafe { at.read() }
    }

    /// Waits up to `timeout` for packets and appends them to `batch` (which is cleared first). Returns the
    /// number of packets added (0 when the timeout passed quietly).
    pub fn next_batch(&mut self, batch: &mut Batch, timeout: Duration) -> Result<usize, LiveError> {
        batch.packets.clear();
        batch.filled = 0;
        if !self.ready() {
            wait_any(&[&*self], timeout)?;
        }
        // Take every block the kernel has handed over, up to what the batch holds.
        let mut taken = 0;
        while self.ready() {
            taken += self.walk_block(&mut |p| batch.push_copy(p));
            self.release_block();
            if batch.filled + self.block_size > batch.buf.len() {
                break;
            }
        }
        Ok(taken)
    }

    /// Whether the kernel has handed the next block over.
    fn ready(&self) -> bool {
        self.status(self.next_block).load(Ordering::Acquire) & libc::TP_STATUS_USER != 0
    }

    /// Gives the current block back to the kernel and moves to the next.
    fn release_block(&mut self) {
        self.status(self.next_block)
            .store(libc::TP_STATUS_KERNEL, Ordering::Release);
        self.next_block = (self.next_block + 1) % self.blocks;
    }

    /// Waits up to `timeout` for packets and hands each one to `f` in place, in the ring, without copying;
    /// returns how many. Every block the kernel has handed over is processed and returned.
    pub fn for_each_packet(
        &mut self,
        timeout: Duration,
        mut f: impl FnMut(Packet<'_>),
    ) -> Result<usize, LiveError> {
        if !self.ready() {
            wait_any(&[&*self], timeout)?;
        }
        let mut count = 0;
        while self.ready() {
            count += self.walk_block(&mut f);
            self.release_block();
        }
        Ok(count)
    }

    /// Hands the packets of the current block (which the kernel has handed over) to `f`.
    fn walk_block(&self, f: &mut impl FnMut(Packet<'_>)) -> usize {
        let block = self.block(self.next_block);
        let count = self.read_u32(block.wrapping_add(BLOCK_NUM_PKTS)) as usize;
        let mut offset = self.read_u32(block.wrapping_add(BLOCK_FIRST_PKT)) as usize;
        let mut seen = 0;
        for _ in 0..count {
            if offset + TPACKET3_HDR_LEN + 12 > self.block_size {
                break;
            }
            let packet = block.wrapping_add(offset);
            let next = self.read_u32(packet) as usize;
            let caplen = self.read_u32(packet.wrapping_add(12)) as usize;
            let mac = usize::from(self.read_u16(packet.wrapping_add(24)));
            if offset + mac + caplen <= self.block_size {
                // SAFETY: the range lies inside a block the kernel has handed over (checked above), and the
                // kernel does not write it again until the block's status is given back, which happens only
                // after `f` has returned; the slice does not outlive this call.
                let data = unsafe { std::slice::from_raw_parts(packet.wrapping_add(mac), caplen) };
                let sec = self.read_u32(packet.wrapping_add(4));
                let nsec = self.read_u32(packet.wrapping_add(8));
                let pkttype = self.read_u8(packet.wrapping_add(TPACKET3_HDR_LEN + 10));
                f(Packet {
                    timestamp: Timestamp(i64::from(sec) * 1_000_000_000 + i64::from(nsec)),
                    link: self.link,
                    data,
                    orig_len: self.read_u32(packet.wrapping_add(16)),
                    interface: self.ifindex,
                    direction: Some(if pkttype == libc::PACKET_OUTGOING {
                        Direction::ToPod
                    } else {
                        Direction::FromPod
                    }),
                });
                seen += 1;
            }
            if next == 0 {
                break;
            }
            offset += next;
        }
        seen
    }

    /// The kernel's counters for this socket, summed since it was opened.
    pub fn kernel_stats(&mut self) -> KernelStats {
        // SAFETY: an all-zero `tpacket_stats_v3` is a valid value of this plain C struct.
        let mut stats: libc::tpacket_stats_v3 = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
        // SAFETY: `stats` and `len` are valid for writes of the sizes given.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut stats as *mut libc::tpacket_stats_v3).cast(),
                &mut len,
            )
        };
        if rc == 0 {
            // The kernel resets its counters on every read; `tp_packets` includes the drops.
            self.stats.packets += u64::from(stats.tp_packets);
            self.stats.drops += u64::from(stats.tp_drops);
            self.stats.freezes += u64::from(stats.tp_freeze_q_cnt);
        }
        self.stats
    }
}

/// Waits until at least one of `rings` has packets, or `timeout` passes.
pub fn wait_any(rings: &[&RingSource], timeout: Duration) -> Result<(), LiveError> {
    if rings.iter().any(|r| r.ready()) {
        return Ok(());
    }
    let mut fds: Vec<libc::pollfd> = rings
        .iter()
        .map(|r| libc::pollfd {
            fd: r.fd.as_raw_fd(),
            events: libc::POLLIN | libc::POLLERR,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs for the duration of the call.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(LiveError::Io {
                interface: match rings {
                    [one] => one.interface.clone(),
                    _ => "(several interfaces)".to_owned(),
                },
                what: "waiting for packets",
                source: err,
            });
        }
    }
    Ok(())
}

impl Drop for RingSource {
    fn drop(&mut self) {
        // SAFETY: `map`/`map_len` describe the mapping made in `open`, which nothing references any more (every
        // borrow of `self` has ended); the descriptor is closed after, by `OwnedFd`.
        unsafe {
            libc::munmap(self.map.as_ptr().cast(), self.map_len);
        }
    }
}

//! The portable fallback: live capture through pnet's datalink channel.
//!
//! It exists for systems or kernels where the TPACKET_V3 ring is not available, and as the baseline the ring is
//! measured against. It is not the default, for two measured reasons (benches/README.md): it costs a system
//! call and a copy per packet (`recvfrom`), and it does not say which way a packet crossed the interface, so the
//! pod's side of a veth has to be inferred from the addresses (see `weir capture`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pnet_datalink::{Channel, Config, DataLinkReceiver};
use weir_model::ingest::{InterfaceAddress, MAX_NODE_ADDRESSES};
use weir_model::{LinkType, Timestamp};

use crate::batch::{Batch, Packet};
use crate::ring::{LiveError, interface_index};

/// A pnet datalink receiver on one interface.
pub struct PnetSource {
    rx: Box<dyn DataLinkReceiver>,
    interface: String,
    ifindex: u32,
    snaplen: usize,
}

impl PnetSource {
    /// Opens `interface` (not in promiscuous mode); reads wait at most `read_timeout`.
    pub fn open(
        interface: &str,
        snaplen: u32,
        read_timeout: Duration,
    ) -> Result<PnetSource, LiveError> {
        let ifindex = interface_index(interface)
            .ok_or_else(|| LiveError::NoSuchInterface(interface.to_owned()))?;
        let iface = pnet_datalink::interfaces()
            .into_iter()
            .find(|i| i.name == interface)
            .ok_or_else(|| LiveError::NoSuchInterface(interface.to_owned()))?;
        let config = Config {
            read_timeout: Some(read_timeout),
            promiscuous: false,
            read_buffer_size: 65536,
            ..Config::default()
        };
        match pnet_datalink::channel(&iface, config) {
            Ok(Channel::Ethernet(_, rx)) => Ok(PnetSource {
                rx,
                interface: interface.to_owned(),
                ifindex,
                snaplen: snaplen.max(64) as usize,
            }),
            Ok(_) => Err(LiveError::Io {
                interface: interface.to_owned(),
                what: "opening a pnet channel",
                source: std::io::Error::other("not an Ethernet channel"),
            }),
            Err(source) => Err(
                if matches!(source.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
                    LiveError::Permission {
                        interface: interface.to_owned(),
                    }
                } else {
                    LiveError::Io {
                        interface: interface.to_owned(),
                        what: "opening a pnet channel",
                        source,
                    }
                },
            ),
        }
    }

    /// The interface's name.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Reads up to `max` packets into `batch` (cleared first), one system call each, until a read times out.
    /// Packets carry no direction: pnet does not report it.
    pub fn next_batch(&mut self, batch: &mut Batch, max: usize) -> Result<usize, LiveError> {
        batch.packets.clear();
        batch.filled = 0;
        while batch.packets.len() < max {
            match self.rx.next() {
                Ok(frame) => {
                    let since = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default();
                    batch.push_copy(Packet {
                        timestamp: Timestamp(since.as_nanos().min(i64::MAX as u128) as i64),
                        link: LinkType::ETHERNET,
                        data: &frame[..frame.len().min(self.snaplen)],
                        orig_len: frame.len() as u32,
                        interface: self.ifindex,
                        direction: None,
                    });
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                    ) =>
                {
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => break,
                Err(source) => {
                    return Err(LiveError::Io {
                        interface: self.interface.clone(),
                        what: "reading from the pnet channel",
                        source,
                    });
                }
            }
        }
        Ok(batch.packets.len())
    }
}

/// The addresses of this network namespace's interfaces that can tell its node apart from other nodes
/// ([`InterfaceAddress::reportable`]), sorted, at most [`MAX_NODE_ADDRESSES`]. The agent runs in the host's
/// network namespace and reports them, because the node reaches its pods from some of them (`cni0`,
/// `cilium_host`, a tunnel device) and no cluster object says so.
pub fn host_addresses() -> Vec<InterfaceAddress> {
    let mut out: Vec<InterfaceAddress> = pnet_datalink::interfaces()
        .into_iter()
        .flat_map(|iface| {
            let name = iface.name;
            iface.ips.into_iter().map(move |net| InterfaceAddress {
                interface: name.clone(),
                ip: net.ip(),
            })
        })
        .filter(InterfaceAddress::reportable)
        .collect();
    out.sort();
    out.dedup();
    out.truncate(MAX_NODE_ADDRESSES);
    out
}

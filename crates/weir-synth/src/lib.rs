//! Deterministic synthetic pod traffic, with the flows it contains as ground truth.
//!
//! Tests and benchmarks describe conversations ([`Synth::tcp`], [`Synth::udp`], [`Synth::icmp_echo`], ...); the
//! generator builds every packet with etherparse's `PacketBuilder`, wraps it in the chosen link layer, and keeps
//! the exact packets and IP bytes per direction of every flow in [`ExpectedFlow`]s. The same seed always gives
//! the same bytes. [`write_pcap`] and [`write_pcapng`] store a capture in either format and any timestamp
//! resolution.

#![deny(missing_docs)]

mod cluster;
mod demo;
mod scenarios;
mod synth;
mod writer;

pub use cluster::{
    SyntheticCluster, synthetic_cluster, synthetic_cluster_policies, synthetic_cluster_with,
};
pub use demo::{demo_cluster, demo_traffic};
pub use scenarios::{EPOCH, bench_mix, bench_pod_address, pod_traffic, write_bundled_pcaps};
pub use synth::{Capture, Close, ExpectedFlow, Link, Synth, SynthPacket, TcpSpec};
pub use writer::{PcapNgOptions, PcapOptions, write_pcap, write_pcapng};

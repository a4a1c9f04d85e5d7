//! pcap and pcapng writers for generated captures.

use std::io::{self, Write};

use weir_model::LinkType;

use crate::SynthPacket;

/// How to write a pcap file.
#[derive(Clone, Copy, Debug, Default)]
pub struct PcapOptions {
    /// Nanosecond timestamps (magic `a1b23c4d`) instead of microseconds.
    pub nanos: bool,
    /// Big-endian headers.
    pub big_endian: bool,
    /// Cut packets to this many bytes (0: keep them whole).
    pub snaplen: u32,
}

fn put32(out: &mut Vec<u8>, v: u32, be: bool) {
    out.extend_from_slice(&if be { v.to_be_bytes() } else { v.to_le_bytes() });
}

fn put16(out: &mut Vec<u8>, v: u16, be: bool) {
    out.extend_from_slice(&if be { v.to_be_bytes() } else { v.to_le_bytes() });
}

fn captured(data: &[u8], snaplen: u32) -> &[u8] {
    if snaplen == 0 {
        data
    } else {
        &data[..data.len().min(snaplen as usize)]
    }
}

/// Writes packets as a pcap file.
pub fn write_pcap<W: Write>(
    mut w: W,
    link: LinkType,
    packets: &[SynthPacket],
    opts: PcapOptions,
) -> io::Result<()> {
    let be = opts.big_endian;
    let mut out = Vec::with_capacity(1 << 20);
    put32(
        &mut out,
        if opts.nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 },
        be,
    );
    put16(&mut out, 2, be);
    put16(&mut out, 4, be);
    put32(&mut out, 0, be);
    put32(&mut out, 0, be);
    put32(
        &mut out,
        if opts.snaplen == 0 {
            262_144
        } else {
            opts.snaplen
        },
        be,
    );
    put32(&mut out, u32::from(link.0), be);
    for p in packets {
        let data = captured(&p.data, opts.snaplen);
        let secs = p.ts.0.div_euclid(1_000_000_000);
        let nanos = p.ts.0.rem_euclid(1_000_000_000);
        put32(&mut out, secs as u32, be);
        put32(
            &mut out,
            if opts.nanos { nanos } else { nanos / 1000 } as u32,
            be,
        );
        put32(&mut out, data.len() as u32, be);
        put32(&mut out, p.data.len() as u32, be);
        out.extend_from_slice(data);
        if out.len() > (1 << 20) {
            w.write_all(&out)?;
            out.clear();
        }
    }
    w.write_all(&out)?;
    w.flush()
}

/// How to write a pcapng file.
#[derive(Clone, Copy, Debug)]
pub struct PcapNgOptions {
    /// The `if_tsresol` option byte (6 = µs, 9 = ns, 0x80 | n = 2^-n).
    pub tsresol: u8,
    /// Number of interfaces; packets are spread over them in turn.
    pub interfaces: u32,
    /// Start a new section (with its interfaces again) every this many packets (0: one section).
    pub section_every: usize,
    /// Big-endian blocks.
    pub big_endian: bool,
}

impl Default for PcapNgOptions {
    fn default() -> Self {
        PcapNgOptions {
            tsresol: 6,
            interfaces: 1,
            section_every: 0,
            big_endian: false,
        }
    }
}

fn ts_units(ts_nanos: i64, tsresol: u8) -> u64 {
    let nanos = ts_nanos.max(0) as u128;
    let units = if tsresol & 0x80 != 0 {
        (nanos << (tsresol & 0x7f)) / 1_000_000_000
    } else {
        let n = u32::from(tsresol);
        if n >= 9 {
            nanos * 10u128.pow(n - 9)
        } else {
            nanos / 10u128.pow(9 - n)
        }
    };
    u64::try_from(units).unwrap_or(u64::MAX)
}

fn block(out: &mut Vec<u8>, kind: u32, body: &[u8], be: bool) {
    let padded = body.len().next_multiple_of(4);
    let total = (12 + padded) as u32;
    put32(out, kind, be);
    put32(out, total, be);
    out.extend_from_slice(body);
    out.resize(out.len() + padded - body.len(), 0);
    put32(out, total, be);
}

/// Writes packets as a pcapng file.
pub fn write_pcapng<W: Write>(
    mut w: W,
    link: LinkType,
    packets: &[SynthPacket],
    opts: PcapNgOptions,
) -> io::Result<()> {
    let be = opts.big_endian;
    let interfaces = opts.interfaces.max(1);
    let mut out = Vec::with_capacity(1 << 20);
    let section = |out: &mut Vec<u8>| {
        let mut shb = Vec::new();
        put32(&mut shb, 0x1a2b_3c4d, be);
        put16(&mut shb, 1, be);
        put16(&mut shb, 0, be);
        shb.extend_from_slice(&u64::MAX.to_le_bytes());
        block(out, 0x0a0d_0d0a, &shb, be);
        for _ in 0..interfaces {
            let mut idb = Vec::new();
            put16(&mut idb, link.0, be);
            put16(&mut idb, 0, be);
            put32(&mut idb, 262_144, be);
            put16(&mut idb, 9, be);
            put16(&mut idb, 1, be);
            idb.extend_from_slice(&[opts.tsresol, 0, 0, 0]);
            put16(&mut idb, 0, be);
            put16(&mut idb, 0, be);
            block(out, 1, &idb, be);
        }
    };
    section(&mut out);
    for (i, p) in packets.iter().enumerate() {
        if opts.section_every > 0 && i > 0 && i % opts.section_every == 0 {
            section(&mut out);
        }
        let units = ts_units(p.ts.0, opts.tsresol);
        let mut epb = Vec::with_capacity(p.data.len() + 20);
        put32(&mut epb, i as u32 % interfaces, be);
        put32(&mut epb, (units >> 32) as u32, be);
        put32(&mut epb, units as u32, be);
        put32(&mut epb, p.data.len() as u32, be);
        put32(&mut epb, p.data.len() as u32, be);
        epb.extend_from_slice(&p.data);
        block(&mut out, 6, &epb, be);
        if out.len() > (1 << 20) {
            w.write_all(&out)?;
            out.clear();
        }
    }
    w.write_all(&out)?;
    w.flush()
}

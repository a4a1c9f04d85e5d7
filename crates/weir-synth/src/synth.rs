//! Conversations to packets, with ground truth.

use std::net::{IpAddr, SocketAddr};

use etherparse::{IpHeaders, IpNumber, Ipv4Header, PacketBuilder, PacketBuilderStep};
use weir_model::{LinkType, Orientation, Protocol, TcpFlags, Timestamp};

/// The link layer the packets are wrapped in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Ethernet II.
    Ethernet,
    /// Ethernet with one 802.1Q tag.
    Vlan(u16),
    /// Ethernet with an 802.1ad outer tag and an 802.1Q inner tag.
    QinQ(u16, u16),
    /// Linux cooked capture v1.
    LinuxSll,
    /// Linux cooked capture v2.
    LinuxSll2,
    /// Raw IP.
    RawIp,
}

impl Link {
    /// The capture link type.
    pub fn link_type(self) -> LinkType {
        match self {
            Link::Ethernet | Link::Vlan(_) | Link::QinQ(..) => LinkType::ETHERNET,
            Link::LinuxSll => LinkType::LINUX_SLL,
            Link::LinuxSll2 => LinkType::LINUX_SLL2,
            Link::RawIp => LinkType::RAW,
        }
    }

    fn wrap(self, ip: Vec<u8>, v6: bool, outgoing: bool) -> Vec<u8> {
        let ethertype: u16 = if v6 { 0x86dd } else { 0x0800 };
        let mut out = Vec::with_capacity(ip.len() + 24);
        let macs = |out: &mut Vec<u8>| {
            let (a, b) = ([0x02, 0, 0, 0, 0, 0x0a], [0x02, 0, 0, 0, 0, 0x0b]);
            let (dst, src) = if outgoing { (b, a) } else { (a, b) };
            out.extend_from_slice(&dst);
            out.extend_from_slice(&src);
        };
        match self {
            Link::RawIp => return ip,
            Link::Ethernet => {
                macs(&mut out);
                out.extend_from_slice(&ethertype.to_be_bytes());
            }
            Link::Vlan(id) => {
                macs(&mut out);
                out.extend_from_slice(&0x8100u16.to_be_bytes());
                out.extend_from_slice(&(id & 0x0fff).to_be_bytes());
                out.extend_from_slice(&ethertype.to_be_bytes());
            }
            Link::QinQ(outer, inner) => {
                macs(&mut out);
                out.extend_from_slice(&0x88a8u16.to_be_bytes());
                out.extend_from_slice(&(outer & 0x0fff).to_be_bytes());
                out.extend_from_slice(&0x8100u16.to_be_bytes());
                out.extend_from_slice(&(inner & 0x0fff).to_be_bytes());
                out.extend_from_slice(&ethertype.to_be_bytes());
            }
            Link::LinuxSll => {
                // Packet type 4 = sent by this host, 0 = addressed to it.
                out.extend_from_slice(&(if outgoing { 4u16 } else { 0 }).to_be_bytes());
                out.extend_from_slice(&1u16.to_be_bytes());
                out.extend_from_slice(&6u16.to_be_bytes());
                out.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x0a, 0, 0]);
                out.extend_from_slice(&ethertype.to_be_bytes());
            }
            Link::LinuxSll2 => {
                out.extend_from_slice(&ethertype.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&7u32.to_be_bytes());
                out.extend_from_slice(&1u16.to_be_bytes());
                out.push(if outgoing { 4 } else { 0 });
                out.push(6);
                out.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x0a, 0, 0]);
            }
        }
        out.extend_from_slice(&ip);
        out
    }
}

/// How a TCP connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// FIN from both sides and a last ACK.
    Fin,
    /// The client resets.
    Rst,
    /// Still open when the capture ends.
    Open,
}

/// A TCP connection to generate.
#[derive(Clone, Copy, Debug)]
pub struct TcpSpec {
    /// Initiator.
    pub client: SocketAddr,
    /// Responder.
    pub server: SocketAddr,
    /// Time of the first packet.
    pub start: Timestamp,
    /// Request/response rounds (each: request, response, client ACK).
    pub exchanges: u32,
    /// Request payload bytes.
    pub request: usize,
    /// Response payload bytes.
    pub response: usize,
    /// How it ends.
    pub close: Close,
    /// Whether the handshake is captured; without it the capture starts mid-connection with a server packet.
    pub handshake: bool,
    /// Nanoseconds between consecutive packets.
    pub gap: i64,
}

impl TcpSpec {
    /// A short HTTP-like connection: handshake, `exchanges` rounds of 200/800 bytes, FIN close, 100 µs apart.
    pub fn new(
        client: SocketAddr,
        server: SocketAddr,
        start: Timestamp,
        exchanges: u32,
    ) -> TcpSpec {
        TcpSpec {
            client,
            server,
            start,
            exchanges,
            request: 200,
            response: 800,
            close: Close::Fin,
            handshake: true,
            gap: 100_000,
        }
    }
}

/// One generated packet.
#[derive(Clone, Debug)]
pub struct SynthPacket {
    /// Capture time.
    pub ts: Timestamp,
    /// The frame, link header included.
    pub data: Vec<u8>,
}

/// A flow the capture contains, as weir must report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedFlow {
    /// Initiator address.
    pub src: IpAddr,
    /// Initiator port (TCP, UDP, SCTP).
    pub src_port: Option<u16>,
    /// Responder address.
    pub dst: IpAddr,
    /// Responder port.
    pub dst_port: Option<u16>,
    /// Protocol.
    pub proto: Protocol,
    /// ICMP identifier of echo flows.
    pub icmp_id: Option<u16>,
    /// Packets initiator → responder.
    pub packets: u64,
    /// IP bytes initiator → responder.
    pub bytes: u64,
    /// Packets responder → initiator.
    pub reply_packets: u64,
    /// IP bytes responder → initiator.
    pub reply_bytes: u64,
    /// First packet.
    pub start: Timestamp,
    /// Last packet.
    pub end: Timestamp,
    /// TCP flags initiator → responder.
    pub tcp_flags: TcpFlags,
    /// TCP flags responder → initiator.
    pub reply_tcp_flags: TcpFlags,
    /// Orientation weir must report.
    pub orientation: Orientation,
}

/// A generated capture: packets in time order and the flows they make.
#[derive(Clone, Debug)]
pub struct Capture {
    /// Link type of every packet.
    pub link: LinkType,
    /// Packets, sorted by time.
    pub packets: Vec<SynthPacket>,
    /// Flows, in the order they were described.
    pub truth: Vec<ExpectedFlow>,
}

/// Generates traffic. Every method appends a conversation; [`Synth::finish`] sorts the packets by time.
#[derive(Debug)]
pub struct Synth {
    link: Link,
    rng: u64,
    packets: Vec<(Timestamp, u64, Vec<u8>)>,
    truth: Vec<ExpectedFlow>,
    order: u64,
    ip_id: u16,
}

fn ip_step(src: IpAddr, dst: IpAddr) -> PacketBuilderStep<IpHeaders> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
        (s, d) => PacketBuilder::ipv6(v6_octets(s), v6_octets(d), 64),
    }
}

fn v6_octets(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

impl Synth {
    /// A generator for one link type; `seed` fixes every random choice.
    pub fn new(link: Link, seed: u64) -> Synth {
        Synth {
            link,
            rng: seed ^ 0x9e37_79b9_7f4a_7c15,
            packets: Vec::new(),
            truth: Vec::new(),
            order: 0,
            ip_id: 1,
        }
    }

    /// The next pseudo-random number (SplitMix64).
    pub fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A pseudo-random number in `lo..hi` (`lo` when the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.next_u64() % (hi - lo)
        }
    }

    fn new_flow(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        ports: Option<(u16, u16)>,
        proto: Protocol,
    ) -> usize {
        self.truth.push(ExpectedFlow {
            src,
            src_port: ports.map(|p| p.0),
            dst,
            dst_port: ports.map(|p| p.1),
            proto,
            icmp_id: None,
            packets: 0,
            bytes: 0,
            reply_packets: 0,
            reply_bytes: 0,
            start: Timestamp(i64::MAX),
            end: Timestamp(i64::MIN),
            tcp_flags: TcpFlags(0),
            reply_tcp_flags: TcpFlags(0),
            orientation: Orientation::Observed,
        });
        self.truth.len() - 1
    }

    fn emit(&mut self, flow: usize, ts: Timestamp, forward: bool, ip: Vec<u8>, flags: u8) {
        if let Some(t) = self.truth.get_mut(flow) {
            let len = ip.len() as u64;
            if forward {
                t.packets += 1;
                t.bytes += len;
                t.tcp_flags.0 |= flags;
            } else {
                t.reply_packets += 1;
                t.reply_bytes += len;
                t.reply_tcp_flags.0 |= flags;
            }
            t.start = t.start.min(ts);
            t.end = t.end.max(ts);
        }
        let v6 = ip.first().is_some_and(|b| b >> 4 == 6);
        let frame = self.link.wrap(ip, v6, forward);
        self.packets.push((ts, self.order, frame));
        self.order += 1;
    }

    #[allow(clippy::too_many_arguments)]
    fn tcp_packet(
        &mut self,
        flow: usize,
        ts: Timestamp,
        from: SocketAddr,
        to: SocketAddr,
        forward: bool,
        seq: u32,
        ack: Option<u32>,
        flags: u8,
        payload: usize,
    ) {
        let mut step = ip_step(from.ip(), to.ip()).tcp(from.port(), to.port(), seq, 64_240);
        if flags & TcpFlags::SYN != 0 {
            step = step.syn();
        }
        if let Some(ack) = ack {
            step = step.ack(ack);
        }
        if flags & TcpFlags::FIN != 0 {
            step = step.fin();
        }
        if flags & TcpFlags::RST != 0 {
            step = step.rst();
        }
        if flags & TcpFlags::PSH != 0 {
            step = step.psh();
        }
        let body = vec![0x61u8; payload];
        let mut out = Vec::with_capacity(step.size(payload));
        if step.write(&mut out, &body).is_ok() {
            let all = flags | if ack.is_some() { TcpFlags::ACK } else { 0 };
            self.emit(flow, ts, forward, out, all);
        }
    }

    /// A TCP connection.
    pub fn tcp(&mut self, spec: TcpSpec) -> &mut Synth {
        let (c, s) = (spec.client, spec.server);
        let flow = self.new_flow(c.ip(), s.ip(), Some((c.port(), s.port())), Protocol::TCP);
        let mut ts = spec.start.0;
        let mut tick = || {
            let now = Timestamp(ts);
            ts += spec.gap;
            now
        };
        let (mut cseq, mut sseq) = (1000u32, 50_000u32);
        const SYN: u8 = TcpFlags::SYN;
        const FIN: u8 = TcpFlags::FIN;
        const PSH: u8 = TcpFlags::PSH;
        if spec.handshake {
            self.tcp_packet(flow, tick(), c, s, true, cseq, None, SYN, 0);
            cseq += 1;
            self.tcp_packet(flow, tick(), s, c, false, sseq, Some(cseq), SYN, 0);
            sseq += 1;
            self.tcp_packet(flow, tick(), c, s, true, cseq, Some(sseq), 0, 0);
        } else {
            // Mid-connection: the first packet seen is the server's.
            if let Some(t) = self.truth.get_mut(flow) {
                t.orientation = Orientation::Inferred;
            }
            self.tcp_packet(
                flow,
                tick(),
                s,
                c,
                false,
                sseq,
                Some(cseq),
                PSH,
                spec.response,
            );
            sseq = sseq.wrapping_add(spec.response as u32);
        }
        for _ in 0..spec.exchanges {
            self.tcp_packet(
                flow,
                tick(),
                c,
                s,
                true,
                cseq,
                Some(sseq),
                PSH,
                spec.request,
            );
            cseq = cseq.wrapping_add(spec.request as u32);
            self.tcp_packet(
                flow,
                tick(),
                s,
                c,
                false,
                sseq,
                Some(cseq),
                PSH,
                spec.response,
            );
            sseq = sseq.wrapping_add(spec.response as u32);
            self.tcp_packet(flow, tick(), c, s, true, cseq, Some(sseq), 0, 0);
        }
        match spec.close {
            Close::Fin => {
                self.tcp_packet(flow, tick(), c, s, true, cseq, Some(sseq), FIN, 0);
                cseq += 1;
                self.tcp_packet(flow, tick(), s, c, false, sseq, Some(cseq), FIN, 0);
                sseq += 1;
                self.tcp_packet(flow, tick(), c, s, true, cseq, Some(sseq), 0, 0);
            }
            Close::Rst => {
                self.tcp_packet(flow, tick(), c, s, true, cseq, Some(sseq), TcpFlags::RST, 0);
            }
            Close::Open => {}
        }
        self
    }

    /// A connection attempt that never completes: `attempts` SYNs `gap` nanoseconds apart (retransmissions,
    /// as when a policy drops them), answered by a reset when `refused` (a closed port).
    pub fn tcp_attempt(
        &mut self,
        client: SocketAddr,
        server: SocketAddr,
        start: Timestamp,
        attempts: u32,
        gap: i64,
        refused: bool,
    ) -> &mut Synth {
        let flow = self.new_flow(
            client.ip(),
            server.ip(),
            Some((client.port(), server.port())),
            Protocol::TCP,
        );
        for i in 0..attempts {
            let ts = Timestamp(start.0 + i64::from(i) * gap);
            self.tcp_packet(flow, ts, client, server, true, 7000, None, TcpFlags::SYN, 0);
        }
        if refused {
            let ts = Timestamp(start.0 + 60_000);
            self.tcp_packet(
                flow,
                ts,
                server,
                client,
                false,
                0,
                Some(7001),
                TcpFlags::RST,
                0,
            );
        }
        self
    }

    fn udp_packet(
        &mut self,
        flow: usize,
        ts: Timestamp,
        from: SocketAddr,
        to: SocketAddr,
        forward: bool,
        len: usize,
    ) {
        let step = ip_step(from.ip(), to.ip()).udp(from.port(), to.port());
        let body = vec![0x5au8; len];
        let mut out = Vec::with_capacity(step.size(len));
        if step.write(&mut out, &body).is_ok() {
            self.emit(flow, ts, forward, out, 0);
        }
    }

    /// UDP request/response pairs (DNS-like), `gap` nanoseconds apart.
    pub fn udp(
        &mut self,
        client: SocketAddr,
        server: SocketAddr,
        start: Timestamp,
        exchanges: u32,
        sizes: (usize, usize),
        gap: i64,
    ) -> &mut Synth {
        let flow = self.new_flow(
            client.ip(),
            server.ip(),
            Some((client.port(), server.port())),
            Protocol::UDP,
        );
        let mut ts = start.0;
        for _ in 0..exchanges {
            self.udp_packet(flow, Timestamp(ts), client, server, true, sizes.0);
            self.udp_packet(
                flow,
                Timestamp(ts + gap / 2),
                server,
                client,
                false,
                sizes.1,
            );
            ts += gap;
        }
        self
    }

    /// ICMP (or ICMPv6) echo requests and replies with one identifier.
    pub fn icmp_echo(
        &mut self,
        a: IpAddr,
        b: IpAddr,
        id: u16,
        count: u16,
        start: Timestamp,
        gap: i64,
    ) -> &mut Synth {
        self.echo(a, b, id, count, start, gap, true)
    }

    /// ICMP (or ICMPv6) echo requests that get no reply (dropped on the way, or by policy).
    pub fn icmp_echo_unanswered(
        &mut self,
        a: IpAddr,
        b: IpAddr,
        id: u16,
        count: u16,
        start: Timestamp,
        gap: i64,
    ) -> &mut Synth {
        self.echo(a, b, id, count, start, gap, false)
    }

    #[allow(clippy::too_many_arguments)]
    fn echo(
        &mut self,
        a: IpAddr,
        b: IpAddr,
        id: u16,
        count: u16,
        start: Timestamp,
        gap: i64,
        answered: bool,
    ) -> &mut Synth {
        let v6 = a.is_ipv6() || b.is_ipv6();
        let proto = if v6 { Protocol::ICMPV6 } else { Protocol::ICMP };
        let flow = self.new_flow(a, b, None, proto);
        if let Some(t) = self.truth.get_mut(flow) {
            t.icmp_id = Some(id);
        }
        let mut ts = start.0;
        for seq in 0..count {
            let sides: &[(bool, IpAddr, IpAddr)] = if answered {
                &[(true, a, b), (false, b, a)]
            } else {
                &[(true, a, b)]
            };
            for &(forward, from, to) in sides {
                let step = ip_step(from, to);
                let mut out = Vec::new();
                let body = [0x42u8; 56];
                let written = match (v6, forward) {
                    (false, true) => step.icmpv4_echo_request(id, seq).write(&mut out, &body),
                    (false, false) => step.icmpv4_echo_reply(id, seq).write(&mut out, &body),
                    (true, true) => step.icmpv6_echo_request(id, seq).write(&mut out, &body),
                    (true, false) => step.icmpv6_echo_reply(id, seq).write(&mut out, &body),
                };
                if written.is_ok() {
                    self.emit(
                        flow,
                        Timestamp(ts + if forward { 0 } else { gap / 2 }),
                        forward,
                        out,
                        0,
                    );
                }
            }
            ts += gap;
        }
        self
    }

    /// Packets of a protocol weir keys by number only (GRE, ESP, ...), one way.
    pub fn other_protocol(
        &mut self,
        a: IpAddr,
        b: IpAddr,
        proto: u8,
        count: u32,
        start: Timestamp,
        gap: i64,
    ) -> &mut Synth {
        let flow = self.new_flow(a, b, None, Protocol(proto));
        for i in 0..count {
            let mut out = Vec::new();
            if ip_step(a, b)
                .write(&mut out, IpNumber(proto), &[0x11; 40])
                .is_ok()
            {
                self.emit(flow, Timestamp(start.0 + i64::from(i) * gap), true, out, 0);
            }
        }
        self
    }

    /// One IPv4 UDP datagram of `payload` bytes split into fragments of at most `fragment` payload bytes (a
    /// multiple of 8), and an unfragmented reply. Fragments after the first carry no ports.
    pub fn udp_fragmented(
        &mut self,
        client: SocketAddr,
        server: SocketAddr,
        start: Timestamp,
        payload: usize,
        fragment: usize,
    ) -> &mut Synth {
        let (IpAddr::V4(src), IpAddr::V4(dst)) = (client.ip(), server.ip()) else {
            return self;
        };
        let flow = self.new_flow(
            client.ip(),
            server.ip(),
            Some((client.port(), server.port())),
            Protocol::UDP,
        );
        // Build the whole datagram, then cut its IP payload (UDP header + data) into fragments.
        let step =
            PacketBuilder::ipv4(src.octets(), dst.octets(), 64).udp(client.port(), server.port());
        let mut whole = Vec::new();
        if step.write(&mut whole, &vec![0x33u8; payload]).is_err() {
            return self;
        }
        let l4 = whole.get(20..).unwrap_or(&[]).to_vec();
        let chunk = fragment.max(8) / 8 * 8;
        self.ip_id = self.ip_id.wrapping_add(1);
        let mut ts = start.0;
        for (i, piece) in l4.chunks(chunk).enumerate() {
            let offset = i * chunk;
            let Ok(mut header) = Ipv4Header::new(
                piece.len() as u16,
                64,
                IpNumber::UDP,
                src.octets(),
                dst.octets(),
            ) else {
                return self;
            };
            header.identification = self.ip_id;
            header.more_fragments = offset + piece.len() < l4.len();
            header.fragment_offset = ((offset / 8) as u16).try_into().unwrap_or_default();
            header.header_checksum = header.calc_header_checksum();
            let mut out = header.to_bytes().to_vec();
            out.extend_from_slice(piece);
            self.emit(flow, Timestamp(ts), true, out, 0);
            ts += 10_000;
        }
        self.udp_packet(flow, Timestamp(ts), server, client, false, 64);
        self
    }

    /// Sorts the packets by time (stable: equal times keep the order they were described in).
    pub fn finish(mut self) -> Capture {
        self.packets.sort_by_key(|(ts, order, _)| (*ts, *order));
        Capture {
            link: self.link.link_type(),
            packets: self
                .packets
                .into_iter()
                .map(|(ts, _, data)| SynthPacket { ts, data })
                .collect(),
            truth: self.truth,
        }
    }
}

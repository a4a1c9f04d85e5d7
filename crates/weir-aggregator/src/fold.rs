//! Outside peers folded into prefixes: an edge names an address outside the cluster (or an unknown one inside
//! its ranges) by itself only while the endpoint at its other end has few such peers. Beyond
//! [`EngineConfig::outside_peers`](crate::EngineConfig) addresses on one side of one endpoint, new ones are
//! counted under their /24 (IPv6: /48), beyond as many of those under their /16 (/32), then /8 (/16), then under
//! `0.0.0.0/0` (`::/0`). An exposed pod that the whole internet reaches keeps at most about four times the budget
//! of outside peers per port, not one per address for the retention.
//!
//! The finest level with room or with the peer already on it is chosen, so an address once kept by itself stays
//! so, and a peer's place depends only on what came before it. The fold is the live aggregator's: offline, a
//! capture bounds what it holds and every address is kept.

use std::net::IpAddr;

use foldhash::{HashMap, HashSet};
use weir_analysis::EdgeStats;
use weir_model::{Cidr, EndpointKey, EndpointKind};

/// Prefix lengths of the levels, finest first.
const V4_LEVELS: [u8; 5] = [32, 24, 16, 8, 0];
const V6_LEVELS: [u8; 5] = [128, 48, 32, 16, 0];

/// Which end of an edge the outside peer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum PeerSide {
    /// The peer is the source.
    Source,
    /// The peer is the destination.
    Destination,
}

/// The peers of one endpoint on one side, by level.
#[derive(Debug, Default)]
struct Levels([HashSet<Cidr>; 5]);

/// The fold: peers per (endpoint at the other end, side). The other end is `None` when it is an address too
/// (both ends outside or unknown): such edges share one budget per side.
#[derive(Debug)]
pub(crate) struct PeerFold {
    budget: usize,
    anchors: HashMap<(Option<EndpointKey>, PeerSide), Levels>,
}

/// Whether an endpoint is named by its address (outside the cluster, or unknown in its ranges).
pub(crate) fn by_address(e: &EndpointKey) -> bool {
    matches!(e.kind, EndpointKind::External | EndpointKind::Unknown)
}

fn levels_of(ip: IpAddr) -> &'static [u8; 5] {
    match ip {
        IpAddr::V4(_) => &V4_LEVELS,
        IpAddr::V6(_) => &V6_LEVELS,
    }
}

/// The name of a peer kept at `prefix`: the address itself at full length, else the prefix.
fn name(cidr: Cidr, full: u8) -> String {
    if cidr.prefix() == full {
        cidr.network().to_string()
    } else {
        cidr.to_string()
    }
}

impl PeerFold {
    /// A fold keeping `budget` peers per level (at least one).
    pub(crate) fn new(budget: usize) -> PeerFold {
        PeerFold {
            budget: budget.max(1),
            anchors: HashMap::default(),
        }
    }

    /// The endpoint an outside or unknown peer at `ip` is counted as, beside `anchor` (the other end, `None`
    /// when it is an address too); answers it and whether it was folded into a prefix.
    pub(crate) fn place(
        &mut self,
        peer: EndpointKey,
        ip: IpAddr,
        anchor: Option<&EndpointKey>,
        side: PeerSide,
    ) -> (EndpointKey, bool) {
        let ladder = levels_of(ip);
        let key = (anchor.cloned(), side);
        let levels = match self.anchors.get_mut(&key) {
            Some(l) => l,
            None => self.anchors.entry(key).or_default(),
        };
        for (level, &prefix) in ladder.iter().enumerate() {
            let cidr = Cidr::around(ip, prefix);
            let set = &mut levels.0[level];
            let last = level + 1 == ladder.len();
            if set.contains(&cidr) || set.len() < self.budget || last {
                set.insert(cidr);
                if level == 0 {
                    return (peer, false);
                }
                let folded = EndpointKey::new(peer.kind, None, &name(cidr, ladder[0]));
                return (folded, true);
            }
        }
        (peer, false)
    }

    /// Starts again from the edges held (after some were forgotten, or at start): each peer they name takes
    /// its place again, so a peer stays where it was counted.
    pub(crate) fn rebuild(&mut self, edges: &[EdgeStats]) {
        self.anchors.clear();
        for e in edges {
            let (src, dst) = (&e.key.src, &e.key.dst);
            let pairs = [
                (src, (!by_address(dst)).then_some(dst), PeerSide::Source),
                (
                    dst,
                    (!by_address(src)).then_some(src),
                    PeerSide::Destination,
                ),
            ];
            for (peer, anchor, side) in pairs {
                if !by_address(peer) {
                    continue;
                }
                let Some((cidr, level)) = parse_peer(&peer.name) else {
                    continue;
                };
                let levels = self.anchors.entry((anchor.cloned(), side)).or_default();
                levels.0[level].insert(cidr);
            }
        }
    }

    /// Endpoints with outside peers held.
    pub(crate) fn anchors(&self) -> usize {
        self.anchors.len()
    }

    /// Peers held, at every level.
    pub(crate) fn peers(&self) -> usize {
        self.anchors
            .values()
            .map(|l| l.0.iter().map(HashSet::len).sum::<usize>())
            .sum()
    }
}

/// A peer's name read back: an address (level 0) or a prefix at one of the levels.
fn parse_peer(name: &str) -> Option<(Cidr, usize)> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Some((Cidr::host(ip), 0));
    }
    let cidr = Cidr::parse(name)?;
    let level = levels_of(cidr.network())
        .iter()
        .position(|&p| p == cidr.prefix())?;
    Some((cidr, level))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn pod() -> EndpointKey {
        EndpointKey::new(EndpointKind::Pod, Some("shop"), "Deployment/web")
    }

    fn outside(ip: IpAddr) -> EndpointKey {
        EndpointKey::new(EndpointKind::External, None, &ip.to_string())
    }

    fn place(fold: &mut PeerFold, ip: IpAddr) -> String {
        let anchor = pod();
        fold.place(outside(ip), ip, Some(&anchor), PeerSide::Source)
            .0
            .name
            .to_string()
    }

    #[test]
    fn peers_beyond_the_budget_are_counted_under_ever_wider_prefixes() {
        let mut fold = PeerFold::new(2);
        let v4 = |a, b, c, d| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
        assert_eq!(place(&mut fold, v4(198, 51, 100, 1)), "198.51.100.1");
        assert_eq!(place(&mut fold, v4(198, 51, 100, 2)), "198.51.100.2");
        // The host level is full: the /24.
        assert_eq!(place(&mut fold, v4(198, 51, 100, 3)), "198.51.100.0/24");
        // An address kept by itself stays so.
        assert_eq!(place(&mut fold, v4(198, 51, 100, 1)), "198.51.100.1");
        assert_eq!(place(&mut fold, v4(203, 0, 113, 9)), "203.0.113.0/24");
        assert_eq!(place(&mut fold, v4(198, 51, 100, 200)), "198.51.100.0/24");
        // Two /24s held: the /16, then the /8, then everything.
        assert_eq!(place(&mut fold, v4(192, 0, 2, 1)), "192.0.0.0/16");
        assert_eq!(place(&mut fold, v4(192, 1, 2, 1)), "192.1.0.0/16");
        assert_eq!(place(&mut fold, v4(193, 1, 2, 1)), "193.0.0.0/8");
        assert_eq!(place(&mut fold, v4(194, 1, 2, 1)), "194.0.0.0/8");
        assert_eq!(place(&mut fold, v4(195, 1, 2, 1)), "0.0.0.0/0");
        assert_eq!(place(&mut fold, v4(8, 8, 8, 8)), "0.0.0.0/0");
        assert_eq!(fold.peers(), 9);
        // Another endpoint has its own budget; so has the other side.
        let other = EndpointKey::new(EndpointKind::Pod, Some("shop"), "Deployment/api");
        let ip = v4(8, 8, 8, 8);
        assert_eq!(
            fold.place(outside(ip), ip, Some(&other), PeerSide::Source)
                .0
                .name
                .as_ref(),
            "8.8.8.8"
        );
        let anchor = pod();
        let (to, folded) = fold.place(outside(ip), ip, Some(&anchor), PeerSide::Destination);
        assert_eq!((to.name.as_ref(), folded), ("8.8.8.8", false));
    }

    #[test]
    fn ipv6_peers_fold_at_48_32_and_16() {
        let mut fold = PeerFold::new(1);
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(place(&mut fold, v6("2001:db8:1:2::1")), "2001:db8:1:2::1");
        assert_eq!(place(&mut fold, v6("2001:db8:1:3::1")), "2001:db8:1::/48");
        assert_eq!(place(&mut fold, v6("2001:db8:2::1")), "2001:db8::/32");
        assert_eq!(place(&mut fold, v6("2001:db9::1")), "2001::/16");
        assert_eq!(place(&mut fold, v6("2002::1")), "::/0");
    }

    #[test]
    fn a_rebuilt_fold_puts_every_peer_where_it_was() {
        let mut fold = PeerFold::new(2);
        let ips: Vec<IpAddr> = (0..40u8)
            .map(|i| IpAddr::V4(Ipv4Addr::new(10 + i % 7, i, i / 3, i)))
            .collect();
        let names: Vec<String> = ips.iter().map(|&ip| place(&mut fold, ip)).collect();
        let edges: Vec<EdgeStats> = names
            .iter()
            .map(|n| {
                let r = crate::test_support::tcp(ips[0], ips[1], 80, 0, 1);
                let key = weir_analysis::EdgeKey {
                    src: EndpointKey::new(EndpointKind::External, None, n),
                    dst: pod(),
                    proto: weir_model::Protocol::TCP,
                    port: Some(80),
                };
                EdgeStats::new(
                    key,
                    &r,
                    weir_analysis::ConnectionVerdict {
                        verdict: weir_model::FlowVerdict::Allowed,
                        not_isolated: false,
                        policies: &[],
                        decided: &std::sync::Arc::default(),
                        service: None,
                    },
                    false,
                )
            })
            .collect();
        let mut rebuilt = PeerFold::new(2);
        rebuilt.rebuild(&edges);
        assert_eq!(rebuilt.peers(), fold.peers());
        for (ip, n) in ips.iter().zip(&names) {
            assert_eq!(&place(&mut rebuilt, *ip), n, "{ip}");
        }
    }
}

//! The join of a connection's two views: the record of the node it left (source side) and of the node it
//! arrived at (destination side) are one connection, counted once; what only one side saw says whether it was
//! delivered, dropped on the way, or denied yet delivered (an enforcement gap). Pure: the caller hands in each
//! view with its edge and verdict, and the clock.

use std::collections::VecDeque;
use std::net::IpAddr;

use foldhash::{HashMap, HashMapExt};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use weir_model::{Protocol, Timestamp};

/// How far apart two views of one connection may start.
const VIEW_SLACK_NS: i64 = 2_000_000_000;

/// Which end of a connection reported a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Side {
    /// The initiator's node (the record was seen leaving the source pod), or a record without an observation
    /// point.
    Source,
    /// The responder's node (seen arriving at the destination pod).
    Destination,
}

/// The connection a view belongs to: protocol, client address and port (ICMP: identifier).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct JoinKey {
    pub proto: Protocol,
    pub src: IpAddr,
    pub port: u16,
}

/// One view of a connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct View {
    pub key: JoinKey,
    /// Its destination as recorded (a Service address before DNAT).
    pub dst: IpAddr,
    /// The backend it resolved to (`dst` when no DNAT).
    pub backend: IpAddr,
    pub start: Timestamp,
    pub end: Timestamp,
    pub side: Side,
    /// The edge it counts on.
    pub edge: u32,
    pub denied: bool,
    /// Whether the destination took it ([`weir_model::ConnectionOutcome::answered`]).
    pub answered: bool,
    /// Whether the destination's node runs an agent (a view from there can be expected).
    pub destination_watched: bool,
    /// An active-timeout export of a connection that goes on (more views of it will come).
    pub continues: bool,
}

/// What a view was, joined with what was seen before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Joined {
    /// The first view of the connection: count it.
    pub new_connection: bool,
    /// Whether this view carries the connection's volume (the side that counted it first).
    pub counts_volume: bool,
    /// The connection is now known delivered, for the first time.
    pub newly_delivered: bool,
    /// A denied connection is now known delivered (once per connection).
    pub gap: bool,
}

/// What expiry found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Expired {
    /// Allowed connections that left the source but never arrived, by the edge they count on.
    pub dropped: Vec<u32>,
    /// Connections let go before their time because the table was full.
    pub evicted: u64,
}

#[derive(Clone, Debug)]
struct Conn {
    start: Timestamp,
    last_end: Timestamp,
    edge: u32,
    /// Which end counted it (its records carry the volume).
    primary: Side,
    seen_source: bool,
    seen_destination: bool,
    delivered: bool,
    denied: bool,
    gap_raised: bool,
    destination_watched: bool,
    expires: i64,
}

/// Where a connection waits: its client end and the address it reached (the backend, after DNAT). Every
/// field of the connection's tuple is in the key, so a view finds its connection in one lookup whatever else
/// the same client port talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Tuple {
    key: JoinKey,
    dst: IpAddr,
}

/// Connections of one tuple waiting at once, at most: a client port reused this often within the join window
/// is not ordinary traffic, and beyond it the oldest is let go (counted as evicted) so that a view costs a
/// bounded search, whatever a sender crafts.
const PER_TUPLE: usize = 8;

/// Connections waiting for their other view.
#[derive(Debug, Default)]
pub(crate) struct JoinTable {
    joins: HashMap<Tuple, SmallVec<[Conn; 1]>>,
    count: usize,
    expiry: VecDeque<(i64, Tuple)>,
    /// Connections let go because their tuple had [`PER_TUPLE`] waiting, since the last expiry.
    crowded: u64,
}

impl JoinTable {
    pub fn new() -> JoinTable {
        JoinTable {
            joins: HashMap::new(),
            count: 0,
            expiry: VecDeque::new(),
            crowded: 0,
        }
    }

    /// The waiting connection `v` is a view of: its tuple and place there.
    fn find(&self, v: &View) -> Option<(Tuple, usize)> {
        let near = |c: &Conn| {
            v.start.0 >= c.start.0.saturating_sub(VIEW_SLACK_NS)
                && v.start.0 <= c.last_end.0.saturating_add(VIEW_SLACK_NS)
        };
        // The backend it reached, or (a view recorded before DNAT that did not resolve) its destination.
        let mut dsts: SmallVec<[IpAddr; 2]> = SmallVec::new();
        dsts.push(v.backend);
        if v.dst != v.backend {
            dsts.push(v.dst);
        }
        dsts.into_iter().find_map(|dst| {
            let tuple = Tuple { key: v.key, dst };
            let at = self.joins.get(&tuple)?.iter().position(near)?;
            Some((tuple, at))
        })
    }

    /// Connections waiting.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Takes a view; the connection waits for its other view until `expires` (on the caller's clock).
    pub fn add(&mut self, v: &View, expires: i64) -> Joined {
        let found = match self.find(v) {
            Some((tuple, at)) => self.joins.get_mut(&tuple).and_then(|c| c.get_mut(at)),
            None => None,
        };
        let new_connection = found.is_none();
        let mut counts_volume = true;
        let mut scratch;
        let conn: &mut Conn = match found {
            Some(c) => {
                counts_volume = c.primary == v.side;
                c.last_end = c.last_end.max(v.end);
                c.expires = expires;
                c
            }
            None => {
                let c = Conn {
                    start: v.start,
                    last_end: v.end,
                    edge: v.edge,
                    primary: v.side,
                    seen_source: false,
                    seen_destination: false,
                    delivered: false,
                    denied: v.denied,
                    gap_raised: false,
                    destination_watched: v.destination_watched,
                    expires,
                };
                // Nothing more can come of a connection that is over and whose destination's node does not
                // report: it needs no place in the table (most connections, when few nodes run agents).
                let more_to_come =
                    v.destination_watched || v.side == Side::Destination || v.continues;
                if more_to_come {
                    let tuple = Tuple {
                        key: v.key,
                        dst: v.backend,
                    };
                    self.count += 1;
                    self.expiry.push_back((expires, tuple));
                    let conns = self.joins.entry(tuple).or_default();
                    if conns.len() >= PER_TUPLE
                        && let Some(oldest) = (0..conns.len()).min_by_key(|&i| conns[i].last_end)
                    {
                        conns.remove(oldest);
                        self.count -= 1;
                        self.crowded += 1;
                    }
                    conns.push(c);
                    let last = conns.len() - 1;
                    &mut conns[last]
                } else {
                    scratch = c;
                    &mut scratch
                }
            }
        };
        match v.side {
            Side::Source => conn.seen_source = true,
            Side::Destination => conn.seen_destination = true,
        }
        let newly_delivered = !conn.delivered && (v.side == Side::Destination || v.answered);
        if newly_delivered {
            conn.delivered = true;
        }
        let gap = newly_delivered && conn.denied && !conn.gap_raised;
        if gap {
            conn.gap_raised = true;
        }
        Joined {
            new_connection,
            counts_volume,
            newly_delivered,
            gap,
        }
    }

    /// Closes connections whose other view did not come by `now`, and the oldest ones while more than `max`
    /// wait.
    pub fn expire(&mut self, now: Timestamp, max: usize) -> Expired {
        let mut out = Expired {
            evicted: std::mem::take(&mut self.crowded),
            ..Expired::default()
        };
        while let Some(&(at, key)) = self.expiry.front() {
            let over = self.count > max;
            if at > now.0 && !over {
                break;
            }
            self.expiry.pop_front();
            let Some(conns) = self.joins.get_mut(&key) else {
                continue;
            };
            let mut finished = Vec::new();
            conns.retain(|c| {
                let done = c.expires <= now.0 || (over && c.expires <= at);
                if done {
                    finished.push(c.clone());
                }
                !done
            });
            let empty = conns.is_empty();
            if !empty && let Some(next) = conns.iter().map(|c| c.expires).min() {
                self.expiry.push_back((next, key));
            }
            if empty {
                self.joins.remove(&key);
            }
            for c in finished {
                self.count -= 1;
                if over && c.expires > now.0 {
                    out.evicted += 1;
                }
                // Left the source, never arrived, never answered: dropped on the way. For a denied
                // connection that is the policy being enforced.
                if c.seen_source
                    && !c.seen_destination
                    && !c.delivered
                    && c.destination_watched
                    && !c.denied
                {
                    out.dropped.push(c.edge);
                }
            }
        }
        out
    }

    /// The edges waiting connections count on (they must outlive the connections).
    pub fn edges(&self) -> impl Iterator<Item = u32> + '_ {
        self.joins.values().flatten().map(|c| c.edge)
    }

    /// Renumbers the edges after the book dropped some.
    pub fn renumber(&mut self, renumber: &[Option<usize>]) {
        for conns in self.joins.values_mut() {
            for c in conns.iter_mut() {
                c.edge = match renumber.get(c.edge as usize) {
                    Some(&Some(n)) => u32::try_from(n).unwrap_or(u32::MAX),
                    // Its edge was forgotten (the book was full): it counts into none.
                    Some(None) => u32::MAX,
                    None => c.edge,
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn view(side: Side, at: i64) -> View {
        View {
            key: JoinKey {
                proto: Protocol::TCP,
                src: ip("10.1.1.5"),
                port: 40_000,
            },
            dst: ip("10.96.0.10"),
            backend: ip("10.1.2.6"),
            start: Timestamp(at),
            end: Timestamp(at + 1000),
            side,
            edge: 7,
            denied: false,
            answered: false,
            destination_watched: true,
            continues: false,
        }
    }

    #[test]
    fn two_views_are_one_connection_and_the_first_carries_the_volume() {
        let mut t = JoinTable::new();
        let first = t.add(&view(Side::Source, 0), 5 * S);
        assert!(first.new_connection && first.counts_volume && !first.newly_delivered);
        // The destination's node saw it after DNAT: to the backend, a moment later.
        let mut second = view(Side::Destination, S);
        second.dst = second.backend;
        let second = t.add(&second, 6 * S);
        assert!(!second.new_connection && !second.counts_volume && second.newly_delivered);
        assert_eq!(t.len(), 1);
        assert_eq!(t.expire(Timestamp(10 * S), usize::MAX), Expired::default());
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_view_too_far_apart_in_time_is_another_connection() {
        let mut t = JoinTable::new();
        t.add(&view(Side::Source, 0), 5 * S);
        let later = t.add(&view(Side::Destination, 10 * S), 15 * S);
        assert!(
            later.new_connection,
            "a reused client port, not the same connection"
        );
    }

    #[test]
    fn sent_but_never_arrived_is_dropped_unless_denied() {
        let mut t = JoinTable::new();
        t.add(&view(Side::Source, 0), 5 * S);
        let mut denied = view(Side::Source, 0);
        denied.key.port = 40_001;
        denied.denied = true;
        t.add(&denied, 5 * S);
        let out = t.expire(Timestamp(5 * S), usize::MAX);
        assert_eq!(out.dropped, [7], "the denied one was the policy at work");
    }

    #[test]
    fn a_denied_connection_delivered_is_one_gap() {
        let mut t = JoinTable::new();
        let mut v = view(Side::Source, 0);
        v.denied = true;
        assert!(!t.add(&v, 5 * S).gap);
        let mut arrived = v;
        arrived.side = Side::Destination;
        assert!(t.add(&arrived, 5 * S).gap);
        assert!(!t.add(&arrived, 5 * S).gap, "raised once per connection");
    }

    #[test]
    fn an_unwatched_destination_needs_no_place_in_the_table() {
        let mut t = JoinTable::new();
        let mut v = view(Side::Source, 0);
        v.destination_watched = false;
        assert!(t.add(&v, 5 * S).new_connection);
        assert_eq!(t.len(), 0);
        v.continues = true;
        t.add(&v, 5 * S);
        assert_eq!(t.len(), 1, "an active-timeout export will have a sequel");
    }

    #[test]
    fn views_sharing_a_client_port_find_their_own_connection_at_once() {
        let mut t = JoinTable::new();
        // 100,000 connections from one client port, each to another destination: one lookup each.
        for i in 0..100_000u32 {
            let mut v = view(Side::Source, 0);
            v.backend = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            v.dst = v.backend;
            assert!(t.add(&v, 5 * S).new_connection);
        }
        assert_eq!(t.len(), 100_000);
        assert!(t.joins.values().all(|c| c.len() == 1));
        // The other end of one of them joins it.
        let mut other = view(Side::Destination, 0);
        other.backend = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + 77_777));
        other.dst = other.backend;
        assert!(t.add(&other, 5 * S).newly_delivered);
        assert!(!t.add(&other, 5 * S).new_connection);
    }

    #[test]
    fn one_tuple_reused_without_end_keeps_a_bounded_list() {
        let mut t = JoinTable::new();
        for i in 0..1000i64 {
            t.add(&view(Side::Source, i * 10 * S), 100_000 * S);
        }
        assert_eq!(t.len(), PER_TUPLE);
        assert!(t.joins.values().all(|c| c.len() <= PER_TUPLE));
        let out = t.expire(Timestamp(0), usize::MAX);
        assert_eq!(
            out.evicted,
            1000 - PER_TUPLE as u64,
            "every one let go is counted"
        );
        // The newest are the ones kept: a view of the last connection still joins it.
        let last = t.add(&view(Side::Destination, 999 * 10 * S), 100_000 * S);
        assert!(!last.new_connection);
    }

    #[test]
    fn a_full_table_lets_the_oldest_go_and_counts_them() {
        let mut t = JoinTable::new();
        for port in 0..10u16 {
            let mut v = view(Side::Source, 0);
            v.key.port = port;
            t.add(&v, 100 * S + i64::from(port));
        }
        let out = t.expire(Timestamp(0), 4);
        assert_eq!(out.evicted, 6);
        assert_eq!(t.len(), 4);
        assert_eq!(t.edges().count(), 4);
    }
}

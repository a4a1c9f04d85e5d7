//! The judging core on hand-made records: the baseline and `new-edge`, deduplication and rate limiting, and
//! the join of a connection's views from two nodes (denied yet delivered; sent but never arrived).

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use weir_aggregator::{Engine, EngineConfig};
use weir_cluster::SnapshotLoader;
use weir_model::{
    AlertKind, Direction, FlowRecord, ObservationPoint, Protocol, TcpFlags, Timestamp,
};
use weir_policy::PolicySet;

const CLUSTER: &str = "
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Node, metadata: {name: n1}, spec: {podCIDR: 10.1.1.0/24}}
- {apiVersion: v1, kind: Node, metadata: {name: n2}, spec: {podCIDR: 10.1.2.0/24}}
- apiVersion: v1
  kind: Pod
  metadata: {name: web, namespace: app, labels: {app: web}}
  spec: {nodeName: n1, containers: [{name: c, image: x}]}
  status: {phase: Running, podIP: 10.1.1.5}
- apiVersion: v1
  kind: Pod
  metadata: {name: api, namespace: app, labels: {app: api}}
  spec: {nodeName: n2, containers: [{name: c, image: x}]}
  status: {phase: Running, podIP: 10.1.2.5}
- apiVersion: v1
  kind: Pod
  metadata: {name: db, namespace: app, labels: {app: db}}
  spec: {nodeName: n2, containers: [{name: c, image: x}]}
  status: {phase: Running, podIP: 10.1.2.6}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: db, namespace: app}
  spec:
    podSelector: {matchLabels: {app: db}}
    ingress: [{from: [{podSelector: {matchLabels: {app: api}}}]}]
";

const S: i64 = 1_000_000_000;

fn set() -> Arc<PolicySet> {
    let mut loader = SnapshotLoader::default();
    loader
        .add_bytes(Path::new("cluster.yaml"), CLUSTER.as_bytes())
        .unwrap();
    Arc::new(PolicySet::new(Arc::new(loader.finish().0)).unwrap())
}

fn record(
    src: &str,
    sport: u16,
    dst: &str,
    dport: u16,
    at: i64,
    seen: Option<(&str, Direction)>,
) -> FlowRecord {
    let mut r = FlowRecord {
        src: src.parse::<IpAddr>().unwrap(),
        src_port: Some(sport),
        dst: dst.parse::<IpAddr>().unwrap(),
        dst_port: Some(dport),
        proto: Protocol::TCP,
        icmp_type: None,
        icmp_code: None,
        icmp_id: None,
        packets: 1,
        bytes: 60,
        reply_packets: 0,
        reply_bytes: 0,
        start: Timestamp(at),
        end: Timestamp(at + 1000),
        tcp_flags: TcpFlags(TcpFlags::SYN),
        reply_tcp_flags: TcpFlags(0),
        orientation: Default::default(),
        end_reason: Default::default(),
        community_id: String::new(),
        observed_at: seen.map(|(node, direction)| ObservationPoint {
            node: node.into(),
            interface: "veth0".into(),
            direction,
        }),
    };
    r.community_id = r.compute_community_id();
    r
}

fn config() -> EngineConfig {
    EngineConfig {
        learn: Duration::from_secs(10),
        alert_repeat: Duration::from_secs(30),
        join_window: Duration::from_secs(5),
        ..EngineConfig::default()
    }
}

#[test]
fn edges_learned_in_the_window_are_quiet_and_later_ones_are_new_once() {
    let t0 = 1_000 * S;
    let mut e = Engine::new(config(), set(), Timestamp(t0));
    // Learning: web -> api:8080.
    e.apply(
        vec![record("10.1.1.5", 4000, "10.1.2.5", 8080, t0, None)],
        Timestamp(t0 + S),
    );
    assert!(e.take_deliveries().is_empty());
    // After learning: the same edge is quiet, a new port is a new edge.
    e.apply(
        vec![record(
            "10.1.1.5",
            4001,
            "10.1.2.5",
            8080,
            t0 + 20 * S,
            None,
        )],
        Timestamp(t0 + 20 * S),
    );
    assert!(e.take_deliveries().is_empty());
    e.apply(
        vec![record(
            "10.1.1.5",
            4002,
            "10.1.2.5",
            9090,
            t0 + 21 * S,
            None,
        )],
        Timestamp(t0 + 21 * S),
    );
    let raised = e.take_deliveries();
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0].kind, AlertKind::NewEdge);
    assert_eq!(raised[0].port, Some(9090));
    // Again and again: one alert counting on, delivered again only after the repeat interval.
    for i in 0..5 {
        e.apply(
            vec![record(
                "10.1.1.5",
                4100 + i,
                "10.1.2.5",
                9090,
                t0 + 22 * S,
                None,
            )],
            Timestamp(t0 + 22 * S),
        );
    }
    assert!(e.take_deliveries().is_empty());
    e.tick(Timestamp(t0 + 60 * S));
    let update = e.take_deliveries();
    assert_eq!(update.len(), 1);
    assert_eq!(update[0].count, 6);
    assert_eq!(update[0].id, raised[0].id);
}

#[test]
fn views_from_two_nodes_join_into_one_connection() {
    let t0 = 1_000 * S;
    let mut e = Engine::new(config(), set(), Timestamp(t0 - 100 * S));
    e.watch_node("n1");
    e.watch_node("n2");
    // Denied web -> db, seen leaving web on n1 and arriving at db on n2: one connection, an enforcement gap.
    let out = record(
        "10.1.1.5",
        5000,
        "10.1.2.6",
        5432,
        t0,
        Some(("n1", Direction::FromPod)),
    );
    let r#in = record(
        "10.1.1.5",
        5000,
        "10.1.2.6",
        5432,
        t0 + 200_000,
        Some(("n2", Direction::ToPod)),
    );
    let a = e.apply(vec![out], Timestamp(t0 + S));
    let b = e.apply(vec![r#in], Timestamp(t0 + 2 * S));
    assert_eq!((a.connections, b.connections, b.joined_views), (1, 0, 1));
    let kinds: Vec<AlertKind> = e.take_deliveries().iter().map(|a| a.kind).collect();
    assert_eq!(
        kinds,
        [AlertKind::PolicyViolation, AlertKind::EnforcementGap]
    );
    // Allowed web -> api:8080, seen leaving n1 and never arriving on n2 (whose agent reports): dropped.
    e.apply(
        vec![record(
            "10.1.1.5",
            5001,
            "10.1.2.5",
            8080,
            t0,
            Some(("n1", Direction::FromPod)),
        )],
        Timestamp(t0 + 3 * S),
    );
    e.tick(Timestamp(t0 + 30 * S));
    let edge = e.edges().iter().find(|x| x.key.port == Some(8080)).unwrap();
    assert_eq!(
        (edge.flows, edge.dropped_in_transit, edge.delivered),
        (1, 1, 0)
    );
    assert_eq!(e.totals().dropped_in_transit, 1);
    let db = e.edges().iter().find(|x| x.key.port == Some(5432)).unwrap();
    assert_eq!(
        (db.flows, db.denied, db.enforcement_gaps, db.delivered),
        (1, 1, 1, 1)
    );
    assert_eq!(e.pending_joins(), 0);
}

#[test]
fn a_batch_judged_against_a_policy_set_since_replaced_is_judged_again() {
    let t0 = 1_000 * S;
    let mut e = Engine::new(config(), set(), Timestamp(t0));
    let records = vec![record("10.1.1.5", 4000, "10.1.2.5", 8080, t0, None)];
    // Judged outside the engine, then the cluster changes before it is counted.
    let judged = e.judge_kit().judge(records.clone());
    e.set_policy(set());
    assert!(e.apply_judged(judged, Timestamp(t0 + S)).is_none());
    assert_eq!(
        e.totals().records,
        0,
        "nothing counted from the stale verdicts"
    );
    // Judged against the set in force, it counts.
    let judged = e.judge_kit().judge(records);
    let applied = e.apply_judged(judged, Timestamp(t0 + S)).unwrap();
    assert_eq!((applied.records, applied.connections), (1, 1));
    assert_eq!(e.totals().verdicts.values().sum::<u64>(), 1);
}

#[test]
fn a_long_connection_exported_twice_is_one_connection_even_without_the_other_end() {
    let t0 = 1_000 * S;
    let mut e = Engine::new(config(), set(), Timestamp(t0));
    // An active-timeout export, then the final record of the same connection (same client port).
    let mut first = record(
        "10.1.1.5",
        4000,
        "10.1.2.5",
        8080,
        t0,
        Some(("n1", Direction::FromPod)),
    );
    first.end_reason = weir_model::EndReason::ActiveTimeout;
    first.end = Timestamp(t0 + 4 * S);
    let mut last = record(
        "10.1.1.5",
        4000,
        "10.1.2.5",
        8080,
        t0,
        Some(("n1", Direction::FromPod)),
    );
    last.start = Timestamp(t0 + 5 * S);
    last.end = Timestamp(t0 + 6 * S);
    last.end_reason = weir_model::EndReason::TcpClosed;
    let a = e.apply(vec![first], Timestamp(t0 + 5 * S));
    let b = e.apply(vec![last], Timestamp(t0 + 6 * S));
    assert_eq!((a.connections, b.connections, b.joined_views), (1, 0, 1));
    // A closed connection nobody else can report takes no place in the join table.
    let before = e.pending_joins();
    let c = e.apply(
        vec![record(
            "10.1.1.6",
            4100,
            "10.1.2.5",
            8080,
            t0 + 7 * S,
            Some(("n1", Direction::FromPod)),
        )],
        Timestamp(t0 + 7 * S),
    );
    assert_eq!(c.connections, 1);
    assert_eq!(e.pending_joins(), before);
}

/// The edges by destination port, with their connection counts.
fn flows_by_port(e: &Engine) -> Vec<(Option<u16>, u64)> {
    let mut v: Vec<_> = e.edges().iter().map(|x| (x.key.port, x.flows)).collect();
    v.sort_unstable();
    v
}

/// An engine keeping edges and alerts for `retention`, its baseline learned long before `t0`.
fn retaining(retention: Duration, t0: i64) -> Engine {
    Engine::new(
        EngineConfig {
            retention,
            ..config()
        },
        set(),
        Timestamp(t0 - 100 * S),
    )
}

#[test]
fn edges_and_alerts_past_the_retention_are_forgotten_and_the_rest_counts_on() {
    let t0 = 1_000 * S;
    let mut e = retaining(Duration::from_secs(600), t0);
    // Four edges from web: api on 8081 and 8083 last seen at t0, api on 8082 and 8084 ten minutes later.
    for (i, port) in [8081u16, 8082, 8083, 8084].into_iter().enumerate() {
        e.apply(
            vec![record("10.1.1.5", 4000, "10.1.2.5", port, t0, None)],
            Timestamp(t0),
        );
        if i % 2 == 1 {
            e.apply(
                vec![record(
                    "10.1.1.5",
                    4100,
                    "10.1.2.5",
                    port,
                    t0 + 600 * S,
                    None,
                )],
                Timestamp(t0 + 600 * S),
            );
        }
    }
    // And a denied web -> db at t0: its violation alert.
    e.apply(
        vec![record("10.1.1.5", 4200, "10.1.2.6", 5432, t0, None)],
        Timestamp(t0),
    );
    assert!(
        e.take_deliveries()
            .iter()
            .any(|a| a.kind == AlertKind::PolicyViolation)
    );
    let _ = e.take_changes();
    assert_eq!(e.edges().len(), 5);
    // A new-edge alert per port (learning was over) and the violation.
    assert_eq!(e.alerts().count(), 5);

    // Just inside the retention: nothing goes.
    assert_eq!(e.forget_expired(Timestamp(t0 + 600 * S)), (0, 0));
    // Past it: the three edges and the three alerts seen only at t0 go, the two of each seen since stay.
    assert_eq!(e.forget_expired(Timestamp(t0 + 601 * S)), (3, 3));
    assert_eq!(flows_by_port(&e), [(Some(8082), 2), (Some(8084), 2)]);
    let mut kept: Vec<Option<u16>> = e.alerts().map(|a| a.port).collect();
    kept.sort_unstable();
    assert_eq!(kept, [Some(8082), Some(8084)]);
    let totals = e.totals();
    assert_eq!((totals.expired_edges, totals.expired_alerts), (3, 3));

    // The edges that stayed count on under their new places, and a forgotten edge starts again from nothing
    // and is new (learning is long over), with a fresh violation alert for web -> db.
    let later = t0 + 700 * S;
    e.apply(
        vec![
            record("10.1.1.5", 4300, "10.1.2.5", 8084, later, None),
            record("10.1.1.5", 4301, "10.1.2.5", 8082, later, None),
            record("10.1.1.5", 4302, "10.1.2.5", 8081, later, None),
            record("10.1.1.5", 4303, "10.1.2.6", 5432, later, None),
        ],
        Timestamp(later),
    );
    assert_eq!(
        flows_by_port(&e),
        [
            (Some(5432), 1),
            (Some(8081), 1),
            (Some(8082), 3),
            (Some(8084), 3)
        ]
    );
    let new = e.edges().iter().find(|x| x.key.port == Some(8081)).unwrap();
    assert!(!new.baseline);
    assert_eq!(new.first_seen, Timestamp(later));
    let kinds: Vec<AlertKind> = e.take_deliveries().iter().map(|a| a.kind).collect();
    assert!(kinds.contains(&AlertKind::PolicyViolation));
    assert!(kinds.contains(&AlertKind::NewEdge));
    // What changed since the last checkpoint names only edges that exist.
    let (changed, _, _) = e.take_changes();
    assert_eq!(changed.len(), 4);
}

#[test]
fn an_edge_a_waiting_connection_points_at_is_kept_until_the_connection_is_done() {
    let t0 = 1_000 * S;
    let mut e = retaining(Duration::from_secs(60), t0);
    // An old connection arrives late (an agent catching up): seen leaving web, waiting for the view from n2.
    let arrived = t0 + 120 * S;
    let out = record(
        "10.1.1.5",
        5000,
        "10.1.2.6",
        5432,
        t0,
        Some(("n1", Direction::FromPod)),
    );
    // A second edge, older still and not waited on (no agent reports yet), goes first; it sits before the
    // waited-on edge, so the waiting connection's edge moves.
    e.apply(
        vec![record(
            "10.1.1.5",
            4000,
            "10.1.2.5",
            8080,
            t0 - 10 * S,
            None,
        )],
        Timestamp(arrived),
    );
    e.watch_node("n1");
    e.watch_node("n2");
    e.apply(vec![out], Timestamp(arrived));
    assert_eq!(e.pending_joins(), 1);
    assert_eq!(e.forget_expired(Timestamp(arrived)).0, 1);
    assert_eq!(flows_by_port(&e), [(Some(5432), 1)]);
    // The other view joins the connection on its edge, wherever it now is.
    let r#in = record(
        "10.1.1.5",
        5000,
        "10.1.2.6",
        5432,
        t0 + 200_000,
        Some(("n2", Direction::ToPod)),
    );
    let b = e.apply(vec![r#in], Timestamp(arrived + S));
    assert_eq!((b.connections, b.joined_views), (0, 1));
    let db = e.edges().iter().find(|x| x.key.port == Some(5432)).unwrap();
    assert_eq!((db.flows, db.delivered, db.enforcement_gaps), (1, 1, 1));
    // Once the connection is done, nothing holds the edge: the same tick that ends it forgets the edge.
    e.tick(Timestamp(arrived + 30 * S));
    assert_eq!(e.pending_joins(), 0);
    assert!(e.edges().is_empty());
    assert_eq!(e.totals().expired_edges, 2);
}

#[test]
fn tick_forgets_on_its_own() {
    let t0 = 1_000 * S;
    let mut e = retaining(Duration::from_secs(60), t0);
    e.apply(
        vec![record("10.1.1.5", 4000, "10.1.2.5", 8080, t0, None)],
        Timestamp(t0),
    );
    e.tick(Timestamp(t0 + 30 * S));
    assert_eq!(e.edges().len(), 1);
    // The retention is a minute: tick looks again within a second or so of it running out.
    e.tick(Timestamp(t0 + 62 * S));
    assert!(e.edges().is_empty());
    assert_eq!(e.totals().expired_edges, 1);
}

/// An engine with small bounds, to see them hold.
fn bounded(outside_peers: usize, max_edges: usize, t0: i64) -> Engine {
    let config = EngineConfig {
        learn: Duration::ZERO,
        outside_peers,
        max_edges,
        max_alerts: 500,
        max_scan_sources: 1000,
        ..EngineConfig::default()
    };
    Engine::new(config, set(), Timestamp(t0))
}

/// The `i`th of many distinct internet addresses (never in the cluster's ranges).
fn outside(i: u32) -> String {
    let a = 0x2000_0000u32.wrapping_add(i.wrapping_mul(2_654_435_761) >> 3);
    std::net::Ipv4Addr::from(a).to_string()
}

#[test]
fn a_flood_of_distinct_outside_sources_is_folded_and_bounded() {
    let t0 = 1_000 * S;
    let budget = 16;
    let mut e = bounded(budget, 1_000_000, t0);
    let n = 60_000u32;
    for chunk in (0..n).collect::<Vec<_>>().chunks(5_000) {
        let batch = chunk
            .iter()
            .map(|&i| {
                // To two pods, on two ports each.
                let (dst, port) = match i % 4 {
                    0 => ("10.1.1.5", 443),
                    1 => ("10.1.1.5", 80),
                    2 => ("10.1.2.6", 5432),
                    _ => ("10.1.2.6", 443),
                };
                record(&outside(i), 40000, dst, port, t0 + i64::from(i), None)
            })
            .collect();
        e.apply(batch, Timestamp(t0 + 10 * S));
    }
    let totals = e.totals();
    assert_eq!(totals.connections, u64::from(n), "every connection counted");
    // Per pod and side: at most the budget at each of the four levels, and the catch-all.
    let (peers, anchors) = e.outside_peers();
    assert_eq!(anchors, 2);
    assert!(peers <= 2 * (4 * budget + 1), "{peers} peers held");
    // Edges name a peer per port: at most that many per port.
    let outside_edges = e
        .edges()
        .iter()
        .filter(|x| x.key.src.kind == weir_model::EndpointKind::External)
        .count();
    assert!(outside_edges <= 4 * (4 * budget + 1), "{outside_edges}");
    assert!(outside_edges >= 4 * budget, "{outside_edges}");
    // Every connection is on an edge, folded or not.
    let flows: u64 = e.edges().iter().map(|x| x.flows).sum();
    assert_eq!(flows, u64::from(n));
    assert!(totals.folded_connections > u64::from(n) / 2);
    assert!(
        e.edges().iter().any(|x| x.key.src.name.ends_with("/0")),
        "the catch-all holds the rest"
    );
    // Alerts follow the edges: bounded by them, not by the sources.
    assert!(e.alert_count() <= 500, "{}", e.alert_count());
}

#[test]
fn the_edge_book_stays_under_its_cap_forgetting_the_least_recently_seen() {
    let t0 = 1_000 * S;
    // Every address kept by itself; only the cap bounds the book.
    let mut e = bounded(1_000_000, 1_000, t0);
    let batch: Vec<FlowRecord> = (0..5_000u32)
        .map(|i| {
            record(
                &outside(i),
                40000,
                "10.1.1.5",
                443,
                t0 + i64::from(i) * 1000,
                None,
            )
        })
        .collect();
    e.apply(batch, Timestamp(t0 + 10 * S));
    assert!(e.edges().len() <= 1_000, "{}", e.edges().len());
    let t = e.totals();
    assert_eq!(t.connections, 5_000);
    assert_eq!(t.evicted_edges as usize + e.edges().len(), 5_000);
    // The newest edges are the ones kept, and the store is told which ones went.
    let newest = e.edges().iter().map(|x| x.last_seen).max().unwrap();
    assert_eq!(newest, Timestamp(t0 + 4_999 * 1000 + 1000));
    let oldest_kept = e.edges().iter().map(|x| x.last_seen).min().unwrap();
    assert!(oldest_kept.0 >= t0 + 4_000 * 1000, "{oldest_kept:?}");
    let forgotten = e.take_forgotten();
    assert_eq!(forgotten.edges.len() as u64, t.evicted_edges);
    assert!(e.take_forgotten().edges.is_empty());
}

const ADMIN: &str = "
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: sec-ops}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {}}
  ingress:
  - {name: no-web-to-db, action: Deny, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}}]}
  - {name: delegate, action: Pass, from: [{namespaces: {}}]}
";

fn set_with_admin() -> Arc<PolicySet> {
    let mut loader = SnapshotLoader::default();
    loader
        .add_bytes(Path::new("cluster.yaml"), CLUSTER.as_bytes())
        .unwrap();
    loader
        .add_bytes(Path::new("admin.yaml"), ADMIN.as_bytes())
        .unwrap();
    Arc::new(PolicySet::new(Arc::new(loader.finish().0)).unwrap())
}

/// An edge keeps how each direction of its last verdict was decided, and follows the policies in force: an
/// Admin Deny names its rule; with the cluster-wide policy gone, the NetworkPolicy tier decides the next
/// connection and the edge says so.
#[test]
fn an_edge_carries_its_decision_chain_and_follows_the_tiers() {
    let t0 = 1_000 * S;
    let mut e = Engine::new(config(), set_with_admin(), Timestamp(t0));
    e.apply(
        vec![
            record("10.1.1.5", 4000, "10.1.2.6", 5432, t0, None),
            record("10.1.2.5", 4001, "10.1.2.6", 5432, t0, None),
        ],
        Timestamp(t0 + S),
    );
    let edge = |e: &Engine, from: &str| {
        e.edges()
            .iter()
            .find(|x| &*x.key.src.name == from && &*x.key.dst.name == "Pod/db")
            .unwrap_or_else(|| panic!("no edge from {from}: {:?}", e.edges()))
            .clone()
    };
    let denied = edge(&e, "Pod/web");
    assert_eq!(denied.decided.ingress.tier, weir_analysis::SideTier::Admin);
    assert!(
        denied
            .decided
            .ingress
            .chain
            .contains(r#"rule #0 "no-web-to-db" Deny"#),
        "{:?}",
        denied.decided
    );
    let passed = edge(&e, "Pod/api");
    assert_eq!(
        passed.decided.ingress.tier,
        weir_analysis::SideTier::NetworkPolicy
    );
    assert!(
        passed
            .decided
            .ingress
            .chain
            .contains(r#""delegate" Pass → NetworkPolicy app/db isolates, app/db rule #0 allows"#),
        "{:?}",
        passed.decided
    );
    assert_eq!(passed.decided.egress.tier, weir_analysis::SideTier::Default);
    // The cluster-wide policy is removed: the next connection is NetworkPolicy's alone.
    e.set_policy(set());
    e.apply(
        vec![record("10.1.1.5", 4002, "10.1.2.6", 5432, t0 + 2 * S, None)],
        Timestamp(t0 + 3 * S),
    );
    let now = edge(&e, "Pod/web");
    assert_eq!(
        now.decided.ingress.tier,
        weir_analysis::SideTier::NetworkPolicy
    );
    assert_eq!(
        now.decided.ingress.chain,
        "NetworkPolicy app/db isolates, no rule allows"
    );
}

//! The aggregator's judging core fed arbitrary records in arbitrary batches, with small bounds so that every
//! eviction path runs: no panic, and the bounds and the counts hold.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use weir_aggregator::{Engine, EngineConfig};
use weir_cluster::SnapshotLoader;
use weir_model::{
    Direction, EndReason, FlowRecord, ObservationPoint, Orientation, Protocol, TcpFlags, Timestamp,
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
  metadata: {name: db, namespace: app, labels: {app: db}}
  spec: {nodeName: n2, containers: [{name: c, image: x}]}
  status: {phase: Running, podIP: 10.1.2.6}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: db, namespace: app}
  spec:
    podSelector: {matchLabels: {app: db}}
    ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 5432}]}]
";

fn set() -> Arc<PolicySet> {
    static SET: OnceLock<Arc<PolicySet>> = OnceLock::new();
    Arc::clone(SET.get_or_init(|| {
        let mut loader = SnapshotLoader::default();
        loader
            .add_bytes(Path::new("cluster.yaml"), CLUSTER.as_bytes())
            .expect("the cluster loads");
        Arc::new(PolicySet::new(Arc::new(loader.finish().0)).expect("the policies compile"))
    }))
}

/// One record from 12 bytes: the ends from a handful of pod, node, outside and unknown addresses (so edges
/// repeat), ports, protocol, flags, times and which node saw it.
fn record(b: &[u8; 12]) -> FlowRecord {
    let ip = |x: u8| -> IpAddr {
        match x % 8 {
            0 => [10, 1, 1, 5].into(),
            1 => [10, 1, 2, 6].into(),
            2 => [10, 1, 1, 200].into(),
            3 => [10, 1, 2, 1].into(),
            4 => "2001:db8::1".parse().expect("an address"),
            _ => IpAddr::V4(Ipv4Addr::new(198, 51, x, x.wrapping_mul(7))),
        }
    };
    let proto = [Protocol::TCP, Protocol::UDP, Protocol::ICMP, Protocol(132)][usize::from(b[4] % 4)];
    let ports = !proto.is_icmp();
    // Now and then the extremes a hostile agent can put on the wire: times at the ends of the range, counts
    // near overflow.
    let start = match b[6] {
        0xff => i64::MAX - i64::from(b[7]),
        0xfe => i64::MIN + i64::from(b[7]),
        _ => i64::from(u16::from_le_bytes([b[6], b[7]])) * 1_000_000 - 5_000_000_000,
    };
    let length = match b[8] {
        0xff => i64::MAX,
        0xfe => -1_000_000_000,
        n => i64::from(n) * 10_000_000,
    };
    let huge = b[5] & 0x80 != 0;
    let count = |small: u64| if huge { u64::MAX - small } else { small };
    FlowRecord {
        src: ip(b[0]),
        src_port: ports.then(|| u16::from_le_bytes([b[1], 0x80])),
        dst: ip(b[2]),
        dst_port: ports.then(|| [80, 5432, 443, 53][usize::from(b[3] % 4)]),
        proto,
        icmp_type: (!ports).then_some(8),
        icmp_code: (!ports).then_some(0),
        icmp_id: (!ports).then_some(u16::from(b[1])),
        packets: count(u64::from(b[5] % 4)),
        bytes: count(u64::from(b[5]) * 60),
        reply_packets: count(u64::from(b[5] >> 6)),
        reply_bytes: count(u64::from(b[5] >> 6) * 60),
        start: Timestamp(start),
        end: Timestamp(start.saturating_add(length)),
        tcp_flags: TcpFlags(b[9]),
        reply_tcp_flags: TcpFlags(b[10]),
        orientation: Orientation::default(),
        end_reason: if b[11] & 1 == 0 {
            EndReason::default()
        } else {
            EndReason::ActiveTimeout
        },
        community_id: String::new(),
        observed_at: match b[11] % 3 {
            0 => None,
            n => Some(ObservationPoint {
                node: format!("n{n}"),
                interface: "veth0".into(),
                direction: if b[11] & 4 == 0 { Direction::FromPod } else { Direction::ToPod },
            }),
        },
    }
}

fuzz_target!(|data: &[u8]| {
    let config = EngineConfig {
        learn: Duration::from_secs(1),
        max_joins: 16,
        max_edges: 24,
        outside_peers: 2,
        max_alerts: 8,
        max_scan_sources: 4,
        recent_flows: 32,
        retention: Duration::from_secs(30),
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(config, set(), Timestamp(0));
    engine.watch_node("n1");
    let mut records = 0u64;
    let mut now = 0i64;
    // Batches split where a byte says so; the clock moves between them.
    for batch in data.split(|&b| b == 0xff) {
        let recs: Vec<FlowRecord> = batch
            .chunks_exact(12)
            .map(|c| record(c.try_into().expect("12 bytes")))
            .collect();
        records += recs.len() as u64;
        now += i64::from(batch.len() as u16) * 100_000_000;
        // The engine as ingest feeds it, and also without the clamp: neither may panic.
        let mut recs = recs;
        if batch.len() % 2 == 0 {
            weir_aggregator::ingest::clamp_times(&mut recs, Timestamp(now));
        }
        engine.apply(recs, Timestamp(now));
        engine.tick(Timestamp(now));
        assert!(engine.edges().len() <= 24, "{} edges", engine.edges().len());
        assert!(engine.alert_count() <= 8);
        assert!(engine.scan_sources() <= 4);
        assert!(engine.recent().len() <= 32);
        let t = engine.totals();
        assert_eq!(t.records, records);
        assert!(t.connections + t.joined_views <= records);
    }
    let _ = engine.take_changes();
    let _ = engine.take_forgotten();
});

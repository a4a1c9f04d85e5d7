//! Policy engine benchmark: a synthetic cluster of 5,000 pods in 100 namespaces with 1,000 NetworkPolicies.
//!
//! Reports, each best of 3 and with a baseline measured in the same run:
//! - verdicts per second for a stream of random flows (pod and external addresses, mixed ports) on a warm
//!   cache, against a bare hash-map lookup of the same flows (the floor of any per-flow memo);
//! - the cold rate (every verdict computed);
//! - the time to compute the full 80/TCP reachability matrix (25 million pairs), against judging the same
//!   pairs one by one through the cache.
//!
//! `cargo bench --bench policy` (one core; the engine is single-threaded).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a panic is a bug report

use std::collections::HashMap;
use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_cluster::{PodId, SnapshotLoader};
use weir_model::Protocol;
use weir_policy::{PolicySet, ProbePort, VerdictCache};

fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..runs {
        let start = Instant::now();
        let out = f();
        best = best.min(start.elapsed());
        last = Some(out);
    }
    (best, last.expect("at least one run"))
}

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test"); // `cargo test --benches` runs this once, small
    let (namespaces, apps, replicas, policies) = if quick {
        (5, 10, 2, 50)
    } else {
        (100, 10, 5, 1000)
    };
    let started = Instant::now();
    let synthetic = weir_synth::synthetic_cluster(namespaces, apps, replicas, policies);
    let generated = started.elapsed();
    let (load, cluster) = best_of(1, || {
        let mut loader = SnapshotLoader::default();
        loader
            .add_bytes(Path::new("synthetic.json"), synthetic.json.as_bytes())
            .unwrap();
        Arc::new(loader.finish().0)
    });
    let (compile, set) = best_of(1, || PolicySet::new(cluster.clone()).unwrap());
    println!(
        "cluster: {} pods, {} namespaces, {} policies ({} MB of JSON, generated in {:.2?})",
        cluster.pods().len(),
        cluster.namespaces().len(),
        cluster.policies().len(),
        synthetic.json.len() >> 20,
        generated
    );
    println!(
        "load {load:.2?}, compile + identities {compile:.2?}, {} distinct identities",
        set.identity_count()
    );

    // A stream of flows drawn from a pool of distinct conversations, as a cluster's traffic repeats itself.
    let ports = [80u16, 8080, 9090, 9100, 5432, 6379, 53, 443];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let pool: Vec<(IpAddr, IpAddr, u16, Protocol)> = (0..200_000)
        .map(|_| {
            let address = |rng: &mut Rng| -> IpAddr {
                if rng.below(10) == 0 {
                    IpAddr::from([
                        (rng.next() >> 8) as u8 | 1,
                        rng.next() as u8,
                        rng.next() as u8,
                        7,
                    ])
                } else {
                    IpAddr::V4(synthetic.pod_ips[rng.below(synthetic.pod_ips.len())])
                }
            };
            let src = address(&mut rng);
            let dst = address(&mut rng);
            let port = ports[rng.below(ports.len())];
            let protocol = if port == 53 {
                Protocol::UDP
            } else {
                Protocol::TCP
            };
            (src, dst, port, protocol)
        })
        .collect();
    let stream: Vec<u32> = (0..if quick { 10_000 } else { 5_000_000 })
        .map(|_| rng.below(pool.len()) as u32)
        .collect();

    let runs = Runs {
        pool: &pool,
        stream: &stream,
        quick,
    };
    let plain = runs.measure("NetworkPolicy only", &set);

    // The same cluster with 50 ClusterNetworkPolicies beside its NetworkPolicies (Admin and Baseline tiers).
    let extra = weir_synth::synthetic_cluster_policies(if quick { 10 } else { 50 }, namespaces);
    let mut loader = SnapshotLoader::default();
    loader
        .add_bytes(Path::new("synthetic.json"), synthetic.json.as_bytes())
        .unwrap();
    for (i, policy) in extra.into_iter().enumerate() {
        loader.add_value(&format!("cnp-{i}"), policy).unwrap();
    }
    let tiered_cluster = Arc::new(loader.finish().0);
    let (compile, tiered) = best_of(1, || PolicySet::new(tiered_cluster.clone()).unwrap());
    println!(
        "with {} ClusterNetworkPolicies: compile + identities {compile:.2?}, {} distinct identities",
        tiered.tier_policies().len(),
        tiered.identity_count()
    );
    let with_tiers = runs.measure("with ClusterNetworkPolicies", &tiered);
    println!(
        "ClusterNetworkPolicies cost: warm verdicts {:.2}× the time, cold {:.2}×, 80/TCP matrix {:.2}× (target: at most 1.5×)",
        with_tiers.warm.as_secs_f64() / plain.warm.as_secs_f64(),
        with_tiers.cold.as_secs_f64() / plain.cold.as_secs_f64(),
        with_tiers.matrix.as_secs_f64() / plain.matrix.as_secs_f64()
    );
}

struct Runs<'a> {
    pool: &'a [(IpAddr, IpAddr, u16, Protocol)],
    stream: &'a [u32],
    quick: bool,
}

struct Timings {
    cold: Duration,
    warm: Duration,
    matrix: Duration,
}

impl Runs<'_> {
    fn measure(&self, label: &str, set: &PolicySet) -> Timings {
        let (pool, stream, quick) = (self.pool, self.stream, self.quick);
        println!("-- {label}");
        let (cold, allowed) = best_of(3, || {
            let mut cache = VerdictCache::new();
            pool.iter()
                .filter(|&&(s, d, p, proto)| set.judge(&mut cache, s, d, Some(p), proto).allowed())
                .count()
        });
        let mut cache = VerdictCache::new();
        for &(s, d, p, proto) in pool {
            set.judge(&mut cache, s, d, Some(p), proto);
        }
        let (warm, _) = best_of(3, || {
            let mut allowed = 0usize;
            for &i in stream {
                let (s, d, p, proto) = pool[i as usize];
                allowed += usize::from(set.judge(&mut cache, s, d, Some(p), proto).allowed());
            }
            black_box(allowed)
        });
        let memo: HashMap<(IpAddr, IpAddr, u16, u8), bool, foldhash::fast::FixedState> = pool
            .iter()
            .map(|&(s, d, p, proto)| ((s, d, p, proto.0), true))
            .collect();
        let (baseline, _) = best_of(3, || {
            let mut allowed = 0usize;
            for &i in stream {
                let (s, d, p, proto) = pool[i as usize];
                allowed += usize::from(memo.get(&(s, d, p, proto.0)).copied().unwrap_or(false));
            }
            black_box(allowed)
        });
        let per_sec = |n: usize, t: Duration| n as f64 / t.as_secs_f64() / 1e6;
        println!(
            "verdicts, cold (all computed): {:.2} M/s ({} of {} flows allowed)",
            per_sec(pool.len(), cold),
            allowed,
            pool.len()
        );
        println!(
            "verdicts, warm cache: {:.2} M/s, {:.0} ns each; baseline hash lookup of the same flows {:.2} M/s → weir {:.2}× the baseline's time",
            per_sec(stream.len(), warm),
            warm.as_nanos() as f64 / stream.len() as f64,
            per_sec(stream.len(), baseline),
            warm.as_secs_f64() / baseline.as_secs_f64()
        );

        let pods: Vec<PodId> = (0..set.cluster().pods().len() as u32).map(PodId).collect();
        let (matrix_time, matrix) = best_of(if quick { 1 } else { 3 }, || {
            set.reach_matrix(&pods, &ProbePort::Number(80), Protocol::TCP)
        });
        let (pairwise, pairwise_allowed) = best_of(1, || {
            let mut cache = VerdictCache::new();
            let addresses: Vec<_> = pods.iter().map(|&p| set.address_of_pod(p)).collect();
            let mut allowed = 0usize;
            for a in &addresses {
                for b in &addresses {
                    allowed += usize::from(
                        set.judge_addresses(&mut cache, a, b, Some(80), Protocol::TCP)
                            .allowed(),
                    );
                }
            }
            allowed
        });
        assert_eq!(
            matrix.allowed_pairs(),
            pairwise_allowed,
            "matrix and pairwise verdicts disagree"
        );
        let pairs = pods.len() * pods.len();
        println!(
            "80/TCP matrix: {pairs} pairs in {matrix_time:.2?} ({:.0} M pairs/s, {} allowed); pairwise judging through the cache {pairwise:.2?} → matrix {:.1}× faster",
            pairs as f64 / matrix_time.as_secs_f64() / 1e6,
            matrix.allowed_pairs(),
            pairwise.as_secs_f64() / matrix_time.as_secs_f64()
        );
        Timings {
            cold,
            warm,
            matrix: matrix_time,
        }
    }
}

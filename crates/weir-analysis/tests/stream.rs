//! Judging records as they arrive gives exactly what judging them all at once gives, in any arrival order:
//! the DNAT joins, the verdicts, every report section, and the order of the flows.

#![allow(clippy::expect_used)] // test code: a panic is a test failure

use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use weir_analysis::{AnalysisStream, Analyzer, Report};
use weir_cluster::ClusterState;
use weir_model::FlowRecord;
use weir_policy::PolicySet;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// A bundled capture's flow records (its golden `weir flows` output) and its cluster snapshot.
fn case(flows: &str, cluster: &str) -> (PolicySet, Vec<FlowRecord>) {
    let (state, _) = ClusterState::load(&[repo(cluster)]).expect("the bundled snapshot loads");
    let set = PolicySet::new(Arc::new(state)).expect("the bundled policies compile");
    let text = std::fs::read_to_string(repo(flows)).expect("the golden flows exist");
    let records = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("a flow record"))
        .collect();
    (set, records)
}

fn all_at_once(set: &PolicySet, records: &[FlowRecord]) -> String {
    let mut sorted = records.to_vec();
    sorted.sort_by_key(|r| r.sort_key());
    let analysis = Analyzer::new(set, &[]).analyze(sorted);
    let report = Report::new(set, &analysis);
    format!("{analysis:?}\n{report:?}")
}

/// The records in `order`, one by one (`batch` 1) or in batches of `batch` (ClusterIP flows first in each).
fn streamed(
    set: &PolicySet,
    records: &[FlowRecord],
    order: &[usize],
    keep: bool,
    batch: usize,
) -> String {
    let mut stream = AnalysisStream::new(set, &[], keep).with_edge_book();
    for chunk in order.chunks(batch.max(1)) {
        if batch == 1 {
            stream.push(records[chunk[0]].clone());
        } else {
            stream.push_batch(chunk.iter().map(|&i| records[i].clone()).collect());
        }
    }
    let (analysis, report) = stream.finish();
    format!("{analysis:?}\n{report:?}")
}

fn shuffled(len: usize, keys: &[u64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    order.sort_by_key(|&i| keys[i % keys.len()].rotate_left(i as u32 % 64) ^ i as u64);
    order
}

#[test]
fn the_demo_holds_dnat_joins_and_streams_like_a_batch() {
    let (set, records) = case(
        "pcaps/expected/demo.pcap.flows.jsonl",
        "pcaps/demo.cluster.yaml",
    );
    let expected = all_at_once(&set, &records);
    assert!(
        expected.contains("dnat_joined: 17"),
        "the demo exercises the join"
    );
    let forward: Vec<usize> = (0..records.len()).collect();
    let backward: Vec<usize> = forward.iter().rev().copied().collect();
    assert_eq!(streamed(&set, &records, &forward, true, 1), expected);
    assert_eq!(streamed(&set, &records, &backward, true, 1), expected);
    assert_eq!(streamed(&set, &records, &backward, true, 16), expected);
}

#[test]
fn the_edge_book_counts_every_flow_once_in_key_order() {
    let (set, records) = case(
        "pcaps/expected/demo.pcap.flows.jsonl",
        "pcaps/demo.cluster.yaml",
    );
    let mut sorted = records.clone();
    sorted.sort_by_key(|r| r.sort_key());
    let analysis = Analyzer::new(&set, &[]).analyze(sorted);
    let report = Report::new(&set, &analysis);
    assert!(
        report.book.windows(2).all(|w| w[0].key < w[1].key),
        "one edge per key, in key order"
    );
    let flows: u64 = report.book.iter().map(|e| e.flows).sum();
    assert_eq!(flows, report.totals.flows);
    let packets: u64 = report.book.iter().map(|e| e.packets).sum();
    assert_eq!(packets, report.totals.packets);
    // Without the book, the findings are the same.
    let mut stream = AnalysisStream::new(&set, &[], false);
    records.into_iter().for_each(|r| stream.push(r));
    let (_, without) = stream.finish();
    assert!(without.book.is_empty());
    assert_eq!(
        format!(
            "{:?}",
            Report {
                book: Vec::new(),
                ..report
            }
        ),
        format!("{without:?}")
    );
}

#[test]
fn a_stream_starts_over_after_finish() {
    let (set, records) = case(
        "pcaps/expected/demo.pcap.flows.jsonl",
        "pcaps/demo.cluster.yaml",
    );
    let mut stream = AnalysisStream::new(&set, &[], true);
    for r in &records {
        stream.push(r.clone());
    }
    let first = stream.finish();
    for r in &records {
        stream.push(r.clone());
    }
    let second = stream.finish();
    assert_eq!(format!("{first:?}"), format!("{second:?}"));
    assert_eq!(stream.held(), 0);
}

/// Connections through a load balancer, an external IP and a masqueraded node port: every arrival order of
/// their six records, one by one and in batches, gives the batch result (the views are joined either way).
#[test]
fn exposed_services_stream_like_a_batch_in_every_order() {
    let (set, records) = case(
        "tests/fixtures/exposed.flows.jsonl",
        "tests/fixtures/exposed.cluster.yaml",
    );
    let expected = all_at_once(&set, &records);
    assert!(expected.contains("dnat_joined: 2"), "{expected}");
    let mut order: Vec<usize> = (0..records.len()).collect();
    let mut orders = 0;
    // Heap's algorithm: every permutation.
    let mut c = vec![0usize; order.len()];
    let mut i = 0;
    let check = |order: &[usize]| {
        for batch in [1, 2, 4] {
            assert_eq!(
                streamed(&set, &records, order, true, batch),
                expected,
                "{order:?} in batches of {batch}"
            );
        }
    };
    check(&order);
    orders += 1;
    while i < order.len() {
        if c[i] < i {
            order.swap(if i % 2 == 0 { 0 } else { c[i] }, i);
            check(&order);
            orders += 1;
            c[i] += 1;
            i = 0;
        } else {
            c[i] = 0;
            i += 1;
        }
    }
    assert_eq!(orders, 720);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_arrival_order_gives_the_batch_result(
        keys in prop::collection::vec(any::<u64>(), 1..64),
        batch in 1usize..40,
    ) {
        for (flows, cluster) in [
            ("pcaps/expected/demo.pcap.flows.jsonl", "pcaps/demo.cluster.yaml"),
            ("pcaps/expected/pod-traffic.pcap.flows.jsonl", "pcaps/pod-traffic.cluster.yaml"),
        ] {
            let (set, records) = case(flows, cluster);
            let expected = all_at_once(&set, &records);
            let order = shuffled(records.len(), &keys);
            prop_assert_eq!(streamed(&set, &records, &order, true, batch), expected.clone());
            // Without kept flows, the report is the same and the flow list empty.
            let report_only = streamed(&set, &records, &order, false, batch);
            let tail = |s: &str| s.split_once('\n').map(|(_, r)| r.to_owned());
            prop_assert_eq!(tail(&report_only), tail(&expected));
        }
    }
}

//! Micro-benchmarks of the packet path: decode, flow-table update, capture reading, and all of it together,
//! each beside a baseline measured in the same run (copying the same bytes), so ratios survive noisy machines.
//!
//! `cargo bench --bench flows`; criterion prints time per iteration and throughput in packets/s.

use std::hint::black_box;
use std::io::Cursor;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use weir_capture::{Batch, FileSource};
use weir_flow::{DecodedPacket, FlowConfig, FlowExtractor, decode};
use weir_synth::{PcapOptions, bench_mix, write_pcap};

/// A capture in memory, and the same capture already split into batches (contiguous, as the reader delivers
/// them), so decode and table benches measure decoding and accounting, not allocation or reading.
struct Fixture {
    pcap: Arc<[u8]>,
    batches: Vec<Batch>,
    packets: u64,
}

fn source(pcap: &Arc<[u8]>) -> FileSource {
    FileSource::new("bench".into(), Cursor::new(Arc::clone(pcap)), None)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn fixture(packets: u64, flows: u64) -> Fixture {
    let cap = bench_mix(packets, flows, 7);
    let mut bytes = Vec::new();
    write_pcap(&mut bytes, cap.link, &cap.packets, PcapOptions::default()).unwrap_or_default();
    let pcap: Arc<[u8]> = bytes.into();
    let mut src = source(&pcap);
    let mut batches = Vec::new();
    loop {
        let mut batch = Batch::default();
        match src.next_batch(&mut batch) {
            Ok(true) => batches.push(batch),
            _ => break,
        }
    }
    Fixture {
        packets: cap.packets.len() as u64,
        pcap,
        batches,
    }
}

fn benches(c: &mut Criterion) {
    for (name, flows) in [("20k-flows", 2_000u64), ("200k-flows", 20_000)] {
        // One tenth of the peer benchmark's scale, so a run takes seconds.
        let fx = fixture(400_000, flows);
        let n = fx.packets;
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Elements(n));
        group.sample_size(20);

        group.bench_function("baseline: copy the capture bytes", |b| {
            let mut dst = vec![0u8; fx.pcap.len()];
            b.iter(|| {
                dst.copy_from_slice(&fx.pcap);
                black_box(&dst);
            })
        });
        // Decoding one batch again and again: the batch is in cache, as it is right after the reader fills it.
        let hot = &fx.batches[0];
        group.throughput(Throughput::Elements(hot.len() as u64));
        group.bench_function("decode (one cached batch)", |b| {
            b.iter(|| {
                for p in hot.iter() {
                    let _ = black_box(decode(p.link, p.data));
                }
            })
        });
        group.throughput(Throughput::Elements(n));
        let decoded: Vec<(weir_model::Timestamp, DecodedPacket)> = fx
            .batches
            .iter()
            .flat_map(|b| b.iter())
            .filter_map(|p| decode(p.link, p.data).ok().map(|d| (p.timestamp, d)))
            .collect();
        group.bench_function("flow table update", |b| {
            b.iter(|| {
                let mut x = FlowExtractor::new(FlowConfig::default());
                for (ts, p) in &decoded {
                    x.decoded(*ts, p);
                }
                black_box(x.finish().0.len())
            })
        });
        group.bench_function("read pcap (in memory)", |b| {
            b.iter(|| {
                let mut src = source(&fx.pcap);
                let mut batch = Batch::default();
                let mut count = 0usize;
                while let Ok(true) = src.next_batch(&mut batch) {
                    count += batch.len();
                }
                black_box(count)
            })
        });
        group.bench_function("read + decode + flows", |b| {
            b.iter(|| {
                let mut src = source(&fx.pcap);
                let mut batch = Batch::default();
                let mut x = FlowExtractor::new(FlowConfig::default());
                while let Ok(true) = src.next_batch(&mut batch) {
                    for p in batch.iter() {
                        x.packet(p.timestamp, p.link, p.data);
                    }
                }
                black_box(x.finish().0.len())
            })
        });
        group.finish();
    }
}

criterion_group!(flow_benches, benches);
criterion_main!(flow_benches);

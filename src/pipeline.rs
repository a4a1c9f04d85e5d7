//! Capture files to finished flows, on one thread or several.
//!
//! With several workers, the calling thread reads batches and hands each one (shared, not copied) to every
//! worker; each worker decodes every packet but keeps only the flows in its hash share, so flow tables are never
//! shared and the packet path takes no lock. Batches are recycled once every worker has dropped them.

use std::sync::Arc;

use anyhow::Result;
use crossbeam_channel::bounded;
use weir_capture::{Batch, CaptureError, CaptureWarning, FileSource, ReaderStats};
use weir_flow::{ExtractStats, FinishedFlow, FlowConfig, FlowExtractor};

/// Formats finished flows on `threads` threads and writes them in order. Work goes in rounds of one block per
/// thread, so memory stays bounded by `threads` blocks however many flows there are.
pub fn write_parallel<F, W>(
    flows: &[FinishedFlow],
    threads: usize,
    out: &mut W,
    format: F,
) -> std::io::Result<()>
where
    F: Fn(&[FinishedFlow], &mut Vec<u8>) + Sync,
    W: std::io::Write,
{
    const BLOCK: usize = 8192;
    let threads = threads.max(1);
    let mut buffers: Vec<Vec<u8>> = vec![Vec::new(); threads];
    for round in flows.chunks(BLOCK * threads) {
        let blocks: Vec<&[FinishedFlow]> = round.chunks(BLOCK).collect();
        if blocks.len() == 1 {
            buffers[0].clear();
            format(blocks[0], &mut buffers[0]);
        } else {
            std::thread::scope(|scope| {
                for (block, buf) in blocks.iter().zip(buffers.iter_mut()) {
                    let format = &format;
                    scope.spawn(move || {
                        buf.clear();
                        format(block, buf);
                    });
                }
            });
        }
        for buf in buffers.iter().take(blocks.len()) {
            out.write_all(buf)?;
        }
    }
    Ok(())
}

/// Orders flows by start time, then by their tuple, so output is the same on every run and thread count. Start
/// times rarely tie, so most comparisons never build the full key.
pub fn sort_flows(flows: &mut [FinishedFlow]) {
    flows.sort_unstable_by(|a, b| {
        a.start()
            .cmp(&b.start())
            .then_with(|| a.sort_key().cmp(&b.sort_key()))
    });
}

/// What reading one capture produced.
pub struct FileFlows {
    pub flows: Vec<FinishedFlow>,
    pub stats: ExtractStats,
    pub reader: ReaderStats,
    pub warnings: Vec<CaptureWarning>,
    /// Reading stopped early on this error (the flows before it are complete).
    pub error: Option<CaptureError>,
}

/// Reads one capture into flows with `threads` workers.
pub fn extract_file(
    source: &mut FileSource,
    config: &FlowConfig,
    threads: usize,
) -> Result<FileFlows> {
    let mut flows = Vec::new();
    let mut result = extract_file_streaming(source, config, threads, |mut finished| {
        flows.append(&mut finished);
        true
    })?;
    result.flows = flows;
    Ok(result)
}

/// Reads one capture with `threads` workers, handing flows to `sink` as they finish (with one worker, while the
/// capture is read; with several, at the end). The sink returns false to stop reading. The returned
/// [`FileFlows`] has no flows: the sink had them all.
pub fn extract_file_streaming(
    source: &mut FileSource,
    config: &FlowConfig,
    threads: usize,
    mut sink: impl FnMut(Vec<FinishedFlow>) -> bool,
) -> Result<FileFlows> {
    let (stats, error) = if threads <= 1 {
        extract_single(source, config, &mut sink)
    } else {
        let (flows, stats, error) = extract_parallel(source, config, threads)?;
        sink(flows);
        (stats, error)
    };
    Ok(FileFlows {
        flows: Vec::new(),
        stats,
        reader: source.stats(),
        warnings: source.warnings(),
        error,
    })
}

fn extract_single(
    source: &mut FileSource,
    config: &FlowConfig,
    sink: &mut impl FnMut(Vec<FinishedFlow>) -> bool,
) -> (ExtractStats, Option<CaptureError>) {
    let mut extractor = FlowExtractor::new(config.clone());
    let mut batch = Batch::default();
    let mut error = None;
    loop {
        match source.next_batch(&mut batch) {
            Ok(true) => {
                for p in batch.iter() {
                    extractor.packet(p.timestamp, p.link, p.data);
                }
                let finished = extractor.take_finished();
                if !finished.is_empty() && !sink(finished) {
                    return (extractor.stats(), None);
                }
            }
            Ok(false) => break,
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let (flows, stats) = extractor.finish();
    sink(flows);
    (stats, error)
}

fn extract_parallel(
    source: &mut FileSource,
    config: &FlowConfig,
    workers: usize,
) -> Result<(Vec<FinishedFlow>, ExtractStats, Option<CaptureError>)> {
    let hasher = weir_flow::FlowHasher::default();
    // The reading thread is worker 0 as well, so `workers` threads keep `workers` cores busy.
    let mut own = FlowExtractor::partitioned(config.clone(), hasher.clone(), 0, workers);
    let mut senders = Vec::with_capacity(workers - 1);
    let mut handles = Vec::with_capacity(workers - 1);
    for worker in 1..workers {
        let (tx, rx) = bounded::<Arc<Batch>>(4);
        senders.push(tx);
        let mut extractor =
            FlowExtractor::partitioned(config.clone(), hasher.clone(), worker, workers);
        handles.push(std::thread::spawn(move || {
            for batch in rx {
                for p in batch.iter() {
                    extractor.packet(p.timestamp, p.link, p.data);
                }
            }
            extractor.finish()
        }));
    }
    let mut pool: Vec<Arc<Batch>> = Vec::new();
    let mut error = None;
    loop {
        // Reuse a batch every worker is done with; otherwise allocate (bounded by the channel depth).
        let mut batch = match pool.iter().position(|b| Arc::strong_count(b) == 1) {
            Some(i) => pool.swap_remove(i),
            None => Arc::new(Batch::default()),
        };
        let Some(buf) = Arc::get_mut(&mut batch) else {
            continue;
        };
        match source.next_batch(buf) {
            Ok(true) => {
                for tx in &senders {
                    // A worker only hangs up by panicking, which `join` reports below.
                    let _ = tx.send(Arc::clone(&batch));
                }
                for p in batch.iter() {
                    own.packet(p.timestamp, p.link, p.data);
                }
                pool.push(batch);
            }
            Ok(false) => break,
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    drop(senders);
    let (mut flows, mut stats) = own.finish();
    for handle in handles {
        let (mut f, s) = handle
            .join()
            .map_err(|_| anyhow::anyhow!("a flow worker thread panicked"))?;
        flows.append(&mut f);
        stats.merge(&s);
    }
    Ok((flows, stats, error))
}

//! Capture files to finished flows, on one thread or several.
//!
//! With several workers, the calling thread reads batches and routes each frame to one worker by the symmetric
//! hash of its address pair (both directions of a connection, and every fragment of a datagram, go to one
//! worker); each worker is handed the batch (shared, not copied) with the indexes of its own frames, and decodes
//! only those, so flow tables are never shared and the packet path takes no lock. Batches are recycled once every
//! worker has dropped them.

use std::sync::Arc;

use anyhow::Result;
use crossbeam_channel::bounded;
use weir_capture::{Batch, CaptureError, CaptureWarning, FileSource, ReaderStats};
use weir_flow::{ExtractStats, FinishedFlow, FlowConfig, FlowExtractor};
use weir_model::Timestamp;

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
    if threads <= 1 {
        let (stats, error) = extract_single(source, config, &mut sink);
        return Ok(file_flows(source, stats, error));
    }
    let found = std::sync::Mutex::new(Vec::new());
    let result = extract_routed(source, config, threads, &|mut flows| {
        if let Ok(mut all) = found.lock() {
            all.append(&mut flows);
        }
    })?;
    sink(found.into_inner().unwrap_or_default());
    Ok(result)
}

/// What reading a capture gave, its flows handed elsewhere.
fn file_flows(source: &FileSource, stats: ExtractStats, error: Option<CaptureError>) -> FileFlows {
    FileFlows {
        flows: Vec::new(),
        stats,
        reader: source.stats(),
        warnings: source.warnings(),
        error,
    }
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

/// One worker's share of a batch: the batch (shared, not copied), the indexes of its own frames in it, and the
/// latest time of any frame so far, so its flows time out as one worker's would.
struct Share {
    batch: Arc<Batch>,
    frames: Vec<u32>,
    clock: Timestamp,
}

/// Reads one capture with `workers` flow workers, each handing the flows it finishes to `on_flows` on its own
/// thread as they finish (so what is done with them runs beside the reading, on as many threads).
pub fn extract_routed(
    source: &mut FileSource,
    config: &FlowConfig,
    workers: usize,
    on_flows: &(dyn Fn(Vec<FinishedFlow>) + Sync),
) -> Result<FileFlows> {
    let (stats, error) = extract_parallel(source, config, workers.max(1), on_flows)?;
    Ok(file_flows(source, stats, error))
}

fn extract_parallel(
    source: &mut FileSource,
    config: &FlowConfig,
    workers: usize,
    on_flows: &(dyn Fn(Vec<FinishedFlow>) + Sync),
) -> Result<(ExtractStats, Option<CaptureError>)> {
    std::thread::scope(|scope| {
        let hasher = weir_flow::FlowHasher::default();
        let mut senders = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        // The reading thread is worker 0 as well, so `workers` threads keep `workers` cores busy.
        let mut own = FlowExtractor::routed(config.clone(), hasher.clone());
        for _ in 1..workers {
            let (tx, rx) = bounded::<Share>(4);
            senders.push(tx);
            let mut extractor = FlowExtractor::routed(config.clone(), hasher.clone());
            handles.push(scope.spawn(move || {
                for share in rx {
                    for &i in &share.frames {
                        if let Some(p) = share.batch.get(i as usize) {
                            extractor.packet(p.timestamp, p.link, p.data);
                        }
                    }
                    extractor.advance(share.clock);
                    let finished = extractor.take_finished();
                    if !finished.is_empty() {
                        on_flows(finished);
                    }
                }
                let (flows, stats) = extractor.finish();
                on_flows(flows);
                stats
            }));
        }
        let error = route_batches(source, &hasher, &senders, &mut |batch, frames, clock| {
            for &i in frames {
                if let Some(p) = batch.get(i as usize) {
                    own.packet(p.timestamp, p.link, p.data);
                }
            }
            own.advance(clock);
            let finished = own.take_finished();
            if !finished.is_empty() {
                on_flows(finished);
            }
        });
        drop(senders);
        let (flows, mut stats) = own.finish();
        on_flows(flows);
        for handle in handles {
            let s = handle
                .join()
                .map_err(|_| anyhow::anyhow!("a flow worker thread panicked"))?;
            stats.merge(&s);
        }
        Ok((stats, error))
    })
}

/// The reading thread's work: frames packets and routes each to its worker by the symmetric hash of its address
/// pair; no worker looks at another's frames. Answers the error reading stopped on, if any.
fn route_batches(
    source: &mut FileSource,
    hasher: &weir_flow::FlowHasher,
    senders: &[crossbeam_channel::Sender<Share>],
    own_share: &mut dyn FnMut(&Batch, &[u32], Timestamp),
) -> Option<CaptureError> {
    let workers = senders.len() + 1;
    let mut pool: Vec<Arc<Batch>> = Vec::new();
    let mut clock = Timestamp(i64::MIN);
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
                let mut frames: Vec<Vec<u32>> = (0..workers)
                    .map(|_| Vec::with_capacity(batch.len() / workers + 16))
                    .collect();
                for (i, p) in batch.iter().enumerate() {
                    clock = clock.max(p.timestamp);
                    let w = weir_flow::route(hasher, p.link, p.data, workers);
                    // A batch holds far fewer than 2^32 frames.
                    frames[w].push(i as u32);
                }
                let mut frames = frames.into_iter();
                let own = frames.next().unwrap_or_default();
                for (tx, frames) in senders.iter().zip(frames) {
                    // A worker only hangs up by panicking, which `join` reports below.
                    let _ = tx.send(Share {
                        batch: Arc::clone(&batch),
                        frames,
                        clock,
                    });
                }
                own_share(&batch, &own, clock);
                pool.push(batch);
            }
            Ok(false) => break,
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    error
}

//! Streaming flow records to the aggregator: numbered batches in a bounded buffer, sent in order, kept until the
//! aggregator acknowledges them as durable, sent again after a failure or an aggregator restart.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use weir_model::FlowRecord;
use weir_model::ingest::{
    AgentCounters, HEADER_COUNTERS, HEADER_EPOCH, HEADER_NODE, HEADER_NODE_ADDRESSES,
    HEADER_OLDEST, HEADER_SEQ, IngestReply, InterfaceAddress,
};

/// How batches are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WireFormat {
    /// [`weir_model::wire`]: compact, and about ten times faster for the aggregator to read.
    #[default]
    Binary,
    /// Flow records as JSON lines (the stable record format): readable on the wire, for debugging.
    JsonLines,
}

impl WireFormat {
    fn content_type(self) -> &'static str {
        match self {
            WireFormat::Binary => weir_model::wire::CONTENT_TYPE,
            WireFormat::JsonLines => "application/x-ndjson",
        }
    }
}

/// A sealed batch: its number and its body.
#[derive(Debug)]
struct Sealed {
    seq: u64,
    records: u64,
    body: bytes::Bytes,
    sealed_at: Instant,
}

/// Records waiting to be sent, and sent but not yet durable at the aggregator.
#[derive(Debug)]
pub struct Buffer {
    open: Vec<u8>,
    open_records: u64,
    open_since: Option<Instant>,
    sealed: VecDeque<Sealed>,
    bytes: usize,
    next_seq: u64,
    limit: usize,
    batch_records: u64,
    batch_bytes: usize,
    format: WireFormat,
}

/// The largest batch body by default: below the aggregator's default limit of 4 MiB with room to spare.
pub const BATCH_BYTES: usize = 3 << 20;

impl Buffer {
    /// A buffer holding at most `limit` bytes of records; batches hold at most `batch_records` records and
    /// [`BATCH_BYTES`] bytes.
    pub fn new(limit: usize, batch_records: u64, format: WireFormat) -> Buffer {
        Buffer::with_batch_bytes(limit, batch_records, BATCH_BYTES, format)
    }

    /// As [`Buffer::new`], with batches sealed once they reach `batch_bytes` bytes.
    pub fn with_batch_bytes(
        limit: usize,
        batch_records: u64,
        batch_bytes: usize,
        format: WireFormat,
    ) -> Buffer {
        Buffer {
            open: Vec::new(),
            open_records: 0,
            open_since: None,
            sealed: VecDeque::new(),
            bytes: 0,
            next_seq: 1,
            limit: limit.max(1 << 16),
            batch_records: batch_records.max(1),
            batch_bytes: batch_bytes.max(1 << 10),
            format,
        }
    }

    /// Adds records; returns how many older records were dropped to make room.
    pub fn push(&mut self, records: &[FlowRecord]) -> u64 {
        let mut dropped = 0;
        for r in records {
            let before = self.open.len();
            match self.format {
                WireFormat::Binary => {
                    if self.open.is_empty() {
                        self.open.extend_from_slice(weir_model::wire::MAGIC);
                    }
                    r.write_binary(&mut self.open);
                }
                WireFormat::JsonLines => r.write_json_line(&mut self.open),
            }
            self.bytes += self.open.len() - before;
            self.open_records += 1;
            self.open_since.get_or_insert_with(Instant::now);
            if self.open_records >= self.batch_records || self.open.len() >= self.batch_bytes {
                self.seal();
            }
            // Over the limit: the oldest batches go first (the newest traffic matters most after an outage).
            while self.bytes > self.limit {
                match self.sealed.pop_front() {
                    Some(old) => {
                        self.bytes -= old.body.len();
                        dropped += old.records;
                    }
                    None => break,
                }
            }
        }
        dropped
    }

    /// Seals the open batch if it has records.
    pub fn seal(&mut self) {
        if self.open_records == 0 {
            return;
        }
        let body = bytes::Bytes::from(std::mem::take(&mut self.open));
        self.sealed.push_back(Sealed {
            seq: self.next_seq,
            records: self.open_records,
            body,
            sealed_at: Instant::now(),
        });
        self.next_seq += 1;
        self.open_records = 0;
        self.open_since = None;
    }

    /// Seals the open batch when it has waited `flush`.
    pub fn seal_if_older(&mut self, flush: Duration) {
        if self.open_since.is_some_and(|t| t.elapsed() >= flush) {
            self.seal();
        }
    }

    /// Empties batch `seq`, which the aggregator refused as it is (unreadable, too large): it is sent again
    /// without records, so the aggregator's cursor passes it and the batches after it are not held up. Returns
    /// the records given up.
    fn give_up(&mut self, seq: u64) -> u64 {
        let Some(batch) = self.sealed.iter_mut().find(|b| b.seq == seq) else {
            return 0;
        };
        self.bytes -= batch.body.len();
        batch.body = bytes::Bytes::new();
        std::mem::take(&mut batch.records)
    }

    /// Forgets batches up to `acked`.
    fn ack(&mut self, acked: u64) -> u64 {
        let mut records = 0;
        while self.sealed.front().is_some_and(|b| b.seq <= acked) {
            if let Some(b) = self.sealed.pop_front() {
                self.bytes -= b.body.len();
                records += b.records;
            }
        }
        records
    }

    /// The first batch after `after`: its number, body and records.
    fn next_after(&self, after: u64) -> Option<(u64, bytes::Bytes, u64, Instant)> {
        self.sealed
            .iter()
            .find(|b| b.seq > after)
            .map(|b| (b.seq, b.body.clone(), b.records, b.sealed_at))
    }

    /// The oldest batch held (the next to be sealed when none is).
    fn oldest(&self) -> u64 {
        self.sealed.front().map_or(self.next_seq, |b| b.seq)
    }

    /// Records held (open and sealed).
    pub fn records(&self) -> u64 {
        self.open_records + self.sealed.iter().map(|b| b.records).sum::<u64>()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Where and how to send.
#[derive(Clone, Debug)]
pub struct ExportConfig {
    /// The aggregator's base URL (`http://weir-aggregator:9480`).
    pub aggregator: String,
    /// A file holding the bearer token (a mounted Secret, or a projected ServiceAccount token the kubelet
    /// rotates): read again every minute and after the aggregator refuses it.
    pub token_file: Option<std::path::PathBuf>,
    /// PEM file with the CA (or self-signed certificate) the aggregator's certificate must chain to; without
    /// it, the system's roots.
    pub ca_cert: Option<Vec<u8>>,
    /// The node name.
    pub node: String,
    /// Seal a batch after this long even when it is not full.
    pub flush: Duration,
    /// Most records per batch.
    pub batch_records: u64,
    /// Most bytes held before the oldest batches are dropped.
    pub buffer_bytes: usize,
    /// How batches are written.
    pub wire: WireFormat,
    /// Longest wait between attempts after failures.
    pub max_backoff: Duration,
}

/// The exporter's counters, for `/metrics` and the aggregator.
#[derive(Debug, Default)]
pub struct ExportCounters {
    /// Batches sent (including resends).
    pub requests: AtomicU64,
    /// Failed requests (connection errors, timeouts, error statuses).
    pub failures: AtomicU64,
    /// Batches sent again (after a failure or a rewind).
    pub resent_batches: AtomicU64,
    /// Records acknowledged as durable.
    pub acked_records: AtomicU64,
    /// Records dropped because the buffer was full.
    pub buffer_drops: AtomicU64,
    /// Records given up because the aggregator refused their batch as it was (unreadable, too large).
    pub refused_records: AtomicU64,
    /// Records held.
    pub buffered_records: AtomicU64,
    /// Bytes held.
    pub buffered_bytes: AtomicU64,
    /// Whether the last request succeeded.
    pub connected: AtomicBool,
    /// Seconds from sealing a batch to its acknowledgement, last batch, in microseconds.
    pub last_ack_latency_us: AtomicU64,
}

/// The sending side: a client, the shared buffer, the cursor.
pub struct Exporter {
    config: ExportConfig,
    client: reqwest::Client,
    epoch: String,
    /// The last batch the aggregator has applied (resends start after it).
    sent: u64,
    /// The last batch the aggregator holds durably.
    acked: u64,
    /// Set when the next batch after `sent` is a resend.
    resending: bool,
    /// The node's interface addresses in their header form, and when they were read.
    node_addresses: Option<(Instant, String)>,
    /// The bearer token, and when it was read.
    token: Option<(Instant, String)>,
}

/// How often the token file is read again (the kubelet renews a projected token well before it expires).
const TOKEN_EVERY: Duration = Duration::from_secs(60);

/// How often the node's interface addresses are read again (a new bridge or tunnel device shows up within it).
const NODE_ADDRESSES_EVERY: Duration = Duration::from_secs(10);

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The CA certificate could not be used.
    #[error("the CA certificate: {0}")]
    Certificate(String),
    /// The HTTP client could not be built.
    #[error("the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Why one request to the aggregator failed. All but a poisoned buffer are retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The buffer's lock was poisoned by a panic elsewhere: the agent cannot go on safely.
    #[error("the send buffer is unusable (a thread panicked while holding it)")]
    Poisoned,
    /// The request could not be sent or its answer read.
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    /// The aggregator answered with an error.
    #[error("{status}: {body}")]
    Refused {
        /// Its status.
        status: StatusCode,
        /// What it said.
        body: String,
    },
    /// The answer was not an ingest reply.
    #[error("bad reply: {0}")]
    Reply(#[from] serde_json::Error),
}

/// Whether the aggregator refused a batch for what it holds (its body), not for who sent it or when: sending
/// the same body again cannot succeed.
fn refuses_the_batch(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNPROCESSABLE_ENTITY
    )
}

/// Reads a token file: its first line, trimmed. An empty file is an error.
pub fn read_token(path: &std::path::Path) -> Result<String, std::io::Error> {
    let text = std::fs::read_to_string(path)?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the token file is empty",
        ));
    }
    Ok(token)
}

/// A random agent run identifier, 16 hex digits.
pub fn new_epoch() -> String {
    let mut bytes = [0u8; 8];
    let from_urandom = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if from_urandom.is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        bytes = (nanos ^ (u64::from(std::process::id()) << 32)).to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Installs the ring-based rustls crypto provider once per process (every TLS user in weir uses it).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Exporter {
    /// An exporter with a new epoch.
    pub fn new(config: ExportConfig) -> Result<Exporter, ExportError> {
        install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(3))
            .pool_idle_timeout(Duration::from_secs(30));
        if let Some(pem) = &config.ca_cert {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| ExportError::Certificate(e.to_string()))?;
            if certs.is_empty() {
                return Err(ExportError::Certificate(
                    "no certificate in the PEM file".into(),
                ));
            }
            builder = builder.tls_certs_only(certs);
        }
        Ok(Exporter {
            client: builder.build()?,
            config,
            epoch: new_epoch(),
            sent: 0,
            acked: 0,
            resending: false,
            node_addresses: None,
            token: None,
        })
    }

    /// This run's epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The node's interface addresses, read again every [`NODE_ADDRESSES_EVERY`].
    fn node_addresses(&mut self) -> String {
        match &self.node_addresses {
            Some((read, header)) if read.elapsed() < NODE_ADDRESSES_EVERY => header.clone(),
            _ => {
                let header = InterfaceAddress::to_header(&weir_capture::host_addresses());
                self.node_addresses = Some((Instant::now(), header.clone()));
                header
            }
        }
    }

    fn request(&mut self, counters: &AgentCounters, oldest: u64) -> reqwest::RequestBuilder {
        let url = format!(
            "{}/api/v1/ingest",
            self.config.aggregator.trim_end_matches('/')
        );
        let mut req = self
            .client
            .post(url)
            .header(HEADER_NODE, &self.config.node)
            .header(HEADER_EPOCH, &self.epoch)
            .header(HEADER_OLDEST, oldest.to_string())
            .header(HEADER_COUNTERS, counters.to_header());
        let addresses = self.node_addresses();
        if !addresses.is_empty() {
            req = req.header(HEADER_NODE_ADDRESSES, addresses);
        }
        if let Some(token) = self.bearer() {
            req = req.bearer_auth(token);
        }
        req
    }

    /// The bearer token, read again from its file every [`TOKEN_EVERY`]; when the file cannot be read, the last
    /// token read is kept (and the failure logged).
    fn bearer(&mut self) -> Option<String> {
        let path = self.config.token_file.as_ref()?;
        let fresh = self
            .token
            .as_ref()
            .is_some_and(|(read, _)| read.elapsed() < TOKEN_EVERY);
        if !fresh {
            match read_token(path) {
                Ok(token) => self.token = Some((Instant::now(), token)),
                Err(e) => tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "the token file could not be read; keeping the last token"
                ),
            }
        }
        self.token.as_ref().map(|(_, t)| t.clone())
    }

    /// Sends one request: the next batch if there is one, else a heartbeat. Returns whether more is waiting.
    async fn step(
        &mut self,
        buffer: &Mutex<Buffer>,
        counters: &AgentCounters,
        stats: &ExportCounters,
    ) -> Result<bool, SendError> {
        let (next, oldest) = {
            let b = buffer.lock().map_err(|_| SendError::Poisoned)?;
            (b.next_after(self.sent), b.oldest())
        };
        let mut req = self.request(counters, oldest);
        let sending = next.as_ref().map(|(seq, _, _, sealed)| (*seq, *sealed));
        if let Some((seq, body, _, _)) = next {
            if self.resending {
                stats.resent_batches.fetch_add(1, Ordering::Relaxed);
            }
            req = req
                .header(HEADER_SEQ, seq.to_string())
                .header(
                    reqwest::header::CONTENT_TYPE,
                    self.config.wire.content_type(),
                )
                .body(body);
        }
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let response = req.send().await?;
        let status = response.status();
        if status != StatusCode::OK && status != StatusCode::CONFLICT {
            let text = response.text().await.unwrap_or_default();
            if status == StatusCode::UNAUTHORIZED {
                // Perhaps rotated: read the file again before the next attempt.
                self.token = None;
            }
            if let Some((seq, _)) = sending
                && refuses_the_batch(status)
            {
                // Sending it again would be refused again and hold up every batch after it.
                let given_up = buffer.lock().map_err(|_| SendError::Poisoned)?.give_up(seq);
                if given_up > 0 {
                    stats.refused_records.fetch_add(given_up, Ordering::Relaxed);
                    tracing::error!(
                        batch = seq,
                        records = given_up,
                        %status,
                        reason = text.trim(),
                        "the aggregator refused a batch as it is; its records are given up and counted"
                    );
                }
            }
            return Err(SendError::Refused {
                status,
                body: text.trim().to_owned(),
            });
        }
        let body = response.bytes().await?;
        let reply: IngestReply = serde_json::from_slice(&body)?;
        match reply.expected {
            // The aggregator wants an earlier batch (it restarted and lost what was not durable yet).
            Some(expected) => {
                self.sent = expected.saturating_sub(1);
                self.resending = true;
            }
            None => {
                if let Some((seq, _)) = sending {
                    self.sent = seq;
                }
                self.sent = self.sent.max(reply.applied);
            }
        }
        if reply.acked > self.acked {
            self.acked = reply.acked;
            let mut b = buffer.lock().map_err(|_| SendError::Poisoned)?;
            let records = b.ack(reply.acked);
            stats.acked_records.fetch_add(records, Ordering::Relaxed);
            if let Some((_, sealed)) = sending {
                stats
                    .last_ack_latency_us
                    .store(sealed.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
        }
        let b = buffer.lock().map_err(|_| SendError::Poisoned)?;
        if b.next_after(self.sent).is_none() {
            self.resending = false;
        }
        Ok(b.next_after(self.sent).is_some())
    }

    /// Sends until `stop` is set and everything is acked (or `drain` runs out): batches as soon as they are
    /// sealed, a heartbeat every second otherwise, with exponential backoff after failures. Fails only when the
    /// buffer is unusable (its lock poisoned), which no retry mends.
    pub async fn run(
        mut self,
        buffer: &Mutex<Buffer>,
        counters: impl Fn() -> AgentCounters,
        stats: &ExportCounters,
        stop: &AtomicBool,
        drain: Duration,
    ) -> Result<(), SendError> {
        let mut backoff = Duration::from_millis(100);
        let mut last_heartbeat = Instant::now() - Duration::from_secs(10);
        let mut stopping: Option<Instant> = None;
        loop {
            let has_batch = {
                let mut b = buffer.lock().map_err(|_| SendError::Poisoned)?;
                if stopping.is_some() {
                    b.seal();
                } else {
                    b.seal_if_older(self.config.flush);
                }
                stats.buffered_records.store(b.records(), Ordering::Relaxed);
                stats
                    .buffered_bytes
                    .store(b.bytes() as u64, Ordering::Relaxed);
                b.next_after(self.sent).is_some()
            };
            if stop.load(Ordering::Relaxed) && stopping.is_none() {
                stopping = Some(Instant::now());
                continue;
            }
            if let Some(since) = stopping {
                let all_acked = buffer
                    .lock()
                    .map(|b| b.records() == 0 || since.elapsed() >= drain)
                    .map_err(|_| SendError::Poisoned)?;
                if all_acked {
                    return Ok(());
                }
            }
            let unacked = buffer
                .lock()
                .map(|b| b.records() > 0)
                .map_err(|_| SendError::Poisoned)?;
            let heartbeat_due = last_heartbeat.elapsed() >= Duration::from_secs(1)
                || (unacked && last_heartbeat.elapsed() >= Duration::from_millis(250));
            if !has_batch && !heartbeat_due {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            last_heartbeat = Instant::now();
            match self.step(buffer, &counters(), stats).await {
                Ok(_) => {
                    stats.connected.store(true, Ordering::Relaxed);
                    backoff = Duration::from_millis(100);
                }
                Err(SendError::Poisoned) => return Err(SendError::Poisoned),
                Err(e) => {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    if stats.connected.swap(false, Ordering::Relaxed) {
                        tracing::warn!("the aggregator is unreachable ({e}); buffering");
                    }
                    // Everything not acked is sent again: the aggregator ignores what it already applied.
                    self.sent = self.acked;
                    self.resending = true;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.config.max_backoff);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Buffer, WireFormat};
    use weir_model::{FlowRecord, Protocol, Timestamp};

    fn record(port: u16) -> FlowRecord {
        FlowRecord {
            src: [10, 0, 0, 1].into(),
            src_port: Some(port),
            dst: [10, 0, 0, 2].into(),
            dst_port: Some(80),
            proto: Protocol::TCP,
            icmp_type: None,
            icmp_code: None,
            icmp_id: None,
            packets: 1,
            bytes: 60,
            reply_packets: 0,
            reply_bytes: 0,
            start: Timestamp(0),
            end: Timestamp(0),
            tcp_flags: Default::default(),
            reply_tcp_flags: Default::default(),
            orientation: Default::default(),
            end_reason: Default::default(),
            community_id: String::new(),
            observed_at: None,
        }
    }

    #[test]
    fn batches_are_numbered_acked_and_the_oldest_dropped_when_full() {
        let mut b = Buffer::new(1 << 16, 10, WireFormat::JsonLines);
        let records: Vec<FlowRecord> = (0..25).map(record).collect();
        assert_eq!(b.push(&records), 0);
        b.seal();
        assert_eq!(b.oldest(), 1);
        assert_eq!(b.next_after(0).map(|n| (n.0, n.2)), Some((1, 10)));
        assert_eq!(b.next_after(2).map(|n| (n.0, n.2)), Some((3, 5)));
        assert_eq!(b.ack(2), 20);
        assert_eq!(b.records(), 5);
        // Fill past the limit: whole old batches go, and are counted.
        let many: Vec<FlowRecord> = (0..2000).map(|i| record(i as u16)).collect();
        let dropped = b.push(&many);
        assert!(dropped > 0);
        assert_eq!(b.records() + dropped, 2005);
        assert!(b.bytes() <= 1 << 16);
    }

    #[test]
    fn batches_are_sealed_by_size_and_a_refused_one_is_sent_empty() {
        let mut b = Buffer::with_batch_bytes(1 << 20, 1000, 4 << 10, WireFormat::JsonLines);
        let records: Vec<FlowRecord> = (0..200).map(record).collect();
        b.push(&records);
        b.seal();
        let mut after = 0;
        let mut batches = 0;
        while let Some((seq, body, _, _)) = b.next_after(after) {
            assert!(body.len() < (4 << 10) + 1024, "{}", body.len());
            after = seq;
            batches += 1;
        }
        assert!(batches > 1);
        let held = b.records();
        let (_, _, first, _) = b.next_after(0).unwrap();
        assert_eq!(b.give_up(1), first);
        assert_eq!(b.records(), held - first);
        // Still numbered 1, now empty: the aggregator passes it.
        let (seq, body, n, _) = b.next_after(0).unwrap();
        assert_eq!((seq, body.len(), n), (1, 0, 0));
        assert_eq!(b.give_up(1), 0);
    }

    #[test]
    fn binary_batches_each_start_with_the_magic_and_decode_to_their_records() {
        let mut b = Buffer::new(1 << 20, 10, WireFormat::Binary);
        let records: Vec<FlowRecord> = (0..25).map(record).collect();
        b.push(&records);
        b.seal();
        let mut back = Vec::new();
        let mut after = 0;
        while let Some((seq, body, n, _)) = b.next_after(after) {
            let (got, malformed) = weir_model::wire::decode(&body).unwrap();
            assert_eq!((got.len() as u64, malformed), (n, 0));
            back.extend(got);
            after = seq;
        }
        assert_eq!(back, records);
    }
}

//! Capture files: open, sniff the format, and fill batches with large sequential reads.

use std::fs::File;
use std::io::{self, Cursor, Read};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flate2::read::MultiGzDecoder;

use crate::batch::Batch;
use crate::error::{CaptureError, CaptureWarning};
use crate::format::{
    CaptureFormat, Framer, MAX_RECORD_LEN, PCAP_HEADER_LEN, PcapFramer, PcapNgFramer, Step, sniff,
};

/// Counts the bytes read from the underlying file (compressed bytes, for a gzip file), for progress reporting.
struct CountingReader<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Totals of what a [`FileSource`] read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReaderStats {
    /// Packet records delivered.
    pub packets: u64,
    /// Capture bytes (decompressed) consumed.
    pub bytes: u64,
}

/// A pcap or pcapng capture, plain or gzip-compressed, read in [`Batch`]es.
pub struct FileSource {
    name: String,
    input: Box<dyn Read + Send>,
    format: CaptureFormat,
    framer: Framer,
    /// Bytes of an incomplete record left over from the previous batch.
    carry: Vec<u8>,
    /// Offset in the (decompressed) capture of `carry[0]`.
    carry_offset: u64,
    eof: bool,
    done: bool,
    pending_error: Option<CaptureError>,
    warnings: Vec<CaptureWarning>,
    stats: ReaderStats,
    progress: Arc<AtomicU64>,
    size: Option<u64>,
}

impl std::fmt::Debug for FileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSource")
            .field("name", &self.name)
            .field("format", &self.format)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn read_full(input: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// A human description of bytes that are not a capture.
fn describe(bytes: &[u8]) -> String {
    let known: &[(&[u8], &str)] = &[
        (
            &[0x28, 0xb5, 0x2f, 0xfd],
            "zstd-compressed data (decompress it first)",
        ),
        (
            &[0xfd, b'7', b'z', b'X', b'Z', 0],
            "xz-compressed data (decompress it first)",
        ),
        (b"BZh", "bzip2-compressed data (decompress it first)"),
        (b"PK\x03\x04", "a zip archive (extract the capture first)"),
        (b"\x7fELF", "an ELF executable"),
        (
            b"snoop\0\0\0",
            "a Sun snoop capture (convert it with editcap -F pcap)",
        ),
        (
            b"GMBU",
            "a Microsoft Network Monitor capture (convert it with editcap -F pcap)",
        ),
        (
            b"XCP\0",
            "a NetXray/Sniffer capture (convert it with editcap -F pcap)",
        ),
    ];
    if let Some((_, what)) = known.iter().find(|(magic, _)| bytes.starts_with(magic)) {
        return (*what).to_owned();
    }
    let text = bytes
        .iter()
        .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace());
    if text {
        let shown: String = String::from_utf8_lossy(bytes)
            .chars()
            .map(|c| if c.is_whitespace() { ' ' } else { c })
            .collect();
        format!("text {:?}", shown.trim_end())
    } else {
        let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("bytes {}", hex.join(" "))
    }
}

impl FileSource {
    /// Opens a capture file; `-` reads standard input.
    pub fn open(path: &Path) -> Result<FileSource, CaptureError> {
        let name = path.display().to_string();
        if name == "-" {
            return FileSource::new(name, io::stdin(), None);
        }
        let io_err = |source| CaptureError::Io {
            name: name.clone(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        if meta.is_dir() {
            return Err(io_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "is a directory, not a capture file",
            )));
        }
        let size = meta.is_file().then_some(meta.len());
        FileSource::new(name, file, size)
    }

    /// Reads a capture from any reader. `name` is used in errors; `size` (of the raw input) enables progress.
    pub fn new<R: Read + Send + 'static>(
        name: String,
        reader: R,
        size: Option<u64>,
    ) -> Result<FileSource, CaptureError> {
        let progress = Arc::new(AtomicU64::new(0));
        let mut input: Box<dyn Read + Send> = Box::new(CountingReader {
            inner: reader,
            count: Arc::clone(&progress),
        });
        let io_err = |source| CaptureError::Io {
            name: name.clone(),
            source,
        };
        let mut head = [0u8; 48];
        let mut n = read_full(&mut input, &mut head[..4]).map_err(io_err)?;
        if n == 0 {
            return Err(CaptureError::Empty { name });
        }
        if head[..n].starts_with(&[0x1f, 0x8b]) {
            let raw = Cursor::new(head[..n].to_vec()).chain(input);
            input = Box::new(MultiGzDecoder::new(raw));
            n = read_full(&mut input, &mut head[..4]).map_err(io_err)?;
            if n == 0 {
                return Err(CaptureError::Empty { name });
            }
        }
        let format = if n == 4 {
            sniff([head[0], head[1], head[2], head[3]])
        } else {
            None
        };
        let Some(format) = format else {
            // Read a little more so the message can say what the file is.
            let more = read_full(&mut input, &mut head[n..]).unwrap_or(0);
            return Err(CaptureError::NotACapture {
                name,
                found: describe(&head[..n + more]),
            });
        };
        let (framer, carry, carry_offset) = match format {
            CaptureFormat::PcapNg => (
                Framer::PcapNg(PcapNgFramer::default()),
                head[..4].to_vec(),
                0,
            ),
            CaptureFormat::Pcap { .. } => {
                let mut header = [0u8; PCAP_HEADER_LEN];
                header[..4].copy_from_slice(&head[..4]);
                let got = read_full(&mut input, &mut header[4..]).map_err(io_err)?;
                if got < PCAP_HEADER_LEN - 4 {
                    return Err(CaptureError::Corrupt {
                        name,
                        offset: 0,
                        reason: format!(
                            "the pcap file header is truncated ({} of {PCAP_HEADER_LEN} bytes)",
                            got + 4
                        ),
                    });
                }
                let framer =
                    PcapFramer::new(format, &header).ok_or_else(|| CaptureError::Corrupt {
                        name: name.clone(),
                        offset: 0,
                        reason: "unreadable pcap file header".into(),
                    })?;
                (Framer::Pcap(framer), Vec::new(), PCAP_HEADER_LEN as u64)
            }
        };
        Ok(FileSource {
            name,
            input,
            format,
            framer,
            carry,
            carry_offset,
            eof: false,
            done: false,
            pending_error: None,
            warnings: Vec::new(),
            stats: ReaderStats::default(),
            progress,
            size,
        })
    }

    /// The name given at opening (the path, or `-`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The container format.
    pub fn format(&self) -> CaptureFormat {
        self.format
    }

    /// Warnings so far (complete once [`FileSource::next_batch`] returned `Ok(false)`).
    pub fn warnings(&self) -> Vec<CaptureWarning> {
        let mut warnings = self.warnings.clone();
        if let Framer::PcapNg(ng) = &self.framer
            && ng.unknown_interface > 0
        {
            warnings.push(CaptureWarning::UnknownInterface {
                name: self.name.clone(),
                count: ng.unknown_interface,
            });
        }
        warnings
    }

    /// What was read so far.
    pub fn stats(&self) -> ReaderStats {
        self.stats
    }

    /// A counter of raw input bytes read, shared so another thread can draw progress.
    pub fn progress_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.progress)
    }

    /// Size of the raw input, when it is a regular file.
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// Fills `batch` with the next packets. Returns `Ok(false)` at the end of the capture.
    ///
    /// After an error, the packets before the damage have been delivered and the next call returns `Ok(false)`.
    pub fn next_batch(&mut self, batch: &mut Batch) -> Result<bool, CaptureError> {
        batch.packets.clear();
        batch.filled = 0;
        if let Some(err) = self.pending_error.take() {
            self.done = true;
            return Err(err);
        }
        if self.done {
            return Ok(false);
        }
        if batch.buf.len() < self.carry.len() {
            batch.buf.resize(self.carry.len(), 0);
        }
        let mut filled = self.carry.len();
        batch.buf[..filled].copy_from_slice(&self.carry);
        self.carry.clear();
        let mut base = self.carry_offset;
        let mut pos = 0usize;
        let mut need: Option<usize> = None;
        loop {
            while !self.eof && filled < batch.buf.len() {
                match self.input.read(&mut batch.buf[filled..]) {
                    Ok(0) => self.eof = true,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(source) => {
                        // Deliver what is complete, then report the error.
                        self.eof = true;
                        self.pending_error = Some(CaptureError::Io {
                            name: self.name.clone(),
                            source,
                        });
                    }
                }
            }
            let data = &batch.buf[..filled];
            loop {
                match self.framer.step(data, pos) {
                    Step::Packet(meta, len) => {
                        batch.packets.push(meta);
                        pos += len;
                    }
                    Step::Other(len) => pos += len,
                    Step::NeedMore(n) => {
                        need = n;
                        break;
                    }
                    Step::Corrupt(reason) => {
                        self.eof = true;
                        self.pending_error = Some(CaptureError::Corrupt {
                            name: self.name.clone(),
                            offset: base + pos as u64,
                            reason,
                        });
                        // Nothing after the damage can be trusted.
                        filled = pos;
                        break;
                    }
                }
            }
            if !batch.packets.is_empty() || self.eof {
                break;
            }
            // Only metadata so far: make room and read on.
            batch.buf.copy_within(pos..filled, 0);
            filled -= pos;
            base += pos as u64;
            pos = 0;
            match need {
                Some(n) if n > batch.buf.len() => batch.buf.resize(n.min(MAX_RECORD_LEN + 64), 0),
                _ if filled == batch.buf.len() => batch.buf.resize(batch.buf.len() * 2, 0),
                _ => {}
            }
        }
        self.carry.extend_from_slice(&batch.buf[pos..filled]);
        self.carry_offset = base + pos as u64;
        batch.filled = pos;
        self.stats.packets += batch.packets.len() as u64;
        self.stats.bytes += pos as u64;
        if batch.packets.is_empty() {
            // End of input: whatever is left cannot be a complete record.
            if !self.carry.is_empty() && self.pending_error.is_none() {
                self.warnings.push(CaptureWarning::TruncatedRecord {
                    name: self.name.clone(),
                    offset: self.carry_offset,
                    have: self.carry.len(),
                    need,
                });
            }
            self.carry.clear();
            if let Some(err) = self.pending_error.take() {
                self.done = true;
                return Err(err);
            }
            self.done = true;
            return Ok(false);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcap_bytes(records: &[(u32, &[u8])]) -> Vec<u8> {
        let mut out = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&65535u32.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        for (secs, data) in records {
            out.extend_from_slice(&secs.to_le_bytes());
            out.extend_from_slice(&5u32.to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(data);
        }
        out
    }

    fn read_all(src: &mut FileSource, batch_bytes: usize) -> (Vec<(i64, Vec<u8>)>, Option<String>) {
        let mut batch = Batch::with_capacity(batch_bytes);
        let mut out = Vec::new();
        loop {
            match src.next_batch(&mut batch) {
                Ok(true) => out.extend(batch.iter().map(|p| (p.timestamp.0, p.data.to_vec()))),
                Ok(false) => return (out, None),
                Err(e) => return (out, Some(e.to_string())),
            }
        }
    }

    #[test]
    fn records_spanning_batches_and_larger_than_a_batch_are_read_whole() {
        let big = vec![7u8; 1000];
        let small = [1u8, 2, 3];
        let bytes = pcap_bytes(&[(1, &small), (2, &big), (3, &small)]);
        for batch_bytes in [64, 100, 1100, 4096] {
            let mut src = FileSource::new("t".into(), Cursor::new(bytes.clone()), None)
                .unwrap_or_else(|e| panic!("{e}"));
            let (packets, err) = read_all(&mut src, batch_bytes);
            assert_eq!(err, None);
            let lens: Vec<usize> = packets.iter().map(|p| p.1.len()).collect();
            assert_eq!(lens, [3, 1000, 3], "batch {batch_bytes}");
            assert_eq!(packets[1].0, 2_000_005_000);
            assert!(src.warnings().is_empty());
        }
    }

    #[test]
    fn truncated_last_record_is_a_warning_and_keeps_earlier_packets() {
        let mut bytes = pcap_bytes(&[(1, &[1, 2, 3]), (2, &[4, 5, 6, 7])]);
        bytes.truncate(bytes.len() - 2);
        let mut src = FileSource::new("cut.pcap".into(), Cursor::new(bytes), None)
            .unwrap_or_else(|e| panic!("{e}"));
        let (packets, err) = read_all(&mut src, 4096);
        assert_eq!((packets.len(), err), (1, None));
        let warnings = src.warnings();
        assert!(matches!(
            warnings.as_slice(),
            [CaptureWarning::TruncatedRecord {
                have: 18,
                need: Some(20),
                ..
            }]
        ));
    }

    #[test]
    fn not_a_capture_says_what_it_found() {
        let err = FileSource::new(
            "x".into(),
            Cursor::new(b"GET / HTTP/1.1\r\n".to_vec()),
            None,
        )
        .err()
        .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("x: not a pcap or pcapng capture: found text \"GET / HTTP/1.1\"")
        );
        let err = FileSource::new("e".into(), Cursor::new(Vec::new()), None).err();
        assert!(matches!(err, Some(CaptureError::Empty { .. })));
    }

    #[test]
    fn gzip_input_is_decompressed_transparently() {
        use std::io::Write as _;
        let bytes = pcap_bytes(&[(1, &[9; 40])]);
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&bytes).unwrap_or_else(|e| panic!("{e}"));
        let gz = enc.finish().unwrap_or_else(|e| panic!("{e}"));
        let mut src =
            FileSource::new("g".into(), Cursor::new(gz), None).unwrap_or_else(|e| panic!("{e}"));
        let (packets, err) = read_all(&mut src, 4096);
        assert_eq!((packets.len(), err), (1, None));
    }

    #[test]
    fn corrupt_length_mid_file_delivers_earlier_packets_then_errors_once() {
        let mut bytes = pcap_bytes(&[(1, &[1, 2, 3])]);
        bytes.extend_from_slice(&[0u8; 8]);
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&[0u8; 4]);
        let mut src =
            FileSource::new("c".into(), Cursor::new(bytes), None).unwrap_or_else(|e| panic!("{e}"));
        let (packets, err) = read_all(&mut src, 4096);
        assert_eq!(packets.len(), 1);
        assert!(err.is_some_and(|e| e.contains("corrupt capture at byte 43")));
        let mut batch = Batch::default();
        assert!(matches!(src.next_batch(&mut batch), Ok(false)));
    }
}

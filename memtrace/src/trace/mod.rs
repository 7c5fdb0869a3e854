//! Recorded traces (`.mtr` files): what a live session saw, written while it runs, read back
//! anywhere (no root, no target, no binary) into the same analysis.
//!
//! Layout, all integers little-endian:
//! - file header: the magic [`MAGIC`], a `u32` format version, the `u32` length and `u32`
//!   CRC-32C of a JSON [`TraceHeader`], then the JSON;
//! - chunks, each a 32-byte frame ([`ChunkFrame`]: magic `MTCK`, kind, raw and compressed
//!   lengths, record count, CRC-32C of the compressed bytes, CRC-32C of the frame itself)
//!   followed by one zstd frame holding the records ([`codec`]).
//!
//! Every chunk decodes on its own, so a file cut short by a crash or a full disk yields every
//! complete chunk, and a damaged chunk is reported with its offset and skipped: the reader
//! looks for the next valid frame. Symbols (the frames and type names of the addresses the
//! session symbolized) travel in their own chunks, written as they are learned and once more
//! in full at the end; the reader gathers them before replaying the events.

pub mod codec;
pub mod reader;
pub mod replay;
pub mod writer;

use serde::{Deserialize, Serialize};

use crate::{analysis::Sampling, report::TargetInfo};

/// The first bytes of every trace file.
pub const MAGIC: [u8; 8] = *b"MTRACE\0\x01";
/// Raised when the layout changes incompatibly; readers refuse newer versions.
pub const FORMAT_VERSION: u32 = 1;
/// The first bytes of every chunk frame.
pub const CHUNK_MAGIC: [u8; 4] = *b"MTCK";
/// Bytes of a chunk frame.
pub const FRAME_BYTES: usize = 32;
/// Largest chunk a reader accepts, raw or compressed (a chunk holds about 1 MiB; one
/// goroutine scan of a few million goroutines can be bigger).
pub const MAX_CHUNK_BYTES: u32 = 256 << 20;
/// Largest file header.
pub const MAX_HEADER_BYTES: u32 = 1 << 20;

/// What a chunk holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkKind {
    Events = 1,
    Symbols = 2,
}

impl ChunkKind {
    fn from_byte(byte: u8) -> Option<ChunkKind> {
        match byte {
            1 => Some(ChunkKind::Events),
            2 => Some(ChunkKind::Symbols),
            _ => None,
        }
    }
}

/// The 32 bytes in front of each chunk's compressed records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkFrame {
    pub kind: ChunkKind,
    pub raw_len: u32,
    pub compressed_len: u32,
    pub records: u32,
    /// CRC-32C of the compressed bytes.
    pub payload_crc: u32,
}

impl ChunkFrame {
    pub fn to_bytes(self) -> [u8; FRAME_BYTES] {
        let mut bytes = [0u8; FRAME_BYTES];
        bytes[0..4].copy_from_slice(&CHUNK_MAGIC);
        bytes[4] = self.kind as u8;
        bytes[8..12].copy_from_slice(&self.raw_len.to_le_bytes());
        bytes[12..16].copy_from_slice(&self.compressed_len.to_le_bytes());
        bytes[16..20].copy_from_slice(&self.records.to_le_bytes());
        bytes[20..24].copy_from_slice(&self.payload_crc.to_le_bytes());
        let frame_crc = crc32c::crc32c(&bytes[0..24]);
        bytes[24..28].copy_from_slice(&frame_crc.to_le_bytes());
        bytes
    }

    /// The frame in `bytes`, if it is one: magic, checksum, kind and lengths all valid.
    pub fn parse(bytes: &[u8; FRAME_BYTES]) -> Option<ChunkFrame> {
        let word = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        if bytes[0..4] != CHUNK_MAGIC || word(24) != crc32c::crc32c(&bytes[0..24]) {
            return None;
        }
        let frame = ChunkFrame {
            kind: ChunkKind::from_byte(bytes[4])?,
            raw_len: word(8),
            compressed_len: word(12),
            records: word(16),
            payload_crc: word(20),
        };
        (frame.raw_len <= MAX_CHUNK_BYTES && frame.compressed_len <= MAX_CHUNK_BYTES)
            .then_some(frame)
    }
}

/// Who and what was traced, and how: the file header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceHeader {
    pub memtrace_version: String,
    pub target: TargetInfo,
    /// The binary's Go build id (else its GNU build id): the symbols in the file are those of
    /// this build.
    pub build_id: Option<String>,
    /// "sampled", "all-allocs" or "probe-floor".
    pub mode: String,
    /// The sampling the analysis started with (a later `Sampling` record may change it).
    pub sampling: Sampling,
    /// Whether goroutines were tracked.
    pub goroutines: bool,
    /// When tracing started: CLOCK_MONOTONIC ns (the events' clock), and wall-clock time.
    pub start_ts_ns: u64,
    pub start_unix_ns: u64,
    pub hostname: String,
    pub kernel: String,
}

/// The file header: magic, format version, the JSON header's length and CRC-32C, the JSON.
pub fn encode_header(header: &TraceHeader) -> serde_json::Result<Vec<u8>> {
    let json = serde_json::to_vec(header)?;
    let mut bytes = Vec::with_capacity(20 + json.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(json.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(&json).to_le_bytes());
    bytes.extend_from_slice(&json);
    Ok(bytes)
}

/// Why a trace file could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a memtrace trace (no MTRACE header)")]
    NotATrace,
    #[error("trace format version {found} is newer than this memtrace reads ({supported}); use a newer memtrace")]
    NewerFormat { found: u32, supported: u32 },
    #[error("the trace header is damaged: {0}")]
    BadHeader(String),
}

#[cfg(test)]
mod tests {
    use std::{
        os::unix::fs::PermissionsExt,
        path::{Path, PathBuf},
    };

    use super::{
        codec::EndInfo,
        reader::{DamageKind, TraceReader},
        replay::{replay, ReplayOptions},
        writer::Recorder,
        *,
    };
    use crate::{
        events::{AllocEvent, Event, GcEvent},
        symbolize::{Frame, Symbol},
    };

    fn header() -> TraceHeader {
        TraceHeader {
            memtrace_version: "test".into(),
            target: TargetInfo {
                pid: 42,
                exe: "/srv/app".into(),
                go_version: "go1.26.6".into(),
                exit: None,
            },
            build_id: Some("abc".into()),
            mode: "sampled".into(),
            sampling: Sampling::HeapProfiler { rate_bytes: 4096 },
            goroutines: false,
            start_ts_ns: 1_000_000_000,
            start_unix_ns: 0,
            hostname: "host".into(),
            kernel: "6.18".into(),
        }
    }

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("memtrace-{}-{name}.mtr", std::process::id()))
    }

    fn alloc(i: u64) -> Event {
        Event::ObjectAlloc(AllocEvent {
            pid: 42,
            ts_ns: 1_000_000_000 + i * 1_000_000,
            size: 4096,
            slot_size: 4096,
            class: 0,
            goid: 1,
            ptr: 0xc0_0000_0000 + i * 4096,
            header_word: 0,
            stack: vec![0x401000, 0x402000],
        })
    }

    /// A trace with `chunks` event chunks of 100 allocations each, then GC cycles.
    fn write_trace(path: &Path, chunks: u64) {
        let mut recorder =
            Recorder::create(&Recorder::create_file(path).unwrap(), &header()).unwrap();
        recorder.symbols([Symbol::Frames {
            vaddr: 0x401000,
            frames: vec![Frame {
                function: "main.leak".into(),
                file: "/src/main.go".into(),
                line: 7,
                inlined: false,
            }]
            .into(),
        }]);
        for chunk in 0..chunks {
            recorder.load_bias(0);
            for i in 0..100 {
                recorder.event(&alloc(chunk * 100 + i));
            }
            recorder.event(&Event::Gc(GcEvent {
                pid: 42,
                ts_ns: 1_000_000_000 + (chunk * 100 + 99) * 1_000_000,
                cycle: Some(chunk + 1),
                heap_start: 0,
                heap_end: 0,
                heap_marked: 0,
                heap_goal: 0,
            }));
            recorder.flush();
        }
        let summary = recorder.finish(
            EndInfo {
                duration_s: 1.5,
                ..EndInfo::default()
            },
            vec![],
        );
        assert_eq!(summary.error, None);
        assert_eq!(summary.progress.unrecorded, 0);
    }

    /// Frames in the order the file has them: (offset, kind, records).
    fn chunk_list(path: &Path) -> Vec<(u64, ChunkKind, u32)> {
        let mut reader = TraceReader::open(path).unwrap();
        let mut list = Vec::new();
        reader
            .chunks(
                |_| false,
                |chunk| {
                    let chunk = chunk.unwrap();
                    list.push((chunk.offset, chunk.frame.kind, chunk.frame.records));
                },
            )
            .unwrap();
        list
    }

    #[test]
    fn a_whole_trace_replays_into_the_report() {
        let path = temp_path("whole");
        write_trace(&path, 5);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "traces are readable by their owner only");
        let replay = replay(
            &path,
            ReplayOptions {
                top: 10,
                keep_deaths: false,
            },
        )
        .unwrap();
        assert!(replay.finished && replay.damage.is_empty());
        assert_eq!(replay.report.events.received, 505);
        assert_eq!(replay.report.events.samples, 500);
        assert_eq!(replay.report.duration_s, 1.5);
        let site = &replay.report.alloc_sites[0];
        assert_eq!((site.function.as_str(), site.line), ("main.leak", 7));
        assert_eq!(site.samples, 500);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_cut_file_yields_every_complete_chunk() {
        let path = temp_path("cut");
        write_trace(&path, 4);
        let bytes = std::fs::read(&path).unwrap();
        let chunks = chunk_list(&path);
        let cut_path = temp_path("cut-part");
        // Cut inside each event chunk in turn: the chunks before it all replay.
        for (index, &(offset, kind, _)) in chunks.iter().enumerate() {
            if kind != ChunkKind::Events {
                continue;
            }
            for cut in [offset + 3, offset + FRAME_BYTES as u64 + 10] {
                std::fs::write(&cut_path, &bytes[..cut as usize]).unwrap();
                let replay = replay(
                    &cut_path,
                    ReplayOptions {
                        top: 10,
                        keep_deaths: false,
                    },
                )
                .unwrap();
                let complete_events: u64 = chunks[..index]
                    .iter()
                    .filter(|c| c.1 == ChunkKind::Events)
                    .map(|c| u64::from(c.2))
                    .sum();
                assert_eq!(replay.records, complete_events, "cut at {cut}");
                assert!(!replay.finished);
                assert_eq!(replay.damage.len(), 1);
                assert_eq!(replay.damage[0].what, DamageKind::Truncated);
                assert_eq!(replay.damage[0].offset, offset);
            }
        }
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(&cut_path).unwrap();
    }

    #[test]
    fn a_damaged_chunk_is_skipped_and_reported() {
        let path = temp_path("flip");
        write_trace(&path, 4);
        let bytes = std::fs::read(&path).unwrap();
        let chunks = chunk_list(&path);
        let events: Vec<_> = chunks.iter().filter(|c| c.1 == ChunkKind::Events).collect();
        let total: u64 = events.iter().map(|c| u64::from(c.2)).sum();
        let (offset, _, records) = *events[1];
        let flipped = temp_path("flip-part");
        // In the payload: a checksum mismatch. In the frame: unreadable bytes until the next.
        for (at, expected) in [
            (
                offset + FRAME_BYTES as u64 + 5,
                DamageKind::BadChecksum { records },
            ),
            (offset + 9, DamageKind::BadFrame),
        ] {
            let mut damaged = bytes.clone();
            damaged[at as usize] ^= 0x40;
            std::fs::write(&flipped, &damaged).unwrap();
            let replay = replay(
                &flipped,
                ReplayOptions {
                    top: 10,
                    keep_deaths: false,
                },
            )
            .unwrap();
            assert_eq!(replay.damage.len(), 1, "{:?}", replay.damage);
            assert_eq!(replay.damage[0].what, expected);
            assert_eq!(replay.damage[0].offset, offset);
            assert!(replay.finished, "the chunks after the damage are read");
            assert_eq!(replay.records, total - u64::from(records));
        }
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(&flipped).unwrap();
    }

    /// A damaged file either replays (its damage listed) or is refused for its header; reading
    /// it never fails otherwise.
    fn assert_readable_or_refused(path: &Path) {
        let options = ReplayOptions {
            top: 10,
            keep_deaths: false,
        };
        match replay(path, options) {
            Ok(replay) => {
                let len = std::fs::metadata(path).unwrap().len();
                assert!(replay.damage.iter().all(|d| d.offset + d.skipped <= len));
            }
            Err(
                TraceError::NotATrace | TraceError::BadHeader(_) | TraceError::NewerFormat { .. },
            ) => {}
            Err(error) => panic!("{}: {error}", path.display()),
        }
    }

    #[test]
    fn any_cut_or_flip_is_handled_without_panicking() {
        let path = temp_path("any");
        write_trace(&path, 2);
        let bytes = std::fs::read(&path).unwrap();
        let other = temp_path("any-part");
        for cut in (0..bytes.len()).step_by(7) {
            std::fs::write(&other, &bytes[..cut]).unwrap();
            assert_readable_or_refused(&other);
        }
        for at in (0..bytes.len()).step_by(3) {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0xff;
            std::fs::write(&other, &damaged).unwrap();
            assert_readable_or_refused(&other);
        }
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(&other).unwrap();
    }

    #[test]
    fn headers_are_checked() {
        let path = temp_path("header");
        std::fs::write(&path, b"not a trace at all, just text").unwrap();
        assert!(matches!(
            TraceReader::open(&path),
            Err(TraceError::NotATrace)
        ));
        std::fs::write(&path, b"MTR").unwrap();
        assert!(matches!(
            TraceReader::open(&path),
            Err(TraceError::NotATrace)
        ));
        write_trace(&path, 1);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8] = 99;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            TraceReader::open(&path),
            Err(TraceError::NewerFormat { found: 99, .. })
        ));
        bytes[8] = 1;
        bytes[30] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            TraceReader::open(&path),
            Err(TraceError::BadHeader(_))
        ));
        std::fs::remove_file(&path).unwrap();
    }
}

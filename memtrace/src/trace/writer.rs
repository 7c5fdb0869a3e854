//! Writing a trace while the session runs.
//!
//! The event loop encodes records into a chunk buffer (cheap) and hands full chunks to a writer
//! thread, which compresses and writes them. The queue between them is bounded: when the
//! writer falls behind (a slow disk), whole chunks are dropped and their records counted as
//! unrecorded, rather than stalling the loop that drains the ring buffer.

use std::{
    fs::File,
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{sync_channel, Receiver, SyncSender, TrySendError},
        Arc, Mutex,
    },
    thread::JoinHandle,
};

use super::{
    codec::{ChunkEncoder, EndInfo, Entry},
    encode_header, ChunkFrame, ChunkKind, TraceHeader,
};
use crate::{events::Event, symbolize::Symbol};

/// A chunk is handed to the writer once its records take this many bytes.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Chunks queued for the writer at most (so at most about this many MiB in flight).
const QUEUE_CHUNKS: usize = 32;
/// zstd level: 3 compresses goroutine and allocation records 5-10x at a few hundred MB/s.
const ZSTD_LEVEL: i32 = 3;

struct Job {
    kind: ChunkKind,
    raw: Vec<u8>,
    records: u32,
}

/// What the writer thread shares with the event loop.
#[derive(Default)]
struct Shared {
    bytes_written: AtomicU64,
    /// Records of chunks the writer could not write (after an I/O error).
    lost_records: AtomicU64,
    error: Mutex<Option<String>>,
}

/// Progress of a recording, for the progress line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Records handed to the writer.
    pub records: u64,
    pub bytes_written: u64,
    /// Records not in the file: the writer fell behind or failed.
    pub unrecorded: u64,
}

/// How a recording ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub path: PathBuf,
    pub progress: Progress,
    /// The first write error; the file holds every chunk written before it.
    pub error: Option<String>,
}

/// A trace file created and not written yet.
#[derive(Debug)]
pub struct TraceFile {
    file: File,
    path: PathBuf,
}

/// Records a session into a trace file.
pub struct Recorder {
    path: PathBuf,
    events: ChunkEncoder,
    symbols: ChunkEncoder,
    sender: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    records: u64,
    dropped_records: u64,
    load_bias: Option<u64>,
}

impl Recorder {
    /// Creates (or empties) the trace file, readable by its owner only. Done before tracing
    /// starts, so that a path that cannot be written stops memtrace before it touches the
    /// target.
    pub fn create_file(path: &Path) -> io::Result<TraceFile> {
        let file = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        // `mode` applies only to a new file: an existing one keeps its permissions otherwise.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        Ok(TraceFile {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Starts recording into `file`: writes the header and starts the writer thread.
    pub fn create(file: &TraceFile, header: &TraceHeader) -> io::Result<Recorder> {
        let path = &file.path;
        let mut file = file.file.try_clone()?;
        let head = encode_header(header).map_err(io::Error::other)?;
        file.write_all(&head)?;
        let shared = Arc::new(Shared::default());
        shared
            .bytes_written
            .store(head.len() as u64, Ordering::Relaxed);
        let (sender, receiver) = sync_channel(QUEUE_CHUNKS);
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("memtrace-writer".into())
            .spawn(move || write_chunks(file, receiver, &thread_shared))?;
        Ok(Recorder {
            path: path.to_path_buf(),
            events: ChunkEncoder::default(),
            symbols: ChunkEncoder::default(),
            sender: Some(sender),
            thread: Some(thread),
            shared,
            records: 0,
            dropped_records: 0,
            load_bias: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn event(&mut self, event: &Event) {
        self.events.event(event);
    }

    pub fn entry(&mut self, entry: &Entry) {
        self.events.entry(entry);
    }

    /// Notes the load bias for the events that follow, when it changed.
    pub fn load_bias(&mut self, bias: u64) {
        if self.load_bias != Some(bias) {
            self.load_bias = Some(bias);
            self.events.entry(&Entry::LoadBias(bias));
        }
    }

    pub fn symbols(&mut self, symbols: impl IntoIterator<Item = Symbol>) {
        for symbol in symbols {
            self.symbols.entry(&Entry::Symbol(symbol));
        }
    }

    /// Hands the chunk to the writer if it is full.
    pub fn flush_if_full(&mut self) {
        if self.events.encoded_bytes() >= CHUNK_BYTES || self.symbols.encoded_bytes() >= CHUNK_BYTES
        {
            self.flush();
        }
    }

    /// Hands everything encoded so far to the writer (symbols first).
    pub fn flush(&mut self) {
        self.hand_over(ChunkKind::Symbols, false);
        self.hand_over(ChunkKind::Events, false);
    }

    /// Hands one encoder's chunk to the writer thread: waiting for room when `wait`, else
    /// dropping the chunk (and counting its events) when the queue is full.
    fn hand_over(&mut self, kind: ChunkKind, wait: bool) {
        let encoder = match kind {
            ChunkKind::Symbols => &mut self.symbols,
            ChunkKind::Events => &mut self.events,
        };
        if encoder.is_empty() {
            return;
        }
        let (raw, records) = encoder.take();
        if kind == ChunkKind::Events {
            self.records += u64::from(records);
        }
        let Some(sender) = &self.sender else {
            return;
        };
        let job = Job { kind, raw, records };
        let refused = if wait {
            sender.send(job).err().map(|error| error.0)
        } else {
            match sender.try_send(job) {
                Ok(()) => None,
                Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => Some(job),
            }
        };
        // Symbols are written again in full at the end; events are gone.
        if refused.is_some_and(|job| job.kind == ChunkKind::Events) {
            self.dropped_records += u64::from(records);
        }
    }

    pub fn progress(&self) -> Progress {
        Progress {
            records: self.records,
            bytes_written: self.shared.bytes_written.load(Ordering::Relaxed),
            unrecorded: self.dropped_records + self.shared.lost_records.load(Ordering::Relaxed),
        }
    }

    /// Writes every symbol once more (a damaged symbols chunk earlier then costs nothing), the
    /// end record, and closes the file.
    pub fn finish(mut self, mut end: EndInfo, all_symbols: Vec<Symbol>) -> Summary {
        self.flush();
        self.symbols(all_symbols);
        end.unrecorded = self.progress().unrecorded;
        self.events.entry(&Entry::End(end));
        // The last chunks wait for room rather than being dropped: the session is over.
        self.hand_over(ChunkKind::Symbols, true);
        self.hand_over(ChunkKind::Events, true);
        self.close();
        Summary {
            path: self.path.clone(),
            progress: self.progress(),
            error: self.shared.error.lock().ok().and_then(|e| e.clone()),
        }
    }

    fn close(&mut self) {
        self.sender = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // An error ended the session early: what was queued still reaches the file.
        self.flush();
        self.close();
    }
}

/// The writer thread: compresses and appends chunks until the recorder hangs up.
fn write_chunks(mut file: File, jobs: Receiver<Job>, shared: &Shared) {
    // Like the event loop, stay out of the target's way on a busy machine.
    // SAFETY: setpriority on the calling thread (who = 0) has no memory effects.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
    let mut failed = false;
    for job in jobs {
        if failed {
            if job.kind == ChunkKind::Events {
                shared
                    .lost_records
                    .fetch_add(u64::from(job.records), Ordering::Relaxed);
            }
            continue;
        }
        match write_chunk(&mut file, &job) {
            Ok(bytes) => {
                shared.bytes_written.fetch_add(bytes, Ordering::Relaxed);
            }
            Err(error) => {
                failed = true;
                if job.kind == ChunkKind::Events {
                    shared
                        .lost_records
                        .fetch_add(u64::from(job.records), Ordering::Relaxed);
                }
                if let Ok(mut slot) = shared.error.lock() {
                    *slot = Some(format!(
                        "{error} after {} bytes",
                        shared.bytes_written.load(Ordering::Relaxed)
                    ));
                }
            }
        }
    }
    if !failed {
        if let Err(error) = file.sync_all() {
            if let Ok(mut slot) = shared.error.lock() {
                *slot = Some(format!("{error} (syncing)"));
            }
        }
    }
}

fn write_chunk(file: &mut File, job: &Job) -> io::Result<u64> {
    let compressed = zstd::bulk::compress(&job.raw, ZSTD_LEVEL)?;
    let frame = ChunkFrame {
        kind: job.kind,
        raw_len: u32::try_from(job.raw.len()).map_err(io::Error::other)?,
        compressed_len: u32::try_from(compressed.len()).map_err(io::Error::other)?,
        records: job.records,
        payload_crc: crc32c::crc32c(&compressed),
    };
    // One write per chunk, so that a crash leaves whole chunks or a cut tail.
    let mut bytes = Vec::with_capacity(compressed.len() + super::FRAME_BYTES);
    bytes.extend_from_slice(&frame.to_bytes());
    bytes.extend_from_slice(&compressed);
    file.write_all(&bytes)?;
    Ok(bytes.len() as u64)
}

//! Reading a trace: the header, then chunk after chunk, reporting damage instead of stopping.

use std::{
    fs::File,
    io::{self, BufReader, Read, Seek, SeekFrom},
    path::Path,
};

use super::{
    codec::{ChunkDecoder, CodecError, Entry},
    ChunkFrame, ChunkKind, TraceError, TraceHeader, CHUNK_MAGIC, FORMAT_VERSION, FRAME_BYTES,
    MAGIC, MAX_HEADER_BYTES,
};

/// Something wrong in a trace file, found while reading it. Reading goes on after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// Where the bad bytes start.
    pub offset: u64,
    /// How many bytes were skipped.
    pub skipped: u64,
    pub what: DamageKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DamageKind {
    /// The file ends inside a chunk (a crash or a full disk while writing).
    Truncated,
    /// Bytes that are not a valid chunk frame.
    BadFrame,
    /// A chunk whose compressed bytes do not match their checksum.
    BadChecksum { records: u32 },
    /// A chunk that does not decompress to its recorded size.
    BadCompression { records: u32 },
    /// A record that does not decode (the rest of its chunk is skipped).
    BadRecord {
        index: u32,
        records: u32,
        error: CodecError,
    },
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = self.offset;
        match &self.what {
            DamageKind::Truncated => write!(
                f,
                "the file ends inside a chunk at offset {at} ({} bytes cut off): the trace was not finished",
                self.skipped
            ),
            DamageKind::BadFrame => {
                write!(f, "{} unreadable bytes at offset {at} skipped", self.skipped)
            }
            DamageKind::BadChecksum { records } => write!(
                f,
                "chunk at offset {at} is damaged (checksum mismatch): its {records} records skipped"
            ),
            DamageKind::BadCompression { records } => write!(
                f,
                "chunk at offset {at} does not decompress: its {records} records skipped"
            ),
            DamageKind::BadRecord {
                index,
                records,
                error,
            } => write!(
                f,
                "chunk at offset {at}: record {index} of {records} is damaged ({error}); the rest of the chunk skipped"
            ),
        }
    }
}

/// One readable chunk.
pub struct Chunk {
    pub offset: u64,
    pub frame: ChunkFrame,
    /// The decompressed records (empty when the payload was not asked for).
    pub raw: Vec<u8>,
}

impl Chunk {
    /// Decodes the records, reporting the first damaged one (after which the chunk stops).
    pub fn entries(&self, mut each: impl FnMut(Entry)) -> Option<Damage> {
        let mut decoder = ChunkDecoder::new(&self.raw);
        let mut index = 0u32;
        while let Some(entry) = decoder.next_entry() {
            match entry {
                Ok(entry) => each(entry),
                Err(error) => {
                    return Some(Damage {
                        offset: self.offset,
                        skipped: 0,
                        what: DamageKind::BadRecord {
                            index,
                            records: self.frame.records,
                            error,
                        },
                    })
                }
            }
            index += 1;
        }
        None
    }
}

/// Where a trace is read from: a file, or bytes in memory.
pub trait TraceSource: Read + Seek {}
impl<T: Read + Seek> TraceSource for T {}

/// An open trace.
pub struct TraceReader<S: TraceSource = BufReader<File>> {
    file: S,
    pub header: TraceHeader,
    /// Where the first chunk starts, and the file's length.
    data_start: u64,
    len: u64,
}

/// Bytes read at a time when looking for the next chunk after damage.
const RESYNC_WINDOW: usize = 64 * 1024;

impl TraceReader {
    pub fn open(path: &Path) -> Result<TraceReader, TraceError> {
        let file = File::open(path)?;
        TraceReader::new(BufReader::with_capacity(1 << 20, file))
    }
}

impl<S: TraceSource> TraceReader<S> {
    /// Reads the header of the trace in `file`.
    pub fn new(mut file: S) -> Result<TraceReader<S>, TraceError> {
        let len = file.seek(SeekFrom::End(0))?;
        file.seek(SeekFrom::Start(0))?;
        let mut fixed = [0u8; 20];
        if let Err(error) = file.read_exact(&mut fixed) {
            return Err(match error.kind() {
                io::ErrorKind::UnexpectedEof => TraceError::NotATrace,
                _ => error.into(),
            });
        }
        if fixed[0..8] != MAGIC {
            return Err(TraceError::NotATrace);
        }
        let word = |at: usize| {
            u32::from_le_bytes([fixed[at], fixed[at + 1], fixed[at + 2], fixed[at + 3]])
        };
        let version = word(8);
        if version > FORMAT_VERSION {
            return Err(TraceError::NewerFormat {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let header_len = word(12);
        if header_len > MAX_HEADER_BYTES || u64::from(header_len) + 20 > len {
            return Err(TraceError::BadHeader(format!(
                "header length {header_len} does not fit the file"
            )));
        }
        let mut json = vec![0u8; header_len as usize];
        file.read_exact(&mut json)?;
        if crc32c::crc32c(&json) != word(16) {
            return Err(TraceError::BadHeader("checksum mismatch".into()));
        }
        let header: TraceHeader =
            serde_json::from_slice(&json).map_err(|e| TraceError::BadHeader(e.to_string()))?;
        Ok(TraceReader {
            file,
            header,
            data_start: 20 + u64::from(header_len),
            len,
        })
    }

    /// Visits every chunk in file order: `each` gets the readable ones (decompressed when
    /// `wanted` says so for their kind) and what could not be read.
    pub fn chunks(
        &mut self,
        wanted: impl Fn(ChunkKind) -> bool,
        mut each: impl FnMut(Result<Chunk, Damage>),
    ) -> io::Result<()> {
        let mut offset = self.data_start;
        self.file.seek(SeekFrom::Start(offset))?;
        let mut compressed = Vec::new();
        while offset < self.len {
            let left = self.len - offset;
            if left < FRAME_BYTES as u64 {
                each(Err(Damage {
                    offset,
                    skipped: left,
                    what: DamageKind::Truncated,
                }));
                break;
            }
            let mut frame_bytes = [0u8; FRAME_BYTES];
            self.file.read_exact(&mut frame_bytes)?;
            let Some(frame) = ChunkFrame::parse(&frame_bytes) else {
                // Not a frame: find the next one.
                let next = self.find_frame(offset + 1)?;
                each(Err(Damage {
                    offset,
                    skipped: next - offset,
                    what: DamageKind::BadFrame,
                }));
                offset = next;
                self.file.seek(SeekFrom::Start(offset))?;
                continue;
            };
            let end = offset + FRAME_BYTES as u64 + u64::from(frame.compressed_len);
            if end > self.len {
                each(Err(Damage {
                    offset,
                    skipped: left,
                    what: DamageKind::Truncated,
                }));
                break;
            }
            if !wanted(frame.kind) {
                self.file.seek_relative(i64::from(frame.compressed_len))?;
                each(Ok(Chunk {
                    offset,
                    frame,
                    raw: Vec::new(),
                }));
                offset = end;
                continue;
            }
            compressed.resize(frame.compressed_len as usize, 0);
            self.file.read_exact(&mut compressed)?;
            let chunk_offset = offset;
            offset = end;
            if crc32c::crc32c(&compressed) != frame.payload_crc {
                each(Err(Damage {
                    offset: chunk_offset,
                    skipped: end - chunk_offset,
                    what: DamageKind::BadChecksum {
                        records: frame.records,
                    },
                }));
                continue;
            }
            match zstd::bulk::decompress(&compressed, frame.raw_len as usize) {
                Ok(raw) if raw.len() == frame.raw_len as usize => each(Ok(Chunk {
                    offset: chunk_offset,
                    frame,
                    raw,
                })),
                _ => each(Err(Damage {
                    offset: chunk_offset,
                    skipped: end - chunk_offset,
                    what: DamageKind::BadCompression {
                        records: frame.records,
                    },
                })),
            }
        }
        Ok(())
    }

    /// The offset of the next valid chunk frame at or after `from`, or the end of the file.
    fn find_frame(&mut self, from: u64) -> io::Result<u64> {
        let mut start = from;
        let mut window = vec![0u8; RESYNC_WINDOW + FRAME_BYTES];
        while start + FRAME_BYTES as u64 <= self.len {
            self.file.seek(SeekFrom::Start(start))?;
            let want = (self.len - start).min(window.len() as u64) as usize;
            self.file.read_exact(&mut window[..want])?;
            let bytes = &window[..want];
            for at in 0..=want - FRAME_BYTES {
                if bytes[at..at + 4] != CHUNK_MAGIC {
                    continue;
                }
                let frame: &[u8; FRAME_BYTES] = bytes[at..at + FRAME_BYTES]
                    .try_into()
                    .expect("the slice is FRAME_BYTES long");
                if ChunkFrame::parse(frame).is_some() {
                    return Ok(start + at as u64);
                }
            }
            // Overlap by a frame, so that a frame across the window's end is found.
            start += (want - FRAME_BYTES + 1) as u64;
        }
        Ok(self.len)
    }
}

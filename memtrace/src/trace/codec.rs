//! The records inside a chunk: a tag byte, then LEB128 varints and length-prefixed strings.
//!
//! Timestamps are stored as differences from the chunk's previous one, and stacks once per
//! chunk (later uses refer to the first), so that a chunk decodes on its own: a damaged chunk
//! costs only its own records.

use std::{collections::HashMap, sync::Arc};

use memtrace_common::TargetStats;
use serde::{Deserialize, Serialize};

use crate::{
    analysis::Sampling,
    events::{
        AllocEvent, Event, FreeEvent, GcEvent, GoroutineCreateEvent, GoroutineScan, GoroutineState,
    },
    report::MemProfileRate,
    symbolize::{Frame, Symbol},
};

/// Record tags. Events keep the numbers of the ring buffer's tags where they have one.
mod tag {
    pub const ALLOC: u8 = 1;
    pub const OBJECT_ALLOC: u8 = 2;
    pub const OBJECT_FREE: u8 = 3;
    pub const GC: u8 = 4;
    pub const RUNTIME_READY: u8 = 5;
    pub const GOROUTINE_CREATE: u8 = 6;
    pub const GOROUTINE_SCAN: u8 = 7;
    pub const UNDECODABLE: u8 = 16;
    pub const SAMPLING: u8 = 17;
    pub const WAIT_REASONS: u8 = 18;
    pub const LOAD_BIAS: u8 = 19;
    pub const SCAN_FAILED: u8 = 20;
    pub const STATS: u8 = 21;
    pub const END: u8 = 22;
    pub const FRAMES: u8 = 32;
    pub const TYPE_NAME: u8 = 33;
}

/// The in-kernel counters at one moment (they only grow).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub ts_ns: u64,
    pub stats: TargetStats,
    pub global_counters: Vec<u64>,
}

/// How the session ended; the last record of a complete trace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EndInfo {
    pub duration_s: f64,
    /// Launch mode: how the target exited.
    pub target_exit: Option<String>,
    pub mem_profile_rate: Option<MemProfileRate>,
    /// Records the writer could not keep up with (not in the file; counted here).
    pub unrecorded: u64,
    /// The target exited while traced (every goroutine ended with it).
    #[serde(default)]
    pub target_exited: bool,
}

/// One record of a trace.
#[derive(Clone, Debug, PartialEq)]
pub enum Entry {
    /// An event of the live session, in the order the analysis saw it.
    Event(Event),
    /// A ring-buffer record that did not decode (counted, as live).
    Undecodable,
    /// The sampling the analysis works with changed (the heap profiler's rate became known).
    Sampling(Sampling),
    /// The runtime's wait-reason names.
    WaitReasons(Vec<String>),
    /// What the kernel added to the binary's addresses, for the events that follow.
    LoadBias(u64),
    /// A goroutine scan could not read the target.
    ScanFailed {
        ts_ns: u64,
    },
    Stats(Box<StatsSnapshot>),
    End(EndInfo),
    Symbol(Symbol),
}

/// Why a record could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("record cut short")]
    Truncated,
    #[error("unknown record tag {0}")]
    UnknownTag(u8),
    #[error("malformed record: {0}")]
    Malformed(&'static str),
}

/// Writes records into one chunk's buffer.
#[derive(Default)]
pub struct ChunkEncoder {
    buf: Vec<u8>,
    records: u32,
    last_ts: u64,
    /// Stacks written in this chunk, by their chunk-local number.
    stacks: HashMap<Vec<u64>, u64>,
}

fn put_varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push(value as u8 | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    (value >> 1) as i64 ^ -((value & 1) as i64)
}

fn put_str(buf: &mut Vec<u8>, text: &str) {
    put_varint(buf, text.len() as u64);
    buf.extend_from_slice(text.as_bytes());
}

impl ChunkEncoder {
    /// Bytes encoded so far.
    pub fn encoded_bytes(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    pub fn records(&self) -> u32 {
        self.records
    }

    /// The chunk's bytes and record count; the encoder starts a new chunk.
    pub fn take(&mut self) -> (Vec<u8>, u32) {
        let records = std::mem::take(&mut self.records);
        self.last_ts = 0;
        self.stacks.clear();
        (std::mem::take(&mut self.buf), records)
    }

    fn start(&mut self, tag: u8) {
        self.records += 1;
        self.buf.push(tag);
    }

    fn varint(&mut self, value: u64) {
        put_varint(&mut self.buf, value);
    }

    fn ts(&mut self, ts_ns: u64) {
        let delta = ts_ns.wrapping_sub(self.last_ts) as i64;
        self.last_ts = ts_ns;
        put_varint(&mut self.buf, zigzag(delta));
    }

    /// 0 for no stack; `2n + 1` then n addresses for a stack new to this chunk; `2k + 2` for
    /// the chunk's k-th stack.
    fn stack(&mut self, stack: &[u64]) {
        if stack.is_empty() {
            self.varint(0);
        } else if let Some(&known) = self.stacks.get(stack) {
            self.varint(2 * known + 2);
        } else {
            let id = self.stacks.len() as u64;
            self.stacks.insert(stack.to_vec(), id);
            self.varint(2 * stack.len() as u64 + 1);
            for &addr in stack {
                put_varint(&mut self.buf, addr);
            }
        }
    }

    pub fn entry(&mut self, entry: &Entry) {
        match entry {
            Entry::Event(event) => self.event(event),
            Entry::Undecodable => self.start(tag::UNDECODABLE),
            Entry::Sampling(sampling) => {
                self.start(tag::SAMPLING);
                let (kind, interval) = match *sampling {
                    Sampling::AllAllocs { interval_bytes } => (0, interval_bytes),
                    Sampling::HeapProfiler { rate_bytes } => (1, rate_bytes),
                };
                self.varint(kind);
                self.varint(interval);
            }
            Entry::WaitReasons(names) => {
                self.start(tag::WAIT_REASONS);
                self.varint(names.len() as u64);
                for name in names {
                    put_str(&mut self.buf, name);
                }
            }
            Entry::LoadBias(bias) => {
                self.start(tag::LOAD_BIAS);
                self.varint(*bias);
            }
            Entry::ScanFailed { ts_ns } => {
                self.start(tag::SCAN_FAILED);
                self.ts(*ts_ns);
            }
            Entry::Stats(snapshot) => {
                self.start(tag::STATS);
                self.ts(snapshot.ts_ns);
                let words = stats_words(&snapshot.stats);
                self.varint(words.len() as u64);
                for word in words {
                    self.varint(word);
                }
                self.varint(snapshot.global_counters.len() as u64);
                for &counter in &snapshot.global_counters {
                    self.varint(counter);
                }
            }
            Entry::End(end) => {
                self.start(tag::END);
                // Once per trace: JSON keeps it easy to extend.
                let json = serde_json::to_string(end).unwrap_or_default();
                put_str(&mut self.buf, &json);
            }
            Entry::Symbol(Symbol::Frames { vaddr, frames }) => {
                self.start(tag::FRAMES);
                self.varint(*vaddr);
                self.varint(frames.len() as u64);
                for frame in frames.iter() {
                    put_str(&mut self.buf, &frame.function);
                    put_str(&mut self.buf, &frame.file);
                    self.varint(u64::from(frame.line));
                    self.buf.push(u8::from(frame.inlined));
                }
            }
            Entry::Symbol(Symbol::TypeName { vaddr, name }) => {
                self.start(tag::TYPE_NAME);
                self.varint(*vaddr);
                match name {
                    Some(name) => {
                        self.buf.push(1);
                        put_str(&mut self.buf, name);
                    }
                    None => self.buf.push(0),
                }
            }
        }
    }

    pub fn event(&mut self, event: &Event) {
        match event {
            Event::Alloc(alloc) | Event::ObjectAlloc(alloc) => {
                self.start(if matches!(event, Event::Alloc(_)) {
                    tag::ALLOC
                } else {
                    tag::OBJECT_ALLOC
                });
                self.varint(u64::from(alloc.pid));
                self.ts(alloc.ts_ns);
                self.varint(alloc.size);
                self.varint(alloc.slot_size);
                self.varint(u64::from(alloc.class));
                self.varint(alloc.goid);
                self.varint(alloc.ptr);
                self.varint(alloc.header_word);
                self.stack(&alloc.stack);
            }
            Event::ObjectFree(free) => {
                self.start(tag::OBJECT_FREE);
                self.varint(u64::from(free.pid));
                self.ts(free.ts_ns);
                self.varint(free.ptr);
                self.varint(free.size);
            }
            Event::Gc(gc) => {
                self.start(tag::GC);
                self.varint(u64::from(gc.pid));
                self.ts(gc.ts_ns);
                self.varint(gc.cycle.map_or(0, |c| c.saturating_add(1)));
                self.varint(gc.heap_start);
                self.varint(gc.heap_end);
                self.varint(gc.heap_marked);
                self.varint(gc.heap_goal);
            }
            Event::RuntimeReady { pid, ts_ns } => {
                self.start(tag::RUNTIME_READY);
                self.varint(u64::from(*pid));
                self.ts(*ts_ns);
            }
            Event::GoroutineCreate(created) => {
                self.start(tag::GOROUTINE_CREATE);
                self.varint(u64::from(created.pid));
                self.ts(created.ts_ns);
                self.varint(created.goid);
                self.varint(created.parent_goid);
                self.varint(created.g);
                self.varint(created.start_pc);
                self.varint(created.go_pc);
                self.varint(created.stack_id.map_or(0, |id| u64::from(id) + 1));
                match &created.stack {
                    Some(stack) => {
                        self.buf.push(1);
                        self.stack(stack);
                    }
                    None => self.buf.push(0),
                }
            }
            Event::GoroutineScan(scan) => {
                self.start(tag::GOROUTINE_SCAN);
                self.varint(u64::from(scan.pid));
                self.ts(scan.ts_ns);
                self.buf.push(u8::from(scan.complete));
                self.varint(scan.goroutines.len() as u64);
                let mut last_goid = 0u64;
                for g in &scan.goroutines {
                    self.varint(zigzag(g.goid.wrapping_sub(last_goid) as i64));
                    last_goid = g.goid;
                    self.varint(g.g);
                    self.varint(u64::from(g.status));
                    self.buf.push(g.wait_reason);
                    self.varint(g.parent_goid);
                    self.varint(g.start_pc);
                    self.varint(g.go_pc);
                }
            }
        }
    }
}

/// `TargetStats` as words, in field order (every field is 64 bits wide).
fn stats_words(stats: &TargetStats) -> Vec<u64> {
    const WORDS: usize = size_of::<TargetStats>() / 8;
    // SAFETY: TargetStats is #[repr(C)] and made only of 64-bit integers and arrays of them
    // (its size is asserted in memtrace-common), so it is exactly WORDS u64s.
    let words: [u64; WORDS] = unsafe { std::mem::transmute_copy(stats) };
    words.to_vec()
}

/// The inverse of [`stats_words`]; missing words (an older writer) stay zero.
fn stats_from_words(words: &[u64]) -> TargetStats {
    const WORDS: usize = size_of::<TargetStats>() / 8;
    let mut all = [0u64; WORDS];
    for (slot, word) in all.iter_mut().zip(words) {
        *slot = *word;
    }
    // SAFETY: as in stats_words; every bit pattern is a valid TargetStats.
    unsafe { std::mem::transmute_copy(&all) }
}

/// Reads the records of one chunk.
pub struct ChunkDecoder<'a> {
    bytes: &'a [u8],
    pos: usize,
    last_ts: u64,
    stacks: Vec<Arc<[u64]>>,
}

impl<'a> ChunkDecoder<'a> {
    pub fn new(bytes: &'a [u8]) -> ChunkDecoder<'a> {
        ChunkDecoder {
            bytes,
            pos: 0,
            last_ts: 0,
            stacks: Vec::new(),
        }
    }

    fn byte(&mut self) -> Result<u8, CodecError> {
        let byte = *self.bytes.get(self.pos).ok_or(CodecError::Truncated)?;
        self.pos += 1;
        Ok(byte)
    }

    fn varint(&mut self) -> Result<u64, CodecError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(CodecError::Malformed("varint longer than 64 bits"))
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        u32::try_from(self.varint()?).map_err(|_| CodecError::Malformed("value over 32 bits"))
    }

    /// A count of items that take at least `min_bytes` each: never more than the bytes left
    /// could hold, so that a corrupt count cannot ask for a huge allocation.
    fn count(&mut self, min_bytes: usize) -> Result<usize, CodecError> {
        let count = self.varint()?;
        let left = (self.bytes.len() - self.pos) / min_bytes.max(1);
        usize::try_from(count)
            .ok()
            .filter(|&count| count <= left)
            .ok_or(CodecError::Truncated)
    }

    fn string(&mut self) -> Result<String, CodecError> {
        let len = self.count(1)?;
        let bytes = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        String::from_utf8(bytes.to_vec()).map_err(|_| CodecError::Malformed("string not UTF-8"))
    }

    fn ts(&mut self) -> Result<u64, CodecError> {
        let delta = unzigzag(self.varint()?);
        self.last_ts = self.last_ts.wrapping_add(delta as u64);
        Ok(self.last_ts)
    }

    fn stack(&mut self) -> Result<Option<Arc<[u64]>>, CodecError> {
        let code = self.varint()?;
        if code == 0 {
            return Ok(None);
        }
        if code % 2 == 0 {
            let id = usize::try_from(code / 2 - 1).unwrap_or(usize::MAX);
            return self
                .stacks
                .get(id)
                .cloned()
                .map(Some)
                .ok_or(CodecError::Malformed("reference to an unknown stack"));
        }
        let len = usize::try_from(code / 2).unwrap_or(usize::MAX);
        if len > self.bytes.len() - self.pos {
            return Err(CodecError::Truncated);
        }
        let mut stack = Vec::with_capacity(len);
        for _ in 0..len {
            stack.push(self.varint()?);
        }
        let stack: Arc<[u64]> = stack.into();
        self.stacks.push(stack.clone());
        Ok(Some(stack))
    }

    /// The next record; `None` at the end of the chunk.
    pub fn next_entry(&mut self) -> Option<Result<Entry, CodecError>> {
        if self.pos >= self.bytes.len() {
            return None;
        }
        let result = self.entry();
        if result.is_err() {
            // The rest of the chunk cannot be trusted.
            self.pos = self.bytes.len();
        }
        Some(result)
    }

    fn entry(&mut self) -> Result<Entry, CodecError> {
        let tag = self.byte()?;
        Ok(match tag {
            tag::ALLOC | tag::OBJECT_ALLOC => {
                let alloc = AllocEvent {
                    pid: self.u32()?,
                    ts_ns: self.ts()?,
                    size: self.varint()?,
                    slot_size: self.varint()?,
                    class: self.u32()?,
                    goid: self.varint()?,
                    ptr: self.varint()?,
                    header_word: self.varint()?,
                    stack: self.stack()?.map(|s| s.to_vec()).unwrap_or_default(),
                };
                Entry::Event(if tag == tag::ALLOC {
                    Event::Alloc(alloc)
                } else {
                    Event::ObjectAlloc(alloc)
                })
            }
            tag::OBJECT_FREE => Entry::Event(Event::ObjectFree(FreeEvent {
                pid: self.u32()?,
                ts_ns: self.ts()?,
                ptr: self.varint()?,
                size: self.varint()?,
            })),
            tag::GC => Entry::Event(Event::Gc(GcEvent {
                pid: self.u32()?,
                ts_ns: self.ts()?,
                cycle: self.varint()?.checked_sub(1),
                heap_start: self.varint()?,
                heap_end: self.varint()?,
                heap_marked: self.varint()?,
                heap_goal: self.varint()?,
            })),
            tag::RUNTIME_READY => Entry::Event(Event::RuntimeReady {
                pid: self.u32()?,
                ts_ns: self.ts()?,
            }),
            tag::GOROUTINE_CREATE => {
                let mut created = GoroutineCreateEvent {
                    pid: self.u32()?,
                    ts_ns: self.ts()?,
                    goid: self.varint()?,
                    parent_goid: self.varint()?,
                    g: self.varint()?,
                    start_pc: self.varint()?,
                    go_pc: self.varint()?,
                    stack_id: self.u32()?.checked_sub(1),
                    stack: None,
                };
                if self.byte()? != 0 {
                    created.stack = Some(self.stack()?.unwrap_or_else(|| Arc::from([])));
                }
                Entry::Event(Event::GoroutineCreate(created))
            }
            tag::GOROUTINE_SCAN => {
                let pid = self.u32()?;
                let ts_ns = self.ts()?;
                let complete = self.byte()? != 0;
                // Each goroutine takes at least 7 bytes.
                let count = self.count(7)?;
                let mut goroutines = Vec::with_capacity(count);
                let mut goid = 0u64;
                for _ in 0..count {
                    goid = goid.wrapping_add(unzigzag(self.varint()?) as u64);
                    goroutines.push(GoroutineState {
                        goid,
                        g: self.varint()?,
                        status: self.u32()?,
                        wait_reason: self.byte()?,
                        parent_goid: self.varint()?,
                        start_pc: self.varint()?,
                        go_pc: self.varint()?,
                    });
                }
                Entry::Event(Event::GoroutineScan(GoroutineScan {
                    pid,
                    ts_ns,
                    goroutines,
                    complete,
                }))
            }
            tag::UNDECODABLE => Entry::Undecodable,
            tag::SAMPLING => {
                let kind = self.varint()?;
                let interval = self.varint()?.max(1);
                Entry::Sampling(match kind {
                    0 => Sampling::AllAllocs {
                        interval_bytes: interval,
                    },
                    1 => Sampling::HeapProfiler {
                        rate_bytes: interval,
                    },
                    _ => return Err(CodecError::Malformed("unknown sampling kind")),
                })
            }
            tag::WAIT_REASONS => {
                let count = self.count(1)?;
                let mut names = Vec::with_capacity(count);
                for _ in 0..count {
                    names.push(self.string()?);
                }
                Entry::WaitReasons(names)
            }
            tag::LOAD_BIAS => Entry::LoadBias(self.varint()?),
            tag::SCAN_FAILED => Entry::ScanFailed { ts_ns: self.ts()? },
            tag::STATS => {
                let ts_ns = self.ts()?;
                let count = self.count(1)?;
                let mut words = Vec::with_capacity(count);
                for _ in 0..count {
                    words.push(self.varint()?);
                }
                let count = self.count(1)?;
                let mut global_counters = Vec::with_capacity(count);
                for _ in 0..count {
                    global_counters.push(self.varint()?);
                }
                Entry::Stats(Box::new(StatsSnapshot {
                    ts_ns,
                    stats: stats_from_words(&words),
                    global_counters,
                }))
            }
            tag::END => {
                let json = self.string()?;
                Entry::End(
                    serde_json::from_str(&json)
                        .map_err(|_| CodecError::Malformed("end record is not valid JSON"))?,
                )
            }
            tag::FRAMES => {
                let vaddr = self.varint()?;
                // A frame takes at least 4 bytes (two empty strings, a line, a flag).
                let count = self.count(4)?;
                let mut frames = Vec::with_capacity(count);
                for _ in 0..count {
                    frames.push(Frame {
                        function: self.string()?,
                        file: self.string()?,
                        line: self.u32()?,
                        inlined: self.byte()? != 0,
                    });
                }
                Entry::Symbol(Symbol::Frames {
                    vaddr,
                    frames: frames.into(),
                })
            }
            tag::TYPE_NAME => {
                let vaddr = self.varint()?;
                let name = match self.byte()? {
                    0 => None,
                    _ => Some(self.string()?),
                };
                Entry::Symbol(Symbol::TypeName { vaddr, name })
            }
            other => return Err(CodecError::UnknownTag(other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_entries() -> Vec<Entry> {
        let stack: Arc<[u64]> = Arc::from([0x401000u64, 0x402000, 0x7fff_ffff_ffff_fff0]);
        let alloc = AllocEvent {
            pid: 42,
            ts_ns: 1_000_000_000,
            size: 100,
            slot_size: 112,
            class: 9,
            goid: 7,
            ptr: 0xc0_0001_0000,
            header_word: 0x4a_0000,
            stack: stack.to_vec(),
        };
        let mut stats = TargetStats::ZERO;
        stats.objects = 12345;
        stats.class_objects[3] = 9;
        stats.goroutines_created = u64::MAX;
        vec![
            Entry::LoadBias(0x5555_0000_0000),
            Entry::Sampling(Sampling::HeapProfiler { rate_bytes: 524288 }),
            Entry::Event(Event::ObjectAlloc(alloc.clone())),
            Entry::Event(Event::Alloc(AllocEvent {
                ts_ns: 999_000_000,
                stack: vec![],
                ..alloc.clone()
            })),
            // The same stack again: a reference.
            Entry::Event(Event::ObjectAlloc(AllocEvent {
                ptr: 1,
                ..alloc.clone()
            })),
            Entry::Event(Event::ObjectFree(FreeEvent {
                pid: 42,
                ts_ns: 1_000_000_500,
                ptr: 1,
                size: 112,
            })),
            Entry::Event(Event::Gc(GcEvent {
                pid: 42,
                ts_ns: 2,
                cycle: Some(0),
                heap_start: 1,
                heap_end: 2,
                heap_marked: 3,
                heap_goal: 4,
            })),
            Entry::Event(Event::Gc(GcEvent {
                pid: 42,
                ts_ns: 3,
                cycle: None,
                heap_start: 0,
                heap_end: 0,
                heap_marked: 0,
                heap_goal: 0,
            })),
            Entry::Event(Event::RuntimeReady { pid: 42, ts_ns: 5 }),
            Entry::Event(Event::GoroutineCreate(GoroutineCreateEvent {
                pid: 42,
                ts_ns: 6,
                goid: 35,
                parent_goid: 1,
                g: 0xc0_0000_7000,
                start_pc: 0x480000,
                go_pc: 0x481234,
                stack_id: Some(0),
                stack: Some(stack.clone()),
            })),
            Entry::Event(Event::GoroutineCreate(GoroutineCreateEvent {
                pid: 42,
                ts_ns: 7,
                goid: 36,
                parent_goid: 1,
                g: 0xc0_0000_8000,
                start_pc: 0x480000,
                go_pc: 0x481234,
                stack_id: None,
                stack: None,
            })),
            Entry::Event(Event::GoroutineScan(GoroutineScan {
                pid: 42,
                ts_ns: 8,
                complete: true,
                goroutines: vec![
                    GoroutineState {
                        goid: 36,
                        g: 0xc0_0000_8000,
                        status: 4,
                        wait_reason: 7,
                        parent_goid: 1,
                        start_pc: 0x480000,
                        go_pc: 0x481234,
                    },
                    GoroutineState {
                        goid: 1,
                        g: 0xc0_0000_0000,
                        status: 2,
                        wait_reason: 0,
                        parent_goid: 0,
                        start_pc: 0x430000,
                        go_pc: 0x460000,
                    },
                ],
            })),
            Entry::Undecodable,
            Entry::WaitReasons(vec!["".into(), "chan receive".into(), "select".into()]),
            Entry::ScanFailed { ts_ns: 9 },
            Entry::Stats(Box::new(StatsSnapshot {
                ts_ns: 10,
                stats,
                global_counters: vec![1, 2, 3],
            })),
            Entry::Symbol(Symbol::Frames {
                vaddr: 0x401000,
                frames: vec![
                    Frame {
                        function: "main.inlined".into(),
                        file: "/src/main.go".into(),
                        line: 12,
                        inlined: true,
                    },
                    Frame {
                        function: "main.(*T[int]).F".into(),
                        file: "/src/main.go".into(),
                        line: 40,
                        inlined: false,
                    },
                ]
                .into(),
            }),
            Entry::Symbol(Symbol::TypeName {
                vaddr: 0x4a0000,
                name: Some("main.session".into()),
            }),
            Entry::Symbol(Symbol::TypeName {
                vaddr: 0x4a0008,
                name: None,
            }),
            Entry::End(EndInfo {
                duration_s: 10.5,
                target_exit: Some("exit code 0".into()),
                mem_profile_rate: Some(MemProfileRate {
                    original: 0,
                    written: Some(524288),
                    restored: true,
                }),
                unrecorded: 3,
                target_exited: true,
            }),
        ]
    }

    fn decode_all(bytes: &[u8]) -> Vec<Result<Entry, CodecError>> {
        let mut decoder = ChunkDecoder::new(bytes);
        std::iter::from_fn(|| decoder.next_entry()).collect()
    }

    #[test]
    fn every_entry_round_trips() {
        let entries = sample_entries();
        let mut encoder = ChunkEncoder::default();
        for entry in &entries {
            encoder.entry(entry);
        }
        assert_eq!(encoder.records() as usize, entries.len());
        let (bytes, records) = encoder.take();
        assert_eq!(records as usize, entries.len());
        let decoded: Vec<Entry> = decode_all(&bytes).into_iter().map(|e| e.unwrap()).collect();
        assert_eq!(decoded, entries);
        assert!(encoder.is_empty() && encoder.encoded_bytes() == 0);
    }

    #[test]
    fn stacks_are_written_once_per_chunk() {
        let stack: Vec<u64> = (0..20).map(|i| 0x400000 + i * 0x100).collect();
        let alloc = |ts_ns| {
            Entry::Event(Event::Alloc(AllocEvent {
                pid: 1,
                ts_ns,
                size: 8,
                slot_size: 8,
                class: 1,
                goid: 1,
                ptr: 0,
                header_word: 0,
                stack: stack.clone(),
            }))
        };
        let mut encoder = ChunkEncoder::default();
        encoder.entry(&alloc(1));
        let first = encoder.encoded_bytes();
        encoder.entry(&alloc(2));
        assert!(
            encoder.encoded_bytes() - first < 16,
            "the second use is a reference"
        );
        // A new chunk starts afresh: it must decode on its own.
        encoder.take();
        encoder.entry(&alloc(3));
        let (bytes, _) = encoder.take();
        assert_eq!(decode_all(&bytes), vec![Ok(alloc(3))]);
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        let mut encoder = ChunkEncoder::default();
        for entry in sample_entries() {
            encoder.entry(&entry);
        }
        let (bytes, _) = encoder.take();
        for cut in 0..bytes.len() {
            let _ = decode_all(&bytes[..cut]);
        }
        for position in 0..bytes.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut damaged = bytes.clone();
                damaged[position] ^= flip;
                let _ = decode_all(&damaged);
            }
        }
        assert_eq!(decode_all(&[200]), vec![Err(CodecError::UnknownTag(200))]);
        assert_eq!(
            decode_all(&[tag::WAIT_REASONS, 0xff, 0xff, 0xff, 0xff, 0x0f]),
            vec![Err(CodecError::Truncated)],
            "a huge count is refused before allocating"
        );
        assert_eq!(
            decode_all(&[
                tag::LOAD_BIAS,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0x01
            ]),
            vec![Err(CodecError::Malformed("varint longer than 64 bits"))]
        );
    }
}

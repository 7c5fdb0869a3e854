//! What memtrace's fuzz targets share: building checksum-valid traces out of fuzz input, the
//! checks every replay gets, and the seeds.
//!
//! Mutations of a real trace seldom survive its checksums (the header's, each frame's and each
//! payload's CRC-32C) or its zstd frames, so besides `trace_reader` (raw files: the header, the
//! framing, resynchronisation after damage) there is `trace_records`, whose input is records
//! that [`build_trace`] frames, compresses and checksums, so that every mutation reaches the
//! record decoder, the analysis and the report; and `chunk_decoder`, the record decoder alone.
//!
//! Seeds are generated here rather than committed (besides a few real traces under `seeds/`):
//! a target started with `MEMTRACE_FUZZ_SEEDS=<dir>` writes its seeds there and exits
//! ([`seed_mode`]), which `cargo xtask fuzz` does before fuzzing.

use std::{
    cell::RefCell,
    fs,
    io::{self, Cursor},
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
};

use memtrace::{
    analysis::Sampling,
    events::{
        AllocEvent, Event, FreeEvent, GcEvent, GoroutineCreateEvent, GoroutineScan, GoroutineState,
    },
    report::{MemProfileRate, TargetInfo},
    symbolize::{Frame, Symbol},
    trace::{
        codec::{ChunkEncoder, EndInfo, Entry, StatsSnapshot},
        reader::{DamageKind, TraceReader},
        replay::{replay_from, Replay, ReplayOptions},
        writer::Recorder,
        ChunkFrame, ChunkKind, TraceHeader,
    },
};
use memtrace_common::TargetStats;

/// The largest input the fuzzer makes (`-max_len`; `cargo xtask fuzz` passes the same value).
/// Seeds are cut to it, so those written here stay below it.
pub const MAX_LEN: usize = 64 * 1024;

/// The environment variable that turns a target into a seed writer.
pub const SEEDS_ENV: &str = "MEMTRACE_FUZZ_SEEDS";

/// Bytes at the start of a `trace_records` input that choose the file header (zero-padded).
pub const PARAMS_BYTES: usize = 24;

/// Separates the segments of a `trace_records` input (also in `trace.dict`): a separator
/// keeps the segments apart when mutations insert or remove bytes, where lengths would not.
pub const SEGMENT_SEPARATOR: &[u8] = b"#SEG";

const REPLAY: ReplayOptions = ReplayOptions {
    top: 10,
    keep_deaths: true,
};

/// Replays a whole trace as `memtrace report` does, and renders the report as text and JSON.
/// Returns `None` when the header is refused, which is an error, not damage.
pub fn replay_and_render(file: &[u8]) -> Option<Replay> {
    let reader = TraceReader::new(Cursor::new(file)).ok()?;
    // Bytes in memory cannot fail to read: an error here means the reader read past the end
    // of what it had checked, instead of reporting the damage.
    let replay = replay_from(reader, REPLAY).expect("replaying bytes in memory cannot fail");
    let len = file.len() as u64;
    for damage in &replay.damage {
        assert!(damage.offset <= len, "damage past the end: {damage:?}");
        let _ = damage.to_string();
    }
    let _ = replay.report.to_text(REPLAY.top);
    replay
        .report
        .write_json(io::sink())
        .expect("the report serializes to JSON");
    Some(replay)
}

/// The header a `trace_records` input asks for.
///
/// Params: byte 0 holds flags (bit 0: all-allocs sampling, else the heap profiler; bit 1:
/// goroutines tracked), bytes 1..9 the sampling interval (any u64, 0 included: the header's
/// JSON does not forbid it), 9..17 the start timestamp, 17..21 the pid, all little-endian.
pub fn trace_header(params: &[u8; PARAMS_BYTES]) -> TraceHeader {
    let u64_at = |at: usize| u64::from_le_bytes(params[at..at + 8].try_into().expect("8 bytes"));
    let all_allocs = params[0] & 1 != 0;
    let interval = u64_at(1);
    TraceHeader {
        memtrace_version: "fuzz".into(),
        target: TargetInfo {
            pid: u32::from_le_bytes(params[17..21].try_into().expect("4 bytes")),
            exe: "/fuzz/app".into(),
            go_version: "go1.26.6".into(),
            exit: None,
        },
        build_id: Some("fuzz".into()),
        mode: if all_allocs { "all-allocs" } else { "sampled" }.into(),
        sampling: if all_allocs {
            Sampling::AllAllocs {
                interval_bytes: interval,
            }
        } else {
            Sampling::HeapProfiler {
                rate_bytes: interval,
            }
        },
        goroutines: params[0] & 2 != 0,
        start_ts_ns: u64_at(9),
        start_unix_ns: 0,
        hostname: "fuzz".into(),
        kernel: "fuzz".into(),
    }
}

/// The params that [`trace_header`] turns back into (the relevant fields of) `header`.
pub fn header_params(header: &TraceHeader) -> [u8; PARAMS_BYTES] {
    let mut params = [0u8; PARAMS_BYTES];
    let (all_allocs, interval) = match header.sampling {
        Sampling::AllAllocs { interval_bytes } => (true, interval_bytes),
        Sampling::HeapProfiler { rate_bytes } => (false, rate_bytes),
    };
    params[0] = u8::from(all_allocs) | u8::from(header.goroutines) << 1;
    params[1..9].copy_from_slice(&interval.to_le_bytes());
    params[9..17].copy_from_slice(&header.start_ts_ns.to_le_bytes());
    params[17..21].copy_from_slice(&header.target.pid.to_le_bytes());
    params
}

/// The file header, as the writer writes it.
pub fn file_header(header: &TraceHeader) -> Vec<u8> {
    memtrace::trace::encode_header(header).expect("a header serializes")
}

/// What is wrong with a chunk [`build_trace`] frames on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Defect {
    None,
    RawLenTooLarge,
    RawLenTooSmall,
    BadPayloadChecksum,
    /// The records stored as they are, with a valid checksum: not a zstd frame.
    NotCompressed,
    /// The file ends in the middle of the chunk (the rest of the input is dropped).
    CutShort,
}

/// One chunk: its frame and compressed records, as the writer writes it, or with `defect`.
fn frame_chunk(out: &mut Vec<u8>, kind: ChunkKind, records: &[u8], defect: Defect) {
    thread_local! {
        // One context for every run: creating one took a quarter of the time of a run.
        // Level 1, not the writer's 3: any valid zstd frame does, and fuzzing wants speed.
        static COMPRESSOR: RefCell<zstd::bulk::Compressor<'static>> = RefCell::new(
            zstd::bulk::Compressor::new(1).expect("a zstd context"),
        );
    }
    let compressed = if defect == Defect::NotCompressed {
        records.to_vec()
    } else {
        COMPRESSOR.with_borrow_mut(|compressor| {
            compressor
                .compress(records)
                .expect("compressing in memory cannot fail")
        })
    };
    let raw_len = records.len() as u32;
    let frame = ChunkFrame {
        kind,
        raw_len: match defect {
            Defect::RawLenTooLarge => raw_len + 1,
            Defect::RawLenTooSmall => raw_len.saturating_sub(1),
            _ => raw_len,
        },
        compressed_len: compressed.len() as u32,
        // Only damage reports show it.
        records: raw_len,
        payload_crc: crc32c::crc32c(&compressed) ^ u32::from(defect == Defect::BadPayloadChecksum),
    };
    out.extend_from_slice(&frame.to_bytes());
    if defect == Defect::CutShort {
        out.extend_from_slice(&compressed[..compressed.len() / 2]);
    } else {
        out.extend_from_slice(&compressed);
    }
}

/// A trace built by [`build_trace`].
pub struct Built {
    pub file: Vec<u8>,
    /// Chunks framed (valid framing, defects included).
    pub chunks: u64,
    /// Every chunk is framed, compressed and checksummed correctly and nothing else is in the
    /// file: the reader must then read every chunk, and only records can be damaged.
    pub clean: bool,
}

/// Turns a `trace_records` input into a trace file: a header made from the first
/// [`PARAMS_BYTES`] bytes ([`trace_header`]), then one chunk or stretch of bytes per segment
/// (the rest, split at [`SEGMENT_SEPARATOR`]). A segment is a control byte, then records:
///
/// - `control & 3 == 0`: an events chunk holding them; `1`: a symbols chunk;
/// - `2`: the bytes themselves, unframed (garbage to resynchronise past);
/// - `3`: an events chunk with a defect, chosen by `(control >> 2) % 5`: its raw length one
///   too large, one too small, a wrong payload checksum, no compression, or the file ending
///   halfway through it.
pub fn build_trace(data: &[u8]) -> Built {
    let mut params = [0u8; PARAMS_BYTES];
    let head = data.len().min(PARAMS_BYTES);
    params[..head].copy_from_slice(&data[..head]);
    let mut built = Built {
        file: file_header(&trace_header(&params)),
        chunks: 0,
        clean: true,
    };
    for segment in split_segments(&data[head..]) {
        let Some((&control, records)) = segment.split_first() else {
            continue;
        };
        let (kind, defect) = match control & 3 {
            0 => (ChunkKind::Events, Defect::None),
            1 => (ChunkKind::Symbols, Defect::None),
            2 => {
                built.file.extend_from_slice(records);
                built.clean = false;
                continue;
            }
            _ => {
                let defect = match (control >> 2) % 5 {
                    0 => Defect::RawLenTooLarge,
                    1 => Defect::RawLenTooSmall,
                    2 => Defect::BadPayloadChecksum,
                    3 => Defect::NotCompressed,
                    _ => Defect::CutShort,
                };
                (ChunkKind::Events, defect)
            }
        };
        frame_chunk(&mut built.file, kind, records, defect);
        built.chunks += 1;
        if defect != Defect::None {
            built.clean = false;
        }
        if defect == Defect::CutShort {
            break;
        }
    }
    built
}

/// The pieces of `data` between separators.
fn split_segments(data: &[u8]) -> Vec<&[u8]> {
    let mut segments = Vec::new();
    let mut rest = data;
    while let Some(at) = rest
        .windows(SEGMENT_SEPARATOR.len())
        .position(|window| window == SEGMENT_SEPARATOR)
    {
        segments.push(&rest[..at]);
        rest = &rest[at + SEGMENT_SEPARATOR.len()..];
    }
    segments.push(rest);
    segments
}

/// The `trace_records` input that [`build_trace`] turns into a trace with `header` and the
/// chunks `segments` (control byte, records).
pub fn records_input(header: &TraceHeader, segments: &[(u8, &[u8])]) -> Vec<u8> {
    let mut input = header_params(header).to_vec();
    for (index, (control, records)) in segments.iter().enumerate() {
        if index > 0 {
            input.extend_from_slice(SEGMENT_SEPARATOR);
        }
        input.push(*control);
        input.extend_from_slice(records);
    }
    input
}

/// Where `trace_records` writes the trace it built, when set: to turn a reproducer into a
/// file for `memtrace report`.
pub const TRACE_OUT_ENV: &str = "MEMTRACE_FUZZ_TRACE_OUT";

/// The checks of a `trace_records` run on the trace built from `data`.
pub fn check_records(data: &[u8]) {
    static TRACE_OUT: OnceLock<Option<PathBuf>> = OnceLock::new();
    let built = build_trace(data);
    if let Some(path) = TRACE_OUT.get_or_init(|| std::env::var_os(TRACE_OUT_ENV).map(PathBuf::from))
    {
        fs::write(path, &built.file).expect("writing the built trace");
    }
    let replay = replay_and_render(&built.file).expect("a built header is always valid");
    if built.clean {
        // Every chunk is valid, so the reader must find them all and report only records.
        assert_eq!(
            replay.chunks, built.chunks,
            "chunks read: {:?}",
            replay.damage
        );
        for damage in &replay.damage {
            assert!(
                matches!(damage.what, DamageKind::BadRecord { .. }),
                "a valid chunk reported as damaged: {damage:?}"
            );
        }
    }
}

/// The fuzz targets, for [`seed_mode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    TraceReader,
    TraceRecords,
    ChunkDecoder,
}

/// When `MEMTRACE_FUZZ_SEEDS` names a directory: writes `target`'s seeds into it and exits
/// the process. Called from the targets' `init`, before libFuzzer reads its corpus.
pub fn seed_mode(target: Target) {
    let Some(dir) = std::env::var_os(SEEDS_ENV) else {
        return;
    };
    let dir = Path::new(&dir);
    match write_seeds(target, dir) {
        Ok(count) => {
            println!("{target:?}: {count} seeds written to {}", dir.display());
            std::process::exit(0);
        }
        Err(error) => {
            eprintln!(
                "{target:?}: cannot write seeds to {}: {error}",
                dir.display()
            );
            std::process::exit(1);
        }
    }
}

/// The real traces committed under `fuzz/seeds/` (recorded from the demo services).
fn committed_traces() -> io::Result<Vec<(String, Vec<u8>)>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let mut traces = Vec::new();
    for entry in fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "mtr") {
            let name = path
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            traces.push((name, fs::read(&path)?));
        }
    }
    traces.sort();
    Ok(traces)
}

/// A chunk's kind and decompressed records.
type RawChunk = (ChunkKind, Vec<u8>);

/// A trace's header and decompressed chunks, in file order.
fn read_chunks(file: &[u8]) -> Option<(TraceHeader, Vec<RawChunk>)> {
    let mut reader = TraceReader::new(Cursor::new(file)).ok()?;
    let mut chunks = Vec::new();
    reader
        .chunks(
            |_| true,
            |chunk| {
                if let Ok(chunk) = chunk {
                    chunks.push((chunk.frame.kind, chunk.raw));
                }
            },
        )
        .ok()?;
    Some((reader.header.clone(), chunks))
}

/// Writes the seeds of `target` into `dir`; returns how many.
pub fn write_seeds(target: Target, dir: &Path) -> io::Result<usize> {
    fs::create_dir_all(dir)?;
    // Generated traces are written by memtrace's own writer, so they follow its format.
    let mut traces = Vec::new();
    for scenario in scenarios() {
        let path = dir.join(format!("gen-{}.mtr", scenario.name));
        scenario.record(&path)?;
        traces.push((format!("gen-{}", scenario.name), fs::read(&path)?));
        if target != Target::TraceReader {
            fs::remove_file(&path)?;
        }
    }
    let committed = committed_traces()?;
    let mut count = if target == Target::TraceReader {
        traces.len()
    } else {
        0
    };
    let mut write = |name: String, mut bytes: Vec<u8>| -> io::Result<()> {
        bytes.truncate(MAX_LEN);
        count += 1;
        fs::write(dir.join(name), bytes)
    };
    match target {
        Target::TraceReader => {
            for (name, bytes) in committed {
                write(format!("{name}.mtr"), bytes)?;
            }
        }
        Target::ChunkDecoder => {
            for (name, bytes) in traces.iter().chain(&committed) {
                let Some((_, chunks)) = read_chunks(bytes) else {
                    continue;
                };
                for (index, (_, raw)) in chunks.into_iter().enumerate() {
                    if !raw.is_empty() {
                        write(format!("{name}-chunk{index}.bin"), raw)?;
                    }
                }
            }
        }
        Target::TraceRecords => {
            for (name, bytes) in traces.iter().chain(&committed) {
                let Some((header, chunks)) = read_chunks(bytes) else {
                    continue;
                };
                // The generated traces whole; real ones are too big for that, so each events
                // chunk goes with the last symbols chunk (which holds every symbol).
                let all: Vec<(u8, &[u8])> = chunks
                    .iter()
                    .map(|(kind, raw)| (u8::from(*kind == ChunkKind::Symbols), raw.as_slice()))
                    .collect();
                let whole = records_input(&header, &all);
                if whole.len() <= MAX_LEN {
                    write(format!("{name}.rec"), whole)?;
                    continue;
                }
                let symbols = all.iter().rev().find(|(control, _)| *control == 1);
                for (index, events) in all.iter().enumerate().filter(|(_, c)| c.0 == 0) {
                    let segments: Vec<(u8, &[u8])> =
                        symbols.iter().copied().copied().chain([*events]).collect();
                    write(
                        format!("{name}-chunk{index}.rec"),
                        records_input(&header, &segments),
                    )?;
                }
            }
            // Damage of every kind, between valid chunks.
            let scenario = &scenarios()[0];
            let (symbols, events) = scenario.encoded();
            for (control, name) in [
                (2, "garbage"),
                (3, "raw-len-large"),
                (3 | 1 << 2, "raw-len-small"),
                (3 | 2 << 2, "bad-checksum"),
                (3 | 3 << 2, "not-compressed"),
                (3 | 4 << 2, "cut-short"),
            ] {
                let segments = [
                    (1, symbols.as_slice()),
                    (0, events[0].as_slice()),
                    (control, events[1].as_slice()),
                    (0, events[2].as_slice()),
                ];
                write(
                    format!("damage-{name}.rec"),
                    records_input(&scenario.header, &segments),
                )?;
            }
        }
    }
    Ok(count)
}

/// A trace the seeds are made of.
struct Scenario {
    name: &'static str,
    header: TraceHeader,
    symbols: Vec<Symbol>,
    /// Records of each events chunk.
    chunks: Vec<Vec<Entry>>,
    /// `None`: the trace is left unfinished (no end record).
    end: Option<EndInfo>,
}

impl Scenario {
    /// Writes the trace with memtrace's writer.
    fn record(&self, path: &Path) -> io::Result<()> {
        let mut recorder = Recorder::create(&Recorder::create_file(path)?, &self.header)?;
        recorder.symbols(self.symbols.iter().cloned());
        for chunk in &self.chunks {
            for entry in chunk {
                recorder.entry(entry);
            }
            recorder.flush();
        }
        match &self.end {
            Some(end) => {
                let summary = recorder.finish(end.clone(), self.symbols.clone());
                if let Some(error) = summary.error {
                    return Err(io::Error::other(error));
                }
            }
            // Dropping the recorder writes what it has, without an end record.
            None => drop(recorder),
        }
        Ok(())
    }

    /// The symbols chunk's and each events chunk's records.
    fn encoded(&self) -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut encoder = ChunkEncoder::default();
        for symbol in &self.symbols {
            encoder.entry(&Entry::Symbol(symbol.clone()));
        }
        let symbols = encoder.take().0;
        let events = self
            .chunks
            .iter()
            .map(|chunk| {
                for entry in chunk {
                    encoder.entry(entry);
                }
                encoder.take().0
            })
            .collect();
        (symbols, events)
    }
}

const PID: u32 = 4242;
const START_NS: u64 = 1_000_000_000;
const LEAK_PC: u64 = 0x401000;
const TEMP_PC: u64 = 0x401100;
const HANDLER_PC: u64 = 0x401200;
const MAIN_PC: u64 = 0x402000;
const SESSION_TYPE: u64 = 0x4a0000;

fn header(sampling: Sampling, goroutines: bool) -> TraceHeader {
    let mut header = trace_header(&[0; PARAMS_BYTES]);
    header.target.pid = PID;
    header.mode = match sampling {
        Sampling::AllAllocs { .. } => "all-allocs",
        Sampling::HeapProfiler { .. } => "sampled",
    }
    .into();
    header.sampling = sampling;
    header.goroutines = goroutines;
    header.start_ts_ns = START_NS;
    header
}

fn frames(vaddr: u64, names: &[(&str, u32)]) -> Symbol {
    Symbol::Frames {
        vaddr,
        frames: names
            .iter()
            .enumerate()
            .map(|(index, &(function, line))| Frame {
                function: function.into(),
                file: "/src/app/main.go".into(),
                line,
                inlined: index + 1 < names.len(),
            })
            .collect::<Vec<_>>()
            .into(),
    }
}

fn symbols() -> Vec<Symbol> {
    vec![
        frames(LEAK_PC, &[("main.(*cache).put", 41), ("main.leak", 12)]),
        frames(TEMP_PC, &[("main.temp", 20)]),
        frames(HANDLER_PC, &[("main.handler", 30)]),
        frames(MAIN_PC, &[("main.main", 7)]),
        Symbol::TypeName {
            vaddr: SESSION_TYPE,
            name: Some("main.session".into()),
        },
        Symbol::TypeName {
            vaddr: SESSION_TYPE + 0x100,
            name: None,
        },
    ]
}

fn alloc(ts_ns: u64, ptr: u64, size: u64, bias: u64, site: u64) -> AllocEvent {
    AllocEvent {
        pid: PID,
        ts_ns,
        size,
        slot_size: size.checked_next_multiple_of(16).unwrap_or(size),
        class: 5,
        goid: 1,
        ptr,
        header_word: SESSION_TYPE + bias,
        stack: vec![site + bias, MAIN_PC + bias],
    }
}

fn gc(ts_ns: u64, cycle: u64) -> Entry {
    Entry::Event(Event::Gc(GcEvent {
        pid: PID,
        ts_ns,
        cycle: Some(cycle),
        // A heap that grows a MiB a cycle (odd_values has a cycle near u64::MAX).
        heap_start: (cycle % 1024) << 20,
        heap_end: (cycle % 1024 + 1) << 20,
        heap_marked: (cycle % 1024) << 19,
        heap_goal: (cycle % 1024 + 2) << 20,
    }))
}

fn goroutine(goid: u64, status: u32, wait_reason: u8) -> GoroutineState {
    GoroutineState {
        goid,
        g: 0x00c0_0000_0000 + goid * 0x400,
        status,
        wait_reason,
        parent_goid: 1,
        start_pc: HANDLER_PC,
        go_pc: MAIN_PC,
    }
}

fn end(duration_s: f64) -> EndInfo {
    EndInfo {
        duration_s,
        target_exit: Some("exit code 0".into()),
        mem_profile_rate: Some(MemProfileRate {
            original: 524288,
            written: Some(4096),
            restored: true,
        }),
        unrecorded: 0,
        target_exited: true,
    }
}

/// Sampled mode with goroutines: a site that leaks across GC cycles, one whose objects die,
/// and goroutines that pile up blocked; every kind of record once.
fn sampled_leak() -> Scenario {
    let mut chunks = Vec::new();
    let mut first = vec![
        Entry::LoadBias(0),
        Entry::Sampling(Sampling::HeapProfiler { rate_bytes: 4096 }),
        Entry::WaitReasons(vec!["".into(), "chan receive".into(), "select".into()]),
        Entry::Event(Event::RuntimeReady {
            pid: PID,
            ts_ns: START_NS,
        }),
        Entry::Event(Event::GoroutineScan(GoroutineScan {
            pid: PID,
            ts_ns: START_NS,
            goroutines: vec![goroutine(1, 2, 0)],
            complete: true,
        })),
    ];
    let mut live = vec![goroutine(1, 2, 0)];
    let mut ptr = 0x00c0_0010_0000_u64;
    for cycle in 1..=6u64 {
        let at = START_NS + cycle * 100_000_000;
        let chunk = if cycle == 1 {
            &mut first
        } else {
            chunks.push(Vec::new());
            chunks.last_mut().expect("just pushed")
        };
        for i in 0..8 {
            ptr += 0x100;
            chunk.push(Entry::Event(Event::ObjectAlloc(alloc(
                at + i,
                ptr,
                200,
                0,
                LEAK_PC,
            ))));
            ptr += 0x100;
            chunk.push(Entry::Event(Event::ObjectAlloc(alloc(
                at + i,
                ptr,
                48,
                0,
                TEMP_PC,
            ))));
            chunk.push(Entry::Event(Event::ObjectFree(FreeEvent {
                pid: PID,
                ts_ns: at + 50,
                ptr,
                size: 48,
            })));
        }
        for i in 0..3 {
            let goid = 100 * cycle + i;
            chunk.push(Entry::Event(Event::GoroutineCreate(GoroutineCreateEvent {
                pid: PID,
                ts_ns: at + 60,
                goid,
                parent_goid: 1,
                g: 0x00c0_0000_0000 + goid * 0x400,
                start_pc: HANDLER_PC,
                go_pc: MAIN_PC,
                stack_id: Some(i as u32),
                stack: Some(Arc::from([MAIN_PC])),
            })));
            live.push(goroutine(goid, 4, 1));
        }
        chunk.push(Entry::Event(Event::GoroutineScan(GoroutineScan {
            pid: PID,
            ts_ns: at + 70,
            goroutines: live.clone(),
            complete: true,
        })));
        chunk.push(gc(at + 80, cycle));
    }
    let mut stats = TargetStats::ZERO;
    stats.objects = 96;
    stats.requested_bytes = 96 * 124;
    stats.class_objects[5] = 96;
    stats.samples = 96;
    stats.gc_cycles = 6;
    stats.sample_countdown = -12;
    stats.objects_sampled = 96;
    stats.objects_freed = 48;
    stats.goroutines_created = 18;
    let at = START_NS + 700_000_000;
    chunks.push(vec![
        Entry::Undecodable,
        Entry::ScanFailed { ts_ns: at },
        Entry::Event(Event::Gc(GcEvent {
            pid: PID,
            ts_ns: at,
            cycle: None,
            heap_start: 0,
            heap_end: 0,
            heap_marked: 0,
            heap_goal: 0,
        })),
        // `into`: the entry may hold the snapshot itself or a box of it.
        Entry::Stats(
            StatsSnapshot {
                ts_ns: at,
                stats,
                global_counters: vec![1, 0, 2],
            }
            .into(),
        ),
    ]);
    chunks.insert(0, first);
    Scenario {
        name: "sampled-leak",
        header: header(Sampling::HeapProfiler { rate_bytes: 4096 }, true),
        symbols: symbols(),
        chunks,
        end: Some(end(0.8)),
    }
}

/// All-allocs mode of a position-independent binary: plain allocations (tiny, small, large),
/// a load bias that changes, a sampling interval that changes.
fn all_allocs() -> Scenario {
    let bias = 0x5555_0000_0000;
    let mut chunks = Vec::new();
    for part in 0..3u64 {
        let mut chunk = vec![Entry::LoadBias(if part == 2 { 0 } else { bias })];
        if part == 1 {
            chunk.push(Entry::Sampling(Sampling::AllAllocs {
                interval_bytes: 512,
            }));
        }
        for i in 0..20u64 {
            let size = [8, 24, 200, 40_000, 1 << 20][(i % 5) as usize];
            let mut event = alloc(START_NS + part * 1_000 + i, 0, size, bias, LEAK_PC);
            event.class = if size > 32 << 10 {
                0
            } else {
                (i % 67) as u32 + 1
            };
            event.goid = i % 4;
            event.header_word = 0;
            chunk.push(Entry::Event(Event::Alloc(event)));
        }
        chunk.push(gc(START_NS + part * 1_000 + 500, part + 1));
        chunks.push(chunk);
    }
    Scenario {
        name: "all-allocs",
        header: header(
            Sampling::AllAllocs {
                interval_bytes: 4096,
            },
            false,
        ),
        symbols: symbols(),
        chunks,
        end: Some(end(0.5)),
    }
}

/// Values at the edges: timestamps that go backwards, zero and maximal sizes, unknown stacks
/// and types, goroutines created twice; and no end record (the session did not finish).
fn odd_values() -> Scenario {
    let mut huge = alloc(u64::MAX, u64::MAX, u64::MAX, 0, 0xdead_0000);
    huge.class = u32::MAX;
    huge.goid = u64::MAX;
    let mut empty = alloc(0, 0, 0, 0, LEAK_PC);
    empty.stack.clear();
    empty.slot_size = 0;
    let created = GoroutineCreateEvent {
        pid: PID + 1,
        ts_ns: 5,
        goid: 7,
        parent_goid: 7,
        g: 0,
        start_pc: 0,
        go_pc: 0,
        stack_id: None,
        stack: Some(Arc::from([])),
    };
    let chunk = vec![
        Entry::LoadBias(u64::MAX),
        Entry::Sampling(Sampling::HeapProfiler { rate_bytes: 1 }),
        Entry::Event(Event::ObjectAlloc(huge.clone())),
        Entry::Event(Event::ObjectAlloc(empty.clone())),
        Entry::Event(Event::Alloc(empty)),
        Entry::Event(Event::ObjectFree(FreeEvent {
            pid: PID,
            ts_ns: 1,
            ptr: u64::MAX,
            size: u64::MAX,
        })),
        Entry::Event(Event::ObjectFree(FreeEvent {
            pid: PID,
            ts_ns: 1,
            ptr: 0x1234,
            size: 8,
        })),
        Entry::Event(Event::GoroutineCreate(created.clone())),
        Entry::Event(Event::GoroutineCreate(GoroutineCreateEvent {
            stack: None,
            ..created
        })),
        Entry::Event(Event::GoroutineScan(GoroutineScan {
            pid: PID,
            ts_ns: 2,
            goroutines: vec![goroutine(7, u32::MAX, u8::MAX), goroutine(7, 4, 200)],
            complete: false,
        })),
        gc(3, u64::MAX - 1),
        gc(2, 0),
        Entry::WaitReasons(Vec::new()),
    ];
    Scenario {
        name: "odd-values",
        header: header(Sampling::HeapProfiler { rate_bytes: 1 }, true),
        symbols: vec![
            frames(0xdead_0000, &[]),
            Symbol::TypeName {
                vaddr: 0,
                name: Some(String::new()),
            },
        ],
        chunks: vec![chunk],
        end: None,
    }
}

fn scenarios() -> Vec<Scenario> {
    vec![sampled_leak(), all_allocs(), odd_values()]
}

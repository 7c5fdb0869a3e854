//! Replaying a trace through the same analysis a live session uses, into the same report.

use std::{path::Path, time::Instant};

use memtrace_common::TargetStats;

use super::{
    codec::{EndInfo, Entry, StatsSnapshot},
    reader::{Damage, TraceReader, TraceSource},
    ChunkKind, TraceError, TraceHeader,
};
use crate::{
    analysis::Analysis,
    events::Event,
    report::{Report, ReportInput},
    symbolize::{Symbol, Symbolizer},
};

#[derive(Clone, Copy, Debug)]
pub struct ReplayOptions {
    /// Goroutine groups listed in the report.
    pub top: usize,
    /// Keep every paired death (for `--lifetimes`).
    pub keep_deaths: bool,
}

/// A trace read back.
pub struct Replay {
    pub header: TraceHeader,
    pub report: Report,
    pub analysis: Analysis,
    /// What could not be read, in file order.
    pub damage: Vec<Damage>,
    /// The end record was read: the session finished writing the file.
    pub finished: bool,
    /// Records replayed (events and the rest), and the chunks they came from.
    pub records: u64,
    pub chunks: u64,
    /// Seconds spent reading and analysing the event chunks (for throughput numbers).
    pub replay_s: f64,
}

/// The state a replay carries between records.
struct Player {
    analysis: Analysis,
    load_bias: u64,
    stats: Option<StatsSnapshot>,
    end: Option<EndInfo>,
    last_ts: u64,
    records: u64,
}

impl Player {
    fn play(&mut self, entry: Entry) {
        self.records += 1;
        match entry {
            Entry::Event(event) => {
                // Goroutine scans are read from the target, not the ring buffer.
                if !matches!(event, Event::GoroutineScan(_)) {
                    self.analysis.count_record(true);
                }
                self.last_ts = self.last_ts.max(event.ts_ns());
                self.analysis.event(&event, self.load_bias);
            }
            Entry::Undecodable => self.analysis.count_record(false),
            Entry::Sampling(sampling) => self.analysis.set_sampling(sampling),
            Entry::WaitReasons(names) => self.analysis.goroutines.set_wait_reasons(names),
            Entry::LoadBias(bias) => self.load_bias = bias,
            Entry::ScanFailed { .. } => self.analysis.goroutines.scan_failures += 1,
            Entry::Stats(snapshot) => self.stats = Some(*snapshot),
            Entry::End(end) => self.end = Some(end),
            // Gathered before the events.
            Entry::Symbol(_) => {}
        }
    }
}

/// Reads a whole trace into an analysis and its report. Damage is collected, not fatal: the
/// report then covers every chunk that could be read.
pub fn replay(path: &Path, options: ReplayOptions) -> Result<Replay, TraceError> {
    replay_from(TraceReader::open(path)?, options)
}

/// [`replay`] of a trace already open (a file, or bytes in memory).
pub fn replay_from<S: TraceSource>(
    mut reader: TraceReader<S>,
    options: ReplayOptions,
) -> Result<Replay, TraceError> {
    let header = reader.header.clone();
    let mut damage = Vec::new();

    // First the symbols, wherever they are in the file.
    let mut symbols: Vec<Symbol> = Vec::new();
    reader.chunks(
        |kind| kind == ChunkKind::Symbols,
        |chunk| match chunk {
            Ok(chunk) if chunk.frame.kind == ChunkKind::Symbols => {
                damage.extend(chunk.entries(|entry| {
                    if let Entry::Symbol(symbol) = entry {
                        symbols.push(symbol);
                    }
                }));
            }
            Ok(_) => {}
            Err(found) => damage.push(found),
        },
    )?;

    let started = Instant::now();
    let mut analysis = Analysis::new(Symbolizer::recorded(symbols), header.sampling);
    if options.keep_deaths {
        analysis.keep_deaths();
    }
    let mut player = Player {
        analysis,
        load_bias: 0,
        stats: None,
        end: None,
        last_ts: header.start_ts_ns,
        records: 0,
    };
    let mut chunks = 0u64;
    reader.chunks(
        |kind| kind == ChunkKind::Events,
        |chunk| match chunk {
            Ok(chunk) => {
                chunks += 1;
                if chunk.frame.kind == ChunkKind::Events {
                    damage.extend(chunk.entries(|entry| player.play(entry)));
                }
            }
            Err(found) => damage.push(found),
        },
    )?;
    let replay_s = started.elapsed().as_secs_f64();
    // The first pass found frame damage too; keep one of each.
    damage.sort_by_key(|d| d.offset);
    damage.dedup();

    let Player {
        mut analysis,
        stats,
        end,
        last_ts,
        records,
        ..
    } = player;
    if end.as_ref().is_some_and(|end| end.target_exited) {
        analysis.goroutines.target_exited();
    }
    let (stats, global_counters) = match stats {
        Some(snapshot) => (snapshot.stats, snapshot.global_counters),
        None => (TargetStats::ZERO, Vec::new()),
    };
    let duration_s = match &end {
        Some(end) => end.duration_s,
        None => last_ts.saturating_sub(header.start_ts_ns) as f64 / 1e9,
    };
    let mut target = header.target.clone();
    target.exit = end.as_ref().and_then(|end| end.target_exit.clone());
    let mut report = Report::build(ReportInput {
        target,
        goroutines: header.goroutines,
        top: options.top,
        duration_s,
        stats: &stats,
        global_counters: &global_counters,
        analysis: &analysis,
        start_ts_ns: header.start_ts_ns,
        mem_profile_rate: end.as_ref().and_then(|end| end.mem_profile_rate.clone()),
    });
    report.events.unrecorded = end.as_ref().map_or(0, |end| end.unrecorded);
    Ok(Replay {
        header,
        report,
        analysis,
        damage,
        finished: end.is_some(),
        records,
        chunks,
        replay_s,
    })
}

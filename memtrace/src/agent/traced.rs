//! One process the agent traces: the same pieces a one-process session has (target, rate
//! control, analysis, goroutine scanner, recording), plus its placement and its budget state.

use std::{rc::Rc, time::Instant};

use memtrace_common::{flags, TargetConfig, TargetStats};

use crate::{
    agent::{
        container::Placement,
        recordings::{RecordDir, Recording},
    },
    analysis::Analysis,
    bpf::{CreationStacks, Tracer},
    error::Result,
    events::Event,
    report::{MemProfileRate, Report, ReportInput, TargetInfo},
    session::{
        monotonic_ns, record_new_symbols, target_config, GoroutineScanner, Mode, RateControl,
    },
    symbolize::{SharedSymbols, Symbolizer},
    target::{BinaryKey, Target},
    trace::codec::{EndInfo, Entry, StatsSnapshot},
};

/// Least time between two GC records of one process: a program with a small heap and a high
/// allocation rate collects a thousand times a second (measured: `leaks -pattern churn
/// -rate 60`), which would be most of its events; every cycle is still counted.
const GC_RECORD_GAP: std::time::Duration = std::time::Duration::from_millis(100);

/// Why a process samples at the rate it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RateReason {
    /// Not known yet: the runtime has not started.
    Pending,
    /// The program's own `runtime.MemProfileRate`.
    Program,
    /// memtrace turned the heap profiler on at its default rate (or `--rate`).
    Memtrace,
    /// The overhead budget raised it.
    Budget,
}

pub struct Traced {
    pub target: Target,
    pub key: BinaryKey,
    pub placement: Placement,
    pub rate: RateControl,
    pub analysis: Analysis,
    pub scanner: Option<GoroutineScanner>,
    pub recording: Option<Recording>,
    pub config: TargetConfig,
    pub start_ns: u64,
    pub started: Instant,
    /// Link-time address of `runtime.mainStarted`, to tell whether the runtime is up.
    main_started: Option<u64>,
    /// The rate before the budget changed it (the floor it steps back down to).
    pub base_rate: Option<u64>,
    /// Why it had that rate.
    base_reason: RateReason,
    pub rate_reason: RateReason,
    /// Budget changes of the rate, and of goroutine records.
    pub budget_changes: u64,
    pub calm_seconds: u32,
    /// Records received, in total and at the last budget tick; goroutines created at the
    /// last budget tick (exact counter).
    pub records: u64,
    pub records_at_tick: u64,
    pub goroutines_at_tick: u64,
    /// The last counters read, for metrics between ticks.
    pub stats: TargetStats,
    /// The binary's load bias as last read (per second, not per event: a PIE binary whose
    /// mapping is not found yet would cost a read of /proc/PID/maps per event).
    load_bias: u64,
}

impl Traced {
    /// `events_per_s`: the process's share of the budget; half of it may be goroutine
    /// creation records, enforced in the kernel per 100 ms window.
    pub fn new(
        target: Target,
        key: BinaryKey,
        placement: Placement,
        mode: Mode,
        goroutines: bool,
        symbols: Rc<SharedSymbols>,
        events_per_s: f64,
    ) -> Result<Traced> {
        let bias = target.load_bias_within(std::time::Duration::from_millis(200));
        let mut config = target_config(&target, Some(bias), mode);
        config.gc_record_gap_ns = GC_RECORD_GAP.as_nanos() as u64;
        let windows_per_s = 1e9 / memtrace_common::GOROUTINE_RECORD_WINDOW_NS as f64;
        config.goroutine_records_per_window =
            (events_per_s / 2.0 / windows_per_s).clamp(1.0, f64::from(u32::MAX)) as u32;
        let rate = RateControl::new(&target, mode)?;
        let symbolizer = Symbolizer::sharing(target.binary.clone(), symbols);
        let analysis = Analysis::new(symbolizer, rate.sampling(mode));
        let main_started = target.binary.data_symbol("runtime.mainStarted");
        Ok(Traced {
            key,
            placement,
            rate,
            analysis,
            scanner: goroutines.then(GoroutineScanner::default),
            recording: None,
            config,
            start_ns: monotonic_ns(),
            started: Instant::now(),
            main_started,
            base_rate: None,
            base_reason: RateReason::Pending,
            rate_reason: RateReason::Pending,
            budget_changes: 0,
            calm_seconds: 0,
            records: 0,
            records_at_tick: 0,
            goroutines_at_tick: 0,
            stats: TargetStats::ZERO,
            load_bias: bias,
            target,
        })
    }

    pub fn pid(&self) -> u32 {
        self.target.pid
    }

    /// Whether the Go runtime has finished `schedinit` (after which a rate written stays).
    /// Binaries without the symbol are taken as started a moment after discovery.
    fn runtime_started(&self) -> bool {
        match self.main_started {
            Some(addr) => {
                let addr = addr.wrapping_add(self.target.load_bias());
                let mut value = 0u8;
                let local = libc::iovec {
                    iov_base: (&raw mut value).cast(),
                    iov_len: 1,
                };
                let remote = libc::iovec {
                    iov_base: addr as *mut libc::c_void,
                    iov_len: 1,
                };
                // SAFETY: one byte into `value`; the kernel checks the remote address.
                let read = unsafe {
                    libc::process_vm_readv(self.target.pid as i32, &local, 1, &remote, 1, 0)
                };
                read == 1 && value != 0
            }
            None => self.started.elapsed() >= std::time::Duration::from_millis(500),
        }
    }

    /// Reads (and, unless the program samples already, writes) the heap profiler's rate once
    /// the runtime is up. Called at discovery, on `runtime.main` and every second until done.
    pub fn settle_rate(&mut self, mode: Mode, ready_event: bool) -> Result<()> {
        if self.rate.is_applied() || !(ready_event || self.runtime_started()) {
            return Ok(());
        }
        self.rate.apply(&self.target, self.target.load_bias())?;
        if !self.rate.is_applied() {
            return Ok(());
        }
        self.analysis.set_sampling(self.rate.sampling(mode));
        self.base_rate = self.rate.effective();
        self.base_reason = match self.rate.describe() {
            Some(MemProfileRate {
                written: Some(_), ..
            }) => RateReason::Memtrace,
            _ => RateReason::Program,
        };
        self.rate_reason = self.base_reason;
        self.record(&Entry::Sampling(self.analysis.sampling()));
        Ok(())
    }

    /// Feeds one decoded event to the analysis (and the recording).
    pub fn event(&mut self, mut event: Event, stacks: &mut Option<CreationStacks>) {
        if let (Event::GoroutineCreate(created), Some(stacks)) = (&mut event, stacks.as_mut()) {
            if let Some(id) = created.stack_id {
                created.stack = Some(stacks.get(id));
            }
        }
        self.analysis.event(&event, self.load_bias);
        if let Some(recording) = self.recording.as_mut() {
            recording.recorder().event(&event);
        }
    }

    /// An undecodable record.
    pub fn undecodable(&mut self) {
        self.record(&Entry::Undecodable);
    }

    fn record(&mut self, entry: &Entry) {
        if let Some(recording) = self.recording.as_mut() {
            recording.recorder().entry(entry);
        }
    }

    /// Before a batch of events: the recording learns the load bias they are relative to.
    pub fn before_drain(&mut self) {
        if let Some(recording) = self.recording.as_mut() {
            recording.recorder().load_bias(self.load_bias);
        }
    }

    /// After a batch of events: the symbols they needed go to the recording.
    pub fn after_drain(&mut self) {
        if let Some(recording) = self.recording.as_mut() {
            record_new_symbols(recording.recorder(), &mut self.analysis);
        }
    }

    /// Scans the goroutines (states, wait reasons, leak groups).
    pub fn scan_goroutines(&mut self) {
        if let Some(scanner) = self.scanner.as_mut() {
            let recorder = self.recording.as_mut().map(Recording::recorder);
            scanner.scan(&self.target, &mut self.analysis, recorder);
        }
    }

    /// Reads the counters; records them and flushes the recording.
    pub fn refresh_stats(&mut self, tracer: &Tracer, global_counters: &[u64]) {
        self.load_bias = self.target.load_bias();
        if let Ok(stats) = tracer.stats(self.pid()) {
            self.stats = stats;
        }
        if let Some(recording) = self.recording.as_mut() {
            let recorder = recording.recorder();
            recorder.entry(&Entry::Stats(Box::new(StatsSnapshot {
                ts_ns: monotonic_ns(),
                stats: self.stats,
                global_counters: global_counters.to_vec(),
            })));
            recorder.flush();
        }
    }

    /// Changes the heap profiler's rate (budget).
    pub fn set_rate(&mut self, rate_bytes: u64, mode: Mode) -> Result<bool> {
        let changed = self
            .rate
            .change(&self.target, self.target.load_bias(), rate_bytes)?;
        if changed {
            self.analysis.set_sampling(self.rate.sampling(mode));
            self.rate_reason = if Some(rate_bytes) == self.base_rate {
                self.base_reason
            } else {
                RateReason::Budget
            };
            self.budget_changes += 1;
            self.record(&Entry::Sampling(self.analysis.sampling()));
        }
        Ok(changed)
    }

    /// Turns goroutine creation records on or off (budget); creations are still counted.
    pub fn set_goroutine_records(&mut self, tracer: &mut Tracer, on: bool) -> Result<()> {
        if on {
            self.config.flags &= !flags::NO_GOROUTINE_RECORDS;
        } else {
            self.config.flags |= flags::NO_GOROUTINE_RECORDS;
        }
        tracer.set_target_config(self.pid(), self.config)?;
        self.budget_changes += 1;
        Ok(())
    }

    pub fn goroutine_records(&self) -> bool {
        self.config.flags & flags::NO_GOROUTINE_RECORDS == 0
    }

    pub fn rate_bytes(&self) -> u64 {
        self.analysis.sample_interval_bytes()
    }

    /// The report of everything seen so far (the same contract as `--json`).
    pub fn report(&self, global_counters: &[u64], top: usize) -> Report {
        let build = self.target.binary.build_info();
        Report::build(ReportInput {
            goroutines: self.scanner.is_some(),
            top,
            target: TargetInfo {
                pid: self.pid(),
                exe: self.target.exe.display().to_string(),
                go_version: build.go_version.clone(),
                exit: None,
            },
            duration_s: self.started.elapsed().as_secs_f64(),
            stats: &self.stats,
            global_counters,
            analysis: &self.analysis,
            start_ts_ns: self.start_ns,
            mem_profile_rate: self.rate.describe(),
        })
    }

    /// Starts or rotates its recording.
    pub fn rotate_recording(
        &mut self,
        dir: &mut RecordDir,
        mode: Mode,
        file_limit: u64,
        exited: bool,
    ) -> Result<()> {
        let due = match &self.recording {
            None => true,
            Some(recording) => recording.bytes_written() >= file_limit,
        };
        if !due {
            return Ok(());
        }
        self.finish_recording(exited);
        self.recording = Some(dir.start(
            &self.target,
            mode,
            self.scanner.is_some(),
            &mut self.analysis,
            self.start_ns,
        )?);
        Ok(())
    }

    /// Ends the current file (when rotating, or when the process is done).
    pub fn finish_recording(&mut self, exited: bool) {
        if let Some(recording) = self.recording.take() {
            let summary = recording.finish(
                EndInfo {
                    duration_s: self.started.elapsed().as_secs_f64(),
                    target_exit: None,
                    mem_profile_rate: self.rate.describe(),
                    unrecorded: 0,
                    target_exited: exited,
                },
                &mut self.analysis,
            );
            if let Some(error) = summary.error {
                log::warn!("recording {}: {error}", summary.path.display());
            }
        }
    }

    /// The process exited (or ran exec): final counters, goroutines closed, recording ended.
    pub fn exited(&mut self, tracer: &Tracer, global_counters: &[u64]) {
        self.rate.abandon();
        self.refresh_stats(tracer, global_counters);
        self.analysis.goroutines.target_exited();
        self.finish_recording(true);
    }

    /// memtrace stops tracing a live process: its rate back, a last scan, recording ended.
    pub fn detach(&mut self, tracer: &Tracer, global_counters: &[u64]) {
        self.rate.restore();
        self.refresh_stats(tracer, global_counters);
        self.scan_goroutines();
        self.finish_recording(false);
    }
}

//! A tracing session: attach (or launch), run the event loop, and produce the report.

use std::{
    ffi::OsString,
    io::{IsTerminal, Write as _},
    os::fd::{FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use memtrace_common::{flags, TargetConfig};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};

use crate::{
    analysis::{Analysis, Sampling},
    bpf::{CreationStacks, Program, Tracer},
    error::{Error, Result},
    events::Event,
    goroutines::scan::GoroutineReader,
    memrate::{read_rate, RateOverride},
    probes::{ProbePlan, ProbeSite},
    report::{
        human_bytes, human_count, location, loss_line, site_table, MemProfileRate, Report,
        ReportInput, TargetInfo,
    },
    runtime::locate_mem_profile_rate,
    symbolize::Symbolizer,
    target::{HeldChild, Target},
    trace::{
        codec::{EndInfo, Entry, StatsSnapshot},
        writer::{Recorder, Summary, TraceFile},
        TraceHeader,
    },
};

/// What to trace.
#[derive(Clone, Debug)]
pub enum TargetSpec {
    Pid(u32),
    /// Start this command under tracing.
    Launch(Vec<OsString>),
}

/// How allocations are observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Ride on the Go runtime's heap profiler and track each sampled object to its death.
    /// `rate` is written into the target's `runtime.MemProfileRate` (never with `read_only`);
    /// without one, a target that already samples keeps its own rate and one that does not
    /// gets [`DEFAULT_SAMPLE_RATE`].
    Sampled { rate: Option<u64>, read_only: bool },
    /// Count every allocation in the kernel; sample stacks every `stack_sample_bytes`.
    AllAllocs { stack_sample_bytes: u64 },
    /// Benchmarks: no-op probes on the all-allocs sites.
    ProbeFloor,
}

#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub target: TargetSpec,
    pub duration: Option<Duration>,
    pub mode: Mode,
    /// Keep every paired death (for `--lifetimes`).
    pub keep_deaths: bool,
    /// Track goroutines from creation to exit.
    pub goroutines: bool,
    /// Redraw the live view on stderr (only when stderr is a terminal).
    pub live: bool,
    pub live_interval: Duration,
    pub top: usize,
    pub ring_bytes: u32,
    /// Record the session into this trace file (created beforehand, see
    /// [`Recorder::create_file`]).
    pub record: Option<std::sync::Arc<TraceFile>>,
    /// Show the recording's progress line (instead of the live view).
    pub progress: bool,
}

/// How a launched target ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetExit {
    Code(i32),
    Signal(i32),
}

impl TargetExit {
    /// The exit code a shell would report.
    pub fn shell_code(self) -> i32 {
        match self {
            TargetExit::Code(code) => code,
            TargetExit::Signal(signal) => 128 + signal,
        }
    }

    fn describe(self) -> String {
        match self {
            TargetExit::Code(code) => format!("exit code {code}"),
            TargetExit::Signal(signal) => format!("signal {signal}"),
        }
    }

    fn from_wait_status(status: i32) -> TargetExit {
        if libc::WIFSIGNALED(status) {
            TargetExit::Signal(libc::WTERMSIG(status))
        } else {
            TargetExit::Code(libc::WEXITSTATUS(status))
        }
    }
}

pub struct SessionOutcome {
    pub report: Report,
    pub analysis: Analysis,
    /// Launch mode: how the target exited.
    pub target_exit: Option<TargetExit>,
    /// How the recording went, when there was one.
    pub recording: Option<Summary>,
}

impl Mode {
    /// The name a trace header and the report use.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Sampled { .. } => "sampled",
            Mode::AllAllocs { .. } => "all-allocs",
            Mode::ProbeFloor => "probe-floor",
        }
    }
}

/// Who and what this session traces, for a trace file's header.
pub(crate) fn trace_header(
    target: &Target,
    mode: Mode,
    goroutines: bool,
    analysis: &Analysis,
    start_ns: u64,
) -> TraceHeader {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|text| text.trim().to_string())
            .unwrap_or_default()
    };
    TraceHeader {
        memtrace_version: env!("CARGO_PKG_VERSION").into(),
        target: TargetInfo {
            pid: target.pid,
            exe: target.exe.display().to_string(),
            go_version: target.binary.build_info().go_version.clone(),
            exit: None,
        },
        build_id: target.binary.build_id(),
        mode: mode.name().into(),
        sampling: analysis.sampling(),
        goroutines,
        start_ts_ns: start_ns,
        start_unix_ns: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        hostname: read("/proc/sys/kernel/hostname"),
        kernel: read("/proc/sys/kernel/osrelease"),
    }
}

pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The BPF-side configuration of a target. `load_bias` relocates the addresses of runtime
/// globals (PIE); `None` while it is not known yet, which leaves the GC globals unread.
pub(crate) fn target_config(target: &Target, load_bias: Option<u64>, mode: Mode) -> TargetConfig {
    let stack_sample_bytes = match mode {
        Mode::AllAllocs { stack_sample_bytes } => stack_sample_bytes,
        Mode::Sampled { .. } | Mode::ProbeFloor => 512 * 1024,
    };
    let layout = &target.layout;
    let binary = &target.binary;
    let mut config = TargetConfig {
        sample_interval_bytes: stack_sample_bytes.max(1),
        max_small_size: if layout.malloc_headers {
            32768 - 8
        } else {
            32768
        },
        g_goid: layout.g_goid,
        g_parent_goid: layout.g_parent_goid,
        g_gopc: layout.g_gopc,
        g_startpc: layout.g_startpc,
        g_m: layout.g_m,
        m_p: layout.m_p,
        p_mcache: layout.p_mcache,
        mcache_tiny: layout.mcache_tiny,
        special_kind: layout.special_kind,
        profile_special_kind: layout.profile_special_kind,
        flags: flags::TINY_STATE,
        ..TargetConfig::default()
    };
    if layout.malloc_headers
        && !binary
            .build_info()
            .experiments
            .iter()
            .any(|e| e == "noallocheaders")
    {
        config.flags |= flags::MALLOC_HEADERS;
    }
    if let (Some(bias), Some(work), Some(controller)) = (
        load_bias,
        binary.data_symbol("runtime.work"),
        binary.data_symbol("runtime.gcController"),
    ) {
        let (work, controller) = (work.wrapping_add(bias), controller.wrapping_add(bias));
        config.flags |= flags::GC_GLOBALS;
        config.work_cycles_addr = work + layout.work_cycles;
        config.work_heap0_addr = work + layout.work_heap0;
        config.heap_goal_addr = controller + layout.gc_controller_heap_goal;
    }
    config
}

/// Opens a pidfd, which becomes readable when the process exits.
fn pidfd_open(pid: u32) -> Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if fd < 0 {
        let error = std::io::Error::last_os_error();
        return Err(match error.raw_os_error() {
            Some(libc::ESRCH) => Error::NoSuchProcess(pid),
            _ => Error::io(format!("watching pid {pid}"), error),
        });
    }
    // SAFETY: the fd was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Runs a whole session. In launch mode this forks, so it must be called before any other
/// thread is started.
pub fn run(options: SessionOptions) -> Result<SessionOutcome> {
    let mut held_child = match &options.target {
        TargetSpec::Launch(command) => Some(HeldChild::fork(command)?),
        TargetSpec::Pid(_) => None,
    };
    let target = match (&options.target, &held_child) {
        (TargetSpec::Pid(pid), _) => Target::from_pid(*pid)?,
        (TargetSpec::Launch(_), Some(child)) => Target::from_launch(child.pid, &child.executable)?,
        (TargetSpec::Launch(_), None) => unreachable!("launch mode always forks"),
    };
    let plan = ProbePlan::for_binary(&target.binary)?;
    log::info!(
        "{} ({}), {:?}: allocation entry points {}; GC probe {}",
        target.exe.display(),
        target.binary.build_info().go_version,
        options.mode,
        plan.alloc
            .iter()
            .map(|s| s.function.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        plan.gc_cycle
            .as_ref()
            .map_or("none", |s| s.function.as_str()),
    );
    // The event loop's runtime (one thread: this one) and the signal handlers come before
    // anything is written into the target, so that Ctrl-C always finds a handler that restores.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the event loop", e))?;
    let signals = {
        let _context = runtime.enter();
        Signals::new()?
    };
    let mut tracer = Tracer::load(options.ring_bytes)?;
    // A launched PIE binary is not mapped yet, so its load bias is not known before exec.
    let bias_known = held_child.is_none() || !target.binary.is_pie();
    let early_bias = bias_known.then(|| target.load_bias_within(Duration::from_secs(1)));
    tracer.add_target(target.pid, target_config(&target, early_bias, options.mode))?;
    attach_probes(
        &mut tracer,
        &plan,
        &target,
        options.mode,
        held_child.is_some(),
        options.goroutines,
    )?;
    let mut rate = RateControl::new(&target, options.mode)?;
    if held_child.is_none() {
        // A running process: sample from now on. (Launch mode waits for runtime.main.)
        rate.apply(&target, early_bias.unwrap_or(0))?;
    }
    let ring = tracer.take_ring_buffer()?;
    let creation_stacks = if options.goroutines {
        Some(tracer.take_creation_stacks()?)
    } else {
        None
    };
    let start_ns = monotonic_ns();
    let started = Instant::now();
    if let Some(child) = held_child.as_mut() {
        child.release()?;
        if !bias_known {
            let bias = target.load_bias_within(Duration::from_secs(1));
            tracer
                .set_target_config(target.pid, target_config(&target, Some(bias), options.mode))?;
        }
    }
    let watch = pidfd_open(target.pid)?;
    // From here on memtrace only consumes events: it must not take CPU from the target when the
    // machine is busy. Lower this thread's priority (the target was forked before, so keeps its
    // own); the ring buffer absorbs the delay, and drops would be counted.
    // SAFETY: setpriority on the calling thread (who = 0) has no memory effects.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, CONSUMER_NICE) };

    let symbolizer = Symbolizer::new(target.binary.clone(), target.symbol_path());
    let mut analysis = Analysis::new(symbolizer, rate.sampling(options.mode));
    if options.keep_deaths {
        analysis.keep_deaths();
    }
    let recorder = match &options.record {
        Some(file) => {
            analysis.symbolizer_mut().journal_new_symbols();
            Recorder::create(
                file,
                &trace_header(
                    &target,
                    options.mode,
                    options.goroutines,
                    &analysis,
                    start_ns,
                ),
            )
            .map(Some)
            .map_err(|error| Error::io("starting the recording", error))
        }
        None => Ok(None),
    };
    let mut goroutine_scanner = options.goroutines.then(GoroutineScanner::default);
    let loop_result = recorder.and_then(|mut recorder| {
        runtime
            .block_on(event_loop(
                &options,
                &mut tracer,
                &target,
                goroutine_scanner.as_mut(),
                ring,
                creation_stacks,
                watch,
                held_child.is_some(),
                &mut analysis,
                &mut rate,
                signals,
                start_ns,
                recorder.as_mut(),
            ))
            .map(|ended| (ended, recorder))
    });
    // Whatever happened, the target gets its own rate back before memtrace goes.
    let mem_profile_rate = rate.finish();
    if let (Err(_), Some(child)) = (&loop_result, &held_child) {
        // memtrace cannot go on (e.g. --read-only on a program that does not sample): a program
        // it started does not outlive it untraced.
        // SAFETY: signalling and reaping our own child.
        unsafe {
            libc::kill(child.pid as i32, libc::SIGTERM);
            libc::waitpid(child.pid as i32, std::ptr::null_mut(), 0);
        }
    }
    let (
        LoopEnd {
            mut target_exit,
            target_gone,
        },
        mut recorder,
    ) = loop_result?;
    let duration_s = started.elapsed().as_secs_f64();
    let stats = tracer.stats(target.pid)?;
    let global_counters = tracer.global_counters()?;
    drop(tracer);
    if let Some(recorder) = &mut recorder {
        recorder.entry(&Entry::Stats(Box::new(StatsSnapshot {
            ts_ns: monotonic_ns(),
            stats,
            global_counters: global_counters.to_vec(),
        })));
    }

    let build = target.binary.build_info();
    let mut report = Report::build(ReportInput {
        goroutines: options.goroutines,
        top: options.top,
        target: TargetInfo {
            pid: target.pid,
            exe: target.exe.display().to_string(),
            go_version: build.go_version.clone(),
            exit: target_exit.map(TargetExit::describe),
        },
        duration_s,
        stats: &stats,
        global_counters: &global_counters,
        analysis: &analysis,
        start_ts_ns: start_ns,
        mem_profile_rate,
    });
    if let (Some(child), None) = (&held_child, target_exit) {
        // Stopped by --duration: the report is final, but memtrace still exits with the
        // target's code, so wait for it.
        let mut status = 0;
        // SAFETY: waiting for our own child.
        if unsafe { libc::waitpid(child.pid as i32, &mut status, 0) } == child.pid as i32 {
            target_exit = Some(TargetExit::from_wait_status(status));
        }
        report.target.exit = target_exit.map(TargetExit::describe);
    }
    let recording = recorder.map(|recorder| {
        let summary = recorder.finish(
            EndInfo {
                duration_s,
                target_exit: report.target.exit.clone(),
                mem_profile_rate: report.mem_profile_rate.clone(),
                unrecorded: 0,
                target_exited: target_gone,
            },
            analysis.symbolizer_mut().all_symbols(),
        );
        report.events.unrecorded = summary.progress.unrecorded;
        summary
    });
    Ok(SessionOutcome {
        report,
        analysis,
        target_exit,
        recording,
    })
}

/// How the event loop ended.
struct LoopEnd {
    /// Launch mode: how the target exited, when memtrace saw it.
    target_exit: Option<TargetExit>,
    /// The target is gone (exited or killed).
    target_gone: bool,
}

#[expect(clippy::too_many_arguments, reason = "the pieces of one session")]
async fn event_loop(
    options: &SessionOptions,
    tracer: &mut Tracer,
    target: &Target,
    mut goroutine_scanner: Option<&mut GoroutineScanner>,
    ring: RingBuf<MapData>,
    mut stacks: Option<CreationStacks>,
    watch: OwnedFd,
    launched: bool,
    analysis: &mut Analysis,
    rate: &mut RateControl,
    mut signals: Signals,
    start_ns: u64,
    mut recorder: Option<&mut Recorder>,
) -> Result<LoopEnd> {
    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd owns the ring buffer.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| Error::io("watching the ring buffer", e.into()))?;
    // SAFETY: `watch` is an owned pidfd that lives as long as this AsyncFd.
    let exited = unsafe { AsyncFd::register_with_interest(watch, tokio::io::Interest::READABLE) }
        .map_err(|e| Error::io("watching the target", e.into()))?;
    let mut logger = match tracer.take_logger() {
        // SAFETY: the logger owns its ring-buffer fd for as long as the AsyncFd owns it.
        Some(logger) => {
            unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }.ok()
        }
        None => None,
    };
    let deadline = options.duration.map(|d| tokio::time::Instant::now() + d);
    // The probes wake us up only when a lot is pending (see memtrace-ebpf's `submit_flags`);
    // otherwise the queue is drained on this timer.
    let mut drain_tick = tokio::time::interval(DRAIN_INTERVAL);
    drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut scan_tick = tokio::time::interval(GOROUTINE_SCAN_INTERVAL);
    scan_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut tick = tokio::time::interval(options.live_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let live = options.live && std::io::stderr().is_terminal();
    let mut live_view = LiveView::default();
    let mut record_tick = tokio::time::interval(RECORD_FLUSH_INTERVAL);
    record_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut progress = ProgressLine::default();

    let mut target_exit = None;
    let mut target_gone = false;
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.map_err(|e| Error::io("reading the ring buffer", e))?;
                guard.clear_ready();
                drain(guard.get_inner_mut(), &mut stacks, analysis, rate, target, options.mode, recorder.as_deref_mut())?;
            }
            _ = drain_tick.tick() => {
                drain(ring.get_mut(), &mut stacks, analysis, rate, target, options.mode, recorder.as_deref_mut())?;
            }
            _ = record_tick.tick(), if recorder.is_some() => {
                if let Some(recorder) = recorder.as_deref_mut() {
                    // Counters now and then, so that a file cut short still has recent totals;
                    // and at most a second of events waits in memory.
                    if let (Ok(stats), Ok(global_counters)) = (tracer.stats(target.pid), tracer.global_counters()) {
                        if options.progress {
                            progress.draw(recorder, &stats, start_ns);
                        }
                        recorder.entry(&Entry::Stats(Box::new(StatsSnapshot { ts_ns: monotonic_ns(), stats, global_counters: global_counters.to_vec() })));
                    }
                    // (Symbols went with the events that needed them, in `drain` and `scan`.)
                    recorder.flush();
                }
            }
            _ = scan_tick.tick(), if goroutine_scanner.is_some() => {
                // Everything the probes sent so far first, so that the scan is the newest news.
                drain(ring.get_mut(), &mut stacks, analysis, rate, target, options.mode, recorder.as_deref_mut())?;
                if let Some(scanner) = goroutine_scanner.as_deref_mut() {
                    scanner.scan(target, analysis, recorder.as_deref_mut());
                }
            }
            guard = async { logger.as_mut().expect("guarded by the branch condition").readable_mut().await }, if logger.is_some() => {
                if let Ok(mut guard) = guard {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            }
            _ = exited.readable() => {
                if launched {
                    let mut status = 0;
                    // SAFETY: reaping our own child, which has exited.
                    let reaped = unsafe { libc::waitpid(target.pid as i32, &mut status, 0) };
                    if reaped == target.pid as i32 {
                        target_exit = Some(TargetExit::from_wait_status(status));
                    }
                }
                log::info!("target exited");
                target_gone = true;
                break;
            }
            _ = signals.interrupt.recv() => {
                if launched {
                    // The terminal sent SIGINT to the target too: wait for it to exit.
                    log::info!("interrupted: waiting for the target to exit");
                    continue;
                }
                break;
            }
            _ = signals.terminate.recv() => {
                forward_signal(launched, target.pid, libc::SIGTERM);
                if !launched { break; }
            }
            _ = signals.hangup.recv() => {
                forward_signal(launched, target.pid, libc::SIGHUP);
                if !launched { break; }
            }
            _ = sleep_until(deadline) => break,
            _ = tick.tick(), if live => {
                if let Ok(stats) = tracer.stats(target.pid) {
                    live_view.draw(analysis, &stats, options, start_ns);
                }
            }
        }
    }
    // The target's own rate back first, then no more events; then read what is queued.
    rate.restore();
    tracer.detach_all();
    drain(
        ring.get_mut(),
        &mut stacks,
        analysis,
        rate,
        target,
        options.mode,
        recorder.as_deref_mut(),
    )?;
    if target_gone {
        analysis.goroutines.target_exited();
    } else if let Some(scanner) = goroutine_scanner {
        // The last word on states.
        scanner.scan(target, analysis, recorder);
    }
    progress.clear();
    Ok(LoopEnd {
        target_exit,
        target_gone,
    })
}

/// The heap profiler's rate memtrace sets when the target does not sample (pprof's default).
pub const DEFAULT_SAMPLE_RATE: u64 = 512 * 1024;

/// Nice value of memtrace's event loop.
pub(crate) const CONSUMER_NICE: libc::c_int = 10;

/// How often queued records are read when the probes did not ask for a wakeup.
pub(crate) const DRAIN_INTERVAL: Duration = Duration::from_millis(100);

/// Goroutine groups the live view lists.
const GOROUTINE_GROUPS_SHOWN: usize = 3;

/// How often the target's goroutines are read (states, wait reasons, leak groups).
const GOROUTINE_SCAN_INTERVAL: Duration = Duration::from_secs(1);

/// How often a recording writes what it has (and the progress line is redrawn).
const RECORD_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// The progress line of a recording, on stderr: redrawn in place on a terminal, else a line
/// every [`PROGRESS_LOG_INTERVAL`].
#[derive(Default)]
struct ProgressLine {
    drawn: bool,
    last_logged: Option<Instant>,
}

const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(30);

impl ProgressLine {
    fn draw(&mut self, recorder: &Recorder, stats: &memtrace_common::TargetStats, start_ns: u64) {
        let progress = recorder.progress();
        let text = format!(
            "recording {}: {:.0}s, {} events, {} written, {} dropped (ring buffer full), {} not written (disk too slow)",
            recorder.path().display(),
            monotonic_ns().saturating_sub(start_ns) as f64 / 1e9,
            human_count(progress.records as f64),
            human_bytes(progress.bytes_written as f64),
            stats.ringbuf_drops,
            progress.unrecorded,
        );
        let mut stderr = std::io::stderr().lock();
        if stderr.is_terminal() {
            let _ = write!(stderr, "\r\x1b[2K{text}");
            self.drawn = true;
        } else if self.last_logged.get_or_insert_with(Instant::now).elapsed()
            >= PROGRESS_LOG_INTERVAL
        {
            // Logs (a DaemonSet's, a CI job's): a line now and then, not every second.
            let _ = writeln!(stderr, "memtrace: {text}");
            self.last_logged = Some(Instant::now());
        }
        let _ = stderr.flush();
    }

    /// Ends the line, so that what follows starts on a fresh one.
    fn clear(&mut self) {
        if std::mem::take(&mut self.drawn) {
            eprintln!();
        }
    }
}

/// Scans the target's goroutines into the analysis.
#[derive(Default)]
pub(crate) struct GoroutineScanner {
    reader: Option<GoroutineReader>,
}

impl GoroutineScanner {
    pub(crate) fn scan(
        &mut self,
        target: &Target,
        analysis: &mut Analysis,
        mut recorder: Option<&mut Recorder>,
    ) {
        let bias = target.load_bias();
        // Made at the first scan: a launched program's memory exists only after exec.
        let reader = self.reader.get_or_insert_with(|| {
            GoroutineReader::new(target.pid, &target.binary, target.layout, bias)
        });
        if analysis.goroutines.wait_reasons().is_empty() {
            // Until the loader has relocated them (PIE), the strings do not read: try again.
            if let Some(names) = reader.wait_reasons() {
                if let Some(recorder) = recorder.as_deref_mut() {
                    recorder.entry(&Entry::WaitReasons(names.clone()));
                }
                analysis.goroutines.set_wait_reasons(names);
            }
        }
        let known: Vec<u64> = analysis.goroutines.known_gs().collect();
        let now = monotonic_ns();
        match reader.scan(now, known) {
            Ok(scan) => {
                let event = Event::GoroutineScan(scan);
                analysis.event(&event, bias);
                if let Some(recorder) = recorder {
                    recorder.load_bias(bias);
                    recorder.event(&event);
                    record_new_symbols(recorder, analysis);
                }
            }
            // The target just exited: not a failure (the exit is seen through its pidfd).
            Err(error) if error.raw_os_error() == Some(libc::ESRCH) => {}
            Err(error) => {
                if let Some(recorder) = recorder {
                    recorder.entry(&Entry::ScanFailed { ts_ns: now });
                }
                analysis.goroutines.scan_failures += 1;
                if analysis.goroutines.scan_failures == 1 {
                    log::warn!("cannot read the goroutines of pid {}: {error}", target.pid);
                }
            }
        }
    }
}

/// Hands the symbols the analysis just learned to the recording, in the same flush as the
/// events that needed them; then the chunk, if it is full.
pub(crate) fn record_new_symbols(recorder: &mut Recorder, analysis: &mut Analysis) {
    recorder.symbols(analysis.symbolizer_mut().take_new_symbols());
    recorder.flush_if_full();
}

/// Reads every queued record into the analysis; writes the sampling rate once the runtime
/// reports it is up.
fn drain(
    ring: &mut RingBuf<MapData>,
    stacks: &mut Option<CreationStacks>,
    analysis: &mut Analysis,
    rate: &mut RateControl,
    target: &Target,
    mode: Mode,
    mut recorder: Option<&mut Recorder>,
) -> Result<()> {
    let bias = target.load_bias();
    if let Some(recorder) = recorder.as_deref_mut() {
        recorder.load_bias(bias);
    }
    let mut runtime_ready = false;
    while let Some(record) = ring.next() {
        let Some(mut event) = analysis.decode(&record) else {
            if let Some(recorder) = recorder.as_deref_mut() {
                recorder.entry(&Entry::Undecodable);
            }
            continue;
        };
        match &mut event {
            Event::RuntimeReady { .. } => runtime_ready = true,
            Event::GoroutineCreate(created) => {
                if let (Some(id), Some(stacks)) = (created.stack_id, stacks.as_mut()) {
                    created.stack = Some(stacks.get(id));
                }
            }
            _ => {}
        }
        analysis.event(&event, bias);
        if let Some(recorder) = recorder.as_deref_mut() {
            recorder.event(&event);
        }
    }
    if runtime_ready {
        // schedinit is done: a rate written now stays.
        rate.apply(target, bias)?;
        analysis.set_sampling(rate.sampling(mode));
        if let Some(recorder) = recorder.as_deref_mut() {
            recorder.entry(&Entry::Sampling(analysis.sampling()));
        }
    }
    if let Some(recorder) = recorder {
        record_new_symbols(recorder, analysis);
    }
    Ok(())
}

/// The signals that end a session.
pub(crate) struct Signals {
    pub(crate) interrupt: tokio::signal::unix::Signal,
    pub(crate) terminate: tokio::signal::unix::Signal,
    pub(crate) hangup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers (inside a runtime context).
    pub(crate) fn new() -> Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT", e))?,
            terminate: signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM", e))?,
            hangup: signal(SignalKind::hangup()).map_err(|e| Error::io("SIGHUP", e))?,
        })
    }
}

/// Attaches what `mode` needs.
fn attach_probes(
    tracer: &mut Tracer,
    plan: &ProbePlan,
    target: &Target,
    mode: Mode,
    launched: bool,
    goroutines: bool,
) -> Result<()> {
    let (path, pid) = (target.attach_path.as_path(), target.pid);
    let all: Vec<&ProbeSite> = plan.alloc.iter().collect();
    match mode {
        Mode::AllAllocs { .. } => tracer.attach(Program::AllocEntry, &all, path, pid)?,
        Mode::ProbeFloor => tracer.attach(Program::AllocFloor, &all, path, pid)?,
        Mode::Sampled { .. } => {
            for (program, site) in object_probes(plan, &target.exe)? {
                tracer.attach(program, &[site], path, pid)?;
            }
            if launched {
                let main = plan
                    .runtime_ready
                    .as_ref()
                    .ok_or_else(|| missing_function(&target.exe, "runtime.main"))?;
                tracer.attach(Program::RuntimeReady, &[main], path, pid)?;
            }
        }
    }
    for (program, site) in common_probes(plan, &target.exe, goroutines)? {
        tracer.attach(program, &[site], path, pid)?;
    }
    Ok(())
}

fn missing_function(exe: &std::path::Path, function: &str) -> Error {
    Error::MissingRuntimeFunction {
        path: exe.to_path_buf(),
        function: function.into(),
    }
}

/// Sampled mode's own probes: objects the heap profiler samples, and their deaths.
pub(crate) fn object_probes<'a>(
    plan: &'a ProbePlan,
    exe: &std::path::Path,
) -> Result<[(Program, &'a ProbeSite); 2]> {
    let alloc = plan
        .object_alloc
        .as_ref()
        .ok_or_else(|| missing_function(exe, "runtime.profilealloc"))?;
    let free = plan
        .object_free
        .as_ref()
        .ok_or_else(|| missing_function(exe, "runtime.freeSpecial"))?;
    Ok([(Program::ObjectAlloc, alloc), (Program::ObjectFree, free)])
}

/// The probes of every mode: GC cycles (when the binary has the site) and, with
/// `goroutines`, goroutine creation.
pub(crate) fn common_probes<'a>(
    plan: &'a ProbePlan,
    exe: &std::path::Path,
    goroutines: bool,
) -> Result<Vec<(Program, &'a ProbeSite)>> {
    let mut probes = Vec::new();
    if let Some(gc) = &plan.gc_cycle {
        probes.push((Program::GcCycle, gc));
    }
    if goroutines {
        let create = plan.goroutine_create.as_ref().ok_or_else(|| {
            missing_function(exe, "runtime.newproc.func1 calling runtime.runqput")
        })?;
        probes.push((Program::GoroutineCreate, create));
    }
    Ok(probes)
}

/// What memtrace may do to the target's rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RatePolicy {
    /// Never write.
    ReadOnly,
    /// Write this rate only if the target does not sample at all.
    IfOff(i64),
    /// Write this rate (the user asked for it).
    Set(i64),
}

/// The target's `runtime.MemProfileRate` in sampled mode: where it is, what memtrace wrote,
/// and putting it back.
pub(crate) struct RateControl {
    /// Link-time address of `runtime.MemProfileRate` (sampled mode only).
    symbol: Option<u64>,
    policy: RatePolicy,
    /// The rate samples are taken at, once known.
    effective: Option<u64>,
    original: Option<i64>,
    applied: Option<RateOverride>,
    restored: bool,
    /// The session is over: nothing more is written.
    closed: bool,
}

impl RateControl {
    pub(crate) fn new(target: &Target, mode: Mode) -> Result<RateControl> {
        let Mode::Sampled { rate, read_only } = mode else {
            return Ok(RateControl {
                symbol: None,
                policy: RatePolicy::ReadOnly,
                effective: None,
                original: None,
                applied: None,
                restored: true,
                closed: false,
            });
        };
        let symbol = locate_mem_profile_rate(&target.binary).ok_or_else(|| {
            Error::MissingRuntimeFunction {
                path: target.exe.clone(),
                function: "runtime.MemProfileRate (not found; use --all-allocs)".into(),
            }
        })?;
        Ok(RateControl {
            symbol: Some(symbol),
            policy: match (read_only, rate) {
                (true, _) => RatePolicy::ReadOnly,
                (false, Some(rate)) => RatePolicy::Set(rate.min(i64::MAX as u64) as i64),
                (false, None) => RatePolicy::IfOff(DEFAULT_SAMPLE_RATE as i64),
            },
            effective: None,
            original: None,
            applied: None,
            restored: false,
            closed: false,
        })
    }

    /// Reads the rate and writes ours (unless read-only). Called once the runtime is up.
    pub(crate) fn apply(&mut self, target: &Target, bias: u64) -> Result<()> {
        let Some(symbol) = self.symbol else {
            return Ok(());
        };
        // Once, and never after the session restored the rate.
        if self.original.is_some() || self.closed {
            return Ok(());
        }
        let addr = symbol.wrapping_add(bias);
        let current = match read_rate(target.pid, addr) {
            Ok(current) => current,
            // Already gone (a short-lived program): the event loop sees the exit.
            Err(Error::NoSuchProcess(_)) => return Ok(()),
            Err(error) => return Err(error),
        };
        self.original = Some(current);
        let wanted = match self.policy {
            RatePolicy::Set(rate) if rate != current => Some(rate),
            RatePolicy::IfOff(rate) if current <= 0 => Some(rate),
            RatePolicy::ReadOnly if current <= 0 => return Err(Error::NotSampling(target.pid)),
            _ => None,
        };
        match wanted.map(|rate| (rate, RateOverride::apply(target.pid, addr, rate))) {
            Some((rate, Ok(applied))) => {
                self.applied = Some(applied);
                self.effective = Some(rate as u64);
            }
            Some((_, Err(Error::NoSuchProcess(_)))) => {}
            Some((_, Err(error))) => return Err(error),
            None => self.effective = Some(current as u64),
        }
        Ok(())
    }

    pub(crate) fn sampling(&self, mode: Mode) -> Sampling {
        match mode {
            Mode::AllAllocs { stack_sample_bytes } => Sampling::AllAllocs {
                interval_bytes: stack_sample_bytes.max(1),
            },
            Mode::ProbeFloor => Sampling::AllAllocs { interval_bytes: 1 },
            Mode::Sampled { rate, .. } => Sampling::HeapProfiler {
                rate_bytes: self
                    .effective
                    .or(rate)
                    .unwrap_or(DEFAULT_SAMPLE_RATE)
                    .max(1),
            },
        }
    }

    /// Whether the rate is known (read from the target, or written by memtrace).
    pub(crate) fn is_applied(&self) -> bool {
        self.original.is_some() || self.symbol.is_none()
    }

    /// The rate samples are taken at now, once known.
    pub(crate) fn effective(&self) -> Option<u64> {
        self.effective
    }

    /// Writes another rate while the session runs (the agent's budget). Returns false when
    /// nothing was written: the session is over, the rate is not known yet, or the program
    /// has set its own rate since memtrace wrote one (its choice stands).
    pub(crate) fn change(&mut self, target: &Target, bias: u64, rate: u64) -> Result<bool> {
        let (Some(symbol), Some(_)) = (self.symbol, self.original) else {
            return Ok(false);
        };
        if self.closed || matches!(self.policy, RatePolicy::ReadOnly) {
            return Ok(false);
        }
        let rate = rate.min(i64::MAX as u64) as i64;
        let changed = match self.applied.as_mut() {
            Some(applied) => applied.rewrite(rate)?,
            None => {
                self.applied = Some(RateOverride::apply(
                    target.pid,
                    symbol.wrapping_add(bias),
                    rate,
                )?);
                true
            }
        };
        if changed {
            self.effective = Some(rate as u64);
        }
        Ok(changed)
    }

    /// The process exited or ran exec: nothing is written into it any more, not even the
    /// original rate (its memory may hold another program now).
    pub(crate) fn abandon(&mut self) {
        self.closed = true;
        if let Some(applied) = self.applied.as_mut() {
            applied.forget();
        }
        self.restored = true;
    }

    pub(crate) fn restore(&mut self) {
        self.closed = true;
        if let Some(applied) = self.applied.as_mut() {
            self.restored = applied.restore();
        } else {
            self.restored = true;
        }
    }

    /// Restores (if not done yet) and says what happened, for the report.
    pub(crate) fn finish(&mut self) -> Option<MemProfileRate> {
        self.restore();
        self.describe()
    }

    /// What memtrace read and wrote so far (`restored` only once the session is over).
    pub(crate) fn describe(&self) -> Option<MemProfileRate> {
        let original = self.original?;
        Some(MemProfileRate {
            original,
            written: self.applied.as_ref().map(RateOverride::written),
            restored: self.closed && self.restored,
        })
    }
}

fn forward_signal(launched: bool, pid: u32, signal: i32) {
    if launched {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(pid as i32, signal) };
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The live view: a panel at the bottom of the terminal (stderr), below a scrolling region in
/// which the target's own output (launch mode) keeps scrolling, the way apt draws its progress
/// bar.
#[derive(Default)]
struct LiveView {
    /// Terminal rows and the panel's height, once the scrolling region is set up.
    panel: Option<(u16, u16)>,
    last: Option<(Instant, u64, u64)>,
}

impl Drop for LiveView {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Rows and columns of the terminal on stderr.
fn terminal_size() -> Option<(u16, u16)> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into the struct we pass.
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    (ok && size.ws_row > 0 && size.ws_col > 0).then_some((size.ws_row, size.ws_col))
}

impl LiveView {
    fn draw(
        &mut self,
        analysis: &mut Analysis,
        stats: &memtrace_common::TargetStats,
        options: &SessionOptions,
        start_ns: u64,
    ) {
        let Some((rows, columns)) = terminal_size() else {
            return;
        };
        let now = Instant::now();
        // Exact counters in --all-allocs; estimates from the samples in sampled mode.
        let (objects, bytes) = if matches!(options.mode, Mode::Sampled { .. }) {
            let sites = analysis.sites();
            (
                sites.iter().map(|s| s.objects).sum::<f64>() as u64,
                sites.iter().map(|s| s.bytes).sum::<f64>() as u64,
            )
        } else {
            (stats.objects, crate::report::slot_bytes(stats))
        };
        let (objects_rate, bytes_rate, elapsed) = match self.last {
            Some((at, last_objects, last_bytes)) => {
                let dt = now.duration_since(at).as_secs_f64().max(1e-3);
                (
                    objects.saturating_sub(last_objects) as f64 / dt,
                    bytes.saturating_sub(last_bytes) as f64 / dt,
                    dt,
                )
            }
            None => (0.0, 0.0, options.live_interval.as_secs_f64()),
        };
        self.last = Some((now, objects, bytes));
        let window = analysis.take_window();
        let since_start = (monotonic_ns().saturating_sub(start_ns)) as f64 / 1e9;
        let mut text = format!(
            "memtrace {since_start:.0}s | {} objects/s {}/s | total {} objects {} | gc cycles {}\n",
            human_count(objects_rate),
            human_bytes(bytes_rate),
            objects,
            human_bytes(bytes as f64),
            stats.gc_cycles,
        );
        let events = crate::report::Events {
            received: analysis.records_received,
            dropped: stats.ringbuf_drops,
            stack_failures: stats.stack_failures,
            stack_truncated: stats.stack_truncated,
            read_failures: stats.read_failures,
            decode_errors: analysis.decode_errors,
            unmatched_frees: analysis.unmatched_frees,
            ..Default::default()
        };
        text.push_str(&loss_line(&events));
        text.push('\n');
        if matches!(options.mode, Mode::Sampled { .. }) {
            let suspects = analysis.leak_suspects(&analysis.live_summaries());
            let names: Vec<String> = suspects
                .iter()
                .take(3)
                .map(|verdict| {
                    let site = &analysis.sites()[verdict.site as usize];
                    format!(
                        "{} {} (+{}/s)",
                        site.key.function,
                        location(&site.key.file, site.key.line),
                        human_bytes(verdict.growth_bytes_per_s)
                    )
                })
                .collect();
            text.push_str(&format!(
                "leak suspects: {}  | tracking {} live sampled objects\n",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                },
                analysis.live_tracked()
            ));
        }
        let mut goroutine_lines = 0;
        if options.goroutines {
            let g = &analysis.goroutines;
            let leaks: Vec<String> = g
                .leaks()
                .iter()
                .take(3)
                .map(|group| {
                    let origin = &g.origins()[group.origin as usize];
                    format!(
                        "{} x {} on \"{}\" from {} (+{:.1}/s)",
                        group.count,
                        origin.start_function,
                        group.state,
                        location(&origin.site.file, origin.site.line),
                        group.growth_per_s
                    )
                })
                .collect();
            text.push_str(&format!(
                "goroutines: {} live, {} created, {} exited | goroutine leaks: {}\n",
                g.live_user(),
                g.created,
                g.exited,
                if leaks.is_empty() {
                    "none".to_string()
                } else {
                    leaks.join(", ")
                }
            ));
            for group in g.groups().iter().take(GOROUTINE_GROUPS_SHOWN) {
                let origin = &g.origins()[group.origin as usize];
                text.push_str(&format!(
                    "  {:>6} x {} \"{}\" from {} {}\n",
                    group.count,
                    origin.start_function,
                    group.state,
                    origin.site.function,
                    location(&origin.site.file, origin.site.line)
                ));
                goroutine_lines += 1;
            }
            goroutine_lines += 1;
        }
        let sites = analysis.sites();
        let table: Vec<_> = window
            .iter()
            .filter(|(_, objects, _)| *objects > 0.0)
            .take(options.top)
            .map(|&(id, objects, bytes)| {
                let site = &sites[id as usize];
                (
                    site,
                    bytes / elapsed,
                    objects / elapsed,
                    crate::report::SizeDistribution::of(&site.sizes),
                )
            })
            .collect();
        text.push_str(&site_table(table.iter().map(|(site, b, o, size)| {
            (
                site.key.function.as_str(),
                site.key.file.as_str(),
                site.key.line,
                *b,
                *o,
                Some(size),
            )
        })));

        // The panel: the header lines plus `top` sites, at most half the terminal.
        let height = ((options.top + 4 + goroutine_lines) as u16)
            .min(rows / 2)
            .max(3);
        let mut out = String::new();
        match self.panel {
            Some((panel_rows, panel_height)) if panel_rows == rows && panel_height == height => {}
            _ => {
                // Make room by scrolling what is on screen up, then confine scrolling to the
                // rows above the panel.
                self.reset_region(&mut out);
                out.push_str(&"\n".repeat(height as usize));
                out.push_str(&format!(
                    "\x1b[{height}A\x1b7\x1b[1;{}r\x1b8",
                    rows - height
                ));
                self.panel = Some((rows, height));
            }
        }
        out.push_str("\x1b7");
        let lines: Vec<&str> = text.lines().collect();
        for row in 0..height {
            let line = lines.get(row as usize).copied().unwrap_or("");
            let line: String = line.chars().take(columns as usize).collect();
            out.push_str(&format!("\x1b[{};1H\x1b[2K{line}", rows - height + 1 + row));
        }
        out.push_str("\x1b8");
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(out.as_bytes());
        let _ = stderr.flush();
    }

    fn reset_region(&mut self, out: &mut String) {
        if let Some((rows, height)) = self.panel.take() {
            // Full-screen scrolling again, and the panel erased.
            out.push_str(&format!(
                "\x1b7\x1b[r\x1b[{};1H\x1b[J\x1b8",
                rows - height + 1
            ));
        }
    }

    /// Removes the panel and gives the terminal back as it was (also on errors: see Drop).
    fn clear(&mut self) {
        let mut out = String::new();
        self.reset_region(&mut out);
        if !out.is_empty() {
            let mut stderr = std::io::stderr().lock();
            let _ = stderr.write_all(out.as_bytes());
            let _ = stderr.flush();
        }
    }
}

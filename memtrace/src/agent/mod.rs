//! `memtrace agent`: every Go process on a node, traced at once, served over HTTP.
//!
//! One eBPF object serves every process: the probes look their process up in `TARGETS`, and
//! processes that run the same file share one set of uprobes (attached for all processes of
//! that inode, kept a while after the last one exits, since programs often restart). Raw
//! tracepoints on exec and exit tell the agent about processes as they come and go; a walk of
//! /proc at start finds those already running. Each traced process has the same pieces a
//! one-process session has, fed from the one ring buffer by pid.

pub mod budget;
pub mod container;
pub mod filter;
pub mod http;
pub mod metrics;
pub mod recordings;
mod serve;
mod traced;

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use memtrace_common::tag;
use tokio::io::unix::AsyncFd;

use crate::{
    agent::{
        budget::{Action, Budget, Load},
        container::placement_of,
        filter::{Candidate, Selector},
        recordings::RecordDir,
        traced::Traced,
    },
    binary::GoBinary,
    bpf::{CreationStacks, ProbeLinks, Program, Tracer},
    error::{Error, Result},
    events::Event,
    probes::{ProbePlan, ProbeSite},
    runtime::RuntimeLayout,
    session::{common_probes, object_probes, Mode, Signals, CONSUMER_NICE, DRAIN_INTERVAL},
    symbolize::SharedSymbols,
    target::{BinaryKey, OpenedExe, Target},
};

/// What `memtrace agent` is asked to do.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub listen: String,
    pub selector: Selector,
    /// `runtime.MemProfileRate` for processes that do not sample (`None`: 512 KiB).
    pub rate: Option<u64>,
    pub goroutines: bool,
    pub budget: Budget,
    pub record_dir: Option<PathBuf>,
    pub record_max_bytes: u64,
    /// Most processes traced at once.
    pub max_targets: usize,
    /// Sites per process in `/metrics`.
    pub metrics_top_sites: usize,
    /// Goroutine groups and sites in `/api/report`.
    pub top: usize,
    pub ring_bytes: u32,
    /// The node's name (from `NODE_NAME`, the downward API), for labels.
    pub node: Option<String>,
    /// How often each process's goroutines are scanned.
    pub scan_interval: Duration,
}

/// Probes shared by the processes of one binary.
struct SharedBinary {
    binary: Arc<GoBinary>,
    layout: RuntimeLayout,
    symbols: Rc<SharedSymbols>,
    links: ProbeLinks,
    pids: HashSet<u32>,
    /// When the last process of it exited; its probes go after [`PROBE_LINGER`].
    idle_since: Option<Instant>,
}

/// How long the probes of a binary stay after its last process exited: programs restart
/// (crash loops, cron jobs, CI steps), and attaching again costs more than keeping them.
const PROBE_LINGER: Duration = Duration::from_secs(10);

/// Binaries remembered as not traceable (not Go, unsupported Go); forgotten all at once when
/// full.
const MAX_SKIPPED_BINARIES: usize = 4096;

/// Why a process is not traced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Skip {
    NotGo,
    UnsupportedGo,
    Excluded,
    /// It exited before memtrace could look at it.
    Vanished,
    /// `--max-targets` reached.
    TooMany,
    /// Reading it or attaching to it failed (permissions, a damaged binary).
    Failed,
}

impl Skip {
    pub const ALL: [Skip; 6] = [
        Skip::NotGo,
        Skip::UnsupportedGo,
        Skip::Excluded,
        Skip::Vanished,
        Skip::TooMany,
        Skip::Failed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Skip::NotGo => "not-go",
            Skip::UnsupportedGo => "unsupported-go",
            Skip::Excluded => "excluded",
            Skip::Vanished => "vanished",
            Skip::TooMany => "too-many",
            Skip::Failed => "failed",
        }
    }
}

/// The agent's own counters.
#[derive(Default)]
pub struct Counters {
    pub exec_events: u64,
    pub attached: u64,
    pub detached: u64,
    pub skipped: HashMap<Skip, u64>,
    /// Records of processes memtrace no longer (or not yet) traces.
    pub stray_records: u64,
}

pub struct Agent {
    options: AgentOptions,
    mode: Mode,
    tracer: Tracer,
    stacks: Option<CreationStacks>,
    targets: HashMap<u32, Traced>,
    binaries: HashMap<BinaryKey, SharedBinary>,
    skipped_binaries: HashMap<BinaryKey, Skip>,
    record_dir: Option<RecordDir>,
    counters: Counters,
    global_counters: Vec<u64>,
    /// The walk of /proc at start is done: every process is known.
    ready: bool,
    started: Instant,
    /// Process execs and exits (tag, pid, timestamp) in the order the kernel reported them,
    /// looked at after each batch of records.
    process_events: Vec<(u32, u32, u64)>,
    /// Next process to scan (round robin).
    scan_cursor: usize,
    /// When the budget last looked at the event rates (the loop can be late when the node
    /// is busy: rates are per elapsed second, not per tick).
    last_budget_tick: Instant,
}

/// Runs the agent until SIGINT or SIGTERM.
pub fn run(options: AgentOptions) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the event loop", e))?;
    let listener = http::bind(&options.listen).map_err(|e| Error::Listen(e.to_string()))?;
    let signals = {
        let _context = runtime.enter();
        Signals::new()?
    };
    let record_dir = options
        .record_dir
        .as_deref()
        .map(|dir| RecordDir::open(dir, options.record_max_bytes))
        .transpose()?;
    let mut tracer = Tracer::load(options.ring_bytes)?;
    let ring = tracer.take_ring_buffer()?;
    let stacks = if options.goroutines {
        Some(tracer.take_creation_stacks()?)
    } else {
        None
    };
    let mut agent = Agent {
        mode: Mode::Sampled {
            rate: options.rate,
            read_only: false,
        },
        options,
        tracer,
        stacks,
        targets: HashMap::new(),
        binaries: HashMap::new(),
        skipped_binaries: HashMap::new(),
        record_dir,
        counters: Counters::default(),
        global_counters: Vec::new(),
        ready: false,
        started: Instant::now(),
        process_events: Vec::new(),
        scan_cursor: 0,
        last_budget_tick: Instant::now(),
    };
    let result = runtime.block_on(agent.event_loop(ring, listener, signals));
    agent.shut_down();
    result
}

/// The tag, pid and timestamp of a ring-buffer record (see `RecordHeader`).
fn record_header(record: &[u8]) -> Option<(u32, u32, u64)> {
    let tag = u32::from_ne_bytes(record.get(0..4)?.try_into().ok()?);
    let tgid = u32::from_ne_bytes(record.get(4..8)?.try_into().ok()?);
    let ts_ns = u64::from_ne_bytes(record.get(8..16)?.try_into().ok()?);
    Some((tag, tgid, ts_ns))
}

/// Every process id in /proc.
fn running_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

fn process_exists(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let alive = unsafe { libc::kill(pid as i32, 0) } == 0;
    alive || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

impl Agent {
    async fn event_loop(
        &mut self,
        ring: RingBuf<MapData>,
        listener: std::net::TcpListener,
        mut signals: Signals,
    ) -> Result<()> {
        // SAFETY: the ring buffer owns its fd for as long as the AsyncFd owns the ring buffer.
        let mut ring =
            unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
                .map_err(|e| Error::io("watching the ring buffer", e.into()))?;
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(|e| Error::io("listening", e))?;
        let (requests, mut incoming) = tokio::sync::mpsc::channel::<http::Exchange>(64);
        tokio::spawn(http::serve(listener, requests));
        log::info!("listening on {}", self.options.listen);

        // Exec events first, then the walk: a process started in between is seen twice
        // (harmless), never missed.
        self.tracer.attach_process_events()?;
        for pid in running_pids() {
            if pid != std::process::id() {
                self.consider(pid);
            }
        }
        self.ready = true;
        log::info!(
            "tracing {} Go processes; watching for new ones",
            self.targets.len()
        );
        // SAFETY: setpriority on the calling thread (who = 0) has no memory effects.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, CONSUMER_NICE) };

        let mut drain_tick = tokio::time::interval(DRAIN_INTERVAL);
        drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut second = tokio::time::interval(Duration::from_secs(1));
        second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard.map_err(|e| Error::io("reading the ring buffer", e))?;
                    guard.clear_ready();
                    self.drain(guard.get_inner_mut());
                }
                _ = drain_tick.tick() => self.drain(ring.get_mut()),
                _ = second.tick() => {
                    self.drain(ring.get_mut());
                    self.every_second();
                }
                Some((request, reply)) = incoming.recv() => {
                    self.drain(ring.get_mut());
                    let _ = reply.send(self.answer(&request));
                }
                _ = signals.interrupt.recv() => break,
                _ = signals.terminate.recv() => break,
                _ = signals.hangup.recv() => break,
            }
        }
        log::info!(
            "stopping: restoring and detaching {} processes",
            self.targets.len()
        );
        Ok(())
    }

    /// Reads every queued record and hands it to its process; then looks at the processes
    /// that started or exited meanwhile.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        let mut touched: HashSet<u32> = HashSet::new();
        while let Some(record) = ring.next() {
            let Some((tag, pid, ts_ns)) = record_header(&record) else {
                self.counters.stray_records += 1;
                continue;
            };
            match tag {
                tag::PROCESS_EXEC | tag::PROCESS_EXIT => {
                    if tag == tag::PROCESS_EXEC {
                        self.counters.exec_events += 1;
                    }
                    self.process_events.push((tag, pid, ts_ns));
                }
                _ => {
                    let Some(traced) = self.targets.get_mut(&pid) else {
                        self.counters.stray_records += 1;
                        continue;
                    };
                    traced.records += 1;
                    if touched.insert(pid) {
                        traced.before_drain();
                    }
                    match traced.analysis.decode(&record) {
                        Some(event) => {
                            let ready = matches!(event, Event::RuntimeReady { .. });
                            traced.event(event, &mut self.stacks);
                            if ready {
                                if let Err(error) = traced.settle_rate(self.mode, true) {
                                    log::warn!("pid {pid}: {error}");
                                }
                            }
                        }
                        None => traced.undecodable(),
                    }
                }
            }
        }
        let mut flooding = false;
        let flood = 2.0 * self.options.budget.per_process;
        for pid in touched {
            if let Some(traced) = self.targets.get_mut(&pid) {
                traced.after_drain();
                flooding |= traced.records.saturating_sub(traced.records_at_tick) as f64 > flood;
            }
        }
        if flooding && self.last_budget_tick.elapsed() >= Duration::from_millis(100) {
            // A process sent two seconds' worth of its budget since the last look: act now,
            // before the ring buffer fills (a goroutine flood fills 8 MiB in half a second).
            self.refresh_stats();
            self.apply_budget();
        }
        for (tag, pid, ts_ns) in std::mem::take(&mut self.process_events) {
            // Events from before memtrace started tracing the process are old news: the
            // exec that started the program it traces, for one.
            let traced_since = self.targets.get(&pid).map(|traced| traced.start_ns);
            let news = traced_since.is_none_or(|since| ts_ns > since);
            match tag {
                tag::PROCESS_EXIT if traced_since.is_some() && news => self.retire(pid, true),
                tag::PROCESS_EXEC if traced_since.is_none() => self.consider(pid),
                tag::PROCESS_EXEC if news => {
                    // A traced process ran exec: the program it was is gone.
                    self.retire(pid, true);
                    self.consider(pid);
                }
                _ => {}
            }
        }
    }

    /// Looks at a process: traces it if it is a Go program the filters admit.
    fn consider(&mut self, pid: u32) {
        if let Err(skip) = self.try_trace(pid) {
            *self.counters.skipped.entry(skip).or_default() += 1;
        }
    }

    fn try_trace(&mut self, pid: u32) -> std::result::Result<(), Skip> {
        let opened = match OpenedExe::of_pid(pid) {
            Ok(opened) => opened,
            // Kernel threads have no executable; gone processes have nothing.
            Err(Error::NoSuchProcess(_)) if process_exists(pid) => return Err(Skip::NotGo),
            Err(Error::NoSuchProcess(_)) => return Err(Skip::Vanished),
            Err(error) => {
                log::debug!("pid {pid}: {error}");
                return Err(if process_exists(pid) {
                    Skip::Failed
                } else {
                    Skip::Vanished
                });
            }
        };
        if let Some(&skip) = self.skipped_binaries.get(&opened.key) {
            return Err(skip);
        }
        let placement = placement_of(pid);
        let exe_path = opened.exe.to_string_lossy();
        let exe_path = exe_path.strip_suffix(" (deleted)").unwrap_or(&exe_path);
        let candidate = Candidate {
            exe_path,
            placement: &placement,
        };
        if !self.options.selector.admits(&candidate) {
            return Err(Skip::Excluded);
        }
        if self.targets.len() >= self.options.max_targets {
            return Err(Skip::TooMany);
        }
        let key = opened.key;
        if !self.binaries.contains_key(&key) && !opened.may_be_go() {
            self.remember_skipped(key, Skip::NotGo);
            return Err(Skip::NotGo);
        }
        let shared = self
            .binaries
            .get(&key)
            .map(|shared| (&shared.binary, shared.layout));
        let target = match Target::from_opened(opened, shared) {
            Ok(target) => target,
            Err(error) => {
                let skip = match error {
                    Error::NotGo(_) | Error::Binary { .. } => Skip::NotGo,
                    Error::UnsupportedGo { .. } => Skip::UnsupportedGo,
                    Error::NoSuchProcess(_) => return Err(Skip::Vanished),
                    _ => Skip::Failed,
                };
                if skip == Skip::UnsupportedGo {
                    log::info!("pid {pid}: {error}");
                }
                self.remember_skipped(key, skip);
                return Err(skip);
            }
        };
        let exe = target.exe.display().to_string();
        let symbols = match self.binaries.get(&key) {
            Some(shared) => shared.symbols.clone(),
            None => match target.exe_file() {
                Ok(file) => Rc::new(SharedSymbols::for_file(&target.binary, file)),
                Err(error) => {
                    log::warn!("pid {pid}: {error}");
                    return Err(Skip::Failed);
                }
            },
        };
        match self.start_tracing(target, key, placement, symbols) {
            Ok(()) => {
                self.counters.attached += 1;
                log::info!("tracing pid {pid} ({exe})");
                Ok(())
            }
            Err(error) => {
                let gone = !process_exists(pid);
                // Whatever was registered goes again.
                let _ = self.tracer.remove_target(pid);
                self.release_binary(key, pid);
                if let Error::NoProbeSites(_) | Error::MissingRuntimeFunction { .. } = error {
                    // The binary lacks a site memtrace needs: so will its next process.
                    log::info!("pid {pid}: {error}");
                    self.remember_skipped(key, Skip::UnsupportedGo);
                    return Err(Skip::UnsupportedGo);
                }
                if !gone {
                    log::warn!("cannot trace pid {pid} ({exe}): {error}");
                }
                Err(if gone { Skip::Vanished } else { Skip::Failed })
            }
        }
    }

    fn remember_skipped(&mut self, key: BinaryKey, skip: Skip) {
        if self.skipped_binaries.len() >= MAX_SKIPPED_BINARIES {
            self.skipped_binaries.clear();
        }
        self.skipped_binaries.insert(key, skip);
    }

    fn start_tracing(
        &mut self,
        target: Target,
        key: BinaryKey,
        placement: container::Placement,
        symbols: Rc<SharedSymbols>,
    ) -> Result<()> {
        let pid = target.pid;
        let mut traced = Traced::new(
            target,
            key,
            placement,
            self.mode,
            self.options.goroutines,
            symbols.clone(),
            self.options.budget.per_process,
        )?;
        self.tracer.add_target(pid, traced.config)?;
        self.share_probes(&traced.target, key, symbols)?;
        traced.settle_rate(self.mode, false)?;
        if let Some(dir) = self.record_dir.as_mut() {
            let limit = dir.file_limit(self.targets.len() + 1);
            if let Err(error) = traced.rotate_recording(dir, self.mode, limit, false) {
                log::warn!("pid {pid}: not recorded: {error}");
            }
        }
        self.targets.insert(pid, traced);
        Ok(())
    }

    /// Attaches the probes of `target`'s binary unless another process of it has them.
    fn share_probes(
        &mut self,
        target: &Target,
        key: BinaryKey,
        symbols: Rc<SharedSymbols>,
    ) -> Result<()> {
        if let Some(shared) = self.binaries.get_mut(&key) {
            shared.pids.insert(target.pid);
            shared.idle_since = None;
            return Ok(());
        }
        let plan = ProbePlan::for_binary(&target.binary)?;
        let mut probes: Vec<(Program, &ProbeSite)> =
            object_probes(&plan, &target.exe)?.into_iter().collect();
        // `runtime.main` tells when a new process's runtime is up; without it the agent
        // polls `runtime.mainStarted` (see `Traced::settle_rate`).
        if let Some(main) = &plan.runtime_ready {
            probes.push((Program::RuntimeReady, main));
        }
        probes.extend(common_probes(&plan, &target.exe, self.options.goroutines)?);
        let mut links = ProbeLinks::default();
        let attached = probes.into_iter().try_for_each(|(program, site)| {
            self.tracer
                .attach_shared(program, &[site], &target.attach_path, &mut links)
        });
        if let Err(error) = attached {
            self.tracer.detach_in_background(links);
            return Err(error);
        }
        log::info!(
            "attached {} probes to {} (shared by its processes)",
            links.len(),
            target.exe.display()
        );
        self.binaries.insert(
            key,
            SharedBinary {
                binary: target.binary.clone(),
                layout: target.layout,
                symbols,
                links,
                pids: [target.pid].into_iter().collect(),
                idle_since: None,
            },
        );
        Ok(())
    }

    /// A process no longer uses its binary's probes.
    fn release_binary(&mut self, key: BinaryKey, pid: u32) {
        if let Some(shared) = self.binaries.get_mut(&key) {
            shared.pids.remove(&pid);
            if shared.pids.is_empty() {
                shared.idle_since = Some(Instant::now());
            }
        }
    }

    /// Stops tracing `pid`: it exited (`exited`), or memtrace lets go of it.
    fn retire(&mut self, pid: u32, exited: bool) {
        let Some(mut traced) = self.targets.remove(&pid) else {
            return;
        };
        self.refresh_global_counters();
        if exited {
            traced.exited(&self.tracer, &self.global_counters);
        } else {
            traced.detach(&self.tracer, &self.global_counters);
        }
        if let Err(error) = self.tracer.remove_target(pid) {
            log::warn!("pid {pid}: {error}");
        }
        self.release_binary(traced.key, pid);
        self.counters.detached += 1;
        log::info!(
            "pid {pid} ({}) {}",
            traced.target.exe.display(),
            if exited { "exited" } else { "released" }
        );
    }

    /// Every process's counters (and the recordings' snapshots of them).
    fn refresh_stats(&mut self) {
        for traced in self.targets.values_mut() {
            traced.refresh_stats(&self.tracer, &self.global_counters);
        }
    }

    fn refresh_global_counters(&mut self) {
        if let Ok(counters) = self.tracer.global_counters() {
            self.global_counters = counters.to_vec();
        }
    }

    fn every_second(&mut self) {
        self.refresh_global_counters();
        // Exits the tracepoint could not report (its record lost, or a main thread that
        // exited before the others).
        let gone: Vec<u32> = self
            .targets
            .keys()
            .copied()
            .filter(|&pid| !process_exists(pid))
            .collect();
        for pid in gone {
            self.retire(pid, true);
        }
        self.refresh_stats();
        for traced in self.targets.values_mut() {
            if let Err(error) = traced.settle_rate(self.mode, false) {
                log::warn!("pid {}: {error}", traced.pid());
            }
        }
        self.apply_budget();
        self.scan_some_goroutines();
        self.rotate_recordings();
        self.detach_idle_binaries();
    }

    /// Scans a share of the processes each second, so that each is scanned every
    /// `scan_interval`.
    fn scan_some_goroutines(&mut self) {
        if !self.options.goroutines || self.targets.is_empty() {
            return;
        }
        let per_second = self.targets.len() as f64 / self.options.scan_interval.as_secs_f64();
        let count = (per_second.ceil() as usize).clamp(1, self.targets.len());
        let mut pids: Vec<u32> = self.targets.keys().copied().collect();
        pids.sort_unstable();
        for index in 0..count {
            let pid = pids[(self.scan_cursor + index) % pids.len()];
            if let Some(traced) = self.targets.get_mut(&pid) {
                traced.scan_goroutines();
            }
        }
        self.scan_cursor = (self.scan_cursor + count) % pids.len();
    }

    fn apply_budget(&mut self) {
        let mut pids: Vec<u32> = self.targets.keys().copied().collect();
        pids.sort_unstable();
        let elapsed_s = self.last_budget_tick.elapsed().as_secs_f64().max(0.25);
        self.last_budget_tick = Instant::now();
        let loads: Vec<Load> = pids
            .iter()
            .map(|pid| {
                let traced = &self.targets[pid];
                Load {
                    pid: *pid,
                    events_per_s: traced.records.saturating_sub(traced.records_at_tick) as f64
                        / elapsed_s,
                    goroutines_per_s: traced
                        .stats
                        .goroutines_created
                        .saturating_sub(traced.goroutines_at_tick)
                        as f64
                        / elapsed_s,
                    rate_bytes: traced.rate_bytes(),
                    base_rate_bytes: traced.base_rate.unwrap_or(traced.rate_bytes()),
                    goroutine_records: traced.goroutine_records(),
                    calm_seconds: traced.calm_seconds,
                }
            })
            .collect();
        let budget = self.options.budget;
        let actions = budget.decide(&loads);
        let calm = budget.calm(&loads, &actions);
        for (pid, calm) in pids.iter().zip(calm) {
            let traced = self.targets.get_mut(pid).expect("listed above");
            traced.calm_seconds = calm;
            traced.records_at_tick = traced.records;
            traced.goroutines_at_tick = traced.stats.goroutines_created;
        }
        for action in actions {
            let (pid, result) = match action {
                Action::SetRate { pid, rate_bytes } => {
                    let traced = self.targets.get_mut(&pid).expect("listed above");
                    let mode = self.mode;
                    (pid, traced.set_rate(rate_bytes, mode).map(|_| ()))
                }
                Action::GoroutineRecords { pid, on } => {
                    let traced = self.targets.get_mut(&pid).expect("listed above");
                    log::info!(
                        "pid {pid}: goroutine creation records {} (budget)",
                        if on { "back on" } else { "off" }
                    );
                    (pid, traced.set_goroutine_records(&mut self.tracer, on))
                }
            };
            if let Err(error) = result {
                log::warn!("pid {pid}: budget: {error}");
            }
        }
    }

    fn rotate_recordings(&mut self) {
        let Some(dir) = self.record_dir.as_mut() else {
            return;
        };
        let limit = dir.file_limit(self.targets.len());
        for traced in self.targets.values_mut() {
            if let Err(error) = traced.rotate_recording(dir, self.mode, limit, false) {
                log::warn!("pid {}: recording: {error}", traced.pid());
            }
        }
        let active: HashSet<PathBuf> = self
            .targets
            .values()
            .filter_map(|traced| Some(traced.recording.as_ref()?.path().to_path_buf()))
            .collect();
        dir.enforce(&active);
    }

    fn detach_idle_binaries(&mut self) {
        let idle: Vec<BinaryKey> = self
            .binaries
            .iter()
            .filter(|(_, shared)| {
                shared
                    .idle_since
                    .is_some_and(|since| since.elapsed() >= PROBE_LINGER)
            })
            .map(|(key, _)| *key)
            .collect();
        for key in idle {
            if let Some(shared) = self.binaries.remove(&key) {
                self.tracer.detach_in_background(shared.links);
            }
        }
    }

    /// Lets go of every process: rates restored first (no new samples), then the probes.
    fn shut_down(&mut self) {
        let pids: Vec<u32> = self.targets.keys().copied().collect();
        for pid in &pids {
            if let Some(traced) = self.targets.get_mut(pid) {
                traced.rate.restore();
            }
        }
        for (_, shared) in self.binaries.drain() {
            self.tracer.adopt(shared.links);
        }
        self.tracer.detach_all();
        for pid in pids {
            self.retire(pid, !process_exists(pid));
        }
    }
}

//! `cargo xtask bench`: memtrace's overhead on the `bench` Go program (`tests/go/bench`),
//! which allocates N 32-byte objects from G goroutines and reports the time its allocation
//! loops took (`ELAPSED_NS`, which excludes process start and probe attach).
//!
//! Four cases run interleaved in every round, so drifting machine load hits them alike:
//!
//! - `untraced`: the program alone;
//! - `probe-floor`: `memtrace --probe-floor --no-live`, no-op probes on the same allocation
//!   sites: what the kernel's uprobe trap costs by itself;
//! - `all-allocs`: `memtrace --all-allocs --no-live`, every allocation counted;
//! - `recorded`: the same under `memtrace record` (plus `--json`, written after the program
//!   exits), writing a trace file: what recording adds.
//!
//! The table shows medians over the rounds, and each comparison the median of the per-round
//! elapsed ratios too (less moved by a round that load slowed for one case). A case that
//! fails is reported and dropped.
//!
//! Then the default sampled mode (`memtrace --no-live`: the runtime's heap profiler at
//! 512 KiB, objects tracked to their death) against untraced, interleaved, on a run long
//! enough (`--sampled-allocs`) to show a 1% difference; goroutine tracking on a
//! goroutine-heavy program (`tests/go/gobench`: a goroutine per request) at two request
//! rates; and the userspace tracking speed and memory per tracked object, replaying synthetic
//! records through the analysis (`memtrace/examples/analysis_throughput.rs`).
//!
//! Then recordings of real workloads (`--recording-only` runs just these): `bench` with
//! `--all-allocs` and a small `--stack-sample-bytes` (about 2 million stack samples; untraced,
//! traced and recorded interleaved in rounds, to show what writing costs at that rate),
//! `bench` in sampled mode at a high sampling rate (about a million samples and deaths), and
//! `gobench` with a million goroutines (goroutine creation records dominate). For each:
//! events, file size, bytes per million events, and the records the trace writer dropped
//! (`unrecorded`, which must be 0) next to the ring-buffer drops. Each trace is then replayed
//! several times with `memtrace report -v`, whose `replayed ...` line gives the replay's
//! records per second: the replay runs on one thread, so that is the per-core number (goal:
//! [`REPLAY_GOAL`]). The traces stay in `<target>/bench-traces`, for profiling.
//!
//! Last, the node agent (`--agent-only` runs just this): `memtrace agent` tracing
//! [`AGENT_PROGRAMS`] long-running programs of the test corpus at once (every `leaks` and
//! `goleaks` pattern, leaky ones and controls, and `idle`, built with two Go versions so that
//! some processes share a binary's probes and some do not). Per round, with the programs
//! running: their CPU untraced, then the agent's own CPU (percent of one core; goal
//! [`AGENT_CPU_GOAL_PERCENT`]) and resident memory (goal [`AGENT_RSS_GOAL_BYTES`]), its event
//! rate and losses, and the programs' CPU traced, over a window; then the agent must stop on
//! SIGTERM with exit code 0 and leave every program running. The goals are reported as
//! PASS/MISS, not enforced: a miss does not fail the benchmark, a misbehaving agent does.

use std::{
    fmt::Write as _,
    io::Read,
    mem::MaybeUninit,
    path::{Path, PathBuf},
    process::{Command, ExitCode, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use memtrace_tests::fixtures::{build_go_program, target_dir, Variant};

use crate::{build, command::describe};

#[derive(clap::Args)]
pub struct Options {
    /// Allocations per run (the program's N).
    #[arg(long, default_value_t = 2_000_000)]
    allocs: u32,
    /// Allocating goroutines (the program's G).
    #[arg(long, default_value_t = 2)]
    goroutines: u32,
    /// Rounds; each runs every case once.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// The Go version to build the program with.
    #[arg(long, default_value = "1.26.6")]
    go: String,
    /// Allocations per run for the sampled-mode comparison.
    #[arg(long, default_value_t = 60_000_000)]
    sampled_allocs: u32,
    /// Requests (goroutines) per run of the goroutine benchmark.
    #[arg(long, default_value_t = 200_000)]
    goroutine_requests: u32,
    /// Run only the goroutine benchmark.
    #[arg(long)]
    goroutines_only: bool,
    /// Run only the recordings (`memtrace record`) and their replays.
    #[arg(long, conflicts_with = "goroutines_only")]
    recording_only: bool,
    /// Allocations of the all-allocs recording.
    #[arg(long, default_value_t = 12_000_000)]
    record_allocs: u32,
    /// Allocating goroutines of the all-allocs recording: one leaves memtrace a core on a
    /// 2-vCPU machine (with two, its consumer starves and the ring buffer drops events).
    #[arg(long, default_value_t = 1)]
    record_goroutines: u32,
    /// `--stack-sample-bytes` of the all-allocs recording: small, for millions of events
    /// (about 2 million with the defaults, in under 10 s).
    #[arg(long, default_value_t = 160)]
    record_stack_sample_bytes: u64,
    /// `--sample-rate` of the sampled-mode recording (of --sampled-allocs allocations): high,
    /// for about a million events.
    #[arg(long, default_value_t = 4096)]
    record_sample_rate: u64,
    /// Requests (goroutines) of the goroutine-heavy recording.
    #[arg(long, default_value_t = 1_000_000)]
    record_goroutine_requests: u32,
    /// Replays of each recorded trace.
    #[arg(long, default_value_t = 5)]
    replays: u32,
    /// Run only the agent benchmark (`memtrace agent` tracing 20 Go programs at once).
    #[arg(long, conflicts_with_all = ["goroutines_only", "recording_only"])]
    agent_only: bool,
    /// Rounds of the agent benchmark; each starts the programs and the agent afresh.
    #[arg(long, default_value_t = 3)]
    agent_rounds: u32,
    /// Seconds of the agent benchmark's traced window; the programs' untraced CPU is measured
    /// over as long, half before the agent starts and half after it stopped.
    #[arg(long, default_value_t = 60)]
    agent_window: u64,
}

struct Case {
    name: &'static str,
    /// `None` runs the program directly, else under memtrace with these options.
    memtrace_args: Option<&'static [&'static str]>,
    /// Environment for the program.
    env: &'static [(&'static str, &'static str)],
    /// Under `memtrace record`, writing a trace and a JSON report (needs `memtrace_args`).
    record: bool,
}

const UNTRACED: usize = 0;
const PROBE_FLOOR: usize = 1;
const ALL_ALLOCS: usize = 2;
const RECORDED: usize = 3;
const CASES: [Case; 4] = [
    Case {
        name: "untraced",
        memtrace_args: None,
        env: &[],
        record: false,
    },
    Case {
        name: "probe-floor",
        memtrace_args: Some(&["--probe-floor", "--no-live"]),
        env: &[],
        record: false,
    },
    Case {
        name: "all-allocs",
        memtrace_args: Some(&["--all-allocs", "--no-live"]),
        env: &[],
        record: false,
    },
    Case {
        name: "recorded",
        memtrace_args: Some(&["--all-allocs", "--no-live"]),
        env: &[],
        record: true,
    },
];

/// Records per second a replay should reach on one core.
const REPLAY_GOAL: f64 = 3_000_000.0;

/// One run of one case; times in nanoseconds.
#[derive(Clone, Copy)]
struct Measurement {
    /// The program's own `ELAPSED_NS`: its allocation loops only.
    elapsed: f64,
    /// From spawning to reaping the process (memtrace's start-up and attach included).
    wall: f64,
    /// The program's user + system CPU over its allocation loops (`CPU_NS`; the probes run in
    /// its threads, so their cost is in here), else that of the whole process tree.
    cpu: f64,
    /// User + system CPU of the whole process tree (memtrace's own threads included: its
    /// consumer and a recording's writer).
    tree_cpu: f64,
}

/// Per case: its measurements, or why it was dropped.
type Results = Vec<Result<Vec<Measurement>, String>>;

pub fn run(options: &Options) -> Result<ExitCode> {
    ensure!(options.rounds > 0, "--rounds must be at least 1");
    ensure!(
        options.goroutines > 0 && options.allocs >= options.goroutines,
        "--allocs must be at least --goroutines, and both positive"
    );
    ensure!(
        options.agent_rounds > 0,
        "--agent-rounds must be at least 1"
    );
    ensure!(
        options.agent_window >= 10,
        "--agent-window must be at least 10 (seconds)"
    );
    let (_tools, memtrace) = build::run()?;
    if options.agent_only {
        return Ok(if agent(&memtrace, options)? {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    if options.goroutines_only {
        return Ok(if goroutine_heavy(&memtrace, options)? {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    ensure!(options.replays > 0, "--replays must be at least 1");
    ensure!(
        options.record_goroutines > 0 && options.record_allocs >= options.record_goroutines,
        "--record-allocs must be at least --record-goroutines, and both positive"
    );
    let program = build_go_program("bench", &options.go, Variant::Default, &[], "")?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("xtask: note: the traced cases need root; without it they fail and are dropped");
    }
    let traces = target_dir().join("bench-traces");
    std::fs::create_dir_all(&traces)
        .with_context(|| format!("cannot create {}", traces.display()))?;
    if options.recording_only {
        return Ok(if recordings(&memtrace, &program, &traces, options)? {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }

    let output = TraceOutput::new(&traces, "rounds");
    let mut results: Results = CASES.iter().map(|_| Ok(Vec::new())).collect();
    let mut recorded: Vec<Recorded> = Vec::new();
    for round in 1..=options.rounds {
        for (case, result) in CASES.iter().zip(&mut results) {
            let Ok(measurements) = result else { continue };
            let mut command = case_command(
                case,
                &memtrace,
                &program,
                options.allocs,
                options,
                Some(&output),
            );
            let run = measure_with_stderr(&mut command).and_then(|(measurement, stderr)| {
                let recording = if case.record {
                    Some(Recorded::read(case.name, &output, &stderr, &measurement)?)
                } else {
                    None
                };
                Ok((measurement, recording))
            });
            match run {
                Ok((measurement, recording)) => {
                    print_round(round, options.rounds, case.name, &measurement);
                    if let Some(recording) = recording {
                        println!("bench:   {}", recording.summary());
                        recorded.push(recording);
                    }
                    measurements.push(measurement);
                }
                Err(error) => {
                    println!("bench: {}: FAILED, dropped: {error:#}", case.name);
                    *result = Err(format!("{error:#}"));
                }
            }
        }
    }
    print!("{}", report(&results, &recorded, options));
    let writer_kept_up = recorded.iter().all(|r| r.unrecorded == 0);
    let sampled_ok = sampled_mode(&memtrace, &program, options)?;
    per_sample_cost(&memtrace, &program, options)?;
    let goroutines_ok = goroutine_heavy(&memtrace, options)?;
    let recordings_ok = recordings(&memtrace, &program, &traces, options)?;
    analysis_throughput(&program)?;
    let agent_ok = agent(&memtrace, options)?;
    Ok(
        if results[UNTRACED].is_ok()
            && writer_kept_up
            && sampled_ok
            && goroutines_ok
            && recordings_ok
            && agent_ok
        {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

/// Untraced against the default sampled mode, on a long run; prints the medians and ratio.
fn sampled_mode(memtrace: &Path, program: &Path, options: &Options) -> Result<bool> {
    let cases = [
        Case {
            name: "untraced",
            memtrace_args: None,
            env: &[],
            record: false,
        },
        Case {
            name: "profiler-on",
            memtrace_args: None,
            env: &[("BENCH_MEMPROFILERATE", "524288")],
            record: false,
        },
        Case {
            name: "sampled",
            memtrace_args: Some(&["--no-live"]),
            env: &[],
            record: false,
        },
    ];
    let mut runs: [Vec<Measurement>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for round in 1..=options.rounds {
        for (case, runs) in cases.iter().zip(&mut runs) {
            let mut command = case_command(
                case,
                memtrace,
                program,
                options.sampled_allocs,
                options,
                None,
            );
            match measure(&mut command) {
                Ok(measurement) => {
                    print_round(round, options.rounds, case.name, &measurement);
                    runs.push(measurement);
                }
                Err(error) => {
                    println!("bench: {}: FAILED: {error:#}", case.name);
                    return Ok(false);
                }
            }
        }
    }
    let medians = [
        median_measurement(&runs[0]),
        median_measurement(&runs[1]),
        median_measurement(&runs[2]),
    ];
    let [Some(untraced), Some(profiler), Some(sampled)] = medians else {
        return Ok(false);
    };
    println!(
        "\nsampled mode (default, MemProfileRate 512 KiB), bench {} allocations, medians of {} rounds:",
        options.sampled_allocs, options.rounds
    );
    println!(
        "untraced {}  profiler-on (the runtime's own heap profiler, no tracer) {}  sampled {}",
        format_ns(untraced.elapsed),
        format_ns(profiler.elapsed),
        format_ns(sampled.elapsed)
    );
    let measured = [untraced, profiler, sampled];
    for (label, traced, baseline) in [
        ("sampled vs untraced", 2, 0),
        ("profiler-on vs untraced", 1, 0),
        ("sampled vs profiler-on", 2, 1),
    ] {
        let per_round = median(
            runs[traced]
                .iter()
                .zip(&runs[baseline])
                .map(|(t, b)| t.elapsed / b.elapsed),
        );
        println!(
            "{label:<26} elapsed ratio {:.4}x (median of per-round ratios {:.4}x), CPU ratio {:.4}x",
            measured[traced].elapsed / measured[baseline].elapsed,
            per_round.unwrap_or(f64::NAN),
            measured[traced].cpu / measured[baseline].cpu,
        );
    }
    Ok(true)
}

/// What memtrace adds per sampled object (its allocation probe and its death probe): the
/// program's CPU at a high sampling rate (16 KiB, ~40,000 samples) under memtrace minus the
/// same with only the runtime's profiler on, divided by the objects memtrace reports sampled.
/// From it, the CPU overhead this implies at the default 512 KiB on this program, measured with
/// less noise than the end-to-end ratio.
fn per_sample_cost(memtrace: &Path, program: &Path, options: &Options) -> Result<()> {
    const RATE: &str = "16384";
    const ALLOCS: u32 = 20_000_000;
    let json = std::env::temp_dir().join(format!("memtrace-bench-{}.json", std::process::id()));
    let mut costs = Vec::new();
    let mut untraced_cpu = Vec::new();
    for _ in 0..options.rounds {
        let mut untraced = Command::new(program);
        untraced
            .arg(ALLOCS.to_string())
            .arg(options.goroutines.to_string());
        untraced_cpu.push(measure(&mut untraced)?.cpu);
        let mut profiler = Command::new(program);
        profiler
            .env("BENCH_MEMPROFILERATE", RATE)
            .arg(ALLOCS.to_string())
            .arg(options.goroutines.to_string());
        let profiler = measure(&mut profiler)?;
        let mut traced = Command::new(memtrace);
        traced
            .args(["--no-live", "--sample-rate", RATE, "--json"])
            .arg(&json)
            .arg("--")
            .arg(program)
            .arg(ALLOCS.to_string())
            .arg(options.goroutines.to_string());
        let traced = measure(&mut traced)?;
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json)?)?;
        let samples = report["events"]["objects_sampled"].as_f64().unwrap_or(0.0);
        ensure!(samples > 0.0, "memtrace reported no samples");
        costs.push((traced.cpu - profiler.cpu) / samples);
    }
    let _ = std::fs::remove_file(&json);
    let cost = median(costs.iter().copied()).unwrap_or(f64::NAN);
    let cpu = median(untraced_cpu.iter().copied()).unwrap_or(f64::NAN);
    // 32-byte objects; one sample per 512 KiB on average.
    let default_samples = f64::from(ALLOCS) * 32.0 / 524_288.0;
    println!(
        "\nper sampled object (its allocation and death probes; the consumer excluded), \
         MemProfileRate {RATE}, median of {} rounds: {cost:.0} ns of the program's CPU\n\
         implied at the default 512 KiB on this program: {default_samples:.0} samples, \
         {:.2}% of its {} CPU",
        options.rounds,
        100.0 * cost * default_samples / cpu,
        format_ns(cpu),
    );
    Ok(())
}

/// Work per request of the goroutine benchmark (hash rounds over 256 bytes) and what it makes
/// of the program on this 2-vCPU VM: about 50,000 goroutines per second ("tens of thousands":
/// a busy server), about 120,000, and about 400,000 (nothing but goroutine churn: the worst
/// case).
const GOROUTINE_WORKLOADS: [(u32, &str); 3] =
    [(160, "server-like"), (64, "busier"), (16, "churn only")];

/// memtrace on a goroutine-heavy program: untraced, traced with goroutine tracking (the
/// default) and traced without it (`--no-goroutines`), interleaved; prints medians, ratios and
/// the program CPU each goroutine costs.
fn goroutine_heavy(memtrace: &Path, options: &Options) -> Result<bool> {
    let program = build_go_program("gobench", &options.go, Variant::Default, &[], "")?;
    let requests = options.goroutine_requests.to_string();
    let mut ok = true;
    for (work, label) in GOROUTINE_WORKLOADS {
        let work = work.to_string();
        let cases: [(&str, Option<&[&str]>); 3] = [
            ("untraced", None),
            ("traced", Some(&["--no-live"])),
            ("no-goroutines", Some(&["--no-live", "--no-goroutines"])),
        ];
        let mut runs: [Vec<Measurement>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        for round in 1..=options.rounds {
            for ((name, memtrace_args), runs) in cases.iter().zip(&mut runs) {
                let mut command = match memtrace_args {
                    None => Command::new(&program),
                    Some(args) => {
                        let mut command = Command::new(memtrace);
                        command.args(*args).arg("--").arg(&program);
                        command
                    }
                };
                command.args([&requests, &work]);
                match measure(&mut command) {
                    Ok(measurement) => {
                        print_round(round, options.rounds, name, &measurement);
                        runs.push(measurement);
                    }
                    Err(error) => {
                        println!("bench: {name}: FAILED: {error:#}");
                        ok = false;
                    }
                }
            }
        }
        let [Some(untraced), Some(traced), Some(without)] = [
            median_measurement(&runs[0]),
            median_measurement(&runs[1]),
            median_measurement(&runs[2]),
        ] else {
            continue;
        };
        let goroutines = f64::from(options.goroutine_requests);
        println!(
            "\ngoroutine-heavy ({label}): gobench {requests} goroutines, {work} hash rounds each, \
             medians of {} rounds; untraced {:.0} goroutines/s",
            options.rounds,
            goroutines / (untraced.elapsed / 1e9),
        );
        for (name, index, baseline) in [
            ("traced vs untraced", 1, 0),
            ("no-goroutines vs untraced", 2, 0),
            ("traced vs no-goroutines", 1, 2),
        ] {
            let measured = [untraced, traced, without];
            let per_round = median(
                runs[index]
                    .iter()
                    .zip(&runs[baseline])
                    .map(|(t, b)| t.elapsed / b.elapsed),
            );
            println!(
                "{name:<27} elapsed ratio {:.4}x (median of per-round ratios {:.4}x), CPU ratio {:.4}x",
                measured[index].elapsed / measured[baseline].elapsed,
                per_round.unwrap_or(f64::NAN),
                measured[index].cpu / measured[baseline].cpu,
            );
        }
        println!(
            "goroutine tracking costs {:.0} ns of the program's CPU per goroutine",
            (traced.cpu - without.cpu) / goroutines
        );
    }
    Ok(ok)
}

/// Where a recording writes: its trace file and its JSON report.
struct TraceOutput {
    trace: PathBuf,
    json: PathBuf,
}

impl TraceOutput {
    fn new(dir: &Path, name: &str) -> TraceOutput {
        TraceOutput {
            trace: dir.join(format!("{name}.mtr")),
            json: dir.join(format!("{name}.json")),
        }
    }

    /// Adds `record -o TRACE --json JSON` (the start of memtrace's arguments), and removes
    /// what a previous run wrote there, so a failed run cannot pass for a good one.
    fn record_args(&self, command: &mut Command) {
        let _ = std::fs::remove_file(&self.trace);
        let _ = std::fs::remove_file(&self.json);
        command
            .arg("record")
            .arg("-o")
            .arg(&self.trace)
            .arg("--json")
            .arg(&self.json);
    }
}

/// A trace `memtrace record` wrote, and what the session said about it.
struct Recorded {
    label: String,
    trace: PathBuf,
    /// Records written, from `memtrace: recorded N events ...` on stderr.
    events: u64,
    /// The file's size.
    bytes: u64,
    /// `events.unrecorded` of the JSON report: records the trace writer dropped because it fell
    /// behind (or failed).
    unrecorded: u64,
    /// `events.dropped`: records lost in the ring buffer (memtrace's consumer fell behind; the
    /// writer does not block it).
    dropped: u64,
    /// The program's own run time (`ELAPSED_NS`), for the event rate.
    elapsed: f64,
}

impl Recorded {
    fn read(
        label: &str,
        output: &TraceOutput,
        stderr: &str,
        measurement: &Measurement,
    ) -> Result<Recorded> {
        let events = recorded_events(stderr).with_context(|| {
            format!(
                "no `memtrace: recorded N events` line on stderr:\n{}",
                last_lines(stderr, 10)
            )
        })?;
        let bytes = std::fs::metadata(&output.trace)
            .with_context(|| format!("no trace file {}", output.trace.display()))?
            .len();
        let (dropped, unrecorded) = json_losses(&output.json)?;
        Ok(Recorded {
            label: label.to_owned(),
            trace: output.trace.clone(),
            events,
            bytes,
            unrecorded,
            dropped,
            elapsed: measurement.elapsed,
        })
    }

    fn bytes_per_million_events(&self) -> f64 {
        self.bytes as f64 * 1e6 / (self.events.max(1) as f64)
    }

    fn events_per_second(&self) -> f64 {
        self.events as f64 / (self.elapsed / 1e9)
    }

    fn summary(&self) -> String {
        format!(
            "recorded {} events ({}/s of the program's run), {} ({} per million events), \
             unrecorded {}{}, ring-buffer drops {}",
            format_count(self.events as f64),
            format_count(self.events_per_second()),
            format_bytes(self.bytes as f64),
            format_bytes(self.bytes_per_million_events()),
            self.unrecorded,
            if self.unrecorded == 0 {
                ""
            } else {
                " (FAILED: must be 0)"
            },
            self.dropped,
        )
    }
}

/// N of `memtrace: recorded N events (...) to FILE...` in `stderr`.
fn recorded_events(stderr: &str) -> Option<u64> {
    stderr
        .lines()
        .filter_map(|line| line.strip_prefix("memtrace: recorded "))
        .next_back()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `events.dropped` and `events.unrecorded` (absent when 0) of the JSON report at `path`.
fn json_losses(path: &Path) -> Result<(u64, u64)> {
    let text = std::fs::read(path).with_context(|| format!("no JSON report {}", path.display()))?;
    let report: serde_json::Value = serde_json::from_slice(&text)
        .with_context(|| format!("cannot parse {}", path.display()))?;
    let events = &report["events"];
    ensure!(events.is_object(), "{} has no `events`", path.display());
    Ok((
        events["dropped"].as_u64().unwrap_or(0),
        events["unrecorded"].as_u64().unwrap_or(0),
    ))
}

/// Records real workloads with `memtrace record` and replays each trace: prints what the
/// traces hold and cost, and the replay speed. False if a run failed or the writer dropped
/// records.
fn recordings(memtrace: &Path, program: &Path, traces: &Path, options: &Options) -> Result<bool> {
    let mut ok = true;
    let mut recorded: Vec<Recorded> = Vec::new();
    match all_allocs_recording(memtrace, program, traces, options) {
        Ok(mut rounds) => {
            ok &= rounds.iter().all(|r| r.unrecorded == 0);
            // Every round wrote the same file: the last one is on disk.
            recorded.extend(rounds.pop());
        }
        Err(error) => {
            println!("bench: all-allocs recording: FAILED: {error:#}");
            ok = false;
        }
    }

    let rate = options.record_sample_rate.to_string();
    let sampled = record_once(
        &format!("sampled ({} B rate)", options.record_sample_rate),
        memtrace,
        &TraceOutput::new(traces, "sampled"),
        &["--no-live", "--sample-rate", &rate],
        program,
        &[
            options.sampled_allocs.to_string(),
            options.goroutines.to_string(),
        ],
    );
    let gobench = build_go_program("gobench", &options.go, Variant::Default, &[], "")?;
    let (work, _) = GOROUTINE_WORKLOADS[GOROUTINE_WORKLOADS.len() - 1];
    let goroutines = record_once(
        &format!(
            "goroutines ({} gobench)",
            format_count(f64::from(options.record_goroutine_requests))
        ),
        memtrace,
        &TraceOutput::new(traces, "goroutines"),
        &["--no-live"],
        &gobench,
        &[
            options.record_goroutine_requests.to_string(),
            work.to_string(),
        ],
    );
    for (name, result) in [("sampled", sampled), ("goroutines", goroutines)] {
        match result {
            Ok(recording) => {
                ok &= recording.unrecorded == 0;
                recorded.push(recording);
            }
            Err(error) => {
                println!("bench: {name} recording: FAILED: {error:#}");
                ok = false;
            }
        }
    }

    println!("\nrecordings (traces in {}):", traces.display());
    println!(
        "{:<31} {:>11} {:>10} {:>13} {:>11} {:>10} {:>9}",
        "trace", "events", "file", "per M events", "events/s", "unrecorded", "rb drops"
    );
    for r in &recorded {
        println!(
            "{:<31} {:>11} {:>10} {:>13} {:>11} {:>10} {:>9}",
            r.label,
            format_count(r.events as f64),
            format_bytes(r.bytes as f64),
            format_bytes(r.bytes_per_million_events()),
            format_count(r.events_per_second()),
            r.unrecorded,
            r.dropped,
        );
    }
    println!(
        "(events/s: over the program's own run time; unrecorded: records the trace writer \
         dropped, must be 0; rb drops: ring-buffer drops, before the writer)"
    );

    println!(
        "\nreplay (`memtrace report FILE -v`, one thread, so records/s is per core), \
         medians of {} runs; goal {} records/s:",
        options.replays,
        format_count(REPLAY_GOAL)
    );
    // Interleaved, so drifting machine load hits every trace alike.
    let mut replays: Vec<Result<Vec<ReplayRun>, String>> =
        recorded.iter().map(|_| Ok(Vec::new())).collect();
    for _ in 0..options.replays {
        for (r, runs) in recorded.iter().zip(&mut replays) {
            let Ok(list) = runs else { continue };
            match replay_once(memtrace, &r.trace) {
                Ok(run) => list.push(run),
                Err(error) => *runs = Err(format!("{error:#}")),
            }
        }
    }
    println!(
        "{:<31} {:>11} {:>6} {:>9} {:>11} {:>9} {:>9} {:>11}  goal",
        "trace", "records", "chunks", "replay", "records/s", "process", "proc CPU", "rec/CPU-s"
    );
    for (r, runs) in recorded.iter().zip(&replays) {
        let runs = match runs {
            Ok(runs) => runs,
            Err(error) => {
                println!("{:<31} FAILED: {error}", r.label);
                ok = false;
                continue;
            }
        };
        let Some(last) = runs.last() else { continue };
        let rate = median(runs.iter().map(|run| run.rate)).unwrap_or(f64::NAN);
        let cpu = median(runs.iter().map(|run| run.cpu)).unwrap_or(f64::NAN);
        println!(
            "{:<31} {:>11} {:>6} {:>9} {:>11} {:>9} {:>9} {:>11}  {}",
            r.label,
            format_count(last.records as f64),
            last.chunks,
            format_ns(median(runs.iter().map(|run| run.seconds * 1e9)).unwrap_or(f64::NAN)),
            format_count(rate),
            format_ns(median(runs.iter().map(|run| run.wall)).unwrap_or(f64::NAN)),
            format_ns(cpu),
            format_count(last.records as f64 / (cpu / 1e9)),
            if rate >= REPLAY_GOAL {
                "met"
            } else {
                "NOT met"
            },
        );
    }
    println!(
        "(replay, records/s: what `memtrace report -v` logs for reading and analysing the event \
         chunks, wall clock; process, proc CPU: the whole command, reading symbols and building \
         the report included; rec/CPU-s: records per CPU-second of the whole command, a \
         lower bound on the per-core speed that machine load does not skew)"
    );
    Ok(ok)
}

/// `bench` under `memtrace --all-allocs` with a small `--stack-sample-bytes`, traced and
/// recorded, with untraced, interleaved in rounds; prints the medians and ratios and returns
/// every round's recording (all written to the same file).
fn all_allocs_recording(
    memtrace: &Path,
    program: &Path,
    traces: &Path,
    options: &Options,
) -> Result<Vec<Recorded>> {
    const NAMES: [&str; 3] = ["untraced", "traced", "recorded"];
    let stack_sample_bytes = options.record_stack_sample_bytes.to_string();
    let tracing = [
        "--all-allocs",
        "--stack-sample-bytes",
        &stack_sample_bytes,
        "--no-live",
    ];
    let label = format!("all-allocs ({stack_sample_bytes} B stacks)");
    let program_args = [
        options.record_allocs.to_string(),
        options.record_goroutines.to_string(),
    ];
    let traced_json = traces.join("all-allocs-traced.json");
    let output = TraceOutput::new(traces, "all-allocs");
    let mut runs: [Vec<Measurement>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut traced_drops = Vec::new();
    let mut recorded = Vec::new();
    for round in 1..=options.rounds {
        for (index, name) in NAMES.iter().enumerate() {
            let mut command = if index == 0 {
                Command::new(program)
            } else {
                let mut command = Command::new(memtrace);
                if index == 1 {
                    let _ = std::fs::remove_file(&traced_json);
                    command.arg("--json").arg(&traced_json);
                } else {
                    output.record_args(&mut command);
                }
                command.args(tracing).arg("--").arg(program);
                command
            };
            command.args(&program_args);
            let (measurement, stderr) =
                measure_with_stderr(&mut command).with_context(|| format!("the {name} run"))?;
            print_round(round, options.rounds, name, &measurement);
            match index {
                1 => {
                    let (dropped, _) = json_losses(&traced_json)?;
                    println!("bench:   ring-buffer drops {dropped}");
                    traced_drops.push(dropped);
                }
                2 => {
                    let recording = Recorded::read(&label, &output, &stderr, &measurement)?;
                    println!("bench:   {}", recording.summary());
                    recorded.push(recording);
                }
                _ => {}
            }
            runs[index].push(measurement);
        }
    }
    let medians = [
        median_measurement(&runs[0]),
        median_measurement(&runs[1]),
        median_measurement(&runs[2]),
    ];
    let [Some(untraced), Some(traced), Some(recorded_median)] = medians else {
        bail!("no rounds");
    };
    let allocs =
        f64::from(options.record_allocs / options.record_goroutines * options.record_goroutines);
    let events = median(recorded.iter().map(|r| r.events as f64)).unwrap_or(f64::NAN);
    println!(
        "\nall-allocs recording: bench {} allocations on {} goroutines, --stack-sample-bytes {}, \
         medians of {} rounds:",
        options.record_allocs, options.record_goroutines, stack_sample_bytes, options.rounds
    );
    println!(
        "{:<10} {:>10} {:>10} {:>10} {:>10} {:>14}",
        "case", "elapsed", "ns/alloc", "wall", "CPU", "process CPU"
    );
    let measured = [untraced, traced, recorded_median];
    for (name, m) in NAMES.iter().zip(&measured) {
        println!(
            "{name:<10} {:>10} {:>10.1} {:>10} {:>10} {:>14}",
            format_ns(m.elapsed),
            m.elapsed / allocs,
            format_ns(m.wall),
            format_ns(m.cpu),
            format_ns(m.tree_cpu),
        );
    }
    println!(
        "{:<22} {:>14} {:>11} {:>10} {:>18}",
        "comparison", "elapsed ratio", "wall ratio", "CPU ratio", "process CPU ratio"
    );
    for (label, index, baseline) in [
        ("traced vs untraced", 1, 0),
        ("recorded vs untraced", 2, 0),
        ("recorded vs traced", 2, 1),
    ] {
        let per_round = median(
            runs[index]
                .iter()
                .zip(&runs[baseline])
                .map(|(t, b)| t.elapsed / b.elapsed),
        )
        .unwrap_or(f64::NAN);
        let (t, b) = (measured[index], measured[baseline]);
        println!(
            "{label:<22} {:>13.3}x {:>10.3}x {:>9.3}x {:>17.3}x   (per-round elapsed ratio {per_round:.3}x)",
            t.elapsed / b.elapsed,
            t.wall / b.wall,
            t.cpu / b.cpu,
            t.tree_cpu / b.tree_cpu,
        );
    }
    println!(
        "recording adds {:.0} ns of process CPU (memtrace's writer: encoding, zstd, writes) per \
         recorded event; median {} events per run; ring-buffer drops: traced median {:.0}, \
         recorded median {:.0}; unrecorded at most {}",
        (recorded_median.tree_cpu - traced.tree_cpu) / events,
        format_count(events),
        median(traced_drops.iter().map(|&d| d as f64)).unwrap_or(f64::NAN),
        median(recorded.iter().map(|r| r.dropped as f64)).unwrap_or(f64::NAN),
        recorded.iter().map(|r| r.unrecorded).max().unwrap_or(0),
    );
    Ok(recorded)
}

/// One `memtrace record` run of `program args` with `tracing` options.
fn record_once(
    label: &str,
    memtrace: &Path,
    output: &TraceOutput,
    tracing: &[&str],
    program: &Path,
    args: &[String],
) -> Result<Recorded> {
    let mut command = Command::new(memtrace);
    output.record_args(&mut command);
    command.args(tracing).arg("--").arg(program).args(args);
    let (measurement, stderr) = measure_with_stderr(&mut command)?;
    let recording = Recorded::read(label, output, &stderr, &measurement)?;
    println!(
        "bench: {label}: elapsed {}  wall {}: {}",
        format_ns(measurement.elapsed),
        format_ns(measurement.wall),
        recording.summary()
    );
    Ok(recording)
}

/// One `memtrace report` of a trace, from its `replayed ...` log line.
struct ReplayRun {
    records: u64,
    chunks: u64,
    /// The replay's own time, as logged.
    seconds: f64,
    /// Records per second, as logged.
    rate: f64,
    /// The whole command's wall time, in nanoseconds.
    wall: f64,
    /// The whole command's user + system CPU time, in nanoseconds.
    cpu: f64,
}

fn replay_once(memtrace: &Path, trace: &Path) -> Result<ReplayRun> {
    let mut command = Command::new(memtrace);
    command
        .arg("report")
        .arg(trace)
        .arg("-v")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot run `{}`", describe(&command)))?;
    let mut stderr = String::new();
    // A read error only shortens the diagnostics.
    let _ = child
        .stderr
        .take()
        .context("no stderr pipe")?
        .read_to_string(&mut stderr);
    let (status, cpu) = wait_with_rusage(child.id())
        .with_context(|| format!("cannot wait for `{}`", describe(&command)))?;
    let wall = duration_ns(started.elapsed());
    ensure!(
        status.success(),
        "`{}` failed: {status}\n{}",
        describe(&command),
        last_lines(&stderr, 10)
    );
    let (records, chunks, seconds, rate) = parse_replayed(&stderr).with_context(|| {
        format!(
            "no `replayed N records ...` line from `{}`:\n{}",
            describe(&command),
            last_lines(&stderr, 10)
        )
    })?;
    Ok(ReplayRun {
        records,
        chunks,
        seconds,
        rate,
        wall,
        cpu: duration_ns(cpu),
    })
}

/// Records, chunks, seconds and records/s of `replayed N records from C chunks in X.XXXs: R
/// records/s` in `text`.
fn parse_replayed(text: &str) -> Option<(u64, u64, f64, f64)> {
    let line = text
        .lines()
        .filter_map(|line| line.split_once("replayed ").map(|(_, rest)| rest))
        .next_back()?;
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [records, "records", "from", chunks, "chunks", "in", seconds, rate, "records/s", ..] => {
            Some((
                records.parse().ok()?,
                chunks.parse().ok()?,
                seconds.strip_suffix("s:")?.parse().ok()?,
                rate.parse().ok()?,
            ))
        }
        _ => None,
    }
}

fn print_round(round: u32, rounds: u32, name: &str, measurement: &Measurement) {
    println!(
        "bench: round {round}/{rounds}: {name:<12} elapsed {:>10}  wall {:>10}  CPU {:>10}",
        format_ns(measurement.elapsed),
        format_ns(measurement.wall),
        format_ns(measurement.cpu),
    );
}

/// Runs the replay example and passes its output through.
fn analysis_throughput(program: &Path) -> Result<()> {
    println!("\nuserspace tracking (synthetic records, one core):");
    let status = Command::new(env!("CARGO"))
        .args([
            "run",
            "--quiet",
            "--release",
            "--package",
            "memtrace",
            "--example",
            "analysis_throughput",
            "--",
        ])
        .arg(program)
        .status()
        .context("running the analysis_throughput example")?;
    ensure!(status.success(), "analysis_throughput failed: {status}");
    Ok(())
}

/// Programs `memtrace agent` traces at once in the agent benchmark.
const AGENT_PROGRAMS: usize = 20;
/// The agent benchmark's second Go version (the first is `--go`): a program built with each is
/// two binaries, each with its own set of probes.
const AGENT_SECOND_GO: &str = "1.24.11";
/// The agent's goal at the default rate with [`AGENT_PROGRAMS`] programs: CPU, in percent of one
/// core...
const AGENT_CPU_GOAL_PERCENT: f64 = 2.0;
/// ...and resident memory (150 MB, in bytes).
const AGENT_RSS_GOAL_BYTES: f64 = 150e6;
/// From the programs' `READY` to their first measured window: start-up done, `tableonce`'s
/// table built.
const AGENT_WARM_UP: Duration = Duration::from_secs(5);
/// From the agent tracing every program to its measured window (attach and start-up work done,
/// the first goroutine scans and GC cycles seen), and from its exit to the second untraced
/// window.
const AGENT_SETTLE: Duration = Duration::from_secs(10);
/// How long the agent may take to answer `/readyz` and to trace every program.
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the agent and the programs may take to exit after SIGTERM.
const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The agent's RSS is sampled this often during its window...
const AGENT_RSS_INTERVAL: Duration = Duration::from_secs(5);
/// ...and `/metrics` scraped every this many samples (every 15 s, as Prometheus commonly does;
/// the scrapes are part of what the agent's CPU pays for).
const AGENT_SCRAPE_EVERY: u64 = 3;

/// One program of the agent benchmark's workload.
struct AgentProgram {
    /// `leaks globalmap (leak, Go 1.26.6)`.
    label: String,
    /// The binary's file name in the benchmark's directory: `leaks-1.26.6`.
    binary: String,
    exe: PathBuf,
    args: Vec<String>,
}

/// What one round of the agent benchmark measured.
struct AgentRound {
    /// The agent's user + system CPU over its window, in percent of one core.
    agent_cpu_percent: f64,
    /// The agent's VmRSS at the window's start, its largest sample, and at the window's end.
    rss_start: f64,
    rss_max: f64,
    rss_final: f64,
    /// VmHWM at the window's end: the peak since the agent started (start-up included).
    rss_peak: f64,
    /// Records per second from all traced processes (`memtrace_events_total`).
    events_per_s: f64,
    /// `memtrace_events_dropped_total` (all processes): over the window, and since attaching.
    drops_window: f64,
    drops_total: f64,
    /// `memtrace_agent_events_lost_total` by kind, since the agent started.
    lost: Vec<(String, f64)>,
    /// `memtrace_agent_targets` at the window's end.
    targets: f64,
    /// The smallest and largest `memtrace_sample_rate_bytes` at the window's end.
    rate_range: (f64, f64),
    /// Processes `memtrace_budget_throttled` at the window's end.
    throttled: f64,
    /// The programs' total CPU in percent of one core: untraced (both windows) and traced.
    untraced_cpu_percent: f64,
    traced_cpu_percent: f64,
    /// Programs whose sample rate is not the default 512 KiB at the window's end, with it.
    unusual_rates: Vec<String>,
    /// Other `memtrace agent` processes seen during the window: they may trace the programs
    /// too (their probes, their rates), which skews the programs' numbers.
    other_agents: Vec<String>,
}

impl AgentRound {
    fn programs_ratio(&self) -> f64 {
        self.traced_cpu_percent / self.untraced_cpu_percent
    }

    fn lost_total(&self) -> f64 {
        self.lost.iter().map(|(_, count)| count).sum()
    }
}

/// The agent benchmark: `memtrace agent` tracing [`AGENT_PROGRAMS`] programs of the corpus at
/// once, in `--agent-rounds` rounds; prints each round and the medians against the goals. False
/// if a round failed: the agent crashed, missed programs, did not stop cleanly on SIGTERM, or a
/// program died.
///
/// Every round starts the programs afresh and measures their CPU untraced and traced side by
/// side: untraced for half the window before the agent starts and half after it stopped,
/// traced in between. Splitting the untraced time around the traced window cancels the drift
/// of the programs' own CPU over their run (leaked tickers that keep waking, leaked
/// goroutines the GC scans, growing heaps), which an untraced window only before would count
/// as tracing overhead. Per round that is about 5 s + W/2 + ~12 s + W + ~11 s + W/2: some
/// 150 s with the default 60 s window, 7.5 minutes for the default 3 rounds.
///
/// The agent traces only the programs' binaries (copied to `<target>/bench-agent/bin`, with
/// `--include` on that directory) so that Go programs others run on the machine meanwhile
/// neither count as targets nor add to its work; it still sees and filters every exec.
fn agent(memtrace: &Path, options: &Options) -> Result<bool> {
    let dir = target_dir().join("bench-agent");
    let programs = agent_workload(&dir, options)?;
    let window = Duration::from_secs(options.agent_window);
    let mut binaries: Vec<(&str, Vec<&str>)> = Vec::new();
    for program in &programs {
        match binaries
            .iter_mut()
            .find(|(binary, _)| *binary == program.binary)
        {
            Some((_, labels)) => labels.push(&program.label),
            None => binaries.push((&program.binary, vec![&program.label])),
        }
    }
    println!(
        "\nagent: `memtrace agent` (default sampled mode) tracing {} programs from {} binaries:",
        programs.len(),
        binaries.len()
    );
    for (binary, labels) in &binaries {
        println!("agent:   {binary} ×{}: {}", labels.len(), labels.join(", "));
    }

    let mut rounds = Vec::new();
    let mut ok = true;
    for round in 1..=options.agent_rounds {
        let round_dir = dir.join(format!("round-{round}"));
        match agent_round(
            memtrace, &programs, &dir, &round_dir, window, round, options,
        ) {
            Ok(measured) => rounds.push(measured),
            Err(error) => {
                println!(
                    "bench: agent round {round}/{}: FAILED: {error:#}",
                    options.agent_rounds
                );
                ok = false;
            }
        }
    }
    print!("{}", agent_report(&rounds, programs.len(), options));
    Ok(ok)
}

/// Builds the programs, copies their binaries to `<dir>/bin` (one file per program and Go
/// version, shared by the processes that run it), and lists the workload: every `leaks` and
/// `goleaks` pattern (as their `-list` prints them; every third with [`AGENT_SECOND_GO`]), then
/// `idle` with each Go version (two binaries of one process each) up to [`AGENT_PROGRAMS`].
fn agent_workload(dir: &Path, options: &Options) -> Result<Vec<AgentProgram>> {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("cannot create {}", bin.display()))?;
    let mut copied: Vec<(String, PathBuf)> = Vec::new();
    let mut binary = |name: &str, version: &str| -> Result<(String, PathBuf)> {
        let file_name = format!("{name}-{version}");
        if let Some((_, path)) = copied.iter().find(|(known, _)| *known == file_name) {
            return Ok((file_name, path.clone()));
        }
        let built = build_go_program(name, version, Variant::Default, &[], "")?;
        let path = bin.join(&file_name);
        // Unlinked first: a copy over a file a leftover process still runs fails (ETXTBSY).
        let _ = std::fs::remove_file(&path);
        std::fs::copy(&built, &path)
            .with_context(|| format!("cannot copy {} to {}", built.display(), path.display()))?;
        copied.push((file_name.clone(), path.clone()));
        Ok((file_name, path))
    };
    let versions = [options.go.as_str(), AGENT_SECOND_GO];
    let mut programs = Vec::new();
    for name in ["leaks", "goleaks"] {
        let (_, listed) = binary(name, versions[0])?;
        for (index, (pattern, kind)) in list_patterns(&listed)?.into_iter().enumerate() {
            let version = versions[usize::from(index % 3 == 2)];
            let (file_name, exe) = binary(name, version)?;
            programs.push(AgentProgram {
                label: format!("{name} {pattern} ({kind}, Go {version})"),
                binary: file_name,
                exe,
                args: ["-pattern", &pattern, "-duration", "0"]
                    .map(String::from)
                    .to_vec(),
            });
        }
    }
    for version in versions.iter().cycle() {
        if programs.len() >= AGENT_PROGRAMS {
            break;
        }
        let (file_name, exe) = binary("idle", version)?;
        programs.push(AgentProgram {
            label: format!("idle (Go {version})"),
            binary: file_name,
            exe,
            args: Vec::new(),
        });
    }
    programs.truncate(AGENT_PROGRAMS);
    Ok(programs)
}

/// The `PATTERN <name> <kind>` lines of `program -list`.
fn list_patterns(program: &Path) -> Result<Vec<(String, String)>> {
    let output = Command::new(program)
        .arg("-list")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {} -list", program.display()))?;
    ensure!(
        output.status.success(),
        "{} -list failed: {}",
        program.display(),
        output.status
    );
    let patterns: Vec<(String, String)> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(
            |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["PATTERN", name, kind] => Some((name.to_owned(), kind.to_owned())),
                _ => None,
            },
        )
        .collect();
    ensure!(
        !patterns.is_empty(),
        "{} -list printed no patterns",
        program.display()
    );
    Ok(patterns)
}

/// One round: programs, untraced window, agent, traced window, agent stopped, untraced window,
/// programs stopped.
fn agent_round(
    memtrace: &Path,
    programs: &[AgentProgram],
    dir: &Path,
    round_dir: &Path,
    window: Duration,
    round: u32,
    options: &Options,
) -> Result<AgentRound> {
    let rounds = options.agent_rounds;
    let _ = std::fs::remove_dir_all(round_dir);
    std::fs::create_dir_all(round_dir)
        .with_context(|| format!("cannot create {}", round_dir.display()))?;
    let mut fleet = Fleet::start(programs, round_dir)?;
    fleet.wait_ready(Duration::from_secs(10))?;
    thread::sleep(AGENT_WARM_UP);
    fleet.check_alive()?;

    let half = window / 2;
    let before = fleet.cpu_over(half)?;

    let port = memtrace_tests::fixtures::prometheus::free_port();
    let address = format!("127.0.0.1:{port}");
    let include = format!("exe={}/*", dir.join("bin").display());
    let mut agent =
        AgentProcess::start(memtrace, &address, &include, &round_dir.join("agent.log"))?;
    agent.wait_ready(&fleet)?;
    thread::sleep(AGENT_SETTLE);
    agent.check_running()?;
    fleet.check_alive()?;

    // The traced window. The scrape at its start is outside it, the one at its end inside:
    // one scrape per AGENT_RSS_INTERVAL * AGENT_SCRAPE_EVERY.
    let first = Scrape::get(&address)?;
    let mut others = other_agents(agent.pid());
    let agent_ticks = cpu_ticks(agent.pid())?;
    let program_ticks = fleet.cpu_ticks()?;
    let started = Instant::now();
    let mut rss = vec![status_bytes(agent.pid(), "VmRSS")?];
    let samples = window.as_secs().div_ceil(AGENT_RSS_INTERVAL.as_secs());
    let mut last = None;
    for sample in 1..=samples {
        let due = (AGENT_RSS_INTERVAL * u32::try_from(sample)?).min(window);
        thread::sleep(due.saturating_sub(started.elapsed()));
        agent.check_running()?;
        fleet.check_alive()?;
        if sample == samples {
            last = Some(Scrape::get(&address)?);
        } else if sample % AGENT_SCRAPE_EVERY == 0 {
            Scrape::get(&address)?;
        }
        rss.push(status_bytes(agent.pid(), "VmRSS")?);
    }
    let agent_ticks = cpu_ticks(agent.pid())?.saturating_sub(agent_ticks);
    let traced_ticks = fleet.cpu_ticks()?.saturating_sub(program_ticks);
    let traced_seconds = started.elapsed().as_secs_f64();
    let rss_peak = status_bytes(agent.pid(), "VmHWM")?;
    let last = last.context("no scrape at the window's end")?;
    for other in other_agents(agent.pid()) {
        if !others.contains(&other) {
            others.push(other);
        }
    }
    let unusual_rates = unusual_rates(&address, &fleet);

    let ticks_per_second = clock_ticks_per_second();
    let events = |scrape: &Scrape| scrape.per_pid("memtrace_events_total");
    let (events_first, events_last) = (events(&first), events(&last));
    let event_delta: f64 = events_last
        .iter()
        .filter_map(|(pid, count)| Some(count - events_first.get(pid)?))
        .sum();
    let rates: Vec<f64> = last
        .per_pid("memtrace_sample_rate_bytes")
        .into_values()
        .collect();
    let mut measured = AgentRound {
        agent_cpu_percent: 100.0 * agent_ticks as f64 / ticks_per_second / traced_seconds,
        rss_start: rss[0],
        rss_max: rss.iter().copied().fold(0.0, f64::max),
        rss_final: rss[rss.len() - 1],
        rss_peak,
        events_per_s: event_delta / traced_seconds,
        drops_window: last.sum("memtrace_events_dropped_total")
            - first.sum("memtrace_events_dropped_total"),
        drops_total: last.sum("memtrace_events_dropped_total"),
        lost: last
            .samples
            .iter()
            .filter(|sample| sample.name == "memtrace_agent_events_lost_total")
            .map(|sample| (sample.label("kind").unwrap_or("").to_owned(), sample.value))
            .collect(),
        targets: last.value("memtrace_agent_targets").unwrap_or(f64::NAN),
        rate_range: (
            rates.iter().copied().fold(f64::INFINITY, f64::min),
            rates.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        ),
        throttled: last.sum("memtrace_budget_throttled"),
        untraced_cpu_percent: f64::NAN,
        traced_cpu_percent: 100.0 * traced_ticks as f64 / ticks_per_second / traced_seconds,
        unusual_rates,
        other_agents: others,
    };
    println!(
        "bench: agent round {round}/{rounds}: traced {:.0} s: agent CPU {:.2}% of a core, \
         RSS {} -> {} (max {}, peak since start {}), {} events/s, drops {} (window) {} (total), \
         lost {}, programs' CPU {:.1}% of a core",
        traced_seconds,
        measured.agent_cpu_percent,
        format_mb(measured.rss_start),
        format_mb(measured.rss_final),
        format_mb(measured.rss_max),
        format_mb(measured.rss_peak),
        format_count(measured.events_per_s),
        format_count(measured.drops_window),
        format_count(measured.drops_total),
        format_count(measured.lost_total()),
        measured.traced_cpu_percent,
    );
    for rate in &measured.unusual_rates {
        println!("bench: agent round {round}/{rounds}: sample rate of {rate}");
    }
    for other in &measured.other_agents {
        println!(
            "bench: agent round {round}/{rounds}: note: another memtrace agent ran meanwhile \
             (it also traces these programs if its filters admit them): {other}"
        );
    }

    agent.stop()?;
    thread::sleep(AGENT_SETTLE);
    fleet.check_alive()?;
    let after = fleet.cpu_over(half)?;
    fleet.stop()?;

    let (ticks, seconds) = (before.0 + after.0, before.1 + after.1);
    measured.untraced_cpu_percent = 100.0 * ticks as f64 / ticks_per_second / seconds;
    println!(
        "bench: agent round {round}/{rounds}: programs' CPU untraced {:.1}% of a core \
         ({:.1}% over {:.0} s before the agent, {:.1}% over {:.0} s after), traced {:.1}%: \
         {:.3}x",
        measured.untraced_cpu_percent,
        100.0 * before.0 as f64 / ticks_per_second / before.1,
        before.1,
        100.0 * after.0 as f64 / ticks_per_second / after.1,
        after.1,
        measured.traced_cpu_percent,
        measured.programs_ratio(),
    );
    Ok(measured)
}

/// The agent benchmark's table: each round, the medians, and the goals.
fn agent_report(rounds: &[AgentRound], programs: usize, options: &Options) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nagent: {programs} programs traced at once, default sampled mode, {} s traced window \
         ({} s untraced around it) per round, {} of {} rounds measured\n",
        options.agent_window,
        options.agent_window / 2 * 2,
        rounds.len(),
        options.agent_rounds,
    );
    let _ = writeln!(
        out,
        "{:<7} {:>10} {:>9} {:>9} {:>14} {:>9} {:>7} {:>5} {:>10} {:>9} {:>9} {:>8}",
        "round",
        "agent CPU",
        "max RSS",
        "end RSS",
        "RSS growth",
        "events/s",
        "drops",
        "lost",
        "rates",
        "untraced",
        "traced",
        "ratio"
    );
    let row = |out: &mut String, name: &str, r: &AgentRound, ratio: f64| {
        let growth = (r.rss_final - r.rss_start) / 1e6 / (options.agent_window as f64 / 60.0);
        // Rates that differ are listed in the notes.
        let rates = if r.rate_range.0 == r.rate_range.1 {
            format_bytes(r.rate_range.0)
        } else {
            format!("≤{}", format_bytes(r.rate_range.1))
        };
        let _ = writeln!(
            out,
            "{name:<7} {:>9.2}% {:>9} {:>9} {:>+7.1} MB/min {:>9} {:>7} {:>5} {:>10} {:>8.1}% {:>8.1}% {:>7.3}x",
            r.agent_cpu_percent,
            format_mb(r.rss_max),
            format_mb(r.rss_final),
            growth,
            format_count(r.events_per_s),
            format_count(r.drops_total),
            format_count(r.lost_total()),
            rates,
            r.untraced_cpu_percent,
            r.traced_cpu_percent,
            ratio,
        );
    };
    for (index, r) in rounds.iter().enumerate() {
        row(&mut out, &(index + 1).to_string(), r, r.programs_ratio());
    }
    let pick = |value: fn(&AgentRound) -> f64| median(rounds.iter().map(value)).unwrap_or(f64::NAN);
    let Some(first) = rounds.first() else {
        let _ = writeln!(out, "no round measured: no numbers");
        return out;
    };
    let medians = AgentRound {
        agent_cpu_percent: pick(|r| r.agent_cpu_percent),
        rss_start: pick(|r| r.rss_start),
        rss_max: pick(|r| r.rss_max),
        rss_final: pick(|r| r.rss_final),
        rss_peak: pick(|r| r.rss_peak),
        events_per_s: pick(|r| r.events_per_s),
        drops_window: pick(|r| r.drops_window),
        drops_total: pick(|r| r.drops_total),
        lost: vec![(String::new(), pick(AgentRound::lost_total))],
        targets: pick(|r| r.targets),
        rate_range: (pick(|r| r.rate_range.0), pick(|r| r.rate_range.1)),
        throttled: pick(|r| r.throttled),
        untraced_cpu_percent: pick(|r| r.untraced_cpu_percent),
        traced_cpu_percent: pick(|r| r.traced_cpu_percent),
        unusual_rates: Vec::new(),
        other_agents: Vec::new(),
    };
    // The ratio's median is that of the per-round ratios, not the ratio of the medians.
    row(
        &mut out,
        "median",
        &medians,
        pick(AgentRound::programs_ratio),
    );
    let _ = writeln!(
        out,
        "(agent CPU: user + system, /proc/PID/stat, percent of one core; RSS: VmRSS sampled \
         every {} s over the window, MB = 10^6 bytes; RSS growth: end minus start of the window; \
         events/s: memtrace_events_total of every process; drops: memtrace_events_dropped_total \
         since attaching; lost: memtrace_agent_events_lost_total; rates: \
         memtrace_sample_rate_bytes at the end, the largest if they differ; untraced, traced: the programs' total CPU, \
         percent of one core, with the heap profiler off in the programs that do not import \
         runtime/pprof (leaks, idle) until the agent turns it on; ratio: traced / untraced, the \
         median of the per-round ratios)",
        AGENT_RSS_INTERVAL.as_secs()
    );
    let odd: Vec<String> = rounds
        .iter()
        .enumerate()
        .flat_map(|(index, r)| {
            let mut notes = Vec::new();
            if r.targets != programs as f64 {
                notes.push(format!(
                    "round {}: {} targets at the window's end",
                    index + 1,
                    r.targets
                ));
            }
            if r.throttled > 0.0 {
                notes.push(format!(
                    "round {}: {} processes throttled by the budget",
                    index + 1,
                    r.throttled
                ));
            }
            for (kind, count) in &r.lost {
                if *count > 0.0 {
                    notes.push(format!("round {}: lost {kind} {count}", index + 1));
                }
            }
            for rate in &r.unusual_rates {
                notes.push(format!("round {}: sample rate of {rate}", index + 1));
            }
            for other in &r.other_agents {
                notes.push(format!(
                    "round {}: another memtrace agent ran meanwhile (it also traces the \
                     programs if its filters admit them): {other}",
                    index + 1
                ));
            }
            notes
        })
        .collect();
    for note in odd {
        let _ = writeln!(out, "note: {note}");
    }
    let verdict = |met: bool| if met { "PASS" } else { "MISS" };
    let _ =
        writeln!(
        out,
        "goal: agent CPU < {AGENT_CPU_GOAL_PERCENT}% of one core: {} (median {:.2}%, worst round \
         {:.2}%)\ngoal: agent RSS < {} : {} (median of the rounds' max {}, worst {}; peak since \
         start, median {})",
        verdict(medians.agent_cpu_percent < AGENT_CPU_GOAL_PERCENT),
        medians.agent_cpu_percent,
        rounds
            .iter()
            .map(|r| r.agent_cpu_percent)
            .fold(first.agent_cpu_percent, f64::max),
        format_mb(AGENT_RSS_GOAL_BYTES),
        verdict(medians.rss_max < AGENT_RSS_GOAL_BYTES),
        format_mb(medians.rss_max),
        format_mb(rounds.iter().map(|r| r.rss_max).fold(first.rss_max, f64::max)),
        format_mb(medians.rss_peak),
    );
    out
}

/// The default `runtime.MemProfileRate` the agent sets: 512 KiB.
const DEFAULT_RATE: f64 = 524_288.0;

/// The programs whose sample rate is not [`DEFAULT_RATE`], from `/api/targets`: `leaks churn
/// (...) (pid N) at 4.00 MiB (reason budget, goroutine records on)`.
fn unusual_rates(address: &str, fleet: &Fleet) -> Vec<String> {
    let targets = match memtrace_tests::fixtures::http::try_get(address, "/api/targets") {
        Ok(response) if response.status == 200 => {
            serde_json::from_slice::<serde_json::Value>(&response.body).unwrap_or_default()
        }
        Ok(response) => return vec![format!("(/api/targets: HTTP {})", response.status)],
        Err(error) => return vec![format!("(/api/targets: {error})")],
    };
    let labels = fleet.pids();
    targets["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|target| target["sample_rate_bytes"].as_f64() != Some(DEFAULT_RATE))
        .map(|target| {
            let pid = target["pid"].as_u64().unwrap_or(0);
            let label = labels
                .iter()
                .find(|(known, _)| u64::from(*known) == pid)
                .map_or("?", |(_, label)| label);
            format!(
                "{label} (pid {pid}) at {} (reason {}, goroutine records {})",
                target["sample_rate_bytes"]
                    .as_f64()
                    .map_or_else(|| "?".to_owned(), format_bytes),
                target["sample_rate_reason"].as_str().unwrap_or("?"),
                if target["goroutine_records"].as_bool() == Some(false) {
                    "off"
                } else {
                    "on"
                },
            )
        })
        .collect()
}

/// Other `memtrace agent` processes on the machine than `ours`: `pid N: memtrace agent ...`.
fn other_agents(ours: u32) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == ours {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&byte| byte == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        let is_memtrace = args
            .first()
            .is_some_and(|exe| Path::new(exe).file_name().is_some_and(|n| n == "memtrace"));
        if is_memtrace && args.get(1).is_some_and(|arg| arg == "agent") {
            found.push(format!("pid {pid}: {}", args.join(" ")));
        }
    }
    found
}

/// The workload's processes; killed (SIGKILL) if still running when dropped.
struct Fleet {
    processes: Vec<FleetProcess>,
}

struct FleetProcess {
    label: String,
    child: std::process::Child,
    /// Its stdout and stderr.
    log: PathBuf,
}

impl FleetProcess {
    fn log_tail(&self) -> String {
        last_lines(&std::fs::read_to_string(&self.log).unwrap_or_default(), 10)
    }
}

impl Fleet {
    fn start(programs: &[AgentProgram], dir: &Path) -> Result<Fleet> {
        let mut fleet = Fleet {
            processes: Vec::new(),
        };
        for (index, program) in programs.iter().enumerate() {
            let log = dir.join(format!(
                "{index:02}-{}.log",
                program
                    .label
                    .split(" (")
                    .next()
                    .unwrap_or("")
                    .replace(' ', "-")
            ));
            let mut command = Command::new(&program.exe);
            command.args(&program.args);
            let child = spawn_logged(&mut command, &log)?;
            fleet.processes.push(FleetProcess {
                label: program.label.clone(),
                child,
                log,
            });
        }
        Ok(fleet)
    }

    fn pids(&self) -> Vec<(u32, &str)> {
        self.processes
            .iter()
            .map(|p| (p.child.id(), p.label.as_str()))
            .collect()
    }

    /// Waits until every program printed `READY`.
    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            self.check_alive()?;
            let waiting: Vec<&str> = self
                .processes
                .iter()
                .filter(|p| {
                    !std::fs::read_to_string(&p.log)
                        .unwrap_or_default()
                        .lines()
                        .any(|line| line.starts_with("READY"))
                })
                .map(|p| p.label.as_str())
                .collect();
            if waiting.is_empty() {
                return Ok(());
            }
            ensure!(
                started.elapsed() < timeout,
                "no READY within {timeout:?} from {}",
                waiting.join(", ")
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fails if a program exited, with its exit status and output.
    fn check_alive(&mut self) -> Result<()> {
        for process in &mut self.processes {
            if let Some(status) = process.child.try_wait()? {
                bail!(
                    "{} (pid {}) exited early: {status}; its output:\n{}",
                    process.label,
                    process.child.id(),
                    process.log_tail()
                );
            }
        }
        Ok(())
    }

    /// The programs' user + system CPU, in clock ticks.
    fn cpu_ticks(&self) -> Result<u64> {
        self.processes.iter().map(|p| cpu_ticks(p.child.id())).sum()
    }

    /// The programs' CPU (clock ticks) over `duration`, and the seconds it took.
    fn cpu_over(&mut self, duration: Duration) -> Result<(u64, f64)> {
        let ticks = self.cpu_ticks()?;
        let started = Instant::now();
        thread::sleep(duration);
        self.check_alive()?;
        let ticks = self.cpu_ticks()?.saturating_sub(ticks);
        Ok((ticks, started.elapsed().as_secs_f64()))
    }

    /// SIGTERM to every program; each must exit 0 within [`AGENT_STOP_TIMEOUT`].
    fn stop(&mut self) -> Result<()> {
        for process in &self.processes {
            signal(process.child.id(), libc::SIGTERM);
        }
        let deadline = Instant::now() + AGENT_STOP_TIMEOUT;
        let mut problems = Vec::new();
        for mut process in std::mem::take(&mut self.processes) {
            match wait_until(&mut process.child, deadline)? {
                Some(status) if status.success() => {}
                Some(status) => problems.push(format!(
                    "{} exited with {status} on SIGTERM; its output:\n{}",
                    process.label,
                    process.log_tail()
                )),
                None => {
                    let _ = process.child.kill();
                    let _ = process.child.wait();
                    problems.push(format!(
                        "{} did not exit within {AGENT_STOP_TIMEOUT:?} of SIGTERM (killed)",
                        process.label
                    ));
                }
            }
        }
        ensure!(problems.is_empty(), "{}", problems.join("\n"));
        Ok(())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for process in &mut self.processes {
            let _ = process.child.kill();
        }
        for process in &mut self.processes {
            let _ = process.child.wait();
        }
    }
}

/// A running `memtrace agent`; killed (SIGKILL) if still running when dropped.
struct AgentProcess {
    child: std::process::Child,
    address: String,
    /// Its stdout and stderr.
    log: PathBuf,
}

/// Starts `command` with no stdin and both output streams into the file `log`.
fn spawn_logged(command: &mut Command, log: &Path) -> Result<std::process::Child> {
    let file =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("cannot run `{}`", describe(command)))
}

impl AgentProcess {
    fn start(memtrace: &Path, address: &str, include: &str, log: &Path) -> Result<AgentProcess> {
        let mut command = Command::new(memtrace);
        command.args(["agent", "--listen", address, "--include", include]);
        let child = spawn_logged(&mut command, log)?;
        Ok(AgentProcess {
            child,
            address: address.to_owned(),
            log: log.to_owned(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        last_lines(&std::fs::read_to_string(&self.log).unwrap_or_default(), 20)
    }

    /// Fails if the agent exited, with its exit status and log.
    fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "memtrace agent exited: {status}; its log ({}):\n{}",
                self.log.display(),
                self.log_tail()
            );
        }
        Ok(())
    }

    /// Waits for `/readyz` to answer 200 and for every program of `fleet` to be traced.
    fn wait_ready(&mut self, fleet: &Fleet) -> Result<()> {
        let started = Instant::now();
        loop {
            self.check_running()?;
            let answer = memtrace_tests::fixtures::http::try_get(&self.address, "/readyz");
            let last = match answer {
                Ok(response) if response.status == 200 => break,
                Ok(response) => format!("HTTP {}: {}", response.status, response.text()),
                Err(error) => error.to_string(),
            };
            ensure!(
                started.elapsed() < AGENT_START_TIMEOUT,
                "the agent's /readyz did not answer 200 within {AGENT_START_TIMEOUT:?}: {last}; \
                 its log:\n{}",
                self.log_tail()
            );
            thread::sleep(Duration::from_millis(100));
        }
        loop {
            self.check_running()?;
            let scrape = Scrape::get(&self.address)?;
            let targets = scrape.value("memtrace_agent_targets").unwrap_or(0.0);
            let traced = scrape.per_pid("memtrace_events_total");
            let missing: Vec<String> = fleet
                .pids()
                .into_iter()
                .filter(|(pid, _)| !traced.contains_key(pid))
                .map(|(pid, label)| format!("{label} (pid {pid})"))
                .collect();
            if missing.is_empty() && targets >= AGENT_PROGRAMS.min(fleet.processes.len()) as f64 {
                return Ok(());
            }
            if started.elapsed() >= AGENT_START_TIMEOUT {
                let skipped: Vec<String> = scrape
                    .samples
                    .iter()
                    .filter(|s| s.name == "memtrace_agent_skipped_total" && s.value > 0.0)
                    .map(|s| format!("{} {}", s.label("reason").unwrap_or("?"), s.value))
                    .collect();
                bail!(
                    "after {AGENT_START_TIMEOUT:?} the agent traces {targets} processes; not \
                     traced: {}; skipped: {}; its log:\n{}",
                    missing.join(", "),
                    skipped.join(", "),
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(500));
        }
    }

    /// SIGTERM; the agent must exit 0 within [`AGENT_STOP_TIMEOUT`].
    fn stop(&mut self) -> Result<()> {
        self.check_running()?;
        signal(self.pid(), libc::SIGTERM);
        let stopping = Instant::now();
        match wait_until(&mut self.child, stopping + AGENT_STOP_TIMEOUT)? {
            Some(status) if status.success() => {
                println!(
                    "bench: agent stopped on SIGTERM in {}",
                    format_ns(duration_ns(stopping.elapsed()))
                );
                Ok(())
            }
            Some(status) => bail!(
                "memtrace agent exited with {status} on SIGTERM; its log ({}):\n{}",
                self.log.display(),
                self.log_tail()
            ),
            None => bail!(
                "memtrace agent did not exit within {AGENT_STOP_TIMEOUT:?} of SIGTERM (it will \
                 be killed); its log ({}):\n{}",
                self.log.display(),
                self.log_tail()
            ),
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn signal(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill has no memory effects; `pid` is our unreaped child.
        unsafe { libc::kill(pid, signal) };
    }
}

/// Waits for `child` until `deadline`: its exit status, or `None` if it still runs.
fn wait_until(child: &mut std::process::Child, deadline: Instant) -> Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// User + system CPU of process `pid` (all its threads), in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_stat_ticks(&stat).with_context(|| format!("cannot parse {path}: {stat}"))
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat line.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: fields start after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (the state).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` field of /proc/PID/status (`VmRSS`, `VmHWM`), in bytes.
fn status_bytes(pid: u32, field: &str) -> Result<f64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_status_kb(&status, field)
        .map(|kb| kb as f64 * 1024.0)
        .with_context(|| format!("no {field} in {path}"))
}

fn parse_status_kb(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        line.strip_prefix(field)?
            .strip_prefix(':')?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, PartialEq)]
struct MetricSample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl MetricSample {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// One `/metrics` scrape.
struct Scrape {
    samples: Vec<MetricSample>,
}

impl Scrape {
    fn get(address: &str) -> Result<Scrape> {
        let response = memtrace_tests::fixtures::http::try_get(address, "/metrics")
            .with_context(|| format!("GET http://{address}/metrics"))?;
        ensure!(
            response.status == 200,
            "GET http://{address}/metrics: HTTP {}: {}",
            response.status,
            response.text()
        );
        Ok(Scrape {
            samples: response.text().lines().filter_map(parse_sample).collect(),
        })
    }

    /// The first sample of `name`.
    fn value(&self, name: &str) -> Option<f64> {
        self.samples
            .iter()
            .find(|sample| sample.name == name)
            .map(|sample| sample.value)
    }

    /// The sum of every sample of `name`.
    fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|sample| sample.name == name)
            .map(|sample| sample.value)
            .sum()
    }

    /// The samples of `name` by their `pid` label.
    fn per_pid(&self, name: &str) -> std::collections::BTreeMap<u32, f64> {
        self.samples
            .iter()
            .filter(|sample| sample.name == name)
            .filter_map(|sample| Some((sample.label("pid")?.parse().ok()?, sample.value)))
            .collect()
    }
}

/// A sample line of the Prometheus text format (`name{label="value",...} value [timestamp]`);
/// `None` for comments, blank and malformed lines.
fn parse_sample(line: &str) -> Option<MetricSample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(mut inside) = rest.strip_prefix('{') {
        loop {
            inside = inside.trim_start_matches([',', ' ']);
            if let Some(after) = inside.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, quoted) = inside.split_once("=\"")?;
            let mut value = String::new();
            let mut escaped = false;
            let mut end = None;
            for (index, character) in quoted.char_indices() {
                if escaped {
                    value.push(if character == 'n' { '\n' } else { character });
                    escaped = false;
                } else if character == '\\' {
                    escaped = true;
                } else if character == '"' {
                    end = Some(index);
                    break;
                } else {
                    value.push(character);
                }
            }
            labels.push((key.trim().to_owned(), value));
            inside = &quoted[end? + 1..];
        }
    }
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        number => number.parse().ok()?,
    };
    Some(MetricSample {
        name,
        labels,
        value,
    })
}

/// `38.2 MB` (10^6 bytes).
fn format_mb(bytes: f64) -> String {
    format!("{:.1} MB", bytes / 1e6)
}

/// The command of one run of `case`; a recording case writes to `output`.
fn case_command(
    case: &Case,
    memtrace: &Path,
    program: &Path,
    allocs: u32,
    options: &Options,
    output: Option<&TraceOutput>,
) -> Command {
    let mut command = match case.memtrace_args {
        None => {
            let mut command = Command::new(program);
            command.envs(case.env.iter().copied());
            command
        }
        Some(memtrace_args) => {
            let mut command = Command::new(memtrace);
            if case.record {
                output
                    .expect("a recording case needs a trace output")
                    .record_args(&mut command);
            }
            command.args(memtrace_args).arg("--").arg(program);
            command
        }
    };
    command
        .arg(allocs.to_string())
        .arg(options.goroutines.to_string());
    command
}

/// Runs `command`, and returns the program's `ELAPSED_NS` with the process's wall and CPU time.
fn measure(command: &mut Command) -> Result<Measurement> {
    measure_with_stderr(command).map(|(measurement, _)| measurement)
}

/// [`measure`], also returning what the command wrote to stderr.
fn measure_with_stderr(command: &mut Command) -> Result<(Measurement, String)> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot run `{}`", describe(command)))?;
    let mut stdout_pipe = child.stdout.take().context("no stdout pipe")?;
    let mut stderr_pipe = child.stderr.take().context("no stderr pipe")?;
    let (stdout, stderr) = thread::scope(|scope| {
        let stderr = scope.spawn(move || {
            let mut stderr = String::new();
            // A read error only shortens the diagnostics.
            let _ = stderr_pipe.read_to_string(&mut stderr);
            stderr
        });
        let mut stdout = String::new();
        let _ = stdout_pipe.read_to_string(&mut stdout);
        (stdout, stderr.join().unwrap_or_default())
    });
    let (status, cpu) = wait_with_rusage(child.id())
        .with_context(|| format!("cannot wait for `{}`", describe(command)))?;
    let wall = started.elapsed();
    if !status.success() {
        bail!(
            "`{}` failed: {status}\n{}",
            describe(command),
            last_lines(&stderr, 10)
        );
    }
    let elapsed_ns = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("ELAPSED_NS "))
        .next_back()
        .and_then(|value| value.trim().parse::<f64>().ok())
        .with_context(|| {
            format!(
                "no ELAPSED_NS line in the output of `{}`:\n{stdout}",
                describe(command)
            )
        })?;
    // The program's own CPU over its loops, when it reports it: unlike the process tree's,
    // it leaves out memtrace's start-up and its own work.
    let program_cpu_ns = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("CPU_NS "))
        .next_back()
        .and_then(|value| value.trim().parse::<f64>().ok());
    let measurement = Measurement {
        elapsed: elapsed_ns,
        wall: duration_ns(wall),
        cpu: program_cpu_ns.unwrap_or_else(|| duration_ns(cpu)),
        tree_cpu: duration_ns(cpu),
    };
    Ok((measurement, stderr))
}

/// Reaps child `pid` with wait4, returning its exit status and user + system CPU time.
fn wait_with_rusage(pid: u32) -> std::io::Result<(ExitStatus, Duration)> {
    use std::os::unix::process::ExitStatusExt;

    let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
    let mut status = 0;
    let mut usage = MaybeUninit::<libc::rusage>::zeroed();
    loop {
        // SAFETY: `status` and `usage` are valid for writes; `pid` is our unreaped child.
        let reaped = unsafe { libc::wait4(pid, &raw mut status, 0, usage.as_mut_ptr()) };
        if reaped == pid {
            break;
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
    // SAFETY: wait4 filled `usage` in (and it was zeroed before).
    let usage = unsafe { usage.assume_init() };
    let to_duration = |time: libc::timeval| {
        Duration::from_secs(u64::try_from(time.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(time.tv_usec).unwrap_or(0))
    };
    let cpu = to_duration(usage.ru_utime) + to_duration(usage.ru_stime);
    Ok((ExitStatus::from_raw(status), cpu))
}

fn report(results: &Results, recorded: &[Recorded], options: &Options) -> String {
    // The program rounds N down to a multiple of G.
    let allocs = f64::from(options.allocs / options.goroutines * options.goroutines);
    let medians: Vec<Option<Measurement>> = results
        .iter()
        .map(|result| {
            result
                .as_ref()
                .ok()
                .and_then(|runs| median_measurement(runs))
        })
        .collect();

    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nmemtrace bench: Go {}, bench {} allocations on {} goroutines, medians of {} rounds\n",
        options.go, options.allocs, options.goroutines, options.rounds
    );
    let _ = writeln!(
        out,
        "{:<12} {:>10} {:>12} {:>10} {:>10} {:>12}",
        "case", "elapsed", "ns/alloc", "wall", "CPU", "CPU ns/alloc"
    );
    for ((case, median), result) in CASES.iter().zip(&medians).zip(results) {
        match (median, result) {
            (Some(m), _) => {
                let _ = writeln!(
                    out,
                    "{:<12} {:>10} {:>12.1} {:>10} {:>10} {:>12.1}",
                    case.name,
                    format_ns(m.elapsed),
                    m.elapsed / allocs,
                    format_ns(m.wall),
                    format_ns(m.cpu),
                    m.cpu / allocs,
                );
            }
            (None, Err(error)) => {
                let reason = error.lines().next().unwrap_or_default();
                let _ = writeln!(out, "{:<12} n/a: {reason}", case.name);
            }
            (None, Ok(_)) => {
                let _ = writeln!(out, "{:<12} n/a", case.name);
            }
        }
    }

    let comparisons = [
        ("probe-floor vs untraced", PROBE_FLOOR, UNTRACED),
        ("all-allocs vs untraced", ALL_ALLOCS, UNTRACED),
        ("all-allocs vs probe-floor", ALL_ALLOCS, PROBE_FLOOR),
        ("recorded vs untraced", RECORDED, UNTRACED),
        ("recorded vs all-allocs", RECORDED, ALL_ALLOCS),
    ];
    let _ = writeln!(
        out,
        "\n{:<26} {:>14} {:>20} {:>16} {:>11} {:>10}",
        "comparison",
        "elapsed ratio",
        "elapsed ns/alloc",
        "CPU ns/alloc",
        "wall ratio",
        "per-round"
    );
    for (label, traced, baseline) in comparisons {
        let line = match (medians[traced], medians[baseline]) {
            (Some(traced_median), Some(baseline_median)) => {
                // The median of the per-round elapsed ratios: a round that load slowed down
                // for one case only moves it less.
                let per_round = match (&results[traced], &results[baseline]) {
                    (Ok(t), Ok(b)) => median(t.iter().zip(b).map(|(t, b)| t.elapsed / b.elapsed)),
                    _ => None,
                };
                format!(
                    "{label:<26} {:>13.2}x {:>+20.1} {:>+16.1} {:>10.2}x {:>9.2}x",
                    traced_median.elapsed / baseline_median.elapsed,
                    (traced_median.elapsed - baseline_median.elapsed) / allocs,
                    (traced_median.cpu - baseline_median.cpu) / allocs,
                    traced_median.wall / baseline_median.wall,
                    per_round.unwrap_or(f64::NAN),
                )
            }
            _ => format!("{label:<26} {:>14}", "n/a"),
        };
        let _ = writeln!(out, "{line}");
    }
    if !recorded.is_empty() {
        let events = median(recorded.iter().map(|r| r.events as f64)).unwrap_or(f64::NAN);
        let bytes = median(recorded.iter().map(|r| r.bytes as f64)).unwrap_or(f64::NAN);
        let unrecorded = recorded.iter().map(|r| r.unrecorded).max().unwrap_or(0);
        let dropped = recorded.iter().map(|r| r.dropped).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "recorded: median {events:.0} events, {} per run; unrecorded (writer fell behind) \
             at most {unrecorded}{}, ring-buffer drops at most {dropped}",
            format_bytes(bytes),
            if unrecorded == 0 {
                ""
            } else {
                " (FAILED: must be 0)"
            },
        );
    }
    out
}

/// The per-field medians of `runs`.
fn median_measurement(runs: &[Measurement]) -> Option<Measurement> {
    Some(Measurement {
        elapsed: median(runs.iter().map(|m| m.elapsed))?,
        wall: median(runs.iter().map(|m| m.wall))?,
        cpu: median(runs.iter().map(|m| m.cpu))?,
        tree_cpu: median(runs.iter().map(|m| m.tree_cpu))?,
    })
}

fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut values: Vec<f64> = values.collect();
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        f64::midpoint(values[middle - 1], values[middle])
    } else {
        values[middle]
    })
}

fn duration_ns(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e9
}

/// `1.23 s`, `45.6 ms`, `789 µs` or `12 ns`.
fn format_ns(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.1} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.0} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// `2,307,412` (rounded to a whole number).
fn format_count(value: f64) -> String {
    if !value.is_finite() {
        return format!("{value}");
    }
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    if value < -0.5 {
        out.insert(0, '-');
    }
    out
}

/// `6.02 MiB`, `627.1 KiB` or `512 B`.
fn format_bytes(bytes: f64) -> String {
    if bytes >= f64::from(1 << 30) {
        format!("{:.2} GiB", bytes / f64::from(1 << 30))
    } else if bytes >= f64::from(1 << 20) {
        format!("{:.2} MiB", bytes / f64::from(1 << 20))
    } else if bytes >= 1024.0 {
        format!("{:.1} KiB", bytes / 1024.0)
    } else {
        format!("{bytes:.0} B")
    }
}

fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::{
        format_bytes, format_count, format_ns, median, parse_replayed, parse_sample,
        parse_stat_ticks, parse_status_kb, recorded_events,
    };

    #[test]
    fn proc_files_are_parsed() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(parse_stat_ticks(stat), Some(325));
        assert_eq!(parse_stat_ticks("4242 (short) S 1"), None);
        let status = "Name:\tmemtrace\nVmHWM:\t   40960 kB\nVmRSS:\t   38012 kB\n";
        assert_eq!(parse_status_kb(status, "VmRSS"), Some(38012));
        assert_eq!(parse_status_kb(status, "VmHWM"), Some(40960));
        assert_eq!(parse_status_kb(status, "VmSwap"), None);
    }

    #[test]
    fn prometheus_samples_are_parsed() {
        let sample = |line| parse_sample(line).map(|s| (s.name, s.labels, s.value));
        assert_eq!(sample("# TYPE memtrace_agent_targets gauge"), None);
        assert_eq!(sample(""), None);
        assert_eq!(
            sample("memtrace_agent_targets 20"),
            Some(("memtrace_agent_targets".into(), vec![], 20.0))
        );
        assert_eq!(
            sample(
                r#"memtrace_site_live_bytes{pid="7",function="main.(*T).f",file="a \"b\", c.go",line="3"} 1.5e6"#
            ),
            Some((
                "memtrace_site_live_bytes".into(),
                vec![
                    ("pid".into(), "7".into()),
                    ("function".into(), "main.(*T).f".into()),
                    ("file".into(), "a \"b\", c.go".into()),
                    ("line".into(), "3".into()),
                ],
                1.5e6
            ))
        );
        assert!(parse_sample("x{pid=\"1\"} NaN").is_some_and(|s| s.value.is_nan()));
        assert_eq!(sample("x{pid=\"1} 3"), None);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), Some(2.0));
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), Some(2.5));
        assert_eq!(median(std::iter::empty()), None);
    }

    #[test]
    fn durations_are_readable() {
        assert_eq!(format_ns(1.5e9), "1.50 s");
        assert_eq!(format_ns(40.25e6), "40.2 ms");
        assert_eq!(format_ns(789_400.0), "789 µs");
        assert_eq!(format_ns(12.0), "12 ns");
    }

    #[test]
    fn counts_and_sizes_are_readable() {
        assert_eq!(format_count(2_307_412.4), "2,307,412");
        assert_eq!(format_count(999.0), "999");
        assert_eq!(format_count(1000.0), "1,000");
        assert_eq!(format_count(0.0), "0");
        assert_eq!(format_bytes(6_316_029.0), "6.02 MiB");
        assert_eq!(format_bytes(642_150.0), "627.1 KiB");
        assert_eq!(format_bytes(512.0), "512 B");
    }

    #[test]
    fn memtrace_output_is_parsed() {
        let record = "goroutine leaks: none\n\
            memtrace: recorded 2307412 events (6.0MiB) to /tmp/r.mtr; `memtrace report /tmp/r.mtr` reads it\n";
        assert_eq!(recorded_events(record), Some(2_307_412));
        assert_eq!(recorded_events("memtrace: error\n"), None);
        let replay = "[INFO ] something\n\
            [INFO ] replayed 2307412 records from 48 chunks in 0.462s: 4999273 records/s\n";
        assert_eq!(
            parse_replayed(replay),
            Some((2_307_412, 48, 0.462, 4_999_273.0))
        );
        assert_eq!(parse_replayed("[INFO ] replayed nothing\n"), None);
    }
}

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
    let (_tools, memtrace) = build::run()?;
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
    Ok(
        if results[UNTRACED].is_ok()
            && writer_kept_up
            && sampled_ok
            && goroutines_ok
            && recordings_ok
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
    use super::{format_bytes, format_count, format_ns, median, parse_replayed, recorded_events};

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

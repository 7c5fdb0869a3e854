//! `cargo xtask bench`: memtrace's overhead on the `bench` Go program (`tests/go/bench`),
//! which allocates N 32-byte objects from G goroutines and reports the time its allocation
//! loops took (`ELAPSED_NS`, which excludes process start and probe attach).
//!
//! Three cases run interleaved in every round, so drifting machine load hits them alike:
//!
//! - `untraced`: the program alone;
//! - `probe-floor`: `memtrace --probe-floor --no-live`, no-op probes on the same allocation
//!   sites: what the kernel's uprobe trap costs by itself;
//! - `all-allocs`: `memtrace --all-allocs --no-live`, every allocation recorded.
//!
//! The table shows medians over the rounds. A case that fails is reported and dropped.
//!
//! Then the default sampled mode (`memtrace --no-live`: the runtime's heap profiler at
//! 512 KiB, objects tracked to their death) against untraced, interleaved, on a run long
//! enough (`--sampled-allocs`) to show a 1% difference; goroutine tracking on a
//! goroutine-heavy program (`tests/go/gobench`: a goroutine per request) at two request
//! rates; and the userspace tracking speed and memory per tracked object, replaying synthetic
//! records through the analysis (`memtrace/examples/analysis_throughput.rs`).

use std::{
    fmt::Write as _,
    io::Read,
    mem::MaybeUninit,
    path::Path,
    process::{Command, ExitCode, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use memtrace_tests::fixtures::{build_go_program, Variant};

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
}

struct Case {
    name: &'static str,
    /// `None` runs the program directly, else under memtrace with these options.
    memtrace_args: Option<&'static [&'static str]>,
    /// Environment for the program.
    env: &'static [(&'static str, &'static str)],
}

const UNTRACED: usize = 0;
const PROBE_FLOOR: usize = 1;
const ALL_ALLOCS: usize = 2;
const CASES: [Case; 3] = [
    Case {
        name: "untraced",
        memtrace_args: None,
        env: &[],
    },
    Case {
        name: "probe-floor",
        memtrace_args: Some(&["--probe-floor", "--no-live"]),
        env: &[],
    },
    Case {
        name: "all-allocs",
        memtrace_args: Some(&["--all-allocs", "--no-live"]),
        env: &[],
    },
];

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
    let program = build_go_program("bench", &options.go, Variant::Default, &[], "")?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("xtask: note: the traced cases need root; without it they fail and are dropped");
    }

    let mut results: Results = CASES.iter().map(|_| Ok(Vec::new())).collect();
    for round in 1..=options.rounds {
        for (case, result) in CASES.iter().zip(&mut results) {
            let Ok(measurements) = result else { continue };
            let mut command = case_command(case, &memtrace, &program, options.allocs, options);
            match measure(&mut command) {
                Ok(measurement) => {
                    print_round(round, options.rounds, case.name, &measurement);
                    measurements.push(measurement);
                }
                Err(error) => {
                    println!("bench: {}: FAILED, dropped: {error:#}", case.name);
                    *result = Err(format!("{error:#}"));
                }
            }
        }
    }
    print!("{}", report(&results, options));
    let sampled_ok = sampled_mode(&memtrace, &program, options)?;
    per_sample_cost(&memtrace, &program, options)?;
    let goroutines_ok = goroutine_heavy(&memtrace, options)?;
    analysis_throughput(&program)?;
    Ok(
        if results[UNTRACED].is_ok() && sampled_ok && goroutines_ok {
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
        },
        Case {
            name: "profiler-on",
            memtrace_args: None,
            env: &[("BENCH_MEMPROFILERATE", "524288")],
        },
        Case {
            name: "sampled",
            memtrace_args: Some(&["--no-live"]),
            env: &[],
        },
    ];
    let mut runs: [Vec<Measurement>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for round in 1..=options.rounds {
        for (case, runs) in cases.iter().zip(&mut runs) {
            let mut command =
                case_command(case, memtrace, program, options.sampled_allocs, options);
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

fn case_command(
    case: &Case,
    memtrace: &Path,
    program: &Path,
    allocs: u32,
    options: &Options,
) -> Command {
    let mut command = match case.memtrace_args {
        None => {
            let mut command = Command::new(program);
            command.envs(case.env.iter().copied());
            command
        }
        Some(memtrace_args) => {
            let mut command = Command::new(memtrace);
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
    Ok(Measurement {
        elapsed: elapsed_ns,
        wall: duration_ns(wall),
        cpu: program_cpu_ns.unwrap_or_else(|| duration_ns(cpu)),
    })
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

fn report(results: &Results, options: &Options) -> String {
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
    ];
    let _ = writeln!(
        out,
        "\n{:<26} {:>14} {:>20} {:>16}",
        "comparison", "elapsed ratio", "elapsed ns/alloc", "CPU ns/alloc"
    );
    for (label, traced, baseline) in comparisons {
        let line = match (medians[traced], medians[baseline]) {
            (Some(traced), Some(baseline)) => format!(
                "{label:<26} {:>13.2}x {:>+20.1} {:>+16.1}",
                traced.elapsed / baseline.elapsed,
                (traced.elapsed - baseline.elapsed) / allocs,
                (traced.cpu - baseline.cpu) / allocs,
            ),
            _ => format!("{label:<26} {:>14}", "n/a"),
        };
        let _ = writeln!(out, "{line}");
    }
    out
}

/// The per-field medians of `runs`.
fn median_measurement(runs: &[Measurement]) -> Option<Measurement> {
    Some(Measurement {
        elapsed: median(runs.iter().map(|m| m.elapsed))?,
        wall: median(runs.iter().map(|m| m.wall))?,
        cpu: median(runs.iter().map(|m| m.cpu))?,
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

fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::{format_ns, median};

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
}

//! `cargo xtask fuzz`: builds the fuzz targets of `fuzz/` (cargo-fuzz, libFuzzer) and runs
//! each for a bounded time; fails on any crash, hang or out-of-memory, printing the
//! reproducer. See `fuzz/README.md`.
//!
//! The targets run at the same time, one libFuzzer process each, for `--seconds` of wall-clock
//! time: with fewer cores than targets that still keeps every core busy, where running them in
//! turn would leave one idle. Each one's output goes to `fuzz/artifacts/<target>.log`; a line
//! per target sums it up.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use memtrace_tests::fixtures::{cache_dir, workspace_dir};

use crate::{
    command::{self, describe, stdout_of},
    setup::{self, NIGHTLY},
};

/// The fuzz targets (`fuzz/fuzz_targets/<name>.rs`).
pub const TARGETS: &[&str] = &["trace_reader", "trace_records", "chunk_decoder"];
/// Largest input, as `memtrace_fuzz::MAX_LEN`: the seeds (real traces up to 64 KiB) fit.
const MAX_LEN: usize = 64 * 1024;
const RSS_LIMIT_MB: u64 = 2048;
/// Seconds one input may take before it counts as a hang.
const TIMEOUT_S: u64 = 10;
/// How long a fuzzer may overrun `--seconds` (loading the corpus, a last slow input) before
/// it is killed.
const GRACE: Duration = Duration::from_secs(120);
/// Tells the targets to write their seeds into a directory (`memtrace_fuzz::SEEDS_ENV`).
const SEEDS_ENV: &str = "MEMTRACE_FUZZ_SEEDS";

#[derive(clap::Args)]
pub struct Options {
    /// Seconds of fuzzing, wall-clock: the targets run at the same time.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Only this target (repeatable); default: all of them.
    #[arg(long = "target", value_name = "NAME", value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    pub targets: Vec<String>,
    /// cargo-fuzz's sanitizer. `none` by default: the code under test is safe Rust (but for
    /// a transmute of plain integers), so panics are what is looked for, and AddressSanitizer
    /// ran 5-6 times fewer executions.
    #[arg(long, default_value = "none", value_parser = ["none", "address"])]
    pub sanitizer: String,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            seconds: 60,
            targets: Vec::new(),
            sanitizer: "none".into(),
        }
    }
}

/// Targets that ran clean, and those that crashed or could not run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    pub passed: u64,
    pub failed: u64,
}

pub fn run(options: &Options) -> Result<ExitCode> {
    let cargo_fuzz_dir = setup::ensure_fuzz_tools()?;
    let outcome = fuzz(options, &cargo_fuzz_dir)?;
    Ok(if outcome.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Builds and runs the targets; `Err` only when they could not be built or started.
pub fn fuzz(options: &Options, cargo_fuzz_dir: &Path) -> Result<Outcome> {
    let fuzz_dir = workspace_dir().join("fuzz");
    let targets: Vec<&str> = if options.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        options.targets.iter().map(String::as_str).collect()
    };
    let binaries = build(&fuzz_dir, cargo_fuzz_dir, &options.sanitizer, &targets)?;

    let mut running = Vec::new();
    for (target, binary) in targets.iter().zip(&binaries) {
        let corpus = fuzz_dir.join("corpus").join(target);
        let artifacts = fuzz_dir.join("artifacts").join(target);
        fs::create_dir_all(&artifacts)
            .with_context(|| format!("cannot create {}", artifacts.display()))?;
        // Checksum-valid traces, which mutations of random bytes would never reach.
        command::run(Command::new(binary).env(SEEDS_ENV, &corpus))?;
        let log_path = fuzz_dir.join("artifacts").join(format!("{target}.log"));
        let log = File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let mut command = Command::new(binary);
        command
            .arg(&corpus)
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg(format!("-max_total_time={}", options.seconds))
            .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
            .arg(format!("-max_len={MAX_LEN}"))
            .arg(format!("-timeout={TIMEOUT_S}"))
            .arg(format!("-dict={}", fuzz_dir.join("trace.dict").display()))
            .arg("-print_final_stats=1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("cannot share the log file")?)
            .stderr(log);
        println!(
            "xtask fuzz: {} > {}",
            describe(&command),
            log_path.display()
        );
        let child = command
            .spawn()
            .with_context(|| format!("cannot run `{}`", describe(&command)))?;
        running.push((*target, binary.clone(), child, log_path));
    }

    let deadline = Instant::now() + Duration::from_secs(options.seconds) + GRACE;
    let mut outcome = Outcome::default();
    for (target, binary, child, log_path) in running {
        let status = wait_until(child, deadline)?;
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        let stats = Stats::parse(&log);
        match status {
            Some(status) if status.success() => {
                outcome.passed += 1;
                println!("xtask fuzz: {target}: ok, {stats}");
            }
            _ => {
                outcome.failed += 1;
                report_failure(target, &binary, status, &stats, &log, &log_path);
            }
        }
    }
    println!(
        "xtask fuzz: {} targets passed, {} failed ({} s each)",
        outcome.passed, outcome.failed, options.seconds
    );
    Ok(outcome)
}

/// Builds the targets; returns their binaries, in the order of `targets`.
fn build(
    fuzz_dir: &Path,
    cargo_fuzz_dir: &Path,
    sanitizer: &str,
    targets: &[&str],
) -> Result<Vec<PathBuf>> {
    let host = stdout_of(Command::new("rustup").args(["run", NIGHTLY, "rustc", "-vV"]))?
        .lines()
        .find_map(|line| line.strip_prefix("host: ").map(str::to_owned))
        .context("no `host:` line in `rustc -vV`")?;
    // In the cache, not fuzz/target: a cold build instruments every dependency and takes
    // minutes; kept there, a fresh clone (as in CI) rebuilds only memtrace and the targets.
    let target_dir = cache_dir().join("fuzz-target");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(
        std::iter::once(cargo_fuzz_dir.to_path_buf()).chain(std::env::split_paths(&path)),
    )
    .context("cannot build PATH with the cargo-fuzz directory")?;
    let all = targets.len() == TARGETS.len();
    // One build for all of them, else one per target (cargo fuzz build takes one name).
    let names: Vec<Option<&str>> = if all {
        vec![None]
    } else {
        targets.iter().copied().map(Some).collect()
    };
    let started = Instant::now();
    for name in names {
        let mut command = Command::new("rustup");
        command
            .args(["run", NIGHTLY, "cargo", "fuzz", "build"])
            .arg("--fuzz-dir")
            .arg(fuzz_dir)
            .arg("--target-dir")
            .arg(&target_dir)
            .args(["--target", &host, "--sanitizer", sanitizer])
            // cargo-fuzz's default of 1 compiles each crate, memtrace included, on one core;
            // 16 took about a minute off a cold build (5:09 to 4:14 on a busy machine) for
            // about 10% fewer executions.
            .args(["--codegen-units", "16"])
            .args(name)
            // memtrace's build script would build the eBPF object, which reading traces
            // does not need (and which needs bpf-linker).
            .env("AYA_BUILD_SKIP", "1")
            .env("PATH", &path)
            // Set by the `cargo run` of this xtask: it names the stable cargo, which
            // cargo-fuzz would then use instead of the nightly one.
            .env_remove("CARGO")
            .env_remove("RUSTUP_TOOLCHAIN")
            .current_dir(fuzz_dir);
        println!("xtask fuzz: {}", describe(&command));
        command::run(&mut command)?;
    }
    println!(
        "xtask fuzz: built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let release = target_dir.join(&host).join("release");
    targets
        .iter()
        .map(|target| {
            let binary = release.join(target);
            if binary.is_file() {
                Ok(binary)
            } else {
                bail!("the build did not produce {}", binary.display())
            }
        })
        .collect()
}

/// Waits for `child`; kills it at `deadline` (then `None`).
fn wait_until(mut child: Child, deadline: Instant) -> Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait().context("cannot wait for a fuzzer")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// What libFuzzer said about a run.
#[derive(Default)]
struct Stats {
    runs: Option<u64>,
    exec_per_s: Option<u64>,
    /// `cov` (edges) and `ft` (features) once the seeds were loaded, and at the end.
    start: Option<(u64, u64)>,
    end: Option<(u64, u64)>,
    corpus: Option<u64>,
    new_units: Option<u64>,
    peak_rss_mb: Option<u64>,
    /// The input that failed (`Test unit written to <path>`).
    reproducer: Option<PathBuf>,
}

impl Stats {
    fn parse(log: &str) -> Stats {
        let mut stats = Stats::default();
        let stat = |line: &str, name: &str| {
            line.strip_prefix(name)
                .and_then(|value| value.trim().parse::<u64>().ok())
        };
        for line in log.lines() {
            // Status lines: `#1234  NEW    cov: 512 ft: 1800 corp: 90/10Kb ... exec/s: 9000`.
            if line.starts_with('#') && line.contains(" cov: ") {
                let word_after = |key: &str| {
                    let mut words = line.split_whitespace();
                    words.find(|w| *w == key)?;
                    words.next()?.split('/').next()?.parse::<u64>().ok()
                };
                if let (Some(cov), Some(ft)) = (word_after("cov:"), word_after("ft:")) {
                    if line.contains("INITED") {
                        stats.start = Some((cov, ft));
                    }
                    stats.end = Some((cov, ft));
                    stats.corpus = word_after("corp:").or(stats.corpus);
                }
            }
            if let Some(path) = line.split("Test unit written to ").nth(1) {
                stats.reproducer = Some(PathBuf::from(path.trim()));
            }
            stats.runs = stat(line, "stat::number_of_executed_units:").or(stats.runs);
            stats.exec_per_s = stat(line, "stat::average_exec_per_sec:").or(stats.exec_per_s);
            stats.new_units = stat(line, "stat::new_units_added:").or(stats.new_units);
            stats.peak_rss_mb = stat(line, "stat::peak_rss_mb:").or(stats.peak_rss_mb);
        }
        stats
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let or_unknown = |value: Option<u64>| value.map_or("?".to_owned(), |v| v.to_string());
        write!(
            f,
            "{} runs, {} exec/s",
            or_unknown(self.runs),
            or_unknown(self.exec_per_s)
        )?;
        if let Some((cov, ft)) = self.end {
            write!(f, ", cov {cov} ft {ft}")?;
            if let Some((cov0, ft0)) = self.start {
                write!(f, " (seeds: cov {cov0} ft {ft0})")?;
            }
        }
        write!(
            f,
            ", corpus {} (+{}), peak rss {} MB",
            or_unknown(self.corpus),
            or_unknown(self.new_units),
            or_unknown(self.peak_rss_mb)
        )
    }
}

fn report_failure(
    target: &str,
    binary: &Path,
    status: Option<ExitStatus>,
    stats: &Stats,
    log: &str,
    log_path: &Path,
) {
    let how = status.map_or("did not stop in time, killed".to_owned(), |s| s.to_string());
    println!("xtask fuzz: {target}: FAILED ({how}), {stats}");
    // From the first report of the failure on: the panic message or sanitizer report, and
    // its stack trace.
    let lines: Vec<&str> = log.lines().collect();
    let first = lines
        .iter()
        .position(|line| {
            line.contains("panicked at")
                || line.starts_with("==")
                || line.contains("ERROR: libFuzzer")
        })
        .unwrap_or(lines.len().saturating_sub(60));
    for line in lines[first..].iter().take(120) {
        println!("  | {line}");
    }
    println!("xtask fuzz: {target}: full log {}", log_path.display());
    let Some(reproducer) = &stats.reproducer else {
        return;
    };
    println!("xtask fuzz: {target}: reproducer {}", reproducer.display());
    if let Ok(bytes) = fs::read(reproducer) {
        println!(
            "xtask fuzz: {target}: {} bytes: {}{}",
            bytes.len(),
            hex(&bytes[..bytes.len().min(1024)]),
            if bytes.len() > 1024 { "..." } else { "" }
        );
    }
    println!(
        "xtask fuzz: reproduce with `{} {}`",
        binary.display(),
        reproducer.display()
    );
    if target == "trace_records" {
        // Its input is not a trace: this writes the trace it builds, for `memtrace report`.
        println!(
            "xtask fuzz: the trace file: `MEMTRACE_FUZZ_TRACE_OUT=crash.mtr {} {}`",
            binary.display(),
            reproducer.display()
        );
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::Stats;

    #[test]
    fn stats_are_read_from_the_log() {
        let log = "\
INFO: Seed: 123
#42\tINITED cov: 100 ft: 300 corp: 20/8Kb exec/s: 0 rss: 60Mb
#5000\tNEW    cov: 120 ft: 390 corp: 25/9Kb lim: 100 exec/s: 2500 rss: 70Mb L: 12/900 MS: 1 ChangeBit-
#9000\tDONE   cov: 130 ft: 400 corp: 27/9Kb lim: 120 exec/s: 3000 rss: 71Mb
==123== ERROR: libFuzzer: deadly signal
artifact_prefix='fuzz/artifacts/x/'; Test unit written to fuzz/artifacts/x/crash-abc
stat::number_of_executed_units: 9000
stat::average_exec_per_sec:     3000
stat::new_units_added:          7
stat::peak_rss_mb:              71
";
        let stats = Stats::parse(log);
        assert_eq!(stats.start, Some((100, 300)));
        assert_eq!(stats.end, Some((130, 400)));
        assert_eq!(stats.corpus, Some(27));
        assert_eq!(
            (
                stats.runs,
                stats.exec_per_s,
                stats.new_units,
                stats.peak_rss_mb
            ),
            (Some(9000), Some(3000), Some(7), Some(71))
        );
        assert_eq!(
            stats.reproducer.as_deref(),
            Some(std::path::Path::new("fuzz/artifacts/x/crash-abc"))
        );
        assert_eq!(
            stats.to_string(),
            "9000 runs, 3000 exec/s, cov 130 ft 400 (seeds: cov 100 ft 300), corpus 27 (+7), peak rss 71 MB"
        );
    }
}

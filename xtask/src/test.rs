//! `cargo xtask test`: build, then run the whole test suite in release mode; then, in CI or
//! with `--fuzz`, the fuzz targets for a bounded time (`cargo xtask fuzz`).

use std::{
    io::{BufRead, BufReader},
    process::{ExitCode, Stdio},
};

use anyhow::{Context, Result};
use memtrace_tests::fixtures::{in_ci, workspace_dir};

use crate::{
    build,
    command::{cargo, describe, exit_code_of},
    fuzz,
};

#[derive(clap::Args)]
pub struct Options {
    /// Also run the fuzz targets for a bounded time after the tests, as `cargo xtask fuzz`
    /// does (always in CI, CI=true).
    #[arg(long)]
    fuzz: bool,
    /// Passed on to `cargo test` after its own arguments, for example
    /// `-p memtrace-tests -- --nocapture`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    cargo_test_args: Vec<String>,
}

/// Totals over every `test result:` line of cargo's output.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Tally {
    /// Adds a line such as `test result: ok. 11 passed; 0 failed; 2 ignored; 0 measured; ...`.
    fn add(&mut self, line: &str) {
        let Some(counts) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in counts.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match what {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.ignored += count,
                _ => {}
            }
        }
    }
}

pub fn run(options: &Options) -> Result<ExitCode> {
    let (tools, memtrace) = build::run()?;
    // Default members only: memtrace-ebpf builds for the BPF target, through memtrace's
    // build script, never for the host. Same profile as the build, so nothing is rebuilt.
    let mut command = cargo();
    command
        .args(["test", "--release", "--no-fail-fast"])
        .args(&options.cargo_test_args)
        .env("MEMTRACE_BIN", &memtrace)
        .env("PATH", tools.path_with_bpf_linker()?)
        .current_dir(workspace_dir())
        .stdout(Stdio::piped());
    println!("xtask: {}", describe(&command));
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot run `{}`", describe(&command)))?;

    // Pass the output through, and count the results on the way.
    let mut tally = Tally::default();
    let stdout = child
        .stdout
        .take()
        .context("cargo test has no stdout pipe")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("cannot read the output of cargo test")?;
        println!("{line}");
        tally.add(&line);
    }
    let status = child
        .wait()
        .with_context(|| format!("cannot wait for `{}`", describe(&command)))?;

    // Each fuzz target counts as one test; one that cannot even be built fails them all.
    let mut fuzz_failed = false;
    if options.fuzz || in_ci() {
        let outcome =
            fuzz::fuzz(&fuzz::Options::default(), &tools.cargo_fuzz_dir).unwrap_or_else(|error| {
                println!("xtask fuzz: error: {error:#}");
                fuzz::Outcome {
                    passed: 0,
                    failed: fuzz::TARGETS.len() as u64,
                }
            });
        tally.passed += outcome.passed;
        tally.failed += outcome.failed;
        fuzz_failed = outcome.failed > 0;
    }
    let ok = status.success() && !fuzz_failed;
    println!(
        "xtask test: {} passed, {} failed, {} ignored ({})",
        tally.passed,
        tally.failed,
        tally.ignored,
        if ok { "ok" } else { "FAILED" }
    );
    Ok(if status.success() && fuzz_failed {
        ExitCode::FAILURE
    } else {
        exit_code_of(status)
    })
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn tally_sums_result_lines() {
        let mut tally = Tally::default();
        tally.add("test result: ok. 11 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 4.20s");
        tally.add("test something ... ok");
        tally.add("test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 5 filtered out; finished in 0.01s");
        assert_eq!((tally.passed, tally.failed, tally.ignored), (14, 1, 2));
    }
}

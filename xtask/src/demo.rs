//! `cargo xtask demo`: trace the bundled leaking demo service (`tests/go/demo`) with memtrace.

use std::process::{Command, ExitCode};

use anyhow::Result;
use memtrace_tests::fixtures::{build_go_program, Variant};

use crate::{
    build,
    command::{self, exit_code_of},
};

#[derive(clap::Args)]
pub struct Options {
    /// How long the demo runs and memtrace traces it (e.g. 30s, 5m).
    #[arg(long, default_value = "30s")]
    duration: String,
    /// The Go version to build the demo with.
    #[arg(long, default_value = "1.26.6")]
    go: String,
    /// More memtrace options, after `--`; for example `-- --json demo.json`.
    #[arg(last = true)]
    memtrace_args: Vec<String>,
}

pub fn run(options: &Options) -> Result<ExitCode> {
    let (_tools, memtrace) = build::run()?;
    let demo = build_go_program("demo", &options.go, Variant::Default, &[], "")?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("xtask: note: memtrace needs root to load its BPF programs");
    }
    let mut trace = Command::new(&memtrace);
    trace
        .arg("--duration")
        .arg(&options.duration)
        .args(&options.memtrace_args)
        .arg("--")
        .arg(&demo)
        // memtrace waits for its command after tracing stops: end the demo at the same time.
        .arg("-duration")
        .arg(&options.duration);
    println!("xtask: {}", command::describe(&trace));
    Ok(exit_code_of(command::status(&mut trace)?))
}

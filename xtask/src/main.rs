//! Development tasks for memtrace, run as `cargo xtask <task>` (an alias for
//! `cargo run --package xtask --release --`).
//!
//! Tools and toolchains go to a cache outside the repository, `$MEMTRACE_CACHE` or
//! `$HOME/.cache/memtrace`; see `setup.rs`.

mod bench;
mod build;
mod command;
mod demo;
mod fuzz;
mod setup;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Development tasks for memtrace")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need: the nightly toolchain with rust-src,
    /// bpf-linker, the Go toolchains, and the crates (idempotent; fast when done).
    Setup,
    /// Setup, then build the memtrace binary (release).
    Build,
    /// Build, then run the whole test suite (release); root-only tests skip without root.
    Test(test::Options),
    /// Build, then trace the bundled leaking demo service.
    Demo(demo::Options),
    /// Build, then measure memtrace's overhead on an allocation-heavy Go program.
    Bench(bench::Options),
    /// Build the fuzz targets of fuzz/ and run each for a bounded time; fails on any crash.
    Fuzz(fuzz::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::Build => build::run().map(|(_, memtrace)| {
            println!("xtask: built {}", memtrace.display());
            ExitCode::SUCCESS
        }),
        Task::Test(options) => test::run(&options),
        Task::Demo(options) => demo::run(&options),
        Task::Bench(options) => bench::run(&options),
        Task::Fuzz(options) => fuzz::run(&options),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

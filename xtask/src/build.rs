//! `cargo xtask build`: setup, then the release build of the memtrace binary.

use std::path::PathBuf;

use anyhow::{ensure, Result};
use memtrace_tests::fixtures::{target_dir, workspace_dir};

use crate::{
    command::{self, cargo},
    setup::{self, Tools},
};

/// Runs setup and builds memtrace; returns the tools and the path of the binary.
pub fn run() -> Result<(Tools, PathBuf)> {
    let tools = setup::ensure_all()?;
    // aya-build runs bpf-linker from PATH (through `rustup run nightly cargo build`).
    command::run(
        cargo()
            .args(["build", "--release", "--package", "memtrace"])
            .env("PATH", tools.path_with_bpf_linker()?)
            .current_dir(workspace_dir()),
    )?;
    let memtrace = release_binary();
    ensure!(
        memtrace.is_file(),
        "the build did not produce {}",
        memtrace.display()
    );
    Ok((tools, memtrace))
}

/// Where the release build puts memtrace.
pub fn release_binary() -> PathBuf {
    target_dir().join("release").join("memtrace")
}

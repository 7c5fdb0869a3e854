use std::{env, fs, path::PathBuf};

use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

/// Builds the eBPF object (memtrace-ebpf, on nightly, linked by bpf-linker) into OUT_DIR, where
/// `src/bpf.rs` embeds it.
///
/// With AYA_BUILD_SKIP=1 (fast `cargo check`/`clippy` without the BPF toolchain) an empty
/// object is written instead; the binary then refuses to trace and says why.
fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    if env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        fs::write(out_dir.join("memtrace"), []).context("writing the empty eBPF stub")?;
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return Ok(());
    }
    // `cargo xtask setup` installs bpf-linker into the cache; find it there without asking
    // the user to change PATH.
    let cache = env::var_os("MEMTRACE_CACHE")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/memtrace")));
    if let Some(cache) = cache {
        let linker_dir = cache.join("bpf-linker/bin");
        if linker_dir.is_dir() {
            let path = env::var_os("PATH").unwrap_or_default();
            let mut dirs = vec![linker_dir];
            dirs.extend(env::split_paths(&path));
            // SAFETY: build scripts are single-threaded here; the variable is only read by
            // the child processes aya-build spawns below.
            unsafe { env::set_var("PATH", env::join_paths(dirs)?) };
        }
    }
    println!("cargo:rerun-if-env-changed=MEMTRACE_CACHE");
    let ebpf_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../memtrace-ebpf");
    let ebpf_dir = ebpf_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [Package {
            name: "memtrace-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}

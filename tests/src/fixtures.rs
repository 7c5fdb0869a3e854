//! Fixtures shared by memtrace's tests and by `xtask`: where the Go toolchains live, building
//! the Go test programs in `tests/go/`, finding the memtrace binary under test, and deciding
//! whether root-only BPF tests can run.
//!
//! Everything that downloads or installs lives in `cargo xtask setup`; this module only uses
//! what setup left in [`cache_dir`], and says so when something is missing.

mod bpf_support;
pub mod chromium;
mod go_build;
pub mod http;
pub mod pod;
pub mod prometheus;

use std::{
    env,
    path::{Path, PathBuf},
};

pub use go_build::{build_go_program, configure_offline_go_env};

/// The Go versions memtrace is tested against. `cargo xtask setup` installs all of them.
pub const GO_VERSIONS: &[&str] = &["1.21.13", "1.22.10", "1.24.11", "1.26.6", "1.27.3"];

/// The Go test programs in `tests/go/`, one directory (a `main` package) each.
pub const GO_PROGRAMS: &[&str] = &[
    "allocs",
    "bench",
    "churn",
    "demo",
    "idle",
    "stress",
    "symtest",
    "leaks",
    "heaporacle",
    "weakdeath",
    "goleaks",
    "gocount",
    "gobench",
];

/// How a Go test program is linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    /// A plain `go build`: static, non-PIE, with symbols and DWARF.
    Default,
    /// `-ldflags='-s -w'`: no `.symtab` and no DWARF, only `.gopclntab`.
    Stripped,
    /// `-buildmode=pie`: position-independent, loaded at a random base.
    Pie,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::Default, Variant::Stripped, Variant::Pie];

    /// The name used in fixture file names and test output.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Default => "default",
            Variant::Stripped => "stripped",
            Variant::Pie => "pie",
        }
    }

    /// The `go build` flags that make this variant.
    pub fn go_build_flags(self) -> &'static [&'static str] {
        match self {
            Variant::Default => &[],
            Variant::Stripped => &["-ldflags=-s -w"],
            Variant::Pie => &["-buildmode=pie"],
        }
    }
}

/// Where `cargo xtask setup` keeps toolchains and tools: `$MEMTRACE_CACHE` if set, else
/// `$HOME/.cache/memtrace`. It is outside the repository so that clones and `cargo clean`
/// keep it.
///
/// # Panics
/// If neither variable is set.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = env::var_os("MEMTRACE_CACHE").filter(|dir| !dir.is_empty()) {
        return PathBuf::from(dir);
    }
    match env::var_os("HOME").filter(|home| !home.is_empty()) {
        Some(home) => PathBuf::from(home).join(".cache").join("memtrace"),
        None => {
            panic!("neither MEMTRACE_CACHE nor HOME is set, so the memtrace cache cannot be found")
        }
    }
}

/// The directory under [`cache_dir`] where Go `version` is (or will be) installed by setup.
pub fn go_install_dir(version: &str) -> PathBuf {
    cache_dir().join("go").join(version)
}

/// GOROOT of Go `version`, as installed by `cargo xtask setup`.
///
/// # Panics
/// If that Go version is not installed.
pub fn goroot(version: &str) -> PathBuf {
    let goroot = go_install_dir(version).join("go");
    assert!(
        goroot.join("bin").join("go").is_file(),
        "Go {version} is not installed (no {}/bin/go); run `cargo xtask setup` first",
        goroot.display()
    );
    goroot
}

/// The `go` command of Go `version`.
///
/// # Panics
/// If that Go version is not installed.
pub fn go_binary(version: &str) -> PathBuf {
    goroot(version).join("bin").join("go")
}

/// The root of the cargo workspace (the directory holding the top-level `Cargo.toml`).
///
/// # Panics
/// Never: the tests crate is always one level below the workspace root.
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits one level below the workspace root")
        .to_path_buf()
}

/// The source directory of Go test program `name`.
pub fn go_source_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("go").join(name)
}

/// The cargo target directory: the one holding the running executable (tests and xtask both
/// run from it), else `$CARGO_TARGET_DIR`, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    let running_from_target_dir = env::current_exe().ok().and_then(|exe| {
        exe.ancestors()
            .skip(1)
            .find(|dir| dir.join("CACHEDIR.TAG").is_file())
            .map(Path::to_path_buf)
    });
    if let Some(dir) = running_from_target_dir {
        return dir;
    }
    match env::var_os("CARGO_TARGET_DIR").filter(|dir| !dir.is_empty()) {
        Some(dir) => workspace_dir().join(dir),
        None => workspace_dir().join("target"),
    }
}

/// Builds Go test program `name` (from `tests/go/<name>/`) with Go `version` as `variant`, and
/// returns the path of the executable, `<target>/go-fixtures/<name>-<version>-<variant>`.
///
/// It rebuilds only when a source file is newer than the executable, and it is safe to call
/// from several threads and processes at once.
///
/// # Panics
/// If Go `version` is not installed or the build fails (with the compiler's output).
pub fn go_program(name: &str, version: &str, variant: Variant) -> PathBuf {
    go_program_with_env(name, version, variant, &[], "")
}

/// Like [`go_program`], with extra environment for `go build` (for example
/// `GOEXPERIMENT=sizespecializedmalloc`). `suffix` is appended to the executable's name so
/// that builds with different environments do not overwrite each other; it must not be empty
/// when `env` is not.
///
/// # Panics
/// As [`go_program`], and when `env` is given without a `suffix`.
pub fn go_program_with_env(
    name: &str,
    version: &str,
    variant: Variant,
    env: &[(&str, &str)],
    suffix: &str,
) -> PathBuf {
    match build_go_program(name, version, variant, env, suffix) {
        Ok(path) => path,
        Err(error) => panic!("{error:#}"),
    }
}

/// The line number (1-based) in `tests/go/<program>/main.go` of the code line that ends with
/// the comment marker `// SITE:<site>`.
///
/// # Panics
/// If the source cannot be read or the marker is missing or not unique.
pub fn site_line(program: &str, site: &str) -> u32 {
    let source_path = go_source_dir(program).join("main.go");
    let source = std::fs::read_to_string(&source_path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", source_path.display()));
    let marker = format!("// SITE:{site}");
    let lines: Vec<u32> = source
        .lines()
        .zip(1..)
        // Only trailing comments on code lines count, not documentation mentioning a marker.
        .filter(|(line, _)| !line.trim_start().starts_with("//"))
        .filter(|(line, _)| {
            line.find(&marker).is_some_and(|at| {
                let rest = &line[at + marker.len()..];
                !rest.starts_with(|c: char| c.is_alphanumeric() || c == '_')
            })
        })
        .map(|(_, number)| number)
        .collect();
    match lines.as_slice() {
        [line] => *line,
        [] => panic!("no `{marker}` in {}", source_path.display()),
        _ => panic!(
            "`{marker}` appears on several lines of {}: {lines:?}",
            source_path.display()
        ),
    }
}

/// The memtrace binary under test: `$MEMTRACE_BIN` if set, else `<target>/release/memtrace`.
pub fn memtrace_bin() -> PathBuf {
    match env::var_os("MEMTRACE_BIN").filter(|bin| !bin.is_empty()) {
        Some(bin) => PathBuf::from(bin),
        None => target_dir().join("release").join("memtrace"),
    }
}

/// A name unique among all runs on this machine right now (this process, and a counter).
fn unique_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Whether the tests run in CI (`CI=true`). Root-only tests must then fail, not skip, when
/// BPF is unavailable.
pub fn in_ci() -> bool {
    env::var("CI").is_ok_and(|ci| ci.eq_ignore_ascii_case("true") || ci == "1")
}

/// Gate for tests that need root and BPF uprobes.
///
/// Returns `Ok(())` when the process is root and can load BPF programs, create a ring buffer
/// and create uprobes. Otherwise, in CI it panics with the reason; elsewhere it prints
/// `skipped: <reason>` to stderr and returns `Err(())`, so the test can return early:
///
/// ```no_run
/// # use memtrace_tests::fixtures::require_bpf;
/// if require_bpf().is_err() {
///     return;
/// }
/// ```
///
/// # Errors
/// `Err(())` when the test should be skipped.
///
/// # Panics
/// In CI, when BPF is unavailable.
#[expect(
    clippy::result_unit_err,
    reason = "the error carries no information: the test just returns"
)]
pub fn require_bpf() -> Result<(), ()> {
    match bpf_support::check() {
        Ok(()) => Ok(()),
        Err(reason) if in_ci() => {
            panic!("BPF is required in CI (CI=true) but unavailable: {reason}")
        }
        Err(reason) => {
            eprintln!("skipped: {reason}");
            Err(())
        }
    }
}

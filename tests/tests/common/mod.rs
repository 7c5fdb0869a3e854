//! Running memtrace against Go programs, for the end-to-end tests.

#![allow(dead_code, reason = "each test binary uses a different part")]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Mutex, MutexGuard},
};

use memtrace_tests::fixtures::memtrace_bin;
use serde_json::Value;

/// BPF tests run one at a time: on two cores, parallel traced programs would make timings
/// and the stress tests meaningless.
static BPF_LOCK: Mutex<()> = Mutex::new(());

pub fn serialize() -> MutexGuard<'static, ()> {
    BPF_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub struct Traced {
    pub output: Output,
    pub report: Option<Value>,
}

impl Traced {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    pub fn code(&self) -> Option<i32> {
        self.output.status.code()
    }
    pub fn report(&self) -> &Value {
        self.report.as_ref().unwrap_or_else(|| {
            panic!(
                "memtrace wrote no JSON report (exit {:?})\nstderr:\n{}",
                self.code(),
                self.stderr()
            )
        })
    }
}

pub fn temp_json(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("memtrace-test-{}-{name}.json", std::process::id()))
}

/// Runs `memtrace <args> --json F -- <program> <program_args>` and reads the report.
pub fn trace_launch(
    args: &[&str],
    program: &Path,
    program_args: &[&str],
    env: &[(&str, &str)],
) -> Traced {
    let json = temp_json(program.file_name().unwrap().to_str().unwrap());
    let _ = std::fs::remove_file(&json);
    let mut command = Command::new(memtrace_bin());
    command
        .args(args)
        .arg("--no-live")
        .arg("--json")
        .arg(&json)
        .arg("--")
        .arg(program)
        .args(program_args)
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    let output = command.output().expect("memtrace runs");
    let report = std::fs::read(&json)
        .ok()
        .map(|bytes| serde_json::from_slice(&bytes).expect("the JSON report parses"));
    let _ = std::fs::remove_file(&json);
    Traced { output, report }
}

/// Starts `memtrace --no-live --duration D --json F --pid PID` in the background; returns it
/// and F.
pub fn trace_pid(pid: u32, duration: &str, name: &str) -> (Child, PathBuf) {
    let json = temp_json(name);
    let _ = std::fs::remove_file(&json);
    let child = Command::new(memtrace_bin())
        .args(["--no-live", "--duration", duration, "--json"])
        .arg(&json)
        .args(["--pid", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("memtrace runs");
    (child, json)
}

/// Waits for a [`trace_pid`] memtrace, asserts it succeeded, and reads (then removes) its
/// report.
pub fn finish_traced(child: Child, json: &Path, what: &str) -> Value {
    let output = child.wait_with_output().expect("memtrace runs");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{what}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = serde_json::from_slice(&std::fs::read(json).expect("a JSON report"))
        .expect("the JSON report parses");
    let _ = std::fs::remove_file(json);
    report
}

/// The workloads a corpus program (`leaks`, `goleaks`) lists with `-list`, and whether each
/// is a leak (else a control).
pub fn program_patterns(binary: &Path) -> Vec<(String, bool)> {
    let output = Command::new(binary)
        .arg("-list")
        .output()
        .expect("the program runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "PATTERN").then_some(())?;
            let name = words.next()?.to_owned();
            Some((name, words.next()? == "leak"))
        })
        .collect()
}

/// `KEY value` lines printed by the Go test programs.
pub fn program_value(stdout: &str, key: &str) -> u64 {
    stdout
        .lines()
        .find_map(|line| {
            line.strip_prefix(key)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no `{key} <n>` line in:\n{stdout}"))
}

pub fn u64_at(report: &Value, pointer: &str) -> u64 {
    report
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("report has no number at {pointer}"))
}

/// Relative difference of `measured` from `truth`.
pub fn relative_error(measured: u64, truth: u64) -> f64 {
    (measured as f64 - truth as f64).abs() / truth.max(1) as f64
}

/// The report's site for `function`, if any.
pub fn site<'a>(report: &'a Value, function: &str) -> Option<&'a Value> {
    report["alloc_sites"]
        .as_array()?
        .iter()
        .find(|site| site["function"] == function)
}

/// A Go test program that announced itself with `READY <pid>`; killed when dropped.
pub struct Running {
    pub child: std::process::Child,
    pub pid: u32,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `program` and waits for its `READY <pid>` line.
pub fn start_ready(program: &Path, args: &[&str]) -> Running {
    use std::io::{BufRead, BufReader};

    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("piped stdout"))
        .read_line(&mut line)
        .expect("a READY line");
    let pid = line
        .trim()
        .strip_prefix("READY ")
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "{}: expected `READY <pid>`, got {line:?}",
                program.display()
            )
        });
    Running { child, pid }
}

/// One `#[test]` per Go version, each running `$check(version)` when BPF is available, one at
/// a time.
#[macro_export]
macro_rules! per_go_version {
    ($check:ident) => {
        #[test]
        fn go_1_21() {
            $crate::common::run_for_version($check, 0);
        }
        #[test]
        fn go_1_22() {
            $crate::common::run_for_version($check, 1);
        }
        #[test]
        fn go_1_24() {
            $crate::common::run_for_version($check, 2);
        }
        #[test]
        fn go_1_26() {
            $crate::common::run_for_version($check, 3);
        }
        #[test]
        fn go_1_27() {
            $crate::common::run_for_version($check, 4);
        }
    };
}

pub fn run_for_version(check: fn(&str), index: usize) {
    if memtrace_tests::fixtures::require_bpf().is_ok() {
        let _serial = serialize();
        check(memtrace_tests::fixtures::GO_VERSIONS[index]);
    }
}

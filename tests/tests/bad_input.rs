//! Bad input gets a one-line error and a distinct exit code, never a panic.

mod common;

use std::{
    os::unix::fs::PermissionsExt,
    process::{Command, Output, Stdio},
};

use memtrace_tests::fixtures::{go_program, memtrace_bin, require_bpf, Variant};

const NO_SUCH_PROCESS: i32 = 3;
const NOT_GO: i32 = 4;
const UNSUPPORTED_GO: i32 = 5;
const PERMISSION_DENIED: i32 = 6;
const LAUNCH_FAILED: i32 = 9;

fn memtrace(args: &[&str]) -> Output {
    Command::new(memtrace_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("memtrace runs")
}

/// Exit code and the single line memtrace printed.
fn error_of(output: &Output) -> (Option<i32>, String) {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "memtrace panicked:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected a one-line error, got:\n{stderr}");
    assert!(lines[0].starts_with("memtrace: "), "{stderr}");
    (output.status.code(), lines[0].to_owned())
}

/// A pid that is not in use.
fn unused_pid() -> u32 {
    let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .map_or(32768, |s| s.trim().parse().unwrap_or(32768));
    (300..max)
        .rev()
        .find(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        .unwrap()
}

#[test]
fn missing_pid() {
    let (code, line) = error_of(&memtrace(&["--pid", &unused_pid().to_string()]));
    assert_eq!(code, Some(NO_SUCH_PROCESS), "{line}");
    assert!(line.contains("no process with pid"), "{line}");
}

#[test]
fn not_a_go_process() {
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let output = memtrace(&["--pid", &sleeper.id().to_string()]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let (code, line) = error_of(&output);
    assert_eq!(code, Some(NOT_GO), "{line}");
    assert!(line.contains("is not a Go program"), "{line}");

    let (code, line) = error_of(&memtrace(&["--", "/bin/true"]));
    assert_eq!(code, Some(NOT_GO), "{line}");
}

#[test]
fn command_that_does_not_exist() {
    let (code, line) = error_of(&memtrace(&["--", "/nonexistent/program"]));
    assert_eq!(code, Some(LAUNCH_FAILED), "{line}");
}

/// A real Go 1.21 binary whose build info claims Go 1.19 (same length, so nothing else moves).
#[test]
fn unsupported_go_version() {
    let program = go_program("idle", "1.21.13", Variant::Default);
    let mut bytes = std::fs::read(&program).unwrap();
    let needle = b"go1.21.13";
    let mut patched = 0;
    // Every copy: .go.buildinfo and runtime.buildVersion.
    while let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
        bytes[at..at + needle.len()].copy_from_slice(b"go1.19.13");
        patched += 1;
    }
    assert!(patched > 0, "version string in the binary");
    let old = std::env::temp_dir().join(format!("memtrace-go119-{}", std::process::id()));
    std::fs::write(&old, &bytes).unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
    // -duration: should memtrace wrongly trace it, the test still ends.
    let output = memtrace(&["--", old.to_str().unwrap(), "-duration", "2s"]);
    let _ = std::fs::remove_file(&old);
    let (code, line) = error_of(&output);
    assert_eq!(code, Some(UNSUPPORTED_GO), "{line}");
    assert!(
        line.contains("go1.19.13") && line.contains("1.21"),
        "{line}"
    );
}

#[test]
fn no_permission() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // Unprivileged already: BPF itself must be refused.
        let program = go_program("idle", "1.26.6", Variant::Default);
        let (code, line) = error_of(&memtrace(&["--", program.to_str().unwrap()]));
        assert_eq!(code, Some(PERMISSION_DENIED), "{line}");
        return;
    }
    if require_bpf().is_err() {
        return;
    }
    // As root: run memtrace as `nobody` against a root-owned Go process.
    let program = go_program("idle", "1.26.6", Variant::Default);
    let mut idle = Command::new(&program)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(memtrace_bin())
        .args(["--pid", &idle.id().to_string()])
        .output()
        .expect("setpriv runs");
    let _ = idle.kill();
    let _ = idle.wait();
    let (code, line) = error_of(&output);
    assert_eq!(code, Some(PERMISSION_DENIED), "{line}");
    assert!(line.contains("permission denied"), "{line}");
}

#[test]
fn usage_errors_are_code_2() {
    let output = memtrace(&[]);
    assert_eq!(output.status.code(), Some(2));
    let output = memtrace(&["--pid", "12", "--", "/bin/true"]);
    assert_eq!(output.status.code(), Some(2));
    let output = memtrace(&["--pid", "12", "--duration", "forever"]);
    assert_eq!(output.status.code(), Some(2));
}

const CORRUPT_TRACE: i32 = 7;

#[test]
fn trace_files_that_are_not_traces() {
    let dir = std::env::temp_dir().join(format!("memtrace-bad-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("notes.txt");
    std::fs::write(&text, "not a trace\n").unwrap();
    let empty = dir.join("empty.mtr");
    std::fs::write(&empty, b"").unwrap();
    for file in [&text, &empty] {
        let path = file.to_str().unwrap();
        let (code, line) = error_of(&memtrace(&["report", path]));
        assert_eq!(code, Some(CORRUPT_TRACE), "{line}");
        assert!(line.contains("not a memtrace trace"), "{line}");
        let (code, line) = error_of(&memtrace(&["diff", path, path]));
        assert_eq!(code, Some(CORRUPT_TRACE), "{line}");
    }
    let missing = dir.join("missing.mtr");
    let (code, line) = error_of(&memtrace(&["report", missing.to_str().unwrap()]));
    assert_eq!(code, Some(1), "{line}");
    assert!(line.contains("No such file"), "{line}");
    // A JSON file that is not a report.
    let json = dir.join("other.json");
    std::fs::write(&json, "{\"hello\": 1}").unwrap();
    let json = json.to_str().unwrap();
    let (code, line) = error_of(&memtrace(&["diff", json, json]));
    assert_eq!(code, Some(CORRUPT_TRACE), "{line}");
    assert!(line.contains("not a memtrace JSON report"), "{line}");
    // Nothing is written where a trace cannot be created, and the target is not touched.
    let (code, line) = error_of(&memtrace(&[
        "record",
        "-o",
        "/nonexistent-dir/trace.mtr",
        "--pid",
        "1",
    ]));
    assert_eq!(code, Some(1), "{line}");
    assert!(
        line.contains("creating /nonexistent-dir/trace.mtr"),
        "{line}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

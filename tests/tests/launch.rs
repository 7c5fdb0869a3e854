//! Launch mode keeps the target's stdin, stdout, stderr, environment and exit code; the
//! stress program runs to completion under tracing with the same output as untraced.

mod common;

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use common::{serialize, trace_launch, u64_at};
use memtrace_tests::fixtures::{go_program, memtrace_bin, require_bpf, Variant, GO_VERSIONS};

const GO: &str = "1.26.6";

#[test]
fn exit_code_environment_and_stdio_pass_through() {
    if require_bpf().is_err() {
        return;
    }
    let _serial = serialize();
    let program = go_program("allocs", GO, Variant::Default);

    let traced = trace_launch(
        &[],
        &program,
        &["-exit", "7", "2000"],
        &[("MEMTRACE_TEST_ENV", "kept")],
    );
    assert_eq!(traced.code(), Some(7), "stderr:\n{}", traced.stderr());
    let stdout = traced.stdout();
    assert!(stdout.starts_with("ENV kept\n"), "stdout:\n{stdout}");
    // The report goes to stderr in launch mode, never into the target's stdout.
    assert!(!stdout.contains("memtrace"), "stdout:\n{stdout}");
    assert!(
        traced.stderr().contains("allocations:"),
        "stderr:\n{}",
        traced.stderr()
    );
    assert_eq!(traced.report()["target"]["exit"], "exit code 7");

    let mut child = Command::new(memtrace_bin())
        .args([
            "--no-live",
            "--",
            program.to_str().unwrap(),
            "-echo-stdin",
            "1000",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"line one\nline two\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.starts_with("line one\nline two\nMALLOCS "),
        "stdout:\n{stdout}"
    );
}

#[test]
fn killed_target_gives_128_plus_signal() {
    if require_bpf().is_err() {
        return;
    }
    let _serial = serialize();
    let program = go_program("idle", GO, Variant::Default);
    let mut child = Command::new(memtrace_bin())
        .args(["--no-live", "--", program.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let pid: i32 = line.trim().strip_prefix("READY ").unwrap().parse().unwrap();
    // SAFETY: sending SIGKILL to the test's own grandchild.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(128 + 9),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn stress_program_runs_unharmed() {
    if require_bpf().is_err() {
        return;
    }
    let _serial = serialize();
    for version in GO_VERSIONS {
        let program = go_program("stress", version, Variant::Default);
        let untraced = Command::new(&program).output().unwrap();
        assert_eq!(untraced.status.code(), Some(0));
        let traced = trace_launch(&["--all-allocs"], &program, &[], &[]);
        assert_eq!(
            traced.code(),
            Some(0),
            "{version}: stderr:\n{}",
            traced.stderr()
        );
        assert_eq!(
            traced.stdout(),
            String::from_utf8_lossy(&untraced.stdout),
            "{version}"
        );
        assert!(u64_at(traced.report(), "/allocations/objects") > 100_000);
        assert_eq!(u64_at(traced.report(), "/events/dropped"), 0);
    }
}

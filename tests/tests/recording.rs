//! Recorded traces end to end: `memtrace record` on the leaking demo service, then `report` on
//! the file (as root, and as an unprivileged user after the binary is deleted), damaged copies
//! of it, the pprof export read by `go tool pprof`, and `diff` between recordings.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::OnceLock,
    time::Duration,
};

use memtrace_tests::fixtures::{go_binary, go_program, memtrace_bin, require_bpf, Variant};
use serde_json::Value;

const GO: &str = "1.26.6";
const SECONDS: &str = "12s";

/// The leaking demo service, recorded once for the tests of this file.
struct Recording {
    dir: PathBuf,
    trace: PathBuf,
    /// The live session's JSON report and text report (stdout).
    live_json: Value,
    live_text: String,
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("memtrace-rec-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(command: &mut Command) -> Output {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert_ne!(
        output.status.code(),
        Some(101),
        "memtrace panicked:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Attaches `memtrace record` to a copy of the demo started with `demo_args`, in `dir`.
fn record_demo(dir: &Path, name: &str, demo_args: &[&str]) -> (PathBuf, Value, String) {
    // A copy of the binary, so that a test can delete it afterwards.
    let binary = dir.join(format!("demo-{name}"));
    std::fs::copy(go_program("demo", GO, Variant::Default), &binary).unwrap();
    let mut demo = common::Running {
        child: Command::new(&binary)
            .args(demo_args)
            .args(["-duration", "0"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
        pid: 0,
    };
    demo.pid = demo.child.id();
    // Let the runtime start before attaching.
    std::thread::sleep(Duration::from_millis(300));
    let trace = dir.join(format!("{name}.mtr"));
    let json = dir.join(format!("{name}-live.json"));
    let output = run(Command::new(memtrace_bin())
        .args(["record", "--no-live", "-d", SECONDS, "-o"])
        .arg(&trace)
        .arg("--json")
        .arg(&json)
        .args(["--pid", &demo.pid.to_string()]));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("memtrace: recorded "),
        "{}",
        stderr(&output)
    );
    drop(demo);
    let live_json = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    (trace, live_json, stdout(&output))
}

/// Runs `memtrace record -o DIR/NAME.mtr -- demo <demo_args>` (launch mode); returns the trace.
fn record_launched_demo(dir: &Path, name: &str, demo_args: &[&str]) -> PathBuf {
    let trace = dir.join(format!("{name}.mtr"));
    let output = run(Command::new(memtrace_bin())
        .args(["record", "--no-live", "-d", SECONDS, "-o"])
        .arg(&trace)
        .arg("--")
        .arg(go_program("demo", GO, Variant::Default))
        .args(demo_args)
        // The demo ends just after tracing stops; memtrace waits for it.
        .args(["-duration", "13s"]));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("memtrace: recorded "),
        "{}",
        stderr(&output)
    );
    trace
}

/// The leaking demo, recorded once (under the BPF lock); `None` without BPF outside CI.
fn recording() -> Option<&'static Recording> {
    static RECORDING: OnceLock<Option<Recording>> = OnceLock::new();
    RECORDING
        .get_or_init(|| {
            require_bpf().ok()?;
            let _serial = common::serialize();
            let dir = scratch_dir("leaky");
            let (trace, live_json, live_text) = record_demo(&dir, "leaky", &[]);
            Some(Recording {
                dir,
                trace,
                live_json,
                live_text,
            })
        })
        .as_ref()
}

fn report(trace: &Path, extra: &[&str]) -> Output {
    run(Command::new(memtrace_bin())
        .arg("report")
        .arg(trace)
        .args(extra))
}

fn suspect_functions(report: &Value) -> Vec<String> {
    report["leak_suspects"]
        .as_array()
        .map(|suspects| {
            suspects
                .iter()
                .map(|s| s["function"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_report_of_a_file_is_the_live_report() {
    let Some(recording) = recording() else { return };
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&recording.trace).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "trace files are private");
    assert_eq!(
        suspect_functions(&recording.live_json),
        ["main.trackSession"],
        "the live session finds the demo's leak"
    );
    let json = recording.dir.join("replayed.json");
    let output = report(&recording.trace, &["--json", json.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let replayed: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    // Everything: suspects, estimates, lifetimes, GC timeline, goroutines, losses.
    assert_eq!(replayed, recording.live_json);
    assert_eq!(stdout(&output), recording.live_text);
}

#[test]
fn report_needs_neither_root_nor_the_binary() {
    let Some(recording) = recording() else { return };
    // The recorded binary is gone (the test copied it into its directory).
    let binary = recording.dir.join("demo-leaky");
    std::fs::remove_file(&binary).unwrap();
    // An unprivileged user with a copy of the file (the original is root's, mode 0600).
    let dir = scratch_dir("nobody");
    let trace = dir.join("copy.mtr");
    std::fs::copy(&recording.trace, &trace).unwrap();
    let nobody = 65534;
    // SAFETY: chown on paths we own; no memory is involved.
    unsafe {
        let path = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
        assert_eq!(libc::chown(path.as_ptr(), nobody, nobody), 0);
        let path = std::ffi::CString::new(trace.to_str().unwrap()).unwrap();
        assert_eq!(libc::chown(path.as_ptr(), nobody, nobody), 0);
    }
    let json = dir.join("report.json");
    let output = run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(memtrace_bin())
        .arg("report")
        .arg(&trace)
        .arg("--json")
        .arg(&json));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let replayed: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(
        replayed, recording.live_json,
        "symbolized from the file alone"
    );
    let suspect = &replayed["leak_suspects"][0];
    assert!(
        suspect["file"].as_str().unwrap().ends_with("demo/main.go") && suspect["line"] != 0,
        "{suspect}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The offsets of the chunk frames in a trace file.
fn chunk_offsets(bytes: &[u8]) -> Vec<usize> {
    bytes
        .windows(4)
        .enumerate()
        .filter(|(_, window)| *window == b"MTCK")
        .map(|(at, _)| at)
        .collect()
}

#[test]
fn damaged_files_yield_what_is_left_and_fail() {
    let Some(recording) = recording() else { return };
    let bytes = std::fs::read(&recording.trace).unwrap();
    let full = recording.live_json["events"]["received"].as_u64().unwrap();
    let dir = scratch_dir("damaged");
    let damaged = dir.join("damaged.mtr");
    let chunks = chunk_offsets(&bytes);
    assert!(chunks.len() > 8, "{} chunks", chunks.len());

    // Cut at several points: the report covers what precedes the cut, the exit code says the
    // file is incomplete.
    let mut previous = 0;
    for fraction in [0.25, 0.5, 0.75, 0.99] {
        let cut = chunks[(chunks.len() as f64 * fraction) as usize] + 10;
        std::fs::write(&damaged, &bytes[..cut]).unwrap();
        let output = report(
            &damaged,
            &["--json", dir.join("cut.json").to_str().unwrap()],
        );
        assert_eq!(output.status.code(), Some(7), "{}", stderr(&output));
        assert!(
            stderr(&output).contains(&format!(
                "the file ends inside a chunk at offset {}",
                cut - 10
            )),
            "{}",
            stderr(&output)
        );
        let cut_report: Value =
            serde_json::from_slice(&std::fs::read(dir.join("cut.json")).unwrap()).unwrap();
        let received = cut_report["events"]["received"].as_u64().unwrap();
        assert!(
            received >= previous && received <= full,
            "cut at {cut}: {received} of {full} events"
        );
        previous = received;
    }
    assert!(previous > full / 2, "most events precede the last cut");

    // A chunk cut exactly at its end is whole; only the end record is missing.
    std::fs::write(&damaged, &bytes[..chunks[chunks.len() / 2]]).unwrap();
    let output = report(&damaged, &[]);
    assert_eq!(output.status.code(), Some(7));
    assert!(
        stderr(&output).contains("no end record"),
        "{}",
        stderr(&output)
    );

    // A flipped byte inside a chunk: that chunk is reported and skipped, the rest is read.
    let target = chunks[chunks.len() / 2];
    let mut flipped = bytes.clone();
    flipped[target + 40] ^= 0x55;
    std::fs::write(&damaged, &flipped).unwrap();
    let output = report(&damaged, &[]);
    assert_eq!(output.status.code(), Some(7));
    assert!(
        stderr(&output).contains(&format!("chunk at offset {target} is damaged")),
        "{}",
        stderr(&output)
    );
    assert!(
        stdout(&output).contains("leak suspects"),
        "the report is printed"
    );

    // Damage before any chunk: the header. One line, exit code 7.
    for (at, message) in [
        (0, "not a memtrace trace"),
        (30, "the trace header is damaged"),
    ] {
        let mut flipped = bytes.clone();
        flipped[at] ^= 0x01;
        std::fs::write(&damaged, &flipped).unwrap();
        let output = report(&damaged, &[]);
        assert_eq!(output.status.code(), Some(7));
        assert!(stderr(&output).contains(message), "{}", stderr(&output));
        assert_eq!(stderr(&output).lines().count(), 1, "{}", stderr(&output));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `go tool pprof -top` on `profile`: the rows of its table, heaviest first.
fn pprof_top(profile: &Path, sample_index: &str, home: &Path) -> Vec<String> {
    let output = run(Command::new(go_binary(GO))
        .args(["tool", "pprof", "-top"])
        .arg(format!("-sample_index={sample_index}"))
        .arg(profile)
        .env("HOME", home));
    assert!(
        output.status.success(),
        "{sample_index}: {}",
        stderr(&output)
    );
    // The rows follow the header line "flat  flat%   sum%        cum   cum%".
    stdout(&output)
        .lines()
        .skip_while(|line| !line.trim_start().starts_with("flat"))
        .skip(1)
        .map(str::to_owned)
        .collect()
}

#[test]
fn go_tool_pprof_reads_the_profiles() {
    let Some(recording) = recording() else { return };
    // From a file: every sample type reads, with the code that allocates on top (the
    // runtime's allocator frames are hidden, as in Go's own heap profiles).
    let profile = recording.dir.join("heap.pb.gz");
    let output = report(&recording.trace, &["--pprof", profile.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    for sample_index in [
        "alloc_space",
        "alloc_objects",
        "inuse_space",
        "inuse_objects",
    ] {
        let rows = pprof_top(&profile, sample_index, &recording.dir);
        assert!(
            rows.iter().any(|row| row.ends_with("main.trackSession")),
            "{sample_index}: {rows:#?}"
        );
        assert!(!rows[0].contains("runtime."), "{sample_index}: {rows:#?}");
    }

    // Folded stacks and the flame graph, from the same file.
    let folded = recording.dir.join("inuse.folded");
    let svg = recording.dir.join("inuse.svg");
    let output = report(
        &recording.trace,
        &[
            "--folded",
            folded.to_str().unwrap(),
            "--flamegraph",
            svg.to_str().unwrap(),
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let folded = std::fs::read_to_string(&folded).unwrap();
    assert!(
        folded.lines().any(|line| {
            let (stack, value) = line.rsplit_once(' ').unwrap();
            stack.ends_with(";main.trackSession") && value.parse::<u64>().unwrap() > 0
        }),
        "{folded}"
    );
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<?xml") && svg.contains("main.trackSession"));

    // From a live session, on a program whose leak is most of its live heap: the leaking
    // site tops inuse_space.
    let _serial = common::serialize();
    let dir = scratch_dir("pprof");
    let profile = dir.join("live.pb.gz");
    let leaks = go_program("leaks", GO, Variant::Default);
    let output = run(Command::new(memtrace_bin())
        .args(["--no-live", "-d", "10s", "--pprof"])
        .arg(&profile)
        .arg("--")
        .arg(&leaks)
        .args(["-pattern", "globalmap", "-duration", "11s"]));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let rows = pprof_top(&profile, "inuse_space", &dir);
    assert!(
        rows[0].ends_with("main.openSession"),
        "the leaking site tops inuse_space: {rows:#?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn diff_flags_an_added_leak_and_stays_quiet_otherwise() {
    let Some(leaky) = recording() else { return };
    let (base, base_again) = {
        let _serial = common::serialize();
        let dir = scratch_dir("fixed");
        (
            record_demo(&dir, "fixed", &["-fixed"]).0,
            record_launched_demo(&dir, "fixed-again", &["-fixed"]),
        )
    };
    let diff = |base: &Path, head: &Path| {
        run(Command::new(memtrace_bin())
            .arg("diff")
            .arg(base)
            .arg(head)
            .args(["--fail-on-new-leaks", "--max-live-growth", "1M"]))
    };
    // One attached, one launched (`record -- cmd`): the same program either way.
    let quiet = diff(&base, &base_again);
    assert_eq!(
        quiet.status.code(),
        Some(0),
        "two recordings of the same program:\n{}{}",
        stdout(&quiet),
        stderr(&quiet)
    );
    assert!(
        stdout(&quiet).contains("no significant changes"),
        "{}",
        stdout(&quiet)
    );
    let flagged = diff(&base, &leaky.trace);
    assert_eq!(
        flagged.status.code(),
        Some(11),
        "the leak fails the gate:\n{}{}",
        stdout(&flagged),
        stderr(&flagged)
    );
    let text = stdout(&flagged);
    assert!(
        text.lines()
            .any(|line| line.contains("main.trackSession") && line.contains("new leak suspect")),
        "{text}"
    );
    // Without a gate the same comparison reports and succeeds.
    let report_only = run(Command::new(memtrace_bin())
        .arg("diff")
        .arg(&base)
        .arg(&leaky.trace));
    assert_eq!(report_only.status.code(), Some(0));
    assert!(stdout(&report_only).contains("main.trackSession"));
}

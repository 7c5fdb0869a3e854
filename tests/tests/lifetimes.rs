//! Sampled mode against the Go runtime's own truth: live bytes per site against the runtime's
//! heap profile, death cycles against weak pointers, the sampling rate restored after detach,
//! and sampling starting within a second of attach.

mod common;

use std::{
    collections::HashMap,
    io::{Read, Seek, SeekFrom},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use common::{serialize, site, start_ready, temp_json, trace_launch, Running};
use memtrace_tests::fixtures::{
    go_binary, go_program, memtrace_bin, require_bpf, Variant, GO_VERSIONS,
};
use serde_json::Value;

/// Go versions with package `weak`.
const WEAK_VERSIONS: [&str; 3] = ["1.24.11", "1.26.6", "1.27.3"];

/// Every sampled object's death cycle equals the GC cycle after which the program saw its weak
/// pointer turn nil.
#[test]
fn death_cycles_match_weak_pointers() {
    if require_bpf().is_err() {
        return;
    }
    let _serial = serialize();
    for version in WEAK_VERSIONS {
        for variant in [Variant::Default, Variant::Stripped] {
            let what = format!("weakdeath {version} {}", variant.name());
            let program = go_program("weakdeath", version, variant);
            let csv =
                temp_json(&format!("weak-{version}-{}", variant.name())).with_extension("csv");
            let traced = trace_launch(
                &["--sample-rate", "1", "--lifetimes", csv.to_str().unwrap()],
                &program,
                &[],
                &[],
            );
            assert_eq!(traced.code(), Some(0), "{what}: {}", traced.stderr());
            let stdout = traced.stdout();
            let mut address_of = HashMap::new();
            let mut died_at = HashMap::new();
            for line in stdout.lines() {
                let words: Vec<&str> = line.split_whitespace().collect();
                match words.as_slice() {
                    ["OBJ", index, address, _] => {
                        address_of.insert(
                            index.to_string(),
                            u64::from_str_radix(address.trim_start_matches("0x"), 16).unwrap(),
                        );
                    }
                    ["DEAD", index, numgc] => {
                        died_at.insert(index.to_string(), numgc.parse::<u64>().unwrap());
                    }
                    _ => {}
                }
            }
            assert!(
                address_of.len() >= 64 && died_at.len() == address_of.len(),
                "{what}: {stdout}"
            );
            let deaths = std::fs::read_to_string(&csv).unwrap();
            let _ = std::fs::remove_file(&csv);
            let death_cycle: HashMap<u64, u64> = deaths
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split(',').collect();
                    let address =
                        u64::from_str_radix(fields.first()?.trim_start_matches("0x"), 16).ok()?;
                    Some((address, fields.get(6)?.parse().ok()?))
                })
                .collect();
            for (index, address) in &address_of {
                let expected = died_at[index];
                let seen = death_cycle.get(address).copied();
                assert_eq!(
                    seen,
                    Some(expected),
                    "{what}: object {index} at 0x{address:x}"
                );
            }
            assert_eq!(
                traced.report()["mem_profile_rate"]["restored"],
                true,
                "{what}"
            );
        }
    }
}

/// `SITE`'s flat in-use bytes per function from `go tool pprof -top`.
fn pprof_inuse(version: &str, binary: &Path, profile: &Path) -> HashMap<String, f64> {
    let output = Command::new(go_binary(version))
        .args([
            "tool",
            "pprof",
            "-top",
            "-inuse_space",
            "-unit=B",
            "-nodecount=50",
        ])
        .arg(binary)
        .arg(profile)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let flat = words.first()?.strip_suffix('B')?.parse::<f64>().ok()?;
            Some((words.last()?.to_string(), flat))
        })
        .collect()
}

/// memtrace rides on the very samples the runtime's heap profiler takes and scales them the
/// same way, so its live bytes per site must equal the runtime's own in-use figures up to
/// rounding (the retained objects are never freed, so the profile's final GC and the process
/// exit see the same live set). The sampling error of both against the true live heap is
/// 1/sqrt(samples) (about 18% for retainC's ~32 samples at 64 KiB), but it is the same error:
/// the bound between the two is 0.1%. The top sites must come in the same order.
#[test]
fn live_bytes_agree_with_the_runtime_heap_profile() {
    if require_bpf().is_err() {
        return;
    }
    let _serial = serialize();
    for version in GO_VERSIONS {
        let program = go_program("heaporacle", version, Variant::Default);
        let profile = temp_json(&format!("heaporacle-{version}")).with_extension("pb.gz");
        // 64 KiB instead of the default, so that even the smallest site (2 MiB) has ~32
        // samples: at 512 KiB it has 4, and none at all 2% of the time. memtrace sets the rate
        // when the runtime starts, the program sets the same one in main.
        let traced = trace_launch(
            &["--sample-rate", "64K"],
            &program,
            &[
                "-duration",
                "6s",
                "-rate",
                "65536",
                "-profile",
                profile.to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(traced.code(), Some(0), "{version}: {}", traced.stderr());
        let report = traced.report();
        let inuse = pprof_inuse(version, &program, &profile);
        let _ = std::fs::remove_file(&profile);
        for function in ["main.retainA", "main.retainB", "main.retainC"] {
            let truth = inuse
                .get(function)
                .copied()
                .unwrap_or_else(|| panic!("{version}: {function} not in {inuse:?}"));
            let ours = site(report, function).unwrap_or_else(|| panic!("{version}: no {function}"))
                ["live_bytes"]
                .as_f64()
                .unwrap();
            eprintln!("{version} {function}: memtrace {ours:.0} B, pprof {truth:.0} B");
            assert!(
                (ours - truth).abs() <= 0.001 * truth + 2.0,
                "{version} {function}: memtrace {ours} vs pprof {truth}"
            );
        }
        let mut ours: Vec<(&str, f64)> = report["alloc_sites"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| Some((s["function"].as_str()?, s["live_bytes"].as_f64()?)))
            .collect();
        ours.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top: Vec<&str> = ours.iter().take(2).map(|(f, _)| *f).collect();
        assert_eq!(top, ["main.retainA", "main.retainB"], "{version}");
    }
}

fn start_idle(version: &str) -> Running {
    start_ready(&go_program("idle", version, Variant::Default), &[])
}

/// Address of `runtime.MemProfileRate`, from `go tool nm` (independent of memtrace).
fn mem_profile_rate_address(version: &str, binary: &Path) -> u64 {
    let output = Command::new(go_binary(version))
        .args(["tool", "nm"])
        .arg(binary)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            (words.last() == Some(&"runtime.MemProfileRate"))
                .then(|| u64::from_str_radix(words[0], 16).unwrap())
        })
        .expect("runtime.MemProfileRate in go tool nm")
}

fn read_rate(pid: u32, address: u64) -> i64 {
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    mem.seek(SeekFrom::Start(address)).unwrap();
    let mut bytes = [0u8; 8];
    mem.read_exact(&mut bytes).unwrap();
    i64::from_le_bytes(bytes)
}

/// After memtrace detaches (at --duration, on Ctrl-C, on SIGTERM), the target's
/// MemProfileRate is back to its original value; while attached it is memtrace's; sampling
/// starts within a second of attaching, on every Go version.
#[test]
fn mem_profile_rate_is_restored_and_sampling_starts_at_once() {
    if require_bpf().is_err() {
        return;
    }
    let _serial = serialize();
    for version in GO_VERSIONS {
        let binary = go_program("idle", version, Variant::Default);
        let address = mem_profile_rate_address(version, &binary);
        for ending in ["duration", "SIGINT", "SIGTERM"] {
            let what = format!("idle {version}, ending by {ending}");
            let idle = start_idle(version);
            assert_eq!(read_rate(idle.pid, address), 0, "{what}: before");
            let json = temp_json(&format!("restore-{version}-{ending}"));
            let mut tracer = Command::new(memtrace_bin())
                .args([
                    "--no-live",
                    "--duration",
                    if ending == "duration" { "3s" } else { "60s" },
                    "--json",
                ])
                .arg(&json)
                .args(["--pid", &idle.pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(1500));
            assert_eq!(
                read_rate(idle.pid, address),
                512 * 1024,
                "{what}: while attached"
            );
            match ending {
                // SAFETY: signalling our own child.
                "SIGINT" => unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) },
                // SAFETY: as above.
                "SIGTERM" => unsafe { libc::kill(tracer.id() as i32, libc::SIGTERM) },
                _ => 0,
            };
            let status = tracer.wait().unwrap();
            assert_eq!(status.code(), Some(0), "{what}");
            assert_eq!(read_rate(idle.pid, address), 0, "{what}: after");
            let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
            let _ = std::fs::remove_file(&json);
            assert_eq!(report["mem_profile_rate"]["restored"], true, "{what}");
            let first = report["sampling"]["first_sample_after_s"].as_f64();
            assert!(
                first.is_some_and(|s| s < 1.0),
                "{what}: first sample after {first:?} s"
            );
        }
    }
}

/// --read-only never writes: a program that does not sample is refused with exit code 10, one
/// that samples on its own (runtime/pprof linked) is traced with its own rate.
#[test]
fn read_only_mode() {
    if require_bpf().is_err() {
        return;
    }
    let _serial = serialize();
    let idle = start_idle("1.26.6");
    let output = Command::new(memtrace_bin())
        .args(["--read-only", "--pid", &idle.pid.to_string()])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(10),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("--read-only"));
    drop(idle);

    let program = go_program("heaporacle", "1.26.6", Variant::Default);
    let traced = trace_launch(
        &["--read-only"],
        &program,
        &["-duration", "3s", "-rate", "65536"],
        &[],
    );
    assert_eq!(traced.code(), Some(0), "{}", traced.stderr());
    let report = traced.report();
    assert!(
        report["mem_profile_rate"].get("written").is_none(),
        "{}",
        report["mem_profile_rate"]
    );
    assert!(report["events"]["objects_sampled"].as_u64().unwrap() > 0);
}

/// A program that samples on its own (runtime/pprof linked) has sampled objects from before
/// memtrace attached: their deaths are counted as unmatched and kept out of the live numbers.
#[test]
fn deaths_of_objects_sampled_before_attach_are_counted_apart() {
    if require_bpf().is_err() {
        return;
    }
    let _serial = serialize();
    let program = start_ready(
        &go_program("heaporacle", "1.26.6", Variant::Default),
        &["-duration", "0", "-rate", "65536"],
    );
    let pid = program.pid;
    // Let it sample churn on its own for a while.
    std::thread::sleep(Duration::from_secs(2));
    let json = temp_json("unmatched");
    let output = Command::new(memtrace_bin())
        .args(["--no-live", "--duration", "3s", "--json"])
        .arg(&json)
        .args(["--pid", &pid.to_string()])
        .output()
        .unwrap();
    drop(program);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    let events = &report["events"];
    assert!(events["unmatched_frees"].as_u64().unwrap() > 0, "{events}");
    assert!(
        events["objects_freed"].as_u64().unwrap() >= events["unmatched_frees"].as_u64().unwrap()
    );
    // A program that samples keeps its own rate: memtrace writes nothing.
    assert_eq!(report["mem_profile_rate"]["original"], 65536);
    assert!(
        report["mem_profile_rate"].get("written").is_none(),
        "{}",
        report["mem_profile_rate"]
    );
    assert_eq!(report["sample_rate_bytes"], 65536);
}

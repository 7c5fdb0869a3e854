//! Non-root checks of the fixtures and of the Go test programs, run untraced: every program
//! builds with every Go version and variant, and behaves as its documentation says.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::fixtures::{
    build_go_program, go_program, go_program_with_env, site_line, Variant, GO_PROGRAMS, GO_VERSIONS,
};

/// The Go version used by the checks that do not need to run on every version.
const LATEST_GO: &str = "1.27.3";

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", program.display()))
}

fn stdout_of(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("the Go programs print UTF-8")
}

/// The `KEY value` lines of a program's output.
fn key_values(stdout: &str) -> HashMap<&str, &str> {
    stdout
        .lines()
        .filter_map(|line| line.split_once(' '))
        .collect()
}

fn number(values: &HashMap<&str, &str>, key: &str) -> u64 {
    let value = values
        .get(key)
        .unwrap_or_else(|| panic!("no {key} line in {values:?}"));
    value
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number: {value}"))
}

#[test]
fn every_program_builds_with_every_go_version_and_variant() {
    // Two threads, one per core: builds of different versions do not share a lock.
    let (first_half, second_half) = GO_VERSIONS.split_at(GO_VERSIONS.len() / 2);
    thread::scope(|scope| {
        for versions in [first_half, second_half] {
            scope.spawn(move || {
                for version in versions {
                    for variant in Variant::ALL {
                        for name in GO_PROGRAMS {
                            let binary = go_program(name, version, variant);
                            assert!(binary.is_file(), "{} was not built", binary.display());
                        }
                    }
                }
            });
        }
    });
}

#[test]
fn symtest_allocates_through_its_call_chain() {
    for version in GO_VERSIONS {
        for variant in Variant::ALL {
            let output = run(&go_program("symtest", version, variant), &[]);
            assert!(
                output.status.success(),
                "symtest, Go {version} {variant:?}: {output:?}"
            );
            assert_eq!(
                stdout_of(&output),
                "SYMTEST 1000 2997000\n",
                "Go {version} {variant:?}"
            );
        }
    }
    assert!(site_line("symtest", "level3") > site_line("symtest", "newPoint"));
}

#[test]
fn allocs_makes_two_million_allocations_by_default() {
    for version in GO_VERSIONS {
        let binary = go_program("allocs", version, Variant::Default);
        let started = Instant::now();
        let output = run(&binary, &[]);
        let elapsed = started.elapsed();
        assert!(output.status.success(), "allocs, Go {version}: {output:?}");
        let stdout = stdout_of(&output);
        let lines: Vec<&str> = stdout
            .lines()
            .map(|line| line.split(' ').next().unwrap())
            .collect();
        assert_eq!(
            lines,
            ["MALLOCS", "TOTAL_ALLOC", "NUMGC"],
            "Go {version}: {stdout}"
        );
        let values = key_values(&stdout);
        let mallocs = number(&values, "MALLOCS");
        assert!(
            mallocs >= 2_000_000,
            "Go {version}: only {mallocs} allocations"
        );
        assert!(
            number(&values, "TOTAL_ALLOC") > 400_000_000,
            "Go {version}: {stdout}"
        );
        assert!(number(&values, "NUMGC") >= 3, "Go {version}: {stdout}");
        // Generous: the machine may be busy with other tests.
        assert!(
            elapsed < Duration::from_secs(5),
            "Go {version}: took {elapsed:?}"
        );
    }
}

#[test]
fn allocs_site_counts_follow_the_documented_mix() {
    let iterations: u64 = 1000;
    let goroutines: u64 = 3;
    for version in GO_VERSIONS {
        for variant in Variant::ALL {
            let binary = go_program("allocs", version, variant);
            let output = run(&binary, &["-sites", "-goroutines", "3", "1000"]);
            assert!(
                output.status.success(),
                "allocs, Go {version} {variant:?}: {output:?}"
            );
            let stdout = stdout_of(&output);
            let counts: HashMap<&str, u64> = stdout
                .lines()
                .filter_map(|line| line.strip_prefix("SITE "))
                .map(|line| {
                    let fields: Vec<&str> = line.split(' ').collect();
                    (fields[0], fields[1].parse().unwrap())
                })
                .collect();
            let per_goroutine = |site: &str| counts[site] / goroutines;
            assert_eq!(per_goroutine("tiny4"), 4 * iterations, "{stdout}");
            assert_eq!(per_goroutine("tiny12"), 4 * iterations, "{stdout}");
            assert_eq!(per_goroutine("small24"), 2 * iterations, "{stdout}");
            assert_eq!(per_goroutine("small32"), 2 * iterations, "{stdout}");
            assert_eq!(per_goroutine("bytes"), 2 * iterations, "{stdout}");
            assert_eq!(per_goroutine("medium"), iterations, "{stdout}");
            assert_eq!(per_goroutine("chunk"), iterations.div_ceil(16), "{stdout}");
            assert_eq!(per_goroutine("large"), iterations.div_ceil(256), "{stdout}");
            assert_eq!(per_goroutine("concat"), iterations, "{stdout}");
            assert_eq!(
                per_goroutine("append"),
                6 * iterations.div_ceil(4),
                "{stdout}"
            );
            assert!(
                stdout.ends_with('\n') && stdout.contains("\nMALLOCS "),
                "{stdout}"
            );
        }
    }
}

#[test]
fn allocs_passes_exit_code_stdin_and_environment_through() {
    let binary = go_program("allocs", LATEST_GO, Variant::Default);
    let mut child = Command::new(&binary)
        .args(["-exit", "7", "-echo-stdin", "20"])
        .env("MEMTRACE_TEST_ENV", "some value")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"line one\nline two\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(7));
    let stdout = stdout_of(&output);
    assert!(
        stdout.starts_with("ENV some value\nline one\nline two\nMALLOCS "),
        "{stdout}"
    );

    // Without -echo-stdin, stdin is not read: an open pipe nobody writes to must not block.
    let mut child = Command::new(&binary)
        .arg("20")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let _stdin_kept_open = child.stdin.take();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert!(stdout_of(&output).starts_with("MALLOCS "));
}

#[test]
fn stress_checksum_is_the_same_everywhere() {
    let mut outputs = Vec::new();
    for version in GO_VERSIONS {
        for variant in Variant::ALL {
            let output = run(&go_program("stress", version, variant), &["300"]);
            assert!(
                output.status.success(),
                "stress, Go {version} {variant:?}: {output:?}"
            );
            outputs.push(stdout_of(&output));
        }
    }
    assert!(
        outputs[0].starts_with("TASKS 300\nALLOCS "),
        "{}",
        outputs[0]
    );
    assert!(outputs[0].contains("\nCHECKSUM "), "{}", outputs[0]);
    assert!(
        outputs.iter().all(|output| *output == outputs[0]),
        "{outputs:#?}"
    );

    let output = run(&go_program("stress", LATEST_GO, Variant::Default), &[]);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout_of(&output).starts_with("TASKS 20000\n"));
}

#[test]
fn bench_reports_allocations_and_elapsed_time() {
    for version in GO_VERSIONS {
        let output = run(
            &go_program("bench", version, Variant::Default),
            &["100001", "2"],
        );
        assert!(output.status.success(), "bench, Go {version}: {output:?}");
        let stdout = stdout_of(&output);
        let values = key_values(&stdout);
        assert_eq!(number(&values, "ALLOCS"), 100_000, "{stdout}");
        assert!(number(&values, "ELAPSED_NS") > 0, "{stdout}");
    }
}

#[test]
fn idle_says_ready_and_bye() {
    for version in [GO_VERSIONS[0], LATEST_GO] {
        let binary = go_program("idle", version, Variant::Pie);
        let mut child = Command::new(&binary)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut ready = String::new();
        stdout.read_line(&mut ready).unwrap();
        assert_eq!(ready, format!("READY {}\n", child.id()));
        thread::sleep(Duration::from_millis(50));
        // SAFETY: kill has no memory-safety preconditions; the pid is our running child.
        let killed = unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM) };
        assert_eq!(killed, 0);
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
        assert_eq!(rest, "BYE\n");
        assert!(child.wait().unwrap().success());
    }
}

#[test]
fn demo_prints_its_heap_every_second() {
    let binary = go_program("demo", LATEST_GO, Variant::Default);
    let output = run(&binary, &["-duration", "1500ms"]);
    assert!(output.status.success(), "{output:?}");
    let stdout = stdout_of(&output);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for line in lines {
        assert!(
            line.starts_with("t=")
                && line.contains(" heap_alloc=")
                && line.contains(" goroutines="),
            "{line}"
        );
    }
}

#[test]
fn extra_build_environment_gets_its_own_executable() {
    let plain = go_program("bench", "1.26.6", Variant::Default);
    let specialized = go_program_with_env(
        "bench",
        "1.26.6",
        Variant::Default,
        &[("GOEXPERIMENT", "sizespecializedmalloc")],
        "sizespecialized",
    );
    assert_ne!(plain, specialized);
    assert!(specialized.ends_with("bench-1.26.6-default-sizespecialized"));
    let output = run(&specialized, &["1000"]);
    assert!(output.status.success(), "{output:?}");

    let missing_suffix = build_go_program(
        "bench",
        "1.26.6",
        Variant::Default,
        &[("GOEXPERIMENT", "x")],
        "",
    );
    assert!(missing_suffix.is_err());
}

#[test]
fn every_site_marker_is_on_exactly_one_line() {
    let mut markers = 0;
    for program in GO_PROGRAMS {
        let source_path = crate::fixtures::go_source_dir(program).join("main.go");
        let source = std::fs::read_to_string(source_path).unwrap();
        for line in source
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
        {
            if let Some((_, marker)) = line.split_once("// SITE:") {
                // Panics unless the marker is on exactly one code line.
                site_line(program, marker.trim());
                markers += 1;
            }
        }
    }
    assert!(markers >= 20, "only {markers} SITE markers");
}

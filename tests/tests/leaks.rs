//! Leak detection on a corpus of real leak patterns and controls (tests/go/leaks): every leak
//! is among the top three suspects within 20 seconds of attaching, every control reports none.
//! All patterns of a Go version run at once, each traced by its own memtrace.

mod common;

use std::process::{Child, Command, Stdio};

use common::{start_ready, temp_json, Running};
use memtrace_tests::fixtures::{go_program, memtrace_bin, site_line, Variant};
use serde_json::Value;

/// The patterns and whether each leaks, as the program lists them.
fn patterns(binary: &std::path::Path) -> Vec<(String, bool)> {
    let output = Command::new(binary).arg("-list").output().unwrap();
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

fn check_version(version: &str) {
    let binary = go_program("leaks", version, Variant::Default);
    let patterns = patterns(&binary);
    assert!(
        patterns.iter().filter(|(_, leaks)| *leaks).count() >= 6,
        "{patterns:?}"
    );
    assert!(
        patterns.iter().filter(|(_, leaks)| !*leaks).count() >= 3,
        "{patterns:?}"
    );

    let programs: Vec<Running> = patterns
        .iter()
        .map(|(name, _)| start_ready(&binary, &["-pattern", name, "-duration", "0"]))
        .collect();
    let tracers: Vec<(Child, std::path::PathBuf)> = programs
        .iter()
        .zip(&patterns)
        .map(|(program, (name, _))| {
            let json = temp_json(&format!("leaks-{version}-{name}"));
            let child = Command::new(memtrace_bin())
                .args(["--no-live", "--duration", "20s", "--json"])
                .arg(&json)
                .args(["--pid", &program.pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (child, json)
        })
        .collect();
    let mut failures = Vec::new();
    for ((tracer, json), (name, leaks)) in tracers.into_iter().zip(&patterns) {
        let output = tracer.wait_with_output().unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{version} {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        let _ = std::fs::remove_file(&json);
        assert_eq!(report["mode"], "sampled");
        assert_eq!(
            report["mem_profile_rate"]["restored"], true,
            "{version} {name}"
        );
        let suspects = report["leak_suspects"].as_array().unwrap();
        let summary: Vec<String> = suspects
            .iter()
            .map(|s| {
                format!(
                    "{}:{} {} +{:.0}B/s",
                    s["function"], s["line"], s["type"], s["growth_bytes_per_s"]
                )
            })
            .collect();
        eprintln!("{version} {name}: suspects {summary:?}");
        if *leaks {
            let line = site_line("leaks", name);
            let rank = suspects.iter().position(|s| {
                s["line"] == line
                    && s["file"]
                        .as_str()
                        .is_some_and(|f| f.ends_with("leaks/main.go"))
            });
            match rank {
                Some(rank) if rank < 3 => {
                    // Pointerful objects over 512 bytes carry their type in a malloc header
                    // from Go 1.22 on.
                    let expected_type = match name.as_str() {
                        "globalmap" => Some("main.session"),
                        "append" => Some("main.record"),
                        _ => None,
                    };
                    if let Some(expected) = expected_type.filter(|_| version != "1.21.13") {
                        let found = &suspects[rank]["type"];
                        if found != expected {
                            failures.push(format!("{name}: type {found}, expected {expected}"));
                        }
                    }
                }
                _ => failures.push(format!(
                    "{name}: leak at line {line} not in the top 3: {summary:?}"
                )),
            }
        } else if !suspects.is_empty() {
            failures.push(format!("{name} (control): suspects {summary:?}"));
        }
    }
    drop(programs);
    assert!(
        failures.is_empty(),
        "Go {version}:\n{}",
        failures.join("\n")
    );
}

per_go_version!(check_version);

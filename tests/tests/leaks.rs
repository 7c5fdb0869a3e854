//! Leak detection on a corpus of real leak patterns and controls (tests/go/leaks): every leak
//! is among the top three suspects within 20 seconds of attaching, every control reports none.
//! All patterns of a Go version run at once, each traced by its own memtrace.

mod common;

use std::process::Child;

use common::{finish_traced, program_patterns, start_ready, trace_pid, Running};
use memtrace_tests::fixtures::{go_program, site_line, Variant};

fn check_version(version: &str) {
    let binary = go_program("leaks", version, Variant::Default);
    let patterns = program_patterns(&binary);
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
            trace_pid(program.pid, "20s", &format!("leaks-{version}-{name}"))
        })
        .collect();
    let mut failures = Vec::new();
    for ((tracer, json), (name, leaks)) in tracers.into_iter().zip(&patterns) {
        let report = finish_traced(tracer, &json, &format!("{version} {name}"));
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

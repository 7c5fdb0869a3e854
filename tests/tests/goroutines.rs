//! Goroutine tracking against the Go runtime's own truth: the live count against
//! `runtime.NumGoroutine`, goroutines from before attach, a corpus of goroutine leaks and
//! controls (tests/go/goleaks), and Go 1.27's goroutineleak profile.

mod common;

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    finish_traced, program_patterns, program_value, start_ready, temp_json, trace_launch,
    trace_pid, u64_at, Running,
};
use memtrace_tests::fixtures::{go_program, site_line, Variant};
use serde_json::Value;

/// The group of `report[list]` whose `go` statement is on `line` of tests/go/`program`.
fn groups_at<'a>(report: &'a Value, list: &str, program: &str, line: u32) -> Vec<&'a Value> {
    report[list]
        .as_array()
        .unwrap_or_else(|| panic!("report has no {list}"))
        .iter()
        .filter(|g| {
            g["line"] == line
                && g["file"]
                    .as_str()
                    .is_some_and(|f| f.ends_with(&format!("{program}/main.go")))
        })
        .collect()
}

fn summary(groups: &Value) -> Vec<String> {
    groups
        .as_array()
        .map(|list| {
            list.iter()
                .map(|g| {
                    format!(
                        "{}:{} {} [{}] n={} +{:.1}/s",
                        g["function"].as_str().unwrap_or(""),
                        g["line"],
                        g["start_function"].as_str().unwrap_or(""),
                        g["wait_reason"].as_str().unwrap_or(""),
                        g["count"],
                        g["growth_per_s"].as_f64().unwrap_or(0.0)
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Launch mode: goroutines are seen from the very first one. After 22,000 goroutines came and
/// went, the live count is the program's own `runtime.NumGoroutine()`, and every exit paired
/// with its creation.
fn count_matches_numgoroutine(version: &str) {
    let program = go_program("gocount", version, Variant::Default);
    let traced = trace_launch(
        &["--duration", "5s"],
        &program,
        &["-churn", "3s", "-duration", "3s"],
        &[],
    );
    assert_eq!(traced.code(), Some(0), "{}", traced.stderr());
    let stdout = traced.stdout();
    let steady = program_value(&stdout, "STEADY");
    let churned = program_value(&stdout, "CHURNED");
    let report = traced.report();
    let counts = &report["goroutines"];
    eprintln!("Go {version}: STEADY {steady}, CHURNED {churned}, memtrace {counts}");
    assert_eq!(
        u64_at(report, "/goroutines/live"),
        steady,
        "Go {version}: {counts}"
    );
    assert_eq!(u64_at(report, "/events/dropped"), 0);
    // The churn, the parked goroutines, main and os/signal's watcher.
    assert!(u64_at(report, "/goroutines/created") >= churned + 50 + 20 + 2);
    assert!(u64_at(report, "/goroutines/exited") >= churned);
    assert_eq!(
        u64_at(report, "/goroutines/created") - u64_at(report, "/goroutines/exited"),
        steady,
        "{counts}"
    );
    for field in ["found_by_scan", "unknown_age"] {
        assert_eq!(counts[field], 0, "Go {version}: {field} in {counts}");
    }
    assert_eq!(counts["complete_scans"], true);
    // The probes count runtime goroutines too.
    assert!(u64_at(report, "/goroutines/probe_creations") >= u64_at(report, "/goroutines/created"));

    for (site, count, min_age) in [("early", 50, 4.0), ("late", 20, 1.0)] {
        let groups = groups_at(
            report,
            "goroutine_groups",
            "gocount",
            site_line("gocount", site),
        );
        assert_eq!(groups.len(), 1, "{site}: {}", report["goroutine_groups"]);
        let group = groups[0];
        assert_eq!(group["count"], count, "{site}: {group}");
        assert_eq!(group["blocked"], count, "{site}: {group}");
        assert_eq!(group["wait_reason"], "chan receive", "{site}: {group}");
        assert_eq!(group["unknown_age"], 0, "{site}: {group}");
        let age = group["oldest_age_s"].as_f64().unwrap();
        assert!(age >= min_age, "{site}: oldest {age}s");
        let expected_start = if site == "early" {
            "main.parkedEarly"
        } else {
            "main.parkedLate"
        };
        assert_eq!(group["start_function"], expected_start);
        assert_eq!(
            group["stack"][0]["function"], "main.main",
            "{site}: {group}"
        );
        assert_eq!(group["goids"].as_array().unwrap().len(), count);
        assert_eq!(group["leak"], false);
    }
    assert_eq!(report["goroutine_leaks"], serde_json::json!([]));
}

/// A program's stdout, captured in a file so that it can be read while the program runs.
struct Captured {
    running: Running,
    stdout: PathBuf,
}

impl Captured {
    fn start(program: &Path, args: &[&str], name: &str) -> Captured {
        let stdout = temp_json(&format!("{name}-stdout"));
        let file = std::fs::File::create(&stdout).unwrap();
        let child = Command::new(program)
            .args(args)
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let captured = Captured {
            running: Running { child, pid },
            stdout,
        };
        captured.wait_for("READY", Duration::from_secs(10));
        captured
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn wait_for(&self, key: &str, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text();
            if text.lines().any(|l| l.starts_with(&format!("{key} "))) {
                return program_value(&text, key);
            }
            assert!(Instant::now() < deadline, "no {key} line in:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Captured {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.stdout);
    }
}

/// Attach mode: the 50 goroutines parked before memtrace attached are found in the runtime's
/// goroutine list, with unknown age; the count still matches `runtime.NumGoroutine()`. Stripped
/// and PIE builds too: the list and the wait-reason names are then found from the code.
fn goroutines_from_before_attach_have_unknown_age(version: &str) {
    for variant in Variant::ALL {
        before_attach_variant(version, variant);
    }
}

fn before_attach_variant(version: &str, variant: Variant) {
    let program = go_program("gocount", version, variant);
    let name = format!("gocount-{version}-{}", variant.name());
    let target = Captured::start(&program, &["-churn", "2s", "-duration", "0"], &name);
    let (tracer, json) = trace_pid(target.running.pid, "5s", &name);
    let report = finish_traced(tracer, &json, &name);
    let steady = target.wait_for("STEADY", Duration::from_secs(1));
    let counts = &report["goroutines"];
    eprintln!("{name}: STEADY {steady}, memtrace {counts}");
    assert_eq!(counts["complete_scans"], true, "{name}");
    assert_eq!(u64_at(&report, "/goroutines/live"), steady, "{counts}");
    // The 50 parked ones, main and os/signal's watcher were there before.
    assert!(
        u64_at(&report, "/goroutines/before_attach") >= 52,
        "{counts}"
    );
    assert!(u64_at(&report, "/goroutines/unknown_age") >= 52, "{counts}");

    let early = groups_at(
        &report,
        "goroutine_groups",
        "gocount",
        site_line("gocount", "early"),
    );
    assert_eq!(early.len(), 1, "{}", report["goroutine_groups"]);
    assert_eq!(early[0]["count"], 50);
    assert_eq!(early[0]["unknown_age"], 50);
    assert_eq!(early[0]["wait_reason"], "chan receive", "{name}");
    assert_eq!(early[0]["oldest_age_s"], Value::Null);
    assert_eq!(early[0]["start_function"], "main.parkedEarly");
    // Created before attach: no creation stack.
    assert_eq!(early[0]["stack"], serde_json::json!([]));

    let late = groups_at(
        &report,
        "goroutine_groups",
        "gocount",
        site_line("gocount", "late"),
    );
    assert_eq!(late.len(), 1, "{}", report["goroutine_groups"]);
    assert_eq!(late[0]["count"], 20);
    assert_eq!(late[0]["unknown_age"], 0);
    assert!(late[0]["oldest_age_s"].as_f64().unwrap() > 1.0);
    assert_eq!(late[0]["stack"][0]["function"], "main.main");
}

/// Every goroutine leak of the corpus is among the top three goroutine leaks within 15 seconds
/// of attaching; the controls report none. All patterns run at once, each traced by its own
/// memtrace.
fn leak_corpus(version: &str) {
    let binary = go_program("goleaks", version, Variant::Default);
    let patterns = program_patterns(&binary);
    assert!(patterns.iter().filter(|(_, leaks)| *leaks).count() >= 5);
    assert!(patterns.iter().filter(|(_, leaks)| !*leaks).count() >= 2);
    let programs: Vec<Running> = patterns
        .iter()
        .map(|(name, _)| start_ready(&binary, &["-pattern", name, "-duration", "0"]))
        .collect();
    let tracers: Vec<(Child, PathBuf)> = programs
        .iter()
        .zip(&patterns)
        .map(|(program, (name, _))| {
            trace_pid(program.pid, "15s", &format!("goleaks-{version}-{name}"))
        })
        .collect();
    let mut failures = Vec::new();
    for ((tracer, json), (name, leaks)) in tracers.into_iter().zip(&patterns) {
        let report = finish_traced(tracer, &json, &format!("{version} {name}"));
        let found = summary(&report["goroutine_leaks"]);
        eprintln!("Go {version} {name}: goroutine leaks {found:?}");
        let leak_list = report["goroutine_leaks"].as_array().unwrap();
        if *leaks {
            let line = site_line("goleaks", name);
            let rank = leak_list.iter().position(|g| {
                g["line"] == line
                    && g["file"]
                        .as_str()
                        .is_some_and(|f| f.ends_with("goleaks/main.go"))
            });
            match rank {
                Some(rank) if rank < 3 => {
                    let leak = &leak_list[rank];
                    if leak["count"].as_u64().unwrap_or(0) < 50 || leak["blocked"] != leak["count"]
                    {
                        failures.push(format!("{name}: {leak}"));
                    }
                }
                _ => failures.push(format!("{name}: line {line} not in the top 3: {found:?}")),
            }
        } else if !leak_list.is_empty() {
            failures.push(format!("{name} (control): {found:?}"));
        }
    }
    drop(programs);
    assert!(
        failures.is_empty(),
        "Go {version}:\n{}",
        failures.join("\n")
    );
}

/// Goroutine ids of a goroutine dump that carry `(leaked)`, with the line of the `go`
/// statement that created each.
fn leaked_in_profile(dump: &str) -> HashMap<u64, String> {
    dump.split("\n\n")
        .filter_map(|block| {
            let header = block.lines().next()?;
            let goid = header
                .strip_prefix("goroutine ")?
                .split(' ')
                .next()?
                .parse()
                .ok()?;
            if !header.contains("(leaked") {
                return None;
            }
            let mut lines = block.lines().skip_while(|l| !l.starts_with("created by "));
            lines.next();
            let location = lines.next().unwrap_or("").trim().to_string();
            Some((goid, location))
        })
        .collect()
}

/// Go 1.27's runtime finds goroutines blocked forever on unreachable concurrency objects (the
/// goroutineleak profile). Every goroutine it reports is in one of memtrace's goroutine leaks,
/// and memtrace also finds the leak on a channel reachable from a global, which it cannot see.
#[test]
fn go_1_27_goroutine_leak_profile_is_covered() {
    if memtrace_tests::fixtures::require_bpf().is_err() {
        return;
    }
    let _serial = common::serialize();
    let version = "1.27.3";
    let binary = go_program("goleaks", version, Variant::Default);
    let profile_path = temp_json("goroutineleak-profile");
    let _ = std::fs::remove_file(&profile_path);
    let profile_arg = profile_path.to_str().unwrap();
    let traced = trace_launch(
        &["--duration", "13s"],
        &binary,
        &[
            "-pattern",
            "all",
            "-duration",
            "14s",
            "-leakprofile",
            profile_arg,
            "-leakprofile-after",
            "8s",
        ],
        &[],
    );
    assert_eq!(traced.code(), Some(0), "{}", traced.stderr());
    assert!(
        traced.stdout().contains("LEAKPROFILE"),
        "{}",
        traced.stdout()
    );
    let dump = std::fs::read_to_string(&profile_path).unwrap();
    let _ = std::fs::remove_file(&profile_path);
    let leaked = leaked_in_profile(&dump);
    let report = traced.report();
    eprintln!(
        "profile: {} leaked; memtrace: {:?}",
        leaked.len(),
        summary(&report["goroutine_leaks"])
    );
    // Five of the six leaky patterns block on unreachable objects: 8 s at 10 per second each.
    assert!(
        leaked.len() >= 150,
        "only {} leaked in the profile",
        leaked.len()
    );

    let mut memtrace_leaked: HashMap<u64, u32> = HashMap::new();
    for group in report["goroutine_leaks"].as_array().unwrap() {
        for goid in group["goids"].as_array().unwrap() {
            memtrace_leaked.insert(
                goid.as_u64().unwrap(),
                group["line"].as_u64().unwrap() as u32,
            );
        }
    }
    let missing: Vec<(&u64, &String)> = leaked
        .iter()
        .filter(|(goid, _)| !memtrace_leaked.contains_key(goid))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} goroutines the runtime reports leaked are in no memtrace leak group: {:?}",
        missing.len(),
        leaked.len(),
        &missing[..missing.len().min(10)]
    );

    // The global-channel leak: memtrace reports it, the profile cannot.
    let global_line = site_line("goleaks", "globalchan");
    let global = groups_at(report, "goroutine_leaks", "goleaks", global_line);
    assert_eq!(global.len(), 1, "{:?}", summary(&report["goroutine_leaks"]));
    assert!(global[0]["count"].as_u64().unwrap() >= 80, "{}", global[0]);
    let global_goids: HashSet<u64> = global[0]["goids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_u64().unwrap())
        .collect();
    assert!(
        leaked.keys().all(|goid| !global_goids.contains(goid)),
        "the profile saw some of the global-channel leak"
    );
    assert!(
        leaked
            .values()
            .all(|location| !location.contains(&format!("goleaks/main.go:{global_line} "))),
        "the profile saw the global-channel leak"
    );
    // No control or background group is a leak.
    for pattern in ["pool", "shortlived", "shortlived_chan"] {
        let line = site_line("goleaks", pattern);
        assert!(
            groups_at(report, "goroutine_leaks", "goleaks", line).is_empty(),
            "{pattern} reported: {:?}",
            summary(&report["goroutine_leaks"])
        );
    }
}

per_go_version!(count_matches_numgoroutine);

mod before_attach {
    use super::*;
    per_go_version!(goroutines_from_before_attach_have_unknown_age);
}

mod corpus {
    use super::*;
    per_go_version!(leak_corpus);
}

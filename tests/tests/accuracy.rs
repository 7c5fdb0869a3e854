//! `--all-allocs` against the Go runtime's own truth, on every supported Go version and build
//! variant: allocation count vs `MemStats.Mallocs`, bytes vs `MemStats.TotalAlloc`, GC cycles
//! vs `GODEBUG=gctrace=1`, and the known call sites by name and line.

mod common;

use common::{program_value, relative_error, site, trace_launch, u64_at};
use memtrace_tests::fixtures::{go_program, site_line, Variant};

/// Sites of `allocs` that allocate through a plain call of the allocator from the marked line.
const KNOWN_SITES: [(&str, &str); 5] = [
    ("main.allocSmall32", "small32"),
    ("main.allocBytes", "bytes"),
    ("main.allocMedium", "medium"),
    ("main.allocChunk", "chunk"),
    ("main.allocLarge", "large"),
];

fn check_version(version: &str) {
    for variant in Variant::ALL {
        let program = go_program("allocs", version, variant);
        let traced = trace_launch(
            &["--all-allocs"],
            &program,
            &[],
            &[("GODEBUG", "gctrace=1")],
        );
        let what = format!("allocs {version} {}", variant.name());
        assert_eq!(
            traced.code(),
            Some(0),
            "{what}: stderr:\n{}",
            traced.stderr()
        );
        let stdout = traced.stdout();
        let report = traced.report();

        let mallocs = program_value(&stdout, "MALLOCS");
        let total_alloc = program_value(&stdout, "TOTAL_ALLOC");
        let objects = u64_at(report, "/allocations/objects");
        let bytes = u64_at(report, "/allocations/bytes");
        eprintln!(
            "{what}: objects {objects} vs Mallocs {mallocs} ({:+.3}%), bytes {bytes} vs \
             TotalAlloc {total_alloc} ({:+.3}%)",
            100.0 * (objects as f64 / mallocs as f64 - 1.0),
            100.0 * (bytes as f64 / total_alloc as f64 - 1.0),
        );
        assert!(
            mallocs > 1_000_000,
            "{what}: the program allocated too little"
        );
        assert!(
            relative_error(objects, mallocs) < 0.01,
            "{what}: {objects} objects counted, runtime says {mallocs}"
        );
        assert!(
            relative_error(bytes, total_alloc) < 0.01,
            "{what}: {bytes} bytes counted, runtime says {total_alloc}"
        );

        let gctrace_cycles = traced
            .stderr()
            .lines()
            .filter(|line| {
                line.strip_prefix("gc ")
                    .and_then(|rest| rest.split_whitespace().next())
                    .is_some_and(|n| n.parse::<u64>().is_ok())
                    && line.contains(" @")
            })
            .count() as u64;
        let cycles = u64_at(report, "/gc/cycles");
        assert!(gctrace_cycles > 0, "{what}: gctrace printed nothing");
        assert_eq!(cycles, gctrace_cycles, "{what}: GC cycles vs gctrace lines");

        for (events, name) in [
            ("/events/dropped", "dropped"),
            ("/events/stack_failures", "stack failures"),
        ] {
            assert_eq!(u64_at(report, events), 0, "{what}: {name}");
        }

        for (function, marker) in KNOWN_SITES {
            let line = site_line("allocs", marker);
            let found = site(report, function).unwrap_or_else(|| {
                panic!("{what}: no site {function} in {:#}", report["alloc_sites"])
            });
            assert_eq!(found["line"], line, "{what}: line of {function}");
            assert!(
                found["file"].as_str().unwrap().ends_with("allocs/main.go"),
                "{what}: file of {function}: {}",
                found["file"]
            );
        }
    }
}

per_go_version!(check_version);

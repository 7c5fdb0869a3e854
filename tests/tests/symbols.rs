//! Stacks are symbolized with function, file, line and inlined frames: through DWARF
//! (blazesym) for default and PIE builds, through memtrace's `.gopclntab` reader for stripped
//! ones.

mod common;

use common::{serialize, site, trace_launch};
use memtrace_tests::fixtures::{go_program, require_bpf, site_line, Variant, GO_VERSIONS};
use serde_json::Value;

fn frame<'a>(stack: &'a [Value], function: &str) -> &'a Value {
    stack
        .iter()
        .find(|f| f["function"] == function)
        .unwrap_or_else(|| panic!("no {function} in {stack:#?}"))
}

#[test]
fn inlined_frames_files_and_lines_on_every_build() {
    if require_bpf().is_err() {
        return;
    }
    let _serial = serialize();
    let new_point_line = site_line("symtest", "newPoint");
    let level3_line = site_line("symtest", "level3");
    for version in GO_VERSIONS {
        for variant in Variant::ALL {
            let what = format!("symtest {version} {}", variant.name());
            let program = go_program("symtest", version, variant);
            // Sample every allocation.
            let traced = trace_launch(
                &["--all-allocs", "--stack-sample-bytes", "1"],
                &program,
                &[],
                &[],
            );
            assert_eq!(traced.code(), Some(0), "{what}: {}", traced.stderr());
            let report = traced.report();
            // newPoint is inlined into level3, so it is the innermost non-runtime frame.
            let new_point = site(report, "main.newPoint").unwrap_or_else(|| {
                panic!("{what}: no main.newPoint site: {:#}", report["alloc_sites"])
            });
            assert_eq!(new_point["line"], new_point_line, "{what}");
            assert!(new_point["objects"].as_u64().unwrap() >= 1000, "{what}");
            let stack = new_point["stack"].as_array().unwrap();
            let inlined = frame(stack, "main.newPoint");
            assert_eq!(inlined["inlined"], true, "{what}: {inlined}");
            assert!(
                inlined["file"]
                    .as_str()
                    .unwrap()
                    .ends_with("symtest/main.go"),
                "{what}"
            );
            let caller = frame(stack, "main.level3");
            assert_eq!(caller["line"], level3_line, "{what}: {caller}");
            assert!(caller.get("inlined").is_none(), "{what}: {caller}");
            // The whole chain, innermost first.
            let names: Vec<&str> = stack
                .iter()
                .filter_map(|f| f["function"].as_str())
                .collect();
            let position = |name: &str| names.iter().position(|n| *n == name).unwrap();
            assert!(
                position("main.newPoint") < position("main.level3")
                    && position("main.level3") < position("main.level2")
                    && position("main.level2") < position("main.level1")
                    && position("main.level1") < position("main.main"),
                "{what}: {names:?}"
            );
        }
    }
}

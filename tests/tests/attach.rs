//! Attaching to a running process with --pid, and detaching without harm.

mod common;

use std::{process::Command, time::Duration};

use common::{serialize, site, start_ready, temp_json, u64_at};
use memtrace_tests::fixtures::{go_program, memtrace_bin, require_bpf, site_line, Variant};

#[test]
fn attaches_to_a_running_process_and_detaches_cleanly() {
    if require_bpf().is_err() {
        return;
    }
    let _serial = serialize();
    for (version, variant) in [
        ("1.21.13", Variant::Default),
        ("1.27.3", Variant::Stripped),
        ("1.24.11", Variant::Pie),
    ] {
        let mut idle = start_ready(&go_program("idle", version, variant), &[]);
        let json = temp_json("attach");
        let output = Command::new(memtrace_bin())
            .args(["--no-live", "--duration", "2s", "--json"])
            .arg(&json)
            .args(["--pid", &idle.pid.to_string()])
            .output()
            .unwrap();
        let what = format!("idle {version} {}", variant.name());
        assert_eq!(
            output.status.code(),
            Some(0),
            "{what}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        // The text report goes to stdout in --pid mode.
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("main.tick"),
            "{what}"
        );
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        let _ = std::fs::remove_file(&json);
        assert_eq!(report["target"]["pid"], idle.pid);
        assert!(report["target"]["go_version"]
            .as_str()
            .unwrap()
            .starts_with(&format!("go{version}")));
        // idle allocates 1000 objects every 10 ms: ~200,000 in 2 s.
        let objects = u64_at(&report, "/allocations/objects");
        assert!(objects > 50_000, "{what}: only {objects} objects");
        let tick = site(&report, "main.tick")
            .unwrap_or_else(|| panic!("{what}: no main.tick in {:#}", report["alloc_sites"]));
        assert_eq!(tick["line"], site_line("idle", "tick"), "{what}");
        // Still alive and well after detach.
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            idle.child.try_wait().unwrap().is_none(),
            "{what}: target died"
        );
        // SAFETY: signalling our own child.
        unsafe { libc::kill(idle.pid as i32, libc::SIGTERM) };
        let status = idle.child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{what}: target exit after SIGTERM");
    }
}

//! The `--html` export end to end: memtrace traces a leaking Go program and writes the page,
//! headless Chromium renders it without a single console message, the leak is in the page's
//! suspects table, and the screenshot is not blank.

mod common;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use common::serialize;
use memtrace_tests::fixtures::{
    chromium::{png_size, render, require_chromium, Rendered, WindowSize},
    go_program, memtrace_bin, require_bpf, site_line, Variant,
};
use serde_json::Value;

const GO: &str = "1.26.6";
const WINDOW: WindowSize = WindowSize {
    width: 1280,
    height: 1600,
};
/// The `leaks` program's `globalmap` pattern leaks sessions from this function.
const LEAKING_FUNCTION: &str = "main.openSession";

/// A fresh directory for one test's files.
fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("memtrace-test-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn render_page(html: &Path, dir: &Path) -> Rendered {
    render(html, dir, WINDOW).unwrap_or_else(|error| panic!("{error:#}"))
}

/// The markup of the first element starting with `start`, up to its closing `end`.
fn element<'a>(dom: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let at = dom.find(start)?;
    let length = dom[at..].find(end)? + end.len();
    Some(&dom[at..at + length])
}

/// The contents of the rows of `class` in `table`.
fn rows<'a>(table: &'a str, class: &str) -> Vec<&'a str> {
    table
        .split(&format!("<tr class=\"{class}\">"))
        .skip(1)
        .map(|row| row.find("</tr>").map_or(row, |end| &row[..end]))
        .collect()
}

/// The harness must be able to fail: errors, exceptions and messages of frames all show.
#[test]
fn console_errors_are_detected() {
    if require_chromium().is_err() {
        return;
    }
    let dir = out_dir("html-console");
    let page = dir.join("errors.html");
    fs::write(
        &page,
        "<!DOCTYPE html><html><head><link rel=\"icon\" href=\"data:,\"></head><body>\
         <p>errors</p>\
         <iframe srcdoc=\"&lt;script&gt;console.warn('from the frame')&lt;/script&gt;\"></iframe>\
         <script>console.error('deliberate console.error');\
         setTimeout(function () { throw new Error('deliberate late exception'); }, 500);\
         </script></body></html>",
    )
    .unwrap();
    let rendered = render_page(&page, &dir);
    let messages = rendered.console_messages.join("\n");
    for expected in [
        "\"deliberate console.error\", source: file://",
        "Uncaught Error: deliberate late exception",
        "\"from the frame\", source: about:srcdoc",
    ] {
        assert!(
            messages.contains(expected),
            "{expected:?} not among the console messages:\n{messages}"
        );
    }
    assert_eq!(rendered.console_messages.len(), 3, "{messages}");
    assert!(rendered.dom.contains("<p>errors</p>"), "{}", rendered.dom);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn html_report_of_a_leaking_program() {
    if require_bpf().is_err() || require_chromium().is_err() {
        return;
    }
    let _serial = serialize();
    let program = go_program("leaks", GO, Variant::Default);
    let dir = out_dir("html-report");
    let html = dir.join("report.html");
    let json = dir.join("report.json");

    let output = Command::new(memtrace_bin())
        .args(["--no-live", "-d", "12s", "--html"])
        .arg(&html)
        .arg("--json")
        .arg(&json)
        .arg("--")
        .arg(&program)
        .args(["-pattern", "globalmap", "-duration", "13s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .expect("memtrace runs");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // The JSON report finds the leak where the source marks it: then the page must show it.
    let report: Value = serde_json::from_slice(&fs::read(&json).unwrap()).unwrap();
    let line = site_line("leaks", "globalmap");
    let suspects = report["leak_suspects"].as_array().expect("leak suspects");
    let leak = suspects
        .iter()
        .find(|s| {
            s["line"] == line
                && s["file"]
                    .as_str()
                    .is_some_and(|f| f.ends_with("leaks/main.go"))
        })
        .unwrap_or_else(|| panic!("the leak at line {line} is no suspect: {suspects:#?}"));
    assert_eq!(leak["function"], LEAKING_FUNCTION);

    let rendered = render_page(&html, &dir);
    assert!(
        rendered.console_messages.is_empty(),
        "{} has console messages:\n{}",
        html.display(),
        rendered.console_messages.join("\n")
    );
    let dom = &rendered.dom;
    let table = element(dom, "<table id=\"leak-suspects\">", "</table>")
        .unwrap_or_else(|| panic!("no leak-suspects table in {}", html.display()));
    let location = format!("leaks/main.go:{line}");
    assert!(
        rows(table, "suspect").iter().any(|row| row
            .contains(&format!("<code>{LEAKING_FUNCTION}</code>"))
            && row.contains(&location)),
        "no suspect row for {LEAKING_FUNCTION} at {location}:\n{table}"
    );
    assert!(dom.contains("<table id=\"goroutine-leaks\">"));
    assert!(dom.contains("<svg class=\"chart gc\""), "no GC timeline");
    assert!(
        dom.contains("<iframe class=\"flamegraph\""),
        "no flame graph"
    );

    assert_eq!(png_size(&rendered.screenshot).unwrap(), WINDOW);
    let blank_page = dir.join("blank.html");
    fs::write(&blank_page, "<!DOCTYPE html><html><body></body></html>").unwrap();
    let blank = render_page(&blank_page, &dir);
    let size = |png: &Path| fs::metadata(png).unwrap().len();
    assert!(
        size(&rendered.screenshot) > 5 * size(&blank.screenshot),
        "the screenshot {} ({} bytes) is about as small as a blank page's ({} bytes)",
        rendered.screenshot.display(),
        size(&rendered.screenshot),
        size(&blank.screenshot)
    );
    let _ = fs::remove_dir_all(&dir);
}

//! Folded stacks (Brendan Gregg's `outermost;...;innermost value` lines) and the flame graphs
//! inferno draws from them.
//!
//! Frame names are function names. A frame that was inlined into its caller gets the suffix
//! `_[i]`, the mark inferno's and perf's collapse tools give inlined frames, so the same stack
//! folds to the same line here and there. inferno's flame graphs show such frames without the
//! suffix.

use std::{
    collections::HashMap,
    io::{self, Write},
};

use inferno::flamegraph::{
    self,
    color::{BasicPalette, Palette},
};

use super::{Metric, Profile};
use crate::symbolize::Frame;

/// Suffix of inlined frames (see the module documentation).
const INLINED_SUFFIX: &str = "_[i]";

/// Name of a frame without a function name, as perf writes it.
const UNKNOWN_FRAME: &str = "[unknown]";

/// The profile's stacks in folded form: one sorted line per distinct stack with a `metric`
/// value above zero, stacks whose frame names are equal merged into one line.
pub fn folded(profile: &Profile, metric: Metric) -> String {
    let mut values = HashMap::<String, u64>::new();
    for stack in &profile.stacks {
        let value = metric.value(stack);
        if value == 0 {
            continue;
        }
        let names: Vec<String> = if stack.frames.is_empty() {
            vec![UNKNOWN_FRAME.to_owned()]
        } else {
            stack.frames.iter().rev().map(frame_name).collect()
        };
        let total = values.entry(names.join(";")).or_default();
        *total = total.saturating_add(value);
    }
    let mut lines: Vec<String> = values
        .into_iter()
        .map(|(stack, value)| format!("{stack} {value}\n"))
        .collect();
    lines.sort_unstable();
    lines.concat()
}

/// A frame's name in a folded line: no `;` (the frame separator) and no line breaks.
fn frame_name(frame: &Frame) -> String {
    let sanitized: String = frame
        .function
        .chars()
        .map(|c| match c {
            ';' => ':',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect();
    let mut name = match sanitized.trim() {
        "" => UNKNOWN_FRAME.to_owned(),
        trimmed => trimmed.to_owned(),
    };
    if frame.inlined {
        name.push_str(INLINED_SUFFIX);
    }
    name
}

/// "inuse_space: estimated bytes still live", the flame graph's subtitle.
fn subtitle(metric: Metric) -> String {
    let description = match metric {
        Metric::AllocSpace => "estimated bytes allocated",
        Metric::AllocObjects => "estimated objects allocated",
        Metric::InuseSpace => "estimated bytes still live",
        Metric::InuseObjects => "estimated objects still live",
    };
    format!("{}: {description}", metric.name())
}

/// Writes a flame graph SVG of `metric` with inferno, in its memory palette. A profile without
/// any value of `metric` gives a small SVG that says "no samples".
pub fn write_flamegraph(
    profile: &Profile,
    metric: Metric,
    title: &str,
    mut out: impl Write,
) -> io::Result<()> {
    let folded = folded(profile, metric);
    if folded.is_empty() {
        // inferno refuses empty input (and writes an error SVG before saying so).
        return out.write_all(placeholder_svg(title, metric, "no samples").as_bytes());
    }
    let mut options = flamegraph::Options::default();
    options.title = title.to_owned();
    options.subtitle = Some(subtitle(metric));
    options.count_name = metric.unit().to_owned();
    options.colors = Palette::Basic(BasicPalette::Mem);
    // Colors from function names, not random: a function keeps its color across graphs and
    // the same profile gives the same SVG.
    options.hash = true;
    // Rendered in memory first so that a failure leaves no half-written SVG in `out`.
    let mut svg = Vec::new();
    flamegraph::from_lines(&mut options, folded.lines(), &mut svg)?;
    out.write_all(&svg)
}

/// The flame graph of [`write_flamegraph`] as a string, for embedding in HTML.
pub fn flamegraph_svg(profile: &Profile, metric: Metric, title: &str) -> String {
    let mut svg = Vec::new();
    // Writing into a Vec cannot fail and the only other error is empty input, which
    // write_flamegraph answers itself; should inferno fail anyway, say so in the SVG.
    if write_flamegraph(profile, metric, title, &mut svg).is_err() {
        return placeholder_svg(title, metric, "flame graph failed");
    }
    // inferno writes UTF-8; lossy conversion keeps this infallible regardless.
    String::from_utf8_lossy(&svg).into_owned()
}

/// A small SVG in place of a flame graph, saying why there is none.
fn placeholder_svg(title: &str, metric: Metric, message: &str) -> String {
    format!(
        concat!(
            r##"<?xml version="1.0" standalone="no"?>"##,
            "\n",
            r##"<svg version="1.1" width="1200" height="90" viewBox="0 0 1200 90" xmlns="http://www.w3.org/2000/svg">"##,
            "\n",
            r##"<rect x="0" y="0" width="100%" height="100%" fill="#eeeeee"/>"##,
            "\n",
            r##"<text x="50%" y="24" text-anchor="middle" font-family="Verdana" font-size="17">{title}</text>"##,
            "\n",
            r##"<text x="50%" y="48" text-anchor="middle" font-family="Verdana" font-size="12" fill="#a0a0a0">{subtitle}</text>"##,
            "\n",
            r##"<text x="50%" y="72" text-anchor="middle" font-family="Verdana" font-size="12">{message}</text>"##,
            "\n</svg>\n",
        ),
        title = xml_escape(title),
        subtitle = xml_escape(&subtitle(metric)),
        message = xml_escape(message),
    )
}

fn xml_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            // XML 1.0 cannot carry most control characters, even escaped.
            c if c.is_control() => escaped.push(' '),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::export::{testing, SiteFacts, StackProfile};

    fn frame(function: &str, line: u32, inlined: bool) -> Frame {
        testing::frame(function, "/src/main.go", line, inlined)
    }

    fn stack(frames: Vec<Frame>, values: [u64; 4]) -> StackProfile {
        testing::stack(frames, values, SiteFacts::default())
    }

    fn profile() -> Profile {
        Profile {
            stacks: vec![
                stack(
                    vec![
                        frame("main.newBuffer", 10, true),
                        frame("main.handle", 20, false),
                        frame("main.main", 5, false),
                    ],
                    [100, 6400, 40, 2560],
                ),
                // The same names at other lines: merged with the first stack.
                stack(
                    vec![
                        frame("main.newBuffer", 11, true),
                        frame("main.handle", 21, false),
                        frame("main.main", 6, false),
                    ],
                    [1, 64, 1, 64],
                ),
                stack(
                    vec![
                        frame("main.handle", 22, false),
                        frame("main.main", 5, false),
                    ],
                    [3, 300, 0, 0],
                ),
                stack(
                    vec![
                        frame("weird;name\nhere", 1, false),
                        frame("", 2, false),
                        frame("main.main", 7, false),
                    ],
                    [1, 8, 1, 8],
                ),
                stack(vec![frame("main.idle", 30, false)], [0, 0, 0, 0]),
            ],
            has_inuse: true,
            interval_bytes: 512 * 1024,
            duration_ns: 1_000_000_000,
        }
    }

    fn empty_profile() -> Profile {
        Profile {
            stacks: Vec::new(),
            has_inuse: false,
            interval_bytes: 1,
            duration_ns: 0,
        }
    }

    #[test]
    fn folded_inuse_space() {
        assert_eq!(
            folded(&profile(), Metric::InuseSpace),
            "main.main;[unknown];weird:name here 8\n\
             main.main;main.handle;main.newBuffer_[i] 2624\n"
        );
    }

    #[test]
    fn folded_alloc_objects() {
        assert_eq!(
            folded(&profile(), Metric::AllocObjects),
            "main.main;[unknown];weird:name here 1\n\
             main.main;main.handle 3\n\
             main.main;main.handle;main.newBuffer_[i] 101\n"
        );
    }

    #[test]
    fn folded_empty() {
        assert_eq!(folded(&empty_profile(), Metric::AllocSpace), "");
        // In-use numbers of an all-allocs profile are zero: nothing to fold.
        let mut all_allocs = profile();
        for stack in &mut all_allocs.stacks {
            stack.inuse_objects = 0;
            stack.inuse_bytes = 0;
        }
        assert_eq!(folded(&all_allocs, Metric::InuseObjects), "");
    }

    #[test]
    fn flamegraph_names_functions_title_and_metric() {
        let svg = flamegraph_svg(&profile(), Metric::InuseSpace, "memtrace: demo");
        assert!(svg.starts_with("<?xml"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
        for text in [
            "memtrace: demo",
            "inuse_space: estimated bytes still live",
            "main.main",
            "main.handle",
            // inferno shows annotated frames without their `_[i]`.
            "main.newBuffer (2,624 bytes",
        ] {
            assert!(svg.contains(text), "{text} missing from {svg}");
        }

        let mut written = Vec::new();
        write_flamegraph(
            &profile(),
            Metric::InuseSpace,
            "memtrace: demo",
            &mut written,
        )
        .unwrap();
        assert_eq!(String::from_utf8(written).unwrap(), svg);
    }

    #[test]
    fn flamegraph_of_nothing_says_no_samples() {
        let svg = flamegraph_svg(&empty_profile(), Metric::AllocSpace, "<empty> & co");
        assert!(svg.starts_with("<?xml"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
        assert!(svg.contains("no samples"), "{svg}");
        assert!(svg.contains("&lt;empty&gt; &amp; co"), "{svg}");
        assert!(
            svg.contains("alloc_space: estimated bytes allocated"),
            "{svg}"
        );
    }
}

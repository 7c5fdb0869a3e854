//! Prometheus text exposition format, version 0.0.4, and this process's own `process_*`
//! metrics.
//!
//! The format is simple enough that a writer of a few dozen lines beats a client library: the
//! agent computes every value at scrape time from state its event loop already owns, so there
//! is no registry to keep, only text to produce.
//! <https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format>

use std::{collections::HashSet, fmt::Write as _, fs};

/// The `Content-Type` of [`Exposition::finish`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `# TYPE` of a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn keyword(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// One scrape's worth of text, built family by family.
#[derive(Default)]
pub struct Exposition {
    text: String,
    /// The family that samples belong to, from the last [`Exposition::family`] call.
    current_family: Option<String>,
    /// Every family declared so far: Prometheus rejects a whole scrape that declares one twice.
    declared_families: HashSet<String>,
}

impl Exposition {
    /// Starts a metric family: writes `# HELP` and `# TYPE`. Samples that follow belong to it.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        debug_assert!(is_metric_name(name), "invalid metric name {name:?}");
        let first_declaration = self.declared_families.insert(name.to_owned());
        debug_assert!(first_declaration, "metric family {name} declared twice");
        self.text.push_str("# HELP ");
        self.text.push_str(name);
        self.text.push(' ');
        escape_into(&mut self.text, help, false);
        self.text.push('\n');
        self.text.push_str("# TYPE ");
        self.text.push_str(name);
        self.text.push(' ');
        self.text.push_str(kind.keyword());
        self.text.push('\n');
        self.current_family = Some(name.to_owned());
        self
    }

    /// One sample of the current family.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        let Some(name) = &self.current_family else {
            debug_assert!(false, "sample written before any family");
            return self;
        };
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (index, (label, label_value)) in labels.iter().enumerate() {
                debug_assert!(is_label_name(label), "invalid label name {label:?}");
                if index > 0 {
                    self.text.push(',');
                }
                self.text.push_str(label);
                self.text.push_str("=\"");
                escape_into(&mut self.text, label_value, true);
                self.text.push('"');
            }
            self.text.push('}');
        }
        self.text.push(' ');
        write_value(&mut self.text, value);
        self.text.push('\n');
        self
    }

    /// The text, ready to serve with [`CONTENT_TYPE`].
    pub fn finish(self) -> String {
        self.text
    }
}

/// Appends `text` escaped for a HELP line (`\\`, `\n`) or, with `in_quotes`, for a label
/// value (also `\"`).
fn escape_into(out: &mut String, text: &str, in_quotes: bool) {
    for character in text.chars() {
        match character {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if in_quotes => out.push_str("\\\""),
            other => out.push(other),
        }
    }
}

/// Integers without a decimal point (as the Go client prints them), other numbers in their
/// shortest round-tripping form, and the spellings Prometheus parses for the special values.
fn write_value(out: &mut String, value: f64) {
    // Below 2^53 every integer is exact, so the conversion to i64 loses nothing.
    const EXACT_INTEGER_LIMIT: f64 = 9_007_199_254_740_992.0;
    if value.is_nan() {
        out.push_str("NaN");
    } else if value == f64::INFINITY {
        out.push_str("+Inf");
    } else if value == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else if value.fract() == 0.0 && value.abs() < EXACT_INTEGER_LIMIT {
        let _ = write!(out, "{}", value as i64);
    } else {
        // Debug, unlike Display, switches to exponent notation for very large and very small
        // numbers instead of printing hundreds of digits; Prometheus parses both.
        let _ = write!(out, "{value:?}");
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
fn is_metric_name(name: &str) -> bool {
    let mut characters = name.chars();
    characters
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_' || first == ':')
        && characters.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`
fn is_label_name(name: &str) -> bool {
    let mut characters = name.chars();
    characters
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && characters.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// This process's resource usage, for the `process_*` metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SelfUsage {
    /// User plus system CPU time.
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    /// Seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

/// This process's own usage, from /proc/self/stat, /proc/self/statm and /proc/self/fd.
///
/// A value that cannot be read is left at zero: a scrape should not fail over its least
/// important metrics.
pub fn self_usage() -> SelfUsage {
    let mut usage = SelfUsage::default();
    let clock_ticks_per_second = sysconf_or(libc::_SC_CLK_TCK, 100) as f64;
    if let Ok(stat) = fs::read_to_string("/proc/self/stat") {
        if let Some(times) = parse_stat_times(&stat) {
            usage.cpu_seconds =
                (times.user_ticks + times.system_ticks) as f64 / clock_ticks_per_second;
            if let Some(boot_time) = fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|text| parse_boot_time(&text))
            {
                usage.start_time_seconds =
                    boot_time as f64 + times.start_ticks as f64 / clock_ticks_per_second;
            }
        }
    }
    if let Some((virtual_pages, resident_pages)) = fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|text| parse_statm(&text))
    {
        let page_size = sysconf_or(libc::_SC_PAGESIZE, 4096);
        usage.virtual_bytes = virtual_pages.saturating_mul(page_size);
        usage.resident_bytes = resident_pages.saturating_mul(page_size);
    }
    if let Ok(entries) = fs::read_dir("/proc/self/fd") {
        usage.open_fds = entries.count() as u64;
    }
    usage
}

/// The standard process_* families (process_cpu_seconds_total, process_resident_memory_bytes,
/// process_virtual_memory_bytes, process_open_fds, process_start_time_seconds), as the Go and
/// Rust Prometheus clients name them.
pub fn write_process_metrics(out: &mut Exposition, usage: &SelfUsage) {
    // The HELP texts are the Go client's, so dashboards show the familiar descriptions.
    out.family(
        "process_cpu_seconds_total",
        Kind::Counter,
        "Total user and system CPU time spent in seconds.",
    )
    .sample(&[], usage.cpu_seconds);
    out.family(
        "process_resident_memory_bytes",
        Kind::Gauge,
        "Resident memory size in bytes.",
    )
    .sample(&[], usage.resident_bytes as f64);
    out.family(
        "process_virtual_memory_bytes",
        Kind::Gauge,
        "Virtual memory size in bytes.",
    )
    .sample(&[], usage.virtual_bytes as f64);
    out.family(
        "process_open_fds",
        Kind::Gauge,
        "Number of open file descriptors.",
    )
    .sample(&[], usage.open_fds as f64);
    out.family(
        "process_start_time_seconds",
        Kind::Gauge,
        "Start time of the process since unix epoch in seconds.",
    )
    .sample(&[], usage.start_time_seconds);
}

/// The CPU and start times of /proc/self/stat, in clock ticks.
#[derive(Debug, PartialEq, Eq)]
struct StatTimes {
    user_ticks: u64,
    system_ticks: u64,
    /// Since boot.
    start_ticks: u64,
}

fn parse_stat_times(stat: &str) -> Option<StatTimes> {
    // Field 2, the command name, is in parentheses and may itself contain spaces and
    // parentheses; everything after the last ')' is plain numbers, starting with field 3.
    let after_command = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_command.split_ascii_whitespace().collect();
    let field = |number: usize| fields.get(number - 3)?.parse::<u64>().ok();
    Some(StatTimes {
        user_ticks: field(14)?,
        system_ticks: field(15)?,
        start_ticks: field(22)?,
    })
}

/// The `btime` line of /proc/stat: when the system booted, in seconds since the Unix epoch.
fn parse_boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

/// The total and resident sizes of /proc/self/statm, in pages.
fn parse_statm(statm: &str) -> Option<(u64, u64)> {
    let mut fields = statm.split_ascii_whitespace();
    let virtual_pages = fields.next()?.parse().ok()?;
    let resident_pages = fields.next()?.parse().ok()?;
    Some((virtual_pages, resident_pages))
}

fn sysconf_or(name: libc::c_int, fallback: u64) -> u64 {
    // SAFETY: sysconf only reads a configuration value; it has no memory-safety preconditions.
    let value = unsafe { libc::sysconf(name) };
    if value > 0 {
        value as u64
    } else {
        fallback
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_help_type_labels_and_escapes() {
        let mut out = Exposition::default();
        out.family(
            "memtrace_allocated_bytes_total",
            Kind::Counter,
            "Bytes allocated.\nBy \\ process.",
        )
        .sample(&[("pid", "42"), ("comm", "api \"v2\"\\\n")], 1024.0)
        .sample(&[("pid", "7"), ("comm", "")], 0.5);
        out.family("memtrace_up", Kind::Gauge, "1 while tracing.")
            .sample(&[], 1.0);
        out.family("memtrace_values", Kind::Gauge, "Every value format.")
            .sample(&[("v", "nan")], f64::NAN)
            .sample(&[("v", "inf")], f64::INFINITY)
            .sample(&[("v", "-inf")], f64::NEG_INFINITY)
            .sample(&[("v", "negative")], -3.0)
            .sample(&[("v", "negative zero")], -0.0)
            .sample(&[("v", "2^53-1")], 9_007_199_254_740_991.0)
            .sample(&[("v", "2^53")], 9_007_199_254_740_992.0)
            .sample(&[("v", "tiny")], 1.5e-7)
            .sample(&[("v", "huge")], 1e300)
            .sample(&[("v", "fraction")], 0.1);
        let expected = "\
# HELP memtrace_allocated_bytes_total Bytes allocated.\\nBy \\\\ process.
# TYPE memtrace_allocated_bytes_total counter
memtrace_allocated_bytes_total{pid=\"42\",comm=\"api \\\"v2\\\"\\\\\\n\"} 1024
memtrace_allocated_bytes_total{pid=\"7\",comm=\"\"} 0.5
# HELP memtrace_up 1 while tracing.
# TYPE memtrace_up gauge
memtrace_up 1
# HELP memtrace_values Every value format.
# TYPE memtrace_values gauge
memtrace_values{v=\"nan\"} NaN
memtrace_values{v=\"inf\"} +Inf
memtrace_values{v=\"-inf\"} -Inf
memtrace_values{v=\"negative\"} -3
memtrace_values{v=\"negative zero\"} 0
memtrace_values{v=\"2^53-1\"} 9007199254740991
memtrace_values{v=\"2^53\"} 9007199254740992.0
memtrace_values{v=\"tiny\"} 1.5e-7
memtrace_values{v=\"huge\"} 1e300
memtrace_values{v=\"fraction\"} 0.1
";
        assert_eq!(out.finish(), expected);
    }

    #[test]
    fn help_keeps_quotes() {
        let mut out = Exposition::default();
        out.family("a:b_c", Kind::Gauge, "say \"hi\"");
        assert_eq!(
            out.finish(),
            "# HELP a:b_c say \"hi\"\n# TYPE a:b_c gauge\n"
        );
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "declared twice")]
    fn rejects_a_family_declared_twice() {
        let mut out = Exposition::default();
        out.family("memtrace_up", Kind::Gauge, "");
        out.family("memtrace_up", Kind::Gauge, "");
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "invalid label name")]
    fn rejects_an_invalid_label_name() {
        let mut out = Exposition::default();
        out.family("memtrace_up", Kind::Gauge, "")
            .sample(&[("0pid", "1")], 1.0);
    }

    #[test]
    fn validates_names() {
        assert!(is_metric_name("process_cpu_seconds_total"));
        assert!(is_metric_name(":recorded:rule"));
        assert!(!is_metric_name(""));
        assert!(!is_metric_name("9lives"));
        assert!(!is_metric_name("with-dash"));
        assert!(is_label_name("_pid"));
        assert!(!is_label_name("name:colon"));
        assert!(!is_label_name(""));
    }

    #[test]
    fn parses_stat_with_a_hostile_command_name() {
        // Fields 3.. of a real /proc/self/stat, behind a command name with spaces and parens.
        let stat = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 4 0 \
                    987654 123456789 2000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 3 0 0";
        assert_eq!(
            parse_stat_times(stat),
            Some(StatTimes {
                user_ticks: 250,
                system_ticks: 75,
                start_ticks: 987654
            })
        );
        assert_eq!(parse_stat_times("1234 (truncated) S 1 2"), None);
        assert_eq!(parse_stat_times("no parenthesis"), None);
    }

    #[test]
    fn parses_boot_time_and_statm() {
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nintr 5\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_boot_time("cpu 1\n"), None);
        assert_eq!(
            parse_statm("5000 1200 300 10 0 900 0\n"),
            Some((5000, 1200))
        );
        assert_eq!(parse_statm(""), None);
    }

    #[test]
    fn self_usage_is_plausible() {
        let usage = self_usage();
        assert!(usage.resident_bytes > 0, "{usage:?}");
        assert!(usage.virtual_bytes >= usage.resident_bytes, "{usage:?}");
        assert!(usage.open_fds > 0, "{usage:?}");
        assert!(usage.cpu_seconds >= 0.0, "{usage:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        // Boot time and start ticks are whole seconds and ticks: allow a little slack.
        assert!(
            usage.start_time_seconds <= now + 2.0,
            "{usage:?}, now {now}"
        );
        assert!(
            usage.start_time_seconds > now - 86_400.0,
            "{usage:?}, now {now}"
        );
    }

    #[test]
    fn writes_process_metrics() {
        let usage = SelfUsage {
            cpu_seconds: 1.25,
            resident_bytes: 4096,
            virtual_bytes: 8192,
            open_fds: 9,
            start_time_seconds: 1_700_000_000.5,
        };
        let mut out = Exposition::default();
        write_process_metrics(&mut out, &usage);
        let text = out.finish();
        for line in [
            "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.25\n",
            "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes 4096\n",
            "# TYPE process_virtual_memory_bytes gauge\nprocess_virtual_memory_bytes 8192\n",
            "# TYPE process_open_fds gauge\nprocess_open_fds 9\n",
            "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds 1700000000.5\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
    }
}

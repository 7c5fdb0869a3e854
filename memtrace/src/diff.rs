//! `memtrace diff`: what changed between two recordings of a Go program, told apart from
//! sampling noise, and an optional gate for CI ("fail when memory use regressed").
//!
//! Per-site numbers are estimates from a few samples, so two recordings of the same program
//! differ a lot per site. A change is only reported when it is beyond the noise (see
//! [`rule`]):
//! - rates and live bytes: the samples behind an estimate are a Poisson count, so an estimate
//!   from n samples has a relative standard error of 1/√n when every sample stands for the
//!   same amount, and more when they do not (a sample of a small object stands for many more
//!   objects than one of a large object): the variance used is bounded by the most one
//!   sample of the site can stand for, from its sizes and the sampling interval. The
//!   difference must exceed [`rule::MIN_SIGMAS`] standard errors of the difference, pooled:
//!   the spread both numbers would have if nothing had changed, so that a site missing on
//!   one side (no samples) does not look exact. Rates are per second of each recording;
//! - live bytes also move with the point of its GC cycle each recording ended at (garbage
//!   counts as live until the sweeper frees it), so they must also change by more than
//!   [`rule::GC_SLACK_PERIODS`] GC periods of the site's allocation;
//! - lifetime quantiles: the confidence intervals of the two quantiles (order statistics over
//!   the lifetime histogram) must not overlap, and the change must exceed a GC period (deaths
//!   are only seen at sweeps);
//! - goroutine counts: the number of goroutines alive at an instant is Poisson too (for
//!   goroutines started at random and living for any time), so the same test applies.
//!
//! A change beyond the noise is listed when it is at least [`rule::MIN_RELATIVE_CHANGE`];
//! the gate uses the user's thresholds instead. Leak suspects and goroutine leaks that are
//! new in head are always reported.
//!
//! Sites are matched across the two recordings by (function, file, line); sites left over
//! pair by (function, file) when exactly one such site is left on each side (a change to the
//! program shifted its lines); the rest are new or gone. Goroutine groups match the same way
//! by (go statement's function, file, line, start function, wait reason), the line being the
//! part that may shift. Files compare by their last two path components, so that builds in
//! different directories (or Go installations) still match.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fmt::{self, Write as _},
    hash::Hash,
};

use serde::Serialize;

use crate::{
    analysis::sample_probability,
    report::{
        human_bytes, human_count, location, short_path, GoroutineGroupReport, LeakSuspect,
        Lifetimes, Report,
    },
};

/// The significance rule's constants.
pub mod rule {
    /// Standard errors of the difference a change must exceed to count as more than sampling
    /// noise. A diff makes a few hundred comparisons (sites × rates, live bytes, lifetimes);
    /// at 4σ a normally distributed difference lands beyond it once in ~16,000, so a diff of
    /// an unchanged program stays quiet, with a margin for the normal approximation's thin
    /// tails at small counts; at 3σ (once in 370) CI runs would fail now and then. Measured:
    /// pairs of recordings of the unchanged demo service stay within 2.5σ, its doubled
    /// request rate shows as 4.6σ to 6.4σ.
    pub const MIN_SIGMAS: f64 = 4.0;
    /// The same for the live bytes of a site head calls a leak suspect and base did not (and
    /// the size of a group that became a goroutine leak): the leak rule already showed steady
    /// growth over the GC cycles, so the live bytes only need to agree, not prove it alone. A
    /// 12-second recording of a real leak has about a dozen samples (3.5σ).
    pub const LEAK_SIGMAS: f64 = 2.0;
    /// Smallest relative change listed (when beyond the noise): below it, differences between
    /// two runs of a workload (timing, request mix) rather than the program dominate, and a
    /// report of 3% changes would hide the one that matters. The gate's thresholds replace it.
    pub const MIN_RELATIVE_CHANGE: f64 = 0.2;
    /// Live bytes are a snapshot at the end of the recording, and objects that died stay live
    /// until the sweep after the next GC cycle: a site's live bytes hold between one and two
    /// GC periods of its allocation as garbage, depending on the point of the cycle the
    /// recording stopped at. So live bytes must change by more than this many GC periods of
    /// the site's allocation.
    pub const GC_SLACK_PERIODS: f64 = 1.0;
    /// Deaths beyond a lifetime quantile each side needs before the quantile is compared
    /// (p50: 20 deaths, p99: 1000): the rank of a quantile is only about normal, as the
    /// confidence interval assumes, with a handful of deaths on its far side; a p99 from
    /// 95 deaths is the largest one or two, and moves by whole seconds between runs.
    pub const MIN_QUANTILE_DEATHS: f64 = 10.0;
    /// Recordings whose lengths differ by more than this factor get a note: live bytes and
    /// goroutine counts of anything that grows scale with the length.
    pub const DURATION_RATIO_NOTE: f64 = 1.5;
}

/// When the diff fails: all `None`/`false` (the default) reports only and never fails.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Gate {
    /// Fail on a leak suspect or goroutine leak in head that base did not have.
    pub fail_on_new_leaks: bool,
    /// Fail when a site's live bytes grew by more than this (head − base, beyond the noise).
    pub max_live_growth_bytes: Option<u64>,
    /// Fail when a site's allocation rate (bytes/s), or the total rate, grew by more than
    /// this many percent (beyond the noise); a site new in head counts as an infinite
    /// increase.
    pub max_alloc_rate_increase_pct: Option<f64>,
    /// Fail when a goroutine group, or the live goroutines in total, grew by more than this
    /// many goroutines (beyond the noise).
    pub max_goroutine_growth: Option<u64>,
}

impl Gate {
    /// Whether any limit is set.
    pub fn is_set(&self) -> bool {
        self.fail_on_new_leaks
            || self.max_live_growth_bytes.is_some()
            || self.max_alloc_rate_increase_pct.is_some()
            || self.max_goroutine_growth.is_some()
    }
}

/// What the diff found; [`diff`] builds it, serde writes it as JSON.
#[derive(Clone, Debug, Serialize)]
pub struct Diff {
    pub base: Recording,
    pub head: Recording,
    /// Why the two recordings may not compare well (different modes, sample rates, Go
    /// versions, executables, lengths, lost records).
    pub notes: Vec<String>,
    pub totals: Totals,
    /// How the sites and goroutine groups of the two recordings were matched.
    pub matching: Matching,
    /// Sites with a significant change, a leak suspect new or gone, or a gate violation.
    pub sites: Vec<SiteDiff>,
    /// Goroutine groups with a significant change, a goroutine leak new or gone, or a gate
    /// violation.
    pub goroutine_groups: Vec<GroupDiff>,
    pub gate: Gate,
    pub violations: Vec<Violation>,
}

/// One recording, in a line.
#[derive(Clone, Debug, Serialize)]
pub struct Recording {
    pub exe: String,
    pub go_version: String,
    pub duration_s: f64,
    pub mode: String,
    /// Mean bytes between samples (heap profiler rate, or stack sampling interval).
    pub sample_interval_bytes: u64,
}

/// One number in base and head.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Change {
    pub base: f64,
    pub head: f64,
    /// head − base in standard errors of the difference; null when both numbers are exact
    /// (or the test is not a standard-error one, as for lifetimes).
    pub sigmas: Option<f64>,
    /// Beyond sampling noise (and, for live bytes and lifetimes, GC timing).
    pub beyond_noise: bool,
    /// Beyond the noise and by at least [`rule::MIN_RELATIVE_CHANGE`] or over a gate limit:
    /// worth listing.
    pub significant: bool,
}

impl Change {
    pub fn delta(&self) -> f64 {
        self.head - self.base
    }

    /// head / base − 1; `None` from zero.
    pub fn relative(&self) -> Option<f64> {
        (self.base != 0.0).then(|| self.delta() / self.base.abs())
    }
}

/// Allocation rate, GC and goroutine totals; `None` where not comparable (no usable duration,
/// goroutines not tracked).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    pub alloc_bytes_per_s: Option<Change>,
    pub alloc_objects_per_s: Option<Change>,
    pub gc_cycles_per_s: Option<Change>,
    pub live_goroutines: Option<Change>,
}

/// How many items matched exactly, matched at another line, or are only on one side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MatchCounts {
    pub matched: usize,
    pub moved: usize,
    pub new: usize,
    pub gone: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Matching {
    pub sites: MatchCounts,
    pub goroutine_groups: MatchCounts,
}

/// What happened to a leak verdict between base and head.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeakChange {
    #[default]
    None,
    /// A leak in head, not in base.
    New,
    /// A leak in base, not in head.
    Gone,
    /// A leak in both.
    Persisting,
}

impl LeakChange {
    fn of(base: bool, head: bool) -> LeakChange {
        match (base, head) {
            (false, false) => LeakChange::None,
            (false, true) => LeakChange::New,
            (true, false) => LeakChange::Gone,
            (true, true) => LeakChange::Persisting,
        }
    }
}

/// One allocation site in base and head.
#[derive(Clone, Debug, Serialize)]
pub struct SiteDiff {
    pub function: String,
    /// The head's file (the base's for a site gone in head).
    pub file: String,
    /// `None` on the side that does not have the site; different lines for a moved site.
    pub base_line: Option<u32>,
    pub head_line: Option<u32>,
    /// Sampled mode only.
    pub live_bytes: Option<Change>,
    /// `None` without usable durations.
    pub bytes_per_s: Option<Change>,
    pub objects_per_s: Option<Change>,
    /// Sampled mode, when both sides saw deaths and have lifetime histograms.
    pub lifetime_p50_ms: Option<Change>,
    pub lifetime_p99_ms: Option<Change>,
    pub leak: LeakChange,
    /// Growth of the leak suspect (head's, or base's when gone).
    pub leak_growth_bytes_per_s: Option<f64>,
}

/// One goroutine group in base and head.
#[derive(Clone, Debug, Serialize)]
pub struct GroupDiff {
    /// The code holding the `go` statement.
    pub function: String,
    pub file: String,
    pub base_line: Option<u32>,
    pub head_line: Option<u32>,
    pub start_function: String,
    pub wait_reason: String,
    /// `None` unless both recordings tracked goroutines.
    pub count: Option<Change>,
    pub leak: LeakChange,
}

/// A gate limit exceeded.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Violation {
    pub kind: ViolationKind,
    /// What it is about: a site ("main.f app/main.go:12"), a goroutine group, or "total".
    pub subject: String,
    /// The change: bytes, percent or goroutines; `None` for a new leak, or a rate up from
    /// zero.
    pub amount: Option<f64>,
    /// The limit exceeded; `None` for a new leak.
    pub limit: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    NewLeakSuspect,
    NewGoroutineLeak,
    LiveGrowth,
    AllocRateIncrease,
    GoroutineGrowth,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let amount = self.amount.unwrap_or(f64::INFINITY);
        let limit = self.limit.unwrap_or(0.0);
        match self.kind {
            ViolationKind::NewLeakSuspect => write!(f, "new leak suspect: {}", self.subject),
            ViolationKind::NewGoroutineLeak => write!(f, "new goroutine leak: {}", self.subject),
            ViolationKind::LiveGrowth => write!(
                f,
                "live bytes {} > {}: {}",
                signed_bytes(amount),
                human_bytes(limit),
                self.subject
            ),
            ViolationKind::AllocRateIncrease => write!(
                f,
                "allocation rate {} > +{limit:.0}%: {}",
                match self.amount {
                    Some(pct) => format!("{pct:+.0}%"),
                    None => "new".into(),
                },
                self.subject
            ),
            ViolationKind::GoroutineGrowth => {
                write!(f, "goroutines {amount:+.0} > {limit:.0}: {}", self.subject)
            }
        }
    }
}

/// Compares two recordings; `gate` decides what counts as a violation.
pub fn diff(base: &Report, head: &Report, gate: &Gate) -> Diff {
    let context = Context::of(base, head);
    let mut violations = Vec::new();

    let (sites, site_counts) = compare_sites(base, head, &context, gate, &mut violations);
    let (groups, group_counts) = compare_groups(base, head, gate, &mut violations);
    let mut totals = compare_totals(base, head, &context);
    if let (Some(limit), Some(rate)) = (
        gate.max_alloc_rate_increase_pct,
        &mut totals.alloc_bytes_per_s,
    ) {
        if let Some(violation) = rate_violation(rate, limit, "total allocation rate".into()) {
            violations.push(violation);
        }
    }
    if let (Some(limit), Some(live)) = (gate.max_goroutine_growth, &mut totals.live_goroutines) {
        if let Some(violation) = growth_violation(
            live,
            limit as f64,
            ViolationKind::GoroutineGrowth,
            "total live goroutines".into(),
        ) {
            violations.push(violation);
        }
    }
    // New leaks first: they are the clearest regressions.
    violations.sort_by_key(|v| v.kind as u8);

    Diff {
        base: Recording::of(base),
        head: Recording::of(head),
        notes: notes(base, head, &context),
        totals,
        matching: Matching {
            sites: site_counts,
            goroutine_groups: group_counts,
        },
        sites,
        goroutine_groups: groups,
        gate: gate.clone(),
        violations,
    }
}

impl Diff {
    /// Gate limits exceeded, new leaks first.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// Whether the gate passed (always, when no limit is set).
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The diff as text: the two recordings, their totals, then a section per kind of
    /// significant change (at most `top` lines each), then the gate's result.
    pub fn to_text(&self, top: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "memtrace diff");
        let _ = writeln!(out, "  base: {}", self.base.line());
        let _ = writeln!(out, "  head: {}", self.head.line());
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        self.totals_text(&mut out);
        let m = &self.matching.sites;
        let _ = writeln!(
            out,
            "sites: {} matched, {} moved (other line), {} new, {} gone",
            m.matched, m.moved, m.new, m.gone
        );

        let mut sections = 0;
        sections += self.leaks_text(&mut out, top);
        sections += section(&mut out, "live bytes", top, self.live_lines());
        sections += section(&mut out, "allocation rate", top, self.rate_lines());
        sections += section(&mut out, "lifetimes", top, self.lifetime_lines());
        sections += section(&mut out, "goroutine groups", top, self.group_lines());
        let totals_changed = [
            &self.totals.alloc_bytes_per_s,
            &self.totals.alloc_objects_per_s,
            &self.totals.gc_cycles_per_s,
            &self.totals.live_goroutines,
        ]
        .into_iter()
        .flatten()
        .any(|c| c.significant);
        if sections == 0 && !totals_changed {
            let _ = writeln!(out, "\nno significant changes");
        }

        let _ = writeln!(out);
        if !self.violations.is_empty() {
            let _ = writeln!(
                out,
                "gate: {} violation{}",
                self.violations.len(),
                if self.violations.len() == 1 { "" } else { "s" }
            );
            for violation in &self.violations {
                let _ = writeln!(out, "  {violation}");
            }
        } else if self.gate.is_set() {
            let _ = writeln!(out, "gate: passed");
        } else {
            let _ = writeln!(out, "gate: passed (no limits set)");
        }
        out
    }

    fn totals_text(&self, out: &mut String) {
        let t = &self.totals;
        // Totals are always shown; the ones beyond the noise and the listing threshold say so.
        let flag = |c: &Change| if c.significant { ", significant" } else { "" };
        match (&t.alloc_bytes_per_s, &t.alloc_objects_per_s) {
            (Some(bytes), Some(objects)) => {
                let _ = writeln!(
                    out,
                    "allocation rate: {}/s -> {}/s ({}{}), {} -> {} objects/s ({}{})",
                    human_bytes(bytes.base),
                    human_bytes(bytes.head),
                    percent(bytes),
                    flag(bytes),
                    human_count(objects.base),
                    human_count(objects.head),
                    percent(objects),
                    flag(objects),
                );
            }
            _ => {
                let _ = writeln!(out, "allocation rate: not compared (no usable duration)");
            }
        }
        if let Some(gc) = &t.gc_cycles_per_s {
            let _ = writeln!(
                out,
                "gc cycles: {:.2}/s -> {:.2}/s ({}{})",
                gc.base,
                gc.head,
                percent(gc),
                flag(gc)
            );
        }
        if let Some(live) = &t.live_goroutines {
            let _ = writeln!(
                out,
                "live goroutines: {:.0} -> {:.0} ({:+.0}{})",
                live.base,
                live.head,
                live.delta(),
                flag(live)
            );
        }
    }

    /// New and gone leak suspects and goroutine leaks; returns 1 when anything was written.
    fn leaks_text(&self, out: &mut String, top: usize) -> usize {
        let mut lines = Vec::new();
        for leak in [LeakChange::New, LeakChange::Gone] {
            for site in self.sites.iter().filter(|s| s.leak == leak) {
                let live = site.live_bytes.map_or(0.0, |c| {
                    if leak == LeakChange::New {
                        c.head
                    } else {
                        c.base
                    }
                });
                lines.push(format!(
                    "{:<20}{}  ({} live, growing {}/s)",
                    if leak == LeakChange::New {
                        "new leak suspect"
                    } else {
                        "leak suspect gone"
                    },
                    site.label(),
                    human_bytes(live),
                    human_bytes(site.leak_growth_bytes_per_s.unwrap_or(0.0)),
                ));
            }
            for group in self.goroutine_groups.iter().filter(|g| g.leak == leak) {
                let count = group.count.map(|c| {
                    let count = if leak == LeakChange::New {
                        c.head
                    } else {
                        c.base
                    };
                    format!("  ({count:.0} goroutines)")
                });
                lines.push(format!(
                    "{:<20}{}{}",
                    if leak == LeakChange::New {
                        "new goroutine leak"
                    } else {
                        "goroutine leak gone"
                    },
                    group.label(),
                    count.unwrap_or_default()
                ));
            }
        }
        section(out, "leaks", top, lines)
    }

    fn live_lines(&self) -> Vec<String> {
        let mut changes: Vec<(&SiteDiff, Change)> = self
            .sites
            .iter()
            .filter_map(|s| s.live_bytes.filter(|c| c.significant).map(|c| (s, c)))
            .collect();
        changes.sort_by(|a, b| b.1.delta().total_cmp(&a.1.delta()));
        changes
            .into_iter()
            .map(|(site, live)| {
                format!(
                    "{} live  {}  ({} -> {}{})",
                    signed_bytes(live.delta()),
                    site.label(),
                    human_bytes(live.base),
                    human_bytes(live.head),
                    site.leak_note()
                )
            })
            .collect()
    }

    fn rate_lines(&self) -> Vec<String> {
        let mut changes: Vec<(&SiteDiff, Change, Change)> = self
            .sites
            .iter()
            .filter_map(|s| Some((s, s.bytes_per_s?, s.objects_per_s?)))
            .filter(|(_, bytes, objects)| bytes.significant || objects.significant)
            .collect();
        // Ordered by the bytes/s change, with object-only changes after the byte ones.
        changes.sort_by(|a, b| {
            let key = |c: &Change| if c.significant { c.delta() } else { 0.0 };
            key(&b.1).total_cmp(&key(&a.1))
        });
        changes
            .into_iter()
            .map(|(site, bytes, objects)| {
                let (lead, unit) = if bytes.significant {
                    (percent(&bytes), "bytes/s")
                } else {
                    (percent(&objects), "objects/s")
                };
                format!(
                    "{lead} {unit}  {}  ({}/s -> {}/s, {} -> {} objects/s{})",
                    site.label(),
                    human_bytes(bytes.base),
                    human_bytes(bytes.head),
                    human_count(objects.base),
                    human_count(objects.head),
                    site.leak_note()
                )
            })
            .collect()
    }

    fn lifetime_lines(&self) -> Vec<String> {
        let mut changes: Vec<(&SiteDiff, Option<Change>, Option<Change>)> = self
            .sites
            .iter()
            .map(|s| (s, s.lifetime_p50_ms, s.lifetime_p99_ms))
            .filter(|(_, p50, p99)| {
                p50.is_some_and(|c| c.significant) || p99.is_some_and(|c| c.significant)
            })
            .collect();
        let magnitude = |c: &Option<Change>| c.filter(|c| c.significant).map_or(0.0, |c| c.delta());
        changes.sort_by(|a, b| {
            (magnitude(&b.1) + magnitude(&b.2)).total_cmp(&(magnitude(&a.1) + magnitude(&a.2)))
        });
        changes
            .into_iter()
            .map(|(site, p50, p99)| {
                let quantile = |name: &str, c: Option<Change>| {
                    c.map(|c| {
                        format!(
                            "{name} {} -> {}{}",
                            human_ms(c.base),
                            human_ms(c.head),
                            if c.significant { "" } else { " (within noise)" }
                        )
                    })
                };
                let parts: Vec<String> = [quantile("p50", p50), quantile("p99", p99)]
                    .into_iter()
                    .flatten()
                    .collect();
                format!("{}  {}", parts.join(", "), site.label())
            })
            .collect()
    }

    fn group_lines(&self) -> Vec<String> {
        let mut changes: Vec<(&GroupDiff, Change)> = self
            .goroutine_groups
            .iter()
            .filter_map(|g| g.count.filter(|c| c.significant).map(|c| (g, c)))
            .collect();
        changes.sort_by(|a, b| b.1.delta().total_cmp(&a.1.delta()));
        changes
            .into_iter()
            .map(|(group, count)| {
                format!(
                    "{:+.0} goroutines  {}  ({:.0} -> {:.0}{})",
                    count.delta(),
                    group.label(),
                    count.base,
                    count.head,
                    match group.leak {
                        LeakChange::New => ", new goroutine leak",
                        LeakChange::Gone => ", goroutine leak gone",
                        LeakChange::Persisting => ", goroutine leak",
                        LeakChange::None => "",
                    }
                )
            })
            .collect()
    }
}

impl Recording {
    fn of(report: &Report) -> Recording {
        Recording {
            exe: report.target.exe.clone(),
            go_version: report.target.go_version.clone(),
            duration_s: report.duration_s,
            mode: report.mode.clone(),
            sample_interval_bytes: sample_interval(report),
        }
    }

    fn line(&self) -> String {
        format!(
            "{} ({}), {:.1}s, {} (one sample per {})",
            self.exe,
            self.go_version,
            self.duration_s,
            self.mode,
            human_bytes(self.sample_interval_bytes as f64)
        )
    }
}

impl SiteDiff {
    /// "main.f app/main.go:12", with the base's line for a moved site.
    fn label(&self) -> String {
        let line = self.head_line.or(self.base_line).unwrap_or(0);
        let mut label = format!("{} {}", self.function, location(&self.file, line));
        if let (Some(base), Some(head)) = (self.base_line, self.head_line) {
            if base != head {
                let _ = write!(label, " (was :{base})");
            }
        }
        label
    }

    fn leak_note(&self) -> &'static str {
        match self.leak {
            LeakChange::New => ", new leak suspect",
            LeakChange::Gone => ", leak suspect gone",
            LeakChange::Persisting => ", leak suspect",
            LeakChange::None => "",
        }
    }
}

impl GroupDiff {
    /// The group's goroutines, their wait and their `go` statement.
    fn label(&self) -> String {
        let line = self.head_line.or(self.base_line).unwrap_or(0);
        let mut label = format!(
            "{} \"{}\", go at {} {}",
            self.start_function,
            self.wait_reason,
            self.function,
            location(&self.file, line)
        );
        if let (Some(base), Some(head)) = (self.base_line, self.head_line) {
            if base != head {
                let _ = write!(label, " (was :{base})");
            }
        }
        label
    }
}

/// Writes a section of at most `top` lines; returns 1 when it had any.
fn section(out: &mut String, title: &str, top: usize, lines: Vec<String>) -> usize {
    if lines.is_empty() {
        return 0;
    }
    let _ = writeln!(out, "\n{title}:");
    for line in lines.iter().take(top) {
        let _ = writeln!(out, "  {line}");
    }
    if lines.len() > top {
        let _ = writeln!(out, "  ... and {} more", lines.len() - top);
    }
    1
}

fn signed_bytes(bytes: f64) -> String {
    if bytes < 0.0 {
        format!("-{}", human_bytes(-bytes))
    } else if bytes.is_infinite() {
        "+inf".into()
    } else {
        format!("+{}", human_bytes(bytes))
    }
}

fn percent(change: &Change) -> String {
    match change.relative() {
        Some(relative) => format!("{:+.0}%", relative * 100.0),
        None if change.head == 0.0 => "+0%".into(),
        None => "new".into(),
    }
}

fn human_ms(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else {
        format!("{:.1}s", ms / 1000.0)
    }
}

/// What both reports share for the comparisons.
struct Context {
    /// Usable (finite, positive) recording lengths; `None` when either is not.
    durations: Option<(f64, f64)>,
    /// The longer of the two GC periods, seconds; `None` without usable durations.
    gc_period_s: Option<f64>,
}

impl Context {
    fn of(base: &Report, head: &Report) -> Context {
        let durations = usable_duration(base).zip(usable_duration(head));
        let gc_period_s = durations.map(|(base_s, head_s)| {
            gc_period(base_s, base.gc.cycles).max(gc_period(head_s, head.gc.cycles))
        });
        Context {
            durations,
            gc_period_s,
        }
    }
}

fn usable_duration(report: &Report) -> Option<f64> {
    (report.duration_s.is_finite() && report.duration_s > 0.0).then_some(report.duration_s)
}

/// Seconds between GC cycles; without a cycle, everything allocated may still be live.
fn gc_period(duration_s: f64, cycles: u64) -> f64 {
    if cycles == 0 {
        duration_s
    } else {
        duration_s / cycles as f64
    }
}

fn sample_interval(report: &Report) -> u64 {
    report
        .sample_rate_bytes
        .unwrap_or(report.sampling.interval_bytes)
}

/// A number from a report, non-negative and finite (user files may hold anything).
fn clean(value: f64) -> f64 {
    if value.is_finite() && value > 0.0 {
        value
    } else {
        0.0
    }
}

fn notes(base: &Report, head: &Report, context: &Context) -> Vec<String> {
    let mut notes = Vec::new();
    if base.mode != head.mode {
        notes.push(format!(
            "different modes (base {}, head {}): live bytes, lifetimes and leak suspects exist \
             only in sampled mode, and totals are exact in one and estimated in the other",
            base.mode, head.mode
        ));
    }
    let (base_interval, head_interval) = (sample_interval(base), sample_interval(head));
    if base_interval != head_interval {
        notes.push(format!(
            "different sampling intervals (base {}, head {}): the estimates stay unbiased but \
             differ in precision",
            human_bytes(base_interval as f64),
            human_bytes(head_interval as f64)
        ));
    }
    if base.target.go_version != head.target.go_version {
        notes.push(format!(
            "different Go versions (base {}, head {}): the runtime's own allocations and GC \
             pacing differ too",
            base.target.go_version, head.target.go_version
        ));
    }
    if base.target.exe != head.target.exe {
        notes.push(format!(
            "different executables (base {}, head {})",
            base.target.exe, head.target.exe
        ));
    }
    for (side, report) in [("base", base), ("head", head)] {
        if usable_duration(report).is_none() {
            notes.push(format!(
                "the {side} recording has no usable length ({}s): rates are not compared",
                report.duration_s
            ));
        }
        if report.events.dropped > 0 {
            notes.push(format!(
                "the {side} recording lost {} records (ring buffer full): its numbers are low",
                report.events.dropped
            ));
        }
    }
    if let Some((base_s, head_s)) = context.durations {
        if base_s.max(head_s) > rule::DURATION_RATIO_NOTE * base_s.min(head_s) {
            notes.push(format!(
                "the recordings differ in length ({base_s:.1}s and {head_s:.1}s): rates are per \
                 second, but live bytes and goroutine counts of anything that grows scale with \
                 the length"
            ));
        }
    }
    match (&base.goroutines, &head.goroutines) {
        (Some(_), None) => notes
            .push("goroutines were not tracked in head: goroutine counts are not compared".into()),
        (None, Some(_)) => notes.push(
            "goroutines were not tracked in base: goroutine counts are not compared, every \
             goroutine leak of head counts as new"
                .into(),
        ),
        _ => {}
    }
    notes
}

/// A number estimated from samples (or counted exactly), over an exposure.
#[derive(Clone, Copy, Debug)]
struct Estimate {
    /// What was observed in total: bytes, objects, live bytes, goroutines, GC cycles.
    amount: f64,
    /// What the amount is divided by to compare: seconds for rates, 1 for snapshots.
    exposure: f64,
    /// The most one sample stands for (see [`SampleBounds`]); `None` when exact.
    per_sample: Option<f64>,
}

impl Estimate {
    fn new(amount: f64, exposure: f64, per_sample: Option<f64>) -> Estimate {
        Estimate {
            amount: clean(amount),
            exposure,
            // A sample standing for "anything" (a NaN) is as noisy as can be, not exact.
            per_sample: per_sample.map(|p| {
                if p.is_nan() {
                    f64::INFINITY
                } else {
                    p.max(0.0)
                }
            }),
        }
    }

    /// A count where every unit is one Poisson event (goroutines, GC cycles).
    fn count(count: f64, exposure: f64) -> Estimate {
        Estimate::new(count, exposure, Some(1.0))
    }

    fn value(&self) -> f64 {
        self.amount / self.exposure
    }
}

/// head − base in standard errors of the difference, under the hypothesis that nothing
/// changed. The samples of an estimate are a Poisson count, each standing for some amount
/// x; the amount's variance is Σx² ≤ x_max·Σx = x_max·amount (compound Poisson), which is
/// the familiar amount²/n (relative standard error 1/√n) when every sample stands for the
/// same amount, and wider when they differ. With both sides at the pooled value V, the
/// difference's variance is V·(x_max,base/E_base + x_max,head/E_head); for equal exposures
/// and weights this is the classic (n_head − n_base)/√(n_base + n_head). Using the pooled
/// value keeps a side with no samples at all from looking exact. `None` when both numbers
/// are exact.
fn sigmas(base: Estimate, head: Estimate) -> Option<f64> {
    if base.per_sample.is_none() && head.per_sample.is_none() {
        return None;
    }
    let delta = head.value() - base.value();
    let pooled = (base.amount + head.amount) / (base.exposure + head.exposure);
    let variance = pooled
        * (base.per_sample.unwrap_or(0.0) / base.exposure
            + head.per_sample.unwrap_or(0.0) / head.exposure);
    if variance.is_nan() || variance.is_infinite() {
        // Noise without bound: no evidence of anything.
        return Some(0.0);
    }
    if variance <= 0.0 {
        // Nothing observed on either side, or samples that stand for nothing: as exact.
        return (delta == 0.0).then_some(0.0);
    }
    let z = delta / variance.sqrt();
    z.is_finite().then_some(z)
}

/// The most one sample of a site stands for, in bytes and in objects. Both samplers weight a
/// sample of size s by 1/(1−exp(−s/interval)) (pprof's scaling), so a sample stands for
/// s/(1−exp(−s/interval)) bytes, the most for the largest objects (about `interval` for
/// small ones, s for large ones), and 1/(1−exp(−s/interval)) objects, the most for the
/// smallest.
#[derive(Clone, Copy, Debug)]
struct SampleBounds {
    bytes: f64,
    objects: f64,
}

impl SampleBounds {
    fn of(interval: u64, sizes: (u64, u64)) -> SampleBounds {
        let (min, max) = (sizes.0.max(1), sizes.1.max(sizes.0).max(1));
        let weight = |size: u64| 1.0 / sample_probability(size, interval);
        SampleBounds {
            bytes: weight(max) * max as f64,
            objects: weight(min),
        }
    }
}

/// Judges a change: beyond the noise when beyond `min_sigmas` standard errors and `slack`,
/// significant when also beyond [`rule::MIN_RELATIVE_CHANGE`].
fn judge(base: Estimate, head: Estimate, min_sigmas: f64, slack: f64) -> Change {
    let (base_value, head_value) = (base.value(), head.value());
    let sigmas = sigmas(base, head);
    let delta = head_value - base_value;
    let beyond_noise =
        delta != 0.0 && sigmas.is_none_or(|z| z.abs() >= min_sigmas) && delta.abs() > slack;
    Change {
        base: base_value,
        head: head_value,
        sigmas,
        beyond_noise,
        significant: beyond_noise && delta.abs() >= rule::MIN_RELATIVE_CHANGE * base_value.abs(),
    }
}

/// A base item and its head counterpart (indices); `None` on the side that lacks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pair {
    base: Option<usize>,
    head: Option<usize>,
    /// Paired by loose key: the same code at another line.
    moved: bool,
}

/// Pairs base and head items, given as (exact key, loose key): by exact key first, then
/// items left over pair by loose key when exactly one is left on each side. Head's items come
/// first, in head's order, then base items left unpaired.
fn pair_up<E: Eq + Hash, L: Eq + Hash>(base: &[(E, L)], head: &[(E, L)]) -> Vec<Pair> {
    let mut base_by_key: HashMap<&E, VecDeque<usize>> = HashMap::new();
    for (index, (exact, _)) in base.iter().enumerate() {
        base_by_key.entry(exact).or_default().push_back(index);
    }
    let mut pairs: Vec<Pair> = (0..head.len())
        .map(|index| Pair {
            base: None,
            head: Some(index),
            moved: false,
        })
        .collect();
    let mut base_paired = vec![false; base.len()];
    for (pair, (exact, _)) in pairs.iter_mut().zip(head) {
        if let Some(base_index) = base_by_key.get_mut(exact).and_then(VecDeque::pop_front) {
            pair.base = Some(base_index);
            base_paired[base_index] = true;
        }
    }
    let mut base_left: HashMap<&L, Vec<usize>> = HashMap::new();
    for (index, (_, loose)) in base.iter().enumerate() {
        if !base_paired[index] {
            base_left.entry(loose).or_default().push(index);
        }
    }
    let mut head_left: HashMap<&L, Vec<usize>> = HashMap::new();
    for (index, (_, loose)) in head.iter().enumerate() {
        if pairs[index].base.is_none() {
            head_left.entry(loose).or_default().push(index);
        }
    }
    // Each loose key decides alone, so the map's order does not matter.
    for (loose, heads) in &head_left {
        if let ([head_index], Some([base_index])) =
            (heads.as_slice(), base_left.get(loose).map(Vec::as_slice))
        {
            pairs[*head_index].base = Some(*base_index);
            pairs[*head_index].moved = true;
            base_paired[*base_index] = true;
        }
    }
    pairs.extend(
        (0..base.len())
            .filter(|&index| !base_paired[index])
            .map(|index| Pair {
                base: Some(index),
                head: None,
                moved: false,
            }),
    );
    pairs
}

fn count_matches(pairs: &[Pair]) -> MatchCounts {
    let mut counts = MatchCounts::default();
    for pair in pairs {
        match (pair.base, pair.head) {
            (Some(_), Some(_)) if pair.moved => counts.moved += 1,
            (Some(_), Some(_)) => counts.matched += 1,
            (None, Some(_)) => counts.new += 1,
            (Some(_), None) => counts.gone += 1,
            (None, None) => {}
        }
    }
    counts
}

/// What one report says about one site.
#[derive(Clone, Copy)]
struct SiteFacts<'a> {
    function: &'a str,
    file: &'a str,
    line: u32,
    samples: u64,
    bytes: f64,
    objects: f64,
    /// Smallest and largest sampled size, when known.
    sizes: Option<(u64, u64)>,
    /// The report's sampling interval.
    interval: u64,
    live_bytes: Option<f64>,
    live_samples: Option<u64>,
    lifetimes: Option<&'a Lifetimes>,
    suspect: Option<&'a LeakSuspect>,
}

impl SiteFacts<'_> {
    /// The facts of a site a report does not have.
    fn absent(report: &Report) -> SiteFacts<'static> {
        let sampled = report.mode == "sampled";
        SiteFacts {
            function: "",
            file: "",
            line: 0,
            samples: 0,
            bytes: 0.0,
            objects: 0.0,
            sizes: None,
            interval: sample_interval(report),
            live_bytes: sampled.then_some(0.0),
            live_samples: sampled.then_some(0),
            lifetimes: None,
            suspect: None,
        }
    }

    /// The most one sample stands for on this side, for sampled sizes `sizes` (both sides'),
    /// never less than what this side's samples stood for on average.
    fn bounds(&self, sizes: (u64, u64)) -> SampleBounds {
        let mut bounds = SampleBounds::of(self.interval, sizes);
        if self.samples > 0 {
            let samples = self.samples as f64;
            bounds.bytes = bounds.bytes.max(clean(self.bytes) / samples);
            bounds.objects = bounds.objects.max(clean(self.objects) / samples);
        }
        bounds
    }

    /// The most one live sample stands for, in bytes.
    fn live_bound(&self, bounds: SampleBounds) -> f64 {
        match (self.live_bytes, self.live_samples) {
            (Some(live), Some(samples)) if samples > 0 => {
                bounds.bytes.max(clean(live) / samples as f64)
            }
            _ => bounds.bytes,
        }
    }
}

/// The sizes sampled on either side: a sample's weight depends on them.
fn merged_sizes(base: &SiteFacts<'_>, head: &SiteFacts<'_>) -> (u64, u64) {
    match (base.sizes, head.sizes) {
        (Some(b), Some(h)) => (b.0.min(h.0), b.1.max(h.1)),
        (Some(sizes), None) | (None, Some(sizes)) => sizes,
        // No sizes (a leak suspect missing from the site list): assume the worst of both
        // ends, tiny objects and objects of a whole sampling interval.
        (None, None) => (1, base.interval.max(head.interval)),
    }
}

/// The sites of a report, with the leak suspects that are missing from its site list.
fn site_facts(report: &Report) -> Vec<SiteFacts<'_>> {
    let interval = sample_interval(report);
    let mut suspects: HashMap<(&str, &str, u32), &LeakSuspect> = HashMap::new();
    for suspect in report.leak_suspects.iter().flatten() {
        suspects
            .entry((&suspect.function, &suspect.file, suspect.line))
            .or_insert(suspect);
    }
    let mut facts: Vec<SiteFacts<'_>> = report
        .alloc_sites
        .iter()
        .map(|site| SiteFacts {
            function: &site.function,
            file: &site.file,
            line: site.line,
            samples: site.samples,
            bytes: site.bytes as f64,
            objects: site.objects as f64,
            sizes: (site.samples > 0 && site.size.max > 0)
                .then_some((site.size.min, site.size.max)),
            interval,
            live_bytes: site.live_bytes.map(|b| b as f64),
            live_samples: site.live_samples,
            lifetimes: site.lifetime_ms.as_ref(),
            suspect: suspects
                .get(&(site.function.as_str(), site.file.as_str(), site.line))
                .copied(),
        })
        .collect();
    let listed: HashSet<(&str, &str, u32)> = report
        .alloc_sites
        .iter()
        .map(|s| (s.function.as_str(), s.file.as_str(), s.line))
        .collect();
    for suspect in report.leak_suspects.iter().flatten() {
        if listed.contains(&(
            suspect.function.as_str(),
            suspect.file.as_str(),
            suspect.line,
        )) {
            continue;
        }
        facts.push(SiteFacts {
            function: &suspect.function,
            file: &suspect.file,
            line: suspect.line,
            samples: 0,
            bytes: 0.0,
            objects: 0.0,
            sizes: None,
            interval,
            live_bytes: Some(suspect.live_bytes as f64),
            live_samples: None,
            lifetimes: None,
            suspect: Some(suspect),
        });
    }
    facts
}

/// (function, short file, line) of a site.
type SiteKey = (String, String, u32);
/// The same without the line.
type LooseSiteKey = (String, String);

fn compare_sites(
    base: &Report,
    head: &Report,
    context: &Context,
    gate: &Gate,
    violations: &mut Vec<Violation>,
) -> (Vec<SiteDiff>, MatchCounts) {
    let base_sites = site_facts(base);
    let head_sites = site_facts(head);
    let keys = |sites: &[SiteFacts<'_>]| -> Vec<(SiteKey, LooseSiteKey)> {
        sites
            .iter()
            .map(|s| {
                let file = short_path(s.file);
                (
                    (s.function.to_string(), file.clone(), s.line),
                    (s.function.to_string(), file),
                )
            })
            .collect()
    };
    let pairs = pair_up(&keys(&base_sites), &keys(&head_sites));
    let counts = count_matches(&pairs);
    let mut diffs = Vec::new();
    for Pair {
        base: base_index,
        head: head_index,
        ..
    } in pairs
    {
        let base_site = base_index.map(|i| base_sites[i]);
        let head_site = head_index.map(|i| head_sites[i]);
        let Some(named) = head_site.or(base_site) else {
            continue;
        };
        let mut site = compare_site(
            base_site.unwrap_or_else(|| SiteFacts::absent(base)),
            head_site.unwrap_or_else(|| SiteFacts::absent(head)),
            named,
            base_index.is_some(),
            head_index.is_some(),
            context,
        );
        let before = violations.len();
        site_violations(&mut site, gate, violations);
        let listed = violations.len() > before
            || matches!(site.leak, LeakChange::New | LeakChange::Gone)
            || [
                site.live_bytes,
                site.bytes_per_s,
                site.objects_per_s,
                site.lifetime_p50_ms,
                site.lifetime_p99_ms,
            ]
            .iter()
            .flatten()
            .any(|c| c.significant);
        if listed {
            diffs.push(site);
        }
    }
    (diffs, counts)
}

fn compare_site(
    base: SiteFacts<'_>,
    head: SiteFacts<'_>,
    named: SiteFacts<'_>,
    in_base: bool,
    in_head: bool,
    context: &Context,
) -> SiteDiff {
    let leak = LeakChange::of(base.suspect.is_some(), head.suspect.is_some());
    let sizes = merged_sizes(&base, &head);
    let (base_bounds, head_bounds) = (base.bounds(sizes), head.bounds(sizes));
    let rates = context.durations.map(|(base_s, head_s)| {
        (
            judge(
                Estimate::new(base.bytes, base_s, Some(base_bounds.bytes)),
                Estimate::new(head.bytes, head_s, Some(head_bounds.bytes)),
                rule::MIN_SIGMAS,
                0.0,
            ),
            judge(
                Estimate::new(base.objects, base_s, Some(base_bounds.objects)),
                Estimate::new(head.objects, head_s, Some(head_bounds.objects)),
                rule::MIN_SIGMAS,
                0.0,
            ),
        )
    });
    let live_bytes = base
        .live_bytes
        .zip(head.live_bytes)
        .map(|(base_live, head_live)| {
            // Garbage the sweeper has not freed yet: a GC period of the site's allocation;
            // without usable durations, everything the site allocated.
            let slack = match (rates, context.gc_period_s) {
                (Some((bytes, _)), Some(period)) => {
                    rule::GC_SLACK_PERIODS * bytes.base.max(bytes.head) * period
                }
                _ => clean(base.bytes).max(clean(head.bytes)),
            };
            let min_sigmas = if leak == LeakChange::New {
                rule::LEAK_SIGMAS
            } else {
                rule::MIN_SIGMAS
            };
            judge(
                Estimate::new(base_live, 1.0, Some(base.live_bound(base_bounds))),
                Estimate::new(head_live, 1.0, Some(head.live_bound(head_bounds))),
                min_sigmas,
                slack,
            )
        });
    let gc_period_ms = context.gc_period_s.unwrap_or(0.0) * 1000.0;
    let (lifetime_p50_ms, lifetime_p99_ms) = match (base.lifetimes, head.lifetimes) {
        (Some(base_life), Some(head_life)) => (
            lifetime_change(base_life, head_life, 0.5, |l| l.p50, gc_period_ms),
            lifetime_change(base_life, head_life, 0.99, |l| l.p99, gc_period_ms),
        ),
        _ => (None, None),
    };
    SiteDiff {
        function: named.function.to_string(),
        file: named.file.to_string(),
        base_line: in_base.then_some(base.line),
        head_line: in_head.then_some(head.line),
        live_bytes,
        bytes_per_s: rates.map(|r| r.0),
        objects_per_s: rates.map(|r| r.1),
        lifetime_p50_ms,
        lifetime_p99_ms,
        leak,
        leak_growth_bytes_per_s: head
            .suspect
            .or(base.suspect)
            .map(|s| s.growth_bytes_per_s)
            .filter(|g| g.is_finite()),
    }
}

/// The site's gate violations; a change that violates is marked significant (listed) even
/// when below [`rule::MIN_RELATIVE_CHANGE`].
fn site_violations(site: &mut SiteDiff, gate: &Gate, violations: &mut Vec<Violation>) {
    let subject = site.label();
    if gate.fail_on_new_leaks && site.leak == LeakChange::New {
        violations.push(Violation {
            kind: ViolationKind::NewLeakSuspect,
            subject: subject.clone(),
            amount: None,
            limit: None,
        });
    }
    if let (Some(limit), Some(live)) = (gate.max_live_growth_bytes, &mut site.live_bytes) {
        if let Some(violation) = growth_violation(
            live,
            limit as f64,
            ViolationKind::LiveGrowth,
            subject.clone(),
        ) {
            violations.push(violation);
        }
    }
    if let (Some(limit), Some(rate)) = (gate.max_alloc_rate_increase_pct, &mut site.bytes_per_s) {
        if let Some(violation) = rate_violation(rate, limit, subject) {
            violations.push(violation);
        }
    }
}

/// A growth beyond the noise and beyond `limit`.
fn growth_violation(
    change: &mut Change,
    limit: f64,
    kind: ViolationKind,
    subject: String,
) -> Option<Violation> {
    if !(change.beyond_noise && change.delta() > limit) {
        return None;
    }
    change.significant = true;
    Some(Violation {
        kind,
        subject,
        amount: Some(change.delta()),
        limit: Some(limit),
    })
}

/// An allocation rate increase beyond the noise and beyond `limit_pct`.
fn rate_violation(rate: &mut Change, limit_pct: f64, subject: String) -> Option<Violation> {
    if !rate.beyond_noise || rate.delta() <= 0.0 {
        return None;
    }
    let increase_pct = rate.relative().map(|r| r * 100.0);
    // A NaN limit never fails: comparisons with it are false.
    if increase_pct.is_none_or(|pct| pct > limit_pct) && !limit_pct.is_nan() {
        rate.significant = true;
        return Some(Violation {
            kind: ViolationKind::AllocRateIncrease,
            subject,
            amount: increase_pct,
            limit: Some(limit_pct),
        });
    }
    None
}

/// A lifetime quantile in base and head, or `None` when either side saw no death. Beyond
/// the noise when the two quantiles' confidence intervals (each at MIN_SIGMAS/√2, so that
/// together they span MIN_SIGMAS standard errors of the difference) do not overlap and the
/// change exceeds a GC period (deaths are only seen at sweeps).
fn lifetime_change(
    base: &Lifetimes,
    head: &Lifetimes,
    quantile: f64,
    value: fn(&Lifetimes) -> u64,
    gc_period_ms: f64,
) -> Option<Change> {
    if base.count == 0 || head.count == 0 {
        return None;
    }
    let tail = quantile.min(1.0 - quantile);
    let enough = |l: &Lifetimes| l.count as f64 * tail >= rule::MIN_QUANTILE_DEATHS;
    let (base_value, head_value) = (value(base) as f64, value(head) as f64);
    let half_width = rule::MIN_SIGMAS / std::f64::consts::SQRT_2;
    let beyond_noise = match (
        quantile_interval(base, quantile, base_value, half_width),
        quantile_interval(head, quantile, head_value, half_width),
    ) {
        (Some(base_range), Some(head_range)) if enough(base) && enough(head) => {
            (base_range.1 < head_range.0 || head_range.1 < base_range.0)
                && (head_value - base_value).abs() > gc_period_ms
        }
        // Too few deaths, or no histogram (reports from before it was recorded).
        _ => false,
    };
    Some(Change {
        base: base_value,
        head: head_value,
        sigmas: None,
        beyond_noise,
        significant: beyond_noise
            && (head_value - base_value).abs() >= rule::MIN_RELATIVE_CHANGE * base_value,
    })
}

/// The range the `quantile` of the lifetimes lies in with `sigmas` standard errors of its
/// rank (order statistics: the rank fraction of a quantile from n deaths has a standard
/// error of √(q(1−q)/n)), read off the power-of-two histogram; always holds `reported`.
fn quantile_interval(
    lifetimes: &Lifetimes,
    quantile: f64,
    reported: f64,
    sigmas: f64,
) -> Option<(f64, f64)> {
    let mut buckets: Vec<(f64, f64)> = lifetimes
        .buckets
        .iter()
        .filter(|b| b.count > 0)
        .map(|b| (b.le_ms as f64, b.count as f64))
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: f64 = buckets.iter().map(|b| b.1).sum();
    if total <= 0.0 {
        return None;
    }
    // The histogram's bound when the report's maximum is missing.
    let max = if lifetimes.max > 0 {
        lifetimes.max as f64
    } else {
        buckets.last().map_or(0.0, |b| b.0)
    }
    .max(reported);
    let spread = sigmas * (quantile * (1.0 - quantile) / total).sqrt();
    let at = |fraction: f64| -> f64 {
        if fraction <= 0.0 {
            return 0.0;
        }
        if fraction >= 1.0 {
            return max;
        }
        let target = fraction * total;
        let mut below = 0.0;
        for &(le, count) in &buckets {
            if target <= below + count {
                // Bucket `le` holds lifetimes in (le/2, le]; 0 and 1 hold only themselves.
                let low = if le <= 1.0 { le } else { le / 2.0 };
                let high = le.min(max).max(low);
                return low + (high - low) * (target - below) / count;
            }
            below += count;
        }
        max
    };
    let low = at(quantile - spread).min(reported);
    let high = at(quantile + spread).max(reported);
    Some((low, high))
}

/// What one report says about one goroutine group.
#[derive(Clone, Copy)]
struct GroupFacts<'a> {
    group: &'a GoroutineGroupReport,
    leak: bool,
}

/// The listed groups and the goroutine leaks of a report (a leak may be listed in both).
fn group_facts(report: &Report) -> Vec<GroupFacts<'_>> {
    let key = |g: &GoroutineGroupReport| {
        (
            g.function.clone(),
            g.file.clone(),
            g.line,
            g.start_function.clone(),
            g.wait_reason.clone(),
        )
    };
    let leaks: HashSet<_> = report.goroutine_leaks.iter().flatten().map(key).collect();
    let mut seen = HashSet::new();
    report
        .goroutine_groups
        .iter()
        .flatten()
        .chain(report.goroutine_leaks.iter().flatten())
        .filter(|g| seen.insert(key(g)))
        .map(|group| GroupFacts {
            group,
            leak: group.leak || leaks.contains(&key(group)),
        })
        .collect()
}

/// (function, short file, line, start function, wait reason) of a `go` statement's group.
type GroupKey = (String, String, u32, String, String);
/// The same without the line.
type LooseGroupKey = (String, String, String, String);

fn compare_groups(
    base: &Report,
    head: &Report,
    gate: &Gate,
    violations: &mut Vec<Violation>,
) -> (Vec<GroupDiff>, MatchCounts) {
    let base_groups = group_facts(base);
    let head_groups = group_facts(head);
    let keys = |groups: &[GroupFacts<'_>]| -> Vec<(GroupKey, LooseGroupKey)> {
        groups
            .iter()
            .map(|f| {
                let g = f.group;
                let file = short_path(&g.file);
                (
                    (
                        g.function.clone(),
                        file.clone(),
                        g.line,
                        g.start_function.clone(),
                        g.wait_reason.clone(),
                    ),
                    (
                        g.function.clone(),
                        file,
                        g.start_function.clone(),
                        g.wait_reason.clone(),
                    ),
                )
            })
            .collect()
    };
    let pairs = pair_up(&keys(&base_groups), &keys(&head_groups));
    let counts = count_matches(&pairs);
    let counted = base.goroutines.is_some() && head.goroutines.is_some();
    let mut diffs = Vec::new();
    for Pair {
        base: base_index,
        head: head_index,
        ..
    } in pairs
    {
        let base_group = base_index.map(|i| base_groups[i]);
        let head_group = head_index.map(|i| head_groups[i]);
        let Some(named) = head_group.or(base_group) else {
            continue;
        };
        let leak = LeakChange::of(
            base_group.is_some_and(|g| g.leak),
            head_group.is_some_and(|g| g.leak),
        );
        let count_of = |g: Option<GroupFacts<'_>>| g.map_or(0.0, |g| g.group.count as f64);
        let count = counted.then(|| {
            let (base_count, head_count) = (count_of(base_group), count_of(head_group));
            judge(
                Estimate::count(base_count, 1.0),
                Estimate::count(head_count, 1.0),
                if leak == LeakChange::New {
                    rule::LEAK_SIGMAS
                } else {
                    rule::MIN_SIGMAS
                },
                0.0,
            )
        });
        let mut group = GroupDiff {
            function: named.group.function.clone(),
            file: named.group.file.clone(),
            base_line: base_group.map(|g| g.group.line),
            head_line: head_group.map(|g| g.group.line),
            start_function: named.group.start_function.clone(),
            wait_reason: named.group.wait_reason.clone(),
            count,
            leak,
        };
        let before = violations.len();
        if gate.fail_on_new_leaks && leak == LeakChange::New {
            violations.push(Violation {
                kind: ViolationKind::NewGoroutineLeak,
                subject: group.label(),
                amount: None,
                limit: None,
            });
        }
        let subject = group.label();
        if let (Some(limit), Some(count)) = (gate.max_goroutine_growth, &mut group.count) {
            if let Some(violation) =
                growth_violation(count, limit as f64, ViolationKind::GoroutineGrowth, subject)
            {
                violations.push(violation);
            }
        }
        if violations.len() > before
            || matches!(leak, LeakChange::New | LeakChange::Gone)
            || group.count.is_some_and(|c| c.significant)
        {
            diffs.push(group);
        }
    }
    (diffs, counts)
}

/// The most one sample of a report's totals stands for, on average over its sites
/// (weighted by what they allocated: the total's variance is the sum of theirs); `None` when
/// the totals are exact (all-allocs mode counts every allocation).
fn total_bounds(report: &Report) -> Option<SampleBounds> {
    if !report.allocations.estimated {
        return None;
    }
    let interval = sample_interval(report);
    let (mut bytes, mut objects) = ((0.0, 0.0), (0.0, 0.0));
    for site in report.alloc_sites.iter().filter(|s| s.samples > 0) {
        let sizes = if site.size.max > 0 {
            (site.size.min, site.size.max)
        } else {
            (1, interval)
        };
        let bounds = SampleBounds::of(interval, sizes);
        let samples = site.samples as f64;
        let (site_bytes, site_objects) = (site.bytes as f64, site.objects as f64);
        bytes.0 += site_bytes * bounds.bytes.max(site_bytes / samples);
        bytes.1 += site_bytes;
        objects.0 += site_objects * bounds.objects.max(site_objects / samples);
        objects.1 += site_objects;
    }
    let average = |(weighted, total): (f64, f64), fallback: f64| {
        if total > 0.0 && weighted.is_finite() {
            weighted / total
        } else {
            fallback
        }
    };
    let fallback = SampleBounds::of(interval, (1, interval));
    Some(SampleBounds {
        bytes: average(bytes, fallback.bytes),
        objects: average(objects, fallback.objects),
    })
}

fn compare_totals(base: &Report, head: &Report, context: &Context) -> Totals {
    let (base_bounds, head_bounds) = (total_bounds(base), total_bounds(head));
    let (alloc_bytes_per_s, alloc_objects_per_s, gc_cycles_per_s) = match context.durations {
        Some((base_s, head_s)) => {
            let rate = |amount: fn(&Report) -> f64, bound: fn(SampleBounds) -> f64| {
                judge(
                    Estimate::new(amount(base), base_s, base_bounds.map(bound)),
                    Estimate::new(amount(head), head_s, head_bounds.map(bound)),
                    rule::MIN_SIGMAS,
                    0.0,
                )
            };
            let cycles = |r: &Report| r.gc.cycles as f64;
            (
                Some(rate(|r| r.allocations.bytes as f64, |b| b.bytes)),
                Some(rate(|r| r.allocations.objects as f64, |b| b.objects)),
                // GC cycles come about as a counting process too: Poisson is a conservative
                // model of their spread (they are more regular than that).
                Some(judge(
                    Estimate::count(cycles(base), base_s),
                    Estimate::count(cycles(head), head_s),
                    rule::MIN_SIGMAS,
                    0.0,
                )),
            )
        }
        None => (None, None, None),
    };
    let live_goroutines =
        base.goroutines
            .as_ref()
            .zip(head.goroutines.as_ref())
            .map(|(base_counts, head_counts)| {
                let (base_live, head_live) = (base_counts.live as f64, head_counts.live as f64);
                judge(
                    Estimate::count(base_live, 1.0),
                    Estimate::count(head_live, 1.0),
                    rule::MIN_SIGMAS,
                    0.0,
                )
            });
    Totals {
        alloc_bytes_per_s,
        alloc_objects_per_s,
        gc_cycles_per_s,
        live_goroutines,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{AllocSite, LifetimeBucket};

    fn load(json: &str) -> Report {
        serde_json::from_str(json).expect("test report parses")
    }

    /// A leaking web service (main.trackSession leaks), sampled mode, 12.4 s.
    fn demo() -> Report {
        load(include_str!("diff/testdata/demo-report.json"))
    }

    /// A program whose goroutines leak in six patterns, 10.4 s.
    fn goleaks() -> Report {
        load(include_str!("diff/testdata/goleaks-report.json"))
    }

    /// Every limit as tight as it goes: only changes beyond the noise can fail it.
    fn strict_gate() -> Gate {
        Gate {
            fail_on_new_leaks: true,
            max_live_growth_bytes: Some(0),
            max_alloc_rate_increase_pct: Some(0.0),
            max_goroutine_growth: Some(0),
        }
    }

    fn site<'a>(report: &'a mut Report, function: &str, line: u32) -> &'a mut AllocSite {
        report
            .alloc_sites
            .iter_mut()
            .find(|s| s.function == function && s.line == line)
            .expect("site in test report")
    }

    fn assert_quiet(diff: &Diff) {
        assert!(diff.sites.is_empty(), "sites: {:#?}", diff.sites);
        assert!(
            diff.goroutine_groups.is_empty(),
            "groups: {:#?}",
            diff.goroutine_groups
        );
        assert!(diff.violations().is_empty(), "{:#?}", diff.violations());
        let text = diff.to_text(10);
        assert!(text.contains("no significant changes"), "{text}");
        assert!(text.contains("gate: passed"), "{text}");
    }

    #[test]
    fn a_report_against_itself_is_quiet() {
        for report in [demo(), goleaks()] {
            let diff = diff(&report, &report, &strict_gate());
            assert_quiet(&diff);
            assert!(diff.notes.is_empty(), "{:?}", diff.notes);
            assert_eq!(diff.matching.sites.matched, report.alloc_sites.len());
            assert_eq!(diff.matching.sites.new + diff.matching.sites.gone, 0);
        }
    }

    #[test]
    fn changes_within_one_standard_error_are_quiet() {
        for base in [demo(), goleaks()] {
            let mut head = base.clone();
            // A slightly longer recording, every estimate off by one standard error (1/√n),
            // up and down in turn, goroutine counts by √count.
            head.duration_s *= 1.05;
            for (index, site) in head.alloc_sites.iter_mut().enumerate() {
                let sign = if index % 2 == 0 { 1.0 } else { -1.0 };
                let off = |value: u64, samples: f64| {
                    (value as f64 * (1.0 + sign / samples.max(1.0).sqrt())).round() as u64
                };
                let samples = site.samples as f64;
                site.bytes = off(site.bytes, samples);
                site.objects = off(site.objects, samples);
                let live_samples =
                    site.live_bytes.unwrap_or(0) as f64 * samples / (site.bytes as f64).max(1.0);
                site.live_bytes = site.live_bytes.map(|b| off(b, live_samples));
            }
            for group in head.goroutine_groups.iter_mut().flatten() {
                group.count += (group.count as f64).sqrt() as u64;
            }
            if let Some(counts) = &mut head.goroutines {
                counts.live += (counts.live as f64).sqrt() as u64;
            }
            assert_quiet(&diff(&base, &head, &strict_gate()));
            assert_quiet(&diff(&head, &base, &strict_gate()));
        }
    }

    #[test]
    fn two_real_recordings_of_the_same_program_are_quiet() {
        // Two 12-second runs of the demo service: per-site rates differ by up to 23% and the
        // total by 18%, all within sampling noise.
        let first = load(include_str!("diff/testdata/demo-run1.json"));
        let second = load(include_str!("diff/testdata/demo-run2.json"));
        assert_quiet(&diff(&first, &second, &strict_gate()));
        assert_quiet(&diff(&second, &first, &strict_gate()));
        // The recording from another build directory: only a note.
        let other = diff(&demo(), &first, &strict_gate());
        assert_quiet(&other);
        assert!(other
            .notes
            .iter()
            .any(|n| n.contains("different executables")));
    }

    #[test]
    fn a_real_doubled_request_rate_is_flagged() {
        // The demo service at -rate 4000 instead of 2000.
        let base = load(include_str!("diff/testdata/demo-run1.json"));
        let head = load(include_str!("diff/testdata/demo-rate4k.json"));
        let gate = Gate {
            max_alloc_rate_increase_pct: Some(50.0),
            ..Gate::default()
        };
        let diff = diff(&base, &head, &gate);
        let render = diff
            .sites
            .iter()
            .find(|s| s.function == "main.render")
            .expect("render listed");
        assert!(render.bytes_per_s.unwrap().significant);
        assert!(diff.totals.alloc_bytes_per_s.unwrap().significant);
        assert!(diff
            .violations()
            .iter()
            .any(|v| v.kind == ViolationKind::AllocRateIncrease && v.subject.contains("render")));
    }

    #[test]
    fn an_added_leak_is_flagged() {
        // Base: the demo before the leak (main.trackSession:112) was written.
        let head = demo();
        let mut base = head.clone();
        let leak = site(&mut base, "main.trackSession", 112).clone();
        base.alloc_sites.retain(|s| s.line != 112);
        base.leak_suspects = Some(Vec::new());
        base.allocations.bytes -= leak.bytes;
        base.allocations.objects -= leak.objects;

        let diff = diff(&base, &head, &Gate::default());
        let leak_diff = diff
            .sites
            .iter()
            .find(|s| s.function == "main.trackSession")
            .expect("leak listed");
        assert_eq!(leak_diff.leak, LeakChange::New);
        assert_eq!(
            (leak_diff.base_line, leak_diff.head_line),
            (None, Some(112))
        );
        let live = leak_diff.live_bytes.unwrap();
        assert!(live.significant && live.delta() == leak.live_bytes.unwrap() as f64);
        assert!(diff.violations().is_empty(), "no gate, no violation");
        let text = diff.to_text(10);
        assert!(
            text.contains(
                "+6.0MiB live  main.trackSession demo/main.go:112  (0B -> 6.0MiB, new leak \
                 suspect)"
            ),
            "{text}"
        );
        assert!(
            text.contains("new leak suspect    main.trackSession"),
            "{text}"
        );
        assert!(!text.contains("no significant changes"), "{text}");

        let gated = |gate: Gate| super::diff(&base, &head, &gate).violations;
        let new_leaks = gated(Gate {
            fail_on_new_leaks: true,
            ..Gate::default()
        });
        assert_eq!(new_leaks.len(), 1);
        assert_eq!(new_leaks[0].kind, ViolationKind::NewLeakSuspect);
        let growth = gated(Gate {
            max_live_growth_bytes: Some(1 << 20),
            ..Gate::default()
        });
        assert_eq!(growth.len(), 1);
        assert_eq!(growth[0].kind, ViolationKind::LiveGrowth);
        assert!(gated(Gate {
            max_live_growth_bytes: Some(100 << 20),
            ..Gate::default()
        })
        .is_empty());
        // And the other way round: the leak is gone, which fails nothing.
        let fixed = super::diff(&head, &base, &strict_gate());
        assert_eq!(fixed.sites[0].leak, LeakChange::Gone);
        assert!(fixed.violations().is_empty(), "{:?}", fixed.violations());
    }

    /// The demo with main.render's numbers scaled to `samples` samples (each standing for
    /// what its samples stand for now).
    fn with_render_samples(samples: u64) -> Report {
        let mut report = demo();
        let render = site(&mut report, "main.render", 122);
        let scale = samples as f64 / render.samples as f64;
        render.samples = samples;
        render.bytes = (render.bytes as f64 * scale) as u64;
        render.objects = (render.objects as f64 * scale) as u64;
        report
    }

    fn doubled_render(base: &Report) -> Report {
        let mut head = base.clone();
        let render = site(&mut head, "main.render", 122);
        render.samples *= 2;
        render.bytes *= 2;
        render.objects *= 2;
        head
    }

    #[test]
    fn a_doubled_rate_needs_enough_samples() {
        let gate = Gate {
            max_alloc_rate_increase_pct: Some(50.0),
            ..Gate::default()
        };
        let base = with_render_samples(200);
        let diff = diff(&base, &doubled_render(&base), &gate);
        let render = &diff.sites[0];
        assert_eq!(render.function, "main.render");
        let rate = render.bytes_per_s.unwrap();
        assert!(rate.significant && rate.sigmas.unwrap() > rule::MIN_SIGMAS);
        assert_eq!(diff.violations().len(), 1);
        assert_eq!(diff.violations()[0].kind, ViolationKind::AllocRateIncrease);
        assert_eq!(diff.violations()[0].amount.map(f64::round), Some(100.0));
        assert!(diff.to_text(10).contains("+100% bytes/s  main.render"));
        // Not beyond a 150% limit.
        assert!(super::diff(
            &base,
            &doubled_render(&base),
            &Gate {
                max_alloc_rate_increase_pct: Some(150.0),
                ..Gate::default()
            }
        )
        .violations()
        .is_empty());

        let base = with_render_samples(3);
        assert_quiet(&super::diff(&base, &doubled_render(&base), &gate));

        // +15% with 5000 samples: beyond the noise, below the listing threshold, over a 10%
        // limit (and then listed).
        let base = with_render_samples(5000);
        let mut head = base.clone();
        let render = site(&mut head, "main.render", 122);
        render.samples = 5750;
        render.bytes = render.bytes * 115 / 100;
        render.objects = render.objects * 115 / 100;
        assert_quiet(&super::diff(&base, &head, &Gate::default()));
        let gated = super::diff(
            &base,
            &head,
            &Gate {
                max_alloc_rate_increase_pct: Some(10.0),
                ..Gate::default()
            },
        );
        assert_eq!(gated.violations().len(), 1);
        let text = gated.to_text(10);
        assert!(text.contains("+15% bytes/s  main.render"), "{text}");
        assert!(!text.contains("no significant changes"), "{text}");
    }

    #[test]
    fn a_site_at_another_line_pairs_up() {
        let base = demo();
        let mut head = base.clone();
        site(&mut head, "main.trackSession", 112).line = 118;
        for suspect in head.leak_suspects.iter_mut().flatten() {
            suspect.line = 118;
        }
        let diff = diff(&base, &head, &strict_gate());
        assert_eq!(diff.matching.sites.moved, 1);
        assert_eq!(diff.matching.sites.new + diff.matching.sites.gone, 0);
        assert_quiet(&diff);

        // Moved and grown: shown at its new line, with the old one.
        let mut grown = head.clone();
        let leak = site(&mut grown, "main.trackSession", 118);
        leak.samples *= 8;
        leak.bytes *= 8;
        leak.live_bytes = leak.live_bytes.map(|b| b * 8);
        let diff = super::diff(&base, &grown, &Gate::default());
        assert_eq!(diff.sites[0].base_line, Some(112));
        assert_eq!(diff.sites[0].head_line, Some(118));
        assert!(diff.to_text(10).contains("demo/main.go:118 (was :112)"));
    }

    #[test]
    fn pairing_by_function_only_when_unambiguous() {
        let key = |function: &str, line: u32| ((function.to_string(), line), function.to_string());
        let base = [key("f", 10), key("g", 1), key("g", 2), key("h", 5)];
        let head = [key("f", 12), key("g", 3), key("g", 4), key("h", 5)];
        let pairs = pair_up(&base, &head);
        // f moved; g's two sites each moved, so which is which is unknown: new and gone.
        let pair = |base, head, moved| Pair { base, head, moved };
        assert!(pairs.contains(&pair(Some(0), Some(0), true)));
        assert!(pairs.contains(&pair(Some(3), Some(3), false)));
        assert!(pairs.contains(&pair(None, Some(1), false)));
        assert!(pairs.contains(&pair(Some(1), None, false)));
        assert_eq!(
            count_matches(&pairs),
            MatchCounts {
                matched: 1,
                moved: 1,
                new: 2,
                gone: 2
            }
        );
        assert_eq!(
            short_path("/root/go/src/container/list/list.go"),
            "list/list.go"
        );
        assert_eq!(short_path("main.go"), "main.go");
    }

    #[test]
    fn a_new_goroutine_leak_is_flagged() {
        let head = goleaks();
        let mut base = head.clone();
        let is_fetch = |g: &GoroutineGroupReport| g.function == "main.fetchWithTimeout";
        for groups in [&mut base.goroutine_groups, &mut base.goroutine_leaks] {
            groups.iter_mut().for_each(|g| g.retain(|g| !is_fetch(g)));
        }
        if let Some(counts) = &mut base.goroutines {
            counts.live -= 79;
        }
        let diff = diff(
            &base,
            &head,
            &Gate {
                fail_on_new_leaks: true,
                ..Gate::default()
            },
        );
        assert_eq!(diff.goroutine_groups.len(), 1);
        let group = &diff.goroutine_groups[0];
        assert_eq!(group.leak, LeakChange::New);
        assert!(group.count.unwrap().significant);
        assert_eq!(diff.violations().len(), 1);
        assert_eq!(diff.violations()[0].kind, ViolationKind::NewGoroutineLeak);
        let text = diff.to_text(10);
        assert!(
            text.contains(
                "new goroutine leak  main.fetchWithTimeout.func1 \"chan send\", go at \
                 main.fetchWithTimeout goleaks/main.go:119"
            ),
            "{text}"
        );
        assert!(text.contains("+79 goroutines"), "{text}");
    }

    #[test]
    fn a_grown_goroutine_group_is_flagged() {
        let base = goleaks();
        let mut head = base.clone();
        for group in head.goroutine_groups.iter_mut().flatten() {
            if group.function == "main.workerPool" {
                group.count += 64;
            }
        }
        if let Some(counts) = &mut head.goroutines {
            counts.live += 64;
        }
        let gate = Gate {
            max_goroutine_growth: Some(10),
            ..Gate::default()
        };
        let diff = diff(&base, &head, &gate);
        assert_eq!(diff.goroutine_groups.len(), 1);
        let count = diff.goroutine_groups[0].count.unwrap();
        assert_eq!((count.base, count.head), (16.0, 80.0));
        assert!(count.significant);
        assert_eq!(diff.violations().len(), 1);
        assert_eq!(diff.violations()[0].kind, ViolationKind::GoroutineGrowth);
        assert!(diff.violations()[0]
            .subject
            .contains("main.workerPool.func1"));
        // 64 more of 1140 live goroutines is within the noise of the total.
        assert!(!diff.totals.live_goroutines.unwrap().beyond_noise);
        // 16 → 24 is within the noise of a goroutine count.
        let mut small = base.clone();
        for group in small.goroutine_groups.iter_mut().flatten() {
            if group.function == "main.workerPool" {
                group.count += 8;
            }
        }
        assert_quiet(&super::diff(&base, &small, &gate));
    }

    fn scaled_lifetimes(lifetimes: &Lifetimes, factor: u64, deaths: u64) -> Lifetimes {
        let scale = |count: u64| count * deaths / lifetimes.count;
        Lifetimes {
            p50: lifetimes.p50 * factor,
            p90: lifetimes.p90 * factor,
            p99: lifetimes.p99 * factor,
            max: lifetimes.max * factor,
            count: deaths,
            buckets: lifetimes
                .buckets
                .iter()
                .map(|b| LifetimeBucket {
                    le_ms: b.le_ms * factor,
                    count: scale(b.count),
                })
                .collect(),
        }
    }

    #[test]
    fn lifetimes_change_when_the_quantiles_are_well_measured() {
        let base = demo();
        let render = base.alloc_sites[0].lifetime_ms.clone().unwrap();
        assert_eq!(render.count, 95);
        let mut head = base.clone();
        head.alloc_sites[0].lifetime_ms = Some(scaled_lifetimes(&render, 4, 95));
        let diff = diff(&base, &head, &Gate::default());
        let site = &diff.sites[0];
        assert!(site.lifetime_p50_ms.unwrap().significant);
        // 95 deaths are too few for a p99.
        assert!(!site.lifetime_p99_ms.unwrap().beyond_noise);
        assert!(diff.to_text(10).contains("p50 1.7s -> 6.7s"));

        // A base with as few deaths: nothing to say.
        let mut few = base.clone();
        few.alloc_sites[0].lifetime_ms = Some(scaled_lifetimes(&render, 1, 15));
        let mut few_head = few.clone();
        few_head.alloc_sites[0].lifetime_ms = Some(scaled_lifetimes(&render, 4, 15));
        assert_quiet(&super::diff(&few, &few_head, &Gate::default()));
    }

    #[test]
    fn reports_that_do_not_compare_get_notes() {
        let base = demo();
        let mut head = demo();
        head.mode = "all-allocs".into();
        head.sample_rate_bytes = None;
        head.sampling.interval_bytes = 65536;
        head.target.go_version = "go1.22.10".into();
        head.allocations.estimated = false;
        head.events.dropped = 12;
        for site in &mut head.alloc_sites {
            site.live_bytes = None;
            site.lifetime_ms = None;
        }
        head.leak_suspects = None;
        head.goroutines = None;
        let diff = diff(&base, &head, &strict_gate());
        let notes = diff.notes.join("\n");
        for expected in [
            "different modes",
            "different sampling intervals",
            "different Go versions",
            "lost 12 records",
            "goroutines were not tracked in head",
        ] {
            assert!(notes.contains(expected), "{expected}: {notes}");
        }
        // The leak suspect is gone (all-allocs mode has none), which fails nothing.
        assert!(diff.violations().is_empty(), "{:?}", diff.violations());
    }

    #[test]
    fn unusable_numbers_do_not_panic() {
        let base = demo();
        for duration in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let mut head = base.clone();
            head.duration_s = duration;
            head.alloc_sites[0].bytes_per_s = f64::NAN;
            head.sample_rate_bytes = Some(0);
            if let Some(suspects) = &mut head.leak_suspects {
                suspects[0].growth_bytes_per_s = f64::NAN;
                suspects[0].line = 999;
            }
            head.alloc_sites[1].size = Default::default();
            head.alloc_sites[1].live_samples = Some(0);
            head.alloc_sites[0].lifetime_ms = Some(Lifetimes {
                count: 3,
                buckets: vec![LifetimeBucket {
                    le_ms: u64::MAX,
                    count: u64::MAX,
                }],
                ..Lifetimes::default()
            });
            for (base, head) in [(&base, &head), (&head, &base), (&head, &head)] {
                let diff = diff(base, head, &strict_gate());
                assert!(diff.notes.iter().any(|n| n.contains("no usable length")));
                assert!(diff.totals.alloc_bytes_per_s.is_none());
                let _ = diff.to_text(3);
                serde_json::to_string(&diff).expect("serializes");
            }
        }
        let empty = Report {
            alloc_sites: Vec::new(),
            leak_suspects: None,
            goroutine_groups: None,
            goroutine_leaks: None,
            goroutines: None,
            ..base.clone()
        };
        assert_quiet(&diff(&empty, &empty, &strict_gate()));
        let _ = diff(&empty, &base, &strict_gate()).to_text(0);
    }

    #[test]
    fn sigmas_are_the_classic_poisson_test_for_equal_weights() {
        let count = |n: f64| Estimate::count(n, 1.0);
        let z = sigmas(count(100.0), count(200.0)).unwrap();
        assert!((z - 100.0 / 300f64.sqrt()).abs() < 1e-9);
        assert_eq!(sigmas(count(0.0), count(0.0)), Some(0.0));
        assert_eq!(
            sigmas(Estimate::new(1.0, 1.0, None), Estimate::new(2.0, 1.0, None)),
            None
        );
        // Rates over different lengths: the same rate is no change.
        let z = sigmas(Estimate::count(10.0, 10.0), Estimate::count(30.0, 30.0)).unwrap();
        assert!(z.abs() < 1e-9);
    }

    #[test]
    fn the_diff_serializes_with_live_samples_read_back() {
        let mut head = demo();
        head.alloc_sites[0].live_samples = Some(8);
        let json = serde_json::to_string(&head).unwrap();
        assert!(json.contains("\"live_samples\":8"));
        let read: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(read.alloc_sites[0].live_samples, Some(8));
        assert_eq!(read.alloc_sites[1].live_samples, None);
        let diff = serde_json::to_value(diff(&demo(), &read, &strict_gate())).unwrap();
        assert!(diff["violations"].as_array().unwrap().is_empty());
        assert_eq!(diff["base"]["mode"], "sampled");
    }
}

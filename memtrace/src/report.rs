//! The report: built from an `Analysis` and the exact in-kernel counters, written as text or
//! JSON, and the live view.

use std::{fmt::Write as _, io};

use memtrace_common::{global_counter, TargetStats, NUM_SIZE_CLASSES};
use serde::{Deserialize, Serialize};

use crate::{
    analysis::{Analysis, Sampling as AnalysisSampling},
    goroutines::{GoroutineGroup, Origin},
    runtime::class_size,
    symbolize::Frame,
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub target: TargetInfo,
    pub duration_s: f64,
    /// "sampled": the runtime's heap profiler, objects tracked to their death;
    /// "all-allocs": every allocation counted, stacks sampled.
    pub mode: String,
    /// Sampled mode: the `MemProfileRate` the objects were sampled at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_rate_bytes: Option<u64>,
    /// Sampled mode: what memtrace did to the target's `runtime.MemProfileRate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_profile_rate: Option<MemProfileRate>,
    pub allocations: Allocations,
    pub gc: Gc,
    pub events: Events,
    pub sampling: Sampling,
    pub alloc_sites: Vec<AllocSite>,
    /// Sampled mode: sites whose live memory keeps growing with objects that keep surviving
    /// GC cycles, most suspicious first; empty when nothing leaks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leak_suspects: Option<Vec<LeakSuspect>>,
    /// Goroutine counts (absent with --no-goroutines).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goroutines: Option<GoroutineCounts>,
    /// Groups of goroutines that keep growing while blocked, most suspicious first; empty when
    /// nothing leaks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goroutine_leaks: Option<Vec<GoroutineGroupReport>>,
    /// The largest groups of long-lived goroutines (leaking or not), largest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goroutine_groups: Option<Vec<GoroutineGroupReport>>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GoroutineCounts {
    /// Goroutines alive at the end, as `runtime.NumGoroutine` counts them (no runtime ones).
    pub live: u64,
    /// Goroutines created while memtrace was attached, and goroutines that exited (found gone
    /// by the scans, once a second), runtime ones not included.
    pub created: u64,
    pub exited: u64,
    /// Live runtime goroutines (GC workers, sweeper, finalizers, ...).
    pub system: u64,
    /// Live goroutines whose creation memtrace did not see: they existed before it attached
    /// (or their record was lost). Their age is unknown.
    pub unknown_age: u64,
    /// Goroutines the first scan found, created before memtrace attached.
    pub before_attach: u64,
    /// Goroutines later scans found whose creation record never arrived.
    pub found_by_scan: u64,
    /// Creations the probe counted, runtime goroutines included (exact, even when records
    /// were dropped).
    pub probe_creations: u64,
    /// Scans of the target's goroutines, and whether they read the runtime's whole list
    /// (`runtime.allgs`); when it could not be found or read, only goroutines created after
    /// attach are seen.
    pub scans: u64,
    pub scan_failures: u64,
    pub complete_scans: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GoroutineGroupReport {
    /// The code holding the `go` statement.
    pub function: String,
    pub file: String,
    pub line: u32,
    /// The function the goroutines run.
    pub start_function: String,
    /// Creation stack, innermost (the `go` statement) first; empty for goroutines created
    /// before attach.
    pub stack: Vec<Frame>,
    /// What the members wait for ("chan send", "select", "sync.Mutex.Lock", ...), or their
    /// state when not waiting ("running", "runnable", "syscall").
    pub wait_reason: String,
    pub count: u64,
    pub blocked: u64,
    /// Growth of the group, goroutines per second (least squares over its scans).
    pub growth_per_s: f64,
    /// Age of the oldest member whose creation memtrace saw; null when none was seen.
    pub oldest_age_s: Option<f64>,
    /// Members created before memtrace attached: their age is unknown.
    pub unknown_age: u64,
    /// R² of the growth: 1 is perfectly steady.
    pub steadiness: f64,
    pub score: f64,
    pub leak: bool,
    /// Member goroutine ids, oldest first (at most 1000).
    pub goids: Vec<u64>,
}

impl GoroutineGroupReport {
    fn of(group: &GoroutineGroup, origins: &[Origin]) -> GoroutineGroupReport {
        let origin = &origins[group.origin as usize];
        GoroutineGroupReport {
            function: origin.site.function.clone(),
            file: origin.site.file.clone(),
            line: origin.site.line,
            start_function: origin.start_function.clone(),
            stack: origin.stack.to_vec(),
            wait_reason: group.state.clone(),
            count: u64::from(group.count),
            blocked: u64::from(group.blocked),
            growth_per_s: group.growth_per_s,
            oldest_age_s: group.oldest_age_s,
            unknown_age: u64::from(group.unknown_age),
            steadiness: group.steadiness,
            score: group.score,
            leak: group.leak,
            goids: group.goids.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemProfileRate {
    /// The target's own value when memtrace attached.
    pub original: i64,
    /// What memtrace wrote (absent with --read-only or when it was already right).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub written: Option<i64>,
    /// Whether the original value was put back.
    pub restored: bool,
}

impl MemProfileRate {
    /// "0 -> 524288, restored".
    pub fn describe(&self) -> String {
        format!(
            "{} -> {}, {}",
            self.original,
            self.written.map_or("unchanged".into(), |w| w.to_string()),
            if self.restored {
                "restored"
            } else {
                "NOT restored"
            }
        )
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LeakSuspect {
    pub function: String,
    pub file: String,
    pub line: u32,
    pub stack: Vec<Frame>,
    /// The objects' type, when the binary lets memtrace know it.
    #[serde(rename = "type")]
    pub type_name: Option<String>,
    pub live_objects: u64,
    pub live_bytes: u64,
    pub growth_bytes_per_s: f64,
    pub oldest_age_s: f64,
    pub max_gc_cycles_survived: u64,
    /// R² of the growth: 1 is perfectly steady.
    pub steadiness: f64,
    pub score: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetInfo {
    pub pid: u32,
    pub exe: String,
    pub go_version: String,
    /// Launch mode: how the target exited ("exit code 0", "signal 9").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<String>,
}

/// Totals over the traced window: exact in all-allocs mode (counted in the kernel for every
/// allocation), estimated from the samples in sampled mode.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Allocations {
    /// Whether these are estimates (sampled mode).
    pub estimated: bool,
    pub objects: u64,
    /// Bytes of the slots the runtime handed out (size classes, tiny blocks, whole pages for
    /// large objects): what `runtime.MemStats.TotalAlloc` counts.
    pub bytes: u64,
    /// Bytes the program asked for.
    pub requested_bytes: u64,
    pub tiny_objects: u64,
    pub tiny_blocks: u64,
    pub large_objects: u64,
    pub large_bytes: u64,
    pub objects_per_s: f64,
    pub bytes_per_s: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Gc {
    /// Completed GC cycles.
    pub cycles: u64,
    pub timeline: Vec<GcCycleReport>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GcCycleReport {
    /// The runtime's cycle number, when the binary has symbols.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cycle: Option<u64>,
    /// Seconds since tracing started.
    pub at_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heap_start: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heap_end: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heap_marked: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heap_goal: Option<u64>,
}

/// Everything that arrived, and everything that was lost on the way.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Events {
    /// Records read from the ring buffer.
    pub received: u64,
    /// Records lost because the ring buffer was full.
    pub dropped: u64,
    pub samples: u64,
    pub gc_records: u64,
    /// Samples whose user stack could not be captured.
    pub stack_failures: u64,
    /// Samples whose stack hit the depth limit.
    pub stack_truncated: u64,
    /// Failed reads of target memory (allocation type, tiny-allocator state, goroutine id).
    pub read_failures: u64,
    /// Records that could not be decoded.
    pub decode_errors: u64,
    /// Probe hits the kernel could not attribute to a traced process (whole machine).
    pub unattributed: u64,
    /// Sampled mode: objects the heap profiler sampled, and deaths the sweeper reported.
    pub objects_sampled: u64,
    pub objects_freed: u64,
    /// Deaths of objects sampled before memtrace attached (no allocation to pair with).
    pub unmatched_frees: u64,
    /// Objects whose address was reused before their death was seen.
    pub replaced_objects: u64,
    /// Records a recording could not write (its writer fell behind or failed): they are in
    /// this report but not in the trace file.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unrecorded: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sampling {
    /// Mean bytes between samples.
    pub interval_bytes: u64,
    /// Sampled mode: seconds from attaching (launch mode: from starting the program) to the
    /// first object the heap profiler sampled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_sample_after_s: Option<f64>,
    pub note: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AllocSite {
    pub function: String,
    pub file: String,
    pub line: u32,
    /// Estimated from the stack samples (see `sampling`).
    pub objects: u64,
    pub bytes: u64,
    pub requested_bytes: u64,
    pub objects_per_s: f64,
    pub bytes_per_s: f64,
    pub samples: u64,
    /// Requested sizes of the sampled allocations.
    pub size: SizeDistribution,
    /// The heaviest stack of this site, innermost first.
    pub stack: Vec<Frame>,
    /// Sampled mode: estimated live objects and bytes (like pprof's in-use).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_objects: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_bytes: Option<u64>,
    /// Sampled mode: sampled objects still alive, the sample count behind `live_objects` and
    /// `live_bytes` (their precision; absent in reports from before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_samples: Option<u64>,
    /// Sampled mode: the objects' type, when the binary lets memtrace know it.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_name: Option<Option<String>>,
    /// Sampled mode: lifetimes of the sampled objects that died.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifetime_ms: Option<Lifetimes>,
    /// Sampled mode: most GC cycles any sampled object of the site survived (live or dead).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_gc_cycles_survived: Option<u64>,
    /// Sampled mode: age of the oldest live sampled object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_age_s: Option<f64>,
    /// Sampled mode: least-squares growth of live bytes over the GC cycles.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub growth_bytes_per_s: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Lifetimes {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
    pub count: u64,
    /// The distribution, in power-of-two buckets of milliseconds (empty buckets left out).
    #[serde(default)]
    pub buckets: Vec<LifetimeBucket>,
}

/// Deaths whose lifetime was at most `le_ms` (and more than the previous bucket's bound).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifetimeBucket {
    pub le_ms: u64,
    pub count: u64,
}

impl Lifetimes {
    pub fn of(lifetimes_ms: &hdrhistogram::Histogram<u64>) -> Lifetimes {
        // Bounds 0, 1, 2, 4, ... ms; the histogram keeps 3 significant digits, so a bucket
        // boundary is off by at most 0.1%.
        let mut buckets = Vec::new();
        if !lifetimes_ms.is_empty() {
            let mut low = 0u64;
            let mut high = 0u64;
            loop {
                let count = if high == 0 {
                    lifetimes_ms.count_between(0, 0)
                } else {
                    lifetimes_ms.count_between(low + 1, high)
                };
                if count > 0 {
                    buckets.push(LifetimeBucket { le_ms: high, count });
                }
                if high >= lifetimes_ms.max() {
                    break;
                }
                low = high;
                high = if high == 0 { 1 } else { high.saturating_mul(2) };
            }
        }
        Lifetimes {
            p50: lifetimes_ms.value_at_quantile(0.5),
            p90: lifetimes_ms.value_at_quantile(0.9),
            p99: lifetimes_ms.value_at_quantile(0.99),
            max: lifetimes_ms.max(),
            count: lifetimes_ms.len(),
            buckets,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SizeDistribution {
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

impl SizeDistribution {
    pub fn of(sizes: &hdrhistogram::Histogram<u64>) -> SizeDistribution {
        SizeDistribution {
            min: sizes.min(),
            p50: sizes.value_at_quantile(0.5),
            p90: sizes.value_at_quantile(0.9),
            p99: sizes.value_at_quantile(0.99),
            max: sizes.max(),
        }
    }
}

/// Slot bytes from the per-class counters.
pub fn slot_bytes(stats: &TargetStats) -> u64 {
    // Saturating: the counters may come from a damaged trace file.
    let small = (0..NUM_SIZE_CLASSES)
        .map(|class| stats.class_objects[class].saturating_mul(class_size(class as u32)))
        .fold(0u64, u64::saturating_add);
    small
        .saturating_add(stats.tiny_blocks.saturating_mul(16))
        .saturating_add(stats.large_bytes)
}

pub struct ReportInput<'a> {
    pub target: TargetInfo,
    /// Whether goroutines were tracked.
    pub goroutines: bool,
    /// Goroutine groups listed.
    pub top: usize,
    pub duration_s: f64,
    pub stats: &'a TargetStats,
    pub global_counters: &'a [u64],
    pub analysis: &'a Analysis,
    pub start_ts_ns: u64,
    pub mem_profile_rate: Option<MemProfileRate>,
}

impl Report {
    pub fn build(input: ReportInput<'_>) -> Report {
        let ReportInput {
            target,
            goroutines,
            top,
            duration_s,
            stats,
            global_counters,
            analysis,
            start_ts_ns,
            mem_profile_rate,
        } = input;
        let sampled = matches!(analysis.sampling(), AnalysisSampling::HeapProfiler { .. });
        let per_s = |v: f64| {
            if duration_s > 0.0 {
                v / duration_s
            } else {
                0.0
            }
        };
        let summaries = analysis.live_summaries();
        let sites = analysis.sites();
        let stack_of = |id: u32| sites[id as usize].stack.to_vec();
        let alloc_sites: Vec<AllocSite> = analysis
            .sites_by_bytes()
            .into_iter()
            .map(|id| {
                let site = &sites[id as usize];
                let live = summaries[id as usize];
                AllocSite {
                    function: site.key.function.clone(),
                    file: site.key.file.clone(),
                    line: site.key.line,
                    objects: site.objects.round() as u64,
                    bytes: site.bytes.round() as u64,
                    requested_bytes: site.requested_bytes.round() as u64,
                    objects_per_s: per_s(site.objects),
                    bytes_per_s: per_s(site.bytes),
                    samples: site.samples,
                    size: SizeDistribution::of(&site.sizes),
                    stack: stack_of(id),
                    live_objects: sampled.then(|| site.live_objects.round() as u64),
                    live_bytes: sampled.then(|| site.live_bytes.round() as u64),
                    live_samples: sampled.then_some(site.live_samples),
                    type_name: sampled.then(|| site.type_name.clone()),
                    lifetime_ms: sampled.then(|| Lifetimes::of(&site.lifetimes_ms)),
                    max_gc_cycles_survived: sampled
                        .then(|| live.max_cycles_survived.max(site.max_cycles_survived_dead)),
                    oldest_age_s: sampled.then_some(live.oldest_age_s),
                    growth_bytes_per_s: sampled.then(|| analysis.growth_bytes_per_s(id)),
                }
            })
            .collect();
        let leak_suspects = sampled.then(|| {
            analysis
                .leak_suspects(&summaries)
                .into_iter()
                .map(|verdict| {
                    let site = &sites[verdict.site as usize];
                    LeakSuspect {
                        function: site.key.function.clone(),
                        file: site.key.file.clone(),
                        line: site.key.line,
                        stack: stack_of(verdict.site),
                        type_name: site.type_name.clone(),
                        live_objects: site.live_objects.round() as u64,
                        live_bytes: site.live_bytes.round() as u64,
                        growth_bytes_per_s: verdict.growth_bytes_per_s,
                        oldest_age_s: verdict.live.oldest_age_s,
                        max_gc_cycles_survived: verdict.live.max_cycles_survived,
                        steadiness: verdict.steadiness,
                        score: verdict.score,
                    }
                })
                .collect()
        });
        let timeline = analysis
            .gc_cycles
            .iter()
            .map(|gc| {
                let known = gc.cycle.is_some();
                GcCycleReport {
                    cycle: gc.cycle,
                    at_s: gc.ts_ns.saturating_sub(start_ts_ns) as f64 / 1e9,
                    heap_start: known.then_some(gc.heap_start),
                    heap_end: known.then_some(gc.heap_end),
                    heap_marked: known.then_some(gc.heap_marked),
                    heap_goal: known.then_some(gc.heap_goal),
                }
            })
            .collect();
        let unattributed = global_counters
            .get(global_counter::UNKNOWN_TARGET as usize)
            .copied()
            .unwrap_or(0)
            .saturating_add(
                global_counters
                    .get(global_counter::STATS_MAP_FULL as usize)
                    .copied()
                    .unwrap_or(0),
            );
        let allocations = if sampled {
            let objects = sites.iter().map(|s| s.objects).sum::<f64>();
            let bytes = sites.iter().map(|s| s.bytes).sum::<f64>();
            Allocations {
                estimated: true,
                objects: objects.round() as u64,
                bytes: bytes.round() as u64,
                requested_bytes: sites.iter().map(|s| s.requested_bytes).sum::<f64>().round()
                    as u64,
                objects_per_s: per_s(objects),
                bytes_per_s: per_s(bytes),
                ..Allocations::default()
            }
        } else {
            let bytes = slot_bytes(stats);
            Allocations {
                estimated: false,
                objects: stats.objects,
                bytes,
                requested_bytes: stats.requested_bytes,
                tiny_objects: stats.tiny_objects,
                tiny_blocks: stats.tiny_blocks,
                large_objects: stats.large_objects,
                large_bytes: stats.large_bytes,
                objects_per_s: per_s(stats.objects as f64),
                bytes_per_s: per_s(bytes as f64),
            }
        };
        let interval = analysis.sample_interval_bytes();
        let note = if sampled {
            format!(
                "Sampled mode: the Go runtime's heap profiler sampled {} objects, on average one \
                 every {interval} bytes allocated (MemProfileRate); each stands for \
                 1/(1-exp(-size/rate)) objects, as pprof scales its samples, so totals, per-site \
                 and live numbers are estimates. Lifetimes pair each sampled object with its \
                 death at sweep.",
                analysis.samples_received
            )
        } else {
            format!(
                "Totals are exact (every allocation is counted in the kernel). Per-site numbers \
                 are unbiased estimates from {} stack samples taken on average once every \
                 {interval} requested bytes, each weighted by 1/(1-exp(-size/rate)) as pprof \
                 does.",
                analysis.samples_received
            )
        };
        Report {
            target,
            duration_s,
            mode: if sampled { "sampled" } else { "all-allocs" }.into(),
            sample_rate_bytes: sampled.then_some(interval),
            mem_profile_rate,
            allocations,
            gc: Gc {
                cycles: stats.gc_cycles,
                timeline,
            },
            events: Events {
                received: analysis.records_received,
                dropped: stats.ringbuf_drops,
                samples: analysis.samples_received,
                gc_records: analysis.gc_cycles.len() as u64,
                stack_failures: stats.stack_failures,
                stack_truncated: stats.stack_truncated,
                read_failures: stats.read_failures,
                decode_errors: analysis.decode_errors,
                unattributed,
                objects_sampled: stats.objects_sampled,
                objects_freed: stats.objects_freed,
                unmatched_frees: analysis.unmatched_frees,
                replaced_objects: analysis.replaced_objects,
                unrecorded: 0,
            },
            sampling: Sampling {
                interval_bytes: interval,
                first_sample_after_s: analysis
                    .first_object_ns
                    .map(|ts| ts.saturating_sub(start_ts_ns) as f64 / 1e9),
                note,
            },
            alloc_sites,
            leak_suspects,
            goroutines: goroutines.then(|| {
                let g = &analysis.goroutines;
                GoroutineCounts {
                    live: g.live_user() as u64,
                    created: g.created,
                    exited: g.exited,
                    system: g.live_system() as u64,
                    unknown_age: g.live_unknown_age() as u64,
                    before_attach: g.before_attach,
                    found_by_scan: g.found_by_scan,
                    probe_creations: stats.goroutines_created,
                    scans: g.scans,
                    scan_failures: g.scan_failures,
                    complete_scans: g.complete_scans,
                }
            }),
            goroutine_leaks: goroutines.then(|| {
                let g = &analysis.goroutines;
                g.leaks()
                    .into_iter()
                    .map(|group| GoroutineGroupReport::of(group, g.origins()))
                    .collect()
            }),
            goroutine_groups: goroutines.then(|| {
                let g = &analysis.goroutines;
                g.groups()
                    .iter()
                    .take(top)
                    .map(|group| GoroutineGroupReport::of(group, g.origins()))
                    .collect()
            }),
        }
    }

    pub fn write_json(&self, out: impl io::Write) -> serde_json::Result<()> {
        serde_json::to_writer_pretty(out, self)
    }

    /// The final report as text, with the `top` heaviest sites.
    pub fn to_text(&self, top: usize) -> String {
        let mut out = String::new();
        let t = &self.target;
        let _ = writeln!(
            out,
            "memtrace: pid {} {} ({}), {:.1}s, mode {}",
            t.pid, t.exe, t.go_version, self.duration_s, self.mode
        );
        if let Some(exit) = &t.exit {
            let _ = writeln!(out, "target exited: {exit}");
        }
        let a = &self.allocations;
        let _ = writeln!(
            out,
            "allocations: {} objects, {} ({}/s, {} objects/s); requested {}",
            a.objects,
            human_bytes(a.bytes as f64),
            human_bytes(a.bytes_per_s),
            human_count(a.objects_per_s),
            human_bytes(a.requested_bytes as f64),
        );
        let _ = writeln!(out, "gc cycles: {}", self.gc.cycles);
        let _ = writeln!(out, "{}", loss_line(&self.events));
        let _ = writeln!(out, "{}", wrap(&self.sampling.note, 100));
        let _ = writeln!(out);
        out.push_str(&site_table(self.alloc_sites.iter().take(top).map(|s| {
            (
                s.function.as_str(),
                s.file.as_str(),
                s.line,
                s.bytes_per_s,
                s.objects_per_s,
                Some(&s.size),
            )
        })));
        if let Some(rate) = &self.mem_profile_rate {
            let _ = writeln!(out, "\nruntime.MemProfileRate: {}", rate.describe());
        }
        if self.mode == "sampled" {
            let mut live: Vec<&AllocSite> = self
                .alloc_sites
                .iter()
                .filter(|s| s.live_bytes > Some(0))
                .collect();
            live.sort_by_key(|s| std::cmp::Reverse(s.live_bytes));
            let _ = writeln!(out, "\nin use now (estimated):");
            let _ = writeln!(
                out,
                "{:>10} {:>9} {:>10} {:>10} {:>7} {:>11}  site",
                "live", "objects", "life p50", "life p99", "cycles", "growth/s"
            );
            for site in live.into_iter().take(top) {
                let lifetimes = site.lifetime_ms.clone().unwrap_or_default();
                let _ = writeln!(
                    out,
                    "{:>10} {:>9} {:>10} {:>10} {:>7} {:>11}  {} {}",
                    human_bytes(site.live_bytes.unwrap_or(0) as f64),
                    human_count(site.live_objects.unwrap_or(0) as f64),
                    if lifetimes.count > 0 {
                        format!("{}ms", lifetimes.p50)
                    } else {
                        "-".into()
                    },
                    if lifetimes.count > 0 {
                        format!("{}ms", lifetimes.p99)
                    } else {
                        "-".into()
                    },
                    site.max_gc_cycles_survived.unwrap_or(0),
                    human_bytes(site.growth_bytes_per_s.unwrap_or(0.0)),
                    site.function,
                    location(&site.file, site.line)
                );
            }
        }
        match &self.leak_suspects {
            Some(suspects) if suspects.is_empty() => {
                let _ = writeln!(out, "\nleak suspects: none");
            }
            Some(suspects) => {
                let _ = writeln!(out, "\nleak suspects (most suspicious first):");
                for (rank, suspect) in suspects.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "  {}. {} {}{}: +{}/s, {} live in {} objects, oldest {:.0}s, survived {} GC cycles",
                        rank + 1,
                        suspect.function,
                        location(&suspect.file, suspect.line),
                        suspect.type_name.as_ref().map_or(String::new(), |t| format!(" ({t})")),
                        human_bytes(suspect.growth_bytes_per_s),
                        human_bytes(suspect.live_bytes as f64),
                        human_count(suspect.live_objects as f64),
                        suspect.oldest_age_s,
                        suspect.max_gc_cycles_survived,
                    );
                }
                if let Some(top_suspect) = suspects.first() {
                    let _ = writeln!(out, "\nstack of suspect 1 (innermost first):");
                    write_stack(&mut out, &top_suspect.stack);
                }
            }
            None => {
                if let Some(site) = self.alloc_sites.first() {
                    let _ = writeln!(out, "\nheaviest site, stack (innermost first):");
                    write_stack(&mut out, &site.stack);
                }
            }
        }
        self.goroutines_text(&mut out, top);
        out
    }

    fn goroutines_text(&self, out: &mut String, top: usize) {
        let Some(counts) = &self.goroutines else {
            return;
        };
        let _ = writeln!(out, "\n{}", goroutine_line(counts));
        if let Some(groups) = &self.goroutine_groups {
            if !groups.is_empty() {
                let _ = writeln!(
                    out,
                    "long-lived goroutines (by go statement, function, state):"
                );
                out.push_str(&goroutine_table(groups.iter().take(top)));
            }
        }
        match self.goroutine_leaks.as_deref() {
            Some([]) | None => {
                let _ = writeln!(out, "\ngoroutine leaks: none");
            }
            Some(leaks) => {
                let _ = writeln!(out, "\ngoroutine leaks (most suspicious first):");
                for (rank, leak) in leaks.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "  {}. {} goroutines running {} blocked on \"{}\", +{:.1}/s, oldest {}, created at {} {}",
                        rank + 1,
                        leak.count,
                        leak.start_function,
                        leak.wait_reason,
                        leak.growth_per_s,
                        oldest_text(leak),
                        leak.function,
                        location(&leak.file, leak.line),
                    );
                }
                if let Some(first) = leaks.first() {
                    if !first.stack.is_empty() {
                        let _ = writeln!(
                            out,
                            "\ncreation stack of goroutine leak 1 (innermost first):"
                        );
                        write_stack(out, &first.stack);
                    }
                }
            }
        }
    }
}

fn write_stack(out: &mut String, stack: &[Frame]) {
    for frame in stack {
        let _ = writeln!(
            out,
            "  {}{} {}",
            if frame.inlined { "[inlined] " } else { "" },
            frame.function,
            location(&frame.file, frame.line)
        );
    }
}

/// Age of a group's oldest member: "12s", or "unknown" when members predate memtrace.
fn oldest_text(group: &GoroutineGroupReport) -> String {
    match (group.oldest_age_s, group.unknown_age) {
        (_, n) if n > 0 => "unknown".into(),
        (Some(age), _) => format!("{age:.0}s"),
        (None, _) => "-".into(),
    }
}

/// The goroutine counts in one line.
pub fn goroutine_line(counts: &GoroutineCounts) -> String {
    format!(
        "goroutines: {} live ({} of unknown age), {} created, {} exited; {} runtime goroutines; \
         {} creations only found by scans (record lost){}",
        counts.live,
        counts.unknown_age,
        counts.created,
        counts.exited,
        counts.system,
        counts.found_by_scan,
        if counts.complete_scans || counts.scans == 0 {
            ""
        } else {
            " (runtime.allgs not read: goroutines from before attach are not seen)"
        }
    )
}

/// A table of goroutine groups.
pub fn goroutine_table<'a>(groups: impl Iterator<Item = &'a GoroutineGroupReport>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>7} {:>8} {:>9} {:>10}  {:<22} {:<28} go statement",
        "count", "blocked", "growth/s", "oldest", "state", "function"
    );
    for group in groups {
        let _ = writeln!(
            out,
            "{:>7} {:>8} {:>9.1} {:>10}  {:<22} {:<28} {} {}{}",
            group.count,
            group.blocked,
            // No "-0.0" for a flat group.
            if group.growth_per_s.abs() < 0.05 {
                0.0
            } else {
                group.growth_per_s
            },
            oldest_text(group),
            group.wait_reason,
            group.start_function,
            group.function,
            location(&group.file, group.line),
            if group.leak { "  LEAK" } else { "" }
        );
    }
    out
}

/// One line naming every kind of loss, so nothing is lost silently.
pub fn loss_line(events: &Events) -> String {
    format!(
        "events: {} received, {} dropped (ring buffer full), {} stacks not captured, {} \
         stacks truncated, {} failed reads, {} undecodable, {} unattributed, {} deaths of \
         objects sampled before attach",
        events.received,
        events.dropped,
        events.stack_failures,
        events.stack_truncated,
        events.read_failures,
        events.decode_errors,
        events.unattributed,
        events.unmatched_frees
    )
}

/// Breaks text into lines of at most `width` characters at spaces.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line_len = 0;
    for word in text.split_whitespace() {
        if line_len > 0 && line_len + 1 + word.len() > width {
            out.push('\n');
            line_len = 0;
        } else if line_len > 0 {
            out.push(' ');
            line_len += 1;
        }
        out.push_str(word);
        line_len += word.len();
    }
    out
}

pub fn location(file: &str, line: u32) -> String {
    if file.is_empty() {
        return String::new();
    }
    format!("{}:{line}", short_path(file))
}

/// The last two components of a path ("app/main.go"): what tells files apart in a report, and
/// what stays the same for builds in different directories.
pub fn short_path(file: &str) -> String {
    let mut parts = file.rsplit('/');
    match (parts.next(), parts.next()) {
        (Some(name), Some(dir)) => format!("{dir}/{name}"),
        (Some(name), None) => name.to_string(),
        _ => String::new(),
    }
}

/// The site table of the report and the live view.
pub fn site_table<'a>(
    rows: impl Iterator<
        Item = (
            &'a str,
            &'a str,
            u32,
            f64,
            f64,
            Option<&'a SizeDistribution>,
        ),
    >,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>10} {:>10} {:>8} {:>8}  site",
        "bytes/s", "objects/s", "size p50", "p99"
    );
    for (function, file, line, bytes_per_s, objects_per_s, size) in rows {
        let (p50, p99) = size.map_or((String::new(), String::new()), |s| {
            (human_bytes(s.p50 as f64), human_bytes(s.p99 as f64))
        });
        let _ = writeln!(
            out,
            "{:>10} {:>10} {:>8} {:>8}  {} {}",
            human_bytes(bytes_per_s),
            human_count(objects_per_s),
            p50,
            p99,
            function,
            location(file, line)
        );
    }
    out
}

pub fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0}{}", UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

pub fn human_count(count: f64) -> String {
    if count >= 1e6 {
        format!("{:.1}M", count / 1e6)
    } else if count >= 1e3 {
        format!("{:.1}k", count / 1e3)
    } else {
        format!("{count:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_bytes_adds_classes_tiny_blocks_and_pages() {
        let mut stats = TargetStats::ZERO;
        stats.class_objects[1] = 3; // 8 B
        stats.class_objects[67] = 1; // 32 KiB
        stats.tiny_blocks = 2;
        stats.large_bytes = 8192 * 5;
        assert_eq!(slot_bytes(&stats), 24 + 32768 + 32 + 40960);
    }

    #[test]
    fn lifetime_buckets_cover_every_death() {
        let mut histogram = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        for ms in [0, 1, 3, 3, 700, 5000] {
            histogram.record(ms).unwrap();
        }
        let lifetimes = Lifetimes::of(&histogram);
        let bounds: Vec<(u64, u64)> = lifetimes
            .buckets
            .iter()
            .map(|b| (b.le_ms, b.count))
            .collect();
        assert_eq!(bounds, vec![(0, 1), (1, 1), (4, 2), (1024, 1), (8192, 1)]);
        assert_eq!(
            lifetimes.buckets.iter().map(|b| b.count).sum::<u64>(),
            lifetimes.count
        );
        assert!(Lifetimes::of(&hdrhistogram::Histogram::new(3).unwrap())
            .buckets
            .is_empty());
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512.0), "512B");
        assert_eq!(human_bytes(1536.0), "1.5KiB");
        assert_eq!(human_count(2_500_000.0), "2.5M");
        assert_eq!(location("/src/app/main.go", 12), "app/main.go:12");
        assert_eq!(location("", 0), "");
    }
}

//! Turning events into per-site statistics, object lifetimes and leak suspects. Live sessions
//! and recorded traces feed the same `Analysis`.

use std::{collections::HashMap, sync::Arc};

use hdrhistogram::Histogram;

use crate::{
    events::{AllocEvent, Event, FreeEvent, GcEvent},
    goroutines::Goroutines,
    symbolize::{Frame, Symbolizer},
};

/// Where an allocation came from: the innermost frame outside the Go runtime.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SiteKey {
    pub function: String,
    pub file: String,
    pub line: u32,
}

/// Most GC-cycle snapshots of live bytes kept per site (older ones are dropped).
const MAX_SNAPSHOTS: usize = 512;

/// What the samples say about one allocation site.
pub struct Site {
    pub key: SiteKey,
    pub samples: u64,
    /// Unbiased estimates of everything allocated (each sample weighted by the inverse of its
    /// sampling probability).
    pub objects: f64,
    pub bytes: f64,
    pub requested_bytes: f64,
    /// Requested sizes of the sampled allocations.
    pub sizes: Histogram<u64>,
    /// Estimates since the last live-view tick.
    pub window_objects: f64,
    pub window_bytes: f64,
    /// The heaviest stack seen for this site.
    pub stack: Arc<[Frame]>,
    stack_id: u32,
    /// Sampled objects still alive, and the estimates they stand for.
    pub live_samples: u64,
    pub live_objects: f64,
    pub live_bytes: f64,
    /// Lifetimes (ms) of the sampled objects that died.
    pub lifetimes_ms: Histogram<u64>,
    /// Most GC cycles a dead sampled object of this site had survived.
    pub max_cycles_survived_dead: u64,
    /// (seconds since the first event, estimated live bytes) at each GC cycle.
    pub snapshots: Vec<(f64, f64)>,
    /// The objects' Go type, when their malloc header named it.
    pub type_name: Option<String>,
}

/// A sampled object that has not died yet. Kept small: memtrace may track millions.
#[derive(Clone, Copy, Debug)]
struct LiveObject {
    /// Index into `Analysis::stack_stats` (low 24 bits) and into `Analysis::intervals` (high
    /// 8 bits): the sampling interval it was sampled at, which its weight depends on.
    stack_and_interval: u32,
    /// The GC epoch it was allocated in (see `Analysis::cycle`).
    cycle: u32,
    /// Slot size, saturated at 4 GiB.
    size: u32,
    /// Milliseconds since the first event.
    at_ms: u32,
}
const _: () = assert!(size_of::<LiveObject>() == 16);

/// Distinct stacks a live object can refer to (the rest of its word holds the interval index).
const MAX_TRACKED_STACKS: u32 = 1 << 24;

/// Distinct sampling intervals one analysis tells apart (the node agent's budget changes a
/// process's rate in powers of two, so a handful is used in practice).
const MAX_INTERVALS: usize = 256;

impl LiveObject {
    fn stack(&self) -> u32 {
        self.stack_and_interval & (MAX_TRACKED_STACKS - 1)
    }

    fn interval_index(&self) -> usize {
        (self.stack_and_interval >> 24) as usize
    }
}

/// What the samples say about one distinct stack (a site can be reached by several).
pub struct StackStats {
    pub site: u32,
    /// Symbolized, innermost first.
    pub frames: Arc<[Frame]>,
    pub samples: u64,
    /// Unbiased estimates, as for [`Site`].
    pub objects: f64,
    pub bytes: f64,
    pub live_objects: f64,
    pub live_bytes: f64,
}

/// Estimated objects and bytes of one stack that a completed GC found reachable (see
/// [`Analysis::settled_by_stack`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Settled {
    pub objects: f64,
    pub bytes: f64,
}

/// Live-object facts of one site, gathered over the live set.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LiveSummary {
    /// Age of the oldest live sampled object, in seconds.
    pub oldest_age_s: f64,
    /// Most GC cycles a live sampled object has survived.
    pub max_cycles_survived: u64,
    /// Live sampled objects allocated in the first and in the second half of the events seen.
    pub first_half: u64,
    pub second_half: u64,
}

/// Why a site is a leak suspect.
#[derive(Clone, Debug, PartialEq)]
pub struct LeakVerdict {
    pub site: u32,
    /// Least-squares slope of the site's live bytes over the GC-cycle snapshots.
    pub growth_bytes_per_s: f64,
    /// How well a straight line explains the growth (1 = perfectly steady).
    pub steadiness: f64,
    pub live: LiveSummary,
    pub score: f64,
}

/// The leak rule's thresholds (documented in the README).
pub mod leak_rule {
    /// GC-cycle snapshots needed before a site can be judged.
    pub const MIN_SNAPSHOTS: usize = 4;
    /// R² of the linear fit of live bytes over time.
    pub const MIN_STEADINESS: f64 = 0.6;
    /// The oldest live object must be at least this old, as a fraction of the window: leaked
    /// objects never die, while a full bounded cache keeps only recent ones.
    pub const MIN_OLDEST_AGE: f64 = 0.5;
    /// Of the live objects, at least this fraction must have been allocated in the later half
    /// of the window: the site keeps adding survivors (a table built once does not).
    pub const MIN_RECENT_SURVIVORS: f64 = 0.2;
    /// Live objects must have survived at least this many GC cycles. Churn reaches 2: an
    /// object allocated while cycle N marks is still counted live until sweep N+1 frees it.
    pub const MIN_CYCLES_SURVIVED: u64 = 3;
    /// Growth over the window must exceed this many sampling intervals worth of bytes, so
    /// that a couple of unlucky samples are not a leak.
    pub const MIN_GROWTH_INTERVALS: f64 = 4.0;
}

/// How allocations reach the analysis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampling {
    /// Stack samples taken by memtrace's own sampler in `--all-allocs` mode.
    AllAllocs { interval_bytes: u64 },
    /// The Go runtime's heap profiler at `MemProfileRate` bytes.
    HeapProfiler { rate_bytes: u64 },
}

impl Sampling {
    pub fn interval_bytes(self) -> u64 {
        match self {
            Sampling::AllAllocs { interval_bytes } => interval_bytes,
            Sampling::HeapProfiler { rate_bytes } => rate_bytes,
        }
    }
}

pub struct Analysis {
    symbolizer: Symbolizer,
    sampling: Sampling,
    /// Every sampling interval used so far; a live object's weight uses the one it was
    /// sampled at, so that a rate changed mid-session (the agent's budget) keeps estimates
    /// unbiased.
    intervals: Vec<u64>,
    /// Index of the current interval in `intervals`.
    interval_index: usize,
    /// Stack ids by captured stack.
    stacks: HashMap<Vec<u64>, u32>,
    stack_stats: Vec<StackStats>,
    site_ids: HashMap<SiteKey, u32>,
    sites: Vec<Site>,
    live: HashMap<u64, LiveObject>,
    pub gc_cycles: Vec<GcEvent>,
    /// The current GC epoch: the runtime's number of the last completed cycle when the binary
    /// has symbols, else the number of cycles seen since attaching.
    cycle: u64,
    /// Timestamp of the first event (CLOCK_MONOTONIC ns); times are relative to it.
    origin_ns: Option<u64>,
    last_ns: u64,
    /// Every record read, decodable or not.
    pub records_received: u64,
    pub samples_received: u64,
    pub samples_without_stack: u64,
    pub decode_errors: u64,
    /// Deaths of sampled objects whose allocation was not seen (sampled before attach).
    pub unmatched_frees: u64,
    /// Sampled objects whose address was handed out again before their death was seen.
    pub replaced_objects: u64,
    /// `runtime.main` started (launch mode), at this timestamp.
    pub runtime_ready: Option<u64>,
    deaths: Option<Vec<Death>>,
    /// When the first object sampled by the heap profiler arrived (CLOCK_MONOTONIC ns).
    pub first_object_ns: Option<u64>,
    /// Goroutine lifecycles and goroutine leaks.
    pub goroutines: Goroutines,
}

/// Probability that the sampler picks an allocation of `size` bytes when it samples on
/// average once every `interval` bytes.
pub fn sample_probability(size: u64, interval: u64) -> f64 {
    if interval <= 1 {
        return 1.0;
    }
    1.0 - (-(size as f64) / interval as f64).exp()
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant digits is a valid precision")
}

/// Least-squares slope and R² of `points`.
pub(crate) fn linear_fit(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
    for &(x, y) in points {
        sxx += (x - mean_x) * (x - mean_x);
        sxy += (x - mean_x) * (y - mean_y);
        syy += (y - mean_y) * (y - mean_y);
    }
    if sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let r2 = if syy > 0.0 {
        (sxy * sxy) / (sxx * syy)
    } else {
        0.0
    };
    Some((slope, r2))
}

impl Analysis {
    pub fn new(symbolizer: Symbolizer, sampling: Sampling) -> Analysis {
        Analysis {
            symbolizer,
            sampling,
            intervals: vec![sampling.interval_bytes()],
            interval_index: 0,
            stacks: HashMap::new(),
            stack_stats: Vec::new(),
            site_ids: HashMap::new(),
            sites: Vec::new(),
            live: HashMap::new(),
            gc_cycles: Vec::new(),
            cycle: 0,
            origin_ns: None,
            last_ns: 0,
            records_received: 0,
            samples_received: 0,
            samples_without_stack: 0,
            decode_errors: 0,
            unmatched_frees: 0,
            replaced_objects: 0,
            runtime_ready: None,
            deaths: None,
            first_object_ns: None,
            goroutines: Goroutines::new(),
        }
    }

    pub fn sampling(&self) -> Sampling {
        self.sampling
    }

    pub fn sample_interval_bytes(&self) -> u64 {
        self.sampling.interval_bytes()
    }

    /// Changes the heap profiler's rate (the session learns it once the rate is written).
    pub fn set_sampling(&mut self, sampling: Sampling) {
        self.sampling = sampling;
        let interval = sampling.interval_bytes();
        self.interval_index = match self.intervals.iter().position(|&known| known == interval) {
            Some(index) => index,
            None if self.intervals.len() < MAX_INTERVALS => {
                self.intervals.push(interval);
                self.intervals.len() - 1
            }
            // Never in practice; the closest known interval keeps weights nearly right.
            None => self
                .intervals
                .iter()
                .enumerate()
                .min_by_key(|(_, known)| known.abs_diff(interval))
                .map_or(0, |(index, _)| index),
        };
    }

    /// Sampling intervals used so far, the current one last set (see `set_sampling`).
    pub fn sampling_intervals(&self) -> &[u64] {
        &self.intervals
    }

    /// Feeds one ring-buffer record.
    pub fn record(&mut self, bytes: &[u8], load_bias: u64) -> Option<Event> {
        let event = self.decode(bytes)?;
        self.event(&event, load_bias);
        Some(event)
    }

    /// Decodes one ring-buffer record, counting it (and counting it undecodable).
    pub fn decode(&mut self, bytes: &[u8]) -> Option<Event> {
        let event = Event::decode(bytes).ok();
        self.count_record(event.is_some());
        event
    }

    /// Counts a ring-buffer record (a replay counts the records the session counted).
    pub fn count_record(&mut self, decodable: bool) {
        self.records_received += 1;
        if !decodable {
            self.decode_errors += 1;
        }
    }

    pub fn symbolizer_mut(&mut self) -> &mut Symbolizer {
        &mut self.symbolizer
    }

    pub fn event(&mut self, event: &Event, load_bias: u64) {
        let ts = event.ts_ns();
        self.origin_ns.get_or_insert(ts);
        self.last_ns = self.last_ns.max(ts);
        match event {
            Event::Alloc(alloc) => {
                self.sample(alloc, load_bias);
            }
            Event::ObjectAlloc(alloc) => self.object_alloc(alloc, load_bias),
            Event::ObjectFree(free) => self.object_free(free),
            Event::Gc(gc) => self.gc(gc),
            Event::RuntimeReady { ts_ns, .. } => self.runtime_ready = Some(*ts_ns),
            Event::GoroutineCreate(created) => {
                self.goroutines
                    .create(created, &mut self.symbolizer, load_bias)
            }
            Event::GoroutineScan(scan) => {
                self.goroutines.scan(scan, &mut self.symbolizer, load_bias)
            }
        }
    }

    /// Seconds from the first event to `ts_ns`.
    fn seconds(&self, ts_ns: u64) -> f64 {
        ts_ns.saturating_sub(self.origin_ns.unwrap_or(ts_ns)) as f64 / 1e9
    }

    /// Seconds covered by the events so far.
    pub fn span_s(&self) -> f64 {
        self.seconds(self.last_ns)
    }

    /// Symbolizes a stack (once) and returns its site.
    fn site_of(&mut self, stack: &[u64], load_bias: u64) -> (u32, u32) {
        if let Some(&id) = self.stacks.get(stack) {
            return (self.stack_stats[id as usize].site, id);
        }
        let frames: Arc<[Frame]> = self.symbolizer.stack(stack, load_bias).into();
        let key = match frames.iter().find(|f| !f.is_runtime()) {
            Some(frame) => SiteKey {
                function: frame.function.clone(),
                file: frame.file.clone(),
                line: frame.line,
            },
            None if stack.is_empty() => SiteKey {
                function: "[stack not captured]".into(),
                file: String::new(),
                line: 0,
            },
            None => SiteKey {
                function: "[Go runtime]".into(),
                file: String::new(),
                line: 0,
            },
        };
        let site = match self.site_ids.get(&key) {
            Some(&id) => id,
            None => {
                let id = self.sites.len() as u32;
                self.sites.push(Site {
                    key: key.clone(),
                    samples: 0,
                    objects: 0.0,
                    bytes: 0.0,
                    requested_bytes: 0.0,
                    sizes: new_histogram(),
                    window_objects: 0.0,
                    window_bytes: 0.0,
                    stack: frames.clone(),
                    stack_id: self.stack_stats.len() as u32,
                    live_samples: 0,
                    live_objects: 0.0,
                    live_bytes: 0.0,
                    lifetimes_ms: new_histogram(),
                    max_cycles_survived_dead: 0,
                    snapshots: Vec::new(),
                    type_name: None,
                });
                self.site_ids.insert(key, id);
                id
            }
        };
        let id = self.stack_stats.len() as u32;
        self.stacks.insert(stack.to_vec(), id);
        self.stack_stats.push(StackStats {
            site,
            frames,
            samples: 0,
            objects: 0.0,
            bytes: 0.0,
            live_objects: 0.0,
            live_bytes: 0.0,
        });
        (site, id)
    }

    /// Accounts one sample to its site and stack; returns both and the sample's weight.
    fn sample(&mut self, alloc: &AllocEvent, load_bias: u64) -> (u32, u32, f64) {
        self.samples_received += 1;
        if alloc.stack.is_empty() {
            self.samples_without_stack += 1;
        }
        let (site_id, stack_id) = self.site_of(&alloc.stack, load_bias);
        // memtrace's own sampler counts requested bytes; the runtime's counts slot bytes.
        let sampled_size = match self.sampling {
            Sampling::AllAllocs { .. } => alloc.size,
            Sampling::HeapProfiler { .. } => alloc.slot_size,
        };
        let weight = 1.0 / sample_probability(sampled_size, self.sample_interval_bytes());
        let site = &mut self.sites[site_id as usize];
        site.samples += 1;
        site.objects += weight;
        site.bytes += weight * alloc.slot_size as f64;
        site.requested_bytes += weight * alloc.size as f64;
        site.window_objects += weight;
        site.window_bytes += weight * alloc.slot_size as f64;
        let _ = site.sizes.record(alloc.size.max(1));
        let stack = &mut self.stack_stats[stack_id as usize];
        stack.samples += 1;
        stack.objects += weight;
        stack.bytes += weight * alloc.slot_size as f64;
        if stack_id != site.stack_id
            && stack.objects > self.stack_stats[site.stack_id as usize].objects
        {
            site.stack_id = stack_id;
            site.stack = self.stack_stats[stack_id as usize].frames.clone();
        }
        (site_id, stack_id, weight)
    }

    fn object_alloc(&mut self, alloc: &AllocEvent, load_bias: u64) {
        self.first_object_ns.get_or_insert(alloc.ts_ns);
        let (site_id, stack_id, weight) = self.sample(alloc, load_bias);
        if alloc.header_word != 0 && self.sites[site_id as usize].type_name.is_none() {
            // Pointerful objects over 512 bytes (Go 1.22+) start with a header naming their
            // type; for other objects the word is something else and names no type.
            let name = self
                .symbolizer
                .type_name(alloc.header_word.wrapping_sub(load_bias));
            self.sites[site_id as usize].type_name = name;
        }
        let site = &mut self.sites[site_id as usize];
        site.live_samples += 1;
        site.live_objects += weight;
        site.live_bytes += weight * alloc.slot_size as f64;
        let stack = &mut self.stack_stats[stack_id as usize];
        stack.live_objects += weight;
        stack.live_bytes += weight * alloc.slot_size as f64;
        if stack_id >= MAX_TRACKED_STACKS {
            // Not tracked to its death (its free will count as unmatched); 16 M distinct
            // stacks would take gigabytes before this.
            return;
        }
        let object = LiveObject {
            stack_and_interval: stack_id | (self.interval_index as u32) << 24,
            cycle: self.cycle as u32,
            size: alloc.slot_size.min(u32::MAX as u64) as u32,
            at_ms: (self.seconds(alloc.ts_ns) * 1000.0) as u32,
        };
        if let Some(previous) = self.live.insert(alloc.ptr, object) {
            // Its death was lost: take it out of the live numbers rather than leak it.
            self.replaced_objects += 1;
            self.forget(previous);
        }
    }

    /// How many objects a live sample stands for, at the interval it was sampled at.
    fn weight_of(&self, object: &LiveObject) -> f64 {
        let interval = self.intervals[object.interval_index()];
        1.0 / sample_probability(u64::from(object.size), interval)
    }

    /// Removes a live object from its site's live estimates.
    fn forget(&mut self, object: LiveObject) {
        let weight = self.weight_of(&object);
        let stack = &mut self.stack_stats[object.stack() as usize];
        stack.live_objects = (stack.live_objects - weight).max(0.0);
        stack.live_bytes = (stack.live_bytes - weight * object.size as f64).max(0.0);
        let site = &mut self.sites[stack.site as usize];
        site.live_samples = site.live_samples.saturating_sub(1);
        site.live_objects = (site.live_objects - weight).max(0.0);
        site.live_bytes = (site.live_bytes - weight * object.size as f64).max(0.0);
    }

    fn object_free(&mut self, free: &FreeEvent) {
        let Some(object) = self.live.remove(&free.ptr) else {
            self.unmatched_frees += 1;
            return;
        };
        self.forget(object);
        let lifetime_ms =
            ((self.seconds(free.ts_ns) * 1000.0) as u64).saturating_sub(object.at_ms as u64);
        let survived = self.cycle.saturating_sub(object.cycle as u64 + 1);
        let site_id = self.stack_stats[object.stack() as usize].site;
        let site = &mut self.sites[site_id as usize];
        let _ = site.lifetimes_ms.record(lifetime_ms);
        site.max_cycles_survived_dead = site.max_cycles_survived_dead.max(survived);
        if let Some(deaths) = &mut self.deaths {
            deaths.push(Death {
                ptr: free.ptr,
                site: site_id,
                size: object.size as u64,
                alloc_cycle: object.cycle as u64,
                death_cycle: self.cycle,
                lifetime_ms,
            });
        }
    }

    fn gc(&mut self, gc: &GcEvent) {
        let cycle = gc.cycle.unwrap_or(self.cycle.saturating_add(1));
        if self.gc_cycles.is_empty() && cycle > 1 {
            // Attached to a running program: the objects sampled so far were allocated in the
            // epoch this cycle ends, not in epoch 0.
            let epoch = (cycle - 1).min(u64::from(u32::MAX)) as u32;
            for object in self.live.values_mut() {
                object.cycle = epoch;
            }
        }
        self.cycle = cycle;
        self.gc_cycles.push(*gc);
        let at = self.seconds(gc.ts_ns);
        for site in &mut self.sites {
            if site.live_samples > 0 || !site.snapshots.is_empty() {
                if site.snapshots.len() == MAX_SNAPSHOTS {
                    site.snapshots.remove(0);
                }
                site.snapshots.push((at, site.live_bytes));
            }
        }
    }

    /// Each stack's in-use estimate as of a completed GC, indexed by stack id: the sampled
    /// objects still tracked that were allocated before GC cycle N-1 began, N being the last
    /// cycle seen. The GC probe fires as cycle N's sweep starts, and the sweep of N-1 ended
    /// before N began, so every one of them survived the mark of N-1: garbage the sweeper has
    /// not reached yet is not counted. Go's own heap profile reports in-use memory as of a
    /// completed GC the same way. Computed on demand (exports), not at every cycle.
    pub fn settled_by_stack(&self) -> Vec<Settled> {
        let mut settled = vec![Settled::default(); self.stack_stats.len()];
        for object in self.live.values() {
            if u64::from(object.cycle) + 3 > self.cycle {
                continue;
            }
            let weight = self.weight_of(object);
            let stack = &mut settled[object.stack() as usize];
            stack.objects += weight;
            stack.bytes += weight * f64::from(object.size);
        }
        settled
    }

    /// Sampled objects being tracked.
    pub fn live_tracked(&self) -> usize {
        self.live.len()
    }

    /// Oldest age, most cycles survived and allocation halves of each site's live objects,
    /// indexed by site.
    pub fn live_summaries(&self) -> Vec<LiveSummary> {
        let now_ms = self.seconds(self.last_ns) * 1000.0;
        let mut summaries = vec![LiveSummary::default(); self.sites.len()];
        for object in self.live.values() {
            let site = self.stack_stats[object.stack() as usize].site;
            let summary = &mut summaries[site as usize];
            if (object.at_ms as f64) < now_ms / 2.0 {
                summary.first_half += 1;
            } else {
                summary.second_half += 1;
            }
            let age_s = (now_ms - object.at_ms as f64).max(0.0) / 1000.0;
            summary.oldest_age_s = summary.oldest_age_s.max(age_s);
            summary.max_cycles_survived = summary
                .max_cycles_survived
                .max(self.cycle.saturating_sub(object.cycle as u64));
        }
        summaries
    }

    /// Least-squares growth of a site's live bytes over its GC-cycle snapshots (bytes/s).
    pub fn growth_bytes_per_s(&self, site: u32) -> f64 {
        linear_fit(&self.sites[site as usize].snapshots).map_or(0.0, |(slope, _)| slope)
    }

    /// Sites whose live memory keeps growing with objects that keep surviving GC cycles,
    /// most suspicious first. The rule, in `leak_rule`:
    /// - at least `MIN_SNAPSHOTS` GC cycles observed with the site's objects live;
    /// - live bytes grow (positive least-squares slope) steadily (R² ≥ `MIN_STEADINESS`);
    /// - the growth over the window exceeds `MIN_GROWTH_INTERVALS` sampling intervals;
    /// - some live object has survived ≥ `MIN_CYCLES_SURVIVED` cycles, and the oldest is at
    ///   least `MIN_OLDEST_AGE` of the window old;
    /// - at least `MIN_RECENT_SURVIVORS` of the live objects come from the later half.
    ///
    /// Score: growth rate × steadiness, so a fast steady leak ranks first.
    pub fn leak_suspects(&self, summaries: &[LiveSummary]) -> Vec<LeakVerdict> {
        let mut verdicts: Vec<LeakVerdict> = self
            .sites
            .iter()
            .enumerate()
            .filter_map(|(id, site)| {
                let points = &site.snapshots;
                if points.len() < leak_rule::MIN_SNAPSHOTS {
                    return None;
                }
                let (slope, r2) = linear_fit(points)?;
                let span = points.last()?.0 - points.first()?.0;
                let window = self.span_s();
                let live = summaries.get(id).copied().unwrap_or_default();
                let live_count = (live.first_half + live.second_half).max(1) as f64;
                let suspicious = slope > 0.0
                    && r2 >= leak_rule::MIN_STEADINESS
                    && slope * span
                        >= leak_rule::MIN_GROWTH_INTERVALS * self.sample_interval_bytes() as f64
                    && live.max_cycles_survived >= leak_rule::MIN_CYCLES_SURVIVED
                    && live.oldest_age_s >= leak_rule::MIN_OLDEST_AGE * window
                    && live.second_half as f64 / live_count >= leak_rule::MIN_RECENT_SURVIVORS;
                suspicious.then_some(LeakVerdict {
                    site: id as u32,
                    growth_bytes_per_s: slope,
                    steadiness: r2,
                    live,
                    score: slope * r2,
                })
            })
            .collect();
        verdicts.sort_by(|a, b| b.score.total_cmp(&a.score));
        verdicts
    }

    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    /// Every distinct stack sampled, with its estimates (for profiles and flame graphs).
    pub fn stacks(&self) -> &[StackStats] {
        &self.stack_stats
    }

    /// Site ids ordered by estimated bytes allocated, largest first.
    pub fn sites_by_bytes(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = (0..self.sites.len() as u32).collect();
        ids.sort_by(|&a, &b| {
            let (a, b) = (&self.sites[a as usize], &self.sites[b as usize]);
            b.bytes
                .total_cmp(&a.bytes)
                .then_with(|| b.objects.total_cmp(&a.objects))
                .then_with(|| a.key.function.cmp(&b.key.function))
        });
        ids
    }

    /// Site ids with what they allocated since the last call, by bytes; resets the window
    /// (for the live view).
    pub fn take_window(&mut self) -> Vec<(u32, f64, f64)> {
        let mut window: Vec<(u32, f64, f64)> = self
            .sites
            .iter_mut()
            .enumerate()
            .map(|(id, site)| {
                let entry = (id as u32, site.window_objects, site.window_bytes);
                site.window_objects = 0.0;
                site.window_bytes = 0.0;
                entry
            })
            .collect();
        window.sort_by(|a, b| b.2.total_cmp(&a.2));
        window
    }

    /// Starts keeping every paired death (for `--lifetimes`; grows with the deaths seen).
    pub fn keep_deaths(&mut self) {
        self.deaths.get_or_insert_with(Vec::new);
    }

    pub fn deaths(&self) -> &[Death] {
        self.deaths.as_deref().unwrap_or_default()
    }
}

/// One sampled object whose allocation and death were both seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Death {
    pub ptr: u64,
    pub site: u32,
    pub size: u64,
    /// GC epochs of allocation and death (see `Analysis::cycle`).
    pub alloc_cycle: u64,
    pub death_cycle: u64,
    pub lifetime_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_probability_matches_pprof_scaling() {
        // pprof scales a sample of average size s at rate R by 1/(1-exp(-s/R)).
        let p = sample_probability(512 * 1024, 512 * 1024);
        assert!((p - (1.0 - (-1.0f64).exp())).abs() < 1e-12);
        assert_eq!(sample_probability(100, 1), 1.0);
        assert!(sample_probability(1, 1 << 20) > 0.0);
    }

    fn object(ptr: u64, slot_size: u64, ts_ns: u64) -> Event {
        Event::ObjectAlloc(AllocEvent {
            pid: 1,
            ts_ns,
            size: slot_size,
            slot_size,
            class: memtrace_common::class::PROFILED,
            goid: 1,
            ptr,
            header_word: 0,
            stack: vec![0x1000],
        })
    }

    fn free(ptr: u64, size: u64, ts_ns: u64) -> Event {
        Event::ObjectFree(FreeEvent {
            pid: 1,
            ts_ns,
            ptr,
            size,
        })
    }

    #[test]
    fn a_rate_change_keeps_each_object_at_its_own_weight() {
        let rate = |bytes| Sampling::HeapProfiler { rate_bytes: bytes };
        let mut analysis = Analysis::new(Symbolizer::recorded([]), rate(512 * 1024));
        analysis.event(&object(0x10, 4096, 1), 0);
        let first = analysis.sites()[0].live_bytes;
        // The agent's budget raises the rate: later samples stand for more bytes.
        analysis.set_sampling(rate(8 << 20));
        analysis.event(&object(0x20, 4096, 2), 0);
        let both = analysis.sites()[0].live_bytes;
        let second = both - first;
        assert!((second / first - 16.0).abs() < 0.1, "{first} then {second}");
        // Each death takes away exactly what its sample added, whatever the rate is now.
        analysis.set_sampling(rate(1 << 20));
        analysis.event(&free(0x20, 4096, 3), 0);
        assert!((analysis.sites()[0].live_bytes - first).abs() < 1e-6);
        analysis.event(&free(0x10, 4096, 4), 0);
        assert!(analysis.sites()[0].live_bytes.abs() < 1e-6);
        assert_eq!(
            analysis.sampling_intervals(),
            [512 * 1024, 8 << 20, 1 << 20]
        );
        // A rate seen before reuses its entry.
        analysis.set_sampling(rate(8 << 20));
        assert_eq!(analysis.sampling_intervals().len(), 3);
    }

    #[test]
    fn linear_fit_finds_slope_and_steadiness() {
        let line: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 3.0 * i as f64 + 1.0)).collect();
        let (slope, r2) = linear_fit(&line).unwrap();
        assert!((slope - 3.0).abs() < 1e-9 && (r2 - 1.0).abs() < 1e-9);
        let flat: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 5.0)).collect();
        assert_eq!(linear_fit(&flat).unwrap(), (0.0, 0.0));
        assert!(linear_fit(&line[..1]).is_none());
    }
}

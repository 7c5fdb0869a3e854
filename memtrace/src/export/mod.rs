//! Exports of a finished analysis, in formats other tools read: pprof's profile.proto, folded
//! stacks, flame graphs and a self-contained HTML page. Live sessions and recorded traces
//! export through the same code.

pub mod html;

pub mod folded;
pub mod pprof;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use crate::{
    analysis::Analysis,
    report::{AllocSite, Report},
    symbolize::Frame,
};

/// What one distinct stack allocated: the unit of profiles and flame graphs.
#[derive(Clone, Debug, PartialEq)]
pub struct StackProfile {
    /// Innermost first; a frame with `inlined` set was inlined into the next one.
    pub frames: Arc<[Frame]>,
    /// Unbiased estimates of everything allocated from this stack.
    pub alloc_objects: u64,
    pub alloc_bytes: u64,
    /// Sampled mode: estimated objects and bytes reachable at a completed GC (pprof's in-use;
    /// see [`Analysis::settled_by_stack`]).
    pub inuse_objects: u64,
    pub inuse_bytes: u64,
    /// Facts of the stack's allocation site (the innermost frame outside the runtime).
    pub site: SiteFacts,
}

/// Lifetime and age facts of an allocation site, carried into profiles as labels.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SiteFacts {
    /// Lifetimes of the site's sampled objects that died (none in all-allocs mode).
    pub lifetime_p50_ms: Option<u64>,
    pub lifetime_p99_ms: Option<u64>,
    /// Age of the site's oldest live sampled object.
    pub oldest_age_s: Option<f64>,
    /// Most GC cycles any sampled object of the site survived.
    pub max_gc_cycles_survived: Option<u64>,
    /// The site is a leak suspect.
    pub leak_suspect: bool,
}

/// Everything the profile exports need.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    pub stacks: Vec<StackProfile>,
    /// Whether in-use numbers exist (sampled mode tracks every sampled object to its death).
    pub has_inuse: bool,
    /// Mean bytes between samples.
    pub interval_bytes: u64,
    pub duration_ns: u64,
}

impl Profile {
    /// The analysis's stacks, with the facts of their sites from the report built from it.
    pub fn new(analysis: &Analysis, report: &Report) -> Profile {
        // The report's sites and suspects by their key, looked up once per site.
        let reported: HashMap<(&str, &str, u32), &AllocSite> = report
            .alloc_sites
            .iter()
            .map(|s| ((s.function.as_str(), s.file.as_str(), s.line), s))
            .collect();
        let suspects: HashSet<(&str, &str, u32)> = report
            .leak_suspects
            .iter()
            .flatten()
            .map(|s| (s.function.as_str(), s.file.as_str(), s.line))
            .collect();
        let facts: Vec<SiteFacts> = analysis
            .sites()
            .iter()
            .map(|site| {
                let key = (
                    site.key.function.as_str(),
                    site.key.file.as_str(),
                    site.key.line,
                );
                let reported = reported.get(&key);
                let lifetimes = reported
                    .and_then(|s| s.lifetime_ms.as_ref())
                    .filter(|l| l.count > 0);
                SiteFacts {
                    lifetime_p50_ms: lifetimes.map(|l| l.p50),
                    lifetime_p99_ms: lifetimes.map(|l| l.p99),
                    oldest_age_s: reported.and_then(|s| s.oldest_age_s).filter(|&a| a > 0.0),
                    max_gc_cycles_survived: reported.and_then(|s| s.max_gc_cycles_survived),
                    leak_suspect: suspects.contains(&key),
                }
            })
            .collect();
        let has_inuse = report.mode == "sampled";
        let settled = if has_inuse {
            analysis.settled_by_stack()
        } else {
            Vec::new()
        };
        let stacks = analysis
            .stacks()
            .iter()
            .enumerate()
            .filter(|(_, stack)| stack.samples > 0)
            .map(|(id, stack)| {
                let inuse = settled.get(id).copied().unwrap_or_default();
                StackProfile {
                    frames: without_allocator_frames(&stack.frames),
                    alloc_objects: stack.objects.round() as u64,
                    alloc_bytes: stack.bytes.round() as u64,
                    inuse_objects: inuse.objects.round() as u64,
                    inuse_bytes: inuse.bytes.round() as u64,
                    site: facts[stack.site as usize].clone(),
                }
            })
            .collect();
        Profile {
            stacks,
            has_inuse,
            interval_bytes: analysis.sample_interval_bytes(),
            duration_ns: (report.duration_s * 1e9) as u64,
        }
    }
}

/// A stack without the Go runtime's allocator frames on top (`mallocgc`, `makeslice`, ...),
/// as the runtime's own heap profiles show them (runtime/pprof hides leading runtime frames):
/// the innermost frame is then the code that asked for memory. Stacks made only of runtime
/// frames (the runtime's own allocations) are kept whole.
fn without_allocator_frames(frames: &Arc<[Frame]>) -> Arc<[Frame]> {
    match frames.iter().position(|frame| !frame.is_runtime()) {
        Some(0) | None => frames.clone(),
        Some(first_user) => frames[first_user..].into(),
    }
}

/// Which number of a [`StackProfile`] a flame graph or folded-stack file shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    AllocSpace,
    AllocObjects,
    InuseSpace,
    InuseObjects,
}

impl Metric {
    /// pprof's names for the same numbers.
    pub const NAMES: [&'static str; 4] = [
        "alloc_space",
        "alloc_objects",
        "inuse_space",
        "inuse_objects",
    ];

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    pub fn from_name(name: &str) -> Option<Metric> {
        [
            Metric::AllocSpace,
            Metric::AllocObjects,
            Metric::InuseSpace,
            Metric::InuseObjects,
        ]
        .into_iter()
        .find(|m| m.name() == name.replace('-', "_"))
    }

    /// In-use bytes when the profile has them (leaks show there), else allocated bytes.
    pub fn default_for(profile: &Profile) -> Metric {
        if profile.has_inuse {
            Metric::InuseSpace
        } else {
            Metric::AllocSpace
        }
    }

    pub fn value(self, stack: &StackProfile) -> u64 {
        match self {
            Metric::AllocSpace => stack.alloc_bytes,
            Metric::AllocObjects => stack.alloc_objects,
            Metric::InuseSpace => stack.inuse_bytes,
            Metric::InuseObjects => stack.inuse_objects,
        }
    }

    /// "bytes" or "objects".
    pub fn unit(self) -> &'static str {
        match self {
            Metric::AllocSpace | Metric::InuseSpace => "bytes",
            Metric::AllocObjects | Metric::InuseObjects => "objects",
        }
    }
}

/// Builders shared by the export tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use super::{SiteFacts, StackProfile};
    use crate::symbolize::Frame;

    pub fn frame(function: &str, file: &str, line: u32, inlined: bool) -> Frame {
        Frame {
            function: function.to_owned(),
            file: file.to_owned(),
            line,
            inlined,
        }
    }

    /// A stack with `[alloc_objects, alloc_bytes, inuse_objects, inuse_bytes]`.
    pub fn stack(frames: Vec<Frame>, values: [u64; 4], site: SiteFacts) -> StackProfile {
        StackProfile {
            frames: Arc::from(frames),
            alloc_objects: values[0],
            alloc_bytes: values[1],
            inuse_objects: values[2],
            inuse_bytes: values[3],
            site,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str) -> Frame {
        testing::frame(function, "", 1, false)
    }
    #[test]
    fn allocator_frames_are_hidden_like_runtime_pprof_does() {
        let stack: Arc<[Frame]> = vec![
            frame("runtime.mallocgc"),
            frame("runtime.makeslice"),
            frame("main.leak"),
            frame("runtime.goexit"),
        ]
        .into();
        let trimmed = without_allocator_frames(&stack);
        let names: Vec<&str> = trimmed.iter().map(|f| f.function.as_str()).collect();
        assert_eq!(names, ["main.leak", "runtime.goexit"]);
        let runtime_only: Arc<[Frame]> =
            vec![frame("runtime.malg"), frame("runtime.newproc1")].into();
        assert_eq!(without_allocator_frames(&runtime_only), runtime_only);
    }
}

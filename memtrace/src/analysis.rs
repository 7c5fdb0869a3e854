//! Turning events into per-site statistics. Live sessions and recorded traces feed the same
//! `Analysis`.

use std::{collections::HashMap, sync::Arc};

use hdrhistogram::Histogram;

use crate::{
    events::{AllocEvent, Event, GcEvent},
    symbolize::{Frame, Symbolizer},
};

/// Where an allocation came from: the innermost frame outside the Go runtime.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SiteKey {
    pub function: String,
    pub file: String,
    pub line: u32,
}

/// What the samples say about one allocation site.
pub struct Site {
    pub key: SiteKey,
    pub samples: u64,
    /// Unbiased estimates (each sample weighted by the inverse of its sampling probability).
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
    stack_id: usize,
    /// Estimated objects per stack id.
    stack_weights: HashMap<usize, f64>,
}

/// A symbolized stack and the site it belongs to.
struct StackInfo {
    id: usize,
    site: SiteKey,
    frames: Arc<[Frame]>,
}

pub struct Analysis {
    symbolizer: Symbolizer,
    /// Mean bytes between samples (the Poisson rate of the in-kernel sampler).
    sample_interval_bytes: u64,
    stacks: HashMap<Vec<u64>, StackInfo>,
    sites: HashMap<SiteKey, Site>,
    pub gc_cycles: Vec<GcEvent>,
    pub samples_received: u64,
    pub samples_without_stack: u64,
    pub decode_errors: u64,
}

/// Probability that the sampler picks an allocation of `size` bytes when it samples on
/// average once every `interval` bytes.
pub fn sample_probability(size: u64, interval: u64) -> f64 {
    if interval <= 1 {
        return 1.0;
    }
    1.0 - (-(size as f64) / interval as f64).exp()
}

impl Analysis {
    pub fn new(symbolizer: Symbolizer, sample_interval_bytes: u64) -> Analysis {
        Analysis {
            symbolizer,
            sample_interval_bytes,
            stacks: HashMap::new(),
            sites: HashMap::new(),
            gc_cycles: Vec::new(),
            samples_received: 0,
            samples_without_stack: 0,
            decode_errors: 0,
        }
    }

    pub fn sample_interval_bytes(&self) -> u64 {
        self.sample_interval_bytes
    }

    /// Feeds one ring-buffer record.
    pub fn record(&mut self, bytes: &[u8], load_bias: u64) {
        match Event::decode(bytes) {
            Ok(event) => self.event(event, load_bias),
            Err(_) => self.decode_errors += 1,
        }
    }

    pub fn event(&mut self, event: Event, load_bias: u64) {
        match event {
            Event::Alloc(alloc) => self.alloc(alloc, load_bias),
            Event::Gc(gc) => self.gc_cycles.push(gc),
        }
    }

    fn alloc(&mut self, alloc: AllocEvent, load_bias: u64) {
        self.samples_received += 1;
        if alloc.stack.is_empty() {
            self.samples_without_stack += 1;
        }
        let next_id = self.stacks.len();
        let symbolizer = &mut self.symbolizer;
        let info = self.stacks.entry(alloc.stack).or_insert_with_key(|stack| {
            let frames: Arc<[Frame]> = symbolizer.stack(stack, load_bias).into();
            let site = match frames.iter().find(|f| !f.is_runtime()) {
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
            StackInfo {
                id: next_id,
                site,
                frames,
            }
        });

        let weight = 1.0 / sample_probability(alloc.size, self.sample_interval_bytes);
        let site = self.sites.entry(info.site.clone()).or_insert_with(|| Site {
            key: info.site.clone(),
            samples: 0,
            objects: 0.0,
            bytes: 0.0,
            requested_bytes: 0.0,
            sizes: Histogram::new(3).expect("3 significant digits is a valid precision"),
            window_objects: 0.0,
            window_bytes: 0.0,
            stack: info.frames.clone(),
            stack_id: info.id,
            stack_weights: HashMap::new(),
        });
        site.samples += 1;
        site.objects += weight;
        site.bytes += weight * alloc.slot_size as f64;
        site.requested_bytes += weight * alloc.size as f64;
        site.window_objects += weight;
        site.window_bytes += weight * alloc.slot_size as f64;
        // Saturating: the histogram tracks up to 2^63; sizes never get near.
        let _ = site.sizes.record(alloc.size.max(1));
        let stack_weight = {
            let w = site.stack_weights.entry(info.id).or_insert(0.0);
            *w += weight;
            *w
        };
        if info.id != site.stack_id && stack_weight > site.stack_weights[&site.stack_id] {
            site.stack_id = info.id;
            site.stack = info.frames.clone();
        }
    }

    /// Sites ordered by estimated bytes, largest first.
    pub fn sites_by_bytes(&self) -> Vec<&Site> {
        let mut sites: Vec<&Site> = self.sites.values().collect();
        sites.sort_by(|a, b| {
            b.bytes
                .total_cmp(&a.bytes)
                .then_with(|| b.objects.total_cmp(&a.objects))
                .then_with(|| a.key.function.cmp(&b.key.function))
        });
        sites
    }

    /// Sites ordered by bytes allocated since the last call, with those window totals; resets
    /// the window (for the live view).
    pub fn take_window(&mut self) -> Vec<(SiteKey, f64, f64)> {
        let mut window: Vec<(SiteKey, f64, f64)> = self
            .sites
            .values_mut()
            .map(|site| {
                let entry = (site.key.clone(), site.window_objects, site.window_bytes);
                site.window_objects = 0.0;
                site.window_bytes = 0.0;
                entry
            })
            .collect();
        window.sort_by(|a, b| b.2.total_cmp(&a.2));
        window
    }

    pub fn site(&self, key: &SiteKey) -> Option<&Site> {
        self.sites.get(key)
    }
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
}

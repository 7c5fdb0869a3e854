//! The overhead budget: a ceiling on the events per second each process, and the whole node,
//! may send. A process over its share gets a higher heap-profiler rate (fewer samples, each
//! standing for more bytes) instead of losing events; one that creates goroutines faster than
//! its share stops sending a record per creation (they are still counted exactly, and found by
//! the goroutine scans). When a process has been well under its share for a while, the rate
//! comes back down, one step at a time.

/// Events per second one process, and the whole node, may send.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budget {
    pub per_process: f64,
    pub node: f64,
}

/// Highest rate the budget sets: one sample per 1 GiB allocated.
pub const MAX_RATE_BYTES: u64 = 1 << 30;

/// Fraction of its limit a process is brought down to, so that noise does not trip it again.
const HEADROOM: f64 = 0.8;

/// Seconds a process must stay under a quarter of its limit before its rate comes down a step
/// (or its goroutine records come back).
pub const CALM_SECONDS: u32 = 30;

/// What one process sent over the last second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Load {
    pub pid: u32,
    /// Records received from it per second (samples, frees, GC cycles, goroutine records).
    pub events_per_s: f64,
    /// Goroutines it created per second (exact, whether records were sent or not).
    pub goroutines_per_s: f64,
    /// Its heap profiler's rate now, and the rate it had before the budget stepped in.
    pub rate_bytes: u64,
    pub base_rate_bytes: u64,
    /// Whether goroutine creation records are on.
    pub goroutine_records: bool,
    /// Consecutive seconds it has stayed under a quarter of its limit.
    pub calm_seconds: u32,
}

/// What the budget asks of one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    SetRate { pid: u32, rate_bytes: u64 },
    GoroutineRecords { pid: u32, on: bool },
}

impl Budget {
    /// The per-process limits under the node ceiling: each process keeps up to
    /// `per_process`; when their sum would exceed `node`, the largest are capped at the level
    /// that makes it fit (water-filling), so that quiet processes are never throttled for a
    /// loud one.
    pub fn limits(&self, loads: &[Load]) -> Vec<f64> {
        let capped: Vec<f64> = loads
            .iter()
            .map(|load| load.events_per_s.min(self.per_process))
            .collect();
        if capped.iter().sum::<f64>() <= self.node {
            return vec![self.per_process; loads.len()];
        }
        let mut sorted = capped.clone();
        sorted.sort_by(f64::total_cmp);
        let mut remaining = self.node;
        let mut level = 0.0;
        for (index, &events) in sorted.iter().enumerate() {
            let left = (sorted.len() - index) as f64;
            if events * left > remaining {
                level = remaining / left;
                break;
            }
            remaining -= events;
            level = events;
        }
        vec![level.min(self.per_process); loads.len()]
    }

    /// The actions for this second; `loads[i].calm_seconds` must be kept by the caller with
    /// [`Budget::calm`].
    pub fn decide(&self, loads: &[Load]) -> Vec<Action> {
        let limits = self.limits(loads);
        let mut actions = Vec::new();
        for (load, &limit) in loads.iter().zip(&limits) {
            let limit = limit.max(1.0);
            let goroutine_records = if load.goroutine_records && load.goroutines_per_s > limit / 2.0
            {
                actions.push(Action::GoroutineRecords {
                    pid: load.pid,
                    on: false,
                });
                false
            } else {
                load.goroutine_records
            };
            // What the heap profiler's rate governs: samples and their frees.
            let goroutine_events = if load.goroutine_records {
                load.goroutines_per_s.min(load.events_per_s)
            } else {
                0.0
            };
            let sampled = load.events_per_s - goroutine_events;
            let allowed = (HEADROOM * limit
                - if goroutine_records {
                    goroutine_events
                } else {
                    0.0
                })
            .max(HEADROOM * limit / 2.0);
            if sampled > allowed && load.rate_bytes < MAX_RATE_BYTES {
                // Samples fall in proportion to the rate: step up by powers of two.
                let factor = (sampled / allowed).log2().ceil().max(1.0) as u32;
                let rate = load
                    .rate_bytes
                    .max(1)
                    .saturating_mul(1u64 << factor.min(20))
                    .min(MAX_RATE_BYTES);
                actions.push(Action::SetRate {
                    pid: load.pid,
                    rate_bytes: rate,
                });
            } else if load.calm_seconds >= CALM_SECONDS {
                if load.rate_bytes > load.base_rate_bytes {
                    actions.push(Action::SetRate {
                        pid: load.pid,
                        rate_bytes: (load.rate_bytes / 2).max(load.base_rate_bytes),
                    });
                } else if !load.goroutine_records && load.goroutines_per_s < limit / 4.0 {
                    actions.push(Action::GoroutineRecords {
                        pid: load.pid,
                        on: true,
                    });
                }
            }
        }
        actions
    }

    /// The new calm count of each process: one more second under a quarter of its limit
    /// (counting the goroutines it would send with records on), else zero. A step down resets
    /// it, so steps are [`CALM_SECONDS`] apart.
    pub fn calm(&self, loads: &[Load], actions: &[Action]) -> Vec<u32> {
        let limits = self.limits(loads);
        loads
            .iter()
            .zip(&limits)
            .map(|(load, &limit)| {
                let acted = actions.iter().any(|action| match *action {
                    Action::SetRate { pid, .. } | Action::GoroutineRecords { pid, .. } => {
                        pid == load.pid
                    }
                });
                let would_send = load.events_per_s
                    + if load.goroutine_records {
                        0.0
                    } else {
                        load.goroutines_per_s
                    };
                if acted || would_send >= limit / 4.0 {
                    0
                } else {
                    load.calm_seconds.saturating_add(1)
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pid: u32, events: f64, rate: u64) -> Load {
        Load {
            pid,
            events_per_s: events,
            goroutines_per_s: 0.0,
            rate_bytes: rate,
            base_rate_bytes: 512 * 1024,
            goroutine_records: true,
            calm_seconds: 0,
        }
    }

    const BUDGET: Budget = Budget {
        per_process: 1000.0,
        node: 3000.0,
    };

    #[test]
    fn a_process_under_its_limit_is_left_alone() {
        assert!(BUDGET.decide(&[load(1, 700.0, 512 * 1024)]).is_empty());
    }

    #[test]
    fn a_loud_process_gets_a_rate_that_brings_it_under_its_limit() {
        let actions = BUDGET.decide(&[load(1, 10_000.0, 512 * 1024)]);
        // 10000 / 800 = 12.5 -> x16.
        assert_eq!(
            actions,
            vec![Action::SetRate {
                pid: 1,
                rate_bytes: 16 * 512 * 1024
            }]
        );
        let after = 10_000.0 / 16.0;
        assert!(after < BUDGET.per_process);
    }

    #[test]
    fn the_node_ceiling_caps_the_largest_and_spares_the_quiet() {
        let loads = [
            load(1, 100.0, 512 * 1024),
            load(2, 950.0, 512 * 1024),
            load(3, 950.0, 512 * 1024),
            load(4, 950.0, 512 * 1024),
            load(5, 950.0, 512 * 1024),
        ];
        // 100 + 4 x 950 = 3900 > 3000: the four share 2900 -> 725 each.
        let limits = BUDGET.limits(&loads);
        assert!((limits[0] - 725.0).abs() < 1e-9, "{limits:?}");
        let actions = BUDGET.decide(&loads);
        let throttled: Vec<u32> = actions
            .iter()
            .map(|action| match action {
                Action::SetRate { pid, .. } => *pid,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(throttled, vec![2, 3, 4, 5]);
    }

    #[test]
    fn goroutine_floods_turn_records_off_and_calm_brings_them_back() {
        let mut flood = load(1, 5000.0, 512 * 1024);
        flood.goroutines_per_s = 4900.0;
        let actions = BUDGET.decide(&[flood]);
        assert_eq!(
            actions,
            vec![Action::GoroutineRecords { pid: 1, on: false }]
        );

        let mut quiet = load(1, 50.0, 512 * 1024);
        quiet.goroutine_records = false;
        quiet.goroutines_per_s = 100.0;
        quiet.calm_seconds = CALM_SECONDS;
        assert_eq!(
            BUDGET.decide(&[quiet]),
            vec![Action::GoroutineRecords { pid: 1, on: true }]
        );
        // Still creating many: calm never accumulates.
        quiet.goroutines_per_s = 4000.0;
        assert_eq!(BUDGET.calm(&[quiet], &[]), vec![0]);
    }

    #[test]
    fn calm_steps_the_rate_back_down_to_where_it_was() {
        let mut raised = load(1, 10.0, 4 * 512 * 1024);
        assert_eq!(BUDGET.calm(&[raised], &[]), vec![1]);
        raised.calm_seconds = CALM_SECONDS;
        assert_eq!(
            BUDGET.decide(&[raised]),
            vec![Action::SetRate {
                pid: 1,
                rate_bytes: 2 * 512 * 1024
            }]
        );
        raised.rate_bytes = 512 * 1024;
        assert!(BUDGET.decide(&[raised]).is_empty());
    }

    #[test]
    fn the_rate_never_passes_the_maximum() {
        let actions = BUDGET.decide(&[load(1, 1e9, MAX_RATE_BYTES / 2)]);
        assert_eq!(
            actions,
            vec![Action::SetRate {
                pid: 1,
                rate_bytes: MAX_RATE_BYTES
            }]
        );
        assert!(BUDGET.decide(&[load(1, 1e9, MAX_RATE_BYTES)]).is_empty());
    }
}

//! Goroutine lifecycles and goroutine leaks.
//!
//! Creations come from a probe, with the creating stack; everything else from periodic scans of
//! the target's memory ([`scan`]): states and wait reasons, exits (a goroutine's `g` is dead or
//! holds another goroutine), and the goroutines that existed before memtrace attached (their
//! age is unknown). Exits are not probed: a second probe hit per goroutine would double what
//! goroutine-heavy programs pay, for exit times nobody reads, and a scan every second sees
//! every exit anyway (the runtime never frees a `g`). Live sessions and recorded traces feed
//! the same [`Goroutines`].
//!
//! Long-lived goroutines (older than [`leak_rule::MIN_AGE_S`]) are grouped by the `go`
//! statement that created them, the function they run and their state. A group is a
//! **goroutine leak** when, over the scans, its size keeps growing while its members stay
//! blocked and do not die (see [`leak_rule`]).

pub mod scan;

use std::{collections::HashMap, sync::Arc};

/// A fast hash for maps updated once per goroutine (hundreds of thousands a second).
type FastMap<K, V> = foldhash::HashMap<K, V>;

use crate::{
    analysis::{linear_fit, SiteKey},
    events::{GoroutineCreateEvent, GoroutineScan, GoroutineState},
    symbolize::{Frame, Symbolizer},
};

/// Goroutine status values (`runtime2.go`), the same in Go 1.21–1.27 except where noted.
pub mod status {
    pub const IDLE: u32 = 0;
    pub const RUNNABLE: u32 = 1;
    pub const RUNNING: u32 = 2;
    pub const SYSCALL: u32 = 3;
    pub const WAITING: u32 = 4;
    pub const DEAD: u32 = 6;
    pub const COPYSTACK: u32 = 8;
    pub const PREEMPTED: u32 = 9;
    /// Go 1.26+: found leaked by the runtime's goroutine-leak detector.
    pub const LEAKED: u32 = 10;
    /// Go 1.26+: a `g` parked for cgo callbacks on an extra M.
    pub const DEAD_EXTRA: u32 = 11;

    /// Whether a `g` with this status is a goroutine (not a free `g`).
    pub fn is_alive(status: u32) -> bool {
        matches!(
            status,
            RUNNABLE | RUNNING | SYSCALL | WAITING | COPYSTACK | PREEMPTED | LEAKED
        )
    }

    /// Whether it is parked, waiting for something.
    pub fn is_blocked(status: u32) -> bool {
        matches!(status, WAITING | LEAKED)
    }
}

/// The thresholds of the goroutine-leak rule (documented in the README).
pub mod leak_rule {
    /// Goroutines younger than this are in flight, not grouped.
    pub const MIN_AGE_S: f64 = 1.0;
    /// Scans of a group needed before it can be judged.
    pub const MIN_SCANS: usize = 5;
    /// The group must have grown by at least this many goroutines over the window.
    pub const MIN_GROWTH: f64 = 3.0;
    /// R² of the linear fit of the group's size over time.
    pub const MIN_STEADINESS: f64 = 0.5;
    /// Fraction of the members that must be blocked (waiting, or leaked per the runtime).
    pub const MIN_BLOCKED: f64 = 0.8;
    /// Fraction of the members created in the later half of the window: the group keeps
    /// gaining members (a pool started once does not).
    pub const MIN_RECENT: f64 = 0.2;
    /// The oldest member must be at least this old, as a fraction of the window: leaked
    /// goroutines never exit, while churning ones are all young.
    pub const MIN_OLDEST_AGE: f64 = 0.5;
    /// Scans kept per group (at one scan per second, two minutes).
    pub const MAX_SCANS: usize = 120;
}

/// Most member ids listed per group.
pub const MAX_GROUP_GOIDS: usize = 1000;

/// Where goroutines come from: the `go` statement and the function it starts.
pub struct Origin {
    /// The code holding the `go` statement.
    pub site: SiteKey,
    /// The function the goroutine runs.
    pub start_function: String,
    /// A creation stack (innermost first, from the `go` statement out); empty for goroutines
    /// created before memtrace attached.
    pub stack: Arc<[Frame]>,
    /// A runtime goroutine, which `runtime.NumGoroutine` does not count.
    pub system: bool,
}

/// The runtime's own goroutines (`isSystemGoroutine`): started in package runtime, except the
/// main goroutine. The finalizer and cleanup goroutines count as system goroutines here even
/// while they run user code, which the runtime counts as user goroutines.
fn is_system_start(function: &str) -> bool {
    function.starts_with("runtime.")
        && !matches!(
            function,
            "runtime.main" | "runtime.corostart" | "runtime.handleAsyncEvent"
        )
}

/// One goroutine memtrace knows alive. Kept small: programs have hundreds of thousands, and
/// goroutine-heavy ones create that many a second.
#[derive(Clone, Copy, Debug)]
struct LiveGoroutine {
    g: u64,
    /// CLOCK_MONOTONIC ns of its creation; 0 when it was not seen (before attach).
    created_ns: u64,
    origin: u32,
    /// From the last scan (alive statuses fit a byte); [`NOT_SCANNED`] before the first scan
    /// that found it.
    status: u8,
    wait_reason: u8,
    /// Found by the first scan (before attach) rather than a later one.
    found_first: bool,
}
const _: () = assert!(size_of::<LiveGoroutine>() == 24);

const NOT_SCANNED: u8 = u8::MAX;

impl LiveGoroutine {
    fn created(&self) -> Option<u64> {
        (self.created_ns != 0).then_some(self.created_ns)
    }

    fn status(&self) -> Option<u32> {
        (self.status != NOT_SCANNED).then_some(u32::from(self.status))
    }
}

/// One group of long-lived goroutines at the last scan.
#[derive(Clone, Debug, PartialEq)]
pub struct GoroutineGroup {
    pub origin: u32,
    /// The wait reason of blocked members, else their state (`running`, `runnable`, ...).
    pub state: String,
    pub count: u32,
    pub blocked: u32,
    /// Members created before memtrace attached (or whose creation record was lost).
    pub unknown_age: u32,
    /// Age of the oldest member whose creation was seen.
    pub oldest_age_s: Option<f64>,
    /// Members created in the later half of the group's scan window.
    pub recent: u32,
    /// Member goroutine ids, oldest first (at most [`MAX_GROUP_GOIDS`]).
    pub goids: Vec<u64>,
    /// Seconds covered by the group's scans.
    pub window_s: f64,
    /// Least-squares slope of the group's size over its scans, and its R².
    pub growth_per_s: f64,
    pub steadiness: f64,
    pub scans: usize,
    /// Whether it passes the leak rule, and its rank score.
    pub leak: bool,
    pub score: f64,
}

/// What a group's members are doing: their status, with the wait reason when blocked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct State {
    status: u32,
    wait_reason: u8,
}

impl State {
    fn of(status: u32, wait_reason: u8) -> State {
        match status {
            status::RUNNING | status::COPYSTACK => State {
                status: status::RUNNING,
                wait_reason: 0,
            },
            // The runtime's leak detector parks leaked goroutines as `_Gleaked`; they are
            // still waiting for the same thing.
            status::WAITING | status::LEAKED => State {
                status: status::WAITING,
                wait_reason,
            },
            _ => State {
                status,
                wait_reason: 0,
            },
        }
    }

    /// "chan send", "select", ... when waiting; else the status.
    fn label(self, wait_reasons: &[String]) -> String {
        match self.status {
            status::RUNNABLE => "runnable".into(),
            status::RUNNING => "running".into(),
            status::SYSCALL => "syscall".into(),
            status::PREEMPTED => "preempted".into(),
            _ => match wait_reasons.get(usize::from(self.wait_reason)) {
                Some(name) if !name.is_empty() => name.clone(),
                Some(_) if self.wait_reason == 0 => "waiting".into(),
                _ => format!("wait reason {}", self.wait_reason),
            },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct GroupKey {
    origin: u32,
    state: State,
}

/// Goroutine bookkeeping for one target.
#[derive(Default)]
pub struct Goroutines {
    live: FastMap<u64, LiveGoroutine>,
    origins: Vec<Origin>,
    origin_ids: HashMap<(SiteKey, String), u32>,
    /// (go_pc, start_pc) of the runtime addresses resolved so far.
    origin_by_pcs: FastMap<(u64, u64), u32>,
    /// The runtime's wait-reason names, by `g.waitreason`.
    wait_reasons: Vec<String>,
    /// Group sizes at each scan: (seconds since the first scan, members).
    series: HashMap<GroupKey, Vec<(f64, u32)>>,
    groups: Vec<GoroutineGroup>,
    first_scan_ns: Option<u64>,
    /// User goroutines created while attached, and user goroutines the scans found gone (of
    /// those and of the ones from before attach).
    pub created: u64,
    pub exited: u64,
    /// User goroutines the first scan found that memtrace did not see created.
    pub before_attach: u64,
    /// Goroutines later scans found whose creation record never arrived.
    pub found_by_scan: u64,
    pub scans: u64,
    /// Scans that could not read the target.
    pub scan_failures: u64,
    /// Whether the scans read the runtime's whole goroutine list.
    pub complete_scans: bool,
}

impl Goroutines {
    pub fn new() -> Goroutines {
        Goroutines::default()
    }

    pub fn set_wait_reasons(&mut self, names: Vec<String>) {
        self.wait_reasons = names;
    }

    pub fn wait_reasons(&self) -> &[String] {
        &self.wait_reasons
    }

    pub fn origins(&self) -> &[Origin] {
        &self.origins
    }

    /// Live goroutines that `runtime.NumGoroutine` counts.
    pub fn live_user(&self) -> usize {
        self.live
            .values()
            .filter(|g| !self.origins[g.origin as usize].system)
            .count()
    }

    pub fn live_system(&self) -> usize {
        self.live.len() - self.live_user()
    }

    /// Live user goroutines whose creation memtrace did not see.
    pub fn live_unknown_age(&self) -> usize {
        self.live
            .values()
            .filter(|g| g.created().is_none() && !self.origins[g.origin as usize].system)
            .count()
    }

    /// The `g` addresses of the goroutines memtrace knows, for scans.
    pub fn known_gs(&self) -> impl Iterator<Item = u64> + '_ {
        self.live.values().map(|g| g.g)
    }

    /// The groups at the last scan, largest first.
    pub fn groups(&self) -> &[GoroutineGroup] {
        &self.groups
    }

    /// The groups that pass the leak rule, most suspicious first.
    pub fn leaks(&self) -> Vec<&GoroutineGroup> {
        let mut leaks: Vec<&GoroutineGroup> = self.groups.iter().filter(|g| g.leak).collect();
        leaks.sort_by(|a, b| b.score.total_cmp(&a.score));
        leaks
    }

    fn origin_of(
        &mut self,
        go_pc: u64,
        start_pc: u64,
        symbolizer: &mut Symbolizer,
        load_bias: u64,
    ) -> u32 {
        if let Some(&id) = self.origin_by_pcs.get(&(go_pc, start_pc)) {
            return id;
        }
        // gopc is a return address: look up the call, one byte back.
        let site = match symbolizer
            .frames(go_pc.wrapping_sub(load_bias).wrapping_sub(1))
            .first()
        {
            Some(frame) if go_pc != 0 => SiteKey {
                function: frame.function.clone(),
                file: frame.file.clone(),
                line: frame.line,
            },
            _ => SiteKey {
                function: "[unknown]".into(),
                file: String::new(),
                line: 0,
            },
        };
        let start_function = match symbolizer.frames(start_pc.wrapping_sub(load_bias)).last() {
            Some(frame) if start_pc != 0 => frame.function.clone(),
            _ => "[unknown]".into(),
        };
        // The main goroutine is created by the runtime's assembly start-up code, through an
        // ABI wrapper without a source line.
        let site = if start_function == "runtime.main" {
            SiteKey {
                function: "[program start]".into(),
                file: String::new(),
                line: 0,
            }
        } else {
            site
        };
        let key = (site, start_function);
        let id = match self.origin_ids.get(&key) {
            Some(&id) => id,
            None => {
                let id = self.origins.len() as u32;
                self.origins.push(Origin {
                    site: key.0.clone(),
                    system: is_system_start(&key.1),
                    start_function: key.1.clone(),
                    stack: Arc::from([]),
                });
                self.origin_ids.insert(key, id);
                id
            }
        };
        self.origin_by_pcs.insert((go_pc, start_pc), id);
        id
    }

    pub fn create(
        &mut self,
        event: &GoroutineCreateEvent,
        symbolizer: &mut Symbolizer,
        load_bias: u64,
    ) {
        let origin = self.origin_of(event.go_pc, event.start_pc, symbolizer, load_bias);
        if let Some(stack) = event
            .stack
            .as_deref()
            .filter(|_| self.origins[origin as usize].stack.is_empty())
        {
            // The stack runs from the probe in the runtime (newproc's closure on the system
            // stack) out to the `go` statement and its callers: keep the part from there.
            let frames = symbolizer.stack(stack, load_bias);
            let from_go_statement: Vec<Frame> =
                frames.into_iter().skip_while(Frame::is_runtime).collect();
            self.origins[origin as usize].stack = from_go_statement.into();
        }
        let system = self.origins[origin as usize].system;
        if !system {
            self.created += 1;
        }
        let previous = self.live.insert(
            event.goid,
            LiveGoroutine {
                g: event.g,
                created_ns: event.ts_ns.max(1),
                found_first: false,
                origin,
                status: NOT_SCANNED,
                wait_reason: 0,
            },
        );
        if let Some(found) = previous {
            // A scan found it before its record arrived: undo that count.
            if found.created().is_none() && !system {
                let counter = if found.found_first {
                    &mut self.before_attach
                } else {
                    &mut self.found_by_scan
                };
                *counter = counter.saturating_sub(1);
            }
            if let Some(entry) = self.live.get_mut(&event.goid) {
                entry.status = found.status;
                entry.wait_reason = found.wait_reason;
            }
        }
    }

    /// The target exited: every goroutine ended with it. The groups of the last scan stay, as
    /// the last word on what was alive.
    pub fn target_exited(&mut self) {
        let gone = self.live_user() as u64;
        self.exited += gone;
        self.live.clear();
    }

    /// Applies a scan: states and wait reasons, exits, goroutines memtrace did not see created;
    /// then regroups the long-lived goroutines.
    pub fn scan(&mut self, scan: &GoroutineScan, symbolizer: &mut Symbolizer, load_bias: u64) {
        let first = self.first_scan_ns.is_none();
        self.first_scan_ns.get_or_insert(scan.ts_ns);
        self.scans += 1;
        self.complete_scans = scan.complete;
        let by_g: FastMap<u64, &GoroutineState> = scan
            .goroutines
            .iter()
            .map(|state| (state.g, state))
            .collect();
        // Goroutines whose `g` is dead or holds another goroutine have exited. A `g` that was
        // not read (unreadable, or not in a partial scan) says nothing.
        let gone: Vec<u64> = self
            .live
            .iter()
            .filter(|(&goid, live)| {
                by_g.get(&live.g)
                    .is_some_and(|state| state.goid != goid || !status::is_alive(state.status))
            })
            .map(|(&goid, _)| goid)
            .collect();
        for goid in gone {
            if let Some(gone) = self.live.remove(&goid) {
                if !self.origins[gone.origin as usize].system {
                    self.exited += 1;
                }
            }
        }
        for state in &scan.goroutines {
            if !status::is_alive(state.status) || state.goid == 0 {
                continue;
            }
            if let Some(live) = self.live.get_mut(&state.goid) {
                // Alive statuses are below 16.
                live.status = state.status as u8;
                live.wait_reason = state.wait_reason;
                continue;
            }
            let origin = self.origin_of(state.go_pc, state.start_pc, symbolizer, load_bias);
            if !self.origins[origin as usize].system {
                if first {
                    self.before_attach += 1;
                } else {
                    self.found_by_scan += 1;
                }
            }
            self.live.insert(
                state.goid,
                LiveGoroutine {
                    g: state.g,
                    created_ns: 0,
                    found_first: first,
                    origin,
                    status: state.status as u8,
                    wait_reason: state.wait_reason,
                },
            );
        }
        self.regroup(scan.ts_ns);
    }

    fn regroup(&mut self, now_ns: u64) {
        let first_scan_ns = self.first_scan_ns.unwrap_or(now_ns);
        let t = now_ns.saturating_sub(first_scan_ns) as f64 / 1e9;
        let min_age_ns = (leak_rule::MIN_AGE_S * 1e9) as u64;
        // Members per group: (goid, created_ns, blocked).
        let mut members: HashMap<GroupKey, Vec<(u64, Option<u64>, bool)>> = HashMap::new();
        for (&goid, live) in &self.live {
            let Some(status) = live.status() else {
                continue;
            };
            if self.origins[live.origin as usize].system {
                continue;
            }
            if live
                .created()
                .is_some_and(|created| now_ns.saturating_sub(created) < min_age_ns)
            {
                continue;
            }
            let key = GroupKey {
                origin: live.origin,
                state: State::of(status, live.wait_reason),
            };
            members.entry(key).or_default().push((
                goid,
                live.created(),
                status::is_blocked(status),
            ));
        }
        for (key, series) in &mut self.series {
            let count = members.get(key).map_or(0, |m| m.len() as u32);
            series.push((t, count));
            if series.len() > leak_rule::MAX_SCANS {
                series.remove(0);
            }
        }
        // Forget groups that have been empty for their whole window.
        self.series
            .retain(|key, series| members.contains_key(key) || series.iter().any(|p| p.1 > 0));
        let mut groups = Vec::with_capacity(members.len());
        for (key, mut list) in members {
            let series = self
                .series
                .entry(key)
                .or_insert_with(|| vec![(t, list.len() as u32)]);
            let window_start_s = series.first().map_or(t, |p| p.0);
            let window_s = t - window_start_s;
            let half_ns =
                first_scan_ns.saturating_add(((window_start_s + window_s / 2.0) * 1e9) as u64);
            // Oldest first; unknown ages are older than any known one.
            list.sort_by_key(|&(goid, created, _)| (created.unwrap_or(0), goid));
            let oldest_age_s = list
                .iter()
                .find_map(|m| m.1)
                .map(|created| now_ns.saturating_sub(created) as f64 / 1e9);
            let (slope, r2) = linear_fit(
                &series
                    .iter()
                    .map(|&(x, y)| (x, f64::from(y)))
                    .collect::<Vec<_>>(),
            )
            .unwrap_or((0.0, 0.0));
            let mut group = GoroutineGroup {
                origin: key.origin,
                state: key.state.label(&self.wait_reasons),
                count: list.len() as u32,
                blocked: list.iter().filter(|m| m.2).count() as u32,
                unknown_age: list.iter().filter(|m| m.1.is_none()).count() as u32,
                oldest_age_s,
                recent: list
                    .iter()
                    .filter(|m| m.1.is_some_and(|created| created >= half_ns))
                    .count() as u32,
                goids: list.iter().take(MAX_GROUP_GOIDS).map(|m| m.0).collect(),
                window_s,
                growth_per_s: slope,
                steadiness: r2,
                scans: series.len(),
                leak: false,
                score: 0.0,
            };
            (group.leak, group.score) = judge(&group);
            groups.push(group);
        }
        groups.sort_by(|a, b| b.count.cmp(&a.count).then(a.origin.cmp(&b.origin)));
        self.groups = groups;
    }
}

/// The goroutine-leak rule: whether `group` leaks, and its score (blocked members weighted by
/// how steadily the group grows).
pub fn judge(group: &GoroutineGroup) -> (bool, f64) {
    use leak_rule::*;
    let count = f64::from(group.count.max(1));
    let oldest_ok = match group.oldest_age_s {
        // Members from before attach are at least as old as the window.
        _ if group.unknown_age > 0 => true,
        Some(age) => age >= MIN_OLDEST_AGE * group.window_s,
        None => false,
    };
    let leak = group.scans >= MIN_SCANS
        && group.growth_per_s * group.window_s >= MIN_GROWTH
        && group.steadiness >= MIN_STEADINESS
        && f64::from(group.blocked) / count >= MIN_BLOCKED
        && f64::from(group.recent) / count >= MIN_RECENT
        && oldest_ok;
    let score = f64::from(group.blocked) * group.steadiness;
    (leak, if leak { score } else { 0.0 })
}

#[cfg(test)]
mod tests {
    use memtrace_tests::fixtures::{go_program, Variant};

    use super::*;
    use crate::binary::GoBinary;

    fn group(count: u32, blocked: u32, recent: u32, oldest: Option<f64>) -> GoroutineGroup {
        GoroutineGroup {
            origin: 0,
            state: "chan send".into(),
            count,
            blocked,
            unknown_age: 0,
            oldest_age_s: oldest,
            recent,
            goids: Vec::new(),
            window_s: 10.0,
            growth_per_s: 5.0,
            steadiness: 0.95,
            scans: 10,
            leak: false,
            score: 0.0,
        }
    }

    #[test]
    fn the_leak_rule_wants_growth_blocked_members_newcomers_and_survivors() {
        let leaking = group(50, 50, 25, Some(10.0));
        assert_eq!(judge(&leaking), (true, 50.0 * 0.95));
        // A pool started once: nobody new.
        assert!(!judge(&group(50, 50, 0, Some(10.0))).0);
        // Busy, not blocked.
        assert!(!judge(&group(50, 10, 25, Some(10.0))).0);
        // Churn: everyone is young.
        assert!(!judge(&group(50, 50, 25, Some(2.0))).0);
        // Members from before attach count as old.
        assert!(
            judge(&GoroutineGroup {
                unknown_age: 5,
                ..group(50, 50, 25, None)
            })
            .0
        );
        // Not enough scans, not enough growth, not steady.
        assert!(
            !judge(&GoroutineGroup {
                scans: 4,
                ..leaking.clone()
            })
            .0
        );
        assert!(
            !judge(&GoroutineGroup {
                growth_per_s: 0.2,
                ..leaking.clone()
            })
            .0
        );
        assert!(
            !judge(&GoroutineGroup {
                steadiness: 0.3,
                ..leaking.clone()
            })
            .0
        );
    }

    struct Program {
        symbolizer: Symbolizer,
        /// (gopc, startpc) of `go parkedEarly()`, `go parkedLate()` and a runtime goroutine.
        early: (u64, u64),
        late: (u64, u64),
        runtime: (u64, u64),
    }

    fn gocount() -> Program {
        let path = go_program("gocount", "1.26.6", Variant::Default);
        let binary = Arc::new(GoBinary::open(&path).unwrap());
        let addr = |name: &str| binary.function(name).unwrap().addr;
        // Return addresses just past a call inside the function holding the `go` statement.
        let main = addr("main.main");
        Program {
            early: (main + 0x40, addr("main.parkedEarly")),
            late: (main + 0x80, addr("main.parkedLate")),
            runtime: (addr("runtime.gcenable") + 0x20, addr("runtime.bgsweep")),
            symbolizer: Symbolizer::new(binary, path),
        }
    }

    fn created(
        goid: u64,
        g: u64,
        (go_pc, start_pc): (u64, u64),
        at_s: f64,
    ) -> GoroutineCreateEvent {
        GoroutineCreateEvent {
            pid: 1,
            ts_ns: (at_s * 1e9) as u64,
            goid,
            parent_goid: 1,
            g,
            start_pc,
            go_pc,
            stack_id: None,
            stack: None,
        }
    }

    fn state(goid: u64, g: u64, status: u32, (go_pc, start_pc): (u64, u64)) -> GoroutineState {
        GoroutineState {
            goid,
            g,
            status,
            wait_reason: 7,
            parent_goid: 1,
            start_pc,
            go_pc,
        }
    }

    fn scan(at_s: f64, goroutines: Vec<GoroutineState>) -> GoroutineScan {
        GoroutineScan {
            pid: 1,
            ts_ns: (at_s * 1e9) as u64,
            goroutines,
            complete: true,
        }
    }

    #[test]
    fn scans_find_exits_states_and_goroutines_from_before_attach() {
        let mut p = gocount();
        let mut g = Goroutines::new();
        g.set_wait_reasons((0..10).map(|i| format!("reason {i}")).collect());
        // Goroutine 10 existed before attach; 20 and 21 are created; 30 is a runtime one.
        g.create(&created(20, 0x2000, p.late, 0.1), &mut p.symbolizer, 0);
        g.create(&created(21, 0x2100, p.late, 0.2), &mut p.symbolizer, 0);
        g.create(&created(30, 0x3000, p.runtime, 0.3), &mut p.symbolizer, 0);
        assert_eq!(g.created, 2, "the runtime goroutine is not counted");
        assert_eq!((g.live_user(), g.live_system()), (2, 1));
        g.scan(
            &scan(
                2.0,
                vec![
                    state(10, 0x1000, status::WAITING, p.early),
                    state(20, 0x2000, status::WAITING, p.late),
                    // 21's g was reused by 22, whose creation record is still on its way.
                    state(22, 0x2100, status::RUNNABLE, p.late),
                    state(30, 0x3000, status::WAITING, p.runtime),
                    // A free g.
                    state(5, 0x5000, status::DEAD, p.early),
                ],
            ),
            &mut p.symbolizer,
            0,
        );
        assert_eq!(g.exited, 1, "21 exited");
        assert_eq!(g.before_attach, 2, "10, and 22 for now");
        assert_eq!(
            (g.live_user(), g.live_system(), g.live_unknown_age()),
            (3, 1, 2)
        );
        g.create(&created(22, 0x2100, p.late, 1.9), &mut p.symbolizer, 0);
        assert_eq!(g.before_attach, 1, "22's record arrived");
        assert_eq!(g.live_unknown_age(), 1);
        let late_origin = &g.origins()[0];
        assert_eq!(late_origin.start_function, "main.parkedLate");
        let innermost = p.symbolizer.frames(p.late.0 - 1)[0].clone();
        assert_eq!(
            late_origin.site.function, innermost.function,
            "the call, one byte back"
        );
        assert!(!late_origin.system && g.origins()[1].system);
        // Groups, as of the scan: long-lived user goroutines by origin and state. 22 was of
        // unknown age then, so it counted as long-lived.
        let groups = g.groups();
        assert_eq!(groups.len(), 3, "{groups:?}");
        let start = |gr: &GoroutineGroup| g.origins()[gr.origin as usize].start_function.clone();
        let early: Vec<_> = groups
            .iter()
            .filter(|gr| start(gr) == "main.parkedEarly")
            .collect();
        assert_eq!(early.len(), 1);
        assert_eq!(
            (early[0].count, early[0].blocked, early[0].oldest_age_s),
            (1, 1, None)
        );
        assert_eq!(
            (early[0].unknown_age, early[0].state.as_str()),
            (1, "reason 7")
        );
        let late_blocked = groups
            .iter()
            .find(|gr| gr.state == "reason 7" && start(gr) == "main.parkedLate")
            .unwrap();
        assert_eq!(late_blocked.goids, vec![20]);
        assert!((late_blocked.oldest_age_s.unwrap() - 1.9).abs() < 1e-6);
        let late_runnable = groups.iter().find(|gr| gr.state == "runnable").unwrap();
        assert_eq!(
            (late_runnable.goids.as_slice(), late_runnable.blocked),
            (&[22][..], 0)
        );
        g.target_exited();
        assert_eq!(g.live_user(), 0);
        assert_eq!(g.exited, 4);
    }

    #[test]
    fn a_growing_blocked_group_is_a_leak_and_a_fixed_one_is_not() {
        let mut p = gocount();
        let mut g = Goroutines::new();
        let mut next_goid = 100;
        let mut states = Vec::new();
        // A pool of 8 from the start, and 5 more leaked goroutines every second.
        for pool in 0..8 {
            g.create(
                &created(pool + 1, 0x1000 + pool * 0x100, p.early, 0.0),
                &mut p.symbolizer,
                0,
            );
            states.push(state(
                pool + 1,
                0x1000 + pool * 0x100,
                status::WAITING,
                p.early,
            ));
        }
        for second in 1..=12 {
            for _ in 0..5 {
                let g_addr = 0x10_0000 + next_goid * 0x100;
                g.create(
                    &created(next_goid, g_addr, p.late, f64::from(second) - 0.5),
                    &mut p.symbolizer,
                    0,
                );
                states.push(state(next_goid, g_addr, status::WAITING, p.late));
                next_goid += 1;
            }
            g.scan(
                &scan(f64::from(second), states.clone()),
                &mut p.symbolizer,
                0,
            );
        }
        let leaks = g.leaks();
        assert_eq!(leaks.len(), 1, "{:?}", g.groups());
        let origin = &g.origins()[leaks[0].origin as usize];
        assert_eq!(origin.start_function, "main.parkedLate");
        assert!((leaks[0].growth_per_s - 5.0).abs() < 0.5, "{:?}", leaks[0]);
        assert_eq!(
            leaks[0].count, 55,
            "members younger than a second are not counted yet"
        );
        let pool = g.groups().iter().find(|gr| gr.count == 8).unwrap();
        assert!(!pool.leak);
    }
}

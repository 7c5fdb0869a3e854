//! The maps shared by all probes.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, StackTrace},
};
use memtrace_common::{
    global_counter, TargetConfig, TargetStats, EXP_TABLE_ENTRIES, MAX_GOROUTINE_STACKS,
    SIZE_TO_CLASS_ENTRIES,
};

/// Most processes traced at once.
pub const MAX_TARGETS: u32 = 1024;

/// Per-process configuration, keyed by tgid.
#[map]
pub static TARGETS: HashMap<u32, TargetConfig> = HashMap::with_max_entries(MAX_TARGETS, 0);

/// Exact per-process totals and loss counters, one value per CPU. Userspace inserts a zeroed
/// entry together with the `TARGETS` entry (the value is too large for the BPF stack).
#[map]
pub static STATS: PerCpuHashMap<u32, TargetStats> = PerCpuHashMap::with_max_entries(MAX_TARGETS, 0);

/// Losses that cannot be attributed to a target (see `global_counter`).
#[map]
pub static GLOBAL_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(global_counter::COUNT, 0);

/// Go's `size_to_class8` followed by `size_to_class128`, filled by userspace.
#[map]
pub static SIZE_TO_CLASS: Array<u8> = Array::with_max_entries(SIZE_TO_CLASS_ENTRIES, 0);

/// Quantiles of the unit exponential distribution in 16.16 fixed point, filled by userspace:
/// the sampler's random gaps (no floating point in BPF).
#[map]
pub static EXP_TABLE: Array<u64> = Array::with_max_entries(EXP_TABLE_ENTRIES, 0);

/// Goroutine creation stacks, each distinct one stored once (userspace reads them by id).
#[map]
pub static GOROUTINE_STACKS: StackTrace = StackTrace::with_max_entries(MAX_GOROUTINE_STACKS, 0);

/// The stack id last captured for each `go` statement, keyed by (tgid, gopc): the stack is
/// walked once per `go` statement, not once per goroutine (the walk is ~0.6 µs of the ~1.5 µs
/// a creation costs). userspace keeps one creation stack per `go` statement and start function
/// anyway.
#[map]
pub static STACK_BY_GO_STATEMENT: LruHashMap<[u64; 2], i32> = LruHashMap::with_max_entries(8192, 0);

/// The one ring buffer; sized by userspace at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(0, 0);

/// Pending bytes in `EVENTS` above which a submit wakes userspace up. Below it, records are
/// submitted without a wakeup and userspace drains them on its own timer: a wakeup per record
/// would preempt the traced program's threads thousands of times a second.
const WAKEUP_BYTES: u64 = 1 << 20;

/// Flags for submitting a record of `size` bytes to `EVENTS`: a wakeup only for the records
/// that take the pending bytes across a multiple of [`WAKEUP_BYTES`] (a power of two). While a
/// consumer that cannot keep up lags behind, waking it for every record would cost each probe
/// hit an irq_work (measured: 2 µs per goroutine creation record).
#[inline(always)]
pub fn submit_flags(size: u64) -> u64 {
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    if pending >= WAKEUP_BYTES && pending & (WAKEUP_BYTES - 1) < 2 * size {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Bumps a global loss counter.
#[inline(always)]
pub fn count_global(index: u32) {
    if let Some(counter) = GLOBAL_COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU value of this CPU; BPF programs are not preempted on it mid-update.
        unsafe { *counter += 1 };
    }
}

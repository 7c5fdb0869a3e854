//! The maps shared by all probes.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use memtrace_common::{
    global_counter, TargetConfig, TargetStats, EXP_TABLE_ENTRIES, SIZE_TO_CLASS_ENTRIES,
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

/// The one ring buffer; sized by userspace at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(0, 0);

/// Pending bytes in `EVENTS` above which a submit wakes userspace up. Below it, records are
/// submitted without a wakeup and userspace drains them on its own timer: a wakeup per record
/// would preempt the traced program's threads thousands of times a second.
const WAKEUP_BYTES: u64 = 1 << 20;

/// Flags for submitting a record to `EVENTS`.
#[inline(always)]
pub fn submit_flags() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= WAKEUP_BYTES {
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

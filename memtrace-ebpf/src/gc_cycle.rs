//! `gc_cycle`: on `runtime.gcSweep`, which runs once per GC cycle with the world stopped,
//! after mark termination, when the cycle's heap numbers are final.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::uprobe, programs::ProbeContext};
use aya_log_ebpf::debug;
use memtrace_common::{flags, tag, GcCycle};

use crate::{
    maps::{submit_flags, EVENTS, TARGETS},
    target::{current, read},
};

#[uprobe]
pub fn gc_cycle(ctx: ProbeContext) -> u32 {
    let Some((tgid, config, stats)) = current() else {
        return 0;
    };
    stats.gc_cycles += 1;
    if config.gc_record_gap_ns != 0 && config.flags & flags::GC_GLOBALS != 0 {
        // SAFETY: no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        if let Some(entry) = TARGETS.get_ptr_mut(tgid) {
            // SAFETY: the process's own entry; its GC cycles run one at a time, and a
            // racing userspace update only costs one record more or less.
            unsafe {
                if now.wrapping_sub((*entry).last_gc_record_ns) < config.gc_record_gap_ns {
                    return 0;
                }
                (*entry).last_gc_record_ns = now;
            }
        }
    }
    let mut cycle = GcCycle {
        flags: config.flags & flags::GC_GLOBALS,
        ..GcCycle::default()
    };
    if cycle.flags != 0 {
        cycle.cycle = read::<u32>(stats, config.work_cycles_addr).unwrap_or(0) as u64;
        if let Some([start, end, marked]) = read::<[u64; 3]>(stats, config.work_heap0_addr) {
            cycle.heap_start = start;
            cycle.heap_end = end;
            cycle.heap_marked = marked;
        }
        cycle.heap_goal = read::<u64>(stats, config.heap_goal_addr).unwrap_or(0);
    }
    cycle.header.tag = tag::GC_CYCLE;
    cycle.header.tgid = tgid;
    // SAFETY: no preconditions.
    cycle.header.ts_ns = unsafe { bpf_ktime_get_ns() };
    if EVENTS
        .output::<GcCycle>(&cycle, submit_flags(size_of::<GcCycle>() as u64))
        .is_err()
    {
        stats.ringbuf_drops += 1;
    }
    // Rare (once per cycle), so cheap enough to offer as a `-vv` diagnostic.
    debug!(
        &ctx,
        "pid {} gc cycle {}: heap {} -> {}, marked {}",
        tgid,
        cycle.cycle,
        cycle.heap_start,
        cycle.heap_end,
        cycle.heap_marked
    );
    0
}

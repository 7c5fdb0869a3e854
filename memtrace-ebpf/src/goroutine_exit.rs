//! `goroutine_exit`: on `runtime.gdestroy(gp)` (Go 1.22+; `goexit0(gp)` on 1.21), which every
//! finished goroutine passes through on g0 before its `g` goes back to the free list. The
//! dying goroutine is the argument (RAX), not the current g.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::uprobe, programs::ProbeContext};
use memtrace_common::{tag, GoroutineExit, RecordHeader};

use crate::{
    maps::{submit_flags, EVENTS},
    target::{current, read},
};

#[uprobe]
pub fn goroutine_exit(ctx: ProbeContext) -> u32 {
    let Some((tgid, config, stats)) = current() else {
        return 0;
    };
    // SAFETY: the context of a uprobe is its pt_regs.
    let g = unsafe { (*ctx.regs).rax };
    stats.goroutines_exited += 1;
    let exit = GoroutineExit {
        header: RecordHeader {
            tag: tag::GOROUTINE_EXIT,
            tgid,
            // SAFETY: no preconditions.
            ts_ns: unsafe { bpf_ktime_get_ns() },
        },
        goid: read::<u64>(stats, g + config.g_goid as u64).unwrap_or(0),
        g,
    };
    if EVENTS.output::<GoroutineExit>(&exit, submit_flags()).is_err() {
        stats.ringbuf_drops += 1;
    }
    0
}

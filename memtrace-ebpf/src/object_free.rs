//! `object_free`: on `runtime.freeSpecial(s, p, size)`, which the sweeper calls for each
//! special record of a dead object. Only heap-profile specials are sent: they belong to objects
//! `profilealloc` sampled, and `p` is the same address it reported.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::uprobe, programs::ProbeContext};
use memtrace_common::{tag, ObjectFree};

use crate::{
    maps::{submit_flags, EVENTS},
    target::{current, read},
};

#[uprobe]
pub fn object_free(ctx: ProbeContext) -> u32 {
    let Some((tgid, config, stats)) = current() else {
        return 0;
    };
    // SAFETY: the context of a uprobe is its pt_regs.
    let regs = unsafe { &*ctx.regs };
    // Go's register ABI: s in RAX, p in RBX, size in RCX.
    let (special, ptr, size) = (regs.rax, regs.rbx, regs.rcx);
    let Some(kind) = read::<u8>(stats, special + config.special_kind as u64) else {
        return 0;
    };
    if kind as u32 != config.profile_special_kind {
        return 0;
    }
    stats.objects_freed += 1;
    let free = ObjectFree {
        header: memtrace_common::RecordHeader {
            tag: tag::OBJECT_FREE,
            tgid,
            // SAFETY: no preconditions.
            ts_ns: unsafe { bpf_ktime_get_ns() },
        },
        ptr,
        size,
    };
    if EVENTS
        .output::<ObjectFree>(&free, submit_flags(size_of::<ObjectFree>() as u64))
        .is_err()
    {
        stats.ringbuf_drops += 1;
    }
    0
}

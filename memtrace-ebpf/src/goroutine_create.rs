//! `goroutine_create`: on the `call runtime.runqput` inside `runtime.newproc.func1`, the
//! closure `newproc` runs on the system stack. `newproc1` has just returned the new goroutine,
//! which is now in RBX (`runqput(pp, newg, next)`), with its id, parent, `go` statement and
//! start function filled in. The probe sits on a `call`, which the kernel emulates instead of
//! single-stepping, and the site is only reached by goroutine creation, not by the scheduler's
//! other uses of `runqput`.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::uprobe, programs::ProbeContext};
use memtrace_common::{tag, GoroutineCreate};

use crate::{
    maps::{submit_flags, EVENTS},
    stack::capture_user_stack,
    target::{current, read},
};

#[uprobe]
pub fn goroutine_create(ctx: ProbeContext) -> u32 {
    let Some((tgid, config, stats)) = current() else {
        return 0;
    };
    // SAFETY: the context of a uprobe is its pt_regs.
    let newg = unsafe { (*ctx.regs).rbx };
    stats.goroutines_created += 1;
    let Some(mut record) = EVENTS.reserve::<GoroutineCreate>(0) else {
        stats.ringbuf_drops += 1;
        return 0;
    };
    let created = record.as_mut_ptr();
    // SAFETY: `created` points at a reserved, exclusively owned ring-buffer entry; every field
    // is written before it is submitted.
    unsafe {
        (*created).header.tag = tag::GOROUTINE_CREATE;
        (*created).header.tgid = tgid;
        (*created).header.ts_ns = bpf_ktime_get_ns();
        (*created).g = newg;
        (*created).goid = read::<u64>(stats, newg + config.g_goid as u64).unwrap_or(0);
        (*created).parent_goid =
            read::<u64>(stats, newg + config.g_parent_goid as u64).unwrap_or(0);
        (*created).go_pc = read::<u64>(stats, newg + config.g_gopc as u64).unwrap_or(0);
        (*created).start_pc = read::<u64>(stats, newg + config.g_startpc as u64).unwrap_or(0);
        (*created)._pad = 0;
        (*created).stack_len = capture_user_stack(&ctx, &raw mut (*created).stack, stats);
    }
    record.submit(submit_flags());
    0
}

//! Capturing user stacks into ring-buffer records.

use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    helpers::{bpf_get_stack, bpf_ktime_get_ns},
    programs::ProbeContext,
    EbpfContext,
};
use memtrace_common::{AllocSample, TargetStats, MAX_STACK_DEPTH};

/// Writes the user stack into `frames` and returns how many entries are valid, counting failed
/// and truncated stacks. The kernel follows the frame-pointer chain, which Go keeps on amd64;
/// `systemstack` leaves the goroutine's frame pointer in place when it switches to g0, so a
/// probe running on g0 sees the goroutine's frames after the runtime's.
///
/// # Safety
/// `frames` must point at writable memory, e.g. a field of a reserved ring-buffer entry.
#[inline(always)]
pub unsafe fn capture_user_stack(
    ctx: &ProbeContext,
    frames: *mut [u64; MAX_STACK_DEPTH],
    stats: &mut TargetStats,
) -> u32 {
    // SAFETY: guaranteed by the caller; the helper writes at most the size it is given.
    let stack_bytes = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            frames.cast(),
            (MAX_STACK_DEPTH * 8) as u32,
            BPF_F_USER_STACK as u64,
        )
    };
    if stack_bytes < 0 {
        stats.stack_failures += 1;
        return 0;
    }
    let depth = (stack_bytes / 8) as u32;
    if depth as usize >= MAX_STACK_DEPTH {
        stats.stack_truncated += 1;
    }
    depth
}

/// Writes the header and the user stack of `sample`, counting the sample.
///
/// # Safety
/// `sample` must point at a reserved, exclusively owned ring-buffer entry.
#[inline(always)]
pub unsafe fn fill_header_and_stack(
    ctx: &ProbeContext,
    sample: *mut AllocSample,
    tag: u32,
    tgid: u32,
    stats: &mut TargetStats,
) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        (*sample).header.tag = tag;
        (*sample).header.tgid = tgid;
        (*sample).header.ts_ns = bpf_ktime_get_ns();
        (*sample).stack_len = capture_user_stack(ctx, &raw mut (*sample).stack, stats);
    }
    stats.samples += 1;
}

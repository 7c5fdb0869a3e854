//! Filling the header and user stack of a sample record.

use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    helpers::{bpf_get_stack, bpf_ktime_get_ns},
    programs::ProbeContext,
    EbpfContext,
};
use memtrace_common::{AllocSample, TargetStats, MAX_STACK_DEPTH};

/// Writes the header and the user stack of `sample`, counting failed and truncated stacks and
/// the sample itself.
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
        let stack_bytes = bpf_get_stack(
            ctx.as_ptr(),
            (*sample).stack.as_mut_ptr().cast(),
            (MAX_STACK_DEPTH * 8) as u32,
            BPF_F_USER_STACK as u64,
        );
        if stack_bytes < 0 {
            stats.stack_failures += 1;
            (*sample).stack_len = 0;
        } else {
            let frames = (stack_bytes / 8) as u32;
            if frames as usize >= MAX_STACK_DEPTH {
                stats.stack_truncated += 1;
            }
            (*sample).stack_len = frames;
        }
    }
    stats.samples += 1;
}

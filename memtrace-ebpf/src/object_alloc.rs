//! `object_alloc`: on `runtime.profilealloc(mp, x, size)`, which every allocation the Go
//! runtime's heap profiler samples passes through (on every allocation path, the 1.27
//! size-specialized ones included). Sends the object's address, slot size and stack, so that
//! userspace can pair it with its death.

use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use memtrace_common::{class, tag, AllocSample};

use crate::{
    maps::{submit_flags, EVENTS},
    stack::fill_header_and_stack,
    target::{current, read, read_optional},
};

/// Objects of this size or less never have a malloc header.
const MIN_SIZE_WITH_HEADER: u64 = 512;

#[uprobe]
pub fn object_alloc(ctx: ProbeContext) -> u32 {
    let Some((tgid, config, stats)) = current() else {
        return 0;
    };
    // SAFETY: the context of a uprobe is its pt_regs.
    let regs = unsafe { &*ctx.regs };
    // Go's register ABI: mp in RAX, x in RBX, size in RCX; R14 is the current g.
    let (ptr, size, g) = (regs.rbx, regs.rcx, regs.r14);
    stats.objects_sampled += 1;
    let Some(mut record) = EVENTS.reserve::<AllocSample>(0) else {
        stats.ringbuf_drops += 1;
        return 0;
    };
    let goid = read::<u64>(stats, g + config.g_goid as u64).unwrap_or(0);
    // Pointerful objects over 512 bytes carry their type in a header word just before them
    // (Go 1.22+); only those are big enough to have one. For a large object the word before it
    // may be unmapped: not a loss, so not counted.
    let header_word = if size > MIN_SIZE_WITH_HEADER {
        read_optional::<u64>(ptr.wrapping_sub(8)).unwrap_or(0)
    } else {
        0
    };
    let sample = record.as_mut_ptr();
    // SAFETY: `sample` points at a reserved, exclusively owned ring-buffer entry; every field
    // is written before it is submitted.
    unsafe {
        (*sample).size = size;
        (*sample).slot_size = size;
        (*sample).g = g;
        (*sample).ptr = ptr;
        (*sample).header_word = header_word;
        (*sample).goid = goid;
        (*sample).class = class::PROFILED;
        fill_header_and_stack(&ctx, sample, tag::OBJECT_ALLOC, tgid, stats);
    }
    record.submit(submit_flags(size_of::<AllocSample>() as u64));
    0
}

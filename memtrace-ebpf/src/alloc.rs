//! `alloc_entry`: on the frame-pointer push of every Go heap-allocation entry point.
//!
//! Counts every allocation exactly (per size class, tiny blocks, large pages) and sends a
//! Poisson sample of them, by requested bytes, with the user stack. The attach cookie says
//! which entry point the probe sits on (`memtrace_common::entry`).

use aya_ebpf::{
    helpers::{bpf_get_attach_cookie, bpf_get_prandom_u32},
    macros::uprobe,
    programs::ProbeContext,
    EbpfContext,
};

use memtrace_common::{
    class, entry, flags, tag, AllocSample, TargetConfig, TargetStats, EXP_TABLE_ENTRIES,
    EXP_TABLE_SHIFT, NUM_SIZE_CLASSES,
};

use crate::{
    maps::{submit_flags, EVENTS, EXP_TABLE, SIZE_TO_CLASS},
    stack::fill_header_and_stack,
    target::{current, read},
};

/// `maxTinySize`: noscan objects below this go to the tiny allocator.
const MAX_TINY_SIZE: u64 = 16;
/// `_PageSize`.
const PAGE_SIZE: u64 = 8192;
/// `minSizeForMallocHeader`: pointerful objects above this carry an 8-byte header (1.22+).
const MIN_SIZE_FOR_MALLOC_HEADER: u64 = 512;
const MALLOC_HEADER_SIZE: u64 = 8;
/// `abi.Type.PtrBytes`: zero for pointer-free types.
const TYPE_PTR_BYTES: u64 = 8;

#[uprobe]
pub fn alloc_entry(ctx: ProbeContext) -> u32 {
    on_alloc(&ctx);
    0
}

#[inline(always)]
fn on_alloc(ctx: &ProbeContext) {
    let Some((tgid, config, stats)) = current() else {
        return;
    };
    // SAFETY: the context of a uprobe is its pt_regs.
    let regs = unsafe { &*ctx.regs };
    // Go's register ABI: size in RAX, type in RBX; R14 is the current g.
    let size = regs.rax;
    let typ = regs.rbx;
    let g = regs.r14;
    if size == 0 {
        // mallocgc returns &zerobase without allocating (and without counting).
        return;
    }
    // SAFETY: reading the cookie of the current attachment is always allowed.
    let mut kind = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    if kind == entry::MALLOCGC {
        kind = classify_mallocgc(config, stats, size, typ);
    }

    stats.objects += 1;
    stats.requested_bytes += size;
    let (size_class, slot_size) = match kind {
        entry::TINY => {
            stats.tiny_objects += 1;
            if opens_tiny_block(config, stats, size, g) {
                stats.tiny_blocks += 1;
                (TINY_BLOCK_CLASS, MAX_TINY_SIZE)
            } else {
                (class::TINY_COMBINED, 0)
            }
        }
        entry::LARGE => {
            let bytes = size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
            stats.large_objects += 1;
            stats.large_bytes += bytes;
            (class::LARGE, bytes)
        }
        _ => {
            let with_header = if kind == entry::SMALL_SCAN_HEADER {
                size + MALLOC_HEADER_SIZE
            } else {
                size
            };
            let size_class = size_class(with_header);
            if let Some(count) = stats.class_objects.get_mut(size_class as usize) {
                *count += 1;
            }
            (size_class, 0)
        }
    };

    stats.sample_countdown -= size as i64;
    if stats.sample_countdown > 0 {
        return;
    }
    stats.sample_countdown = next_sample_gap(config.sample_interval_bytes);
    send_sample(ctx, tgid, config, stats, size, slot_size, size_class, g);
}

/// Size class of the 16-byte tiny blocks (`tinySizeClass`).
const TINY_BLOCK_CLASS: u32 = 2;

/// What monolithic mallocgc (Go 1.21–1.23) does with this request.
#[inline(always)]
fn classify_mallocgc(config: &TargetConfig, stats: &mut TargetStats, size: u64, typ: u64) -> u64 {
    let noscan = typ == 0 || read::<u64>(stats, typ + TYPE_PTR_BYTES).unwrap_or(1) == 0;
    if size > config.max_small_size {
        entry::LARGE
    } else if noscan && size < MAX_TINY_SIZE {
        entry::TINY
    } else if noscan {
        entry::SMALL_NOSCAN
    } else if config.flags & flags::MALLOC_HEADERS != 0 && size > MIN_SIZE_FOR_MALLOC_HEADER {
        entry::SMALL_SCAN_HEADER
    } else {
        entry::SMALL_SCAN
    }
}

/// Whether a tiny allocation of `size` needs a new 16-byte block, replaying the runtime's
/// fit test against the P's `mcache.tiny`/`tinyoffset` (read before the allocation happens).
/// Unknown state counts as a new block.
#[inline(always)]
fn opens_tiny_block(config: &TargetConfig, stats: &mut TargetStats, size: u64, g: u64) -> bool {
    if config.flags & flags::TINY_STATE == 0 {
        return true;
    }
    let Some(m) = read::<u64>(stats, g + config.g_m as u64) else {
        return true;
    };
    let Some(p) = read::<u64>(stats, m + config.m_p as u64) else {
        return true;
    };
    if p == 0 {
        // Early runtime start: the allocation uses mcache0, which we do not know.
        return true;
    }
    let Some(mcache) = read::<u64>(stats, p + config.p_mcache as u64) else {
        return true;
    };
    let Some([tiny, tiny_offset]) = read::<[u64; 2]>(stats, mcache + config.mcache_tiny as u64)
    else {
        return true;
    };
    let align = if size & 7 == 0 {
        8
    } else if size & 3 == 0 {
        4
    } else if size & 1 == 0 {
        2
    } else {
        1
    };
    let offset = (tiny_offset + align - 1) & !(align - 1);
    !(offset + size <= MAX_TINY_SIZE && tiny != 0)
}

/// Go's size_to_class8/size_to_class128 lookup.
#[inline(always)]
fn size_class(size: u64) -> u32 {
    let index = if size <= 1024 {
        size.div_ceil(8)
    } else {
        129 + (size - 1024).div_ceil(128)
    };
    SIZE_TO_CLASS
        .get(index as u32)
        .map_or(NUM_SIZE_CLASSES as u32, |c| *c as u32)
}

/// An exponentially distributed gap with mean `interval` (Poisson sampling by bytes).
#[inline(always)]
fn next_sample_gap(interval: u64) -> i64 {
    // SAFETY: no preconditions.
    let index = unsafe { bpf_get_prandom_u32() } & (EXP_TABLE_ENTRIES - 1);
    let draw = EXP_TABLE
        .get(index)
        .copied()
        .unwrap_or(1 << EXP_TABLE_SHIFT);
    ((draw * interval) >> EXP_TABLE_SHIFT) as i64
}

#[expect(clippy::too_many_arguments, reason = "the fields of one record")]
#[inline(always)]
fn send_sample(
    ctx: &ProbeContext,
    tgid: u32,
    config: &TargetConfig,
    stats: &mut TargetStats,
    size: u64,
    slot_size: u64,
    size_class: u32,
    g: u64,
) {
    let Some(mut record) = EVENTS.reserve::<AllocSample>(0) else {
        stats.ringbuf_drops += 1;
        return;
    };
    let goid = read::<u64>(stats, g + config.g_goid as u64).unwrap_or(0);
    let sample = record.as_mut_ptr();
    // SAFETY: `sample` points at a reserved, exclusively owned ring-buffer entry of the right
    // size; every field is written before it is submitted.
    unsafe {
        (*sample).size = size;
        (*sample).slot_size = slot_size;
        (*sample).g = g;
        (*sample).ptr = 0;
        (*sample).header_word = 0;
        (*sample).goid = goid;
        (*sample).class = size_class;
        fill_header_and_stack(ctx, sample, tag::ALLOC_SAMPLE, tgid, stats);
    }
    record.submit(submit_flags(size_of::<AllocSample>() as u64));
}

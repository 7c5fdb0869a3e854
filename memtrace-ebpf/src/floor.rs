//! `alloc_floor`: a probe that does nothing, attached on the same instructions as
//! `alloc_entry` by `--probe-floor`. It measures the kernel's cost of the trap alone, the floor
//! that no uprobe-based tracer can go below.

use aya_ebpf::{macros::uprobe, programs::ProbeContext};

#[uprobe]
pub fn alloc_floor(_ctx: ProbeContext) -> u32 {
    0
}

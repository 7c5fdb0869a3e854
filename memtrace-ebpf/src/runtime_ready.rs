//! `runtime_ready`: on `runtime.main`, which starts once `schedinit` is done. Launch mode
//! waits for it before writing `MemProfileRate`, which `schedinit` would otherwise reset, so
//! this one record wakes userspace up at once.

use aya_ebpf::{
    bindings::BPF_RB_FORCE_WAKEUP, helpers::bpf_ktime_get_ns, macros::uprobe,
    programs::ProbeContext,
};
use memtrace_common::{tag, RecordHeader};

use crate::{maps::EVENTS, target::current};

#[uprobe]
pub fn runtime_ready(_ctx: ProbeContext) -> u32 {
    let Some((tgid, _, stats)) = current() else {
        return 0;
    };
    let header = RecordHeader {
        tag: tag::RUNTIME_READY,
        tgid,
        // SAFETY: no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
    };
    if EVENTS
        .output::<RecordHeader>(&header, BPF_RB_FORCE_WAKEUP as u64)
        .is_err()
    {
        stats.ringbuf_drops += 1;
    }
    0
}

//! `process_exec` and `process_exit`: raw tracepoints that tell the node agent about processes
//! as they start and end, so that it finds short-lived programs without polling /proc. Raw
//! tracepoints attach through bpf() alone: no tracefs mount in the agent's container.
//!
//! Both send a bare header; userspace looks at the process itself. Exec records go out for
//! every program on the node (exec rates are modest); exit records only for traced processes,
//! and only when their main thread exits (every thread passes through this tracepoint).

use aya_ebpf::{
    bindings::BPF_RB_FORCE_WAKEUP,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use memtrace_common::{global_counter, tag, RecordHeader};

use crate::maps::{count_global, EVENTS, TARGETS};

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn process_exec(_ctx: RawTracePointContext) -> i32 {
    // After exec the task is its thread group's leader: tgid is the process id.
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    send(tag::PROCESS_EXEC, tgid);
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn process_exit(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, pid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    // SAFETY: only the presence of the entry is used.
    if pid == tgid && unsafe { TARGETS.get(tgid) }.is_some() {
        send(tag::PROCESS_EXIT, tgid);
    }
    0
}

/// Sends a bare header at once (these records are rare, and the agent acts on them).
#[inline(always)]
fn send(tag: u32, tgid: u32) {
    let header = RecordHeader {
        tag,
        tgid,
        // SAFETY: no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
    };
    if EVENTS
        .output::<RecordHeader>(&header, BPF_RB_FORCE_WAKEUP as u64)
        .is_err()
    {
        count_global(global_counter::PROCESS_EVENTS_LOST);
    }
}

//! `goroutine_create`: on the `call runtime.runqput` inside `runtime.newproc.func1`, the
//! closure `newproc` runs on the system stack. `newproc1` has just returned the new goroutine,
//! which is now in RBX (`runqput(pp, newg, next)`), with its id, parent, `go` statement and
//! start function filled in. The probe sits on a `call`, which the kernel emulates instead of
//! single-stepping, and the site is only reached by goroutine creation, not by the scheduler's
//! other uses of `runqput`.
//!
//! The probe runs on g0, but `systemstack` keeps the goroutine's frame pointer, so the user
//! stack the kernel walks continues from the runtime's frames into the code holding the `go`
//! statement. It is walked once per `go` statement (`STACK_BY_GO_STATEMENT`) and stored once
//! per distinct stack (`GOROUTINE_STACKS`): the record carries only its id.

use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    helpers::bpf_ktime_get_ns,
    macros::uprobe,
    programs::{tracing::StackIdContext, ProbeContext},
};
use memtrace_common::{
    flags, global_counter, tag, GoroutineCreate, TargetConfig, GOROUTINE_RECORD_WINDOW_NS,
};

use crate::{
    maps::{count_global, submit_flags, EVENTS, GOROUTINE_STACKS, STACK_BY_GO_STATEMENT, TARGETS},
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
    if config.flags & flags::NO_GOROUTINE_RECORDS != 0 {
        return 0;
    }
    if config.goroutine_records_per_window != 0 && !within_record_limit(tgid, config) {
        count_global(global_counter::GOROUTINE_RECORDS_THINNED);
        return 0;
    }
    let go_pc = read::<u64>(stats, newg + config.g_gopc as u64).unwrap_or(0);
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
        (*created).go_pc = go_pc;
        (*created).start_pc = read::<u64>(stats, newg + config.g_startpc as u64).unwrap_or(0);
        (*created)._pad = 0;
    }
    let go_statement = [u64::from(tgid), go_pc];
    // SAFETY: a plain value of a map whose entries are only ever inserted whole.
    let stack_id = match unsafe { STACK_BY_GO_STATEMENT.get(go_statement) } {
        Some(&id) => id,
        None => match ctx.get_stackid(&GOROUTINE_STACKS, BPF_F_USER_STACK as u64) {
            Ok(id) => {
                // Failing to remember it only means walking the stack again next time.
                let _ = STACK_BY_GO_STATEMENT.insert(go_statement, id as i32, 0);
                id as i32
            }
            Err(_) => {
                // Unreadable stack, a full map, or a hash collision with another stack.
                stats.stack_failures += 1;
                -1
            }
        },
    };
    // SAFETY: as above.
    unsafe { (*created).stack_id = stack_id };
    record.submit(submit_flags(size_of::<GoroutineCreate>() as u64));
    0
}

/// Whether the process may send one more goroutine record in the current window (and counts
/// it). Creations on several CPUs race on the counter: the limit is approximate, by a few
/// records, which is all a guard against bursts needs.
#[inline(always)]
fn within_record_limit(tgid: u32, config: &TargetConfig) -> bool {
    let Some(entry) = TARGETS.get_ptr_mut(tgid) else {
        return true;
    };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the process's own entry; a racing update costs at most a few records more.
    unsafe {
        if now.wrapping_sub((*entry).goroutine_window_start_ns) >= GOROUTINE_RECORD_WINDOW_NS {
            (*entry).goroutine_window_start_ns = now;
            (*entry).goroutine_window_records = 0;
        }
        if (*entry).goroutine_window_records >= u64::from(config.goroutine_records_per_window) {
            return false;
        }
        (*entry).goroutine_window_records += 1;
    }
    true
}

//! Looking up the current process and reading its memory.

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user};
use memtrace_common::{global_counter, TargetConfig, TargetStats};

use crate::maps::{count_global, STATS, TARGETS};

/// The traced process the current task belongs to: its tgid, configuration and this CPU's
/// statistics. `None` (and counted) for processes that are not traced.
#[inline(always)]
pub fn current() -> Option<(u32, &'static TargetConfig, &'static mut TargetStats)> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: TARGETS entries are only replaced while no probe of that process is attached.
    let Some(config) = (unsafe { TARGETS.get(tgid) }) else {
        count_global(global_counter::UNKNOWN_TARGET);
        return None;
    };
    let Some(stats) = STATS.get_ptr_mut(tgid) else {
        count_global(global_counter::STATS_MAP_FULL);
        return None;
    };
    // SAFETY: a per-CPU value, only touched by programs on this CPU, which do not nest.
    Some((tgid, config, unsafe { &mut *stats }))
}

/// Reads a `T` at `addr` in the current process where failing is expected and harmless (not
/// counted).
#[inline(always)]
pub fn read_optional<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_user checks the address; a bad one only makes it fail.
    unsafe { bpf_probe_read_user(addr as *const T) }.ok()
}

/// Reads a `T` at `addr` in the current process, counting failures.
#[inline(always)]
pub fn read<T>(stats: &mut TargetStats, addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_user checks the address; a bad one only makes it fail.
    match unsafe { bpf_probe_read_user(addr as *const T) } {
        Ok(value) => Some(value),
        Err(_) => {
            stats.read_failures += 1;
            None
        }
    }
}

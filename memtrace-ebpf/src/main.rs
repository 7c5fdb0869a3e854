//! memtrace's eBPF programs: uprobes on the Go runtime, and raw tracepoints on process exec
//! and exit for the node agent.
//!
//! One probe per file. Every program looks its process up in `TARGETS` (written by userspace
//! before attaching), counts what it sees exactly in per-CPU `STATS`, and sends records that
//! need userspace work (stack samples, GC cycles) through the one ring buffer `EVENTS`. Every
//! loss is counted: ring-buffer drops, failed stack captures, failed reads of target memory,
//! events of unknown processes.
#![no_std]
#![no_main]

mod alloc;
mod floor;
mod gc_cycle;
mod goroutine_create;
mod maps;
mod object_alloc;
mod object_free;
mod process_events;
mod runtime_ready;
mod stack;
mod target;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects programs that could reach this; it only satisfies the compiler.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

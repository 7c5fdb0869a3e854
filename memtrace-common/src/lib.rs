//! The kernel/user contract of memtrace.
//!
//! Everything that crosses the boundary between the eBPF programs and the userspace agent is
//! defined here once: ring-buffer records (each starts with a [`RecordHeader`] whose `tag` says
//! what follows), the per-target configuration userspace writes into a map before attaching, and
//! the per-CPU statistics the probes aggregate. All types are `#[repr(C)]` with fixed-width
//! fields and explicit padding; their sizes are asserted at compile time so that a layout change
//! on one side cannot go unnoticed on the other.
#![no_std]

/// Deepest user stack a sample carries. 127 is the kernel's default `perf_event_max_stack`.
pub const MAX_STACK_DEPTH: usize = 127;

/// Distinct goroutine creation stacks the kernel keeps (`GOROUTINE_STACKS`); once full, new
/// stacks are counted as not captured.
pub const MAX_GOROUTINE_STACKS: u32 = 16384;

/// Number of Go size classes (`_NumSizeClasses`, identical in Go 1.21–1.27).
pub const NUM_SIZE_CLASSES: usize = 68;

/// Entries of the size-to-class lookup map: `size_to_class8` (sizes 0..=1024 in steps of 8)
/// followed by `size_to_class128` (1024..=32768 in steps of 128), as in the Go runtime.
pub const SIZE_TO_CLASS_ENTRIES: u32 = 129 + 249;

/// Entries of the exponential-draw table the sampler picks from (a power of two).
pub const EXP_TABLE_ENTRIES: u32 = 4096;

/// Fixed-point scale of the exponential-draw table: entry = -ln(u) * 2^16.
pub const EXP_TABLE_SHIFT: u32 = 16;

/// Record tags: the first field of every ring-buffer record.
pub mod tag {
    /// An [`AllocSample`](super::AllocSample).
    pub const ALLOC_SAMPLE: u32 = 1;
    /// A [`GcCycle`](super::GcCycle).
    pub const GC_CYCLE: u32 = 2;
    /// An [`AllocSample`](super::AllocSample) of an object the Go runtime's heap profiler
    /// sampled (`runtime.profilealloc`): its address is known, so its death can be matched.
    pub const OBJECT_ALLOC: u32 = 3;
    /// An [`ObjectFree`](super::ObjectFree).
    pub const OBJECT_FREE: u32 = 4;
    /// A bare [`RecordHeader`](super::RecordHeader): `runtime.main` started, so the runtime
    /// has finished `schedinit` (launch mode writes `MemProfileRate` after this).
    pub const RUNTIME_READY: u32 = 5;
    /// A [`GoroutineCreate`](super::GoroutineCreate).
    pub const GOROUTINE_CREATE: u32 = 6;
    /// A bare [`RecordHeader`](super::RecordHeader) from the `sched_process_exec` raw
    /// tracepoint (node agent): process `tgid` just executed a new program, any program.
    pub const PROCESS_EXEC: u32 = 7;
    /// A bare [`RecordHeader`](super::RecordHeader) from the `sched_process_exit` raw
    /// tracepoint: the main thread of traced process `tgid` exited.
    pub const PROCESS_EXIT: u32 = 8;
}

/// Which allocation entry point a probe sits on. It decides how the probe turns the requested
/// size into the slot the runtime really hands out.
pub mod entry {
    /// Monolithic `runtime.mallocgc` (Go 1.21–1.23): tiny/small/large decided in the probe.
    pub const MALLOCGC: u64 = 0;
    /// `mallocgcTiny`, `mallocgcTinySC*`, `mallocgcTinySize*`: 16-byte tiny blocks.
    pub const TINY: u64 = 1;
    /// `mallocgcSmallNoscan`, `mallocgcSmallNoScanSC*`.
    pub const SMALL_NOSCAN: u64 = 2;
    /// `mallocgcSmallScanNoHeader`, `mallocgcSmallScanNoHeaderSC*`.
    pub const SMALL_SCAN: u64 = 3;
    /// `mallocgcSmallScanHeader`: the runtime adds an 8-byte malloc header.
    pub const SMALL_SCAN_HEADER: u64 = 4;
    /// `mallocgcLarge`: whole pages.
    pub const LARGE: u64 = 5;
}

/// How a sampled allocation was classified (carried in [`AllocSample::class`]).
pub mod class {
    /// The allocation was combined into an existing tiny block: it costs no new slot.
    pub const TINY_COMBINED: u32 = 0xfffe;
    /// A large object (`slot_size` holds whole pages).
    pub const LARGE: u32 = 0xffff;
    /// Sampled by the runtime's heap profiler (`slot_size` is the runtime's slot size).
    pub const PROFILED: u32 = 0xfffd;
}

/// Per-target flags in [`TargetConfig::flags`].
pub mod flags {
    /// The runtime adds an 8-byte header to pointerful objects over 512 bytes (Go 1.22+).
    pub const MALLOC_HEADERS: u32 = 1 << 0;
    /// `mcache.tiny`/`tinyoffset` offsets are known, so tiny allocations can be told apart.
    pub const TINY_STATE: u32 = 1 << 1;
    /// `runtime.work` and `runtime.gcController` addresses are known (symbols present).
    pub const GC_GLOBALS: u32 = 1 << 2;
    /// Count goroutine creations but send no records for them: the node agent's overhead
    /// budget turns records off for a process that creates goroutines faster than its share
    /// (its goroutines are then found by the periodic scans).
    pub const NO_GOROUTINE_RECORDS: u32 = 1 << 3;
}

/// Header of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordHeader {
    /// One of the [`tag`] constants.
    pub tag: u32,
    /// Thread-group id (the process id) of the traced process.
    pub tgid: u32,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when the probe fired.
    pub ts_ns: u64,
}
const _: () = assert!(core::mem::size_of::<RecordHeader>() == 16);

/// One allocation picked by the in-kernel Poisson sampler, with its user stack.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AllocSample {
    pub header: RecordHeader,
    /// Bytes the program asked for.
    pub size: u64,
    /// Bytes of the slot the runtime hands out for tiny blocks (16, or 0 when the allocation
    /// was combined into an existing block) and large objects (whole pages). 0 for small
    /// objects: userspace derives it from `class`.
    pub slot_size: u64,
    /// The goroutine (`g` pointer, R14) that allocated.
    pub g: u64,
    /// Address of the object ([`tag::OBJECT_ALLOC`] only; 0 otherwise).
    pub ptr: u64,
    /// The word before the object ([`tag::OBJECT_ALLOC`] of objects over 512 bytes): the
    /// `*_type` malloc header when the object has one (userspace knows from the stack).
    pub header_word: u64,
    /// Its goroutine id, or 0 when it could not be read.
    pub goid: u64,
    /// Size class index, or one of the [`class`] constants.
    pub class: u32,
    /// Number of valid entries in `stack` (0 when the stack could not be captured).
    pub stack_len: u32,
    /// Return addresses, innermost first; `stack[0]` is the probed instruction.
    pub stack: [u64; MAX_STACK_DEPTH],
}
const _: () = assert!(core::mem::size_of::<AllocSample>() == 16 + 8 * 6 + 8 + 8 * MAX_STACK_DEPTH);

/// A sampled object the sweeper found dead (`runtime.freeSpecial` of its profile special).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObjectFree {
    pub header: RecordHeader,
    /// The address `profilealloc` reported for the object.
    pub ptr: u64,
    /// Its slot size.
    pub size: u64,
}
const _: () = assert!(core::mem::size_of::<ObjectFree>() == 32);

/// Sent once per completed GC cycle.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcCycle {
    pub header: RecordHeader,
    /// `runtime.work.cycles`, or 0 when the binary has no symbols for it.
    pub cycle: u64,
    /// `work.heap0`: heap size when the cycle started.
    pub heap_start: u64,
    /// `work.heap1`: heap size at mark termination.
    pub heap_end: u64,
    /// `work.heap2`: bytes marked live.
    pub heap_marked: u64,
    /// `gcController.gcPercentHeapGoal`: the goal the pacer aimed at.
    pub heap_goal: u64,
    /// Copy of [`flags::GC_GLOBALS`] for this target: whether the fields above are valid.
    pub flags: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<GcCycle>() == 16 + 8 * 5 + 8);

/// A goroutine was created (`newproc` handing the new `g` to `runqput`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GoroutineCreate {
    pub header: RecordHeader,
    /// The new goroutine's id.
    pub goid: u64,
    /// Id of the goroutine that ran the `go` statement (`g.parentGoid`).
    pub parent_goid: u64,
    /// Address of the new `g` (reused by the runtime after the goroutine exits).
    pub g: u64,
    /// `g.startpc`: entry of the function the goroutine runs.
    pub start_pc: u64,
    /// `g.gopc`: return address of the `go` statement's call to `newproc`.
    pub go_pc: u64,
    /// Id of the creating goroutine's stack in the `GOROUTINE_STACKS` stack-trace map, or
    /// negative when it could not be captured. The stack runs innermost first from the
    /// runtime's `systemstack` frames to the code holding the `go` statement. A goroutine-heavy
    /// program creates hundreds of thousands of goroutines a second from a handful of places:
    /// the kernel stores each distinct stack once, and the record stays small.
    pub stack_id: i32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<GoroutineCreate>() == 64);

/// What the probes need to know about one traced process, written by userspace into the
/// `TARGETS` map (keyed by tgid) before the probes are attached. Processes without an entry
/// are ignored (and counted).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetConfig {
    /// Mean bytes between stack samples (the Poisson sampler's rate).
    pub sample_interval_bytes: u64,
    /// Largest size `mallocgc` serves from size classes (32768, or 32760 with malloc headers).
    pub max_small_size: u64,
    /// Address of `runtime.work.cycles` (valid with [`flags::GC_GLOBALS`]).
    pub work_cycles_addr: u64,
    /// Address of `runtime.work.heap0`; heap1 and heap2 follow at +8 and +16.
    pub work_heap0_addr: u64,
    /// Address of `runtime.gcController.gcPercentHeapGoal`.
    pub heap_goal_addr: u64,
    /// Offsets into runtime structs, from the per-version table.
    pub g_goid: u32,
    pub g_m: u32,
    pub m_p: u32,
    pub p_mcache: u32,
    /// `mcache.tiny`; `tinyoffset` follows at +8.
    pub mcache_tiny: u32,
    /// [`flags`] bits.
    pub flags: u32,
    /// `special.kind` (u8) offset, and the kind value of heap-profile specials.
    pub special_kind: u32,
    pub profile_special_kind: u32,
    /// `g.parentGoid`, `g.gopc` and `g.startpc`.
    pub g_parent_goid: u32,
    pub g_gopc: u32,
    pub g_startpc: u32,
    /// Most goroutine creation records per [`GOROUTINE_RECORD_WINDOW_NS`] (0: no limit).
    /// The node agent's budget sets it, so that a burst of goroutines cannot fill the ring
    /// buffer before userspace reacts; creations beyond it are counted in `STATS` but send
    /// no record (and `global_counter::GOROUTINE_RECORDS_THINNED` counts them).
    pub goroutine_records_per_window: u32,
    /// Least time between two GC records (0: a record per cycle). The node agent thins out
    /// the records of programs that collect hundreds of times a second; only applied with
    /// [`flags::GC_GLOBALS`], whose cycle numbers keep the analysis's epochs exact.
    /// `TargetStats::gc_cycles` still counts every cycle.
    pub gc_record_gap_ns: u64,
    /// When the last GC record was sent: the probe's own state, written by the probe.
    pub last_gc_record_ns: u64,
    /// Start of the current goroutine-record window and the records sent in it: the
    /// probe's own state.
    pub goroutine_window_start_ns: u64,
    pub goroutine_window_records: u64,
}
const _: () = assert!(core::mem::size_of::<TargetConfig>() == 8 * 5 + 4 * 12 + 8 * 4);

/// The window of [`TargetConfig::goroutine_records_per_window`]: 100 ms.
pub const GOROUTINE_RECORD_WINDOW_NS: u64 = 100_000_000;

/// Exact allocation totals and loss counters of one target on one CPU (a `PerCpuHashMap`
/// value keyed by tgid). Userspace sums the CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetStats {
    /// Every allocation the probes saw.
    pub objects: u64,
    /// Sum of requested sizes.
    pub requested_bytes: u64,
    /// Tiny allocations (all of them), and how many of those opened a new 16-byte block.
    pub tiny_objects: u64,
    pub tiny_blocks: u64,
    /// Large allocations and their bytes rounded up to whole 8 KiB pages.
    pub large_objects: u64,
    pub large_bytes: u64,
    /// Small allocations per size class (index 0 unused).
    pub class_objects: [u64; NUM_SIZE_CLASSES],
    /// Samples written to the ring buffer.
    pub samples: u64,
    /// GC cycles seen.
    pub gc_cycles: u64,
    /// Ring-buffer reservations that failed (the record is lost, the counts above are not).
    pub ringbuf_drops: u64,
    /// Samples whose user stack could not be captured.
    pub stack_failures: u64,
    /// Samples whose stack filled all [`MAX_STACK_DEPTH`] entries (probably cut short).
    pub stack_truncated: u64,
    /// Reads of target memory that failed (type, mcache, goid, GC globals).
    pub read_failures: u64,
    /// Countdown to the next stack sample, in requested bytes.
    pub sample_countdown: i64,
    /// Objects the runtime's heap profiler sampled, and how many of those the sweeper freed.
    pub objects_sampled: u64,
    pub objects_freed: u64,
    /// Goroutines created while the probe was attached (exact, whether or not their records
    /// reached userspace).
    pub goroutines_created: u64,
}
const _: () = assert!(core::mem::size_of::<TargetStats>() == 8 * (6 + NUM_SIZE_CLASSES + 10));

impl TargetStats {
    pub const ZERO: Self = Self {
        objects: 0,
        requested_bytes: 0,
        tiny_objects: 0,
        tiny_blocks: 0,
        large_objects: 0,
        large_bytes: 0,
        class_objects: [0; NUM_SIZE_CLASSES],
        samples: 0,
        gc_cycles: 0,
        ringbuf_drops: 0,
        stack_failures: 0,
        stack_truncated: 0,
        read_failures: 0,
        sample_countdown: 0,
        objects_sampled: 0,
        objects_freed: 0,
        goroutines_created: 0,
    };
}

/// Indices of the global per-CPU loss counters (`GLOBAL_COUNTERS`), for events that cannot be
/// attributed to a target.
pub mod global_counter {
    /// A probe fired in a process that has no `TARGETS` entry.
    pub const UNKNOWN_TARGET: u32 = 0;
    /// The `STATS` map was full, so a target's event could not be counted.
    pub const STATS_MAP_FULL: u32 = 1;
    /// A process exec or exit record could not be sent (ring buffer full).
    pub const PROCESS_EVENTS_LOST: u32 = 2;
    /// Goroutine creations whose record the per-process limit held back (counted in
    /// `TargetStats::goroutines_created` all the same).
    pub const GOROUTINE_RECORDS_THINNED: u32 = 3;
    pub const COUNT: u32 = 4;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] structs of integers with no implicit padding (sizes
    // asserted above), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::TargetConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TargetStats {}
}

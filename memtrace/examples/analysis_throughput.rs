//! Userspace tracking speed and memory: feeds synthetic ring-buffer records (sampled object
//! allocations with realistic stacks, their deaths, GC cycles) through the same decoding and
//! analysis a live session uses, on one core, and measures
//! - records per second (decode + pair + aggregate), and
//! - heap bytes per tracked live object.
//!
//! Usage: analysis_throughput <go-binary> [records]
//! (`cargo xtask bench` runs it on the bench fixture.)

use std::{
    alloc::{GlobalAlloc, Layout, System},
    path::PathBuf,
    sync::{
        atomic::{AtomicIsize, Ordering},
        Arc,
    },
    time::Instant,
};

use memtrace::{
    analysis::{Analysis, Sampling},
    binary::GoBinary,
    symbolize::Symbolizer,
};
use memtrace_common::{tag, AllocSample, GcCycle, ObjectFree, RecordHeader, MAX_STACK_DEPTH};

/// Counts live heap bytes, to measure what tracking costs per object.
struct Counting;

static HEAP_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only adds bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HEAP_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HEAP_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HEAP_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn bytes_of<T>(value: &T) -> Vec<u8> {
    // SAFETY: the records are #[repr(C)] integers only.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

/// The record of one sampled 64-byte object.
fn object_alloc(ptr: u64, ts_ns: u64, stack: &[u64]) -> Vec<u8> {
    let mut frames = [0u64; MAX_STACK_DEPTH];
    frames[..stack.len()].copy_from_slice(stack);
    bytes_of(&AllocSample {
        header: RecordHeader {
            tag: tag::OBJECT_ALLOC,
            tgid: 1,
            ts_ns,
        },
        size: 64,
        slot_size: 64,
        g: 0,
        ptr,
        header_word: 0,
        goid: 1,
        class: memtrace_common::class::PROFILED,
        stack_len: stack.len() as u32,
        stack: frames,
    })
}

/// Stacks made of real return addresses of the binary, 20 frames deep, 200 distinct ones.
fn stacks(binary: &GoBinary) -> Vec<Vec<u64>> {
    let functions =
        binary.functions_where(|name| name.starts_with("main.") || name.starts_with("fmt."));
    let functions: Vec<_> = if functions.len() >= 4 {
        functions
    } else {
        binary
            .functions_where(|_| true)
            .into_iter()
            .take(64)
            .collect()
    };
    (0..200)
        .map(|i| {
            (0..20)
                .map(|depth| {
                    let f = &functions[(i * 7 + depth * 13) % functions.len()];
                    f.addr + 1 + (f.size / 2).min(8)
                })
                .collect()
        })
        .collect()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(
        args.next()
            .expect("usage: analysis_throughput <go-binary> [records]"),
    );
    let records: usize = args
        .next()
        .map_or(4_000_000, |n| n.parse().expect("a number"));
    let binary = Arc::new(GoBinary::open(&path).expect("a Go binary"));
    let stacks = stacks(&binary);

    // Pre-encode a stream: allocations of sampled objects, each freed ~1000 records later,
    // with a GC cycle every 20,000 records.
    let mut stream: Vec<Vec<u8>> = Vec::with_capacity(records);
    let mut live: std::collections::VecDeque<u64> = std::collections::VecDeque::new();
    let mut next_ptr = 0xc000_0000_0000u64;
    let mut cycle = 0u64;
    for i in 0..records {
        let ts_ns = 1_000_000_000 + i as u64 * 300;
        if i % 20_000 == 0 {
            cycle += 1;
            stream.push(bytes_of(&GcCycle {
                header: RecordHeader {
                    tag: tag::GC_CYCLE,
                    tgid: 1,
                    ts_ns,
                },
                cycle,
                flags: 1,
                ..GcCycle::default()
            }));
        } else if live.len() > 1000 && i % 2 == 0 {
            let ptr = live.pop_front().expect("not empty");
            stream.push(bytes_of(&ObjectFree {
                header: RecordHeader {
                    tag: tag::OBJECT_FREE,
                    tgid: 1,
                    ts_ns,
                },
                ptr,
                size: 64,
            }));
        } else {
            next_ptr += 64;
            live.push_back(next_ptr);
            stream.push(object_alloc(next_ptr, ts_ns, &stacks[i % stacks.len()]));
        }
    }

    let symbolizer = Symbolizer::new(binary.clone(), path.clone());
    let mut analysis = Analysis::new(
        symbolizer,
        Sampling::HeapProfiler {
            rate_bytes: 512 * 1024,
        },
    );
    let started = Instant::now();
    for record in &stream {
        analysis.record(record, 0);
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "replay: {} records in {:.3} s on one core: {:.2} M records/s ({} sites, {} live)",
        stream.len(),
        elapsed,
        stream.len() as f64 / elapsed / 1e6,
        analysis.sites().len(),
        analysis.live_tracked()
    );
    drop(stream);

    // Memory per tracked live object: allocate a million more, never freed.
    let live_objects = 1_000_000u64;
    let before = HEAP_BYTES.load(Ordering::Relaxed);
    for i in 0..live_objects {
        next_ptr += 64;
        let record = object_alloc(next_ptr, 2_000_000_000 + i, &stacks[0]);
        analysis.record(&record, 0);
    }
    let after = HEAP_BYTES.load(Ordering::Relaxed);
    println!(
        "memory: {:.1} bytes of heap per tracked live object ({} objects, {:.1} MiB)",
        (after - before) as f64 / live_objects as f64,
        live_objects,
        (after - before) as f64 / (1 << 20) as f64
    );
}

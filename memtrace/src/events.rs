//! Decoding ring-buffer records into events.
//!
//! Live sessions decode records straight from the ring buffer; recorded traces will decode the
//! same bytes from a file. Both feed the same analysis.

use std::sync::Arc;

use memtrace_common::{
    tag, AllocSample, GcCycle, GoroutineCreate, ObjectFree, RecordHeader, NUM_SIZE_CLASSES,
};

use crate::runtime::class_size;

/// One decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A stack sample of `--all-allocs`.
    Alloc(AllocEvent),
    /// An object the runtime's heap profiler sampled (its address is known).
    ObjectAlloc(AllocEvent),
    /// A sampled object's death.
    ObjectFree(FreeEvent),
    Gc(GcEvent),
    /// The runtime finished initializing.
    RuntimeReady {
        pid: u32,
        ts_ns: u64,
    },
    GoroutineCreate(GoroutineCreateEvent),
    /// The states of the target's goroutines, read from its memory (not from the ring buffer).
    GoroutineScan(GoroutineScan),
}

impl Event {
    /// When it happened (CLOCK_MONOTONIC ns).
    pub fn ts_ns(&self) -> u64 {
        match self {
            Event::Alloc(e) | Event::ObjectAlloc(e) => e.ts_ns,
            Event::ObjectFree(e) => e.ts_ns,
            Event::Gc(e) => e.ts_ns,
            Event::RuntimeReady { ts_ns, .. } => *ts_ns,
            Event::GoroutineCreate(e) => e.ts_ns,
            Event::GoroutineScan(e) => e.ts_ns,
        }
    }
}

/// A goroutine was created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoroutineCreateEvent {
    pub pid: u32,
    pub ts_ns: u64,
    pub goid: u64,
    pub parent_goid: u64,
    /// Address of its `g`.
    pub g: u64,
    /// Runtime address of the function it runs.
    pub start_pc: u64,
    /// Runtime return address of the `go` statement's call.
    pub go_pc: u64,
    /// Where the kernel keeps the creator's stack (`GOROUTINE_STACKS`); `None` when it was not
    /// captured. The session fills `stack` from it.
    pub stack_id: Option<u32>,
    /// The creator's stack (runtime addresses, innermost first); `None` when not captured.
    /// Shared: every goroutine of a `go` statement has the same one.
    pub stack: Option<Arc<[u64]>>,
}

/// One goroutine as a scan of the runtime's goroutine list found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoroutineState {
    pub goid: u64,
    pub g: u64,
    /// `g.atomicstatus` without the `_Gscan` bit.
    pub status: u32,
    /// `g.waitreason` (an index into the runtime's `waitReasonStrings`).
    pub wait_reason: u8,
    pub parent_goid: u64,
    pub start_pc: u64,
    pub go_pc: u64,
}

/// The goroutines of a target at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoroutineScan {
    pub pid: u32,
    pub ts_ns: u64,
    /// Every `g` read: from the runtime's list of all goroutines when the binary has symbols,
    /// plus those memtrace saw created. Dead ones included (their `g` is free for reuse).
    pub goroutines: Vec<GoroutineState>,
    /// Whether the runtime's whole list was read (else only goroutines seen created).
    pub complete: bool,
}

/// The sweeper freed a sampled object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreeEvent {
    pub pid: u32,
    pub ts_ns: u64,
    pub ptr: u64,
    pub size: u64,
}

/// A sampled allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocEvent {
    pub pid: u32,
    pub ts_ns: u64,
    pub size: u64,
    pub slot_size: u64,
    pub class: u32,
    pub goid: u64,
    /// The object's address (heap-profiler samples only; 0 otherwise).
    pub ptr: u64,
    /// The word before the object (heap-profiler samples over 512 bytes; 0 otherwise).
    pub header_word: u64,
    /// Runtime addresses, innermost first; empty when the stack could not be captured.
    pub stack: Vec<u64>,
}

/// A completed GC cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcEvent {
    pub pid: u32,
    pub ts_ns: u64,
    /// `work.cycles`, when the binary's symbols let us read it.
    pub cycle: Option<u64>,
    pub heap_start: u64,
    pub heap_end: u64,
    pub heap_marked: u64,
    pub heap_goal: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is too short")]
    Truncated(usize),
    #[error("unknown record tag {0}")]
    UnknownTag(u32),
}

/// Reads a `T` from the start of `bytes`, if it is long enough.
fn read_record<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: the length was checked; `T` is one of the #[repr(C)] integer-only records of
    // memtrace-common, valid for any bit pattern; read_unaligned copes with any alignment.
    Some(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

impl Event {
    pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
        let header: RecordHeader = read_record(bytes).ok_or(DecodeError::Truncated(bytes.len()))?;
        match header.tag {
            tag::ALLOC_SAMPLE | tag::OBJECT_ALLOC => {
                let sample: AllocSample =
                    read_record(bytes).ok_or(DecodeError::Truncated(bytes.len()))?;
                let depth = (sample.stack_len as usize).min(sample.stack.len());
                // The probe leaves small objects' slot size to us: it is their class's size.
                let slot_size = if (sample.class as usize) < NUM_SIZE_CLASSES {
                    class_size(sample.class)
                } else {
                    sample.slot_size
                };
                let event = AllocEvent {
                    pid: header.tgid,
                    ts_ns: header.ts_ns,
                    size: sample.size,
                    slot_size,
                    class: sample.class,
                    goid: sample.goid,
                    ptr: sample.ptr,
                    header_word: sample.header_word,
                    stack: sample.stack[..depth].to_vec(),
                };
                Ok(if header.tag == tag::OBJECT_ALLOC {
                    Event::ObjectAlloc(event)
                } else {
                    Event::Alloc(event)
                })
            }
            tag::OBJECT_FREE => {
                let free: ObjectFree =
                    read_record(bytes).ok_or(DecodeError::Truncated(bytes.len()))?;
                Ok(Event::ObjectFree(FreeEvent {
                    pid: header.tgid,
                    ts_ns: header.ts_ns,
                    ptr: free.ptr,
                    size: free.size,
                }))
            }
            tag::RUNTIME_READY => Ok(Event::RuntimeReady {
                pid: header.tgid,
                ts_ns: header.ts_ns,
            }),
            tag::GC_CYCLE => {
                let cycle: GcCycle =
                    read_record(bytes).ok_or(DecodeError::Truncated(bytes.len()))?;
                Ok(Event::Gc(GcEvent {
                    pid: header.tgid,
                    ts_ns: header.ts_ns,
                    cycle: (cycle.flags != 0 && cycle.cycle != 0).then_some(cycle.cycle),
                    heap_start: cycle.heap_start,
                    heap_end: cycle.heap_end,
                    heap_marked: cycle.heap_marked,
                    heap_goal: cycle.heap_goal,
                }))
            }
            tag::GOROUTINE_CREATE => {
                let created: GoroutineCreate =
                    read_record(bytes).ok_or(DecodeError::Truncated(bytes.len()))?;
                Ok(Event::GoroutineCreate(GoroutineCreateEvent {
                    pid: header.tgid,
                    ts_ns: header.ts_ns,
                    goid: created.goid,
                    parent_goid: created.parent_goid,
                    g: created.g,
                    start_pc: created.start_pc,
                    go_pc: created.go_pc,
                    stack_id: u32::try_from(created.stack_id).ok(),
                    stack: None,
                }))
            }
            other => Err(DecodeError::UnknownTag(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use memtrace_common::MAX_STACK_DEPTH;

    use super::*;

    fn bytes_of<T>(value: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain #[repr(C)] value.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    #[test]
    fn decodes_an_alloc_sample() {
        let mut stack = [0u64; MAX_STACK_DEPTH];
        stack[..3].copy_from_slice(&[0x401000, 0x402000, 0x403000]);
        let sample = AllocSample {
            header: RecordHeader {
                tag: tag::ALLOC_SAMPLE,
                tgid: 42,
                ts_ns: 7,
            },
            size: 100,
            slot_size: 112,
            g: 0xc000001000,
            ptr: 0,
            header_word: 0,
            goid: 9,
            class: 9,
            stack_len: 3,
            stack,
        };
        let Event::Alloc(event) = Event::decode(&bytes_of(&sample)).unwrap() else {
            panic!("not an alloc event");
        };
        assert_eq!(event.pid, 42);
        assert_eq!(event.stack, vec![0x401000, 0x402000, 0x403000]);
        // Class 9 is 112 bytes.
        assert_eq!((event.size, event.slot_size, event.goid), (100, 112, 9));
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        assert_eq!(Event::decode(&[1, 0, 0]), Err(DecodeError::Truncated(3)));
        let header = RecordHeader {
            tag: 99,
            tgid: 1,
            ts_ns: 0,
        };
        assert_eq!(
            Event::decode(&bytes_of(&header)),
            Err(DecodeError::UnknownTag(99))
        );
        let header = RecordHeader {
            tag: tag::ALLOC_SAMPLE,
            tgid: 1,
            ts_ns: 0,
        };
        assert_eq!(
            Event::decode(&bytes_of(&header)),
            Err(DecodeError::Truncated(16))
        );
    }

    #[test]
    fn decodes_goroutine_creations() {
        let created = GoroutineCreate {
            header: RecordHeader {
                tag: tag::GOROUTINE_CREATE,
                tgid: 7,
                ts_ns: 11,
            },
            goid: 35,
            parent_goid: 1,
            g: 0xc000007000,
            start_pc: 0x480000,
            go_pc: 0x481234,
            stack_id: 3,
            _pad: 0,
        };
        let Event::GoroutineCreate(event) = Event::decode(&bytes_of(&created)).unwrap() else {
            panic!("not a creation");
        };
        assert_eq!(
            (event.goid, event.parent_goid, event.start_pc, event.go_pc),
            (35, 1, 0x480000, 0x481234)
        );
        assert_eq!(event.stack_id, Some(3));
        let not_captured = GoroutineCreate {
            stack_id: -14,
            ..created
        };
        let Event::GoroutineCreate(event) = Event::decode(&bytes_of(&not_captured)).unwrap() else {
            panic!("not a creation");
        };
        assert_eq!(event.stack_id, None);
        assert_eq!(
            Event::decode(&bytes_of(&created)[..40]),
            Err(DecodeError::Truncated(40))
        );
    }

    #[test]
    fn stack_len_is_clamped() {
        let sample = AllocSample {
            header: RecordHeader {
                tag: tag::ALLOC_SAMPLE,
                tgid: 1,
                ts_ns: 0,
            },
            size: 8,
            slot_size: 8,
            g: 0,
            ptr: 0,
            header_word: 0,
            goid: 0,
            class: 1,
            stack_len: 10_000,
            stack: [1; MAX_STACK_DEPTH],
        };
        let Event::Alloc(event) = Event::decode(&bytes_of(&sample)).unwrap() else {
            panic!()
        };
        assert_eq!(event.stack.len(), MAX_STACK_DEPTH);
    }
}

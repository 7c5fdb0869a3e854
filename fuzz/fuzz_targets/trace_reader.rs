//! Any bytes as a trace file, read as `memtrace report FILE` reads it: the header, the chunk
//! framing, resynchronisation after damage, decompression, records, the analysis and the
//! report. Nothing may panic; damage is reported and skipped.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memtrace_fuzz::{replay_and_render, seed_mode, Target};

fuzz_target!(init: seed_mode(Target::TraceReader), |data: &[u8]| {
    let _ = replay_and_render(data);
});

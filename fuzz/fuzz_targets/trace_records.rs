//! Records wrapped into a valid trace (header, frames, zstd, checksums: see
//! `memtrace_fuzz::build_trace`), so that mutations reach the decoder, the analysis and the
//! report instead of stopping at a checksum; some segments are framed with a defect or left
//! unframed on purpose. Besides not panicking, a trace whose chunks are all valid must be
//! read whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memtrace_fuzz::{check_records, seed_mode, Target};

fuzz_target!(init: seed_mode(Target::TraceRecords), |data: &[u8]| {
    check_records(data);
});

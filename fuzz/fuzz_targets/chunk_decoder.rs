//! The record decoder on the raw bytes of one chunk (what zstd hands it). Besides not
//! panicking: what decodes must encode and decode again to the same records, since the
//! writer and the reader share the format.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memtrace::trace::codec::{ChunkDecoder, ChunkEncoder, Entry};
use memtrace_fuzz::{seed_mode, Target};

fn decode(bytes: &[u8]) -> (Vec<Entry>, bool) {
    let mut decoder = ChunkDecoder::new(bytes);
    let mut entries = Vec::new();
    while let Some(entry) = decoder.next_entry() {
        match entry {
            Ok(entry) => entries.push(entry),
            // The decoder stops at the first bad record.
            Err(_) => return (entries, false),
        }
    }
    (entries, true)
}

/// Equal, except that the end record's duration travels as JSON, whose float parsing may be
/// one unit in the last place off.
fn same(a: &Entry, b: &Entry) -> bool {
    match (a, b) {
        (Entry::End(a), Entry::End(b)) => {
            let close = a.duration_s == b.duration_s
                || (a.duration_s - b.duration_s).abs() <= a.duration_s.abs() * 1e-15;
            let mut b = b.clone();
            b.duration_s = a.duration_s;
            close && *a == b
        }
        _ => a == b,
    }
}

fuzz_target!(init: seed_mode(Target::ChunkDecoder), |data: &[u8]| {
    let (entries, _) = decode(data);
    let mut encoder = ChunkEncoder::default();
    for entry in &entries {
        encoder.entry(entry);
    }
    let (bytes, records) = encoder.take();
    assert_eq!(records as usize, entries.len());
    let (again, complete) = decode(&bytes);
    assert!(complete, "re-encoded records do not decode: {entries:?}");
    assert_eq!(again.len(), entries.len());
    for (a, b) in entries.iter().zip(&again) {
        assert!(same(a, b), "{a:?} re-encoded decodes as {b:?}");
    }
});

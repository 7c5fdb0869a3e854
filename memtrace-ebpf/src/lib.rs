#![no_std]
// Empty on purpose: the probes are in the `memtrace` binary (src/main.rs). This library target
// lets memtrace list the crate as a build-dependency, so that cargo rebuilds memtrace when the
// probes change.

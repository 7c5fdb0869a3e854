//! Test support for memtrace: the Go test programs under `tests/go/` and the fixtures that
//! build them, find the toolchains and decide whether BPF tests can run.
//!
//! The end-to-end tests themselves live in `tests/tests/`.

pub mod fixtures;

#[cfg(test)]
mod go_program_tests;

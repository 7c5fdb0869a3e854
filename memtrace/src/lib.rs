//! memtrace: an eBPF allocation tracer for Go processes.
//!
//! The CLI in `main.rs` is a thin layer over this library: [`session::run`] attaches to (or
//! starts) a Go process, [`analysis`] turns events into per-site statistics and
//! [`report::Report`] renders them.

pub mod agent;
pub mod analysis;
pub mod binary;
pub mod bpf;
pub mod diff;
pub mod error;
pub mod events;
pub mod export;
pub mod goroutines;
pub mod memrate;
pub mod probes;
pub mod report;
pub mod runtime;
pub mod session;
pub mod symbolize;
pub mod target;
pub mod trace;

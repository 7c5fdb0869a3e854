//! Errors a user can run into, each with its own exit code.

use std::{io, path::PathBuf};

use crate::binary::BinaryError;

/// Exit codes of the memtrace binary. In launch mode a successful run exits with the target's
/// own code instead.
pub mod exit_code {
    /// Anything not listed below (a bug, an I/O error writing the report, ...).
    pub const FAILURE: i32 = 1;
    /// Bad command line (clap's own code).
    pub const USAGE: i32 = 2;
    pub const NO_SUCH_PROCESS: i32 = 3;
    pub const NOT_GO: i32 = 4;
    pub const UNSUPPORTED_GO: i32 = 5;
    pub const PERMISSION_DENIED: i32 = 6;
    pub const CORRUPT_TRACE: i32 = 7;
    pub const BPF_UNAVAILABLE: i32 = 8;
    pub const LAUNCH_FAILED: i32 = 9;
    /// `--read-only` on a process whose heap profiler is off.
    pub const NOT_SAMPLING: i32 = 10;
    /// `memtrace diff`: a gate threshold was exceeded.
    pub const REGRESSION: i32 = 11;
    /// `memtrace agent`: the HTTP address cannot be listened on.
    pub const CANNOT_LISTEN: i32 = 12;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no process with pid {0}")]
    NoSuchProcess(u32),
    #[error("permission denied: {0} (run memtrace as root, or with CAP_SYS_ADMIN and CAP_SYS_PTRACE; uprobes need CAP_SYS_ADMIN since Linux 6.16)")]
    PermissionDenied(String),
    #[error("{0} is not a Go program")]
    NotGo(PathBuf),
    #[error("{path} was built with {version}; memtrace supports Go 1.{oldest} to 1.{newest}")]
    UnsupportedGo {
        path: PathBuf,
        version: String,
        oldest: u32,
        newest: u32,
    },
    #[error("{path}: {source}")]
    Binary {
        path: PathBuf,
        #[source]
        source: BinaryError,
    },
    #[error("{0} has none of the Go runtime functions memtrace probes (runtime.mallocgc and its helpers)")]
    NoProbeSites(PathBuf),
    #[error("{path} has no {function}, which sampled mode needs")]
    MissingRuntimeFunction { path: PathBuf, function: String },
    #[error("pid {0} does not sample its heap (runtime.MemProfileRate is 0) and --read-only forbids memtrace to turn sampling on; drop --read-only or use --all-allocs")]
    NotSampling(u32),
    #[error("cannot start {command}: {source}")]
    Launch {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {reason}")]
    CorruptTrace { path: PathBuf, reason: String },
    #[error("{0}")]
    Listen(String),
    #[error("eBPF is unavailable: {0}")]
    BpfUnavailable(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::NoSuchProcess(_) => exit_code::NO_SUCH_PROCESS,
            Error::PermissionDenied(_) => exit_code::PERMISSION_DENIED,
            Error::NotGo(_) => exit_code::NOT_GO,
            Error::UnsupportedGo { .. }
            | Error::NoProbeSites(_)
            | Error::MissingRuntimeFunction { .. } => exit_code::UNSUPPORTED_GO,
            Error::NotSampling(_) => exit_code::NOT_SAMPLING,
            Error::Binary { .. } => exit_code::NOT_GO,
            Error::Launch { .. } => exit_code::LAUNCH_FAILED,
            Error::BpfUnavailable(_) => exit_code::BPF_UNAVAILABLE,
            Error::Listen(_) => exit_code::CANNOT_LISTEN,
            Error::CorruptTrace { .. } => exit_code::CORRUPT_TRACE,
            Error::Io { .. } => exit_code::FAILURE,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

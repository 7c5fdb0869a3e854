//! Setting the target's `runtime.MemProfileRate`, and putting it back.
//!
//! Unless runtime/pprof's memory profile is linked in, the runtime forces the rate to 0 at
//! start (and GODEBUG cannot override that), so the heap profiler memtrace rides on is off. We
//! write the rate into the process and restore the original value when we detach: normally, on
//! Ctrl-C or SIGTERM, on errors (the guard restores on drop), and not at all if the process is
//! gone.

use std::io;

use crate::error::{Error, Result};

/// Reads or writes one `int` (8 bytes) in another process.
fn transfer(pid: u32, addr: u64, value: &mut i64, write: bool) -> io::Result<()> {
    let local = libc::iovec {
        iov_base: (value as *mut i64).cast(),
        iov_len: 8,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: 8,
    };
    // SAFETY: both iovecs describe 8 valid bytes: `value` here, and an address the kernel
    // checks in the target (a bad one makes the call fail, it cannot corrupt us).
    let done = unsafe {
        if write {
            libc::process_vm_writev(pid as libc::pid_t, &local, 1, &remote, 1, 0)
        } else {
            libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0)
        }
    };
    match done {
        8 => Ok(()),
        -1 => Err(io::Error::last_os_error()),
        _ => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "short transfer",
        )),
    }
}

pub fn read_rate(pid: u32, addr: u64) -> Result<i64> {
    let mut value = 0;
    transfer(pid, addr, &mut value, false).map_err(|e| rate_error(pid, e))?;
    Ok(value)
}

fn rate_error(pid: u32, error: io::Error) -> Error {
    match error.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => Error::PermissionDenied(format!(
            "writing runtime.MemProfileRate of pid {pid} needs CAP_SYS_PTRACE (or use --read-only)"
        )),
        Some(libc::ESRCH) => Error::NoSuchProcess(pid),
        _ => Error::io(format!("runtime.MemProfileRate of pid {pid}"), error),
    }
}

/// A rate memtrace wrote; restores the original value when dropped.
pub struct RateOverride {
    pid: u32,
    addr: u64,
    original: i64,
    written: i64,
    restored: bool,
}

impl RateOverride {
    /// Writes `rate` at `addr` (the relocated address of `runtime.MemProfileRate`).
    pub fn apply(pid: u32, addr: u64, rate: i64) -> Result<RateOverride> {
        let original = read_rate(pid, addr)?;
        let mut value = rate;
        transfer(pid, addr, &mut value, true).map_err(|e| rate_error(pid, e))?;
        log::info!("pid {pid}: runtime.MemProfileRate {original} -> {rate}");
        Ok(RateOverride {
            pid,
            addr,
            original,
            written: rate,
            restored: false,
        })
    }

    pub fn original(&self) -> i64 {
        self.original
    }

    pub fn written(&self) -> i64 {
        self.written
    }

    /// Writes another rate over the one memtrace wrote (the agent's budget). Returns false,
    /// writing nothing, when the program has changed the rate itself since.
    pub fn rewrite(&mut self, rate: i64) -> Result<bool> {
        let current = read_rate(self.pid, self.addr)?;
        if current != self.written || self.restored {
            return Ok(false);
        }
        let mut value = rate;
        transfer(self.pid, self.addr, &mut value, true).map_err(|e| rate_error(self.pid, e))?;
        log::info!(
            "pid {}: runtime.MemProfileRate {current} -> {rate}",
            self.pid
        );
        self.written = rate;
        Ok(true)
    }

    /// Gives up the override without writing: the process exited or ran exec, so the
    /// address no longer holds its rate (another program may live there now).
    pub fn forget(&mut self) {
        self.restored = true;
    }

    /// Puts the original value back, unless the program changed the rate itself since (then
    /// its own value stays). Returns whether the target now has its original rate.
    pub fn restore(&mut self) -> bool {
        if self.restored {
            return true;
        }
        self.restored = true;
        match read_rate(self.pid, self.addr) {
            Ok(current) if current == self.written => {
                let mut value = self.original;
                match transfer(self.pid, self.addr, &mut value, true) {
                    Ok(()) => {
                        log::info!(
                            "pid {}: runtime.MemProfileRate restored to {}",
                            self.pid,
                            self.original
                        );
                        true
                    }
                    Err(error) => {
                        log::warn!(
                            "pid {}: cannot restore runtime.MemProfileRate: {error}",
                            self.pid
                        );
                        false
                    }
                }
            }
            Ok(current) => {
                log::warn!(
                    "pid {}: runtime.MemProfileRate is {current}, set by the program itself; left as is",
                    self.pid
                );
                false
            }
            // The process is gone: nothing to restore.
            Err(_) => true,
        }
    }
}

impl Drop for RateOverride {
    fn drop(&mut self) {
        self.restore();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_restores_in_a_live_process() {
        // Our own process is a fine target: process_vm_writev to self needs no privilege.
        let target = Box::new(4096i64);
        let addr = &*target as *const i64 as u64;
        let pid = std::process::id();
        let mut guard = RateOverride::apply(pid, addr, 512 * 1024).unwrap();
        assert_eq!(guard.original(), 4096);
        // SAFETY: reading our own boxed value that another "process" (us) wrote.
        assert_eq!(unsafe { std::ptr::read_volatile(&*target) }, 512 * 1024);
        assert!(guard.restore());
        assert_eq!(unsafe { std::ptr::read_volatile(&*target) }, 4096);
    }

    #[test]
    fn rewrites_and_still_restores_the_original() {
        let target = Box::new(0i64);
        let addr = &*target as *const i64 as u64;
        let mut guard = RateOverride::apply(std::process::id(), addr, 1000).unwrap();
        assert!(guard.rewrite(4000).unwrap());
        // SAFETY: reading our own boxed value.
        assert_eq!(unsafe { std::ptr::read_volatile(&*target) }, 4000);
        assert_eq!(guard.written(), 4000);
        let mut program_sets = 7i64;
        transfer(std::process::id(), addr, &mut program_sets, true).unwrap();
        assert!(!guard.rewrite(8000).unwrap());
        assert_eq!(unsafe { std::ptr::read_volatile(&*target) }, 7);
        program_sets = 4000;
        transfer(std::process::id(), addr, &mut program_sets, true).unwrap();
        assert!(guard.restore());
        assert_eq!(unsafe { std::ptr::read_volatile(&*target) }, 0);
    }

    #[test]
    fn leaves_a_rate_the_program_changed() {
        let target = Box::new(0i64);
        let addr = &*target as *const i64 as u64;
        let mut guard = RateOverride::apply(std::process::id(), addr, 1000).unwrap();
        let mut program_sets = 7i64;
        transfer(std::process::id(), addr, &mut program_sets, true).unwrap();
        assert!(!guard.restore());
        assert_eq!(unsafe { std::ptr::read_volatile(&*target) }, 7);
    }
}

//! Reading the target's goroutines from its memory: the runtime's list of all goroutines
//! (`runtime.allgs`) and the fields of each `g`, with `process_vm_readv`. Nothing is written
//! and the target is not stopped; a `g` that changes while it is read is read again at the next
//! scan.

use std::io;

use crate::{
    binary::GoBinary,
    events::{GoroutineScan, GoroutineState},
    runtime::{locate_allgs, locate_wait_reason_strings, RuntimeLayout},
};

/// `_Gscan`: set on top of a status while the GC scans the goroutine's stack.
const STATUS_SCAN_BIT: u32 = 0x1000;
/// Most iovecs one `process_vm_readv` takes (`IOV_MAX`).
const MAX_IOVECS: usize = 1024;
/// More goroutines than this in `allgs` means the length was misread.
const MAX_GOROUTINES: u64 = 50_000_000;

/// Reads `remote` ranges of process `pid` into `local` buffers, one `process_vm_readv` per
/// [`MAX_IOVECS`]. Returns which ranges were read in full: the kernel stops at the first range
/// it cannot read, so the rest of a batch is retried one by one.
fn read_ranges(pid: u32, remote: &[(u64, usize)], local: &mut [u8]) -> io::Result<Vec<bool>> {
    let mut read = vec![false; remote.len()];
    let mut offset = 0;
    let mut start = 0;
    while start < remote.len() {
        let end = (start + MAX_IOVECS).min(remote.len());
        let batch = &remote[start..end];
        let batch_bytes: usize = batch.iter().map(|r| r.1).sum();
        let done = read_batch(pid, batch, &mut local[offset..offset + batch_bytes])?;
        let mut consumed = 0;
        for (index, &(_, len)) in batch.iter().enumerate() {
            if consumed + len <= done {
                read[start + index] = true;
                consumed += len;
            } else {
                // Retry the ones after the failed range individually.
                let mut at = offset + consumed + len;
                for (later, &(addr, len)) in batch.iter().enumerate().skip(index + 1) {
                    read[start + later] =
                        read_batch(pid, &[(addr, len)], &mut local[at..at + len])? == len;
                    at += len;
                }
                break;
            }
        }
        offset += batch_bytes;
        start = end;
    }
    Ok(read)
}

/// One `process_vm_readv`; returns the bytes read. A process that is gone is an error; an
/// unreadable address only shortens the read.
fn read_batch(pid: u32, remote: &[(u64, usize)], local: &mut [u8]) -> io::Result<usize> {
    let local_iov = libc::iovec {
        iov_base: local.as_mut_ptr().cast(),
        iov_len: local.len(),
    };
    let remote_iov: Vec<libc::iovec> = remote
        .iter()
        .map(|&(addr, len)| libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: len,
        })
        .collect();
    // SAFETY: `local_iov` covers `local`, which is exactly as long as the remote ranges
    // together; remote addresses are checked by the kernel and only make the call fail.
    let done = unsafe {
        libc::process_vm_readv(
            pid as libc::pid_t,
            &local_iov,
            1,
            remote_iov.as_ptr(),
            remote_iov.len() as libc::c_ulong,
            0,
        )
    };
    if done < 0 {
        let error = io::Error::last_os_error();
        return match error.raw_os_error() {
            Some(libc::EFAULT) => Ok(0),
            _ => Err(error),
        };
    }
    Ok(done as usize)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// Reads goroutines out of one process.
pub struct GoroutineReader {
    pid: u32,
    /// Runtime address of `runtime.allgs` (a `[]*g`), when it could be found.
    allgs: Option<u64>,
    /// Runtime address and length of `runtime.waitReasonStrings` (a `[N]string`).
    wait_reason_strings: Option<(u64, u64)>,
    layout: RuntimeLayout,
    /// The part of `g` that is read: from the lowest to the end of the highest field used.
    window_start: u32,
    window_len: usize,
}

impl GoroutineReader {
    /// `load_bias` relocates the symbols of a PIE binary.
    pub fn new(pid: u32, binary: &GoBinary, layout: RuntimeLayout, load_bias: u64) -> Self {
        let fields = [
            layout.g_goid,
            layout.g_atomicstatus,
            layout.g_waitreason,
            layout.g_parent_goid,
            layout.g_gopc,
            layout.g_startpc,
        ];
        let window_start = fields.iter().copied().min().unwrap_or(0);
        let window_end = fields.iter().copied().max().unwrap_or(0) + 8;
        GoroutineReader {
            pid,
            allgs: locate_allgs(binary).map(|addr| addr.wrapping_add(load_bias)),
            wait_reason_strings: locate_wait_reason_strings(binary)
                .map(|(addr, count)| (addr.wrapping_add(load_bias), count)),
            layout,
            window_start,
            window_len: (window_end - window_start) as usize,
        }
    }

    /// The runtime's names of its wait reasons, indexed by `g.waitreason`; `None` when they
    /// could not be found or a name did not read (before a PIE binary is relocated).
    pub fn wait_reasons(&self) -> Option<Vec<String>> {
        let (addr, count) = self.wait_reason_strings.filter(|&(_, n)| n <= 256)?;
        let mut headers = vec![0u8; count as usize * 16];
        if !matches!(
            read_ranges(self.pid, &[(addr, headers.len())], &mut headers).as_deref(),
            Ok([true])
        ) {
            return None;
        }
        (0..count as usize)
            .map(|index| {
                let (ptr, len) = (
                    u64_at(&headers, index * 16),
                    u64_at(&headers, index * 16 + 8),
                );
                if len == 0 {
                    // waitReasonZero.
                    return Some(String::new());
                }
                if len > 256 {
                    return None;
                }
                let mut text = vec![0u8; len as usize];
                match read_ranges(self.pid, &[(ptr, text.len())], &mut text).as_deref() {
                    Ok([true]) => Some(String::from_utf8_lossy(&text).into_owned()),
                    _ => None,
                }
            })
            .collect()
    }

    /// Reads every goroutine of the runtime's list, plus the `extra` goroutines (`g`
    /// addresses memtrace saw created; the only ones read when the list was not found).
    pub fn scan(
        &self,
        ts_ns: u64,
        extra: impl IntoIterator<Item = u64>,
    ) -> io::Result<GoroutineScan> {
        let mut gs = Vec::new();
        let mut complete = false;
        if let Some(allgs) = self.allgs {
            let mut header = [0u8; 16];
            if read_ranges(self.pid, &[(allgs, 16)], &mut header)?[0] {
                let (array, len) = (u64_at(&header, 0), u64_at(&header, 8));
                if len <= MAX_GOROUTINES {
                    let mut pointers = vec![0u8; len as usize * 8];
                    if len == 0
                        || read_ranges(self.pid, &[(array, pointers.len())], &mut pointers)?[0]
                    {
                        gs.extend(pointers.chunks_exact(8).map(|p| u64_at(p, 0)));
                        complete = true;
                    }
                }
            }
        }
        gs.extend(extra);
        gs.retain(|&g| g != 0);
        gs.sort_unstable();
        gs.dedup();

        let ranges: Vec<(u64, usize)> = gs
            .iter()
            .map(|&g| (g + u64::from(self.window_start), self.window_len))
            .collect();
        let mut bytes = vec![0u8; ranges.len() * self.window_len];
        let read = read_ranges(self.pid, &ranges, &mut bytes)?;
        let field = |f: u32| (f - self.window_start) as usize;
        let layout = &self.layout;
        let goroutines = gs
            .iter()
            .zip(bytes.chunks_exact(self.window_len))
            .zip(read)
            .filter(|(_, read)| *read)
            .map(|((&g, window), _)| GoroutineState {
                goid: u64_at(window, field(layout.g_goid)),
                g,
                status: u32_at(window, field(layout.g_atomicstatus)) & !STATUS_SCAN_BIT,
                wait_reason: window[field(layout.g_waitreason)],
                parent_goid: u64_at(window, field(layout.g_parent_goid)),
                start_pc: u64_at(window, field(layout.g_startpc)),
                go_pc: u64_at(window, field(layout.g_gopc)),
            })
            .collect();
        Ok(GoroutineScan {
            pid: self.pid,
            ts_ns,
            goroutines,
            complete,
        })
    }
}

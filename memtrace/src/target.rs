//! The traced process: finding its binary, checking it is a Go program memtrace understands,
//! and starting one under tracing.

use std::{
    ffi::{CString, OsStr, OsString},
    fs::File,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
};

use crate::{
    binary::{BinaryError, GoBinary},
    error::{Error, Result},
    runtime::{layout_for, newest_supported_minor, RuntimeLayout, OLDEST_SUPPORTED_MINOR},
};

/// A Go process memtrace can trace.
pub struct Target {
    pub pid: u32,
    /// The executable as the process sees it (for reports).
    pub exe: PathBuf,
    pub binary: Arc<GoBinary>,
    pub layout: RuntimeLayout,
    /// Path the kernel resolves to the executable's inode, for attaching uprobes.
    pub attach_path: PathBuf,
    /// An open handle on the executable, so that symbols stay readable after the process and
    /// even its file are gone.
    exe_file: File,
    load_bias: OnceLock<u64>,
}

fn map_io(pid: u32, what: &str) -> impl FnOnce(io::Error) -> Error + '_ {
    move |e| match e.kind() {
        io::ErrorKind::NotFound => Error::NoSuchProcess(pid),
        io::ErrorKind::PermissionDenied => Error::PermissionDenied(format!("{what} of pid {pid}")),
        _ => Error::io(format!("{what} of pid {pid}"), e),
    }
}

/// Which file a process runs: processes with equal keys run the same binary (and share one
/// set of probes in the node agent). Size and modification time guard against a deleted
/// file's inode number being reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BinaryKey {
    pub dev: u64,
    pub ino: u64,
    size: u64,
    mtime_ns: i64,
}

/// A running process's executable, opened but not parsed yet.
pub struct OpenedExe {
    pub pid: u32,
    /// The path as the process sees it (inside its container, if any).
    pub exe: PathBuf,
    pub key: BinaryKey,
    link: PathBuf,
    file: File,
}

impl OpenedExe {
    pub fn of_pid(pid: u32) -> Result<OpenedExe> {
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        if pid == 0 || !proc_dir.exists() {
            return Err(Error::NoSuchProcess(pid));
        }
        let link = proc_dir.join("exe");
        let exe = std::fs::read_link(&link).map_err(map_io(pid, "reading the executable"))?;
        // Opening through /proc/PID/exe works for processes in other mount namespaces
        // (containers) and for deleted executables.
        let file = File::open(&link).map_err(map_io(pid, "opening the executable"))?;
        let metadata = file
            .metadata()
            .map_err(map_io(pid, "reading the executable"))?;
        let key = BinaryKey {
            dev: metadata.dev(),
            ino: metadata.ino(),
            size: metadata.size(),
            mtime_ns: metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec(),
        };
        Ok(OpenedExe {
            pid,
            exe,
            key,
            link,
            file,
        })
    }
}

impl OpenedExe {
    /// Whether the executable looks like a Go program, from its section names alone (reads
    /// a few KiB, not the file): the node agent sees every exec on the machine. An ELF file
    /// without section headers cannot be told apart this way and counts as maybe Go.
    pub fn may_be_go(&self) -> bool {
        use object::{Object, ObjectSection};

        let cache = object::ReadCache::new(&self.file);
        let Ok(elf) = object::File::parse(&cache) else {
            return false;
        };
        let mut sections = elf.sections().peekable();
        if sections.peek().is_none() {
            return true;
        }
        sections.any(|section| {
            matches!(
                section.name(),
                Ok(".go.buildinfo" | ".gopclntab" | ".note.go.buildid")
            )
        })
    }
}

impl Target {
    /// A running process.
    pub fn from_pid(pid: u32) -> Result<Target> {
        Target::from_opened(OpenedExe::of_pid(pid)?, None)
    }

    /// A running process whose executable is open; `same_binary` is the parsed binary and
    /// layout of another process that ran the same file (equal [`BinaryKey`]), shared instead
    /// of being read again.
    pub fn from_opened(
        opened: OpenedExe,
        same_binary: Option<(&Arc<GoBinary>, RuntimeLayout)>,
    ) -> Result<Target> {
        match same_binary {
            Some((binary, layout)) => Ok(Target {
                pid: opened.pid,
                exe: opened.exe,
                binary: binary.clone(),
                layout,
                attach_path: opened.link,
                exe_file: opened.file,
                load_bias: OnceLock::new(),
            }),
            None => Target::new(opened.pid, opened.exe, opened.link, opened.file),
        }
    }

    /// A binary about to be started as process `pid` (launch mode).
    pub fn from_launch(pid: u32, executable: &Path) -> Result<Target> {
        let exe_file = File::open(executable)
            .map_err(|e| Error::io(format!("opening {}", executable.display()), e))?;
        Target::new(
            pid,
            executable.to_path_buf(),
            executable.to_path_buf(),
            exe_file,
        )
    }

    fn new(pid: u32, exe: PathBuf, attach_path: PathBuf, exe_file: File) -> Result<Target> {
        let binary = open_go_binary(&exe, &exe_file)?;
        let version = binary.build_info().version;
        let table = layout_for(version).ok_or_else(|| Error::UnsupportedGo {
            path: exe.clone(),
            version: binary.build_info().go_version.clone(),
            oldest: OLDEST_SUPPORTED_MINOR,
            newest: newest_supported_minor(),
        })?;
        // The binary's own DWARF, when it has some, wins over the table.
        let (layout, corrected) = table.with_dwarf(&binary);
        if !corrected.is_empty() {
            log::info!(
                "{}: struct offsets from DWARF differ from the Go {} table: {}",
                exe.display(),
                binary.build_info().go_version,
                corrected.join(", ")
            );
        }
        Ok(Target {
            pid,
            exe,
            binary: Arc::new(binary),
            layout,
            attach_path,
            exe_file,
            load_bias: OnceLock::new(),
        })
    }

    /// Another handle on the executable (for symbols that outlive this process).
    pub fn exe_file(&self) -> io::Result<File> {
        self.exe_file.try_clone()
    }

    /// A path to the executable that stays valid while memtrace runs.
    pub fn symbol_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.exe_file.as_raw_fd()))
    }

    /// What the kernel added to the binary's virtual addresses (0 unless PIE), read from
    /// /proc/PID/maps once the process has mapped the binary. In launch mode the mapping can
    /// lag a moment behind `exec`, so this waits up to `timeout` for it; 0 if it never shows.
    pub fn load_bias_within(&self, timeout: std::time::Duration) -> u64 {
        if !self.binary.is_pie() {
            return 0;
        }
        if let Some(bias) = self.load_bias.get() {
            return *bias;
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(bias) = self.read_load_bias() {
                return *self.load_bias.get_or_init(|| bias);
            }
            if std::time::Instant::now() >= deadline {
                return 0;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// The load bias, once known (see [`Target::load_bias_within`]).
    pub fn load_bias(&self) -> u64 {
        self.load_bias_within(std::time::Duration::ZERO)
    }

    fn read_load_bias(&self) -> Option<u64> {
        let (segment_vaddr, segment_offset) = self.binary.first_exec_segment()?;
        let inode = self.exe_file.metadata().ok()?.ino();
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", self.pid)).ok()?;
        maps.lines().find_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
            let _device = fields.next()?;
            let map_inode: u64 = fields.next()?.parse().ok()?;
            if map_inode != inode || !perms.contains('x') {
                return None;
            }
            let start = u64::from_str_radix(range.split('-').next()?, 16).ok()?;
            Some((start - offset + segment_offset).wrapping_sub(segment_vaddr))
        })
    }
}

fn open_go_binary(exe: &Path, file: &File) -> Result<GoBinary> {
    let mut data = Vec::new();
    // From the start, wherever an earlier look (`OpenedExe::may_be_go`) left the offset.
    io::Seek::seek(&mut &*file, io::SeekFrom::Start(0))
        .and_then(|_| io::Read::read_to_end(&mut &*file, &mut data))
        .map_err(|e| Error::io(format!("reading {}", exe.display()), e))?;
    GoBinary::from_bytes(exe.to_path_buf(), data).map_err(|e| match e {
        BinaryError::NotElf | BinaryError::NotGo => Error::NotGo(exe.to_path_buf()),
        other => Error::Binary {
            path: exe.to_path_buf(),
            source: other,
        },
    })
}

/// A child process forked but held before `exec` until its probes are attached.
pub struct HeldChild {
    pub pid: u32,
    pub executable: PathBuf,
    release: Option<OwnedFd>,
    exec_error: OwnedFd,
}

/// Finds `program` like a shell does: as given when it contains a slash, else through PATH.
pub fn find_executable(program: &OsStr) -> Option<PathBuf> {
    let path = Path::new(program);
    if program.as_bytes().contains(&b'/') {
        return path.is_file().then(|| path.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(program))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
        })
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl HeldChild {
    /// Forks a child that will run `command` (argv[0] resolved through PATH) with memtrace's
    /// own environment, stdin, stdout and stderr, but only once [`HeldChild::release`] is
    /// called. Must be called before any other thread exists (before the async runtime), since
    /// the child of a multi-threaded fork may only make async-signal-safe calls.
    pub fn fork(command: &[OsString]) -> Result<HeldChild> {
        let program = command.first().ok_or_else(|| Error::Launch {
            command: String::new(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "no command given"),
        })?;
        let launch_error = |source| Error::Launch {
            command: program.to_string_lossy().into_owned(),
            source,
        };
        let executable = find_executable(program)
            .ok_or_else(|| launch_error(io::Error::from(io::ErrorKind::NotFound)))?;
        let c_executable = CString::new(executable.as_os_str().as_bytes())
            .map_err(|e| launch_error(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let c_args = command
            .iter()
            .map(|arg| CString::new(arg.as_bytes()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| launch_error(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let mut argv: Vec<*const libc::c_char> = c_args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());

        let (release_read, release_write) = pipe().map_err(launch_error)?;
        let (error_read, error_write) = pipe().map_err(launch_error)?;
        // SAFETY: see the function's contract; the child below only calls async-signal-safe
        // functions (close, read, execv, write, _exit) on memory prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(launch_error(io::Error::last_os_error()));
        }
        if pid == 0 {
            // SAFETY: async-signal-safe calls only, on fds and buffers that exist in the child.
            unsafe {
                libc::close(release_write.as_raw_fd());
                libc::close(error_read.as_raw_fd());
                let mut byte = 0u8;
                // Wait until the parent has attached; EOF means it died: do not run untraced.
                let n = libc::read(release_read.as_raw_fd(), (&raw mut byte).cast(), 1);
                if n == 1 {
                    libc::execv(c_executable.as_ptr(), argv.as_ptr());
                }
                let errno = *libc::__errno_location();
                libc::write(error_write.as_raw_fd(), (&raw const errno).cast(), 4);
                libc::_exit(127);
            }
        }
        drop(release_read);
        drop(error_write);
        Ok(HeldChild {
            pid: pid as u32,
            executable,
            release: Some(release_write),
            exec_error: error_read,
        })
    }

    /// Lets the child exec the program; returns once it has (or has failed to).
    pub fn release(&mut self) -> Result<()> {
        let launch_error = |source| Error::Launch {
            command: self.executable.display().to_string(),
            source,
        };
        if let Some(release) = self.release.take() {
            let byte = 1u8;
            // SAFETY: writing one byte from a valid buffer to an fd we own.
            if unsafe { libc::write(release.as_raw_fd(), (&raw const byte).cast(), 1) } != 1 {
                return Err(launch_error(io::Error::last_os_error()));
            }
        }
        let mut errno = 0i32;
        // The error pipe is close-on-exec: EOF means exec succeeded.
        // SAFETY: reading at most 4 bytes into an i32.
        let n = unsafe { libc::read(self.exec_error.as_raw_fd(), (&raw mut errno).cast(), 4) };
        if n == 4 {
            return Err(launch_error(io::Error::from_raw_os_error(errno)));
        }
        Ok(())
    }
}

impl Drop for HeldChild {
    fn drop(&mut self) {
        if self.release.is_some() {
            // Never released: closing the pipe makes the child exit without running.
            self.release = None;
            let mut status = 0;
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(self.pid as i32, &mut status, 0) };
        }
    }
}

//! Rolling recordings (`--record-dir`): every traced process is recorded into trace files of
//! its own, so that a post-mortem exists after a pod was OOM-killed. Files rotate at a size
//! that depends on how many processes share the directory, and the directory stays under its
//! size budget by deleting the oldest finished files first.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::SystemTime,
};

use crate::{
    analysis::Analysis,
    error::{Error, Result},
    session::{record_new_symbols, trace_header, Mode},
    target::Target,
    trace::{
        codec::{EndInfo, Entry},
        writer::{Recorder, Summary},
    },
};

/// Smallest file a recording rotates at: below this the per-file overhead (header, symbols
/// written again) dominates.
const MIN_FILE_BYTES: u64 = 4 << 20;

/// The directory and its budget.
pub struct RecordDir {
    dir: PathBuf,
    max_bytes: u64,
    /// Recordings started, for unique names.
    sequence: u64,
    /// Files deleted to stay under the budget.
    pub deleted_files: u64,
}

/// One process's current file.
pub struct Recording {
    recorder: Recorder,
}

impl RecordDir {
    /// Creates the directory if needed and checks that files can be created in it.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<RecordDir> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let probe = dir.join(format!(".memtrace-write-check-{}", std::process::id()));
        std::fs::write(&probe, b"")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|e| Error::io(format!("writing into {}", dir.display()), e))?;
        Ok(RecordDir {
            dir: dir.to_path_buf(),
            max_bytes,
            sequence: 0,
            deleted_files: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Size at which a file rotates with `active` processes recording: an eighth of each
    /// one's share, so that deleting the oldest file frees a small part of the budget.
    pub fn file_limit(&self, active: usize) -> u64 {
        (self.max_bytes / 8 / active.max(1) as u64).max(MIN_FILE_BYTES)
    }

    /// Starts a new file for `target`. The file carries every symbol the analysis knows so
    /// far and the wait-reason names, so that it reads on its own.
    pub fn start(
        &mut self,
        target: &Target,
        mode: Mode,
        goroutines: bool,
        analysis: &mut Analysis,
        start_ns: u64,
    ) -> Result<Recording> {
        self.sequence += 1;
        let name = target
            .exe
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| "unknown".into());
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        let unix_s = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let path = self.dir.join(format!(
            "{name}-{}-{unix_s}-{}.mtr",
            target.pid, self.sequence
        ));
        let file = Recorder::create_file(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        analysis.symbolizer_mut().journal_new_symbols();
        let mut recorder = Recorder::create(
            &file,
            &trace_header(target, mode, goroutines, analysis, start_ns),
        )
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        recorder.load_bias(target.load_bias());
        recorder.symbols(analysis.symbolizer_mut().all_symbols());
        let reasons = analysis.goroutines.wait_reasons();
        if !reasons.is_empty() {
            recorder.entry(&Entry::WaitReasons(reasons.to_vec()));
        }
        record_new_symbols(&mut recorder, analysis);
        Ok(Recording { recorder })
    }

    /// Deletes the oldest finished recordings until the directory fits its budget; files in
    /// `active` are being written and stay.
    pub fn enforce(&mut self, active: &HashSet<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(SystemTime, u64, PathBuf)> = entries
            .flatten()
            .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "mtr"))
            .filter_map(|entry| {
                let metadata = entry.metadata().ok()?;
                let modified = metadata.modified().ok()?;
                metadata
                    .is_file()
                    .then(|| (modified, metadata.len(), entry.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|(_, size, _)| size).sum();
        files.sort();
        for (_, size, path) in files {
            if total <= self.max_bytes {
                break;
            }
            if active.contains(&path) {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    total = total.saturating_sub(size);
                    self.deleted_files += 1;
                    log::info!("deleted {} (record-dir over its budget)", path.display());
                }
                Err(error) => log::warn!("cannot delete {}: {error}", path.display()),
            }
        }
    }
}

impl Recording {
    pub fn recorder(&mut self) -> &mut Recorder {
        &mut self.recorder
    }

    pub fn path(&self) -> &Path {
        self.recorder.path()
    }

    pub fn bytes_written(&self) -> u64 {
        self.recorder.progress().bytes_written
    }

    /// Ends the file: symbols, end record.
    pub fn finish(self, end: EndInfo, analysis: &mut Analysis) -> Summary {
        self.recorder
            .finish(end, analysis.symbolizer_mut().all_symbols())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_finished_files_go_first() {
        let dir = std::env::temp_dir().join(format!("memtrace-recdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut record_dir = RecordDir::open(&dir, 250).unwrap();
        for (index, name) in ["a.mtr", "b.mtr", "c.mtr", "d.mtr"].iter().enumerate() {
            std::fs::write(dir.join(name), vec![0u8; 100]).unwrap();
            let file = std::fs::File::options()
                .write(true)
                .open(dir.join(name))
                .unwrap();
            let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 + index as u64);
            file.set_modified(at).unwrap();
        }
        std::fs::write(dir.join("notes.txt"), vec![0u8; 1000]).unwrap();
        // a.mtr is the oldest but still written: b and c go, d stays (a + d = 200 <= 250).
        let active: HashSet<PathBuf> = [dir.join("a.mtr")].into_iter().collect();
        record_dir.enforce(&active);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["a.mtr", "d.mtr", "notes.txt"]);
        assert_eq!(record_dir.deleted_files, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_rotate_at_a_share_of_the_budget() {
        let dir = std::env::temp_dir().join(format!("memtrace-recdir2-{}", std::process::id()));
        let record_dir = RecordDir::open(&dir, 1 << 30).unwrap();
        assert_eq!(record_dir.file_limit(1), 128 << 20);
        assert_eq!(record_dir.file_limit(4), 32 << 20);
        assert_eq!(record_dir.file_limit(10_000), MIN_FILE_BYTES);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! The `file` and `stdout` sinks: JSON lines.
//!
//! Rotation is done here rather than with a crate: `file-rotate` rotates by size or by time
//! but not by both, and `tracing-appender` only by time. A rotation renames `<path>` to
//! `<path>.1` after moving the older files up one number (the oldest past `keep` is
//! replaced), then opens a new `<path>`. A file moved or deleted from outside (logrotate) is
//! noticed before the next batch and a new one opened, and a failed write drops the handle so
//! the next batch opens the file again.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use gantry_config::{FileSinkSpec, RotateSpec};

use super::record::day_number;
use super::sink::{FailureLog, Outcome, Sink};
use super::{AccessRecord, RecordFormat};

/// Most bytes of lines held before they are written. A batch of 1,024 records is about
/// 400 KB of JSON; written in pieces of this size, its buffer stays this small instead of
/// growing to, and staying at, the largest batch's size.
pub(super) const WRITE_CHUNK: usize = 64 * 1024;

/// JSON lines appended to a file.
pub(super) struct FileSink {
    path: PathBuf,
    rotate: Option<RotateSpec>,
    format: Arc<RecordFormat>,
    file: Option<OpenFile>,
    line: Vec<u8>,
    pending: Vec<u8>,
    failures: FailureLog,
}

struct OpenFile {
    file: File,
    /// Bytes in the file.
    size: u64,
    /// The UTC day its first line was written (or, for a file found, last modified).
    day: u64,
    /// Device and inode, to notice the path being moved away.
    identity: Option<(u64, u64)>,
}

impl FileSink {
    /// Opens (or creates) `spec.path` now, so a path that cannot be written fails the start.
    pub(super) fn open(spec: &FileSinkSpec, format: Arc<RecordFormat>) -> Result<Self, String> {
        let mut sink = Self {
            path: spec.path.clone(),
            rotate: spec.rotate.clone(),
            format,
            file: None,
            line: Vec::with_capacity(512),
            pending: Vec::with_capacity(WRITE_CHUNK),
            failures: FailureLog::new(spec.name.as_deref().unwrap_or("file")),
        };
        sink.file = Some(open_file(&sink.path).map_err(|err| format!("cannot open {}: {err}", sink.path.display()))?);
        Ok(sink)
    }

    /// Writes `batch`; when that fails, says how many of its records were written before.
    fn write_batch(&mut self, batch: &[Arc<AccessRecord>]) -> Result<(), (usize, std::io::Error)> {
        if self.file.as_ref().is_some_and(|open| open.identity.is_some() && open.identity != identity_of(&self.path)) {
            // Moved or deleted from outside: continue in a new file at the path.
            self.file = None;
        }
        if self.file.is_none() {
            self.file = Some(open_file(&self.path).map_err(|err| (0, err))?);
        }
        let today = day_number(SystemTime::now());
        self.pending.clear();
        let mut written = 0;
        let mut pending = 0;
        for record in batch {
            self.line.clear();
            self.format.write_json(record, &mut self.line);
            self.line.push(b'\n');
            let rotating = self.needs_rotation(today, self.line.len() as u64);
            if rotating || self.pending.len() + self.line.len() > WRITE_CHUNK {
                self.flush_pending().map_err(|err| (written, err))?;
                written += pending;
                pending = 0;
            }
            if rotating {
                self.rotate_now().map_err(|err| (written, err))?;
            }
            self.pending.extend_from_slice(&self.line);
            pending += 1;
            if let Some(open) = self.file.as_mut() {
                open.size += self.line.len() as u64;
                if open.size == self.line.len() as u64 {
                    open.day = today;
                }
            }
        }
        self.flush_pending().map_err(|err| (written, err))
    }

    /// Whether the file must rotate before `adding` more bytes today: a line is never split,
    /// and a file always gets at least one line.
    fn needs_rotation(&self, today: u64, adding: u64) -> bool {
        let (Some(rotate), Some(open)) = (&self.rotate, &self.file) else { return false };
        if open.size == 0 {
            return false;
        }
        (rotate.daily && open.day != today) || rotate.max_bytes.is_some_and(|max| open.size + adding > max)
    }

    fn flush_pending(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let open = self.file.as_mut().ok_or_else(|| std::io::Error::other("the access log file is not open"))?;
        open.file.write_all(&self.pending)?;
        self.pending.clear();
        Ok(())
    }

    fn rotate_now(&mut self) -> std::io::Result<()> {
        let keep = self.rotate.as_ref().map_or(1, |rotate| rotate.keep.max(1));
        self.file = None;
        for number in (1..keep).rev() {
            match std::fs::rename(numbered(&self.path, number), numbered(&self.path, number + 1)) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
        }
        std::fs::rename(&self.path, numbered(&self.path, 1))?;
        self.file = Some(open_file(&self.path)?);
        Ok(())
    }
}

impl Sink for FileSink {
    async fn write(&mut self, batch: &[Arc<AccessRecord>]) -> Outcome {
        match self.write_batch(batch) {
            Ok(()) => Outcome::written(batch.len()),
            Err((written, err)) => {
                self.failures.warn(&format_args!("{}: {err}", self.path.display()));
                // Opened again for the next batch: the disk may have room by then.
                self.file = None;
                Outcome::written_of(written, batch.len())
            }
        }
    }
}

#[cfg(test)]
impl FileSink {
    /// Makes the open file look first written on `day` (days since 1970-01-01, UTC).
    pub(super) fn pretend_written_on(&mut self, day: u64) {
        if let Some(open) = self.file.as_mut() {
            open.day = day;
        }
    }

    /// The bytes its line buffer has room for.
    pub(super) fn buffer_capacity(&self) -> usize {
        self.pending.capacity()
    }
}

/// `<path>.<number>`.
pub(super) fn numbered(path: &Path, number: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{number}"));
    PathBuf::from(name)
}

fn open_file(path: &Path) -> std::io::Result<OpenFile> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let metadata = file.metadata()?;
    Ok(OpenFile {
        size: metadata.len(),
        day: metadata.modified().map_or_else(|_| day_number(SystemTime::now()), day_number),
        identity: metadata_identity(&metadata),
        file,
    })
}

fn identity_of(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().as_ref().and_then(metadata_identity)
}

#[cfg(unix)]
fn metadata_identity(metadata: &std::fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((metadata.dev(), metadata.ino()))
}

#[cfg(not(unix))]
fn metadata_identity(_: &std::fs::Metadata) -> Option<(u64, u64)> {
    None
}

/// JSON lines on standard output.
pub(super) struct StdoutSink {
    format: Arc<RecordFormat>,
    line: Vec<u8>,
    pending: Vec<u8>,
    failures: FailureLog,
}

impl StdoutSink {
    pub(super) fn new(format: Arc<RecordFormat>) -> Self {
        Self {
            format,
            line: Vec::with_capacity(512),
            pending: Vec::with_capacity(WRITE_CHUNK),
            failures: FailureLog::new("stdout"),
        }
    }

    /// Writes `batch`; when that fails, says how many of its records were written before.
    fn write_batch(&mut self, batch: &[Arc<AccessRecord>]) -> Result<(), (usize, std::io::Error)> {
        let mut out = std::io::stdout().lock();
        self.pending.clear();
        let mut written = 0;
        let mut pending = 0;
        for record in batch {
            self.line.clear();
            self.format.write_json(record, &mut self.line);
            self.line.push(b'\n');
            if self.pending.len() + self.line.len() > WRITE_CHUNK {
                out.write_all(&self.pending).map_err(|err| (written, err))?;
                self.pending.clear();
                written += pending;
                pending = 0;
            }
            self.pending.extend_from_slice(&self.line);
            pending += 1;
        }
        out.write_all(&self.pending).and_then(|()| out.flush()).map_err(|err| (written, err))
    }
}

impl Sink for StdoutSink {
    async fn write(&mut self, batch: &[Arc<AccessRecord>]) -> Outcome {
        match self.write_batch(batch) {
            Ok(()) => Outcome::written(batch.len()),
            Err((written, err)) => {
                self.failures.warn(&err);
                Outcome::written_of(written, batch.len())
            }
        }
    }
}

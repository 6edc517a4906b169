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
    file: Option<OpenFile>,
    lines: ChunkedLines,
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
            file: None,
            lines: ChunkedLines::new(format),
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
        self.lines.start_batch();
        for record in batch {
            let (length, chunk_full) = self.lines.next_line(record);
            let rotating = self.needs_rotation(today, length);
            if rotating || chunk_full {
                self.write_chunk()?;
            }
            if rotating {
                self.rotate_now().map_err(|err| (self.lines.written, err))?;
            }
            self.lines.add_line();
            if let Some(open) = self.file.as_mut() {
                open.size += length;
                if open.size == length {
                    open.day = today;
                }
            }
        }
        self.write_chunk()
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

    fn write_chunk(&mut self) -> Result<(), (usize, std::io::Error)> {
        match self.file.as_mut() {
            Some(open) => self.lines.write_chunk(&mut open.file),
            None => Err((self.lines.written, std::io::Error::other("the access log file is not open"))),
        }
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
        self.lines.chunk.capacity()
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
    lines: ChunkedLines,
    failures: FailureLog,
}

impl StdoutSink {
    pub(super) fn new(format: Arc<RecordFormat>) -> Self {
        Self { lines: ChunkedLines::new(format), failures: FailureLog::new("stdout") }
    }

    /// Writes `batch`; when that fails, says how many of its records were written before.
    fn write_batch(&mut self, batch: &[Arc<AccessRecord>]) -> Result<(), (usize, std::io::Error)> {
        let mut out = std::io::stdout().lock();
        self.lines.start_batch();
        for record in batch {
            if self.lines.next_line(record).1 {
                self.lines.write_chunk(&mut out)?;
            }
            self.lines.add_line();
        }
        self.lines.write_chunk(&mut out)?;
        out.flush().map_err(|err| (self.lines.written, err))
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

/// A batch's records as JSON lines, written in chunks of at most [`WRITE_CHUNK`] bytes (or
/// one longer line), counting the records whose lines were written.
pub(super) struct ChunkedLines {
    format: Arc<RecordFormat>,
    /// The line being added.
    line: Vec<u8>,
    /// Lines not written yet.
    chunk: Vec<u8>,
    chunk_records: usize,
    /// Records of this batch written.
    written: usize,
}

impl ChunkedLines {
    pub(super) fn new(format: Arc<RecordFormat>) -> Self {
        Self {
            format,
            line: Vec::with_capacity(512),
            chunk: Vec::with_capacity(WRITE_CHUNK),
            chunk_records: 0,
            written: 0,
        }
    }

    pub(super) fn start_batch(&mut self) {
        self.chunk.clear();
        self.chunk_records = 0;
        self.written = 0;
    }

    /// Serializes `record` as the next line, and says its length and whether the chunk must
    /// be written before the line is added.
    pub(super) fn next_line(&mut self, record: &AccessRecord) -> (u64, bool) {
        self.line.clear();
        self.format.write_json(record, &mut self.line);
        self.line.push(b'\n');
        (self.line.len() as u64, self.chunk.len() + self.line.len() > WRITE_CHUNK)
    }

    pub(super) fn add_line(&mut self) {
        self.chunk.extend_from_slice(&self.line);
        self.chunk_records += 1;
    }

    /// Writes the chunk to `out`; when that fails, says how many records were written before.
    pub(super) fn write_chunk(&mut self, out: &mut impl Write) -> Result<(), (usize, std::io::Error)> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        out.write_all(&self.chunk).map_err(|err| (self.written, err))?;
        self.written += self.chunk_records;
        self.chunk.clear();
        self.chunk_records = 0;
        Ok(())
    }
}

//! Files read from disk: whole (within the limits), only their head, or a byte range read again
//! later. An ingest from a path keeps only each file's header in memory and reads native pixels
//! straight from the file when it decodes them, so a series costs no second copy of its pixels.

use crate::error::DicomError;
use crate::limits::IngestLimits;
use osteo_core::FileStamp;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Bytes read first from a file on disk: enough for the header of nearly every CT slice.
pub(crate) const HEAD_BYTES: u64 = 64 << 10;

/// An I/O error naming the file.
pub(crate) fn io_err(path: &Path, e: impl std::fmt::Display) -> DicomError {
    DicomError::Io {
        file: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Checks one file's size and the running total against the limits.
pub(crate) fn check_bytes(
    label: &str,
    len: u64,
    total: u64,
    limits: &IngestLimits,
) -> Result<(), DicomError> {
    if len > limits.max_file_bytes {
        return Err(DicomError::TooLarge {
            file: label.to_string(),
            what: "file size in bytes".into(),
            value: len,
            limit: limits.max_file_bytes,
        });
    }
    if total > limits.max_total_bytes {
        return Err(DicomError::TooLarge {
            file: label.to_string(),
            what: "total study size in bytes".into(),
            value: total,
            limit: limits.max_total_bytes,
        });
    }
    Ok(())
}

/// Reads a whole file; one that grew since its size was checked is read no further than the
/// limit and then refused.
pub(crate) fn read_whole(path: &Path, limits: &IngestLimits) -> Result<Vec<u8>, DicomError> {
    let mut file = File::open(path).map_err(|e| io_err(path, e))?;
    let len = file.metadata().map_err(|e| io_err(path, e))?.len();
    let mut bytes = Vec::with_capacity(len.min(limits.max_file_bytes) as usize);
    (&mut file)
        .take(limits.max_file_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| io_err(path, e))?;
    check_bytes(&path.display().to_string(), bytes.len() as u64, 0, limits)?;
    Ok(bytes)
}

/// Reads the first [`HEAD_BYTES`] of a file (all of it when it is shorter), with the stamp of
/// the version read.
pub(crate) fn read_head(
    path: &Path,
    limits: &IngestLimits,
) -> Result<(Vec<u8>, FileStamp), DicomError> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    let stamp = FileStamp::of(&file.metadata().map_err(|e| io_err(path, e))?);
    check_bytes(&path.display().to_string(), stamp.len(), 0, limits)?;
    let mut head = Vec::with_capacity(stamp.len().min(HEAD_BYTES) as usize);
    file.take(HEAD_BYTES)
        .read_to_end(&mut head)
        .map_err(|e| io_err(path, e))?;
    Ok((head, stamp))
}

/// A byte range of a file on disk, read when it is needed.
#[derive(Debug)]
pub(crate) struct DiskRange {
    path: PathBuf,
    range: Range<u64>,
    stamp: FileStamp,
}

impl DiskRange {
    /// The range `range` of the file at `path`, as it was when `stamp` was taken.
    pub(crate) fn new(path: PathBuf, range: Range<u64>, stamp: FileStamp) -> Self {
        Self { path, range, stamp }
    }

    /// Length of the range in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.range.end - self.range.start
    }

    /// Reads the range into `buf` (replacing its contents; its capacity is reused). A file that
    /// changed since its header was read is refused rather than mixed with that header.
    pub(crate) fn read_into(&self, buf: &mut Vec<u8>) -> Result<(), DicomError> {
        let path = &self.path;
        let mut file = File::open(path).map_err(|e| io_err(path, e))?;
        let now = FileStamp::of(&file.metadata().map_err(|e| io_err(path, e))?);
        if now != self.stamp {
            return Err(io_err(path, "the file changed while the study was read"));
        }
        file.seek(SeekFrom::Start(self.range.start))
            .map_err(|e| io_err(path, e))?;
        buf.clear();
        buf.reserve(self.len() as usize);
        file.take(self.len())
            .read_to_end(buf)
            .map_err(|e| io_err(path, e))?;
        if buf.len() as u64 != self.len() {
            return Err(io_err(path, "the file ended before its Pixel Data value"));
        }
        Ok(())
    }
}

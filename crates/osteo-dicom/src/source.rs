//! Where DICOM input comes from: a directory, a list of paths, or in-memory buffers.

use crate::disk::{check_bytes, io_err, read_whole};
use crate::error::DicomError;
use crate::limits::IngestLimits;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// A DICOM input set.
#[derive(Debug, Clone)]
pub enum DicomSource {
    /// A file, or a directory searched recursively (hidden files and DICOMDIR are skipped).
    Path(PathBuf),
    /// An explicit list of files.
    Paths(Vec<PathBuf>),
    /// In-memory file contents, e.g. a gRPC upload, labelled `upload file #N` in errors.
    Buffers(Vec<Vec<u8>>),
}

/// One input file: its label for error messages and its bytes.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Path or `upload file #N`; never contains patient data.
    pub label: String,
    /// Complete Part-10 bytes.
    pub bytes: Vec<u8>,
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, DicomError> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let name = entry.file_name().to_string_lossy();
        if entry.depth() > 0 && name.starts_with('.') {
            continue;
        }
        if entry.file_type().is_file() && !name.eq_ignore_ascii_case("DICOMDIR") {
            out.push(entry.into_path());
        }
    }
    Ok(out)
}

fn check_count(n: usize, limits: &IngestLimits) -> Result<(), DicomError> {
    if n > limits.max_files {
        return Err(DicomError::TooLarge {
            file: "study".into(),
            what: "file count".into(),
            value: n as u64,
            limit: limits.max_files as u64,
        });
    }
    Ok(())
}

/// One file of an ingest: its bytes, or a file on disk whose size was checked.
pub(crate) enum Input {
    /// In-memory bytes.
    Memory(SourceFile),
    /// A file on disk, read when it is parsed.
    Disk(PathBuf),
}

impl DicomSource {
    /// Lists the source's files, enforcing the file count and byte limits (for files on disk,
    /// on their sizes) before any file is read.
    pub(crate) fn inputs(self, limits: &IngestLimits) -> Result<Vec<Input>, DicomError> {
        let paths = match self {
            DicomSource::Buffers(buffers) => {
                check_count(buffers.len(), limits)?;
                let mut total = 0u64;
                let mut out = Vec::with_capacity(buffers.len());
                for (i, bytes) in buffers.into_iter().enumerate() {
                    let label = format!("upload file #{i}");
                    total += bytes.len() as u64;
                    check_bytes(&label, bytes.len() as u64, total, limits)?;
                    out.push(Input::Memory(SourceFile { label, bytes }));
                }
                return Ok(out);
            }
            DicomSource::Path(p) => {
                let meta = std::fs::metadata(&p).map_err(|e| io_err(&p, e))?;
                if meta.is_dir() {
                    list_dir(&p)?
                } else {
                    vec![p]
                }
            }
            DicomSource::Paths(ps) => ps,
        };
        check_count(paths.len(), limits)?;
        let mut total = 0u64;
        for path in &paths {
            let len = std::fs::metadata(path).map_err(|e| io_err(path, e))?.len();
            total += len;
            check_bytes(&path.display().to_string(), len, total, limits)?;
        }
        non_empty(paths.into_iter().map(Input::Disk).collect())
    }

    /// Reads every file of the source into memory, enforcing the file count and byte limits
    /// before reading each file.
    pub fn read(self, limits: &IngestLimits) -> Result<Vec<SourceFile>, DicomError> {
        // Every size is checked before any file is read; then the files are read in parallel.
        self.inputs(limits)?
            .into_par_iter()
            .map(|input| match input {
                Input::Memory(file) => Ok(file),
                Input::Disk(path) => Ok(SourceFile {
                    bytes: read_whole(&path, limits)?,
                    label: path.display().to_string(),
                }),
            })
            .collect()
    }
}

fn non_empty<T>(files: Vec<T>) -> Result<Vec<T>, DicomError> {
    if files.is_empty() {
        return Err(DicomError::NoCtImages {
            details: "the input holds no files".into(),
        });
    }
    Ok(files)
}

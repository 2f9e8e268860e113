//! Where DICOM input comes from: a directory, a list of paths, or in-memory buffers.

use crate::error::DicomError;
use crate::limits::IngestLimits;
use rayon::prelude::*;
use std::io::Read;
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

fn io_err(path: &Path, e: impl std::fmt::Display) -> DicomError {
    DicomError::Io {
        file: path.display().to_string(),
        message: e.to_string(),
    }
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

impl DicomSource {
    /// Reads every file of the source into memory, enforcing the file count and byte limits
    /// before reading each file.
    pub fn read(self, limits: &IngestLimits) -> Result<Vec<SourceFile>, DicomError> {
        let paths = match self {
            DicomSource::Buffers(buffers) => {
                check_count(buffers.len(), limits)?;
                let mut total = 0u64;
                let mut out = Vec::with_capacity(buffers.len());
                for (i, bytes) in buffers.into_iter().enumerate() {
                    let label = format!("upload file #{i}");
                    total += bytes.len() as u64;
                    check_bytes(&label, bytes.len() as u64, total, limits)?;
                    out.push(SourceFile { label, bytes });
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
        // Every size is checked before any file is read; then the files are read in parallel
        // (the kernel's work of providing fresh pages for them is most of the cost).
        let mut total = 0u64;
        let mut sized = Vec::with_capacity(paths.len());
        for path in paths {
            let len = std::fs::metadata(&path)
                .map_err(|e| io_err(&path, e))?
                .len();
            total += len;
            check_bytes(&path.display().to_string(), len, total, limits)?;
            sized.push((path, len));
        }
        let out = sized
            .into_par_iter()
            .map(|(path, len)| {
                // A file that grew since its size was checked is read no further than the limit.
                let mut bytes = Vec::with_capacity(len as usize);
                std::fs::File::open(&path)
                    .and_then(|f| {
                        f.take(limits.max_file_bytes.saturating_add(1))
                            .read_to_end(&mut bytes)
                    })
                    .map_err(|e| io_err(&path, e))?;
                check_bytes(&path.display().to_string(), bytes.len() as u64, 0, limits)?;
                Ok(SourceFile {
                    label: path.display().to_string(),
                    bytes,
                })
            })
            .collect::<Result<Vec<_>, DicomError>>()?;
        if out.is_empty() {
            return Err(DicomError::NoCtImages {
                details: "the input holds no files".into(),
            });
        }
        Ok(out)
    }
}

fn check_bytes(label: &str, len: u64, total: u64, limits: &IngestLimits) -> Result<(), DicomError> {
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

//! What identifies one version of a file on disk, so that a reader can tell a file changed
//! (rewritten, or replaced by a rename) since it last looked: DICOM read from disk in two
//! passes, configuration files re-read when they change.

use std::fs::Metadata;
use std::path::Path;
use std::time::SystemTime;

/// A file's size, modification time and (on Unix) inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl FileStamp {
    /// The stamp of a file's metadata.
    pub fn of(meta: &Metadata) -> Self {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode,
        }
    }

    /// The stamp of the file at `path`; None when it cannot be read (deleted).
    pub fn of_path(path: &Path) -> Option<Self> {
        std::fs::metadata(path).ok().map(|m| Self::of(&m))
    }

    /// The file's size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file was empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

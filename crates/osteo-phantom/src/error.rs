//! Errors of phantom generation and writing.

use thiserror::Error;

/// Why a phantom could not be generated or written.
#[derive(Debug, Error)]
pub enum PhantomError {
    /// Writing a DICOM file failed.
    #[error("cannot write DICOM file {path}: {message}")]
    Write {
        /// Target path.
        path: String,
        /// What failed.
        message: String,
    },
    /// Creating a directory failed.
    #[error("cannot create directory {path}: {source}")]
    Io {
        /// The directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The volume cannot be stored in the CT encoding the writer uses.
    #[error("volume cannot be written: {0}")]
    Volume(String),
}

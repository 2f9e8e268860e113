//! Errors of cohort loading, training and evaluation.

use thiserror::Error;

/// Why a cohort could not be loaded or a model trained or evaluated.
#[derive(Debug, Error)]
pub enum TrainError {
    /// A cohort CSV row is unusable.
    #[error("{file}, row {row}: {message}")]
    Cohort {
        /// The CSV file.
        file: String,
        /// 1-based data row.
        row: usize,
        /// What is wrong.
        message: String,
    },
    /// A study could not be ingested or viewed.
    #[error("patient {patient}: {source}")]
    Study {
        /// The patient's row identifier.
        patient: String,
        /// The DICOM error.
        #[source]
        source: osteo_dicom::DicomError,
    },
    /// A sample cannot be turned into model input.
    #[error("patient {patient}: {message}")]
    Input {
        /// The patient's identifier.
        patient: String,
        /// What is wrong.
        message: String,
    },
    /// The training data or configuration cannot produce a model.
    #[error("cannot train: {0}")]
    Setup(String),
    /// The tensor engine failed.
    #[error("tensor engine: {0}")]
    Engine(String),
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The path.
        path: String,
        /// What failed.
        message: String,
    },
}

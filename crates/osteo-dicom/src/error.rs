//! Errors of DICOM ingest and view building; each names the file and attribute at fault.

use thiserror::Error;

/// Why a DICOM input could not be turned into a volume or a view.
#[derive(Debug, Clone, Error)]
pub enum DicomError {
    /// A file could not be read from disk.
    #[error("{file}: cannot read file: {message}")]
    Io {
        /// The file's path.
        file: String,
        /// The operating-system error.
        message: String,
    },
    /// The bytes are not a parseable DICOM Part-10 file.
    #[error("{file}: not a readable DICOM Part-10 file: {message}")]
    Parse {
        /// The file label (path, or `upload file #N`).
        file: String,
        /// What the parser reported.
        message: String,
    },
    /// A clinical variable asked of the header is missing or implausible there.
    #[error(
        "clinical variables from the DICOM header: {attribute} {reason}; send {field} explicitly"
    )]
    Demographic {
        /// Attribute keyword(s) and tag(s).
        attribute: String,
        /// Why it cannot be used (never the value).
        reason: String,
        /// The clinical variable a caller may send instead, e.g. `clinical.height_cm`.
        field: &'static str,
    },
    /// The study fails the model's input quality gate (the findings in words, with the measured
    /// values; no header values).
    #[error("the study cannot be graded: {findings}")]
    QualityGate {
        /// Every failed check's finding.
        findings: String,
    },
    /// A required attribute is absent.
    #[error("{file}: missing required attribute {attribute}")]
    MissingAttribute {
        /// The file label.
        file: String,
        /// Attribute keyword and tag, e.g. `Rows (0028,0010)`.
        attribute: String,
    },
    /// An attribute is present but its value is unusable.
    /// The message never carries the value itself: DICOM values may identify the patient.
    #[error("{file}: attribute {attribute} is invalid: {reason}")]
    InvalidAttribute {
        /// The file label.
        file: String,
        /// Attribute keyword and tag.
        attribute: String,
        /// Why it is rejected (never the value).
        reason: String,
    },
    /// The file's transfer syntax has no decoder available offline.
    #[error(
        "{file}: transfer syntax {name} ({uid}) is not supported: no offline decoder; re-encode the study as uncompressed or a lossless syntax (JPEG lossless, JPEG-LS, JPEG 2000, RLE)"
    )]
    UnsupportedTransferSyntax {
        /// The file label.
        file: String,
        /// Transfer syntax UID.
        uid: String,
        /// Transfer syntax name.
        name: String,
    },
    /// Decoding the pixel data failed.
    #[error("{file}: cannot decode pixel data ({transfer_syntax}): {message}")]
    Decode {
        /// The file label.
        file: String,
        /// Transfer syntax name.
        transfer_syntax: String,
        /// What the decoder reported.
        message: String,
    },
    /// A size exceeds a configured limit; nothing was allocated for it.
    #[error("{file}: {what} = {value} exceeds the limit of {limit}")]
    TooLarge {
        /// The file label, or `study` for totals.
        file: String,
        /// What was measured.
        what: String,
        /// The measured or declared value.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// No usable image was found.
    #[error("no CT image found: {details}")]
    NoCtImages {
        /// What was found instead.
        details: String,
    },
    /// The requested series is not in the input. The message does not repeat the requested
    /// SeriesInstanceUID (an identifier) nor list the UIDs present.
    #[error("the requested SeriesInstanceUID is not in the input; series found: {available}")]
    SeriesNotFound {
        /// The series present (modality and slice count, no UIDs).
        available: String,
    },
    /// Files of one series disagree with each other.
    #[error("series is inconsistent: {file}: {attribute}: {details}")]
    InconsistentSeries {
        /// The first file that disagrees.
        file: String,
        /// The attribute that disagrees.
        attribute: String,
        /// How it disagrees.
        details: String,
    },
    /// A view cannot be built from this volume or with this specification.
    #[error("cannot build view {view}: {reason}")]
    View {
        /// The view name.
        view: String,
        /// Why.
        reason: String,
    },
    /// The vertebral attenuation cannot be measured on this volume.
    #[error("cannot measure the vertebral attenuation: {0}")]
    Attenuation(String),
    /// Writing an image failed.
    #[error("cannot encode PNG: {0}")]
    Png(String),
    /// Writing a DICOM object failed.
    #[error("cannot encode DICOM: {0}")]
    Encode(String),
}

impl DicomError {
    /// Builds [`DicomError::InvalidAttribute`].
    pub(crate) fn invalid(file: &str, attribute: &str, reason: impl Into<String>) -> Self {
        DicomError::InvalidAttribute {
            file: file.to_string(),
            attribute: attribute.to_string(),
            reason: reason.into(),
        }
    }

    /// Builds [`DicomError::MissingAttribute`].
    pub(crate) fn missing(file: &str, attribute: &str) -> Self {
        DicomError::MissingAttribute {
            file: file.to_string(),
            attribute: attribute.to_string(),
        }
    }
}

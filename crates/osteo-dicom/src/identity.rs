//! What a DICOM node reads of a received instance before it keeps it: the study, series and
//! SOP instance it belongs to and its modality, from the elements before Pixel Data (the
//! first 64 KiB of the file, lengths checked before the parser allocates).

use crate::attrs::{body_start, read_object};
use crate::disk;
use crate::element::text;
use crate::error::DicomError;
use crate::limits::IngestLimits;
use crate::prescan;
use dicom_dictionary_std::tags;
use std::path::Path;

/// The identity of one instance (patient data: never logged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceIdentity {
    /// StudyInstanceUID.
    pub study_uid: String,
    /// SeriesInstanceUID.
    pub series_uid: String,
    /// SOPInstanceUID.
    pub sop_instance_uid: String,
    /// SOPClassUID.
    pub sop_class_uid: String,
    /// Modality ("" when absent).
    pub modality: String,
}

/// Reads the identity of the Part-10 file at `path` (at most `limits.max_file_bytes` long);
/// an error names the missing attribute, never a value.
pub fn instance_identity(
    path: &Path,
    limits: &IngestLimits,
) -> Result<InstanceIdentity, DicomError> {
    let (head, stamp) = disk::read_head(path, limits)?;
    let total = usize::try_from(stamp.len()).unwrap_or(usize::MAX);
    identity_of(&head, total, limits)
}

/// [`instance_identity`] of a Part-10 file held in memory.
pub fn instance_identity_in(
    file: &[u8],
    limits: &IngestLimits,
) -> Result<InstanceIdentity, DicomError> {
    let head = &file[..file.len().min(disk::HEAD_BYTES as usize)];
    identity_of(head, file.len(), limits)
}

/// The identity from the first bytes of a file of `total` bytes.
fn identity_of(
    head: &[u8],
    total: usize,
    limits: &IngestLimits,
) -> Result<InstanceIdentity, DicomError> {
    let label = "the received instance";
    let start = body_start(head, label)?;
    prescan::check_lengths(head, total, start, label, limits.max_file_bytes)?;
    let obj = read_object(head, label, start, true)?;
    let required = |tag, name: &str| {
        text(&obj, tag)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| DicomError::Parse {
                file: label.to_string(),
                message: format!("{name} is missing or empty"),
            })
    };
    Ok(InstanceIdentity {
        study_uid: required(tags::STUDY_INSTANCE_UID, "StudyInstanceUID")?,
        series_uid: required(tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?,
        sop_instance_uid: required(tags::SOP_INSTANCE_UID, "SOPInstanceUID")?,
        sop_class_uid: required(tags::SOP_CLASS_UID, "SOPClassUID")?,
        modality: text(&obj, tags::MODALITY).unwrap_or_default(),
    })
}

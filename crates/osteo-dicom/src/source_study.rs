//! What a result written as DICOM needs from the study it describes: the patient and study
//! attributes to copy (so the result files into the same patient and study) and the instances
//! of the graded series (the evidence). Patient data: kept in memory only, never logged; its
//! debug output is redacted.

use crate::element::text;
use dicom_core::{DataElement, Tag};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

/// Patient and study attributes copied into a result, when the source has them.
const COPIED: &[Tag] = &[
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::ISSUER_OF_PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_SEX,
    tags::PATIENT_AGE,
    tags::PATIENT_SIZE,
    tags::PATIENT_WEIGHT,
    tags::STUDY_INSTANCE_UID,
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::STUDY_ID,
    tags::ACCESSION_NUMBER,
    tags::STUDY_DESCRIPTION,
];

/// The source study of a result.
#[derive(Clone, Default)]
pub struct SourceStudy {
    /// Patient and study elements as the source states them.
    pub elements: Vec<DataElement<InMemDicomObject>>,
    /// StudyInstanceUID of the source (empty when absent).
    pub study_uid: String,
    /// SeriesInstanceUID of the graded series.
    pub series_uid: String,
    /// SOPClassUID and SOPInstanceUID of every instance of the graded series.
    pub instances: Vec<(String, String)>,
}

impl std::fmt::Debug for SourceStudy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SourceStudy {{ <patient data>, {} instances }}",
            self.instances.len()
        )
    }
}

impl SourceStudy {
    /// The source study of a series: attributes from its first file, references to each file.
    pub(crate) fn read<'a>(
        first: &InMemDicomObject,
        files: impl Iterator<Item = &'a InMemDicomObject>,
        series_uid: &str,
    ) -> Self {
        let elements = COPIED
            .iter()
            .filter_map(|t| first.get(*t).cloned())
            .collect();
        let instances = files
            .filter_map(|o| {
                Some((
                    text(o, tags::SOP_CLASS_UID)?,
                    text(o, tags::SOP_INSTANCE_UID)?,
                ))
            })
            .collect();
        Self {
            elements,
            study_uid: text(first, tags::STUDY_INSTANCE_UID).unwrap_or_default(),
            series_uid: series_uid.to_string(),
            instances,
        }
    }
}

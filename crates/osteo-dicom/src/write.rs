//! What every DICOM object OsteoServe writes into a source study shares: new UIDs, the time, the
//! patient and study modules copied from the source, and Part-10 encoding.

use crate::error::DicomError;
use crate::source_study::SourceStudy;
use dicom_core::header::Header;
use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;

/// The implementation class UID of every Part-10 file OsteoServe writes.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.230442815271392436104758106281904853351";

/// A new UID (2.25 form, from 128 random bits).
pub fn new_uid() -> String {
    format!("2.25.{}", rand::random::<u128>() >> 1)
}

/// A text element.
pub(crate) fn text(tag: Tag, vr: VR, v: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::from(v))
}

/// An empty (type 2) element.
pub(crate) fn empty(tag: Tag, vr: VR) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::Empty)
}

/// A sequence element.
pub(crate) fn sequence(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

/// Now as DICOM date and time (UTC).
pub(crate) fn now() -> (String, String) {
    let t = osteo_core::utc::Utc::now();
    (
        format!("{:04}{:02}{:02}", t.year, t.month, t.day),
        format!("{:02}{:02}{:02}", t.hour, t.minute, t.second),
    )
}

/// The patient and study elements of a new object in `source`'s study (copied; the type 2
/// ones present even when the source lacks them) and that study's UID.
pub(crate) fn patient_and_study(
    source: &SourceStudy,
) -> (Vec<DataElement<InMemDicomObject>>, String) {
    let mut e: Vec<DataElement<InMemDicomObject>> = source.elements.clone();
    let type2 = [
        (tags::PATIENT_NAME, VR::PN),
        (tags::PATIENT_ID, VR::LO),
        (tags::PATIENT_BIRTH_DATE, VR::DA),
        (tags::PATIENT_SEX, VR::CS),
        (tags::STUDY_DATE, VR::DA),
        (tags::STUDY_TIME, VR::TM),
        (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
        (tags::STUDY_ID, VR::SH),
        (tags::ACCESSION_NUMBER, VR::SH),
    ];
    for (tag, vr) in type2 {
        if !source.elements.iter().any(|x| x.tag() == tag) {
            e.push(empty(tag, vr));
        }
    }
    let study_uid = if source.study_uid.is_empty() {
        let uid = new_uid();
        e.retain(|x| x.tag() != tags::STUDY_INSTANCE_UID);
        e.push(text(tags::STUDY_INSTANCE_UID, VR::UI, &uid));
        uid
    } else {
        source.study_uid.clone()
    };
    (e, study_uid)
}

/// Items referencing every instance of `source`'s graded series.
pub(crate) fn instance_references(source: &SourceStudy) -> Vec<InMemDicomObject> {
    source
        .instances
        .iter()
        .map(|(class, instance)| {
            InMemDicomObject::from_element_iter([
                text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, class),
                text(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, instance),
            ])
        })
        .collect()
}

/// `elements` as a Part-10 file of `sop_class` with instance `sop_uid` (explicit VR little
/// endian).
pub(crate) fn part10(
    elements: Vec<DataElement<InMemDicomObject>>,
    sop_class: &str,
    sop_uid: &str,
    what: &str,
) -> Result<Vec<u8>, DicomError> {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_uid)
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name("OSTEOSERVE_01");
    let obj = InMemDicomObject::from_element_iter(elements)
        .with_meta(meta)
        .map_err(|e| DicomError::Encode(format!("{what}: {e}")))?;
    let mut out = Vec::new();
    obj.write_all(&mut out)
        .map_err(|e| DicomError::Encode(format!("{what}: {e}")))?;
    Ok(out)
}

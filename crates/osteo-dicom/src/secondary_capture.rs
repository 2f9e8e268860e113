//! The Grad-CAM overlay as an RGB Secondary Capture image in the source study: a new series
//! (Modality OT: a series holds one modality, and the structured report's series is SR), the
//! patient and study attributes copied from the source, the graded series' instances as source
//! images, and the not-for-diagnosis statement for models trained on synthetic data.

use crate::error::DicomError;
use crate::source_study::SourceStudy;
use crate::write::{instance_references, new_uid, now, part10, patient_and_study, sequence, text};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};

/// An RGB image to store: row-major, 3 bytes a pixel.
#[derive(Debug, Clone)]
pub struct RgbImage {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub columns: u16,
    /// `rows * columns * 3` bytes.
    pub pixels: Vec<u8>,
}

/// What the image shows.
#[derive(Debug, Clone)]
pub struct Description {
    /// What computed the map: model, version, weights digest, backend, device.
    pub provenance: osteo_core::provenance::Provenance,
    /// The explained grade's name.
    pub grade: String,
    /// Whether the model was trained on synthetic data.
    pub synthetic: bool,
    /// SeriesNumber of the new series.
    pub series_number: u32,
}

/// The Secondary Capture of `image` in `source`'s study, as DICOM Part-10 bytes.
pub fn secondary_capture(
    source: &SourceStudy,
    image: &RgbImage,
    d: &Description,
) -> Result<Vec<u8>, DicomError> {
    let expected = usize::from(image.rows) * usize::from(image.columns) * 3;
    if image.pixels.len() != expected || expected == 0 {
        return Err(DicomError::Encode(format!(
            "secondary capture: {} bytes for {}x{} RGB pixels",
            image.pixels.len(),
            image.rows,
            image.columns
        )));
    }
    let sop_uid = new_uid();
    let (date, time) = now();
    let mut description = format!("Grad-CAM of grade {} by {}", d.grade, d.provenance.line());
    if d.synthetic {
        description.push_str("; model trained on synthetic data, not for diagnosis");
    }
    // DerivationDescription is ST (1024 characters).
    description.truncate(1024);
    let mut e = vec![
        text(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"),
        text(
            tags::SOP_CLASS_UID,
            VR::UI,
            uids::SECONDARY_CAPTURE_IMAGE_STORAGE,
        ),
        text(tags::SOP_INSTANCE_UID, VR::UI, &sop_uid),
        text(tags::INSTANCE_CREATION_DATE, VR::DA, &date),
        text(tags::INSTANCE_CREATION_TIME, VR::TM, &time),
        text(tags::IMAGE_TYPE, VR::CS, "DERIVED\\SECONDARY"),
        text(tags::MODALITY, VR::CS, "OT"),
        text(tags::SERIES_INSTANCE_UID, VR::UI, &new_uid()),
        text(tags::SERIES_NUMBER, VR::IS, &d.series_number.to_string()),
        text(tags::SERIES_DESCRIPTION, VR::LO, "OsteoServe Grad-CAM"),
        DataElement::new(tags::LATERALITY, VR::CS, PrimitiveValue::Empty),
        text(tags::CONVERSION_TYPE, VR::CS, "WSD"),
        text(tags::MANUFACTURER, VR::LO, "OsteoServe"),
        text(
            tags::SECONDARY_CAPTURE_DEVICE_MANUFACTURER,
            VR::LO,
            "OsteoServe",
        ),
        text(
            tags::SECONDARY_CAPTURE_DEVICE_SOFTWARE_VERSIONS,
            VR::LO,
            concat!("osteoserve ", env!("CARGO_PKG_VERSION")),
        ),
        text(tags::INSTANCE_NUMBER, VR::IS, "1"),
        DataElement::new(tags::PATIENT_ORIENTATION, VR::CS, PrimitiveValue::Empty),
        text(tags::CONTENT_DATE, VR::DA, &date),
        text(tags::CONTENT_TIME, VR::TM, &time),
        text(tags::BURNED_IN_ANNOTATION, VR::CS, "NO"),
        text(tags::DERIVATION_DESCRIPTION, VR::ST, &description),
        text(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00"),
        DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(3u16)),
        text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "RGB"),
        DataElement::new(
            tags::PLANAR_CONFIGURATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ),
        DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(image.rows)),
        DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(image.columns)),
        DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(8u16)),
        DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(8u16)),
        DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(7u16)),
        DataElement::new(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ),
        DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            PrimitiveValue::from(image.pixels.clone()),
        ),
    ];
    let (copied, _) = patient_and_study(source);
    e.extend(copied);
    if !source.instances.is_empty() {
        e.push(sequence(
            tags::SOURCE_IMAGE_SEQUENCE,
            instance_references(source),
        ));
    }
    part10(
        e,
        uids::SECONDARY_CAPTURE_IMAGE_STORAGE,
        &sop_uid,
        "secondary capture",
    )
}

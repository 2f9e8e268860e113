//! Writes a phantom volume as a valid CT Image Storage series (one Part-10 file per slice,
//! explicit VR little endian, 12 bits stored, rescale intercept −1024).

use crate::anatomy::HU_RANGE;
use crate::error::PhantomError;
use crate::patient::Patient;
use crate::rng;
use dicom_core::value::{C, PrimitiveValue};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use osteo_dicom::Volume;
use std::path::{Path, PathBuf};

/// Root of the implementation class UID (2.25 form, fixed for OsteoServe).
const IMPLEMENTATION_CLASS_UID: &str = "2.25.230442815271392436104758106281904853351";
/// Fixed synthetic study date and time (no real dates are ever written).
const STUDY_DATE: &str = "20260101";
const STUDY_TIME: &str = "090000";

/// Who and what a written series describes. Every value is synthetic.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesIdentity {
    /// PatientName.
    pub patient_name: String,
    /// PatientID.
    pub patient_id: String,
    /// PatientSex code.
    pub sex: String,
    /// Age in years.
    pub age_years: u32,
    /// Height in cm.
    pub height_cm: f64,
    /// Weight in kg.
    pub weight_kg: f64,
    /// StudyInstanceUID.
    pub study_uid: String,
    /// SeriesInstanceUID.
    pub series_uid: String,
    /// FrameOfReferenceUID.
    pub frame_uid: String,
    /// Seed of the SOPInstanceUIDs.
    pub instance_seed: u64,
}

impl SeriesIdentity {
    /// The deterministic synthetic identity of a phantom patient.
    pub fn for_patient(p: &Patient) -> Self {
        let base = [0x05_7E0, p.seed, p.index];
        let with = |k: u64| rng::uid(&[base[0], base[1], base[2], k]);
        SeriesIdentity {
            patient_name: format!("PHANTOM^{}", p.id),
            patient_id: p.id.clone(),
            sex: p.sex.code().to_string(),
            age_years: p.age_years as u32,
            height_cm: p.height_cm,
            weight_kg: p.weight_kg,
            study_uid: with(1),
            series_uid: with(2),
            frame_uid: with(3),
            instance_seed: rng::mix(p.seed ^ rng::mix(p.index)),
        }
    }
}

fn text(tag: Tag, vr: VR, v: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::from(v))
}

fn multi(tag: Tag, vr: VR, values: &[String]) -> DataElement<InMemDicomObject> {
    DataElement::new(
        tag,
        vr,
        PrimitiveValue::Strs(values.iter().cloned().collect::<C<String>>()),
    )
}

fn empty(tag: Tag, vr: VR) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::Empty)
}

fn us(tag: Tag, v: u16) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::US, PrimitiveValue::from(v))
}

/// Formats a decimal string value (DS, at most 16 characters).
fn ds(v: f64) -> String {
    let s = format!("{v}");
    if s.len() <= 16 { s } else { format!("{v:.6}") }
}

/// Writes `volume` as a CT series into `dir` (created if needed); returns the file paths.
pub fn write_series(
    volume: &Volume,
    id: &SeriesIdentity,
    dir: &Path,
) -> Result<Vec<PathBuf>, PhantomError> {
    std::fs::create_dir_all(dir).map_err(|source| PhantomError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let [nz, ny, nx] = volume.dims;
    let (rows, cols) = (
        u16::try_from(ny).map_err(|_| PhantomError::Volume(format!("{ny} rows")))?,
        u16::try_from(nx).map_err(|_| PhantomError::Volume(format!("{nx} columns")))?,
    );
    let [r, c, _] = volume.direction;
    let orientation: Vec<String> = r.iter().chain(c.iter()).map(|v| ds(*v)).collect();
    let spacing = [ds(volume.spacing_mm[1]), ds(volume.spacing_mm[2])];
    let mut paths = Vec::with_capacity(nz);
    for k in 0..nz {
        let sop_uid = rng::uid(&[id.instance_seed, k as u64, 0x50F]);
        let pos = volume.patient_position(k as f64, 0.0, 0.0);
        let position: Vec<String> = pos.iter().map(|v| ds((v * 1e4).round() / 1e4)).collect();
        let mut stored = Vec::with_capacity(ny * nx);
        for i in k * ny * nx..(k + 1) * ny * nx {
            let hu = volume.hu.get(i);
            if !(HU_RANGE.0..=HU_RANGE.1).contains(&hu) || hu.fract() != 0.0 {
                return Err(PhantomError::Volume(format!(
                    "HU {hu} is not an integer within {HU_RANGE:?}"
                )));
            }
            stored.push((hu - HU_RANGE.0) as u16);
        }
        let elements = vec![
            text(tags::IMAGE_TYPE, VR::CS, "ORIGINAL\\PRIMARY\\AXIAL"),
            text(tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE),
            text(tags::SOP_INSTANCE_UID, VR::UI, &sop_uid),
            text(tags::STUDY_DATE, VR::DA, STUDY_DATE),
            text(tags::SERIES_DATE, VR::DA, STUDY_DATE),
            text(tags::CONTENT_DATE, VR::DA, STUDY_DATE),
            text(tags::STUDY_TIME, VR::TM, STUDY_TIME),
            text(tags::SERIES_TIME, VR::TM, STUDY_TIME),
            text(tags::CONTENT_TIME, VR::TM, STUDY_TIME),
            empty(tags::ACCESSION_NUMBER, VR::SH),
            text(tags::MODALITY, VR::CS, "CT"),
            text(tags::MANUFACTURER, VR::LO, "OsteoServe phantom"),
            empty(tags::REFERRING_PHYSICIAN_NAME, VR::PN),
            text(tags::STUDY_DESCRIPTION, VR::LO, "Synthetic abdominal CT"),
            text(
                tags::SERIES_DESCRIPTION,
                VR::LO,
                "Phantom abdomen with contrast",
            ),
            text(tags::PATIENT_NAME, VR::PN, &id.patient_name),
            text(tags::PATIENT_ID, VR::LO, &id.patient_id),
            empty(tags::PATIENT_BIRTH_DATE, VR::DA),
            text(tags::PATIENT_SEX, VR::CS, &id.sex),
            text(
                tags::PATIENT_AGE,
                VR::AS,
                &format!("{:03}Y", id.age_years.min(999)),
            ),
            text(tags::PATIENT_SIZE, VR::DS, &ds(id.height_cm / 100.0)),
            text(tags::PATIENT_WEIGHT, VR::DS, &ds(id.weight_kg)),
            text(tags::CONTRAST_BOLUS_AGENT, VR::LO, "IV contrast"),
            text(tags::BODY_PART_EXAMINED, VR::CS, "ABDOMEN"),
            text(tags::SLICE_THICKNESS, VR::DS, &ds(volume.spacing_mm[0])),
            text(tags::KVP, VR::DS, "120"),
            text(tags::PATIENT_POSITION, VR::CS, "HFS"),
            text(tags::STUDY_INSTANCE_UID, VR::UI, &id.study_uid),
            text(tags::SERIES_INSTANCE_UID, VR::UI, &id.series_uid),
            text(tags::STUDY_ID, VR::SH, "1"),
            text(tags::SERIES_NUMBER, VR::IS, "1"),
            text(tags::ACQUISITION_NUMBER, VR::IS, "1"),
            text(tags::INSTANCE_NUMBER, VR::IS, &(k + 1).to_string()),
            multi(tags::IMAGE_POSITION_PATIENT, VR::DS, &position),
            multi(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, &orientation),
            text(tags::FRAME_OF_REFERENCE_UID, VR::UI, &id.frame_uid),
            empty(tags::POSITION_REFERENCE_INDICATOR, VR::LO),
            text(tags::SLICE_LOCATION, VR::DS, &position[2]),
            us(tags::SAMPLES_PER_PIXEL, 1),
            text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
            us(tags::ROWS, rows),
            us(tags::COLUMNS, cols),
            multi(tags::PIXEL_SPACING, VR::DS, &spacing),
            us(tags::BITS_ALLOCATED, 16),
            us(tags::BITS_STORED, 12),
            us(tags::HIGH_BIT, 11),
            us(tags::PIXEL_REPRESENTATION, 0),
            text(tags::WINDOW_CENTER, VR::DS, "40"),
            text(tags::WINDOW_WIDTH, VR::DS, "400"),
            text(tags::RESCALE_INTERCEPT, VR::DS, &ds(f64::from(HU_RANGE.0))),
            text(tags::RESCALE_SLOPE, VR::DS, "1"),
            text(tags::RESCALE_TYPE, VR::LO, "HU"),
            DataElement::new(
                tags::PIXEL_DATA,
                VR::OW,
                PrimitiveValue::U16(C::from_vec(stored)),
            ),
        ];
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(uids::CT_IMAGE_STORAGE)
            .media_storage_sop_instance_uid(sop_uid.as_str())
            .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
            .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
            .implementation_version_name("OSTEOSERVE_01");
        let path = dir.join(format!("CT{:04}.dcm", k + 1));
        let obj = InMemDicomObject::from_element_iter(elements)
            .with_meta(meta)
            .map_err(|e| PhantomError::Write {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        obj.write_to_file(&path).map_err(|e| PhantomError::Write {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        paths.push(path);
    }
    Ok(paths)
}

//! Results as DICOM (`dicom_outputs`): the Comprehensive SR of a classification and the Grad-CAM
//! overlay as a Secondary Capture, both in the study the request graded.

use crate::error::ServerError;
use crate::models::ServedModel;
use crate::store::Study;
use osteo_core::Grade;
use osteo_dicom::View;
use osteo_proto::v1 as pb;
use std::sync::Arc;

/// SeriesNumber of the SR series OsteoServe adds to a study.
const SR_SERIES_NUMBER: u32 = 9901;
/// SeriesNumber of the Grad-CAM series.
const SC_SERIES_NUMBER: u32 = 9902;
/// Upscaling of the 128x128 view in the secondary capture.
const SC_SCALE: usize = 2;

/// The study a request with `dicom_outputs` writes into.
pub(crate) fn study(study: Option<&Arc<Study>>) -> Result<&Study, ServerError> {
    study.map(Arc::as_ref).ok_or_else(|| {
        ServerError::FailedPrecondition(
            "dicom_outputs writes the result into the graded study: set study to a handle from \
             UploadStudy or to inline DICOM files"
                .into(),
        )
    })
}

/// The Comprehensive SR of classification `c` (grade `grade`) of `study` by `model`.
pub(crate) fn structured_report(
    model: &ServedModel,
    study: &Study,
    c: &pb::ClassifyResponse,
    grade: Grade,
) -> Result<Vec<u8>, ServerError> {
    let m = &model.artifacts.manifest;
    let p = c.probabilities.unwrap_or_default();
    let finding = osteo_dicom::sr::Finding {
        grade: grade.index(),
        probabilities: [p.normal, p.osteopenia, p.osteoporosis],
        model: m.name.clone(),
        version: m.version.clone(),
        backend: c
            .backend
            .as_ref()
            .map(|b| b.name.clone())
            .unwrap_or_default(),
        synthetic: m.trained_on_synthetic(),
        series_uid: osteo_dicom::sr::new_uid(),
        series_number: SR_SERIES_NUMBER,
    };
    Ok(osteo_dicom::sr::structured_report(&study.source, &finding)?)
}

/// The Grad-CAM overlay (`map` over `view`, explaining `grade`) of `study` as a Secondary
/// Capture.
pub(crate) fn secondary_capture(
    model: &ServedModel,
    study: &Study,
    view: &View,
    map: &[f32],
    grade: Grade,
    backend: &str,
) -> Result<Vec<u8>, ServerError> {
    let m = &model.artifacts.manifest;
    let pixels = osteo_dicom::render::overlay_rgb(view.channel(1), map, view.spec.width, SC_SCALE)?;
    let size = |n: usize| {
        u16::try_from(n * SC_SCALE)
            .map_err(|_| ServerError::Internal(format!("a view of {n} pixels is too large")))
    };
    let image = osteo_dicom::secondary_capture::RgbImage {
        rows: size(view.spec.height)?,
        columns: size(view.spec.width)?,
        pixels,
    };
    let description = osteo_dicom::secondary_capture::Description {
        model: m.name.clone(),
        version: m.version.clone(),
        backend: backend.to_string(),
        grade: grade.name().to_string(),
        synthetic: m.trained_on_synthetic(),
        series_number: SC_SERIES_NUMBER,
    };
    Ok(osteo_dicom::secondary_capture::secondary_capture(
        &study.source,
        &image,
        &description,
    )?)
}

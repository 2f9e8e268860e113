//! The results a grading request writes as files: the DICOM Comprehensive SR and the FHIR
//! Bundle of a classification, in the graded study, named by what produced them.

use crate::error::ServerError;
use crate::models::ServedModel;
use crate::store::Study;
use osteo_dicom::attenuation::Attenuation;
use osteo_proto::v1 as pb;

/// What a result is written from: the graded study and its vertebral attenuation.
#[derive(Clone, Copy)]
pub(super) struct Sources<'a> {
    /// The graded study, if the request had one.
    pub study: Option<&'a Study>,
    /// Its attenuation, if measured.
    pub attenuation: Option<&'a Attenuation>,
}

/// The study a request with `dicom_outputs` writes its results into.
pub(super) fn results_study(study: Option<&Study>) -> Result<&Study, ServerError> {
    study.ok_or_else(|| {
        ServerError::FailedPrecondition(
            "dicom_outputs writes the result into the graded study: set study to a handle from \
             UploadStudy or to inline DICOM files"
                .into(),
        )
    })
}

/// What produced classification `c`: `model` on the backend and device that answered.
pub(super) fn producer<'a>(
    model: &'a ServedModel,
    c: &'a pb::ClassifyResponse,
) -> osteo_pipeline::Producer<'a> {
    let backend = c.backend.as_ref();
    osteo_pipeline::Producer {
        manifest: &model.artifacts.manifest,
        backend: backend.map_or("", |b| b.name.as_str()),
        device: backend.map_or("", |b| b.device.as_str()),
    }
}

/// The Comprehensive SR of classification `c` (`graded`) of the prepared study by `model`.
pub(super) fn structured_report(
    model: &ServedModel,
    sources: Sources<'_>,
    c: &pb::ClassifyResponse,
    graded: &osteo_pipeline::Graded,
) -> Result<Vec<u8>, ServerError> {
    let study = results_study(sources.study)?;
    let by = producer(model, c);
    Ok(osteo_pipeline::structured_report(
        &study.source,
        by,
        graded,
        sources.attenuation,
    )?)
}

/// The FHIR Bundle of classification `c` (`graded`) by `model`, of the prepared study if any.
pub(super) fn fhir_bundle(
    model: &ServedModel,
    sources: Sources<'_>,
    c: &pb::ClassifyResponse,
    graded: &osteo_pipeline::Graded,
) -> String {
    let by = producer(model, c);
    let source = sources.study.map(|s| &s.source);
    let attenuation = sources.attenuation;
    String::from_utf8(osteo_pipeline::fhir::bundle_json(
        source,
        by,
        graded,
        attenuation,
    ))
    .unwrap_or_default()
}

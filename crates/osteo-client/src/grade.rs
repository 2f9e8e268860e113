//! Grading a study on a server: the study uploaded (when given as files), Classify, Explain or
//! CompareBackends asked for, and the upload deleted again.

use crate::connect::Client;
use crate::error::ClientError;
use crate::upload::upload_path;
use osteo_proto::v1 as pb;
use std::path::Path;

/// What to grade: the study (a DICOM file or directory, if any) and the clinical variables.
#[derive(Debug, Clone, Default)]
pub struct Subject<'a> {
    /// The CT study's files: a DICOM file or a directory searched recursively.
    pub dicom: Option<&'a Path>,
    /// The clinical variables given explicitly.
    pub clinical: pb::ClinicalVariables,
    /// Whether the server reads the clinical variables from the study's header (explicit ones
    /// win).
    pub clinical_from_dicom: bool,
}

/// Which model and backend answer ("" = the server's default model, the model's backend).
#[derive(Debug, Clone, Default)]
pub struct Choice {
    /// The model's name.
    pub model: String,
    /// The backend's name.
    pub backend: String,
}

/// A server's answer, and a warning when the study uploaded for it could not be deleted (it
/// expires on the server anyway).
#[derive(Debug)]
pub struct Answer<T> {
    /// The response.
    pub response: T,
    /// Why the uploaded study could not be deleted, if it could not.
    pub warning: Option<String>,
}

/// Uploads the subject's study (if any): the reference and the handle to delete afterwards.
async fn study_ref(
    client: &mut Client,
    subject: &Subject<'_>,
) -> Result<(Option<pb::StudyRef>, Option<String>), ClientError> {
    match subject.dicom {
        None => Ok((None, None)),
        Some(path) => {
            let handle = upload_path(client, path).await?;
            let study = pb::StudyRef {
                source: Some(pb::study_ref::Source::Study(handle.clone())),
            };
            Ok((Some(study), Some(handle)))
        }
    }
}

/// Deletes an uploaded study; a failure becomes a warning.
async fn cleanup(client: &mut Client, handle: Option<String>) -> Option<String> {
    let study = handle?;
    let deleted = client
        .delete_study(pb::DeleteStudyRequest {
            study: study.clone(),
        })
        .await;
    deleted
        .err()
        .map(|e| format!("could not delete study {study}: {}", e.message()))
}

/// Runs `call` on the uploaded subject, then deletes the upload whatever happened.
async fn with_study<T, F, Fut>(
    client: &mut Client,
    subject: &Subject<'_>,
    call: F,
) -> Result<Answer<T>, ClientError>
where
    F: FnOnce(Client, Option<pb::StudyRef>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let (study, handle) = study_ref(client, subject).await?;
    let result = call(client.clone(), study).await;
    let warning = cleanup(client, handle).await;
    Ok(Answer {
        response: result?.into_inner(),
        warning,
    })
}

/// Classify: the grade of the subject, with the DICOM SR when `dicom_outputs`.
pub async fn classify(
    client: &mut Client,
    choice: &Choice,
    subject: &Subject<'_>,
    dicom_outputs: bool,
) -> Result<Answer<pb::ClassifyResponse>, ClientError> {
    with_study(client, subject, |mut c, study| async move {
        c.classify(pb::ClassifyRequest {
            study,
            clinical: Some(subject.clinical),
            model: choice.model.clone(),
            backend: choice.backend.clone(),
            clinical_from_dicom: subject.clinical_from_dicom,
            dicom_outputs,
        })
        .await
    })
    .await
}

/// Explain: the grade, the Grad-CAM of the predicted grade and the clinical attributions, with
/// the DICOM SR and secondary capture when `dicom_outputs`.
pub async fn explain(
    client: &mut Client,
    choice: &Choice,
    subject: &Subject<'_>,
    dicom_outputs: bool,
) -> Result<Answer<pb::ExplainResponse>, ClientError> {
    with_study(client, subject, |mut c, study| async move {
        c.explain(pb::ExplainRequest {
            study,
            clinical: Some(subject.clinical),
            model: choice.model.clone(),
            backend: choice.backend.clone(),
            target: pb::Grade::Unspecified as i32,
            clinical_from_dicom: subject.clinical_from_dicom,
            dicom_outputs,
        })
        .await
    })
    .await
}

/// CompareBackends: the subject graded on `backends` of `model` (every serving backend when
/// empty).
pub async fn compare(
    client: &mut Client,
    model: &str,
    backends: &[String],
    subject: &Subject<'_>,
) -> Result<Answer<pb::CompareBackendsResponse>, ClientError> {
    with_study(client, subject, |mut c, study| async move {
        c.compare_backends(pb::CompareBackendsRequest {
            study,
            clinical: Some(subject.clinical),
            model: model.to_string(),
            backends: backends.to_vec(),
            clinical_from_dicom: subject.clinical_from_dicom,
        })
        .await
    })
    .await
}

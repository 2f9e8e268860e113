//! Grading a study on a server: Classify, Explain or CompareBackends on a study given as files,
//! in one GradeStudy call by default (nothing stays stored, any replica can answer, a transient
//! failure is retried), or uploaded first and asked for by handle (with an affinity key on every
//! call and the upload deleted afterwards).

use crate::affinity;
use crate::connect::Client;
use crate::error::ClientError;
use crate::retry::{retry, transient_status};
use crate::upload::{CHUNK, grade_stream, read_path, upload};
use bytes::Bytes;
use osteo_proto::v1 as pb;
use std::path::Path;
use std::sync::Arc;

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

/// How a study given as files reaches the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Via {
    /// GradeStudy: uploaded and graded in one call; nothing stays stored, so it works behind
    /// any balancer, and a transient failure is retried.
    #[default]
    OneCall,
    /// UploadStudy, the call by handle, DeleteStudy: three calls with one affinity key, for a
    /// balancer that hashes on it (or a single server).
    Handle,
}

/// Which model and backend answer ("" = the server's default model, the model's backend), and
/// how the study travels.
#[derive(Debug, Clone, Default)]
pub struct Choice {
    /// The model's name.
    pub model: String,
    /// The backend's name.
    pub backend: String,
    /// The model's version ("" = the version the server answers with by default).
    pub version: String,
    /// One call, or upload and handle.
    pub via: Via,
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

impl<T> Answer<T> {
    fn clean(response: T) -> Self {
        Self {
            response,
            warning: None,
        }
    }
}

/// GradeStudy on `files` with `action`: the server's answer, the call retried while it fails
/// transiently (the files are held once and streamed again on each try).
pub async fn grade_files(
    client: &Client,
    action: pb::grade_action::Action,
    files: Arc<Vec<Bytes>>,
) -> Result<pb::GradeStudyResponse, tonic::Status> {
    let action = pb::GradeAction {
        action: Some(action),
    };
    retry(transient_status, || {
        let mut c = client.clone();
        let stream = grade_stream(action.clone(), files.clone(), CHUNK);
        async move { c.grade_study(stream).await.map(tonic::Response::into_inner) }
    })
    .await
}

/// One kind of grading request: how it names its study, how GradeStudy carries it and answers
/// it, and the direct call.
trait Ask: Clone + Send + Sized + 'static {
    /// The answer.
    type Answer;
    /// Sets the request's study reference.
    fn set_study(&mut self, study: Option<pb::StudyRef>);
    /// The request as a GradeStudy action.
    fn action(self) -> pb::grade_action::Action;
    /// The answer in a GradeStudy result.
    fn answer(result: pb::grade_study_response::Result) -> Option<Self::Answer>;
    /// The direct call.
    fn call(
        client: Client,
        request: tonic::Request<Self>,
    ) -> impl std::future::Future<Output = Result<tonic::Response<Self::Answer>, tonic::Status>> + Send;
}

impl Ask for pb::ClassifyRequest {
    type Answer = pb::ClassifyResponse;
    fn set_study(&mut self, study: Option<pb::StudyRef>) {
        self.study = study;
    }
    fn action(self) -> pb::grade_action::Action {
        pb::grade_action::Action::Classify(self)
    }
    fn answer(result: pb::grade_study_response::Result) -> Option<Self::Answer> {
        match result {
            pb::grade_study_response::Result::Classification(r) => Some(r),
            _ => None,
        }
    }
    async fn call(
        mut client: Client,
        request: tonic::Request<Self>,
    ) -> Result<tonic::Response<Self::Answer>, tonic::Status> {
        client.classify(request).await
    }
}

impl Ask for pb::ExplainRequest {
    type Answer = pb::ExplainResponse;
    fn set_study(&mut self, study: Option<pb::StudyRef>) {
        self.study = study;
    }
    fn action(self) -> pb::grade_action::Action {
        pb::grade_action::Action::Explain(self)
    }
    fn answer(result: pb::grade_study_response::Result) -> Option<Self::Answer> {
        match result {
            pb::grade_study_response::Result::Explanation(r) => Some(r),
            _ => None,
        }
    }
    async fn call(
        mut client: Client,
        request: tonic::Request<Self>,
    ) -> Result<tonic::Response<Self::Answer>, tonic::Status> {
        client.explain(request).await
    }
}

impl Ask for pb::CompareBackendsRequest {
    type Answer = pb::CompareBackendsResponse;
    fn set_study(&mut self, study: Option<pb::StudyRef>) {
        self.study = study;
    }
    fn action(self) -> pb::grade_action::Action {
        pb::grade_action::Action::Compare(self)
    }
    fn answer(result: pb::grade_study_response::Result) -> Option<Self::Answer> {
        match result {
            pb::grade_study_response::Result::Comparison(r) => Some(r),
            _ => None,
        }
    }
    async fn call(
        mut client: Client,
        request: tonic::Request<Self>,
    ) -> Result<tonic::Response<Self::Answer>, tonic::Status> {
        client.compare_backends(request).await
    }
}

/// Asks `request` about the subject: without a study directly (retried while transient), with
/// one in one GradeStudy call or by handle, as `via` says.
async fn ask<R: Ask>(
    client: &mut Client,
    via: Via,
    subject: &Subject<'_>,
    request: R,
) -> Result<Answer<R::Answer>, ClientError> {
    let Some(path) = subject.dicom else {
        let answer = retry(transient_status, || {
            R::call(client.clone(), tonic::Request::new(request.clone()))
        })
        .await?;
        return Ok(Answer::clean(answer.into_inner()));
    };
    let files = read_path(path)?;
    match via {
        Via::OneCall => {
            let graded = grade_files(client, request.action(), files).await?;
            let answer = graded.result.and_then(R::answer).ok_or_else(|| {
                ClientError::Answer("the server's GradeStudy answer holds no result".into())
            })?;
            Ok(Answer::clean(answer))
        }
        Via::Handle => {
            let key = affinity::new_key();
            let handle = upload(client, files, Some(&key)).await?.study;
            let mut request = request;
            request.set_study(Some(pb::StudyRef {
                source: Some(pb::study_ref::Source::Study(handle.clone())),
            }));
            let result = R::call(client.clone(), affinity::request(request, Some(&key))?).await;
            let deleted = client
                .delete_study(affinity::request(
                    pb::DeleteStudyRequest {
                        study: handle.clone(),
                    },
                    Some(&key),
                )?)
                .await;
            let warning = deleted
                .err()
                .map(|e| format!("could not delete study {handle}: {}", e.message()));
            Ok(Answer {
                response: result?.into_inner(),
                warning,
            })
        }
    }
}

/// The result formats asked for beside the answer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outputs {
    /// The DICOM SR (and, for Explain, the secondary capture).
    pub dicom: bool,
    /// The FHIR R4 Bundle.
    pub fhir: bool,
}

/// Classify: the grade of the subject, with the `outputs` asked for.
pub async fn classify(
    client: &mut Client,
    choice: &Choice,
    subject: &Subject<'_>,
    outputs: Outputs,
) -> Result<Answer<pb::ClassifyResponse>, ClientError> {
    let request = pb::ClassifyRequest {
        study: None,
        clinical: Some(subject.clinical),
        model: choice.model.clone(),
        model_version: choice.version.clone(),
        backend: choice.backend.clone(),
        clinical_from_dicom: subject.clinical_from_dicom,
        dicom_outputs: outputs.dicom,
        fhir_outputs: outputs.fhir,
    };
    ask(client, choice.via, subject, request).await
}

/// Explain: the grade, the Grad-CAM of the predicted grade and the clinical attributions, with
/// the `outputs` asked for.
pub async fn explain(
    client: &mut Client,
    choice: &Choice,
    subject: &Subject<'_>,
    outputs: Outputs,
) -> Result<Answer<pb::ExplainResponse>, ClientError> {
    let request = pb::ExplainRequest {
        study: None,
        clinical: Some(subject.clinical),
        model: choice.model.clone(),
        model_version: choice.version.clone(),
        backend: choice.backend.clone(),
        target: pb::Grade::Unspecified as i32,
        clinical_from_dicom: subject.clinical_from_dicom,
        dicom_outputs: outputs.dicom,
        fhir_outputs: outputs.fhir,
    };
    ask(client, choice.via, subject, request).await
}

/// CompareBackends: the subject graded on `backends` of `choice.model` (every serving backend
/// when empty).
pub async fn compare(
    client: &mut Client,
    choice: &Choice,
    backends: &[String],
    subject: &Subject<'_>,
) -> Result<Answer<pb::CompareBackendsResponse>, ClientError> {
    let request = pb::CompareBackendsRequest {
        study: None,
        clinical: Some(subject.clinical),
        model: choice.model.clone(),
        model_version: choice.version.clone(),
        backends: backends.to_vec(),
        clinical_from_dicom: subject.clinical_from_dicom,
    };
    ask(client, choice.via, subject, request).await
}

//! Grading one study for a PACS, shared by `osteo screen` (DICOMweb) and `osteo receive`
//! (DIMSE): the model version that answers chosen once, then each study's CT files in one
//! GradeStudy call (upload, quality gate, explanation with DICOM outputs; nothing stays on the
//! server), answered as the results CSV's row and the SR and secondary capture to store back.

use super::{Provenance, Row};
use crate::connect::Client;
use crate::error::ClientError;
use crate::grade::{Choice, grade_files};
use crate::report::grade_name;
use crate::retry::{retry, transient_status};
use bytes::Bytes;
use osteo_proto::v1 as pb;
use std::sync::Arc;

/// How studies are graded: the server, the model version that answers, the backend.
#[derive(Clone)]
pub struct Grader {
    server: Client,
    model: String,
    version: String,
    backend: String,
    description: String,
    provenance: Provenance,
    fhir: bool,
}

/// One graded study: its row, and the SR (and Grad-CAM secondary capture) to store back, empty
/// when the model's quality gate refused the study.
#[derive(Debug, Clone)]
pub struct Graded {
    /// The results CSV's row.
    pub row: Row,
    /// The DICOM results, SR first.
    pub results: Vec<Vec<u8>>,
    /// The FHIR R4 Bundle (JSON), when asked for ([`Grader::with_fhir`]) and graded.
    pub fhir: Option<String>,
}

impl Grader {
    /// The grader of `choice` on `server`: the model ("" = the server's default) in the version
    /// asked for, else the server's default version (one ListModels, retried).
    pub async fn new(server: Client, choice: &Choice) -> Result<Self, ClientError> {
        let models = retry(transient_status, || {
            let mut c = server.clone();
            async move { c.list_models(pb::ListModelsRequest {}).await }
        })
        .await?
        .into_inner();
        let wanted = match choice.model.as_str() {
            "" => models.default_model.clone(),
            m => m.to_string(),
        };
        let version = choice.version.as_str();
        let model = models
            .models
            .iter()
            .find(|m| {
                m.name == wanted
                    && if version.is_empty() {
                        m.default_version
                    } else {
                        m.version == version
                    }
            })
            .ok_or_else(|| {
                ClientError::Status(Box::new(tonic::Status::not_found(if version.is_empty() {
                    format!("the server serves no model {wanted}")
                } else {
                    format!("the server serves no version {version} of model {wanted}")
                })))
            })?;
        Ok(Self {
            server,
            model: model.name.clone(),
            version: model.version.clone(),
            backend: choice.backend.clone(),
            description: osteo_dicom::sr::series_description(&model.name, &model.version),
            provenance: Provenance::of(
                model,
                match choice.backend.as_str() {
                    "" => &model.default_backend,
                    b => b,
                },
                "",
            ),
            fhir: false,
        })
    }

    /// Also asks for each graded study's FHIR R4 Bundle.
    pub fn with_fhir(mut self, fhir: bool) -> Self {
        self.fhir = fhir;
        self
    }

    /// The provenance of a row this grader writes without a server answer naming the backend:
    /// the model version it asks, its weights digest and backend, the server's version.
    pub fn provenance(&self) -> Provenance {
        self.provenance.clone()
    }

    /// The SeriesDescription of this model version's SR series: a study holding one was graded
    /// by this version already.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Grades study `uid` from its CT `files`: a `classified` row and its results, or a
    /// `refused` row (the quality gate, or the header's clinical values) and none.
    pub async fn grade(&self, uid: &str, files: Arc<Vec<Bytes>>) -> Result<Graded, ClientError> {
        let request = pb::ExplainRequest {
            model: self.model.clone(),
            model_version: self.version.clone(),
            backend: self.backend.clone(),
            clinical_from_dicom: true,
            dicom_outputs: true,
            fhir_outputs: self.fhir,
            ..Default::default()
        };
        let answer = grade_files(
            &self.server,
            pb::grade_action::Action::Explain(request),
            files,
        )
        .await;
        let explained = match answer {
            Ok(r) => match r.result {
                Some(pb::grade_study_response::Result::Explanation(e)) => e,
                _ => {
                    return Err(ClientError::Answer(
                        "the server's GradeStudy answer holds no explanation".into(),
                    ));
                }
            },
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                return Ok(Graded {
                    row: Row {
                        provenance: self.provenance(),
                        ..Row::ended(uid, "refused", s.message())
                    },
                    results: Vec::new(),
                    fhir: None,
                });
            }
            Err(s) => return Err(s.into()),
        };
        let c = explained.classification.unwrap_or_default();
        if c.dicom_sr.is_empty() {
            return Err(ClientError::Answer("the server returned no SR".into()));
        }
        let p = c.probabilities.unwrap_or_default();
        let mut results = vec![c.dicom_sr];
        if !explained.dicom_secondary_capture.is_empty() {
            results.push(explained.dicom_secondary_capture);
        }
        let backend = c.backend.clone().unwrap_or_default();
        let provenance = Provenance::of(
            &c.model.clone().unwrap_or_default(),
            &backend.name,
            &backend.device,
        );
        Ok(Graded {
            row: Row {
                study_uid: uid.to_string(),
                status: "classified",
                grade: grade_name(c.grade).to_string(),
                probabilities: Some([p.normal, p.osteopenia, p.osteoporosis]),
                reason: String::new(),
                provenance,
                decision: c.decision.as_ref().and_then(crate::report::decision_of),
                vertebrae: c
                    .attenuation
                    .as_ref()
                    .map(crate::report::Vertebrae::from_wire),
            },
            results,
            fhir: (!c.fhir_bundle.is_empty()).then_some(c.fhir_bundle),
        })
    }
}

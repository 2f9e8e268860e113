//! The `osteo.v1.OsteoService` implementation.

use crate::auth::{Principal, Role};
use crate::convert;
use crate::error::ServerError;
use crate::models::ServedModel;
use crate::scheduler::Worker;
use crate::store::Study;
use crate::text::client_text;
use osteo_core::{Grade, Sample};
use osteo_dicom::View;
use osteo_proto::v1 as pb;
use osteo_proto::v1::osteo_service_server::OsteoService;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status, Streaming};

pub(crate) use crate::request::{Labels, lock_labels, set_grade};
use crate::request::{set_study, set_study_ref};
pub use crate::state::State;
use crate::state::blocking;
use crate::upload::{Upload, read_upload};

/// The gRPC service.
#[derive(Clone)]
pub struct Service {
    state: Arc<State>,
}

impl Service {
    /// A service over shared state.
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }

    /// The shared state.
    pub(crate) fn state(&self) -> &Arc<State> {
        &self.state
    }
}

/// The owner filter of a study lookup: admins reach any study for reading and deleting.
fn owner_filter(p: &Principal, admin_may: bool) -> Option<&str> {
    (!(admin_may && p.has(Role::Admin))).then_some(p.name.as_str())
}

/// A prepared request: the study (if any), its view (image models) and the model input.
struct Prepared {
    study: Option<Arc<Study>>,
    view: Option<Arc<View>>,
    input: Sample,
}

impl Prepared {
    /// The study handle ("" without a study).
    fn handle(&self) -> String {
        self.study
            .as_ref()
            .map(|s| s.handle.clone())
            .unwrap_or_default()
    }
}

impl Service {
    /// Resolves the study reference, builds the model's view and encodes the clinical variables.
    async fn prepare(
        state: &Arc<State>,
        labels: &std::sync::Mutex<Labels>,
        model: &ServedModel,
        study: Option<&pb::StudyRef>,
        clinical: Option<&pb::ClinicalVariables>,
        clinical_from_dicom: bool,
    ) -> Result<Prepared, ServerError> {
        set_study_ref(labels, study);
        let start = Instant::now();
        let m = &model.artifacts.manifest;
        let study = match study.and_then(|s| s.source.as_ref()) {
            None => None,
            Some(pb::study_ref::Source::Study(handle)) => {
                if handle.is_empty() {
                    return Err(ServerError::InvalidArgument(
                        "study.study is empty: pass a handle from UploadStudy".into(),
                    ));
                }
                let owner = lock_labels(labels).principal.name.clone();
                Some(state.store.get(handle, Some(&owner))?.0)
            }
            Some(pb::study_ref::Source::Inline(inline)) => {
                if inline.files.is_empty() {
                    return Err(ServerError::InvalidArgument(
                        "study.inline has no files: send the DICOM files of the series".into(),
                    ));
                }
                let series = Some(inline.series_instance_uid.clone()).filter(|s| !s.is_empty());
                let owner = lock_labels(labels).principal.name.clone();
                Some(Arc::new(
                    state.ingest(inline.files.clone(), series, owner).await?,
                ))
            }
        };
        let view = match m.view {
            None => None,
            Some(spec) => {
                let s = study.clone().ok_or_else(|| {
                    ServerError::FailedPrecondition(format!(
                        "model {} ({}) reads CT: set study to a handle from UploadStudy or to \
                         inline DICOM files",
                        m.name, m.kind
                    ))
                })?;
                // A view already built for this study is taken here; building one is blocking
                // work and runs off the async threads.
                // The quality gate runs first (cached with the study) on the ingest threads.
                match s.cached_view(&spec) {
                    Some(v) => Some(v),
                    None => {
                        let pool = state.ingest_pool.clone();
                        Some(blocking(move || pool.install(|| s.view(&spec))).await?)
                    }
                }
            }
        };
        let tabular = match &m.tabular {
            None => None,
            Some(spec) => {
                let c = if clinical_from_dicom {
                    let s = study.as_ref().ok_or_else(|| {
                        ServerError::FailedPrecondition(
                            "clinical_from_dicom reads the study's DICOM header: set study to a \
                             handle from UploadStudy or to inline DICOM files"
                                .into(),
                        )
                    })?;
                    convert::clinical_from_header(clinical, &s.demographics)?
                } else {
                    let c = clinical.ok_or_else(|| {
                        ServerError::FailedPrecondition(format!(
                            "model {} ({}) reads clinical variables: set clinical (age, sex, \
                             height, weight), or clinical_from_dicom to read them from the \
                             study's header",
                            m.name, m.kind
                        ))
                    })?;
                    convert::clinical(c)?
                };
                Some(spec.encode(&c).map_err(|e| {
                    ServerError::InvalidArgument(format!("clinical variables: {e}"))
                })?)
            }
        };
        metrics::histogram!("osteo_preprocess_seconds", "model" => m.name.clone())
            .record(start.elapsed().as_secs_f64());
        if let Some(s) = &study {
            set_study(labels, s);
        }
        Ok(Prepared {
            study,
            input: Sample {
                image: view.as_ref().map(|v| v.data.clone()),
                tabular,
            },
            view,
        })
    }

    /// Grades a prepared input on one backend.
    async fn grade_on(
        model: &ServedModel,
        backend: &str,
        prepared: &Prepared,
    ) -> Result<Graded, ServerError> {
        let (_, worker) = model.worker(backend)?;
        let logits = worker.predict(prepared.input.clone()).await?;
        Graded::new(worker, logits)
    }

    /// The Classify answer for a prepared input on one backend, and its grade.
    async fn classify_prepared(
        model: &ServedModel,
        backend: &str,
        prepared: &Prepared,
        start: Instant,
    ) -> Result<(pb::ClassifyResponse, Grade), ServerError> {
        let g = Self::grade_on(model, backend, prepared).await?;
        Ok(Self::classification(model, prepared, g, start))
    }

    /// The Classify answer of a graded input, and its grade.
    fn classification(
        model: &ServedModel,
        prepared: &Prepared,
        g: Graded,
        start: Instant,
    ) -> (pb::ClassifyResponse, Grade) {
        let response = pb::ClassifyResponse {
            study: prepared.handle(),
            model: Some(convert::model(model)),
            backend: Some(g.backend),
            grade: convert::grade(g.grade),
            probabilities: Some(g.probabilities),
            logits: g.logits,
            latency_ms: start.elapsed().as_secs_f64() * 1e3,
            dicom_sr: Vec::new(),
        };
        (response, g.grade)
    }
}

/// One backend's answer on a prepared input.
struct Graded {
    backend: pb::BackendDescriptor,
    grade: Grade,
    probabilities: pb::GradeProbabilities,
    logits: Vec<f32>,
}

impl Graded {
    /// The grade and probabilities of `logits` from `worker`.
    fn new(worker: &Worker, logits: Vec<f32>) -> Result<Self, ServerError> {
        let (grade, probabilities) = convert::probabilities(&logits)?;
        Ok(Self {
            backend: convert::backend(worker.info()),
            grade,
            probabilities,
            logits,
        })
    }
}

/// Resolves the requested model and backend, labelling the request with the served names (or
/// `unknown` for a name the server does not serve).
pub(crate) fn resolve<'a>(
    state: &'a State,
    labels: &std::sync::Mutex<Labels>,
    model: &str,
    backend: &str,
) -> Result<(&'a ServedModel, &'a str), ServerError> {
    let set = |m: &str, b: &str| {
        let mut l = lock_labels(labels);
        l.model = m.to_string();
        l.backend = b.to_string();
    };
    let model = state
        .models()?
        .get(model)
        .inspect_err(|_| set("unknown", ""))?;
    let (backend, _) = model
        .worker(backend)
        .inspect_err(|_| set(model.name(), "unknown"))?;
    set(model.name(), backend);
    Ok((model, backend))
}

/// The backends a CompareBackends request names, checked before any work: each a backend
/// serving the model, each at most once (so the list is never longer than the served list);
/// every serving backend when the request names none. Returned in the requested order.
fn compare_backends(model: &ServedModel, requested: &[String]) -> Result<Vec<String>, ServerError> {
    let served = model.backend_names();
    if requested.is_empty() {
        return Ok(served);
    }
    if requested.len() > served.len() {
        return Err(ServerError::InvalidArgument(format!(
            "backends lists {} entries but model {} is served by {} backend(s) ({}): name each \
             at most once",
            requested.len(),
            model.name(),
            served.len(),
            served.join(", ")
        )));
    }
    let mut chosen = Vec::with_capacity(requested.len());
    for name in requested {
        let (canonical, _) = model.worker(name)?;
        if chosen.iter().any(|c: &String| c == canonical) {
            return Err(ServerError::InvalidArgument(format!(
                "backends names \"{}\" twice: name each backend at most once",
                client_text(name)
            )));
        }
        chosen.push(canonical.to_string());
    }
    Ok(chosen)
}

#[tonic::async_trait]
impl OsteoService for Service {
    async fn upload_study(
        &self,
        request: Request<Streaming<pb::UploadStudyRequest>>,
    ) -> Result<Response<pb::UploadStudyResponse>, Status> {
        self.run(
            "UploadStudy",
            request,
            |state, labels, mut stream| async move {
                let (owner, holder) = {
                    let l = lock_labels(&labels);
                    (
                        l.principal.name.clone(),
                        state.budget_holder(Some(&l.principal), l.peer),
                    )
                };
                let Upload {
                    files,
                    series_uid,
                    held_bytes,
                    slot,
                } = read_upload(&state, &holder, &mut stream).await?;
                let study = state.ingest(files, series_uid, owner).await?;
                drop((held_bytes, slot));
                let (study, ttl) = state.store.insert(study);
                set_study(&labels, &study);
                let gates = state.gates(&study).await?;
                Ok(pb::UploadStudyResponse {
                    summary: Some(convert::summary(&study, Some(ttl), &gates)),
                })
            },
        )
        .await
    }

    async fn classify(
        &self,
        request: Request<pb::ClassifyRequest>,
    ) -> Result<Response<pb::ClassifyResponse>, Status> {
        self.run("Classify", request, |state, labels, req| async move {
            let start = Instant::now();
            let _permit = state.admit()?;
            let (model, backend) = resolve(&state, &labels, &req.model, &req.backend)?;
            let prepared = Self::prepare(
                &state,
                &labels,
                model,
                req.study.as_ref(),
                req.clinical.as_ref(),
                req.clinical_from_dicom,
            )
            .await?;
            let (mut response, grade) =
                Self::classify_prepared(model, backend, &prepared, start).await?;
            set_grade(&labels, grade);
            if req.dicom_outputs {
                let study = crate::results_dicom::study(prepared.study.as_ref())?;
                response.dicom_sr =
                    crate::results_dicom::structured_report(model, study, &response, grade)?;
            }
            Ok(response)
        })
        .await
    }

    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        self.run("Explain", request, |state, labels, req| async move {
            let start = Instant::now();
            let _permit = state.admit()?;
            let (model, backend) = resolve(&state, &labels, &req.model, &req.backend)?;
            let m = &model.artifacts.manifest;
            let requested = convert::grade_from(req.target)?;
            let (_, worker) = model.worker(backend)?;
            let prepared = Self::prepare(
                &state,
                &labels,
                model,
                req.study.as_ref(),
                req.clinical.as_ref(),
                req.clinical_from_dicom,
            )
            .await?;
            // One backend call gives the prediction and the Grad-CAM parts of every class.
            let explanation = worker.explain(prepared.input.clone()).await?;
            let graded = Graded::new(worker, explanation.logits.clone())?;
            let (mut classification, predicted) =
                Self::classification(model, &prepared, graded, start);
            set_grade(&labels, predicted);
            let target = requested.unwrap_or(predicted);
            let features = convert::attributions(
                m,
                prepared.input.tabular.as_deref(),
                explanation.tabular_gradients.get(target.index()),
            );
            // Models that read CT get the Grad-CAM map; a tabular model only its attributions.
            let gradcam = match prepared.view.clone() {
                None => None,
                Some(view) => {
                    let parts = explanation
                        .parts(target)
                        .map_err(|e| ServerError::Internal(format!("Grad-CAM: {e}")))?;
                    Some(
                        blocking(move || {
                            let map = osteo_core::gradcam::assemble(
                                &parts,
                                view.spec.height,
                                view.spec.width,
                            )
                            .map_err(|e| ServerError::Internal(format!("Grad-CAM: {e}")))?;
                            let png = osteo_dicom::render::overlay_png(&view, &map.values, 2)?;
                            Ok(pb::GradCamMap {
                                height: map.height as u32,
                                width: map.width as u32,
                                values: map.values,
                                overlay_png: png,
                                geometry: Some(convert::view_geometry(&view)),
                            })
                        })
                        .await?,
                    )
                }
            };
            let mut dicom_secondary_capture = Vec::new();
            if req.dicom_outputs {
                let study = crate::results_dicom::study(prepared.study.as_ref())?;
                classification.dicom_sr = crate::results_dicom::structured_report(
                    model,
                    study,
                    &classification,
                    predicted,
                )?;
                // The overlay as a Secondary Capture, when there is one (models that read CT).
                if let (Some(view), Some(map)) = (prepared.view.as_ref(), gradcam.as_ref()) {
                    let backend_name = classification
                        .backend
                        .as_ref()
                        .map(|b| b.name.clone())
                        .unwrap_or_default();
                    dicom_secondary_capture = crate::results_dicom::secondary_capture(
                        model,
                        study,
                        view,
                        &map.values,
                        target,
                        &backend_name,
                    )?;
                }
            }
            classification.latency_ms = start.elapsed().as_secs_f64() * 1e3;
            Ok(pb::ExplainResponse {
                classification: Some(classification),
                target: convert::grade(target),
                gradcam,
                features,
                dicom_secondary_capture,
            })
        })
        .await
    }

    async fn compare_backends(
        &self,
        request: Request<pb::CompareBackendsRequest>,
    ) -> Result<Response<pb::CompareBackendsResponse>, Status> {
        self.run(
            "CompareBackends",
            request,
            |state, labels, req| async move {
                let _permit = state.admit()?;
                let (model, _) = resolve(&state, &labels, &req.model, "")?;
                let names = compare_backends(model, &req.backends)?;
                // The label lists the backends in the model's order: a bounded set of values.
                let label: Vec<String> = model
                    .backend_names()
                    .into_iter()
                    .filter(|b| names.contains(b))
                    .collect();
                lock_labels(&labels).backend = label.join(",");
                let prepared = Self::prepare(
                    &state,
                    &labels,
                    model,
                    req.study.as_ref(),
                    req.clinical.as_ref(),
                    req.clinical_from_dicom,
                )
                .await?;
                let mut graded = Vec::new();
                for n in &names {
                    let start = Instant::now();
                    let g = Self::grade_on(model, n, &prepared).await?;
                    graded.push((g, start.elapsed().as_secs_f64() * 1e3));
                }
                let probs: Vec<[f32; 3]> = graded
                    .iter()
                    .map(|(g, _)| {
                        let p = &g.probabilities;
                        [p.normal, p.osteopenia, p.osteoporosis]
                    })
                    .collect();
                let mut max_abs_diff = 0f64;
                for a in &probs {
                    for b in &probs {
                        for k in 0..3 {
                            max_abs_diff = max_abs_diff.max(f64::from((a[k] - b[k]).abs()));
                        }
                    }
                }
                let grades_agree = graded.windows(2).all(|w| w[0].0.grade == w[1].0.grade);
                if let (true, Some((g, _))) = (grades_agree, graded.first()) {
                    set_grade(&labels, g.grade);
                }
                let results = graded
                    .into_iter()
                    .map(|(g, latency_ms)| pb::BackendResult {
                        backend: Some(g.backend),
                        grade: convert::grade(g.grade),
                        probabilities: Some(g.probabilities),
                        logits: g.logits,
                        latency_ms,
                    })
                    .collect();
                Ok(pb::CompareBackendsResponse {
                    study: prepared.handle(),
                    model: Some(convert::model(model)),
                    results,
                    max_abs_diff,
                    grades_agree,
                })
            },
        )
        .await
    }

    async fn list_models(
        &self,
        request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        self.run("ListModels", request, |state, _, _| async move {
            let models = state.models()?;
            Ok(pb::ListModelsResponse {
                models: models.all().iter().map(convert::model).collect(),
                default_model: models.default_name().to_string(),
            })
        })
        .await
    }

    async fn get_study(
        &self,
        request: Request<pb::GetStudyRequest>,
    ) -> Result<Response<pb::GetStudyResponse>, Status> {
        self.run("GetStudy", request, |state, labels, req| async move {
            let principal = {
                let mut l = lock_labels(&labels);
                l.study = req.study.clone();
                l.principal.clone()
            };
            let (study, left) = state
                .store
                .get(&req.study, owner_filter(&principal, true))?;
            let gates = state.gates(&study).await?;
            Ok(pb::GetStudyResponse {
                summary: Some(convert::summary(&study, Some(left), &gates)),
            })
        })
        .await
    }

    async fn delete_study(
        &self,
        request: Request<pb::DeleteStudyRequest>,
    ) -> Result<Response<pb::DeleteStudyResponse>, Status> {
        self.run("DeleteStudy", request, |state, labels, req| async move {
            let principal = {
                let mut l = lock_labels(&labels);
                l.study = req.study.clone();
                l.principal.clone()
            };
            let freed_bytes = state
                .store
                .delete(&req.study, owner_filter(&principal, true))?;
            Ok(pb::DeleteStudyResponse { freed_bytes })
        })
        .await
    }
}

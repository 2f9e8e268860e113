//! Grading a study: the referenced or inline study resolved, the model's input prepared, the
//! grade on one backend, the explanation, the comparison of backends, and the DICOM results.

use super::{Call, Engine, results};
use crate::convert;
use crate::error::ServerError;
use crate::models::ServedModel;
use crate::scheduler::Worker;
use crate::state::blocking;
use crate::store::Study;
use crate::text::client_text;
use crate::traffic::{Mirror, StickyKey};
use osteo_core::Sample;
use osteo_dicom::View;
use osteo_dicom::attenuation::Attenuation;
use osteo_proto::v1 as pb;
use std::sync::Arc;
use std::time::Instant;

/// A prepared request: the study (if any), its view (image models) and the model input.
struct Prepared {
    study: Option<Arc<Study>>,
    view: Option<Arc<View>>,
    /// The vertebral attenuation (models that read CT, when measured).
    attenuation: Option<Arc<Attenuation>>,
    input: Sample,
}

impl Prepared {
    /// The study and its attenuation, for the results written from them.
    fn sources(&self) -> results::Sources<'_> {
        results::Sources {
            study: self.study.as_deref(),
            attenuation: self.attenuation.as_deref(),
        }
    }

    /// The study handle ("" without a study).
    fn handle(&self) -> String {
        self.study
            .as_ref()
            .map(|s| s.handle.clone())
            .unwrap_or_default()
    }
}

/// Where a grading request's study comes from.
pub(super) enum Source<'r> {
    /// The request's own reference: a stored study's handle, inline files, or none.
    Ref(Option<&'r pb::StudyRef>),
    /// A study this call ingested from its own stream (GradeStudy), not stored.
    Ingested(Arc<Study>),
}

impl<'r> Source<'r> {
    /// The study of a request's reference, or the one the call ingested.
    fn of(study: Option<&'r pb::StudyRef>, ingested: Option<Arc<Study>>) -> Self {
        match ingested {
            Some(s) => Source::Ingested(s),
            None => Source::Ref(study),
        }
    }
}

/// What a grading request names besides model and backend.
struct Subject<'r> {
    study: Source<'r>,
    clinical: Option<&'r pb::ClinicalVariables>,
    clinical_from_dicom: bool,
}

/// One backend's answer on a prepared input.
struct Graded {
    backend: pb::BackendDescriptor,
    /// The grade and probabilities, as the pipeline derives them from `logits`.
    graded: osteo_pipeline::Graded,
    logits: Vec<f32>,
}

impl Graded {
    /// The grade, probabilities and decision of `logits` from `worker` serving `model`.
    fn new(model: &ServedModel, worker: &Worker, logits: Vec<f32>) -> Result<Self, ServerError> {
        Ok(Self {
            backend: convert::backend(worker.info()),
            graded: osteo_pipeline::grade(model.artifacts.manifest.decision.as_ref(), &logits)?,
            logits,
        })
    }
}

impl Engine {
    /// What a grading request's canary choice is keyed on: the study's own UID when the study
    /// is known before grading (stored, or ingested by this call), else the client's affinity
    /// key. The key is only hashed.
    fn sticky_key(&self, call: &Call, source: &Source<'_>) -> StickyKey {
        // Only a canary reads the key: without one, no store lookup is spent on it.
        if !self.state.traffic.has_canaries() {
            return StickyKey(None);
        }
        let study = match source {
            Source::Ingested(s) => Some(s.clone()),
            Source::Ref(Some(pb::StudyRef {
                source: Some(pb::study_ref::Source::Study(handle)),
            })) => self
                .state
                .store
                .get(handle, Some(&call.principal().name))
                .ok()
                .map(|(s, _)| s),
            Source::Ref(_) => None,
        };
        StickyKey(
            study
                .map(|s| {
                    if s.source.study_uid.is_empty() {
                        s.handle.clone()
                    } else {
                        s.source.study_uid.clone()
                    }
                })
                .or_else(|| call.affinity().map(str::to_string)),
        )
    }

    /// Offers a primary answer (`logits` of the prepared input, `ms` of inference) to the
    /// shadow pairs; returns at once.
    fn mirror(
        &self,
        call: &Call,
        model: &Arc<ServedModel>,
        prepared: &Prepared,
        logits: &[f32],
        ms: f64,
    ) {
        let backend = call.outcome().backend.as_str();
        if !self.state.traffic.mirrors(model, backend) {
            return;
        }
        self.state.traffic.mirror(Mirror {
            model,
            backend,
            inputs: std::slice::from_ref(&prepared.input),
            logits: &[logits.to_vec()],
            ms,
            study: &prepared.handle(),
        });
    }

    /// The study a request refers to: a stored one by handle (the caller's own), or inline
    /// files ingested for this request.
    async fn study_of(
        &self,
        call: &mut Call,
        study: Source<'_>,
    ) -> Result<Option<Arc<Study>>, ServerError> {
        let owner = call.principal().name.clone();
        let study = match study {
            Source::Ingested(s) => return Ok(Some(s)),
            Source::Ref(r) => r,
        };
        match study.and_then(|s| s.source.as_ref()) {
            None => Ok(None),
            Some(pb::study_ref::Source::Study(handle)) => {
                call.refers_to(handle);
                if handle.is_empty() {
                    return Err(ServerError::InvalidArgument(
                        "study.study is empty: pass a handle from UploadStudy".into(),
                    ));
                }
                Ok(Some(self.state.store.get(handle, Some(&owner))?.0))
            }
            Some(pb::study_ref::Source::Inline(inline)) => {
                if inline.files.is_empty() {
                    return Err(ServerError::InvalidArgument(
                        "study.inline has no files: send the DICOM files of the series".into(),
                    ));
                }
                let series = Some(inline.series_instance_uid.clone()).filter(|s| !s.is_empty());
                let study = self
                    .state
                    .ingest(inline.files.clone(), series, owner)
                    .await?;
                Ok(Some(Arc::new(study)))
            }
        }
    }

    /// Resolves the study reference, builds the model's view and encodes the clinical variables.
    async fn prepare(
        &self,
        call: &mut Call,
        model: &ServedModel,
        subject: Subject<'_>,
    ) -> Result<Prepared, ServerError> {
        let start = Instant::now();
        let m = &model.artifacts.manifest;
        let study = self.study_of(call, subject.study).await?;
        let (view, attenuation) = match m.view {
            None => (None, None),
            Some(spec) => {
                let s = study.clone().ok_or_else(|| {
                    ServerError::FailedPrecondition(format!(
                        "model {} ({}) reads CT: set study to a handle from UploadStudy or to \
                         inline DICOM files",
                        m.name, m.kind
                    ))
                })?;
                // A view already built for this study is taken here; building one (the quality
                // gate first, cached with the study) is blocking work for the ingest threads.
                // So is the vertebral attenuation, once per study, after the gate passed.
                match (s.cached_view(&spec), s.measured_attenuation()) {
                    (Some(v), Some(a)) => (Some(v), a),
                    _ => {
                        let pool = self.state.ingest_pool.clone();
                        blocking(move || {
                            pool.install(|| {
                                let view = s.view(&spec)?;
                                Ok::<_, ServerError>((Some(view), s.attenuation()))
                            })
                        })
                        .await?
                    }
                }
            }
        };
        let clinical = match &m.tabular {
            None => None,
            Some(_) => {
                let c = if subject.clinical_from_dicom {
                    let s = study.as_ref().ok_or_else(|| {
                        ServerError::FailedPrecondition(
                            "clinical_from_dicom reads the study's DICOM header: set study to a \
                             handle from UploadStudy or to inline DICOM files"
                                .into(),
                        )
                    })?;
                    convert::clinical_from_header(subject.clinical, &s.demographics)?
                } else {
                    let c = subject.clinical.ok_or_else(|| {
                        ServerError::FailedPrecondition(format!(
                            "model {} ({}) reads clinical variables: set clinical (age, sex, \
                             height, weight), or clinical_from_dicom to read them from the \
                             study's header",
                            m.name, m.kind
                        ))
                    })?;
                    convert::clinical(c)?
                };
                Some(c)
            }
        };
        let input = osteo_pipeline::input(
            m,
            view.as_deref(),
            clinical.as_ref(),
            attenuation.as_deref(),
        )
        .map_err(|e| match e {
            osteo_pipeline::PipelineError::Core(e) => {
                ServerError::InvalidArgument(format!("clinical variables: {e}"))
            }
            e => e.into(),
        })?;
        metrics::histogram!("osteo_preprocess_seconds", "model" => m.name.clone())
            .record(start.elapsed().as_secs_f64());
        if let Some(s) = &study {
            call.study(s);
        }
        Ok(Prepared {
            study,
            input,
            view,
            attenuation,
        })
    }

    /// Classify: the grade of a study and/or clinical variables on one model and backend, with
    /// the DICOM SR when asked for.
    pub async fn classify(
        &self,
        call: &mut Call,
        req: pb::ClassifyRequest,
    ) -> Result<pb::ClassifyResponse, ServerError> {
        let _permit = self.state.admit()?;
        self.classify_study(call, req, None).await
    }

    /// Classify on the request's study, or on `ingested` (GradeStudy); the caller holds the
    /// admission permit.
    pub(super) async fn classify_study(
        &self,
        call: &mut Call,
        req: pb::ClassifyRequest,
        ingested: Option<Arc<Study>>,
    ) -> Result<pb::ClassifyResponse, ServerError> {
        let start = Instant::now();
        let source = Source::of(req.study.as_ref(), ingested);
        let key = self.sticky_key(call, &source);
        let (served, worker) =
            self.resolve(call, &req.model, &req.model_version, &req.backend, &key)?;
        let (model, worker) = (served.as_ref(), worker.as_ref());
        let subject = Subject {
            study: source,
            clinical: req.clinical.as_ref(),
            clinical_from_dicom: req.clinical_from_dicom,
        };
        let prepared = self.prepare(call, model, subject).await?;
        let inference = Instant::now();
        let logits = worker.predict(prepared.input.clone()).await?;
        let ms = inference.elapsed().as_secs_f64() * 1e3;
        let g = Graded::new(model, worker, logits)?;
        let logits = g.logits.clone();
        let (mut response, graded) = classification(model, &prepared, g, start);
        call.graded(graded.grade);
        if req.dicom_outputs {
            response.dicom_sr =
                results::structured_report(model, prepared.sources(), &response, &graded)?;
        }
        if req.fhir_outputs {
            response.fhir_bundle =
                results::fhir_bundle(model, prepared.sources(), &response, &graded);
        }
        self.mirror(call, &served, &prepared, &logits, ms);
        Ok(response)
    }

    /// Explain: the classification, the Grad-CAM map of a target class (models that read CT)
    /// and the clinical variables' attributions, with the DICOM SR and secondary capture when
    /// asked for.
    pub async fn explain(
        &self,
        call: &mut Call,
        req: pb::ExplainRequest,
    ) -> Result<pb::ExplainResponse, ServerError> {
        let _permit = self.state.admit()?;
        self.explain_study(call, req, None).await
    }

    /// Explain on the request's study, or on `ingested` (GradeStudy); the caller holds the
    /// admission permit.
    pub(super) async fn explain_study(
        &self,
        call: &mut Call,
        req: pb::ExplainRequest,
        ingested: Option<Arc<Study>>,
    ) -> Result<pb::ExplainResponse, ServerError> {
        let start = Instant::now();
        let source = Source::of(req.study.as_ref(), ingested);
        let key = self.sticky_key(call, &source);
        let (served, worker) =
            self.resolve(call, &req.model, &req.model_version, &req.backend, &key)?;
        let (model, worker) = (served.as_ref(), worker.as_ref());
        let m = &model.artifacts.manifest;
        let requested = convert::grade_from(req.target)?;
        let subject = Subject {
            study: source,
            clinical: req.clinical.as_ref(),
            clinical_from_dicom: req.clinical_from_dicom,
        };
        let prepared = self.prepare(call, model, subject).await?;
        // One backend call gives the prediction and the Grad-CAM parts of every class.
        let inference = Instant::now();
        let explanation = worker.explain(prepared.input.clone()).await?;
        let ms = inference.elapsed().as_secs_f64() * 1e3;
        let graded = Graded::new(model, worker, explanation.logits.clone())?;
        let (mut classification, graded) = classification(model, &prepared, graded, start);
        let predicted = graded.grade;
        call.graded(predicted);
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
                let map = osteo_pipeline::gradcam(&explanation, target, &view)
                    .map_err(|e| ServerError::Internal(format!("Grad-CAM: {e}")))?;
                Some(
                    blocking(move || {
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
        if req.fhir_outputs {
            classification.fhir_bundle =
                results::fhir_bundle(model, prepared.sources(), &classification, &graded);
        }
        let mut dicom_secondary_capture = Vec::new();
        if req.dicom_outputs {
            classification.dicom_sr =
                results::structured_report(model, prepared.sources(), &classification, &graded)?;
            // The overlay as a Secondary Capture, when there is one (models that read CT).
            if let (Some(view), Some(map)) = (prepared.view.as_ref(), gradcam.as_ref()) {
                let by = results::producer(model, &classification);
                dicom_secondary_capture = osteo_pipeline::secondary_capture(
                    &results::results_study(prepared.study.as_deref())?.source,
                    by,
                    view,
                    &map.values,
                    target,
                )?;
            }
        }
        classification.latency_ms = start.elapsed().as_secs_f64() * 1e3;
        self.mirror(call, &served, &prepared, &explanation.logits, ms);
        Ok(pb::ExplainResponse {
            classification: Some(classification),
            target: convert::grade(target),
            gradcam,
            features,
            dicom_secondary_capture,
        })
    }

    /// CompareBackends: one prepared input graded on several backends of a model, with their
    /// largest probability difference and whether the grades agree.
    pub async fn compare_backends(
        &self,
        call: &mut Call,
        req: pb::CompareBackendsRequest,
    ) -> Result<pb::CompareBackendsResponse, ServerError> {
        let _permit = self.state.admit()?;
        self.compare_study(call, req, None).await
    }

    /// CompareBackends on the request's study, or on `ingested` (GradeStudy); the caller holds
    /// the admission permit.
    pub(super) async fn compare_study(
        &self,
        call: &mut Call,
        req: pb::CompareBackendsRequest,
        ingested: Option<Arc<Study>>,
    ) -> Result<pb::CompareBackendsResponse, ServerError> {
        let source = Source::of(req.study.as_ref(), ingested);
        let key = self.sticky_key(call, &source);
        let (model, _) = self.resolve(call, &req.model, &req.model_version, "", &key)?;
        let model = model.as_ref();
        let names = compare_backends(model, &req.backends)?;
        // The label lists the backends in the model's order: a bounded set of values.
        let label: Vec<String> = model
            .backend_names()
            .into_iter()
            .filter(|b| names.contains(b))
            .collect();
        call.backends(label.join(","));
        let subject = Subject {
            study: source,
            clinical: req.clinical.as_ref(),
            clinical_from_dicom: req.clinical_from_dicom,
        };
        let prepared = self.prepare(call, model, subject).await?;
        let mut graded = Vec::new();
        for n in &names {
            let start = Instant::now();
            let (_, worker) = model.worker(n)?;
            let g = Graded::new(model, worker, worker.predict(prepared.input.clone()).await?)?;
            graded.push((g, start.elapsed().as_secs_f64() * 1e3));
        }
        let probs: Vec<[f32; 3]> = graded.iter().map(|(g, _)| g.graded.probabilities).collect();
        let mut max_abs_diff = 0f64;
        for a in &probs {
            for b in &probs {
                for k in 0..3 {
                    max_abs_diff = max_abs_diff.max(f64::from((a[k] - b[k]).abs()));
                }
            }
        }
        let grades_agree = graded
            .windows(2)
            .all(|w| w[0].0.graded.grade == w[1].0.graded.grade);
        if let (true, Some((g, _))) = (grades_agree, graded.first()) {
            call.graded(g.graded.grade);
        }
        let results = graded
            .into_iter()
            .map(|(g, latency_ms)| pb::BackendResult {
                backend: Some(g.backend),
                grade: convert::grade(g.graded.grade),
                probabilities: Some(convert::grade_probabilities(&g.graded)),
                decision: g.graded.decision.as_ref().map(convert::decision),
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
    }
}

/// The Classify answer of a graded input, and its grade.
fn classification(
    model: &ServedModel,
    prepared: &Prepared,
    g: Graded,
    start: Instant,
) -> (pb::ClassifyResponse, osteo_pipeline::Graded) {
    let response = pb::ClassifyResponse {
        study: prepared.handle(),
        model: Some(convert::model(model)),
        backend: Some(g.backend),
        grade: convert::grade(g.graded.grade),
        probabilities: Some(convert::grade_probabilities(&g.graded)),
        logits: g.logits,
        latency_ms: start.elapsed().as_secs_f64() * 1e3,
        dicom_sr: Vec::new(),
        fhir_bundle: String::new(),
        decision: g.graded.decision.as_ref().map(convert::decision),
        attenuation: prepared.attenuation.as_deref().map(convert::attenuation),
    };
    (response, g.graded)
}

/// The backends a CompareBackends request names, checked before any work: each a backend
/// serving the model, each at most once (so the list is never longer than the served list);
/// every serving backend when the request names none. Returned in the requested order.
pub(super) fn compare_backends(
    model: &ServedModel,
    requested: &[String],
) -> Result<Vec<String>, ServerError> {
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

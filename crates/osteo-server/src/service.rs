//! The `osteo.v1.OsteoService` implementation.

use crate::audit::AuditLog;
use crate::auth::{Principal, Role};
use crate::budget::{Budget, Reservation};
use crate::config::Settings;
use crate::convert;
use crate::error::ServerError;
use crate::models::{ModelSet, ServedModel};
use crate::scheduler::Worker;
use crate::store::{Study, StudyStore};
use crate::text::{client_text, is_handle};
use crate::upload::{Framer, FramingLimits};
use osteo_core::{Grade, Sample, ViewSpec};
use osteo_dicom::{Assessment, DicomSource, IngestLimits, IngestOptions, View};
use osteo_proto::v1 as pb;
use osteo_proto::v1::osteo_service_server::OsteoService;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::Instrument;

/// Shared server state.
pub struct State {
    /// The configuration.
    pub settings: Settings,
    /// Uploaded studies.
    pub store: StudyStore,
    /// The models, once loaded (UNAVAILABLE before).
    pub models: OnceLock<ModelSet>,
    /// Permits of inference requests (`server.max_concurrent_requests`).
    requests: Arc<Semaphore>,
    /// Permits of upload streams (`store.max_concurrent_uploads`).
    uploads: Arc<Semaphore>,
    /// Upload bytes buffered across all streams (`store.max_inflight_upload_bytes`).
    upload_bytes: Arc<Budget>,
    /// The audit log, when `audit.path` is set.
    audit: Option<Arc<AuditLog>>,
    /// The threads that parse and decode DICOM (`ingest.threads`).
    ingest_pool: Arc<rayon::ThreadPool>,
}

impl State {
    /// Bytes of uploads and REST request bodies buffered at once
    /// (`store.max_inflight_upload_bytes`).
    pub(crate) fn upload_bytes(&self) -> &Arc<Budget> {
        &self.upload_bytes
    }

    /// Who a request's buffered bytes are counted against in the in-flight budget's
    /// per-principal share: the principal, or without authentication the peer's address (every
    /// caller is then the one principal "anonymous").
    pub(crate) fn budget_holder(
        &self,
        principal: Option<&Principal>,
        peer: Option<std::net::SocketAddr>,
    ) -> String {
        let a = &self.settings.auth;
        match principal {
            Some(p) if a.uses_tokens() || a.uses_certificates() => p.name.clone(),
            _ => peer.map_or_else(|| "peer".to_string(), |p| format!("peer {}", p.ip())),
        }
    }

    /// State with an empty store and models not yet loaded; opens the audit log.
    pub fn new(settings: Settings) -> Result<Self, ServerError> {
        let st = &settings.store;
        let store = StudyStore::new(
            st.max_bytes,
            st.max_study_bytes,
            Duration::from_secs(st.ttl_s),
        )
        .with_quota_per_principal(st.max_bytes_per_principal);
        let upload_bytes = Budget::shared(
            "store.max_inflight_upload_bytes",
            st.max_inflight_upload_bytes,
            "store.max_inflight_upload_bytes_per_principal",
            st.max_inflight_upload_bytes_per_principal,
        );
        let uploads = Arc::new(Semaphore::new(st.max_concurrent_uploads));
        let requests = Arc::new(Semaphore::new(settings.server.max_concurrent_requests));
        let ingest_pool = rayon::ThreadPoolBuilder::new()
            .num_threads(settings.ingest.threads)
            .thread_name(|i| format!("ingest-{i}"))
            .build()
            .map(Arc::new)
            .map_err(|e| ServerError::Config(format!("ingest.threads: cannot start: {e}")))?;
        let a = &settings.audit;
        let audit = if a.path.is_empty() {
            None
        } else {
            let log = AuditLog::open(std::path::Path::new(&a.path), a.fsync)
                .map_err(|e| ServerError::Config(format!("audit.path: {e}")))?;
            Some(Arc::new(log))
        };
        Ok(Self {
            settings,
            store,
            models: OnceLock::new(),
            requests,
            uploads,
            upload_bytes,
            audit,
            ingest_pool,
        })
    }

    /// The audit log, when `audit.path` is set.
    pub fn audit_log(&self) -> Option<Arc<AuditLog>> {
        self.audit.clone()
    }

    /// Appends a request's audit record (off the async threads); INTERNAL when it cannot be
    /// written, so no request is answered without its record.
    async fn audit(&self, record: crate::audit::Record) -> Result<(), ServerError> {
        let Some(log) = self.audit.clone() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || log.append(record))
            .await
            .map_err(|e| ServerError::Internal(format!("the audit task failed: {e}")))?
            .map_err(|e| {
                tracing::error!(error = %e, "audit record not written; request refused");
                ServerError::Internal(
                    "the request's audit record could not be written, so its result is withheld; \
                     the server's operator must check audit.path"
                        .into(),
                )
            })
    }

    /// Counts a finished request (`osteo_requests_total` by rpc, model, backend and code;
    /// `osteo_request_seconds`) and appends its audit record: every front door's requests,
    /// answered or refused, go through here.
    pub(crate) async fn account(
        &self,
        rpc: &'static str,
        record: crate::audit::Record,
    ) -> Result<(), ServerError> {
        metrics::counter!(
            "osteo_requests_total",
            "rpc" => rpc,
            "model" => record.model.clone(),
            "backend" => record.backend.clone(),
            "code" => record.code.clone()
        )
        .increment(1);
        metrics::histogram!("osteo_request_seconds", "rpc" => rpc).record(record.latency_ms / 1e3);
        self.audit(record).await
    }

    /// A permit for one inference request, taken before any ingest or view work.
    pub(crate) fn admit(&self) -> Result<OwnedSemaphorePermit, ServerError> {
        self.requests.clone().try_acquire_owned().map_err(|_| {
            ServerError::ResourceExhausted(format!(
                "the server is already working on {} requests, its limit \
                 (server.max_concurrent_requests); retry with backoff",
                self.settings.server.max_concurrent_requests
            ))
        })
    }

    /// Reads the DICOM files of a study, reserves its decoded size in the store, then decodes
    /// it. Nothing is decoded when the reservation fails.
    async fn ingest(
        self: &Arc<Self>,
        files: Vec<Vec<u8>>,
        series_uid: Option<String>,
        owner: String,
    ) -> Result<Study, ServerError> {
        let state = self.clone();
        blocking(move || {
            let started = std::time::Instant::now();
            let options = IngestOptions {
                series_uid,
                limits: state.limits(),
            };
            // Parsing and decoding run on the ingest pool (bounded by ingest.threads).
            let pool = state.ingest_pool.clone();
            let planned =
                pool.install(|| osteo_dicom::plan(DicomSource::Buffers(files), &options))?;
            let mut held = state.store.reserve(planned.decoded_bytes(), &owner)?;
            let ingested = pool.install(|| planned.decode())?;
            // Integral HU the headers could not prove in range may still fit i16: keep only
            // what the volume takes.
            held.resize(ingested.volume.hu.byte_len())?;
            metrics::histogram!("osteo_ingest_seconds", "stage" => "decode")
                .record(started.elapsed().as_secs_f64());
            Ok(Study::new(
                ingested.volume,
                ingested.demographics,
                ingested.source,
                held,
                &owner,
            ))
        })
        .await
    }

    /// The quality gate of every loaded model that reads CT on `study`, in model order; computed
    /// once per view spec on the ingest threads and cached in the study.
    async fn gates(
        self: &Arc<Self>,
        study: &Arc<Study>,
    ) -> Result<Vec<(String, Arc<Assessment>)>, ServerError> {
        let specs: Vec<(String, ViewSpec)> = self
            .models
            .get()
            .map(|set| {
                set.all()
                    .iter()
                    .filter_map(|m| {
                        let spec = m.artifacts.manifest.view?;
                        Some((m.name().to_string(), spec))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let (pool, study) = (self.ingest_pool.clone(), study.clone());
        blocking(move || {
            let started = std::time::Instant::now();
            let gates = pool.install(|| {
                specs
                    .into_iter()
                    .map(|(name, spec)| (name, study.assessment(&spec)))
                    .collect()
            });
            metrics::histogram!("osteo_ingest_seconds", "stage" => "gate")
                .record(started.elapsed().as_secs_f64());
            Ok(gates)
        })
        .await
    }

    /// Whether every model is loaded and all its backends are up (v2 server readiness).
    pub(crate) fn all_models_up(&self) -> bool {
        self.models
            .get()
            .is_some_and(|m| m.all().iter().all(crate::models::ServedModel::is_up))
    }

    pub(crate) fn models(&self) -> Result<&ModelSet, ServerError> {
        self.models.get().ok_or_else(|| {
            ServerError::Unavailable(
                "the models are still loading; retry when grpc.health.v1 reports SERVING".into(),
            )
        })
    }

    fn limits(&self) -> IngestLimits {
        let s = &self.settings.store;
        IngestLimits {
            max_file_bytes: s.max_upload_bytes,
            max_total_bytes: s.max_upload_bytes,
            max_files: s.max_files,
            max_pixels_per_slice: s.max_pixels_per_slice,
            max_slices: s.max_slices,
            ..IngestLimits::default()
        }
    }
}

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

/// Labels of one request for metrics and logs: no patient data, only the study handle. Model
/// and backend are the server's own configured names, `unknown` when the request named one
/// the server does not serve, never the client's string.
pub(crate) struct Labels {
    principal: Principal,
    /// The peer's address (for the in-flight budget's share; never a label).
    peer: Option<std::net::SocketAddr>,
    pub(crate) model: String,
    backend: String,
    study: String,
    grade: String,
}

impl Labels {
    fn new(principal: Principal, peer: Option<std::net::SocketAddr>) -> Self {
        Self {
            principal,
            peer,
            model: String::new(),
            backend: String::new(),
            study: String::new(),
            grade: String::new(),
        }
    }
}

/// Whether `p`'s roles allow `rpc`: clients may call everything (on their own studies), admins
/// may list models and read or delete any study.
fn allowed(rpc: &str, p: &Principal) -> bool {
    match rpc {
        "ListModels" | "GetStudy" | "DeleteStudy" => p.has(Role::Client) || p.has(Role::Admin),
        _ => p.has(Role::Client),
    }
}

/// The owner filter of a study lookup: admins reach any study for reading and deleting.
fn owner_filter(p: &Principal, admin_may: bool) -> Option<&str> {
    (!(admin_may && p.has(Role::Admin))).then_some(p.name.as_str())
}

/// The principal of a request, put there by the authentication layer.
fn principal_of<R>(request: &Request<R>) -> Result<Principal, ServerError> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| {
            ServerError::Unauthenticated("the request carries no authenticated principal".into())
        })
}

/// The time a request may take: the client's deadline (`grpc-timeout`) less a margin of 10% (at
/// least 2 ms), so the server answers DEADLINE_EXCEEDED itself before tonic's own timer cancels
/// the call; capped by the server's request timeout.
fn budget<T>(req: &Request<T>, server_default: Duration) -> Duration {
    let client = req
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
            let n: u64 = digits.parse().ok()?;
            Some(match unit {
                "H" => Duration::from_secs(n * 3600),
                "M" => Duration::from_secs(n * 60),
                "S" => Duration::from_secs(n),
                "m" => Duration::from_millis(n),
                "u" => Duration::from_micros(n),
                "n" => Duration::from_nanos(n),
                _ => return None,
            })
        });
    client.map_or(server_default, |c| {
        c.saturating_sub((c / 10).max(Duration::from_millis(2)))
            .min(server_default)
    })
}

/// Runs a blocking step (ingest, view building) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ServerError> + Send + 'static,
) -> Result<T, ServerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServerError::Internal(format!("a preprocessing task failed: {e}")))?
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
    /// Runs one RPC body under its deadline, with a span, metrics and one log line.
    pub(crate) async fn run<R, T, F>(
        &self,
        rpc: &'static str,
        request: Request<R>,
        body: impl FnOnce(Arc<State>, Arc<std::sync::Mutex<Labels>>, R) -> F,
    ) -> Result<Response<T>, Status>
    where
        F: std::future::Future<Output = Result<T, ServerError>>,
    {
        let start = Instant::now();
        let budget = budget(
            &request,
            Duration::from_secs(self.state.settings.server.request_timeout_s),
        );
        let principal = principal_of(&request);
        let remote = request.remote_addr();
        let labels = Arc::new(std::sync::Mutex::new(Labels::new(
            principal.clone().unwrap_or_else(|_| Principal::anonymous()),
            remote,
        )));
        let peer = remote.map(|a| a.to_string()).unwrap_or_default();
        let span = tracing::info_span!(
            "rpc",
            rpc,
            study = tracing::field::Empty,
            model = tracing::field::Empty,
            backend = tracing::field::Empty
        );
        span.in_scope(|| tracing::debug!("request started"));
        let permitted = principal.and_then(|p| {
            if allowed(rpc, &p) {
                Ok(())
            } else {
                let roles: Vec<&str> = p.roles.iter().map(|r| r.name()).collect();
                Err(ServerError::PermissionDenied(format!(
                    "principal {} (roles: {}) may not call {rpc}",
                    p.name,
                    if roles.is_empty() {
                        "none".to_string()
                    } else {
                        roles.join(", ")
                    }
                )))
            }
        });
        let result = match permitted {
            Err(e) => Err(e),
            Ok(()) => {
                let fut = body(self.state.clone(), labels.clone(), request.into_inner());
                match tokio::time::timeout(budget, fut.instrument(span.clone())).await {
                    Ok(r) => r.map_err(ServerError::one_line),
                    Err(_) => Err(ServerError::DeadlineExceeded(format!(
                        "{rpc} did not finish within its deadline of {} ms (queue, \
                         preprocessing and inference); retry later or allow more time",
                        budget.as_millis()
                    ))),
                }
            }
        };
        let code = result.as_ref().map_or_else(ServerError::code, |_| Code::Ok);
        let seconds = start.elapsed().as_secs_f64();
        self.count_inference(rpc, &labels, result.is_ok(), start.elapsed());
        let record = {
            let l = lock_labels(&labels);
            let study = if l.study.is_empty() || is_handle(&l.study) {
                l.study.clone()
            } else {
                "invalid".to_string()
            };
            crate::audit::Record {
                study,
                model: l.model.clone(),
                backend: l.backend.clone(),
                grade: l.grade.clone(),
                ..crate::audit::Record::new(rpc, &l.principal.name, peer, code, seconds * 1e3)
            }
        };
        span.record("study", record.study.as_str());
        span.record("model", record.model.as_str());
        span.record("backend", record.backend.as_str());
        let code_name = record.code.clone();
        // A request whose audit record cannot be written is not answered with its result.
        let result = self.state.account(rpc, record).await.and(result);
        let _enter = span.enter();
        match &result {
            Ok(_) => tracing::info!(code = %code_name, ms = seconds * 1e3, "request served"),
            Err(e) => {
                tracing::warn!(code = %code_name, ms = seconds * 1e3, error = %e, "request failed")
            }
        }
        result.map(Response::new).map_err(Status::from)
    }

    /// Adds an inference request's outcome to its model's statistics (requests that never
    /// reached a served model are not counted).
    fn count_inference(
        &self,
        rpc: &str,
        labels: &std::sync::Mutex<Labels>,
        ok: bool,
        took: Duration,
    ) {
        if !matches!(
            rpc,
            "Classify" | "Explain" | "CompareBackends" | "ModelInfer" | "ModelStreamInfer"
        ) {
            return;
        }
        let name = lock_labels(labels).model.clone();
        if name.is_empty() || name == "unknown" {
            return;
        }
        if let Ok(model) = self.state.models().and_then(|m| m.get(&name)) {
            model.stats.finished(ok, took);
        }
    }

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

/// Records the handle of a referenced study (checked for shape when logged).
fn set_study_ref(labels: &std::sync::Mutex<Labels>, study: Option<&pb::StudyRef>) {
    if let Some(pb::study_ref::Source::Study(handle)) = study.and_then(|s| s.source.as_ref()) {
        lock_labels(labels).study = handle.clone();
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

/// The request's labels, locked.
pub(crate) fn lock_labels(labels: &std::sync::Mutex<Labels>) -> std::sync::MutexGuard<'_, Labels> {
    labels.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records the grade answered (for the audit log).
pub(crate) fn set_grade(labels: &std::sync::Mutex<Labels>, grade: Grade) {
    lock_labels(labels).grade = grade.name().to_string();
}

fn set_study(labels: &std::sync::Mutex<Labels>, study: &Study) {
    lock_labels(labels).study = study.handle.clone();
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

/// The files of an upload and what they hold of the upload budgets until they are decoded.
struct Upload {
    files: Vec<Vec<u8>>,
    series_uid: Option<String>,
    _bytes: Reservation,
    _slot: OwnedSemaphorePermit,
}

/// Reads an upload stream into complete files, enforcing the limits as bytes arrive: a slot
/// among `store.max_concurrent_uploads` first, then every byte reserved from
/// `store.max_inflight_upload_bytes` (within `holder`'s share) before it is buffered. A declared
/// size is checked against the limits at once but reserved only as its bytes arrive, so a slow
/// stream holds only what it sent.
async fn read_upload(
    state: &State,
    holder: &str,
    stream: &mut Streaming<pb::UploadStudyRequest>,
) -> Result<Upload, ServerError> {
    let slot = state.uploads.clone().try_acquire_owned().map_err(|_| {
        ServerError::ResourceExhausted(format!(
            "{} uploads are already in progress, the limit (store.max_concurrent_uploads); retry \
             with backoff",
            state.settings.store.max_concurrent_uploads
        ))
    })?;
    let first = stream
        .message()
        .await
        .map_err(|s| {
            ServerError::InvalidArgument(format!("upload stream failed: {}", s.message()))
        })?
        .ok_or_else(|| {
            ServerError::InvalidArgument("empty upload: send an UploadHeader first".into())
        })?;
    let header = match first.part {
        Some(pb::upload_study_request::Part::Header(h)) => h,
        _ => {
            return Err(ServerError::InvalidArgument(
                "the first upload message must be the header".into(),
            ));
        }
    };
    let limits = state.limits();
    let mut framer = Framer::new(
        FramingLimits {
            max_files: limits.max_files,
            max_total_bytes: limits.max_total_bytes,
        },
        header.expected_files,
        header.expected_bytes,
    )?;
    let mut held = state.upload_bytes.reserve_for(holder, 0, "the upload")?;
    while let Some(msg) = stream.message().await.map_err(|s| {
        ServerError::InvalidArgument(format!("upload stream failed: {}", s.message()))
    })? {
        let chunk = match msg.part {
            Some(pb::upload_study_request::Part::Chunk(c)) => c,
            Some(pb::upload_study_request::Part::Header(_)) => {
                return Err(ServerError::InvalidArgument(
                    "the upload header may appear only once, first".into(),
                ));
            }
            None => {
                return Err(ServerError::InvalidArgument(
                    "an upload message carries neither header nor chunk".into(),
                ));
            }
        };
        let mut account = |bytes: u64| held.resize(bytes, "the upload");
        framer.push(chunk.file_index, &chunk.data, chunk.last, &mut account)?;
    }
    Ok(Upload {
        files: framer.finish()?,
        series_uid: Some(header.series_instance_uid).filter(|s| !s.is_empty()),
        _bytes: held,
        _slot: slot,
    })
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
                    _bytes,
                    _slot,
                } = read_upload(&state, &holder, &mut stream).await?;
                let study = state.ingest(files, series_uid, owner).await?;
                drop((_bytes, _slot));
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

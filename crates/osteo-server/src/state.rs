//! The server's shared state, under every front door: the configuration, the study store, the
//! models, the admission permits and byte budgets, the ingest threads and the audit log, with
//! the steps every protocol shares (admission, ingest, quality gates, accounting).

use crate::audit::AuditLog;
use crate::budget::Budget;
use crate::config::Settings;
use crate::error::ServerError;
use crate::models::ModelSet;
use crate::principal::Principal;
use crate::store::{Study, StudyStore};
use osteo_core::ViewSpec;
use osteo_dicom::{Assessment, DicomSource, IngestLimits, IngestOptions};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Shared server state.
pub struct State {
    /// The configuration.
    pub settings: Settings,
    /// Uploaded studies.
    pub store: StudyStore,
    /// The models, once loaded (UNAVAILABLE before): the set in force, replaced whole (a
    /// request keeps the set it started with).
    models: std::sync::RwLock<Option<Arc<ModelSet>>>,
    /// Permits of inference requests (`server.max_concurrent_requests`).
    requests: Arc<Semaphore>,
    /// Permits of upload streams (`store.max_concurrent_uploads`).
    pub(crate) uploads: Arc<Semaphore>,
    /// Upload bytes buffered across all streams (`store.max_inflight_upload_bytes`).
    pub(crate) upload_bytes: Arc<Budget>,
    /// The audit log, when `audit.path` is set.
    audit: Option<Arc<AuditLog>>,
    /// The threads that parse and decode DICOM (`ingest.threads`).
    pub(crate) ingest_pool: Arc<rayon::ThreadPool>,
    /// Set on shutdown: see [`State::draining`].
    draining: std::sync::atomic::AtomicBool,
    /// What loading a model needs (the backends of this build, the health notifier), once the
    /// first model set is loading.
    pub(crate) loader: std::sync::OnceLock<(crate::registry::Registry, Arc<tokio::sync::Notify>)>,
    /// Serialises RepositoryModelLoad and RepositoryModelUnload.
    pub(crate) swapping: tokio::sync::Mutex<()>,
    /// Canary splits and shadow pairs in force, and the shadow queue.
    pub traffic: crate::traffic::Traffic,
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
            store,
            models: std::sync::RwLock::new(None),
            requests,
            uploads,
            upload_bytes,
            audit,
            ingest_pool,
            draining: std::sync::atomic::AtomicBool::new(false),
            loader: std::sync::OnceLock::new(),
            swapping: tokio::sync::Mutex::new(()),
            traffic: crate::traffic::Traffic::new(&settings),
            settings,
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
            "version" => record.version.clone(),
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
    pub(crate) async fn ingest(
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
                state.store.new_handle(),
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
    pub(crate) async fn gates(
        self: &Arc<Self>,
        study: &Arc<Study>,
    ) -> Result<Vec<(String, Arc<Assessment>)>, ServerError> {
        // One gate per model: the view of the version that answers requests naming none.
        let specs: Vec<(String, ViewSpec)> = self
            .loaded()
            .map(|set| {
                set.names()
                    .into_iter()
                    .filter_map(|name| {
                        let spec = set.get(name).ok()?.artifacts.manifest.view?;
                        Some((name.to_string(), spec))
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

    /// Whether the server takes new work (v2 server readiness): every model loaded with all
    /// its backends up, and not draining for shutdown.
    pub(crate) fn ready(&self) -> bool {
        !self.draining()
            && self
                .loaded()
                .is_some_and(|m| m.all().iter().all(|s| s.is_up()))
    }

    /// Whether the server is draining for shutdown: still answering, but reporting NOT_SERVING
    /// and not ready so that balancers stop sending it new requests.
    pub fn draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Starts draining (see [`State::draining`]).
    pub(crate) fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The model set in force; UNAVAILABLE while the models load.
    pub fn models(&self) -> Result<Arc<ModelSet>, ServerError> {
        self.loaded().ok_or_else(|| {
            ServerError::Unavailable(
                "the models are still loading; retry when grpc.health.v1 reports SERVING".into(),
            )
        })
    }

    /// The model set in force, if the models are loaded.
    pub fn loaded(&self) -> Option<Arc<ModelSet>> {
        self.models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts `models` in force; requests already running keep the set they started with.
    pub fn set_models(&self, models: ModelSet) {
        self.put_in_force(Arc::new(models));
    }

    /// Puts `models` in force (the traffic policy checked against them) and tells the health
    /// reporter.
    pub(crate) fn put_in_force(&self, models: Arc<ModelSet>) {
        self.traffic.revalidate(&models);
        *self.models.write().unwrap_or_else(|p| p.into_inner()) = Some(models);
        if let Some((_, changed)) = self.loader.get() {
            changed.notify_one();
        }
    }

    pub(crate) fn limits(&self) -> IngestLimits {
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

/// Runs a blocking step (ingest, view building) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ServerError> + Send + 'static,
) -> Result<T, ServerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServerError::Internal(format!("a preprocessing task failed: {e}")))?
}

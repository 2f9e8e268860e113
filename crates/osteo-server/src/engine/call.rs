//! One call into the engine: who asks for what and by when (the context a front door fills
//! in from its protocol), and what the operation did (the outcome audit, metrics and the log
//! line read when it ends).

use super::Rpc;
use crate::error::ServerError;
use crate::models::ServedModel;
use crate::principal::Principal;
use crate::store::Study;
use crate::text::is_handle;
use osteo_core::Grade;
use std::net::SocketAddr;
use std::time::Duration;
use tracing::Span;

/// What an operation did, for audit records, metrics and logs: no patient data, only the
/// study handle. Model and backend are the server's own configured names, `unknown` when the
/// request named one the server does not serve, never the client's string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The model that answered (or `unknown`).
    pub model: String,
    /// The version of the model that answered (a served version, or "").
    pub version: String,
    /// The weights digest of that version, or "".
    pub weights_blake3: String,
    /// The backend(s) that answered (or `unknown`).
    pub backend: String,
    /// The study handle the call referred to.
    pub study: String,
    /// The grade answered.
    pub grade: String,
}

/// The context of one call and its outcome so far.
#[derive(Debug)]
pub struct Call {
    rpc: Rpc,
    principal: Option<Principal>,
    peer: Option<SocketAddr>,
    budget: Duration,
    span: Span,
    outcome: Outcome,
    affinity: Option<String>,
}

/// The metadata key (gRPC) and header (REST) of a client's affinity key.
pub const AFFINITY_KEY: &str = "x-osteo-affinity";

/// Longest affinity key kept (longer ones are cut; the key is only hashed, never recorded).
const MAX_AFFINITY_LEN: usize = 128;

impl Call {
    /// A call to `rpc` by `principal` (`None`: the front door authenticated nobody) from
    /// `peer`, which may take `budget`.
    pub fn new(
        rpc: Rpc,
        principal: Option<Principal>,
        peer: Option<SocketAddr>,
        budget: Duration,
    ) -> Self {
        let span = tracing::info_span!(
            "rpc",
            rpc = rpc.name(),
            study = tracing::field::Empty,
            model = tracing::field::Empty,
            backend = tracing::field::Empty
        );
        Self {
            rpc,
            principal,
            peer,
            budget,
            span,
            outcome: Outcome::default(),
            affinity: None,
        }
    }

    /// The call with the client's affinity key (`x-osteo-affinity`), which keys canary
    /// choices when the study is not known before grading; empty keys are ignored.
    pub fn with_affinity(mut self, key: Option<&str>) -> Self {
        self.affinity = key
            .filter(|k| !k.is_empty())
            .map(|k| k.chars().take(MAX_AFFINITY_LEN).collect());
        self
    }

    /// The client's affinity key, if it sent one.
    pub fn affinity(&self) -> Option<&str> {
        self.affinity.as_deref()
    }

    /// The operation.
    pub fn rpc(&self) -> Rpc {
        self.rpc
    }

    /// The caller's principal: the name studies are owned by and audit records attributed to.
    pub fn principal(&self) -> &Principal {
        static ANONYMOUS: std::sync::OnceLock<Principal> = std::sync::OnceLock::new();
        self.principal
            .as_ref()
            .unwrap_or_else(|| ANONYMOUS.get_or_init(Principal::anonymous))
    }

    /// The peer's address (for the in-flight budget's share; never a label).
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The time the call may take.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// The call's span (carried into the scheduler's worker with each queued sample).
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// What the operation did so far.
    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    /// Whether the caller may make this call: authenticated, with a role that allows it.
    pub(crate) fn permitted(&self) -> Result<(), ServerError> {
        let p = self.principal.as_ref().ok_or_else(|| {
            ServerError::Unauthenticated("the request carries no authenticated principal".into())
        })?;
        if self.rpc.allowed(p) {
            return Ok(());
        }
        let roles: Vec<&str> = p.roles.iter().map(|r| r.name()).collect();
        Err(ServerError::PermissionDenied(format!(
            "principal {} (roles: {}) may not call {}",
            p.name,
            if roles.is_empty() {
                "none".to_string()
            } else {
                roles.join(", ")
            },
            self.rpc
        )))
    }

    /// Records the served model (its name, version and weights digest) and the backend's name.
    pub(crate) fn served_by(&mut self, model: &ServedModel, backend: &str) {
        let manifest = &model.artifacts.manifest;
        self.outcome.model = manifest.name.clone();
        self.outcome.version = manifest.version.clone();
        self.outcome.weights_blake3 = manifest.weights_blake3.clone();
        self.outcome.backend = backend.to_string();
    }

    /// Records that no served model answered (an unknown name).
    pub(crate) fn served_by_none(&mut self) {
        self.outcome.model = "unknown".to_string();
    }

    /// Records the backends (a list of served names) that answered.
    pub(crate) fn backends(&mut self, names: String) {
        self.outcome.backend = names;
    }

    /// Records the study handle a request referred to (checked for shape when recorded).
    pub(crate) fn refers_to(&mut self, handle: &str) {
        self.outcome.study = handle.to_string();
    }

    /// Records the study the call worked on.
    pub(crate) fn study(&mut self, study: &Study) {
        self.outcome.study = study.handle.clone();
    }

    /// Records the grade answered.
    pub(crate) fn graded(&mut self, grade: Grade) {
        self.outcome.grade = grade.name().to_string();
    }

    /// The study handle as it may be recorded: a client's string that is not a handle's shape
    /// is recorded as `invalid`.
    pub(crate) fn recorded_study(&self) -> String {
        let s = &self.outcome.study;
        if s.is_empty() || is_handle(s) {
            s.clone()
        } else {
            "invalid".to_string()
        }
    }
}

//! One request's frame, the same for every RPC of every gRPC service: its deadline (the
//! client's, within the server's), its principal and whether its roles allow the RPC, the
//! labels its body fills in (model, backend, study handle, grade), and at the end one span,
//! one metrics sample, one audit record and one log line.

use crate::auth::{Principal, Role};
use crate::error::ServerError;
use crate::service::Service;
use crate::state::State;
use crate::store::Study;
use crate::text::is_handle;
use osteo_core::Grade;
use osteo_proto::v1 as pb;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

/// Labels of one request for metrics and logs: no patient data, only the study handle. Model
/// and backend are the server's own configured names, `unknown` when the request named one
/// the server does not serve, never the client's string.
pub(crate) struct Labels {
    pub(crate) principal: Principal,
    /// The peer's address (for the in-flight budget's share; never a label).
    pub(crate) peer: Option<std::net::SocketAddr>,
    pub(crate) model: String,
    pub(crate) backend: String,
    pub(crate) study: String,
    pub(crate) grade: String,
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
            Duration::from_secs(self.state().settings.server.request_timeout_s),
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
                let fut = body(self.state().clone(), labels.clone(), request.into_inner());
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
        let result = self.state().account(rpc, record).await.and(result);
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
        if let Ok(model) = self.state().models().and_then(|m| m.get(&name)) {
            model.stats.finished(ok, took);
        }
    }
}

/// Records the handle of a referenced study (checked for shape when logged).
pub(crate) fn set_study_ref(labels: &std::sync::Mutex<Labels>, study: Option<&pb::StudyRef>) {
    if let Some(pb::study_ref::Source::Study(handle)) = study.and_then(|s| s.source.as_ref()) {
        lock_labels(labels).study = handle.clone();
    }
}

/// The request's labels, locked.
pub(crate) fn lock_labels(labels: &std::sync::Mutex<Labels>) -> std::sync::MutexGuard<'_, Labels> {
    labels.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records the grade answered (for the audit log).
pub(crate) fn set_grade(labels: &std::sync::Mutex<Labels>, grade: Grade) {
    lock_labels(labels).grade = grade.name().to_string();
}

pub(crate) fn set_study(labels: &std::sync::Mutex<Labels>, study: &Study) {
    lock_labels(labels).study = study.handle.clone();
}

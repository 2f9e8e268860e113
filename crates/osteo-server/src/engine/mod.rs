//! The protocol-neutral engine: the study store, the models, admission, ingest, audit and the
//! operations (upload, classify, explain, compare, studies, the Open Inference Protocol's
//! infer and model queries) as plain functions over a [`Call`]. The front doors — osteo.v1
//! over gRPC, the Open Inference Protocol over gRPC and over REST — are siblings that
//! translate their protocol into a call and the typed answer back; none calls another.
//! [`Engine::run`] is the one frame every call goes through: permission, deadline, span, one
//! metrics sample, one audit record and one log line, read from the call's context and
//! outcome.

mod call;
mod grade_study;
mod grading;
pub mod oip;
pub mod repository;
mod results;
mod rpc;
mod shadow_report;
mod studies;

pub use call::{AFFINITY_KEY, Call, Outcome};
pub use rpc::Rpc;

use crate::error::ServerError;
use crate::models::ServedModel;
use crate::scheduler::Worker;
use crate::state::State;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// An operation's future, borrowing the engine and its call.
pub type Op<'c, T> = Pin<Box<dyn Future<Output = Result<T, ServerError>> + Send + 'c>>;

/// The engine every front door calls.
#[derive(Clone)]
pub struct Engine {
    state: Arc<State>,
}

impl Engine {
    /// An engine over shared state.
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }

    /// The shared state.
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// The server's request timeout, the budget of a call whose client set none.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.state.settings.server.request_timeout_s)
    }

    /// Runs `op` as `call`: refused unless the caller may make it, cancelled at its budget,
    /// inside its span; then counted (`osteo_requests_total`, `osteo_request_seconds`, the
    /// model's statistics), audited and logged from its context and outcome. An answer whose
    /// audit record cannot be written is withheld.
    pub async fn run<T, F>(&self, mut call: Call, op: F) -> Result<T, ServerError>
    where
        F: for<'c> FnOnce(&'c Engine, &'c mut Call) -> Op<'c, T>,
    {
        let start = Instant::now();
        let _in_flight = InFlight::new(call.rpc());
        let span = call.span().clone();
        span.in_scope(|| tracing::debug!("request started"));
        let result = match call.permitted() {
            Err(e) => Err(e),
            Ok(()) => {
                let (rpc, budget) = (call.rpc(), call.budget());
                let fut = op(self, &mut call).instrument(span.clone());
                match tokio::time::timeout(budget, fut).await {
                    Ok(r) => r.map_err(ServerError::one_line),
                    Err(_) => Err(ServerError::DeadlineExceeded(format!(
                        "{rpc} did not finish within its deadline of {} ms (queue, \
                         preprocessing and inference); retry later or allow more time",
                        budget.as_millis()
                    ))),
                }
            }
        };
        let code = result
            .as_ref()
            .map_or_else(ServerError::code, |_| tonic::Code::Ok);
        let took = start.elapsed();
        let ms = took.as_secs_f64() * 1e3;
        self.count_in_model_statistics(&call, result.is_ok(), took);
        let outcome = call.outcome();
        let record = crate::audit::Record {
            study: call.recorded_study(),
            model: outcome.model.clone(),
            version: outcome.version.clone(),
            weights_blake3: outcome.weights_blake3.clone(),
            backend: outcome.backend.clone(),
            grade: outcome.grade.clone(),
            ..crate::audit::Record::new(
                call.rpc().name(),
                &call.principal().name,
                call.peer().map(|a| a.to_string()).unwrap_or_default(),
                code,
                ms,
            )
        };
        span.record("study", record.study.as_str());
        span.record("model", record.model.as_str());
        span.record("backend", record.backend.as_str());
        let code_name = record.code.clone();
        let result = self
            .state
            .account(call.rpc().name(), record)
            .await
            .and(result);
        let _enter = span.enter();
        match &result {
            Ok(_) => tracing::info!(code = %code_name, ms, "request served"),
            Err(e) => tracing::warn!(code = %code_name, ms, error = %e, "request failed"),
        }
        result
    }

    /// Adds a model call's outcome to its model's statistics (calls that never reached a
    /// served model are not counted).
    fn count_in_model_statistics(&self, call: &Call, ok: bool, took: Duration) {
        let o = call.outcome();
        if !call.rpc().runs_a_model() || o.model.is_empty() || o.model == "unknown" {
            return;
        }
        if let Ok(model) = self
            .state
            .models()
            .and_then(|m| m.get_version(&o.model, &o.version).cloned())
        {
            model.stats.finished(ok, took);
        }
    }

    /// The served model `name` at `version` ("" = the version answering requests that name
    /// none), recording its served name and version in the call (or `unknown`).
    pub(crate) fn lookup(
        &self,
        call: &mut Call,
        name: &str,
        version: &str,
    ) -> Result<Arc<ServedModel>, ServerError> {
        let found = self.state.models()?.get_version(name, version).cloned();
        match &found {
            Ok(m) => call.served_by(m, ""),
            Err(_) => call.served_by_none(),
        }
        found
    }

    /// The model version and backend worker that answer a request naming `model`, `version`
    /// and `backend`: a canary split of the model routes requests that name no version (the
    /// same `key` always to the same target); otherwise, or when the target is no longer
    /// served, the requested ones. Records the served names in the call.
    pub(crate) fn resolve(
        &self,
        call: &mut Call,
        model: &str,
        version: &str,
        backend: &str,
        key: &crate::traffic::StickyKey,
    ) -> Result<(Arc<ServedModel>, Arc<Worker>), ServerError> {
        if !version.is_empty() || !self.state.traffic.has_canaries() {
            return self.resolve_exact(call, model, version, backend);
        }
        let served = self
            .state
            .models()?
            .get(model)
            .map(|m| m.name().to_string());
        if let Ok(name) = served
            && let Some(route) = self.state.traffic.canary(&name, version, backend, key)
        {
            match self.resolve_exact(call, &name, &route.version, &route.backend) {
                Ok(found) => {
                    metrics::counter!("osteo_canary_requests_total", "model" => name, "target" => route.target)
                            .increment(1);
                    return Ok(found);
                }
                Err(e) => tracing::debug!(
                    model = %name,
                    target = %route.target,
                    error = %e,
                    "canary target not served; answering with the requested version"
                ),
            }
        }
        self.resolve_exact(call, model, version, backend)
    }

    /// The requested model version and the worker of the requested backend, recording the
    /// served names in the call (or `unknown` for a name the server does not serve).
    pub(crate) fn resolve_exact(
        &self,
        call: &mut Call,
        model: &str,
        version: &str,
        backend: &str,
    ) -> Result<(Arc<ServedModel>, Arc<Worker>), ServerError> {
        let model = self.lookup(call, model, version)?;
        let found = model
            .worker(backend)
            .map(|(name, w)| (name.to_string(), w.clone()));
        let served = found.as_ref().map_or("unknown", |(name, _)| name.as_str());
        call.served_by(&model, served);
        let worker = found?.1;
        Ok((model, worker))
    }
}

/// One call counted in `osteo_requests_in_flight` (by rpc, a bounded label) from its start until
/// it ends or is dropped (a client that went away): the load signal autoscaling reads, queue
/// waits included.
struct InFlight(metrics::Gauge);

impl InFlight {
    fn new(rpc: Rpc) -> Self {
        let g = metrics::gauge!("osteo_requests_in_flight", "rpc" => rpc.name());
        g.increment(1.0);
        Self(g)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

#[cfg(test)]
mod tests;

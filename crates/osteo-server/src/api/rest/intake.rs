//! What the REST layer does before a request reaches its method: the headers it checks, the
//! body it reads (within the request timeout, each byte reserved from the in-flight budget
//! within the caller's share as it arrives), the infer body parsed with its values capped, and
//! the refusals of these steps, which are counted, audited and logged like every other outcome.

use super::json::{self, HEADER_LENGTH};
use super::{App, Caller, ModelPath, Refusal, error_response, http_status};
use crate::budget::Reservation;
use crate::engine::Rpc;
use crate::error::ServerError;
use axum::body::Body;
use http::{HeaderValue, StatusCode, header};
use std::time::Instant;

/// A request the REST layer refused before it reached a method: the status it is audited and
/// counted with, the HTTP status it is answered with, and whether its connection closes after
/// the answer (a body left unread is not drained).
pub(super) struct Early {
    status: tonic::Status,
    http: StatusCode,
    close: bool,
}

impl Early {
    /// A refusal answered with the HTTP status of its code.
    pub(super) fn new(status: tonic::Status) -> Self {
        Self {
            http: http_status(status.code()),
            status,
            close: false,
        }
    }

    /// The same refusal, closing the connection after its answer.
    fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// The refusal of a body over `limit` bytes.
    fn too_large(limit: usize) -> Self {
        Self::new(tonic::Status::resource_exhausted(format!(
            "the request body is larger than {limit} bytes (server.max_message_bytes for infer) \
             or ended early; send fewer rows per request"
        )))
        .closing()
    }
}

impl From<ServerError> for Early {
    fn from(e: ServerError) -> Self {
        Self::new(e.into())
    }
}

impl App {
    /// Runs what a request to `rpc` does before its method (`before`: headers, body, parsing);
    /// a refusal there is answered through [`App::refused`].
    pub(super) async fn before_method<T>(
        &self,
        rpc: Rpc,
        caller: &Caller,
        before: impl std::future::Future<Output = Result<T, Early>>,
    ) -> Result<T, Refusal> {
        let started = Instant::now();
        match before.await {
            Ok(done) => Ok(done),
            Err(early) => Err(self.refused(rpc, caller, early, started).await),
        }
    }

    /// Answers a request refused before its method: counted in `osteo_requests_total`, audited
    /// and logged as the gRPC method it would have run, like every other outcome.
    async fn refused(&self, rpc: Rpc, caller: &Caller, early: Early, started: Instant) -> Refusal {
        let code = early.status.code();
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let record = crate::audit::Record::new(
            rpc.name(),
            caller.principal.as_ref().map_or("", |p| p.name.as_str()),
            caller.peer().map(|a| a.to_string()).unwrap_or_default(),
            code,
            ms,
        );
        if self
            .engine
            .state()
            .account(rpc.name(), record)
            .await
            .is_err()
        {
            tracing::error!(
                %rpc,
                "the audit record of a refused REST request was not written"
            );
        }
        tracing::warn!(%rpc, code = ?code, ms, error = %crate::text::one_line(early.status.message()), "request refused");
        let mut r = error_response(&early.status);
        *r.status_mut() = early.http;
        if early.close {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        r.into()
    }

    /// Reads a request body of at most `limit` bytes (refused on its Content-Length before a
    /// byte is read) within the request timeout. Each byte is reserved
    /// from `store.max_inflight_upload_bytes`, within the caller's share, before it is
    /// buffered: as it arrives, never on the declared length, so a slow body holds only what
    /// it sent. The reservation stays held while the body is.
    pub(super) async fn read_body(
        &self,
        caller: &Caller,
        headers: &http::HeaderMap,
        body: Body,
        limit: usize,
    ) -> Result<(bytes::Bytes, Reservation), Early> {
        use http_body_util::BodyExt;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(Early::too_large(limit));
        }
        let what = "the request body";
        let holder = self
            .engine
            .state()
            .budget_holder(caller.principal.as_ref(), caller.peer());
        let mut held = self
            .engine
            .state()
            .upload_bytes()
            .reserve_for(&holder, 0, what)
            .map_err(|e| Early::from(e).closing())?;
        let read = async {
            let mut body = body;
            let mut buf: Vec<u8> = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|_| {
                    Early::from(ServerError::InvalidArgument(
                        "the request body could not be read to its end".into(),
                    ))
                })?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let total = buf.len() + data.len();
                if total > limit {
                    return Err(Early::too_large(limit));
                }
                if total > buf.capacity() {
                    // While the buffer moves to a larger block both blocks exist: reserve that
                    // peak first, then settle on the new block.
                    let grown = total.max(buf.capacity() * 2).min(limit);
                    held.resize((buf.capacity() + grown) as u64, what)?;
                    buf.reserve_exact(grown - buf.len());
                    held.resize(buf.capacity() as u64, what)?;
                }
                buf.extend_from_slice(&data);
            }
            Ok(bytes::Bytes::from(buf))
        };
        let timeout = self.body_timeout();
        let outcome = tokio::time::timeout(timeout, read).await;
        match outcome {
            Ok(Ok(bytes)) => Ok((bytes, held)),
            Ok(Err(e)) => Err(e.closing()),
            Err(_) => Err(Early {
                status: tonic::Status::deadline_exceeded(format!(
                    "the request body did not arrive within server.request_timeout_s ({} s)",
                    timeout.as_secs()
                )),
                http: StatusCode::REQUEST_TIMEOUT,
                close: true,
            }),
        }
    }

    /// Checks an infer request's headers, reads its body and parses it into the gRPC message.
    /// The tensors decoded from the body are reserved before they are decoded (at most the
    /// values any served model takes in one request), and held with the body's bytes.
    pub(super) async fn prepare_infer(
        &self,
        p: &ModelPath,
        caller: &Caller,
        headers: &http::HeaderMap,
        body: Body,
    ) -> Result<(json::Parsed, Reservation), Early> {
        let bad = |m: String| Early::from(ServerError::InvalidArgument(m)).closing();
        if let Some(enc) = headers.get(header::CONTENT_ENCODING)
            && enc.as_bytes() != b"identity"
        {
            return Err(bad(
                "Content-Encoding is not supported: send the request uncompressed".into(),
            ));
        }
        let header_length = match headers.get(HEADER_LENGTH) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<usize>().ok())
                    .ok_or_else(|| bad(format!("{HEADER_LENGTH} must be a byte count")))?,
            ),
        };
        let state = self.engine.state();
        let max_values = crate::engine::oip::max_request_elements(
            state.models().map_err(Early::from)?.as_ref(),
            state.settings.scheduler.max_batch,
        );
        let (body, mut held) = self.read_body(caller, headers, body, self.max_body).await?;
        // Decoding keeps at most one vector of the values (growing by doubling) and their raw
        // bytes besides the body.
        let decoded = max_values.saturating_mul(4 * 3) as u64;
        held.grow(decoded, "the request's decoded tensors")?;
        let parsed = json::parse(&p.model, &p.version, &body, header_length, max_values)?;
        drop(body);
        let raw: usize = parsed.message.raw_input_contents.iter().map(Vec::len).sum();
        held.resize(raw as u64, "the request's decoded tensors")?;
        Ok((parsed, held))
    }
}

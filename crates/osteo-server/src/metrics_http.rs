//! The Prometheus endpoint: one process-wide recorder, and a small HTTP/1 listener that answers
//! `GET /metrics` (and `HEAD`) with the exposition text and 404 to anything else, behind the
//! same connection limits as the gRPC listener.

use crate::error::ServerError;
use crate::net::connection::{ConnLimits, accept_loop};
use bytes::Bytes;
use http_body_util::Full;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::convert::Infallible;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Histogram buckets (seconds) of the latency metrics.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// The recorder of this process, installed on first use (several servers in one process, as in
/// the tests, share it).
static RECORDER: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// The process-wide Prometheus recorder, installing it (and its upkeep task) on first call.
pub fn recorder() -> Result<PrometheusHandle, ServerError> {
    RECORDER
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("osteo_batch_size".into()),
                        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0],
                    )
                })
                .map_err(|e| format!("metrics buckets: {e}"))?
                .install_recorder()
                .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .map_err(|e| format!("cannot start the metrics upkeep thread: {e}"))?;
            Ok(handle)
        })
        .clone()
        .map_err(ServerError::Internal)
}

/// The answer to one HTTP request on the metrics port; with `token_digest` (the SHA-256 of the
/// configured token), a scrape without `authorization: Bearer <token>` is 401.
fn respond(
    handle: &PrometheusHandle,
    token_digest: Option<&str>,
    req: &http::Request<hyper::body::Incoming>,
) -> http::Response<Full<Bytes>> {
    let found = req.uri().path() == "/metrics"
        && matches!(*req.method(), http::Method::GET | http::Method::HEAD);
    let authorized = token_digest.is_none_or(|want| {
        req.headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            // Compare digests: the time taken says nothing about the token.
            .is_some_and(|given| crate::auth::token_digest(given.trim()) == want)
    });
    let mut resp = if found && !authorized {
        let mut r = http::Response::new(Full::new(Bytes::from_static(
            b"unauthorized: send Authorization: Bearer <telemetry.metrics_token>\n",
        )));
        *r.status_mut() = http::StatusCode::UNAUTHORIZED;
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
        r
    } else if found {
        let mut r = http::Response::new(Full::new(Bytes::from(handle.render())));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        r
    } else {
        let mut r = http::Response::new(Full::new(Bytes::from_static(
            b"not found: the metrics are at GET /metrics\n",
        )));
        *r.status_mut() = http::StatusCode::NOT_FOUND;
        r
    };
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

/// Serves the metrics on `listener` until `shutdown` turns true; with `token`, only to scrapes
/// that present it.
pub fn serve(
    listener: TcpListener,
    limits: ConnLimits,
    token: Option<String>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ServerError> {
    let handle = recorder()?;
    let token_digest = token.as_deref().map(crate::auth::token_digest);
    let mut conns = accept_loop(listener, limits, None, shutdown.clone(), "metrics");
    tokio::spawn(async move {
        let mut stop = shutdown;
        loop {
            let conn = tokio::select! {
                c = conns.recv() => match c { Some(c) => c, None => return },
                _ = stop.wait_for(|s| *s) => return,
            };
            let handle = handle.clone();
            let token_digest = token_digest.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let resp = respond(&handle, token_digest.as_deref(), &req);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(hyper_util::rt::TokioIo::new(conn), service)
                    .await;
                if let Err(e) = served {
                    tracing::debug!(error = %e, "metrics connection ended with an error");
                }
            });
        }
    });
    Ok(())
}

//! The Open Inference Protocol (KServe v2) over HTTP/REST on `server.http_listen`: health,
//! server and model metadata, readiness, infer (JSON tensors and Triton's binary tensor data
//! extension) and Triton's model configuration, statistics and repository index. Each request
//! is a call of the engine's OIP operations, a sibling of the gRPC front door, so admission,
//! batching, metrics and audit records are the same; TLS, connection limits and
//! authentication are those of the gRPC listener.

mod intake;
pub mod json;

use crate::auth::{AuthLayer, Principal};
use crate::engine::{Call, Engine, Op, Rpc};
use crate::net::connection::{ActivityLayer, ConnInfo, ConnLimits, accept_loop};
use crate::net::tls::TlsSource;
use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use http::{HeaderValue, StatusCode, header};
use intake::Early;
use json::HEADER_LENGTH;
use osteo_proto::inference as v2;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpConnectInfo;
use tower_layer::Layer;

/// What the handlers share.
#[derive(Clone)]
struct App {
    engine: Engine,
    max_body: usize,
}

impl App {
    /// Time a request body may take to arrive (the server's request timeout).
    fn body_timeout(&self) -> Duration {
        self.engine.request_timeout()
    }

    /// Runs `op` as a call to `rpc` by `caller` through the engine; an error is answered with
    /// the protocol's error body.
    async fn call<T, F>(&self, rpc: Rpc, caller: &Caller, op: F) -> Result<T, Refusal>
    where
        F: for<'c> FnOnce(&'c Engine, &'c mut Call) -> Op<'c, T>,
    {
        let call = Call::new(
            rpc,
            caller.principal.clone(),
            caller.peer(),
            self.engine.request_timeout(),
        )
        .with_affinity(caller.affinity.as_deref());
        self.engine
            .run(call, op)
            .await
            .map_err(|e| error_response(&e.into()).into())
    }
}

/// The HTTP status of a gRPC status code.
fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code as C;
    match code {
        C::Ok => StatusCode::OK,
        C::InvalidArgument | C::FailedPrecondition | C::OutOfRange => StatusCode::BAD_REQUEST,
        C::NotFound => StatusCode::NOT_FOUND,
        C::Unauthenticated => StatusCode::UNAUTHORIZED,
        C::PermissionDenied => StatusCode::FORBIDDEN,
        C::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        C::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        C::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        C::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A JSON body with `status`.
fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut r = Response::new(Body::from(serde_json::to_vec(body).unwrap_or_default()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The protocol's error body, `{"error": message}`, with the status of `status`'s code.
fn error_response(status: &tonic::Status) -> Response {
    let mut r = json_response(
        http_status(status.code()),
        &json!({ "error": status.message() }),
    );
    if status.code() == tonic::Code::Unauthenticated {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// A refused request's response (boxed: responses are large).
struct Refusal(Box<Response>);

impl From<Response> for Refusal {
    fn from(r: Response) -> Self {
        Refusal(Box::new(r))
    }
}

impl axum::response::IntoResponse for Refusal {
    fn into_response(self) -> Response {
        *self.0
    }
}

/// A handler's answer.
type Answer = Result<Response, Refusal>;

/// The caller of a request as the authentication layer and the connection left it.
struct Caller {
    principal: Option<Principal>,
    tcp: Option<TcpConnectInfo>,
    affinity: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &S,
    ) -> Result<Self, Infallible> {
        Ok(Caller {
            principal: parts.extensions.get::<Principal>().cloned(),
            tcp: parts.extensions.get::<TcpConnectInfo>().cloned(),
            affinity: parts
                .headers
                .get(crate::engine::AFFINITY_KEY)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        })
    }
}

impl Caller {
    /// The peer's address.
    fn peer(&self) -> Option<std::net::SocketAddr> {
        self.tcp.as_ref().and_then(TcpConnectInfo::remote_addr)
    }
}

/// The engine's answer as JSON made by `to_json`, or the error.
fn answer<T>(result: Result<T, Refusal>, to_json: impl FnOnce(T) -> Value) -> Answer {
    result.map(|r| json_response(StatusCode::OK, &to_json(r)))
}

/// Model name and version of a route ("" = the served version).
#[derive(serde::Deserialize)]
struct ModelPath {
    model: String,
    #[serde(default)]
    version: String,
}

/// `GET /v2/health/live`: 200 while the process serves.
async fn live() -> Response {
    json_response(StatusCode::OK, &json!({ "live": true }))
}

/// `GET /v2/health/ready`: 200 when every model is loaded and up and the server is not
/// draining for shutdown, else 503.
async fn ready(State(app): State<App>) -> Response {
    let up = app.engine.state().ready();
    let status = if up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &json!({ "ready": up }))
}

/// `GET /v2`: server metadata.
async fn server_metadata(State(app): State<App>, caller: Caller) -> Answer {
    let r = app
        .call(Rpc::ServerMetadata, &caller, |e, _| {
            Box::pin(async move { Ok(e.server_metadata()) })
        })
        .await;
    answer(
        r,
        |m| json!({ "name": m.name, "version": m.version, "extensions": m.extensions }),
    )
}

/// `GET /v2/models/{model}[/versions/{version}]`: model metadata.
async fn model_metadata(
    State(app): State<App>,
    Path(p): Path<ModelPath>,
    caller: Caller,
) -> Answer {
    let r = app
        .call(Rpc::ModelMetadata, &caller, |e, c| {
            Box::pin(async move { e.model_metadata(c, &p.model, &p.version) })
        })
        .await;
    // The inputs' encodings as tensor parameters (REST only: the gRPC message has no field).
    let encodings = match &r {
        Ok(m) => app
            .engine
            .state()
            .models()
            .and_then(|models| models.get(&m.name).cloned())
            .map(|m| crate::engine::oip::input_encodings(&m))
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let tensors = |ts: Vec<v2::model_metadata_response::TensorMetadata>| -> Vec<Value> {
        ts.into_iter()
            .map(|t| {
                let mut v = json!({ "name": t.name, "datatype": t.datatype, "shape": t.shape });
                if let Some((_, p)) = encodings.iter().find(|(n, _)| *n == t.name) {
                    v["parameters"] = p.clone();
                }
                v
            })
            .collect()
    };
    answer(r, |m| {
        json!({
            "name": m.name,
            "versions": m.versions,
            "platform": m.platform,
            "inputs": tensors(m.inputs),
            "outputs": tensors(m.outputs),
        })
    })
}

/// `GET /v2/models/{model}[/versions/{version}]/ready`: 200 when the model is up, else 503.
async fn model_ready(State(app): State<App>, Path(p): Path<ModelPath>, caller: Caller) -> Answer {
    let name = p.model.clone();
    let r = app
        .call(Rpc::ModelReady, &caller, |e, c| {
            Box::pin(async move { e.model_ready(c, &p.model, &p.version) })
        })
        .await?;
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok(json_response(
        status,
        &json!({ "name": name, "ready": r.ready }),
    ))
}

/// The path of a repository request.
#[derive(Debug, serde::Deserialize)]
struct RepositoryPath {
    model: String,
}

/// `POST /v2/repository/models/{model}/load`: Triton's RepositoryModelLoad (admin role); the
/// body (Triton's optional parameters) is not read.
async fn model_load(
    State(app): State<App>,
    Path(p): Path<RepositoryPath>,
    caller: Caller,
) -> Answer {
    let r = app
        .call(Rpc::RepositoryModelLoad, &caller, |e, c| {
            Box::pin(async move { e.load_model(c, &p.model).await })
        })
        .await;
    answer(r, |()| json!({}))
}

/// `POST /v2/repository/models/{model}/unload`: Triton's RepositoryModelUnload (admin role).
async fn model_unload(
    State(app): State<App>,
    Path(p): Path<RepositoryPath>,
    caller: Caller,
) -> Answer {
    let r = app
        .call(Rpc::RepositoryModelUnload, &caller, |e, c| {
            Box::pin(async move { e.unload_model(c, &p.model).await })
        })
        .await;
    answer(r, |()| json!({}))
}

/// `POST /v2/models/{model}[/versions/{version}]/infer`.
async fn infer(
    State(app): State<App>,
    Path(p): Path<ModelPath>,
    caller: Caller,
    request: Request,
) -> Answer {
    let (parts, body) = request.into_parts();
    let prepare = app.prepare_infer(&p, &caller, &parts.headers, body);
    let (mut parsed, held) = app.before_method(Rpc::ModelInfer, &caller, prepare).await?;
    // The reservation stays held until the answer: the parsed tensors are what it covers now.
    let _held = held;
    let message = std::mem::take(&mut parsed.message);
    let response = app
        .call(Rpc::ModelInfer, &caller, |e, c| {
            Box::pin(e.model_infer(c, message))
        })
        .await?;
    let out = json::respond(&parsed, &response);
    let mut r = Response::new(Body::from(out.bytes));
    let content_type = match out.header_length {
        Some(n) => {
            r.headers_mut().insert(HEADER_LENGTH, HeaderValue::from(n));
            "application/octet-stream"
        }
        None => "application/json",
    };
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(r)
}

/// `GET /v2/models/{model}[/versions/{version}]/config`: Triton's model configuration.
async fn model_config(State(app): State<App>, Path(p): Path<ModelPath>, caller: Caller) -> Answer {
    let r = app
        .call(Rpc::ModelConfig, &caller, |e, c| {
            Box::pin(async move { e.model_config(c, &p.model, &p.version) })
        })
        .await;
    let data_type = |t: i32| {
        v2::DataType::try_from(t)
            .map(|d| d.as_str_name())
            .unwrap_or("TYPE_INVALID")
    };
    answer(r, |c| {
        let c = c.config.unwrap_or_default();
        let tensor = |name: &str, t: i32, dims: &[i64]| json!({ "name": name, "data_type": data_type(t), "dims": dims });
        json!({
            "name": c.name,
            "platform": c.platform,
            "backend": c.backend,
            "max_batch_size": c.max_batch_size,
            "input": c.input.iter().map(|i| tensor(&i.name, i.data_type, &i.dims)).collect::<Vec<_>>(),
            "output": c.output.iter().map(|o| tensor(&o.name, o.data_type, &o.dims)).collect::<Vec<_>>(),
            "dynamic_batching": c.dynamic_batching.map(|d| json!({
                "preferred_batch_size": d.preferred_batch_size,
                "max_queue_delay_microseconds": d.max_queue_delay_microseconds,
            })),
        })
    })
}

/// The JSON of one model's statistics (Triton's field names).
fn statistics_json(s: v2::ModelStatistics) -> Value {
    let duration = |d: Option<v2::StatisticDuration>| {
        let d = d.unwrap_or_default();
        json!({ "count": d.count, "ns": d.ns })
    };
    let i = s.inference_stats.unwrap_or_default();
    json!({
        "name": s.name,
        "version": s.version,
        "last_inference": s.last_inference,
        "inference_count": s.inference_count,
        "execution_count": s.execution_count,
        "inference_stats": {
            "success": duration(i.success),
            "fail": duration(i.fail),
            "queue": duration(i.queue),
            "compute_input": duration(i.compute_input),
            "compute_infer": duration(i.compute_infer),
            "compute_output": duration(i.compute_output),
        },
    })
}

/// Triton's statistics of the model `name` at `version` (all models when `name` is empty).
async fn statistics(app: App, caller: Caller, name: String, version: String) -> Answer {
    let r = app
        .call(Rpc::ModelStatistics, &caller, |e, c| {
            Box::pin(async move { e.model_statistics(c, &name, &version) })
        })
        .await;
    answer(
        r,
        |s| json!({ "model_stats": s.model_stats.into_iter().map(statistics_json).collect::<Vec<_>>() }),
    )
}

/// `GET /v2/models/{model}[/versions/{version}]/stats`: Triton's statistics of one model.
async fn model_statistics(
    State(app): State<App>,
    Path(p): Path<ModelPath>,
    caller: Caller,
) -> Answer {
    statistics(app, caller, p.model, p.version).await
}

/// `GET /v2/models/stats`: Triton's statistics of every model.
async fn all_statistics(State(app): State<App>, caller: Caller) -> Answer {
    statistics(app, caller, String::new(), String::new()).await
}

/// The largest body of `POST /v2/repository/index`.
const INDEX_BODY: usize = 4096;

/// `POST /v2/repository/index`: the served models (body `{"ready": true}` for ready ones).
async fn repository_index(State(app): State<App>, caller: Caller, request: Request) -> Answer {
    let (parts, body) = request.into_parts();
    let parse = async {
        let (body, _held) = app
            .read_body(&caller, &parts.headers, body, INDEX_BODY)
            .await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(false);
        }
        serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("ready").map(|r| r.as_bool()))
            .unwrap_or(Some(false))
            .ok_or_else(|| {
                Early::new(tonic::Status::invalid_argument(
                    "the body must be {} or {\"ready\": true|false}",
                ))
            })
    };
    let ready = app
        .before_method(Rpc::RepositoryIndex, &caller, parse)
        .await?;
    let r = app
        .call(Rpc::RepositoryIndex, &caller, |e, _| {
            Box::pin(async move { e.repository_index(ready) })
        })
        .await;
    answer(r, |idx| {
        Value::Array(
            idx.models
                .into_iter()
                .map(|m| {
                    json!({ "name": m.name, "version": m.version, "state": m.state, "reason": m.reason })
                })
                .collect(),
        )
    })
}

/// Anything else: 404 with the protocol's error body.
async fn not_found() -> Response {
    error_response(&tonic::Status::not_found(
        "no such endpoint: the Open Inference Protocol is under /v2 (health/live, health/ready, \
         models/{model}[/versions/{version}][/ready|/infer|/config|/stats], repository/index)",
    ))
}

/// Authenticates every request but the health endpoints, as the gRPC listener does.
async fn authenticate(State(gate): State<AuthLayer>, mut req: Request, next: Next) -> Response {
    if req.uri().path().starts_with("/v2/health/") {
        return next.run(req).await;
    }
    let rpc = Rpc::of_rest_path(req.uri().path());
    let conn = req.extensions().get::<ConnInfo>();
    match gate.admit(req.headers(), conn, rpc) {
        Ok((p, _)) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Err((status, recorded)) => {
            recorded.await;
            error_response(&status)
        }
    }
}

/// The REST routes over `inference`, authenticated by `gate`, with request bodies of at most
/// `max_body` bytes.
pub fn router(engine: Engine, gate: AuthLayer, max_body: usize) -> Router {
    let app = App { engine, max_body };
    let model = |suffix: &str| {
        [
            format!("/v2/models/{{model}}{suffix}"),
            format!("/v2/models/{{model}}/versions/{{version}}{suffix}"),
        ]
    };
    let mut r = Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/stats", get(all_statistics))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(model_load))
        .route("/v2/repository/models/{model}/unload", post(model_unload));
    for path in model("") {
        r = r.route(&path, get(model_metadata));
    }
    for path in model("/ready") {
        r = r.route(&path, get(model_ready));
    }
    for path in model("/infer") {
        r = r.route(&path, post(infer));
    }
    for path in model("/config") {
        r = r.route(&path, get(model_config));
    }
    for path in model("/stats") {
        r = r.route(&path, get(model_statistics));
    }
    r.fallback(not_found)
        .with_state(app)
        .layer(axum::middleware::from_fn_with_state(gate, authenticate))
}

/// Serves `router` over HTTP/1.1 on `listener` (TLS with `tls`) under `limits` until `stop`;
/// at shutdown each connection finishes its request in flight and closes.
pub fn serve(
    listener: TcpListener,
    limits: ConnLimits,
    tls: Option<Arc<TlsSource>>,
    router: Router,
    stop: watch::Receiver<bool>,
) {
    let mut conns = accept_loop(listener, limits, tls, stop.clone(), "http");
    let service = ActivityLayer.layer(router);
    tokio::spawn(async move {
        let mut until = stop.clone();
        loop {
            let conn = tokio::select! {
                c = conns.recv() => match c { Some(c) => c, None => return },
                _ = until.wait_for(|s| *s) => return,
            };
            let info = tonic::transport::server::Connected::connect_info(&conn);
            let service = service.clone();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                let per_request = hyper::service::service_fn(move |mut req: http::Request<_>| {
                    req.extensions_mut().insert(info.clone());
                    let mut service = service.clone();
                    tower_service::Service::call(&mut service, req)
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(hyper_util::rt::TokioIo::new(conn), per_request);
                tokio::pin!(served);
                let stopping = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                let result = tokio::select! {
                    r = served.as_mut() => r,
                    () = stopping => {
                        served.as_mut().graceful_shutdown();
                        served.await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_map_to_http_statuses() {
        assert_eq!(
            http_status(tonic::Code::InvalidArgument),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(http_status(tonic::Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(
            http_status(tonic::Code::ResourceExhausted),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            http_status(tonic::Code::Unauthenticated),
            StatusCode::UNAUTHORIZED
        );
    }
}

//! The Open Inference Protocol (KServe v2) over gRPC: `inference.GRPCInferenceService` on the
//! same port, authentication, admission, scheduler, metrics and audit log as osteo.v1. Every
//! served model is a v2 model under its own name and its model.toml version, with the inputs
//! its model.onnx reads — `images` FP32 `[-1, C, H, W]` (the view) and/or `tabular` FP32
//! `[-1, F]` (the encoded clinical features) — and the outputs `logits` and `probabilities`,
//! FP32 `[-1, 3]` in class order normal, osteopenia, osteoporosis. A request of N rows is N
//! samples in the model's dynamic batch, so v2 and osteo.v1 traffic batch together.

mod describe;
mod tensors;

pub(crate) use describe::input_encodings;
use describe::{config, metadata, statistics};
pub(crate) use tensors::max_request_elements;
use tensors::{inputs_of, requested_outputs, samples};

use crate::auth::{Credential, Principal};
use crate::error::ServerError;
use crate::models::ServedModel;
use crate::service::{Labels, Service, lock_labels, resolve, set_grade};
use crate::text::client_text;
use osteo_proto::inference as v2;
use osteo_proto::inference::grpc_inference_service_server::GrpcInferenceService;
use std::sync::Mutex;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// The element type every input and output uses.
const FP32: &str = "FP32";

/// Name of the output holding the logits (as in model.onnx).
const LOGITS: &str = osteo_onnx::names::LOGITS;

/// Name of the output holding the softmax probabilities.
const PROBABILITIES: &str = "probabilities";

/// The protocol extensions served (ServerMetadata), by Triton's names.
pub const EXTENSIONS: &[&str] = &[
    "binary_tensor_data",
    "model_configuration",
    "statistics",
    "parameters",
];

/// The v2 service over the osteo.v1 service's state.
#[derive(Clone)]
pub struct Inference {
    service: Service,
}

impl Inference {
    /// The v2 service sharing `service`'s state (models, admission, audit log).
    pub fn new(service: Service) -> Self {
        Self { service }
    }
}

/// Checks a request's model version against the served one ("" = the served version).
fn check_version(model: &ServedModel, version: &str) -> Result<(), ServerError> {
    let served = &model.artifacts.manifest.version;
    if version.is_empty() || version == served {
        Ok(())
    } else {
        Err(ServerError::NotFound(format!(
            "model {} has no version \"{}\" (serving version {served})",
            model.name(),
            client_text(version)
        )))
    }
}

/// The `backend` request parameter ("" = the model's default backend).
fn backend_parameter(req: &v2::ModelInferRequest) -> Result<String, ServerError> {
    match req
        .parameters
        .get("backend")
        .and_then(|p| p.parameter_choice.as_ref())
    {
        None => Ok(String::new()),
        Some(v2::infer_parameter::ParameterChoice::StringParam(b)) => Ok(b.clone()),
        Some(_) => Err(ServerError::InvalidArgument(
            "parameter \"backend\" must be a string naming a serving backend".into(),
        )),
    }
}

/// Runs one ModelInfer: admission, checks, the samples through the model's scheduler, the
/// outputs in the request's form (raw when its inputs were raw).
async fn infer(
    state: std::sync::Arc<crate::service::State>,
    labels: std::sync::Arc<Mutex<Labels>>,
    req: v2::ModelInferRequest,
) -> Result<v2::ModelInferResponse, ServerError> {
    let _permit = state.admit()?;
    let backend = backend_parameter(&req)?;
    let (model, backend) = resolve(&state, &labels, &req.model_name, &backend)?;
    check_version(model, &req.model_version)?;
    let outputs = requested_outputs(&req)?;
    let max_batch = state.settings.scheduler.max_batch;
    let (samples, raw) = samples(&req, &inputs_of(model), max_batch)?;
    let n = samples.len();
    let (_, worker) = model.worker(backend)?;
    let logits = worker.predict_many(samples).await?;
    let probabilities: Vec<Vec<f32>> = logits
        .iter()
        .map(|l| osteo_core::backend::softmax(l))
        .collect();
    if let [one] = logits.as_slice() {
        set_grade(&labels, crate::convert::probabilities(one)?.0);
    }
    let classes = logits.first().map_or(3, Vec::len);
    let mut response = v2::ModelInferResponse {
        model_name: model.name().to_string(),
        model_version: model.artifacts.manifest.version.clone(),
        id: req.id.clone(),
        ..Default::default()
    };
    for name in outputs {
        let rows = if name == LOGITS {
            &logits
        } else {
            &probabilities
        };
        let values: Vec<f32> = rows.iter().flatten().copied().collect();
        let mut tensor = v2::model_infer_response::InferOutputTensor {
            name: name.to_string(),
            datatype: FP32.to_string(),
            shape: vec![n as i64, classes as i64],
            ..Default::default()
        };
        if raw {
            response
                .raw_output_contents
                .push(values.iter().flat_map(|v| v.to_le_bytes()).collect());
        } else {
            tensor.contents = Some(v2::InferTensorContents {
                fp32_contents: values,
                ..Default::default()
            });
        }
        response.outputs.push(tensor);
    }
    Ok(response)
}

/// The answers of a ModelStreamInfer stream.
type InferStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<v2::ModelStreamInferResponse, Status>> + Send>,
>;

/// The served model `name` at `version` ("" = the served one), labelling the request with the
/// served name (or `unknown`).
fn lookup<'a>(
    state: &'a crate::service::State,
    labels: &Mutex<Labels>,
    name: &str,
    version: &str,
) -> Result<&'a ServedModel, ServerError> {
    let label = |name: &str| lock_labels(labels).model = name.to_string();
    let model = state
        .models()?
        .get(name)
        .inspect_err(|_| label("unknown"))?;
    label(model.name());
    check_version(model, version)?;
    Ok(model)
}

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(
        &self,
        request: Request<v2::ServerLiveRequest>,
    ) -> Result<Response<v2::ServerLiveResponse>, Status> {
        self.service
            .run("ServerLive", request, |_, _, _| async move {
                Ok(v2::ServerLiveResponse { live: true })
            })
            .await
    }

    async fn server_ready(
        &self,
        request: Request<v2::ServerReadyRequest>,
    ) -> Result<Response<v2::ServerReadyResponse>, Status> {
        self.service
            .run("ServerReady", request, |state, _, _| async move {
                Ok(v2::ServerReadyResponse {
                    ready: state.all_models_up(),
                })
            })
            .await
    }

    async fn model_ready(
        &self,
        request: Request<v2::ModelReadyRequest>,
    ) -> Result<Response<v2::ModelReadyResponse>, Status> {
        self.service
            .run("ModelReady", request, |state, labels, req| async move {
                let model = lookup(&state, &labels, &req.name, &req.version)?;
                Ok(v2::ModelReadyResponse {
                    ready: model.is_up(),
                })
            })
            .await
    }

    async fn server_metadata(
        &self,
        request: Request<v2::ServerMetadataRequest>,
    ) -> Result<Response<v2::ServerMetadataResponse>, Status> {
        self.service
            .run("ServerMetadata", request, |_, _, _| async move {
                Ok(v2::ServerMetadataResponse {
                    name: "osteoserve".to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    extensions: EXTENSIONS.iter().map(ToString::to_string).collect(),
                })
            })
            .await
    }

    async fn model_metadata(
        &self,
        request: Request<v2::ModelMetadataRequest>,
    ) -> Result<Response<v2::ModelMetadataResponse>, Status> {
        self.service
            .run("ModelMetadata", request, |state, labels, req| async move {
                let model = lookup(&state, &labels, &req.name, &req.version)?;
                Ok(metadata(model))
            })
            .await
    }

    async fn model_infer(
        &self,
        request: Request<v2::ModelInferRequest>,
    ) -> Result<Response<v2::ModelInferResponse>, Status> {
        self.service.run("ModelInfer", request, infer).await
    }

    type ModelStreamInferStream = InferStream;

    /// Each request of the stream runs as a ModelInfer of the stream's principal (admitted,
    /// counted and audited one by one), answered in order; a failed request is answered with
    /// its error message and the stream goes on. A stream opened with a bearer token re-checks
    /// it every second and before every request: revoked, the stream ends UNAUTHENTICATED. A
    /// stream ends DEADLINE_EXCEEDED after `server.max_stream_s`.
    async fn model_stream_infer(
        &self,
        request: Request<tonic::Streaming<v2::ModelInferRequest>>,
    ) -> Result<Response<InferStream>, Status> {
        let principal = request.extensions().get::<Principal>().cloned();
        let credential = request.extensions().get::<Credential>().cloned();
        let tcp = request
            .extensions()
            .get::<tonic::transport::server::TcpConnectInfo>()
            .cloned();
        let lifetime = Duration::from_secs(self.service.state().settings.server.max_stream_s);
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let service = self.service.clone();
        tokio::spawn(async move {
            let ends = tokio::time::Instant::now() + lifetime;
            let mut recheck = tokio::time::interval(Duration::from_secs(1));
            let still_valid = || credential.as_ref().map_or(Ok(()), Credential::recheck);
            loop {
                let next = tokio::select! {
                    m = inbound.message() => m,
                    _ = recheck.tick() => match still_valid() {
                        Ok(()) => continue,
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    },
                    () = tokio::time::sleep_until(ends) => {
                        let _ = tx
                            .send(Err(Status::deadline_exceeded(format!(
                                "the stream reached its lifetime limit (server.max_stream_s, \
                                 {} s); open a new stream",
                                lifetime.as_secs()
                            ))))
                            .await;
                        return;
                    }
                };
                let message = match next {
                    Ok(Some(m)) => m,
                    Ok(None) => return,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                if let Err(status) = still_valid() {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                let mut one = Request::new(message);
                if let Some(p) = &principal {
                    one.extensions_mut().insert(p.clone());
                }
                if let Some(t) = &tcp {
                    one.extensions_mut().insert(t.clone());
                }
                let answer = match service.run("ModelStreamInfer", one, infer).await {
                    Ok(r) => v2::ModelStreamInferResponse {
                        error_message: String::new(),
                        infer_response: Some(r.into_inner()),
                    },
                    Err(status) => v2::ModelStreamInferResponse {
                        error_message: status.message().to_string(),
                        infer_response: None,
                    },
                };
                if tx.send(Ok(answer)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn model_config(
        &self,
        request: Request<v2::ModelConfigRequest>,
    ) -> Result<Response<v2::ModelConfigResponse>, Status> {
        self.service
            .run("ModelConfig", request, |state, labels, req| async move {
                let model = lookup(&state, &labels, &req.name, &req.version)?;
                Ok(v2::ModelConfigResponse {
                    config: Some(config(model, &state.settings)),
                })
            })
            .await
    }

    async fn model_statistics(
        &self,
        request: Request<v2::ModelStatisticsRequest>,
    ) -> Result<Response<v2::ModelStatisticsResponse>, Status> {
        self.service
            .run(
                "ModelStatistics",
                request,
                |state, labels, req| async move {
                    let models = state.models()?;
                    let model_stats = if req.name.is_empty() {
                        models.all().iter().map(statistics).collect()
                    } else {
                        let model = lookup(&state, &labels, &req.name, &req.version)?;
                        vec![statistics(model)]
                    };
                    Ok(v2::ModelStatisticsResponse { model_stats })
                },
            )
            .await
    }

    async fn repository_index(
        &self,
        request: Request<v2::RepositoryIndexRequest>,
    ) -> Result<Response<v2::RepositoryIndexResponse>, Status> {
        self.service
            .run("RepositoryIndex", request, |state, _, req| async move {
                let models = state
                    .models()?
                    .all()
                    .iter()
                    .filter(|m| !req.ready || m.is_up())
                    .map(|m| v2::repository_index_response::ModelIndex {
                        name: m.name().to_string(),
                        version: m.artifacts.manifest.version.clone(),
                        state: if m.is_up() { "READY" } else { "UNAVAILABLE" }.to_string(),
                        reason: if m.is_up() {
                            String::new()
                        } else {
                            "a backend is being reloaded after repeated failures".to_string()
                        },
                    })
                    .collect();
                Ok(v2::RepositoryIndexResponse { models })
            })
            .await
    }
}

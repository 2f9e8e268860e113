//! The Open Inference Protocol (KServe v2) over gRPC: `inference.GRPCInferenceService` on the
//! same port, authentication, admission, scheduler, metrics and audit log as osteo.v1. Every
//! served model is a v2 model under its own name and its model.toml version, with the inputs
//! its model.onnx reads — `images` FP32 `[-1, C, H, W]` (the view) and/or `tabular` FP32
//! `[-1, F]` (the encoded clinical features) — and the outputs `logits` and `probabilities`,
//! FP32 `[-1, 3]` in class order normal, osteopenia, osteoporosis. A request of N rows is N
//! samples in the model's dynamic batch, so v2 and osteo.v1 traffic batch together.

use crate::auth::{Credential, Principal};
use crate::error::ServerError;
use crate::models::ServedModel;
use crate::service::{Labels, Service, lock_labels, resolve, set_grade};
use crate::text::client_text;
use osteo_core::Sample;
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

/// One input a model reads: its name and the shape of one sample.
struct InputSpec {
    name: &'static str,
    dims: Vec<usize>,
}

impl InputSpec {
    fn per_sample(&self) -> usize {
        self.dims.iter().product()
    }
}

/// The inputs of a served model, in the order of its model.onnx.
fn inputs_of(model: &ServedModel) -> Vec<InputSpec> {
    let arch = &model.artifacts.manifest.arch;
    let mut out = Vec::new();
    if let Some(i) = &arch.image {
        out.push(InputSpec {
            name: osteo_onnx::names::IMAGES,
            dims: vec![i.in_channels, i.height, i.width],
        });
    }
    if let Some(t) = &arch.tabular {
        out.push(InputSpec {
            name: osteo_onnx::names::TABULAR,
            dims: vec![t.in_features],
        });
    }
    out
}

/// The most FP32 values one infer request may carry for any served model: `max_batch` rows of
/// every input of the model with the largest inputs. A REST body is refused as soon as its
/// tensors hold more, before they are decoded any further.
pub(crate) fn max_request_elements(models: &crate::models::ModelSet, max_batch: usize) -> usize {
    models
        .all()
        .iter()
        .map(|m| {
            inputs_of(m)
                .iter()
                .map(InputSpec::per_sample)
                .sum::<usize>()
        })
        .max()
        .unwrap_or(0)
        .saturating_mul(max_batch)
}

/// Shape with a variable batch dimension.
fn batched(dims: &[usize]) -> Vec<i64> {
    std::iter::once(-1)
        .chain(dims.iter().map(|d| *d as i64))
        .collect()
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

/// The samples of a request's inputs (checked against the model's inputs: names, datatype,
/// shape, element count), and whether the request sent raw contents.
fn samples(
    req: &v2::ModelInferRequest,
    specs: &[InputSpec],
    max_batch: usize,
) -> Result<(Vec<Sample>, bool), ServerError> {
    let bad = |m: String| ServerError::InvalidArgument(m);
    // Repeated fields are bounded before any loop over them.
    if req.inputs.len() > specs.len() {
        return Err(bad(format!(
            "{} inputs sent; the model reads {} ({})",
            req.inputs.len(),
            specs.len(),
            specs.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
        )));
    }
    let raw = !req.raw_input_contents.is_empty();
    if raw && req.raw_input_contents.len() != req.inputs.len() {
        return Err(bad(format!(
            "raw_input_contents has {} entries for {} inputs; send one per input, in order",
            req.raw_input_contents.len(),
            req.inputs.len()
        )));
    }
    let mut rows: Option<usize> = None;
    let mut columns: Vec<Option<Vec<f32>>> = vec![None; specs.len()];
    for (k, input) in req.inputs.iter().enumerate() {
        let Some(at) = specs.iter().position(|s| s.name == input.name) else {
            return Err(bad(format!(
                "input \"{}\" is not an input of the model (inputs: {})",
                client_text(&input.name),
                specs.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
            )));
        };
        let spec = &specs[at];
        let name = spec.name;
        if columns[at].is_some() {
            return Err(bad(format!("input \"{name}\" is sent twice")));
        }
        if input.datatype != FP32 {
            return Err(bad(format!(
                "input \"{name}\" must be FP32, got \"{}\"",
                client_text(&input.datatype)
            )));
        }
        let shape_ok = input.shape.len() == spec.dims.len() + 1
            && input.shape[1..]
                .iter()
                .zip(&spec.dims)
                .all(|(a, b)| *a == *b as i64)
            && input.shape[0] >= 1;
        if !shape_ok {
            return Err(bad(format!(
                "input \"{name}\" must have shape [N, {}] with N >= 1, got {:?}",
                spec.dims
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                &input.shape[..input.shape.len().min(8)]
            )));
        }
        let n = input.shape[0] as usize;
        if n > max_batch {
            return Err(bad(format!(
                "input \"{name}\" has {n} rows; the model takes at most {max_batch} per request \
                 (max_batch_size)"
            )));
        }
        if rows.is_some_and(|r| r != n) {
            return Err(bad(format!(
                "input \"{name}\" has {n} rows, another input has {}",
                rows.unwrap_or(0)
            )));
        }
        rows = Some(n);
        let want = n * spec.per_sample();
        let values = if raw {
            let bytes = &req.raw_input_contents[k];
            if bytes.len() != want * 4 {
                return Err(bad(format!(
                    "input \"{name}\": raw_input_contents holds {} bytes, shape {:?} FP32 needs {}",
                    bytes.len(),
                    input.shape,
                    want * 4
                )));
            }
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        } else {
            let c = input.contents.as_ref();
            let fp32 = c.map_or(0, |c| c.fp32_contents.len());
            if fp32 != want {
                return Err(bad(format!(
                    "input \"{name}\": contents hold {fp32} FP32 values, shape {:?} needs {want} \
                     (in fp32_contents, or raw_input_contents)",
                    input.shape
                )));
            }
            c.map(|c| c.fp32_contents.clone()).unwrap_or_default()
        };
        if let Some(i) = osteo_core::backend::first_non_finite(&values) {
            return Err(bad(format!(
                "input \"{name}\" holds a value that is not a finite number (NaN or infinity, \
                 or beyond FP32's range) at element {i}; send finite values"
            )));
        }
        columns[at] = Some(values);
    }
    for (spec, column) in specs.iter().zip(&columns) {
        if column.is_none() {
            return Err(bad(format!("input \"{}\" is missing", spec.name)));
        }
    }
    let n = rows.unwrap_or(0);
    let samples = (0..n)
        .map(|i| {
            let mut sample = Sample::default();
            for (spec, column) in specs.iter().zip(&columns) {
                let per = spec.per_sample();
                let part = column.as_ref().map(|c| c[i * per..(i + 1) * per].to_vec());
                if spec.name == osteo_onnx::names::IMAGES {
                    sample.image = part;
                } else {
                    sample.tabular = part;
                }
            }
            sample
        })
        .collect();
    Ok((samples, raw))
}

/// The outputs a request asks for (all when it names none), checked.
fn requested_outputs(req: &v2::ModelInferRequest) -> Result<Vec<&'static str>, ServerError> {
    if req.outputs.is_empty() {
        return Ok(vec![LOGITS, PROBABILITIES]);
    }
    if req.outputs.len() > 2 {
        return Err(ServerError::InvalidArgument(format!(
            "{} outputs requested; the model has 2 ({LOGITS}, {PROBABILITIES})",
            req.outputs.len()
        )));
    }
    let mut out = Vec::new();
    for o in &req.outputs {
        let name = match o.name.as_str() {
            LOGITS => LOGITS,
            PROBABILITIES => PROBABILITIES,
            other => {
                return Err(ServerError::InvalidArgument(format!(
                    "output \"{}\" is not an output of the model (outputs: {LOGITS}, \
                     {PROBABILITIES})",
                    client_text(other)
                )));
            }
        };
        if out.contains(&name) {
            return Err(ServerError::InvalidArgument(format!(
                "output \"{name}\" is requested twice"
            )));
        }
        out.push(name);
    }
    Ok(out)
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

/// What each input of a served model holds (input name, JSON description): the REST model
/// metadata's tensor `parameters`, so a client can build the tensors without this project's
/// code. The gRPC protocol has no field for it.
pub(crate) fn input_encodings(model: &ServedModel) -> Vec<(&'static str, serde_json::Value)> {
    let m = &model.artifacts.manifest;
    let mut out = Vec::new();
    if let Some(v) = &m.view {
        out.push((
            osteo_onnx::names::IMAGES,
            serde_json::json!({
                "encoding": format!(
                    "coronal slab view of the axial CT: {}x{} pixels of {} mm, the {} mm slab \
                     centred on the spine; HU windowed from {} to {} onto [0, 1]; channel 0 the \
                     slab mean, channel 1 the slab maximum",
                    v.height, v.width, v.pixel_mm, v.slab_mm, v.window_hu[0], v.window_hu[1]
                ),
            }),
        ));
    }
    if let Some(t) = &m.tabular {
        let features: Vec<serde_json::Value> = t
            .features
            .iter()
            .map(|f| {
                serde_json::json!({
                    "name": f.name, "unit": f.unit, "min": f.min, "max": f.max,
                    "mean": f.mean, "std": f.std,
                })
            })
            .collect();
        out.push((
            osteo_onnx::names::TABULAR,
            serde_json::json!({
                "encoding": "element i = (raw_i - mean_i) / std_i of feature i below, raw_i \
                             within [min_i, max_i]",
                "features": features,
            }),
        ));
    }
    out
}

/// The model and its metadata.
fn metadata(model: &ServedModel) -> v2::ModelMetadataResponse {
    let tensor = |name: &str, dims: &[usize]| v2::model_metadata_response::TensorMetadata {
        name: name.to_string(),
        datatype: FP32.to_string(),
        shape: batched(dims),
    };
    let classes = model.artifacts.manifest.arch.head.classes;
    v2::ModelMetadataResponse {
        name: model.name().to_string(),
        versions: vec![model.artifacts.manifest.version.clone()],
        platform: "osteoserve".to_string(),
        inputs: inputs_of(model)
            .iter()
            .map(|s| tensor(s.name, &s.dims))
            .collect(),
        outputs: vec![
            tensor(LOGITS, &[classes]),
            tensor(PROBABILITIES, &[classes]),
        ],
    }
}

/// Triton's model configuration of a served model.
fn config(model: &ServedModel, settings: &crate::config::Settings) -> v2::ModelConfig {
    let fp32 = v2::DataType::TypeFp32 as i32;
    let classes = model.artifacts.manifest.arch.head.classes as i64;
    v2::ModelConfig {
        name: model.name().to_string(),
        platform: String::new(),
        backend: "osteoserve".to_string(),
        max_batch_size: i32::try_from(settings.scheduler.max_batch).unwrap_or(i32::MAX),
        input: inputs_of(model)
            .iter()
            .map(|s| v2::ModelInput {
                name: s.name.to_string(),
                data_type: fp32,
                dims: s.dims.iter().map(|d| *d as i64).collect(),
            })
            .collect(),
        output: [LOGITS, PROBABILITIES]
            .iter()
            .map(|name| v2::ModelOutput {
                name: name.to_string(),
                data_type: fp32,
                dims: vec![classes],
            })
            .collect(),
        dynamic_batching: Some(v2::ModelDynamicBatching {
            preferred_batch_size: Vec::new(),
            max_queue_delay_microseconds: settings.scheduler.max_delay_ms.saturating_mul(1000),
        }),
    }
}

/// Triton's statistics of a served model.
fn statistics(model: &ServedModel) -> v2::ModelStatistics {
    let s = &model.stats;
    let duration = |t: &crate::stats::Tally| {
        let (count, ns) = t.get();
        Some(v2::StatisticDuration { count, ns })
    };
    // Stacking the batch and splitting its rows happen inside the timed backend call: their
    // time is in compute_infer, and they are counted with it (Triton's tools require the three
    // compute counts to be equal).
    let within_compute = || {
        Some(v2::StatisticDuration {
            count: s.compute.get().0,
            ns: 0,
        })
    };
    v2::ModelStatistics {
        name: model.name().to_string(),
        version: model.artifacts.manifest.version.clone(),
        last_inference: s
            .last_inference_ms
            .load(std::sync::atomic::Ordering::Relaxed),
        inference_count: s.compute.get().0,
        execution_count: s.executions.load(std::sync::atomic::Ordering::Relaxed),
        inference_stats: Some(v2::InferStatistics {
            success: duration(&s.success),
            fail: duration(&s.fail),
            queue: duration(&s.queue),
            compute_input: within_compute(),
            compute_infer: duration(&s.compute),
            compute_output: within_compute(),
        }),
    }
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

//! The Open Inference Protocol (KServe v2) operations of the engine, shared by its gRPC and
//! REST front doors. Every served model is a v2 model under its own name and its model.toml
//! version, with the inputs its model.onnx reads — `images` FP32 `[-1, C, H, W]` (the view)
//! and/or `tabular` FP32 `[-1, F]` (the encoded clinical features) — and the outputs `logits`
//! and `probabilities`, FP32 `[-1, 3]` in class order normal, osteopenia, osteoporosis. A
//! request of N rows is N samples in the model's dynamic batch, so v2 and osteo.v1 traffic
//! batch together.

mod describe;
mod tensors;

pub(crate) use describe::input_encodings;
pub(crate) use tensors::max_request_elements;
use tensors::{inputs_of, requested_outputs, samples};

use super::{Call, Engine};
use crate::error::ServerError;
use osteo_proto::inference as v2;

/// The element type every input and output uses.
const FP32: &str = "FP32";

/// Name of the output holding the logits (as in model.onnx).
const LOGITS: &str = osteo_core::names::LOGITS;

/// Name of the output holding the softmax probabilities.
const PROBABILITIES: &str = "probabilities";

/// The protocol extensions served (ServerMetadata), by Triton's names.
pub const EXTENSIONS: &[&str] = &[
    "binary_tensor_data",
    "model_configuration",
    "statistics",
    "parameters",
];

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

impl Engine {
    /// ModelInfer: admission, checks, the samples through the model's scheduler, the outputs
    /// in the request's form (raw when its inputs were raw).
    pub async fn model_infer(
        &self,
        call: &mut Call,
        req: v2::ModelInferRequest,
    ) -> Result<v2::ModelInferResponse, ServerError> {
        let _permit = self.state.admit()?;
        let backend = backend_parameter(&req)?;
        let key = crate::traffic::StickyKey(call.affinity().map(str::to_string));
        let (served, worker) =
            self.resolve(call, &req.model_name, &req.model_version, &backend, &key)?;
        let (model, worker) = (served.as_ref(), worker.as_ref());
        let outputs = requested_outputs(&req)?;
        let max_batch = self.state.settings.scheduler.max_batch;
        let (samples, raw) = samples(&req, &inputs_of(model), max_batch)?;
        let n = samples.len();
        let served_backend = call.outcome().backend.clone();
        let kept = self
            .state
            .traffic
            .mirrors(model, &served_backend)
            .then(|| samples.clone());
        let inference = std::time::Instant::now();
        let logits = worker.predict_many(samples).await?;
        if let Some(inputs) = kept {
            self.state.traffic.mirror(crate::traffic::Mirror {
                model: &served,
                backend: &served_backend,
                inputs: &inputs,
                logits: &logits,
                ms: inference.elapsed().as_secs_f64() * 1e3 / n.max(1) as f64,
                study: "",
            });
        }
        // Each row graded as every osteo.v1 result is: calibrated probabilities and, for a
        // model with a [decision] section, its referral and prediction set.
        let decision = model.artifacts.manifest.decision.as_ref();
        let graded = logits
            .iter()
            .map(|l| osteo_pipeline::grade(decision, l))
            .collect::<Result<Vec<_>, _>>()?;
        let probabilities: Vec<Vec<f32>> =
            graded.iter().map(|g| g.probabilities.to_vec()).collect();
        if let [one] = graded.as_slice() {
            call.graded(one.grade);
        }
        let classes = logits.first().map_or(3, Vec::len);
        let info = worker.info();
        let provenance = osteo_core::provenance::Provenance::new(
            &model.artifacts.manifest,
            &info.name,
            &info.device.to_string(),
        );
        let mut response = v2::ModelInferResponse {
            model_name: model.name().to_string(),
            model_version: model.artifacts.manifest.version.clone(),
            id: req.id.clone(),
            parameters: provenance_parameters(&provenance),
            ..Default::default()
        };
        if let Some(spec) = decision {
            response
                .parameters
                .extend(decision_parameters(spec, &graded));
        }
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

    /// ServerReady: whether every model is loaded and up and the server is not draining.
    pub fn server_ready(&self) -> v2::ServerReadyResponse {
        v2::ServerReadyResponse {
            ready: self.state.ready(),
        }
    }

    /// ServerMetadata: the server's name, version and protocol extensions.
    pub fn server_metadata(&self) -> v2::ServerMetadataResponse {
        v2::ServerMetadataResponse {
            name: "osteoserve".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            extensions: EXTENSIONS.iter().map(ToString::to_string).collect(),
        }
    }

    /// ModelReady: whether the model `name` at `version` is up.
    pub fn model_ready(
        &self,
        call: &mut Call,
        name: &str,
        version: &str,
    ) -> Result<v2::ModelReadyResponse, ServerError> {
        let model = self.lookup(call, name, version)?;
        let model = model.as_ref();
        Ok(v2::ModelReadyResponse {
            ready: model.is_up(),
        })
    }

    /// ModelMetadata: the model's versions, platform, inputs and outputs.
    pub fn model_metadata(
        &self,
        call: &mut Call,
        name: &str,
        version: &str,
    ) -> Result<v2::ModelMetadataResponse, ServerError> {
        let model = self.lookup(call, name, version)?;
        let model = model.as_ref();
        let versions = self
            .state
            .models()?
            .versions(model.name())
            .into_iter()
            .map(str::to_string)
            .collect();
        Ok(describe::metadata(model, versions))
    }

    /// ModelConfig: Triton's model configuration.
    pub fn model_config(
        &self,
        call: &mut Call,
        name: &str,
        version: &str,
    ) -> Result<v2::ModelConfigResponse, ServerError> {
        let model = self.lookup(call, name, version)?;
        let model = model.as_ref();
        Ok(v2::ModelConfigResponse {
            config: Some(describe::config(model, &self.state.settings)),
        })
    }

    /// ModelStatistics: Triton's statistics of one model, or of every model when `name` is "".
    pub fn model_statistics(
        &self,
        call: &mut Call,
        name: &str,
        version: &str,
    ) -> Result<v2::ModelStatisticsResponse, ServerError> {
        let models = self.state.models()?;
        let model_stats = if name.is_empty() {
            models
                .all()
                .iter()
                .map(|m| describe::statistics(m))
                .collect()
        } else {
            vec![describe::statistics(
                self.lookup(call, name, version)?.as_ref(),
            )]
        };
        Ok(v2::ModelStatisticsResponse { model_stats })
    }

    /// RepositoryIndex: the served models and their state (only ready ones when `ready`).
    pub fn repository_index(
        &self,
        ready: bool,
    ) -> Result<v2::RepositoryIndexResponse, ServerError> {
        let models = self
            .state
            .models()?
            .all()
            .iter()
            .filter(|m| !ready || m.is_up())
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
    }
}

/// A result's provenance as response parameters: `backend`, `device`, `weights_blake3` and
/// `osteoserve_version` (strings), beside the response's model name and version.
/// A model's decision as response parameters: `refer`, `prediction_set` and `indeterminate`
/// with one value per row, comma-separated (`true,false`; grades of a set joined by `|`), and
/// the operating point they follow (`refer_on`, `refer_threshold`, `coverage`, `temperature`).
fn decision_parameters(
    spec: &osteo_core::DecisionSpec,
    graded: &[osteo_pipeline::Graded],
) -> Vec<(String, v2::InferParameter)> {
    use v2::infer_parameter::ParameterChoice::{DoubleParam, StringParam};
    let per_row = |f: &dyn Fn(&osteo_core::Decision) -> String| {
        let rows: Vec<String> = graded
            .iter()
            .map(|g| g.decision.as_ref().map_or_else(String::new, f))
            .collect();
        StringParam(rows.join(","))
    };
    [
        ("refer", per_row(&|d| d.refer.to_string())),
        ("prediction_set", per_row(&|d| d.prediction_set.joined())),
        ("indeterminate", per_row(&|d| d.indeterminate.to_string())),
        ("refer_on", StringParam(spec.refer_on.name().to_string())),
        ("refer_threshold", DoubleParam(spec.refer_threshold())),
        ("coverage", DoubleParam(spec.coverage)),
        ("temperature", DoubleParam(spec.temperature)),
    ]
    .into_iter()
    .map(|(k, v)| {
        (
            k.to_string(),
            v2::InferParameter {
                parameter_choice: Some(v),
            },
        )
    })
    .collect()
}

fn provenance_parameters(
    p: &osteo_core::provenance::Provenance,
) -> std::collections::HashMap<String, v2::InferParameter> {
    let string = |v: &str| v2::InferParameter {
        parameter_choice: Some(v2::infer_parameter::ParameterChoice::StringParam(
            v.to_string(),
        )),
    };
    [
        ("backend", string(&p.backend)),
        ("device", string(&p.device)),
        ("weights_blake3", string(&p.weights_blake3)),
        (
            "osteoserve_version",
            string(osteo_core::provenance::OSTEOSERVE_VERSION),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

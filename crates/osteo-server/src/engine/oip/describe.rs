//! What a served model looks like to Open Inference Protocol clients: its metadata, Triton's
//! model configuration and statistics, and the encoding of its inputs for REST clients.

use super::tensors::{batched, inputs_of};
use super::{FP32, LOGITS, PROBABILITIES};
use crate::models::ServedModel;
use osteo_proto::inference as v2;

/// What each input of a served model holds (input name, JSON description): the REST model
/// metadata's tensor `parameters`, so a client can build the tensors without this project's
/// code. The gRPC protocol has no field for it.
pub(crate) fn input_encodings(model: &ServedModel) -> Vec<(&'static str, serde_json::Value)> {
    let m = &model.artifacts.manifest;
    let mut out = Vec::new();
    if let Some(v) = &m.view {
        out.push((
            osteo_core::names::IMAGES,
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
        let mut encoding = "element i = (raw_i - mean_i) / std_i of feature i below, raw_i within \
                            [min_i, max_i]"
            .to_string();
        if t.reads_measured() {
            encoding.push_str(
                "; lumbar_trabecular_hu and femoral_neck_trabecular_hu are measured on the CT \
                 (mean calibrated trabecular HU of L1-L4 and of the femoral necks): a site not \
                 measured is sent as 0 with its _missing feature 1",
            );
        }
        out.push((
            osteo_core::names::TABULAR,
            serde_json::json!({
                "encoding": encoding,
                "features": features,
            }),
        ));
    }
    out
}

/// The model and its metadata; `versions` are every served version of its name.
pub(super) fn metadata(model: &ServedModel, versions: Vec<String>) -> v2::ModelMetadataResponse {
    let tensor = |name: &str, dims: &[usize]| v2::model_metadata_response::TensorMetadata {
        name: name.to_string(),
        datatype: FP32.to_string(),
        shape: batched(dims),
    };
    let classes = model.artifacts.manifest.arch.head.classes;
    v2::ModelMetadataResponse {
        name: model.name().to_string(),
        versions,
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
pub(super) fn config(model: &ServedModel, settings: &crate::config::Settings) -> v2::ModelConfig {
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
pub(super) fn statistics(model: &ServedModel) -> v2::ModelStatistics {
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

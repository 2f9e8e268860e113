//! The tensors of the Open Inference Protocol as this server's models read and write them: the
//! inputs each model takes, a request's inputs checked against them (names, datatype, shape,
//! element count, finite values) and turned into samples, and the outputs a request asks for.

use super::{FP32, LOGITS, PROBABILITIES};
use crate::error::ServerError;
use crate::models::ServedModel;
use crate::text::client_text;
use osteo_core::Sample;
use osteo_proto::inference as v2;

/// One input a model reads: its name and the shape of one sample.
pub(super) struct InputSpec {
    pub(super) name: &'static str,
    pub(super) dims: Vec<usize>,
}

impl InputSpec {
    pub(super) fn per_sample(&self) -> usize {
        self.dims.iter().product()
    }
}

/// The inputs of a served model, in the order of its model.onnx.
pub(super) fn inputs_of(model: &ServedModel) -> Vec<InputSpec> {
    let arch = &model.artifacts.manifest.arch;
    let mut out = Vec::new();
    if let Some(i) = &arch.image {
        out.push(InputSpec {
            name: osteo_core::names::IMAGES,
            dims: vec![i.in_channels, i.height, i.width],
        });
    }
    if let Some(t) = &arch.tabular {
        out.push(InputSpec {
            name: osteo_core::names::TABULAR,
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
pub(super) fn batched(dims: &[usize]) -> Vec<i64> {
    std::iter::once(-1)
        .chain(dims.iter().map(|d| *d as i64))
        .collect()
}

/// The samples of a request's inputs (checked against the model's inputs: names, datatype,
/// shape, element count), and whether the request sent raw contents.
pub(super) fn samples(
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
                if spec.name == osteo_core::names::IMAGES {
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
pub(super) fn requested_outputs(
    req: &v2::ModelInferRequest,
) -> Result<Vec<&'static str>, ServerError> {
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

//! The network's variables during training: seeded initialisation, a frozen image branch copied
//! from a trained model, the variables the optimiser updates, snapshots of the best epoch, and
//! the prior correction folded into the output layer.

use crate::error::TrainError;
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use osteo_core::{ArchSpec, ViewSpec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

/// Copies the image branch (`image.*`, batch-norm statistics included) of a trained model into
/// `varmap`; the model must have been trained on the same view with the same CNN.
pub(super) fn load_image_branch(
    varmap: &VarMap,
    arch: &ArchSpec,
    view: Option<&ViewSpec>,
    dir: &std::path::Path,
) -> Result<(), TrainError> {
    let setup = |m: String| TrainError::Setup(format!("--image-from {}: {m}", dir.display()));
    let artifacts = osteo_core::ModelArtifacts::open(dir).map_err(|e| setup(e.to_string()))?;
    let m = &artifacts.manifest;
    if m.arch.image != arch.image || m.view.as_ref() != view {
        return Err(setup(format!(
            "model {} has another CNN or view than the one being trained",
            m.name
        )));
    }
    let weights = candle_core::safetensors::load(artifacts.weights_path(), &Device::Cpu)
        .map_err(|e| setup(e.to_string()))?;
    let data = varmap.data().lock().map_err(|e| setup(e.to_string()))?;
    let mut copied = 0;
    for (name, var) in data.iter().filter(|(n, _)| n.starts_with("image.")) {
        let w = weights
            .get(name)
            .ok_or_else(|| setup(format!("{name} is missing from its weights")))?;
        var.set(w).map_err(|e| setup(format!("{name}: {e}")))?;
        copied += 1;
    }
    if copied == 0 {
        return Err(setup("the model being trained has no image branch".into()));
    }
    Ok(())
}

/// The variables the optimiser updates: all, or all but the frozen image branch.
pub(super) fn trainable_vars(
    varmap: &VarMap,
    frozen_image: bool,
) -> candle_core::Result<Vec<candle_core::Var>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let mut vars: Vec<(&String, &candle_core::Var)> = data
        .iter()
        .filter(|(n, _)| !(frozen_image && n.starts_with("image.")))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(b.0));
    Ok(vars.into_iter().map(|(_, v)| v.clone()).collect())
}

/// Folds the prior correction into the output layer (`bias_k -= ln w_k`), so every backend serving
/// the weights returns probabilities calibrated to the cohort's class frequencies.
pub(super) fn shift_output_bias(varmap: &VarMap, shift: &[f64]) -> candle_core::Result<()> {
    let data = varmap
        .data()
        .lock()
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let bias = data
        .get("head.out.bias")
        .ok_or_else(|| candle_core::Error::Msg("the network has no head.out.bias".into()))?;
    let delta: Vec<f32> = shift.iter().map(|&s| s as f32).collect();
    let delta = Tensor::from_vec(delta, shift.len(), bias.device())?;
    bias.set(&bias.as_tensor().sub(&delta)?)
}

/// Re-initialises conv and linear parameters from the seed (candle's own initialisers draw from an
/// unseeded generator): Kaiming-normal weights, uniform biases in ±1/sqrt(fan_in); batch-norm
/// parameters keep their constant initialisation.
pub(super) fn seeded_init(varmap: &VarMap, seed: u64) -> candle_core::Result<()> {
    let data = varmap
        .data()
        .lock()
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let mut names: Vec<&String> = data.keys().filter(|k| !k.contains(".bn.")).collect();
    names.sort();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x1417);
    let fan_in = |name: &str| -> usize {
        let weight = name.replace(".bias", ".weight");
        data.get(&weight).map_or(1, |w| {
            w.as_tensor()
                .dims()
                .iter()
                .skip(1)
                .product::<usize>()
                .max(1)
        })
    };
    for name in names {
        let var = &data[name];
        let dims = var.as_tensor().dims().to_vec();
        let n: usize = dims.iter().product();
        let fan = fan_in(name) as f64;
        let values: Vec<f32> = if name.ends_with(".weight") {
            let std = (2.0 / fan).sqrt();
            (0..n)
                .map(|_| (std * rng.sample::<f64, _>(rand_distr::StandardNormal)) as f32)
                .collect()
        } else {
            let bound = 1.0 / fan.sqrt();
            (0..n)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect()
        };
        var.set(&Tensor::from_vec(values, dims, &Device::Cpu)?)?;
    }
    Ok(())
}

pub(super) fn snapshot(varmap: &VarMap) -> candle_core::Result<HashMap<String, Tensor>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    data.iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
        .collect()
}

pub(super) fn restore(varmap: &VarMap, saved: &HashMap<String, Tensor>) -> candle_core::Result<()> {
    let data = varmap
        .data()
        .lock()
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    for (k, v) in data.iter() {
        if let Some(t) = saved.get(k) {
            v.set(t)?;
        }
    }
    Ok(())
}

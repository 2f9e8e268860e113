//! Class probabilities of a loaded model over cohort samples, through the serving Backend trait.

use crate::cohort::Sample;
use crate::error::TrainError;
use crate::train::Inputs;
use osteo_core::{Backend, ModelManifest};

/// Samples per backend call.
const BATCH: usize = 32;

/// Raw logits of the model for samples `idx`, in batches, as a served model computes them.
pub fn logits(
    backend: &mut dyn Backend,
    manifest: &ModelManifest,
    samples: &[Sample],
    idx: &[usize],
) -> Result<Vec<[f32; 3]>, TrainError> {
    let inputs = Inputs::new(
        samples,
        &manifest.arch,
        manifest.view,
        manifest.tabular.as_ref(),
    )?;
    let mut out = Vec::with_capacity(idx.len());
    for chunk in idx.chunks(BATCH) {
        let logits = backend
            .predict(&inputs.batch(chunk, None)?)
            .map_err(|e| TrainError::Engine(format!("model {}: {e}", manifest.name)))?;
        for i in 0..chunk.len() {
            match logits.row(i) {
                Some(&[a, b, c]) => out.push([a, b, c]),
                _ => {
                    return Err(TrainError::Engine(format!(
                        "model {}: logits row {i} missing",
                        manifest.name
                    )));
                }
            }
        }
    }
    Ok(out)
}

/// Class probabilities of logits exactly as the server and `osteo predict` compute them
/// (calibrated when the model carries a `[decision]` section).
pub fn served_probabilities(
    manifest: &ModelManifest,
    logits: &[[f32; 3]],
) -> Result<Vec<[f64; 3]>, TrainError> {
    logits
        .iter()
        .map(|l| {
            let p = osteo_pipeline::grade(manifest.decision.as_ref(), l)
                .map_err(|e| TrainError::Engine(format!("model {}: {e}", manifest.name)))?
                .probabilities;
            Ok([f64::from(p[0]), f64::from(p[1]), f64::from(p[2])])
        })
        .collect()
}

/// Probabilities of the model for samples `idx`, in batches, as a served model computes them.
pub fn probabilities(
    backend: &mut dyn Backend,
    manifest: &ModelManifest,
    samples: &[Sample],
    idx: &[usize],
) -> Result<Vec<[f64; 3]>, TrainError> {
    served_probabilities(manifest, &logits(backend, manifest, samples, idx)?)
}

//! Class probabilities of a loaded model over cohort samples, through the serving Backend trait.

use crate::cohort::Sample;
use crate::error::TrainError;
use crate::train::Inputs;
use osteo_core::{Backend, ModelManifest};

/// Samples per backend call.
const BATCH: usize = 32;

/// Probabilities of the model for samples `idx`, in batches, as a served model computes them.
pub fn probabilities(
    backend: &mut dyn Backend,
    manifest: &ModelManifest,
    samples: &[Sample],
    idx: &[usize],
) -> Result<Vec<[f64; 3]>, TrainError> {
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
            let row = logits.row(i).ok_or_else(|| {
                TrainError::Engine(format!("model {}: logits row {i} missing", manifest.name))
            })?;
            // The probabilities exactly as the server and `osteo predict` compute them.
            let p = osteo_pipeline::grade(row)
                .map_err(|e| TrainError::Engine(format!("model {}: {e}", manifest.name)))?
                .probabilities;
            out.push([f64::from(p[0]), f64::from(p[1]), f64::from(p[2])]);
        }
    }
    Ok(out)
}

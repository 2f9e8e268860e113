//! Bayes-oracle figures for synthetic cohorts: the same patients, the posterior from exactly what
//! the kind of model may see (record, image, or both).

use osteo_core::ModelKind;
use osteo_phantom::{Anatomy, ImageEvidence, Oracle, PhantomSpec, TScoreModel};
use rayon::prelude::*;

/// Oracle probabilities for patients `indices` of the synthetic cohort `seed`.
pub fn probabilities(kind: ModelKind, seed: u64, indices: &[usize]) -> Vec<[f64; 3]> {
    let model = TScoreModel::default();
    let oracle = Oracle::default();
    let spec = PhantomSpec::default();
    indices
        .par_iter()
        .map(|&i| {
            let p = model.patient(seed, i as u64);
            let evidence = || ImageEvidence::of(&Anatomy::draw(&p, &spec));
            match kind {
                ModelKind::Tabular => oracle.tabular(&p),
                ModelKind::Image => oracle.image(&evidence()),
                ModelKind::Fused => oracle.fused(&p, &evidence()),
            }
        })
        .collect()
}

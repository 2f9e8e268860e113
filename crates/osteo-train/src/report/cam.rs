//! The report's Grad-CAM overlays: for each grade the most confident correct test patient,
//! then the most confident mistake, drawn over the view.

use super::CAM_SCALE;
use crate::cohort::Sample;
use crate::error::TrainError;
use crate::plot::charts::CamTile;
use osteo_backend_candle::CandleBackend;
use osteo_core::{Backend, Batch, Grade, ViewSpec};

/// Grad-CAM overlays: for each grade the test patient most confidently and correctly graded,
/// then the most confident mistake.
pub(super) fn cam_tiles(
    backend: &mut CandleBackend,
    m: &osteo_core::ModelManifest,
    samples: &[Sample],
    test: &[usize],
    probs: &[[f64; 3]],
    view: &ViewSpec,
) -> Result<Vec<CamTile>, TrainError> {
    let predicted = |n: usize| Grade::most_probable(&probs[n]);
    let best = |keep: &dyn Fn(usize) -> bool| {
        (0..test.len()).filter(|&n| keep(n)).max_by(|&a, &b| {
            let conf = |n: usize| predicted(n).map_or(f64::NEG_INFINITY, |g| probs[n][g.index()]);
            conf(a).total_cmp(&conf(b))
        })
    };
    let mut chosen: Vec<usize> = Grade::ALL
        .iter()
        .filter_map(|&g| best(&|n| samples[test[n]].grade == g && predicted(n) == Some(g)))
        .collect();
    chosen.extend(best(&|n| {
        predicted(n).is_some_and(|p| p != samples[test[n]].grade)
    }));
    let inputs = crate::train::Inputs::new(samples, &m.arch, m.view, m.tabular.as_ref())?;
    let (h, w) = (view.height, view.width);
    let mut tiles = Vec::new();
    for n in chosen {
        let sample = &samples[test[n]];
        let batch: Batch = inputs.batch(&[test[n]], None)?;
        let Some(grade) = predicted(n) else {
            continue;
        };
        let parts = backend
            .explain(&batch)
            .map_err(|e| TrainError::Engine(format!("Grad-CAM: {e}")))?
            .parts(grade)
            .map_err(|e| TrainError::Engine(format!("Grad-CAM: {e}")))?;
        let map = osteo_core::gradcam::assemble(&parts, h, w)
            .map_err(|e| TrainError::Engine(format!("Grad-CAM: {e}")))?;
        let data = sample.view.as_ref().ok_or_else(|| TrainError::Input {
            patient: sample.patient_id.clone(),
            message: "the sample has no view".into(),
        })?;
        let rgb =
            osteo_dicom::render::overlay_rgb(&data[h * w..2 * h * w], &map.values, w, CAM_SCALE)
                .map_err(|e| TrainError::Engine(format!("Grad-CAM overlay: {e}")))?;
        tiles.push(CamTile {
            rgb,
            size: w * CAM_SCALE,
            caption: [
                format!("true: {}", sample.grade.name()),
                format!("pred: {} {:.2}", grade.name(), probs[n][grade.index()]),
            ],
        });
    }
    Ok(tiles)
}

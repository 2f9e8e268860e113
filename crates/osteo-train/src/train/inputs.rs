//! The model inputs of a cohort for training: views as stored, clinical features encoded once,
//! batches assembled (with light augmentation) and handed to candle.

use super::candle_err;
use crate::cohort::Sample;
use crate::error::TrainError;
use candle_core::{Device, Tensor};
use osteo_core::features::Measured;
use osteo_core::{ArchSpec, Batch, TabularSpec, ViewSpec};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Share of training batches' patients whose femoral necks are withheld from a model that reads
/// the measured attenuation (abdominal CT often ends above the hips).
const WITHHOLD_NECKS: f64 = 0.25;
/// Share whose whole measurement is withheld (no vertebra measured).
const WITHHOLD_ALL: f64 = 0.10;

/// The model inputs of a cohort: views as stored, clinical features encoded once.
pub struct Inputs<'a> {
    samples: &'a [Sample],
    arch: ArchSpec,
    view: Option<ViewSpec>,
    /// Encoded features per sample (tabular and fused models).
    encoded: Option<(usize, Vec<Vec<f32>>)>,
    /// For a model that reads the measured attenuation, each sample's features encoded with the
    /// femoral necks withheld and with the whole measurement withheld: training batches use
    /// them for some patients, so the model learns to grade a study the measurement could not
    /// read.
    withheld: Option<Vec<[Vec<f32>; 2]>>,
}

impl<'a> Inputs<'a> {
    /// Prepares the inputs a model of `arch` with this view (image models) and feature
    /// specification (tabular models) reads; every sample's clinical variables are encoded
    /// here, once.
    pub fn new(
        samples: &'a [Sample],
        arch: &ArchSpec,
        view: Option<ViewSpec>,
        tabular: Option<&TabularSpec>,
    ) -> Result<Self, TrainError> {
        let withheld = match tabular.filter(|t| t.reads_measured()) {
            Some(spec) => Some(
                samples
                    .iter()
                    .map(|s| {
                        let m = s.measured_for(spec)?;
                        let no_necks = Measured {
                            femoral_neck_hu: None,
                            ..m
                        };
                        let encode = |m: &Measured| {
                            spec.encode(&s.clinical, m).map_err(|e| TrainError::Input {
                                patient: s.patient_id.clone(),
                                message: e.to_string(),
                            })
                        };
                        Ok([encode(&no_necks)?, encode(&Measured::NONE)?])
                    })
                    .collect::<Result<Vec<_>, TrainError>>()?,
            ),
            None => None,
        };
        let encoded = match tabular {
            Some(spec) => {
                let rows = samples
                    .iter()
                    .map(|s| {
                        let measured = s.measured_for(spec)?;
                        spec.encode(&s.clinical, &measured)
                            .map_err(|e| TrainError::Input {
                                patient: s.patient_id.clone(),
                                message: e.to_string(),
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Some((spec.features.len(), rows))
            }
            None => None,
        };
        Ok(Self {
            samples,
            arch: arch.clone(),
            view,
            encoded,
            withheld,
        })
    }

    /// The batch of samples `idx`, augmented when `rng` is given (shifted and scaled views, and
    /// for a model that reads it, the measured attenuation withheld from some patients).
    pub fn batch(&self, idx: &[usize], rng: Option<&mut ChaCha8Rng>) -> Result<Batch, TrainError> {
        self.batch_augmented(idx, rng, true)
    }

    /// [`Inputs::batch`], with the views augmented only when `images` is set (a frozen CNN's
    /// features are computed once, unaugmented).
    pub fn batch_augmented(
        &self,
        idx: &[usize],
        rng: Option<&mut ChaCha8Rng>,
        images: bool,
    ) -> Result<Batch, TrainError> {
        let mut rng = rng;
        let mut samples = Vec::with_capacity(idx.len());
        for &i in idx {
            let s = &self.samples[i];
            let image = match self.view {
                Some(v) => {
                    let view = s.view.as_ref().ok_or_else(|| TrainError::Input {
                        patient: s.patient_id.clone(),
                        message: "the sample has no view".into(),
                    })?;
                    Some(match rng.as_deref_mut().filter(|_| images) {
                        Some(r) => augment(view, v.height, v.width, r),
                        None => view.clone(),
                    })
                }
                None => None,
            };
            let withheld = match (&self.withheld, rng.as_deref_mut()) {
                (Some(rows), Some(r)) => {
                    let u: f64 = r.random();
                    if u < WITHHOLD_ALL {
                        Some(&rows[i][1])
                    } else if u < WITHHOLD_ALL + WITHHOLD_NECKS {
                        Some(&rows[i][0])
                    } else {
                        None
                    }
                }
                _ => None,
            };
            samples.push(osteo_core::Sample {
                image,
                tabular: withheld
                    .or_else(|| self.encoded.as_ref().map(|(_, rows)| &rows[i]))
                    .cloned(),
            });
        }
        Batch::stack(&self.arch, &samples).map_err(|e| TrainError::Engine(e.to_string()))
    }
}

/// Candle tensors of a batch.
pub(super) fn to_candle(batch: &Batch) -> Result<(Option<Tensor>, Option<Tensor>), TrainError> {
    let convert = |t: &Option<osteo_core::Tensor>| {
        t.as_ref()
            .map(|t| Tensor::from_slice(t.data(), t.shape(), &Device::Cpu))
            .transpose()
            .map_err(candle_err)
    };
    Ok((convert(&batch.images)?, convert(&batch.tabular)?))
}

/// A random shift of up to 4 pixels in each direction and a ±5% intensity scale.
fn augment(view: &[f32], h: usize, w: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let dy = rng.random_range(-4i64..=4);
    let dx = rng.random_range(-4i64..=4);
    let scale = rng.random_range(0.95f32..1.05);
    let mut out = vec![0f32; view.len()];
    for c in 0..2 {
        for y in 0..h as i64 {
            let sy = y - dy;
            if sy < 0 || sy >= h as i64 {
                continue;
            }
            for x in 0..w as i64 {
                let sx = x - dx;
                if sx < 0 || sx >= w as i64 {
                    continue;
                }
                out[c * h * w + (y as usize) * w + x as usize] =
                    (view[c * h * w + sy as usize * w + sx as usize] * scale).min(1.0);
            }
        }
    }
    out
}

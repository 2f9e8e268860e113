//! The training loop: class-weighted cross-entropy, AdamW with a cosine learning-rate schedule,
//! light augmentation, early stopping on validation macro AUC, all reproducible from the seed.

mod inputs;
mod weights;

pub use inputs::Inputs;
use inputs::to_candle;
use weights::{
    load_image_branch, restore, seeded_init, shift_output_bias, snapshot, trainable_vars,
};

use crate::cohort::Sample;
use crate::error::TrainError;
use crate::metrics::{Evaluation, evaluate};
use crate::split::{Split, stratified};
use candle_core::{D, DType, Device, Tensor};
use candle_nn::{Optimizer, ParamsAdamW, VarBuilder, VarMap};
use indicatif::{ProgressBar, ProgressStyle};
use osteo_backend_candle::Network;
use osteo_core::arch::{Head, ImageBranch, TabularBranch};
use osteo_core::features::{FEATURE_NAMES, MEASURED_FEATURES, Measured, raw_value};
use osteo_core::{ArchSpec, Grade, ModelKind, TabularSpec, ViewSpec};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::IsTerminal;

/// Training hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// What to train.
    pub kind: ModelKind,
    /// Largest number of epochs.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Peak learning rate (cosine decay to 5% of it).
    pub learning_rate: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Epochs without validation improvement before stopping.
    pub patience: usize,
    /// Fraction of patients for validation.
    pub validation_fraction: f64,
    /// Fraction of patients held out for testing.
    pub test_fraction: f64,
    /// Random shifts and intensity jitter on training views.
    pub augment: bool,
    /// Seed of the split, initialisation order, shuffling and augmentation.
    pub seed: u64,
    /// Conv block channels of the image branch.
    pub image_channels: Vec<usize>,
    /// Show progress bars on stderr.
    pub progress: bool,
    /// A trained image model directory whose CNN initialises a fused model's image branch and
    /// stays frozen: only the clinical branch and the fusion head are trained, on the CNN's
    /// pooled features computed once (two-stage fusion).
    pub image_from: Option<std::path::PathBuf>,
    /// Tabular and fused models also read the attenuation measured on the CT (the features of
    /// [`osteo_core::features::MEASURED_FEATURES`]); the samples must have been measured
    /// ([`crate::cohort::measure`]).
    #[serde(default)]
    pub measured: bool,
}

impl TrainConfig {
    /// Defaults for a model kind.
    pub fn new(kind: ModelKind, seed: u64) -> Self {
        Self {
            kind,
            epochs: 40,
            batch_size: 32,
            learning_rate: if kind == ModelKind::Tabular {
                3e-3
            } else {
                2e-3
            },
            weight_decay: 1e-4,
            patience: 8,
            validation_fraction: 0.15,
            test_fraction: 0.15,
            augment: true,
            seed,
            image_channels: vec![16, 32, 64, 64],
            progress: true,
            image_from: None,
            measured: false,
        }
    }
}

/// One epoch of the training history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Epoch {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean weighted training loss.
    pub train_loss: f64,
    /// Validation macro AUC.
    pub validation_auc: f64,
    /// Validation accuracy.
    pub validation_accuracy: f64,
    /// Learning rate used.
    pub learning_rate: f64,
}

/// A trained model, before it is written to disk.
pub struct Trained {
    /// The architecture.
    pub arch: ArchSpec,
    /// Tabular features with the training set's normalisation (tabular and fused models).
    pub tabular: Option<TabularSpec>,
    /// The view (image and fused models).
    pub view: Option<ViewSpec>,
    /// Variables holding the best weights.
    pub varmap: VarMap,
    /// The network over `varmap`.
    pub network: Network,
    /// The split used.
    pub split: Split,
    /// Per-epoch history.
    pub history: Vec<Epoch>,
    /// Best epoch (1-based).
    pub best_epoch: usize,
}

fn candle_err(e: candle_core::Error) -> TrainError {
    TrainError::Engine(e.to_string())
}

/// The features a tabular branch reads: the clinical ones, then the measured ones when asked.
pub fn feature_names(measured: bool) -> Vec<&'static str> {
    let measured_names = MEASURED_FEATURES.iter().filter(|_| measured);
    FEATURE_NAMES
        .iter()
        .chain(measured_names)
        .map(|f| f.0)
        .collect()
}

/// The architecture trained for a kind, its tabular branch reading `features` inputs.
pub fn architecture(
    kind: ModelKind,
    view: &ViewSpec,
    channels: &[usize],
    features: usize,
) -> ArchSpec {
    ArchSpec {
        kind,
        image: kind.uses_image().then(|| ImageBranch {
            in_channels: 2,
            height: view.height,
            width: view.width,
            channels: channels.to_vec(),
            batch_norm_eps: 1e-5,
        }),
        tabular: kind.uses_tabular().then(|| TabularBranch {
            in_features: features,
            hidden: vec![32, 16],
        }),
        head: Head {
            hidden: vec![32],
            classes: 3,
        },
    }
}

/// Feature means and standard deviations over the training patients (a measured value over
/// the patients where it was measured).
fn tabular_spec(
    samples: &[Sample],
    train: &[usize],
    names: &[&str],
) -> Result<TabularSpec, TrainError> {
    let stats = names
        .iter()
        .map(|name| {
            let values: Vec<f64> = train
                .iter()
                .map(|&i| {
                    let s = &samples[i];
                    let m = s.measured.unwrap_or(Measured::NONE);
                    // A value not measured comes back as NaN, and is left out.
                    raw_value(name, &s.clinical, &m, f64::NAN).unwrap_or(f64::NAN)
                })
                .filter(|v| v.is_finite())
                .collect();
            let n = values.len().max(1) as f64;
            let mean = values.iter().sum::<f64>() / n;
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            (mean, var.sqrt())
        })
        .collect::<Vec<_>>();
    TabularSpec::with_features(names, &stats)
        .map_err(|e| TrainError::Setup(format!("tabular statistics: {e}")))
}

/// Class probabilities of the network on samples `idx`, in eval mode.
pub fn predict(
    network: &Network,
    inputs: &Inputs<'_>,
    idx: &[usize],
) -> Result<Vec<[f64; 3]>, TrainError> {
    let mut out = Vec::with_capacity(idx.len());
    for chunk in idx.chunks(64) {
        let (images, tab) = to_candle(&inputs.batch(chunk, None)?)?;
        let logits = network
            .forward(images.as_ref(), tab.as_ref(), false)
            .map_err(candle_err)?;
        let probs = candle_nn::ops::softmax_last_dim(&logits)
            .and_then(|p| p.to_vec2::<f32>())
            .map_err(candle_err)?;
        out.extend(
            probs
                .iter()
                .map(|p| [f64::from(p[0]), f64::from(p[1]), f64::from(p[2])]),
        );
    }
    Ok(out)
}

/// Trains a model on the samples; `view` must match the views stored in the samples.
pub fn train(
    samples: &[Sample],
    view: &ViewSpec,
    config: &TrainConfig,
) -> Result<Trained, TrainError> {
    let grades: Vec<Grade> = samples.iter().map(|s| s.grade).collect();
    let split = stratified(
        &grades,
        config.validation_fraction,
        config.test_fraction,
        config.seed,
    );
    if split.train.is_empty() || split.validation.is_empty() {
        return Err(TrainError::Setup(format!(
            "{} patients are too few to split",
            samples.len()
        )));
    }
    if config.measured && !(config.kind.uses_tabular() && config.kind.uses_image()) {
        return Err(TrainError::Setup(
            "the measured attenuation is read by fused models only (it comes from the CT and \
             enters through the clinical branch)"
                .into(),
        ));
    }
    let names = feature_names(config.measured);
    let arch = architecture(config.kind, view, &config.image_channels, names.len());
    let tabular = if config.kind.uses_tabular() {
        Some(tabular_spec(samples, &split.train, &names)?)
    } else {
        None
    };
    let view = config.kind.uses_image().then_some(*view);
    let inputs = Inputs::new(samples, &arch, view, tabular.as_ref())?;

    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let network = Network::new(&arch, vb).map_err(candle_err)?;
    seeded_init(&varmap, config.seed).map_err(candle_err)?;
    let frozen = match &config.image_from {
        Some(dir) => {
            load_image_branch(&varmap, &arch, view.as_ref(), dir)?;
            true
        }
        None => false,
    };
    let params = ParamsAdamW {
        lr: config.learning_rate,
        weight_decay: config.weight_decay,
        ..Default::default()
    };
    let trainable = trainable_vars(&varmap, frozen).map_err(candle_err)?;
    let mut opt = candle_nn::AdamW::new(trainable, params).map_err(candle_err)?;
    // With a frozen CNN, its pooled features are computed once, in eval mode.
    let pooled = if frozen {
        Some(pooled_features(&network, &inputs, samples.len())?)
    } else {
        None
    };

    // Class weights: inverse frequency in the training part.
    let mut counts = [0usize; 3];
    for &i in &split.train {
        counts[samples[i].grade.index()] += 1;
    }
    let n = split.train.len() as f32;
    let class_w: Vec<f32> = counts
        .iter()
        .map(|&c| if c == 0 { 0.0 } else { n / (3.0 * c as f32) })
        .collect();
    let prior_shift: Vec<f64> = class_w
        .iter()
        .map(|&w| if w > 0.0 { f64::from(w).ln() } else { 0.0 })
        .collect();
    let class_w = Tensor::from_vec(class_w, 3, &Device::Cpu).map_err(candle_err)?;

    let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0x7EA1);
    let steps_per_epoch = split.train.len().div_ceil(config.batch_size);
    let total_steps = (steps_per_epoch * config.epochs).max(1);
    let bar = if config.progress {
        ProgressBar::new(total_steps as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(format!("train {}", config.kind));
    let mut history = Vec::new();
    let (mut best_auc, mut best_epoch, mut since_best) = (f64::NEG_INFINITY, 0usize, 0usize);
    let mut best: HashMap<String, Tensor> = HashMap::new();
    let mut step = 0usize;
    for epoch in 1..=config.epochs {
        let mut order = split.train.clone();
        order.shuffle(&mut rng);
        let (mut loss_sum, mut batches) = (0f64, 0usize);
        let mut lr = config.learning_rate;
        for chunk in order.chunks(config.batch_size) {
            if chunk.len() < 2 {
                continue; // batch-norm needs at least two samples
            }
            let progress = step as f64 / total_steps as f64;
            lr = config.learning_rate
                * (0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()));
            opt.set_learning_rate(lr);
            let logits = match &pooled {
                Some(features) => {
                    // Only the clinical branch's inputs are augmented (measurement withheld).
                    let (_, tab) =
                        to_candle(&inputs.batch_augmented(chunk, Some(&mut rng), false)?)?;
                    let k = features[0].len();
                    let data: Vec<f32> = chunk
                        .iter()
                        .flat_map(|&i| features[i].iter().copied())
                        .collect();
                    let activation = Tensor::from_vec(data, (chunk.len(), k, 1, 1), &Device::Cpu)
                        .map_err(candle_err)?;
                    network
                        .head_from(Some(&activation), tab.as_ref())
                        .map_err(candle_err)?
                }
                None => {
                    let (images, tab) =
                        to_candle(&inputs.batch(chunk, config.augment.then_some(&mut rng))?)?;
                    network
                        .forward(images.as_ref(), tab.as_ref(), true)
                        .map_err(candle_err)?
                }
            };
            let targets: Vec<u32> = chunk
                .iter()
                .map(|&i| samples[i].grade.index() as u32)
                .collect();
            let targets =
                Tensor::from_vec(targets, chunk.len(), &Device::Cpu).map_err(candle_err)?;
            let loss = weighted_cross_entropy(&logits, &targets, &class_w).map_err(candle_err)?;
            opt.backward_step(&loss).map_err(candle_err)?;
            loss_sum += f64::from(loss.to_scalar::<f32>().map_err(candle_err)?);
            batches += 1;
            step += 1;
            bar.inc(1);
        }
        let probs: Vec<[f64; 3]> = predict(&network, &inputs, &split.validation)?
            .iter()
            .map(|p| prior_corrected(p, &prior_shift))
            .collect();
        let truth: Vec<Grade> = split.validation.iter().map(|&i| samples[i].grade).collect();
        let e: Evaluation = evaluate(&probs, &truth);
        let train_loss = loss_sum / batches.max(1) as f64;
        let line = format!(
            "epoch {epoch} loss {train_loss:.3} val AUC {:.3} acc {:.3}",
            e.auc_macro, e.accuracy
        );
        if config.progress && !std::io::stderr().is_terminal() {
            // Logs and CI capture stderr without a terminal, where the bar is not drawn.
            eprintln!("train {}: {line}", config.kind);
        }
        bar.set_message(line);
        history.push(Epoch {
            epoch,
            train_loss,
            validation_auc: e.auc_macro,
            validation_accuracy: e.accuracy,
            learning_rate: lr,
        });
        if e.auc_macro > best_auc {
            best_auc = e.auc_macro;
            best_epoch = epoch;
            since_best = 0;
            best = snapshot(&varmap).map_err(candle_err)?;
        } else {
            since_best += 1;
            if since_best >= config.patience {
                break;
            }
        }
    }
    bar.finish_and_clear();
    restore(&varmap, &best).map_err(candle_err)?;
    shift_output_bias(&varmap, &prior_shift).map_err(candle_err)?;
    Ok(Trained {
        arch,
        tabular,
        view,
        varmap,
        network,
        split,
        history,
        best_epoch,
    })
}

/// The image branch's pooled activation `[K]` of every sample, in eval mode.
fn pooled_features(
    network: &Network,
    inputs: &Inputs<'_>,
    n: usize,
) -> Result<Vec<Vec<f32>>, TrainError> {
    let all: Vec<usize> = (0..n).collect();
    let mut out = Vec::with_capacity(n);
    for chunk in all.chunks(64) {
        let (images, _) = to_candle(&inputs.batch(chunk, None)?)?;
        let images = images.ok_or_else(|| TrainError::Setup("a fused model needs views".into()))?;
        let pooled = network
            .image_activation(&images, false)
            .and_then(|a| a.mean((2, 3)))
            .and_then(|p| p.to_vec2::<f32>())
            .map_err(candle_err)?;
        out.extend(pooled);
    }
    Ok(out)
}

/// Probabilities of a network trained with class weights `exp(shift)`, corrected back to the
/// cohort's class frequencies: weighted cross-entropy is minimised by `w_y p(y|x)` normalised, so
/// dividing by the weights recovers `p(y|x)`.
fn prior_corrected(p: &[f64; 3], shift: &[f64]) -> [f64; 3] {
    let q: Vec<f64> = p.iter().zip(shift).map(|(p, s)| p * (-s).exp()).collect();
    let z: f64 = q.iter().sum::<f64>().max(f64::MIN_POSITIVE);
    [q[0] / z, q[1] / z, q[2] / z]
}

/// Mean of per-sample negative log-likelihoods weighted by class: sum(w_y * nll) / sum(w_y).
fn weighted_cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    class_w: &Tensor,
) -> candle_core::Result<Tensor> {
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let nll = log_p.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
    let w = class_w.index_select(targets, 0)?;
    (nll * &w)?.sum_all()? / w.sum_all()?.to_scalar::<f32>()? as f64
}

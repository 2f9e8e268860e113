//! `osteo train` and `osteo evaluate`.

use anyhow::Context;
use clap::{Args, ValueEnum};
use osteo_backend_candle::CandleBackend;
use osteo_core::ReferOn;
use osteo_core::manifest::Provenance;
use osteo_core::{Device, Grade, LoadBackend, ModelArtifacts, ModelKind, ViewSpec};
use osteo_train::calibration::{DecisionConfig, calibrate_model};
use osteo_train::cohort::{self, CohortSource, load};
use osteo_train::evaluate;
use osteo_train::inference::probabilities;
use osteo_train::report::{self, ReportRequest};
use osteo_train::train::{TrainConfig, train};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Model kind on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KindArg {
    /// CNN on the CT view.
    Image,
    /// MLP on the clinical variables.
    Tabular,
    /// Both, fused.
    Fused,
}

impl From<KindArg> for ModelKind {
    fn from(k: KindArg) -> Self {
        match k {
            KindArg::Image => ModelKind::Image,
            KindArg::Tabular => ModelKind::Tabular,
            KindArg::Fused => ModelKind::Fused,
        }
    }
}

/// Where patients come from.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct CohortArgs {
    /// A cohort CSV in the `osteo synth` format (study_dir relative to the CSV).
    #[arg(long, value_name = "CSV")]
    cohort: Option<PathBuf>,
    /// The built-in synthetic phantom cohort with N patients (use with --seed).
    #[arg(long, value_name = "N")]
    synthetic: Option<usize>,
}

impl CohortArgs {
    fn source(&self, seed: u64) -> CohortSource {
        match (&self.cohort, self.synthetic) {
            (Some(csv), _) => CohortSource::Csv(csv.clone()),
            (None, Some(n)) => CohortSource::Synthetic { patients: n, seed },
            (None, None) => unreachable!("clap requires one of --cohort / --synthetic"),
        }
    }
}

/// What `refer` follows, on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ReferOnArg {
    /// P(osteoporosis) reaches its threshold.
    Osteoporosis,
    /// P(osteopenia) + P(osteoporosis) reaches its threshold.
    LowBmd,
}

/// The operating point to fit after training (`osteo train`, `osteo calibrate`).
#[derive(Debug, Args)]
pub struct DecisionArgs {
    /// Sensitivity the referral thresholds must reach on the validation patients.
    #[arg(long, default_value_t = 0.9, value_name = "RATE")]
    target_sensitivity: f64,
    /// Coverage of the conformal prediction sets.
    #[arg(long, default_value_t = 0.9, value_name = "RATE")]
    coverage: f64,
    /// Which threshold decides `refer`: osteoporosis, or low bone density of either grade.
    #[arg(long, value_enum, default_value = "osteoporosis")]
    refer_on: ReferOnArg,
}

impl DecisionArgs {
    fn config(&self) -> DecisionConfig {
        DecisionConfig {
            target_sensitivity: self.target_sensitivity,
            coverage: self.coverage,
            refer_on: match self.refer_on {
                ReferOnArg::Osteoporosis => ReferOn::Osteoporosis,
                ReferOnArg::LowBmd => ReferOn::LowBmd,
            },
        }
    }
}

/// Arguments of `osteo calibrate`.
#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// The trained model directory (left unchanged).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    cohort: CohortArgs,
    /// The seed the model was trained with (fixes the cohort and its validation patients).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The new model directory: the same weights, the fitted [decision] and a new report.
    #[arg(long)]
    out: PathBuf,
    /// Name of the new model (default: the output directory's name).
    #[arg(long)]
    name: Option<String>,
    /// Version of the new model (default: the source's version plus one, when it is a number).
    #[arg(long, value_name = "V")]
    model_version: Option<String>,
    #[command(flatten)]
    decision: DecisionArgs,
    /// Cache directory for computed views.
    #[arg(long, default_value = ".cache/views")]
    cache: PathBuf,
}

/// Arguments of `osteo train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Which model to train.
    #[arg(long, value_enum)]
    kind: KindArg,
    #[command(flatten)]
    cohort: CohortArgs,
    /// Seed of the synthetic cohort and of training (split, shuffling, augmentation).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output model directory (model.toml, weights.safetensors, report/).
    #[arg(long)]
    out: PathBuf,
    /// Largest number of epochs (early stopping usually ends sooner).
    #[arg(long, default_value_t = 40)]
    epochs: usize,
    /// Model name in the manifest (default: the output directory's name).
    #[arg(long)]
    name: Option<String>,
    /// Cache directory for computed views.
    #[arg(long, default_value = ".cache/views")]
    cache: PathBuf,
    /// Fused models: start from this trained image model's CNN and keep it frozen; only the
    /// clinical branch and the fusion head are trained (two-stage fusion).
    #[arg(long, value_name = "MODEL_DIR")]
    image_from: Option<PathBuf>,
    /// Fused models: also read the trabecular attenuation measured on each CT (mean of L1-L4
    /// and of the femoral necks, calibrated per study), as clinical-branch features.
    #[arg(long)]
    with_attenuation: bool,
    /// Version of the model in the manifest.
    #[arg(long, value_name = "V", default_value = "1")]
    model_version: String,
    #[command(flatten)]
    decision: DecisionArgs,
}

/// Arguments of `osteo evaluate`.
#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// A model directory.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    cohort: CohortArgs,
    /// Seed of the synthetic cohort.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Cache directory for computed views.
    #[arg(long, default_value = ".cache/views")]
    cache: PathBuf,
    /// Another model directory reading the same view: also print the paired bootstrap
    /// difference of macro AUC and accuracy (this model minus that one) on the same patients.
    #[arg(long, value_name = "DIR")]
    against: Option<PathBuf>,
}

/// Bootstrap resamples of `osteo evaluate --against`.
const PAIRED_RESAMPLES: usize = 1000;

fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Arguments of `osteo report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A model directory (its report/ folder is rewritten).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    cohort: CohortArgs,
    /// The seed the model was trained with (fixes the cohort and the test split).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Cache directory for computed views.
    #[arg(long, default_value = ".cache/views")]
    cache: PathBuf,
}

/// Prints the reported model's headline and where the report is.
fn summarise(dir: &std::path::Path, results: &[report::ModelResult]) {
    if let Some(r) = results.first() {
        eprintln!(
            "report: {} ({}) test macro AUC {:.3}, accuracy {:.3}{}; {}",
            r.name,
            r.kind,
            r.eval.auc_macro,
            r.eval.accuracy,
            r.oracle
                .as_ref()
                .map(|o| format!(" (Bayes oracle {:.3} / {:.3})", o.auc_macro, o.accuracy))
                .unwrap_or_default(),
            dir.join(report::REPORT_DIR).join("report.md").display()
        );
    }
}

/// Runs `osteo train`.
pub fn run_train(args: TrainArgs) -> anyhow::Result<()> {
    let kind: ModelKind = args.kind.into();
    let source = args.cohort.source(args.seed);
    let view = ViewSpec::default();
    eprintln!("train: loading cohort and building views");
    if args.image_from.is_some() && kind != ModelKind::Fused {
        anyhow::bail!("--image-from applies to --kind fused only");
    }
    if args.with_attenuation && kind != ModelKind::Fused {
        anyhow::bail!("--with-attenuation applies to --kind fused only");
    }
    let mut samples = load(
        &source,
        kind.uses_image().then_some(&view),
        Some(&args.cache),
    )?;
    if args.with_attenuation {
        eprintln!("train: measuring the vertebral and femoral-neck attenuation");
        cohort::measure(&mut samples, Some(&args.cache))?;
    }
    let decision = args.decision.config();
    decision.validate()?;
    let config = TrainConfig {
        epochs: args.epochs,
        image_from: args.image_from.clone(),
        measured: args.with_attenuation,
        ..TrainConfig::new(kind, args.seed)
    };
    let start = std::time::Instant::now();
    let trained = train(&samples, &view, &config)?;
    let train_s = start.elapsed().as_secs_f64();
    eprintln!(
        "train: best epoch {} of {} in {train_s:.0} s",
        trained.best_epoch,
        trained.history.len()
    );
    let metrics = BTreeMap::from([
        ("best_epoch".to_string(), trained.best_epoch as f64),
        ("epochs_run".to_string(), trained.history.len() as f64),
        ("train_seconds".to_string(), train_s),
    ]);
    let provenance = Provenance {
        command: std::iter::once("osteo".to_string())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
        seed: args.seed,
        commit: commit(),
        data: source.describe(),
    };
    let name = args.name.clone().unwrap_or_else(|| {
        args.out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("osteo-{kind}"))
    });
    let command = provenance.command.clone();
    let manifest = osteo_train::artifact::write_model(
        &trained,
        (&name, &args.model_version),
        provenance,
        metrics,
        &args.out,
    )?;
    let mut artifacts = ModelArtifacts {
        dir: args.out.clone(),
        manifest,
    };
    fit_decision(
        &mut artifacts,
        &samples,
        &trained.split.validation,
        &decision,
        &command,
    )?;
    let results = report::write(ReportRequest {
        model_dir: &args.out,
        source: &source,
        seed: args.seed,
        cache: Some(&args.cache),
        history: Some((trained.history.clone(), trained.best_epoch)),
    })?;
    summarise(&args.out, &results);
    Ok(())
}

/// Fits and records the model's `[decision]` on the validation patients and says what it chose.
fn fit_decision(
    artifacts: &mut ModelArtifacts,
    samples: &[osteo_train::Sample],
    validation: &[usize],
    config: &DecisionConfig,
    command: &str,
) -> anyhow::Result<()> {
    let d = calibrate_model(artifacts, samples, validation, config, command)?;
    eprintln!(
        "calibrate: temperature {:.3}; refer on {} at {:.3} (P(osteoporosis) >= {:.3}, \
         P(osteopenia or worse) >= {:.3} for {:.0}% validation sensitivity); prediction sets at \
         {:.0}% coverage take grades with probability >= {:.3} ({} validation patients)",
        d.temperature,
        d.refer_on,
        d.refer_threshold(),
        d.osteoporosis_threshold,
        d.low_bmd_threshold,
        d.target_sensitivity * 100.0,
        d.coverage * 100.0,
        d.set_threshold,
        d.fitted_on
    );
    Ok(())
}

/// The next version after `v`: `v + 1` when it is a number.
fn next_version(v: &str) -> anyhow::Result<String> {
    v.trim()
        .parse::<u64>()
        .map(|n| (n + 1).to_string())
        .map_err(|_| anyhow::anyhow!("version {v:?} is not a number: pass --model-version"))
}

/// Runs `osteo calibrate`: copies the weights into a new model directory, fits its `[decision]`
/// on the validation patients of the training split, exports its ONNX file and writes its
/// report.
pub fn run_calibrate(args: CalibrateArgs) -> anyhow::Result<()> {
    let source = ModelArtifacts::open(&args.model)?;
    let m = &source.manifest;
    if m.provenance.seed != args.seed {
        anyhow::bail!(
            "model {} was trained with seed {}; pass --seed {} to calibrate on its validation \
             patients",
            m.name,
            m.provenance.seed,
            m.provenance.seed
        );
    }
    source.verify_weights()?;
    let config = args.decision.config();
    config.validate()?;
    let same = |a: &std::path::Path, b: &std::path::Path| {
        a.canonicalize()
            .ok()
            .is_some_and(|a| b.canonicalize().ok() == Some(a))
    };
    if same(&args.model, &args.out) {
        anyhow::bail!("--out must be a new directory: the source model keeps its numbers");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let weights = source.weights_path();
    std::fs::copy(&weights, args.out.join(osteo_core::manifest::WEIGHTS_FILE))
        .with_context(|| format!("cannot copy {}", weights.display()))?;
    let name = args.name.clone().unwrap_or_else(|| {
        args.out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("{}-calibrated", m.name))
    });
    let version = match &args.model_version {
        Some(v) => v.clone(),
        None => next_version(&m.version)?,
    };
    let mut manifest = m.clone();
    manifest.name = name;
    manifest.version = version;
    manifest.decision = None;
    let mut artifacts = ModelArtifacts {
        dir: args.out.clone(),
        manifest,
    };
    let cohort = args.cohort.source(args.seed);
    eprintln!("calibrate: loading cohort and building views");
    let samples = osteo_train::cohort::load_for(&cohort, &[m], Some(&args.cache))?;
    let grades: Vec<Grade> = samples.iter().map(|s| s.grade).collect();
    let split_config = TrainConfig::new(m.kind, args.seed);
    let validation = osteo_train::split::stratified(
        &grades,
        split_config.validation_fraction,
        split_config.test_fraction,
        args.seed,
    )
    .validation;
    let command = std::iter::once("osteo".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    fit_decision(&mut artifacts, &samples, &validation, &config, &command)?;
    // The export names the model and its version, so the new version gets its own.
    osteo_onnx::write_model(&artifacts)?;
    let history = std::fs::read_to_string(args.model.join(report::REPORT_DIR).join("metrics.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    let results = report::write(ReportRequest {
        model_dir: &args.out,
        source: &cohort,
        seed: args.seed,
        cache: Some(&args.cache),
        history: history.and_then(|v| {
            let epochs = serde_json::from_value(v.get("history")?.clone()).ok()?;
            let best = v.get("best_epoch")?.as_u64()? as usize;
            Some((epochs, best))
        }),
    })?;
    summarise(&args.out, &results);
    Ok(())
}

/// Runs `osteo report`.
pub fn run_report(args: ReportArgs) -> anyhow::Result<()> {
    let source = args.cohort.source(args.seed);
    let results = report::write(ReportRequest {
        model_dir: &args.model,
        source: &source,
        seed: args.seed,
        cache: Some(&args.cache),
        history: None,
    })?;
    summarise(&args.model, &results);
    Ok(())
}

/// Runs `osteo evaluate`.
pub fn run_evaluate(args: EvaluateArgs) -> anyhow::Result<()> {
    let artifacts = ModelArtifacts::open(&args.model)?;
    let m = &artifacts.manifest;
    let mut backend = CandleBackend::load(&artifacts, Device::Cpu)?;
    let against = args
        .against
        .as_deref()
        .map(ModelArtifacts::open)
        .transpose()?;
    if let Some(other) = &against
        && other.manifest.view.is_some()
        && m.view.is_some()
        && other.manifest.view != m.view
    {
        anyhow::bail!(
            "--against {} reads another view than {}: they cannot be evaluated on the same \
             loaded patients",
            other.manifest.name,
            m.name
        );
    }
    let source = args.cohort.source(args.seed);
    let models: Vec<&osteo_core::ModelManifest> = std::iter::once(m)
        .chain(against.as_ref().map(|a| &a.manifest))
        .collect();
    let samples = cohort::load_for(&source, &models, Some(&args.cache))?;
    let all: Vec<usize> = (0..samples.len()).collect();
    let probs = probabilities(&mut backend, m, &samples, &all)?;
    let truth: Vec<Grade> = samples.iter().map(|s| s.grade).collect();
    let eval = evaluate(&probs, &truth);
    let paired = match &against {
        Some(other) => {
            let mut b = CandleBackend::load(other, Device::Cpu)?;
            let theirs = probabilities(&mut b, &other.manifest, &samples, &all)?;
            let d = osteo_train::metrics::paired_difference(
                &probs,
                &theirs,
                &truth,
                PAIRED_RESAMPLES,
                args.seed,
            );
            Some((other.manifest.name.clone(), evaluate(&theirs, &truth), d))
        }
        None => None,
    };
    let oracle = match source {
        CohortSource::Synthetic { seed, patients } => {
            let all: Vec<usize> = (0..patients).collect();
            Some(evaluate(
                &osteo_train::oracle::probabilities(m.kind, seed, &all),
                &truth,
            ))
        }
        CohortSource::Csv(_) => None,
    };
    if args.json {
        let mut v = eval.headline();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("model".into(), json!(m.name));
            obj.insert("kind".into(), json!(m.kind.name()));
            obj.insert("patients".into(), json!(samples.len()));
            obj.insert(
                "oracle".into(),
                oracle.map_or(
                    serde_json::Value::Null,
                    |o| json!({"auc_macro": o.auc_macro, "accuracy": o.accuracy}),
                ),
            );
            if let Some((name, e, d)) = &paired {
                obj.insert(
                    "against".into(),
                    json!({"model": name, "test": e.headline(), "difference": d}),
                );
            }
        }
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!("model {} ({}), {} patients", m.name, m.kind, samples.len());
        println!(
            "macro AUC {:.3}, accuracy {:.3}, balanced accuracy {:.3}",
            eval.auc_macro, eval.accuracy, eval.balanced_accuracy
        );
        if let Some(o) = oracle {
            println!(
                "Bayes oracle on the same patients: macro AUC {:.3}, accuracy {:.3}",
                o.auc_macro, o.accuracy
            );
        }
        if let Some((name, e, d)) = &paired {
            println!(
                "{name} on the same patients: macro AUC {:.3}, accuracy {:.3}; difference \
                 (paired 95% bootstrap interval): macro AUC {:+.3} ({:+.3} to {:+.3}), \
                 accuracy {:+.3} ({:+.3} to {:+.3})",
                e.auc_macro,
                e.accuracy,
                d.auc_macro,
                d.auc_macro_ci95.low,
                d.auc_macro_ci95.high,
                d.accuracy,
                d.accuracy_ci95.low,
                d.accuracy_ci95.high
            );
        }
    }
    Ok(())
}

//! `osteo train` and `osteo evaluate`.

use anyhow::Context;
use clap::{Args, ValueEnum};
use osteo_backend_candle::CandleBackend;
use osteo_core::manifest::Provenance;
use osteo_core::{Backend, Device, Grade, LoadBackend, ModelArtifacts, ModelKind, ViewSpec};
use osteo_train::cohort::{CohortSource, Sample, load};
use osteo_train::train::{Inputs, TrainConfig, predict, train};
use osteo_train::{Evaluation, evaluate};
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
}

fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn headline(e: &Evaluation) -> serde_json::Value {
    let auc = |k: usize| e.auc[k].map_or(serde_json::Value::Null, |v| json!(v));
    json!({
        "auc_macro": e.auc_macro,
        "auc": {"normal": auc(0), "osteopenia": auc(1), "osteoporosis": auc(2)},
        "accuracy": e.accuracy,
        "balanced_accuracy": e.balanced_accuracy,
    })
}

/// Runs `osteo train`.
pub fn run_train(args: TrainArgs) -> anyhow::Result<()> {
    let kind: ModelKind = args.kind.into();
    let source = args.cohort.source(args.seed);
    let view = ViewSpec::default();
    eprintln!("train: loading cohort and building views");
    let samples = load(
        &source,
        kind.uses_image().then_some(&view),
        Some(&args.cache),
    )?;
    let config = TrainConfig {
        epochs: args.epochs,
        ..TrainConfig::new(kind, args.seed)
    };
    let start = std::time::Instant::now();
    let trained = train(&samples, &view, &config)?;
    let train_s = start.elapsed().as_secs_f64();
    let test = &trained.split.test;
    let inputs = Inputs::new(&samples, trained.view, trained.tabular.as_ref())?;
    let probs = predict(&trained.network, &inputs, test)?;
    let truth: Vec<Grade> = test.iter().map(|&i| samples[i].grade).collect();
    let eval = evaluate(&probs, &truth);
    let oracle = match source {
        CohortSource::Synthetic { seed, .. } => Some(evaluate(
            &osteo_train::oracle::probabilities(kind, seed, test),
            &truth,
        )),
        CohortSource::Csv(_) => None,
    };
    let mut metrics = BTreeMap::from([
        ("auc_macro".to_string(), eval.auc_macro),
        ("accuracy".to_string(), eval.accuracy),
        ("balanced_accuracy".to_string(), eval.balanced_accuracy),
        ("test_patients".to_string(), test.len() as f64),
        ("best_epoch".to_string(), trained.best_epoch as f64),
        ("train_seconds".to_string(), train_s),
    ]);
    if let Some(o) = &oracle {
        metrics.insert("oracle_auc_macro".into(), o.auc_macro);
        metrics.insert("oracle_accuracy".into(), o.accuracy);
    }
    let data = match &source {
        CohortSource::Synthetic { patients, seed } => {
            format!("synthetic phantom cohort, {patients} patients, seed {seed}")
        }
        CohortSource::Csv(p) => format!("cohort CSV {}", p.display()),
    };
    let provenance = Provenance {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        seed: args.seed,
        commit: commit(),
        data,
    };
    let name = args.name.clone().unwrap_or_else(|| {
        args.out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("osteo-{kind}"))
    });
    osteo_train::artifact::write_model(&trained, &name, provenance, metrics, &args.out)?;
    let ci = osteo_train::metrics::bootstrap(&probs, &truth, 1000, args.seed);
    let report = args.out.join("report");
    std::fs::create_dir_all(&report)
        .with_context(|| format!("cannot create {}", report.display()))?;
    let json = json!({
        "model": name,
        "kind": kind.name(),
        "test": headline(&eval),
        "test_ci95": ci,
        "per_class": eval.per_class,
        "confusion": eval.confusion,
        "oracle": oracle.as_ref().map(headline),
        "history": trained.history,
        "split": {"train": trained.split.train.len(), "validation": trained.split.validation.len(), "test": test.len()},
    });
    std::fs::write(
        report.join("metrics.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    std::fs::write(
        report.join("report.md"),
        report_md(&name, kind, &eval, &ci, oracle.as_ref(), &trained),
    )?;
    eprintln!(
        "train: {name} ({kind}) best epoch {} of {}, {:.0} s; test macro AUC {:.3}, accuracy {:.3}{}",
        trained.best_epoch,
        trained.history.len(),
        train_s,
        eval.auc_macro,
        eval.accuracy,
        oracle
            .map(|o| format!("; oracle {:.3} / {:.3}", o.auc_macro, o.accuracy))
            .unwrap_or_default()
    );
    Ok(())
}

/// The human-readable training report.
fn report_md(
    name: &str,
    kind: ModelKind,
    e: &Evaluation,
    ci: &osteo_train::metrics::Intervals,
    oracle: Option<&Evaluation>,
    trained: &osteo_train::train::Trained,
) -> String {
    let mut md = format!("# {name} ({kind})\n\n");
    md.push_str(&format!(
        "Split (patients): train {}, validation {}, test {}. Best epoch {} of {}.\n\n",
        trained.split.train.len(),
        trained.split.validation.len(),
        trained.split.test.len(),
        trained.best_epoch,
        trained.history.len()
    ));
    md.push_str(
        "| | macro AUC (95% CI) | accuracy (95% CI) | balanced accuracy |\n|---|---|---|---|\n",
    );
    md.push_str(&format!(
        "| {kind} model, test | {:.3} ({:.3}-{:.3}) | {:.3} ({:.3}-{:.3}) | {:.3} |\n",
        e.auc_macro,
        ci.auc_macro.low,
        ci.auc_macro.high,
        e.accuracy,
        ci.accuracy.low,
        ci.accuracy.high,
        e.balanced_accuracy
    ));
    if let Some(o) = oracle {
        md.push_str(&format!(
            "| Bayes oracle, same patients | {:.3} | {:.3} | {:.3} |\n",
            o.auc_macro, o.accuracy, o.balanced_accuracy
        ));
    }
    md.push_str("\n| class | AUC | sensitivity | specificity | F1 |\n|---|---|---|---|---|\n");
    for g in Grade::ALL {
        let k = g.index();
        let auc = e.auc[k].map_or("n/a".to_string(), |a| format!("{a:.3}"));
        let c = e.per_class[k];
        md.push_str(&format!(
            "| {g} | {auc} | {:.3} | {:.3} | {:.3} |\n",
            c.sensitivity, c.specificity, c.f1
        ));
    }
    md.push_str("\nConfusion matrix (rows: truth, columns: predicted; normal, osteopenia, osteoporosis):\n\n");
    for row in e.confusion {
        md.push_str(&format!("    {:>5} {:>5} {:>5}\n", row[0], row[1], row[2]));
    }
    md
}

/// Class probabilities of a loaded model for every sample, in batches.
fn backend_probs(
    backend: &mut CandleBackend,
    artifacts: &ModelArtifacts,
    samples: &[Sample],
) -> anyhow::Result<Vec<[f64; 3]>> {
    let m = &artifacts.manifest;
    let inputs = Inputs::new(samples, m.view, m.tabular.as_ref())?;
    let all: Vec<usize> = (0..samples.len()).collect();
    let mut out = Vec::with_capacity(samples.len());
    for chunk in all.chunks(32) {
        let logits = backend.predict(&inputs.batch(chunk, None)?)?;
        for i in 0..chunk.len() {
            let p = osteo_core::backend::softmax(logits.row(i).unwrap_or_default());
            out.push([f64::from(p[0]), f64::from(p[1]), f64::from(p[2])]);
        }
    }
    Ok(out)
}

/// Runs `osteo evaluate`.
pub fn run_evaluate(args: EvaluateArgs) -> anyhow::Result<()> {
    let artifacts = ModelArtifacts::open(&args.model)?;
    let m = &artifacts.manifest;
    let mut backend = CandleBackend::load(&artifacts, Device::Cpu)?;
    let source = args.cohort.source(args.seed);
    let samples = load(&source, m.view.as_ref(), Some(&args.cache))?;
    let probs = backend_probs(&mut backend, &artifacts, &samples)?;
    let truth: Vec<Grade> = samples.iter().map(|s| s.grade).collect();
    let eval = evaluate(&probs, &truth);
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
        let mut v = headline(&eval);
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
    }
    Ok(())
}

//! The report folder of a trained model: `metrics.json`, `report.md` with the paper-style table,
//! and PNG plots (ROC curves, confusion matrix, training curves, Grad-CAM overlays).
//!
//! Everything is computed from the model directory as it is served (loaded through the candle
//! backend), on the held-out test patients of the training split. Sibling models in the same
//! parent directory trained on the same cohort and seed share that split, so they are evaluated
//! on the same patients and listed in the same table.

mod anatomy;
mod cam;
mod decision;
mod paired;

use crate::cohort::{CohortSource, Sample, load_for};
use crate::error::TrainError;
use crate::inference::{logits, served_probabilities};
use crate::metrics::{Evaluation, Intervals, bootstrap, evaluate, roc_curve};
use crate::plot::charts::{self, RocCurve};
use crate::split::stratified;
use crate::train::{Epoch, TrainConfig};
use osteo_backend_candle::CandleBackend;
use osteo_core::manifest::MANIFEST_FILE;
use osteo_core::{Device, Grade, LoadBackend, ModelArtifacts, ModelKind, ViewSpec};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// Name of the report folder inside a model directory.
pub const REPORT_DIR: &str = "report";
/// Bootstrap resamples of the confidence intervals.
const RESAMPLES: usize = 1000;
/// Pixel scale of the Grad-CAM overlays.
const CAM_SCALE: usize = 3;

/// What to report on.
pub struct ReportRequest<'a> {
    /// The model directory.
    pub model_dir: &'a Path,
    /// The cohort the model was trained on.
    pub source: &'a CohortSource,
    /// The training seed (fixes the split).
    pub seed: u64,
    /// View cache directory.
    pub cache: Option<&'a Path>,
    /// Training history and best epoch; `None` reads them from the existing report.
    pub history: Option<(Vec<Epoch>, usize)>,
}

/// One model's results on the test patients.
pub struct ModelResult {
    /// Model name.
    pub name: String,
    /// Model kind.
    pub kind: ModelKind,
    /// What it reads, in words.
    pub information: String,
    /// Test metrics.
    pub eval: Evaluation,
    /// Their 95% bootstrap intervals.
    pub ci: Intervals,
    /// Bayes oracle with the same information on the same patients (synthetic cohorts).
    pub oracle: Option<Evaluation>,
}

/// Errors of a model directory as a training error.
fn model_err(dir: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io {
        path: dir.display().to_string(),
        message: e.to_string(),
    }
}

/// What a model reads, in words, with the measured attenuation where it reads it.
fn reads(m: &osteo_core::ModelManifest) -> String {
    let base = information(m.kind);
    if m.reads_measured() {
        format!("{base} + measured attenuation")
    } else {
        base.to_string()
    }
}

/// What a kind of model reads, in words.
fn information(kind: ModelKind) -> &'static str {
    match kind {
        ModelKind::Image => "CT",
        ModelKind::Tabular => "clinical variables",
        ModelKind::Fused => "CT + clinical variables",
    }
}

/// Table order of the paper: image, tabular, fused.
fn paper_order(kind: ModelKind) -> usize {
    match kind {
        ModelKind::Image => 0,
        ModelKind::Tabular => 1,
        ModelKind::Fused => 2,
    }
}

/// Other model directories next to `dir` trained on the same data with the same seed.
fn siblings(dir: &Path, artifacts: &ModelArtifacts) -> Vec<ModelArtifacts> {
    let Some(parent) = dir.parent() else {
        return Vec::new();
    };
    let own = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut found: Vec<ModelArtifacts> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join(MANIFEST_FILE).is_file())
        .filter(|p| p.canonicalize().map_or(true, |c| c != own))
        .filter_map(|p| ModelArtifacts::open(&p).ok())
        .filter(|a| {
            let (m, me) = (&a.manifest.provenance, &artifacts.manifest.provenance);
            m.seed == me.seed && m.data == me.data
        })
        .collect();
    found.sort_by_key(|a| a.manifest.name.clone());
    found
}

/// One model's evaluation with what it was computed from.
struct Evaluated {
    result: ModelResult,
    /// Served (calibrated) probabilities of the test patients.
    probs: Vec<[f64; 3]>,
    /// Their raw logits.
    logits: Vec<[f32; 3]>,
    backend: CandleBackend,
}

/// Evaluates one model on the test patients (`truth` their grades), next to the oracle for its
/// information set when there is one.
fn result_of(
    artifacts: &ModelArtifacts,
    samples: &[Sample],
    (test, truth): (&[usize], &[Grade]),
    oracles: &[(ModelKind, Evaluation)],
    seed: u64,
) -> Result<Evaluated, TrainError> {
    let m = &artifacts.manifest;
    let mut backend =
        CandleBackend::load(artifacts, Device::Cpu).map_err(|e| model_err(&artifacts.dir, e))?;
    let logits = logits(&mut backend, m, samples, test)?;
    let probs = served_probabilities(m, &logits)?;
    let result = ModelResult {
        name: m.name.clone(),
        information: reads(m),
        kind: m.kind,
        eval: evaluate(&probs, truth),
        ci: bootstrap(&probs, truth, RESAMPLES, seed),
        oracle: oracles
            .iter()
            .find(|(k, _)| *k == m.kind)
            .map(|(_, e)| e.clone()),
    };
    Ok(Evaluated {
        result,
        probs,
        logits,
        backend,
    })
}

/// The training history recorded in an existing report.
fn recorded_history(report: &Path) -> Vec<Epoch> {
    std::fs::read_to_string(report.join("metrics.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| serde_json::from_value(v.get("history")?.clone()).ok())
        .unwrap_or_default()
}

/// Writes `report/` for the model and records its test metrics in `model.toml`; returns the
/// results of every model in the table, the reported model first.
pub fn write(req: ReportRequest<'_>) -> Result<Vec<ModelResult>, TrainError> {
    let dir = req.model_dir;
    let mut artifacts = ModelArtifacts::open(dir).map_err(|e| model_err(dir, e))?;
    let m = artifacts.manifest.clone();
    if m.provenance.seed != req.seed {
        return Err(TrainError::Setup(format!(
            "model {} was trained with seed {}; pass --seed {} to report on its test patients",
            m.name, m.provenance.seed, m.provenance.seed
        )));
    }
    // One set of samples serves every model in the table: siblings reading another view are
    // left out.
    let siblings = siblings(dir, &artifacts);
    let view: Option<ViewSpec> = m
        .view
        .or_else(|| siblings.iter().find_map(|a| a.manifest.view));
    let others: Vec<ModelArtifacts> = siblings
        .into_iter()
        .filter(|a| a.manifest.view.is_none() || a.manifest.view == view)
        .collect();
    let models: Vec<&osteo_core::ModelManifest> = std::iter::once(&m)
        .chain(others.iter().map(|a| &a.manifest))
        .collect();
    let mut samples = load_for(req.source, &models, req.cache)?;
    let grades: Vec<Grade> = samples.iter().map(|s| s.grade).collect();
    let config = TrainConfig::new(m.kind, req.seed);
    let test = stratified(
        &grades,
        config.validation_fraction,
        config.test_fraction,
        req.seed,
    )
    .test;
    if test.is_empty() {
        return Err(TrainError::Setup(format!(
            "{} patients leave no test patients",
            samples.len()
        )));
    }
    let truth: Vec<Grade> = test.iter().map(|&i| grades[i]).collect();
    let oracles: Vec<(ModelKind, Evaluation)> = match req.source {
        CohortSource::Synthetic { seed, .. } => {
            [ModelKind::Image, ModelKind::Tabular, ModelKind::Fused]
                .into_iter()
                .map(|k| {
                    (
                        k,
                        evaluate(&crate::oracle::probabilities(k, *seed, &test), &truth),
                    )
                })
                .collect()
        }
        CohortSource::Csv(_) => Vec::new(),
    };
    let split = (test.as_slice(), truth.as_slice());
    let Evaluated {
        result: own,
        probs,
        logits: own_logits,
        mut backend,
    } = result_of(&artifacts, &samples, split, &oracles, req.seed)?;
    let mut compared = Vec::new();
    for other in &others {
        match result_of(other, &samples, split, &oracles, req.seed) {
            Ok(e) => compared.push((other, e)),
            Err(e) => eprintln!(
                "report: skipping sibling model {}: {e}",
                other.dir.display()
            ),
        }
    }
    // A model that reads the measured attenuation, once more with it withheld from every test
    // patient: what it answers for a study the measurement cannot read.
    let withheld = if m.reads_measured() {
        let saved: Vec<_> = test.iter().map(|&i| samples[i].measured).collect();
        for &i in &test {
            samples[i].measured = Some(osteo_core::features::Measured::NONE);
        }
        let e = result_of(&artifacts, &samples, split, &oracles, req.seed);
        for (&i, measured) in test.iter().zip(saved) {
            samples[i].measured = measured;
        }
        Some(e?)
    } else {
        None
    };
    let (paired_md, paired_json) = {
        let others: Vec<paired::Compared<'_>> = compared
            .iter()
            .map(|(a, e)| paired::Compared {
                manifest: &a.manifest,
                variant: None,
                probs: &e.probs,
                logits: &e.logits,
                eval: &e.result.eval,
                ci: &e.result.ci,
            })
            .chain(withheld.iter().map(|e| paired::Compared {
                manifest: &m,
                variant: Some("measurement withheld"),
                probs: &e.probs,
                logits: &e.logits,
                eval: &e.result.eval,
                ci: &e.result.ci,
            }))
            .collect();
        let own_compared = paired::Compared {
            manifest: &m,
            variant: None,
            probs: &probs,
            logits: &own_logits,
            eval: &own.eval,
            ci: &own.ci,
        };
        paired::section(
            &own_compared,
            &others,
            own.oracle.as_ref(),
            &truth,
            req.seed,
        )
    };
    let mut results = vec![own];
    results.extend(compared.into_iter().map(|(_, e)| e.result));

    let report = dir.join(REPORT_DIR);
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e: std::io::Error| model_err(&p, e)
    };
    std::fs::create_dir_all(&report).map_err(io(&report))?;
    let (history, best_epoch) = match req.history {
        Some(h) => h,
        None => (
            recorded_history(&report),
            m.metrics.get("best_epoch").map_or(0, |v| *v as usize),
        ),
    };
    let write_file = |name: &str, bytes: &[u8]| -> Result<PathBuf, TrainError> {
        let p = report.join(name);
        std::fs::write(&p, bytes).map_err(io(&p))?;
        Ok(p)
    };

    let own = &results[0];
    let curves: Vec<RocCurve> = Grade::ALL
        .iter()
        .map(|&g| {
            let scores: Vec<f64> = probs.iter().map(|p| p[g.index()]).collect();
            let positive: Vec<bool> = truth.iter().map(|&t| t == g).collect();
            RocCurve {
                grade: g,
                auc: own.eval.auc[g.index()],
                points: roc_curve(&scores, &positive),
            }
        })
        .collect();
    let title = |what: &str| format!("{}: {what}", m.name);
    write_file(
        "roc.png",
        &charts::roc(&title("ROC, test patients"), &curves)?,
    )?;
    write_file(
        "confusion.png",
        &charts::confusion(&title("confusion matrix, test"), &own.eval.confusion)?,
    )?;
    if !history.is_empty() {
        write_file(
            "training.png",
            &charts::training(&title("training"), &history, best_epoch)?,
        )?;
    }
    let gradcam = match view {
        Some(v) if m.kind.uses_image() => {
            let tiles = cam::cam_tiles(&mut backend, &m, &samples, &test, &probs, &v)?;
            write_file(
                "gradcam.png",
                &charts::gradcam(&title("Grad-CAM of the predicted grade"), &tiles)?,
            )?;
            true
        }
        _ => false,
    };

    let decision = m
        .decision
        .as_ref()
        .map(|spec| decision::figures(spec, &own_logits, &truth));
    // The test patients' CT read again: attenuation, view geometry.
    let has_studies = test
        .iter()
        .any(|&i| samples[i].study != crate::cohort::Study::None);
    let measured = if has_studies {
        anatomy::measure(&samples, &test, view.as_ref())?
    } else {
        Vec::new()
    };
    let (thresholds_md, thresholds_json) = if has_studies {
        anatomy::thresholds(&measured, &truth)
    } else {
        (String::new(), Value::Null)
    };
    let (subgroups_md, subgroups_json) = if has_studies {
        anatomy::subgroups(&m, &samples, &test, &measured, &probs, req.seed)
    } else {
        (String::new(), Value::Null)
    };
    let (regions_md, regions_json) = if has_studies && m.kind.uses_image() {
        let inputs = crate::train::Inputs::new(&samples, &m.arch, m.view, m.tabular.as_ref())?;
        anatomy::gradcam_regions(&mut backend, &m, &inputs, (&test, &probs), &measured)?
    } else {
        (String::new(), Value::Null)
    };
    if let Some(d) = &decision {
        write_file("reliability.png", &d.png(&title("reliability (test)"))?)?;
    }

    let headline = Evaluation::headline;
    let metrics = json!({
        "model": m.name,
        "kind": m.kind.name(),
        "test_patients": test.len(),
        "test": headline(&own.eval),
        "test_ci95": own.ci,
        "per_class": own.eval.per_class,
        "confusion": own.eval.confusion,
        "oracle": own.oracle.as_ref().map(headline),
        "oracle_by_information": oracles.iter().map(|(k, e)| (k.name().to_string(), headline(e))).collect::<serde_json::Map<_, _>>(),
        "compared_models": results.iter().skip(1).map(|r| json!({"model": r.name, "kind": r.kind.name(), "test": headline(&r.eval), "test_ci95": r.ci})).collect::<Vec<_>>(),
        "history": history,
        "best_epoch": best_epoch,
        "decision": decision.as_ref().map(decision::DecisionFigures::json),
        "l1_thresholds": thresholds_json,
        "subgroups": subgroups_json,
        "gradcam_regions": regions_json,
        "compared_on_the_same_patients": paired_json,
    });
    let text = serde_json::to_string_pretty(&metrics)
        .map_err(|e| TrainError::Setup(format!("cannot serialise metrics: {e}")))?;
    write_file("metrics.json", text.as_bytes())?;
    let mut md = markdown(
        &m,
        &results,
        &oracles,
        test.len(),
        best_epoch,
        history.len(),
        gradcam,
    );
    if let Some(d) = &decision {
        md.push('\n');
        md.push_str(&d.markdown());
    }
    for section in [&paired_md, &thresholds_md, &subgroups_md, &regions_md] {
        if !section.is_empty() {
            md.push('\n');
            md.push_str(section);
        }
    }
    write_file("report.md", md.as_bytes())?;

    let recorded = [
        ("auc_macro", own.eval.auc_macro),
        ("accuracy", own.eval.accuracy),
        ("balanced_accuracy", own.eval.balanced_accuracy),
        ("test_patients", test.len() as f64),
    ];
    for (k, v) in recorded.into_iter().chain(
        decision
            .iter()
            .flat_map(decision::DecisionFigures::recorded),
    ) {
        artifacts.manifest.metrics.insert(k.into(), v);
    }
    if let Some(o) = &own.oracle {
        artifacts
            .manifest
            .metrics
            .insert("oracle_auc_macro".into(), o.auc_macro);
        artifacts
            .manifest
            .metrics
            .insert("oracle_accuracy".into(), o.accuracy);
    }
    let toml = artifacts
        .manifest
        .to_toml()
        .map_err(|e| model_err(dir, e))?;
    let path = dir.join(MANIFEST_FILE);
    std::fs::write(&path, toml).map_err(io(&path))?;
    Ok(results)
}

/// `report.md`: the paper-style table, per-class figures and the plots.
fn markdown(
    m: &osteo_core::ModelManifest,
    results: &[ModelResult],
    oracles: &[(ModelKind, Evaluation)],
    test_patients: usize,
    best_epoch: usize,
    epochs: usize,
    gradcam: bool,
) -> String {
    let own = &results[0];
    let p = &m.provenance;
    let mut md = format!("# {} ({} model)\n\n", m.name, m.kind);
    md.push_str(&format!(
        "Trained on the {} with `{}` (commit {}). Results on the {test_patients} held-out test \
         patients of the seeded, grade-stratified split (seed {}).",
        p.data, p.command, p.commit, p.seed
    ));
    if epochs > 0 {
        md.push_str(&format!(" Best validation epoch {best_epoch} of {epochs}."));
    }
    if let Some(s) = m.metrics.get("train_seconds") {
        md.push_str(&format!(" Training took {s:.0} s."));
    }
    md.push_str("\n\n## Models and the Bayes oracle on the same test patients\n\n");
    md.push_str("| | information | macro AUC (95% CI) | accuracy (95% CI) | balanced accuracy |\n");
    md.push_str("|---|---|---|---|---|\n");
    let mut rows: Vec<&ModelResult> = results.iter().collect();
    rows.sort_by_key(|r| paper_order(r.kind));
    for r in rows {
        let name = if r.name == own.name {
            format!("**{}**", r.name)
        } else {
            r.name.clone()
        };
        md.push_str(&format!(
            "| {name} | {} | {:.3} ({:.3}–{:.3}) | {:.3} ({:.3}–{:.3}) | {:.3} |\n",
            r.information,
            r.eval.auc_macro,
            r.ci.auc_macro.low,
            r.ci.auc_macro.high,
            r.eval.accuracy,
            r.ci.accuracy.low,
            r.ci.accuracy.high,
            r.eval.balanced_accuracy
        ));
    }
    let mut sorted: Vec<&(ModelKind, Evaluation)> = oracles.iter().collect();
    sorted.sort_by_key(|(k, _)| paper_order(*k));
    for (k, e) in sorted {
        md.push_str(&format!(
            "| Bayes oracle | {} | {:.3} | {:.3} | {:.3} |\n",
            information(*k),
            e.auc_macro,
            e.accuracy,
            e.balanced_accuracy
        ));
    }
    md.push_str(
        "| paper (real cohort, fused model) | CT + clinical variables | 0.94 | 0.80 | |\n\n",
    );
    if !oracles.is_empty() {
        md.push_str(
            "The Bayes oracle is the phantom's true posterior given exactly the information the \
             model reads: no model can do better on these patients on average. Models next to \
             this one trained on the same cohort and seed are listed because they share its \
             split.\n\n",
        );
    }
    md.push_str("## Per class (this model)\n\n| grade | AUC (95% CI) | sensitivity | specificity | F1 |\n|---|---|---|---|---|\n");
    for g in Grade::ALL {
        let k = g.index();
        let auc = own.eval.auc[k].map_or("n/a".to_string(), |a| {
            format!(
                "{a:.3} ({:.3}–{:.3})",
                own.ci.auc[k].low, own.ci.auc[k].high
            )
        });
        let c = own.eval.per_class[k];
        md.push_str(&format!(
            "| {g} | {auc} | {:.3} | {:.3} | {:.3} |\n",
            c.sensitivity, c.specificity, c.f1
        ));
    }
    md.push_str("\n## Plots\n\n![ROC curves](roc.png)\n\n![Confusion matrix](confusion.png)\n\n");
    if epochs > 0 {
        md.push_str("![Training curves](training.png)\n\n");
    }
    if gradcam {
        md.push_str(
            "![Grad-CAM overlays](gradcam.png)\n\nGrad-CAM of the predicted grade over the \
             view's slab-maximum channel: per grade the most confident correct test patient, \
             then the most confident mistake.\n",
        );
    }
    md
}

//! Backend parity: every backend built into this binary serves the same numbers as candle (the
//! reference) for all three shipped models, on phantom studies and on real CT files:
//! probabilities within 1e-4 absolute, the Grad-CAM activation A and channel weights alpha
//! within 1e-3 relative (largest difference over the largest reference magnitude), and the
//! assembled Grad-CAM maps correlated at 0.999 or better; and on the calibrated model, the same
//! calibrated probabilities, referral and prediction set.

use osteo_backend_candle::CandleBackend;
use osteo_backend_ort::OrtBackend;
use osteo_core::backend::softmax;
use osteo_core::features::Measured;
use osteo_core::{
    Backend, Batch, ClinicalInput, ClinicalVariables, Device, Grade, LoadBackend, ModelArtifacts,
    RiskFlags, Sample, Sex, ViewSpec,
};
use osteo_dicom::{DicomSource, IngestOptions};
use osteo_train::cohort::{CohortSource, load};
use std::path::{Path, PathBuf};

const PROB_ABS: f32 = 1e-4;
const PARTS_REL: f32 = 1e-3;
const MAP_CORR: f64 = 0.999;

/// One study: where it came from, its default view, its clinical variables.
struct Case {
    label: String,
    view: Vec<f32>,
    clinical: ClinicalVariables,
    /// The attenuation measured on its CT (for models that read it).
    measured: Measured,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Phantom patients of an unseen seed plus every real CT test file that yields a view.
fn cases() -> Vec<Case> {
    let spec = ViewSpec::default();
    let mut phantom = load(
        &CohortSource::Synthetic {
            patients: 12,
            seed: 4242,
        },
        Some(&spec),
        None,
    )
    .expect("phantom cohort");
    osteo_train::cohort::measure(&mut phantom, None).expect("measured");
    let mut cases: Vec<Case> = phantom
        .into_iter()
        .map(|s| Case {
            label: format!("phantom {}", s.patient_id),
            view: s.view.expect("phantom view"),
            clinical: s.clinical,
            measured: s.measured.expect("measured"),
        })
        .collect();
    let clinical = ClinicalVariables::validate(ClinicalInput {
        age_years: 71.0,
        sex: Sex::Female,
        height_cm: 158.0,
        weight_kg: 52.0,
        bmi: None,
        risk: RiskFlags::default(),
    })
    .expect("clinical");
    let data = root().join(".cache/testdata");
    let mut real = 0;
    for rel in [
        "data_store/data/693_UNCR.dcm",
        "data_store/data/693_J2KR.dcm",
        "data_store/data/eCT_Supplemental.dcm",
        "pydicom/data/test_files/CT_small.dcm",
    ] {
        let path = data.join(rel);
        assert!(
            path.is_file(),
            "{} is missing: run scripts/setup.sh",
            path.display()
        );
        let ingested = osteo_dicom::ingest(DicomSource::Path(path), &IngestOptions::default())
            .unwrap_or_else(|e| panic!("{rel}: {e}"));
        let view = osteo_dicom::coronal_slab(&ingested.volume, &spec)
            .unwrap_or_else(|e| panic!("{rel}: {e}"));
        cases.push(Case {
            label: format!("real CT {rel}"),
            view: view.data,
            clinical,
            measured: osteo_pipeline::measured(
                osteo_pipeline::attenuation(&ingested.volume).as_ref(),
            ),
        });
        real += 1;
    }
    assert_eq!(real, 4);
    cases
}

/// The model input of `cases`, as one batch.
fn batch(artifacts: &ModelArtifacts, cases: &[&Case]) -> Batch {
    let m = &artifacts.manifest;
    let samples: Vec<Sample> = cases
        .iter()
        .map(|c| Sample {
            image: m.view.map(|_| c.view.clone()),
            tabular: m
                .tabular
                .as_ref()
                .map(|spec| spec.encode(&c.clinical, &c.measured).expect("encode")),
        })
        .collect();
    Batch::stack(&m.arch, &samples).expect("batch")
}

/// The device the compared backends run on: `OSTEO_PARITY_DEVICE` (default `cpu`;
/// `scripts/gpu-check.sh` sets `cuda:0`). The reference is always candle on the CPU.
fn device() -> Device {
    std::env::var("OSTEO_PARITY_DEVICE")
        .map_or(Ok(Device::Cpu), |d| d.parse())
        .expect("OSTEO_PARITY_DEVICE is cpu or cuda:N")
}

/// Candle on the CPU (the reference), then every backend of this build on [`device`].
fn backends(artifacts: &ModelArtifacts) -> Vec<(String, Box<dyn Backend>)> {
    let device = device();
    let mut all: Vec<(String, Box<dyn Backend>)> = vec![(
        "candle".into(),
        Box::new(CandleBackend::load(artifacts, Device::Cpu).expect("candle loads")),
    )];
    let on = |name: &str| format!("{name} on {device}");
    if device != Device::Cpu {
        all.push((
            on("candle"),
            Box::new(CandleBackend::load(artifacts, device).expect("candle loads")),
        ));
    }
    all.push((
        on("ort"),
        Box::new(OrtBackend::load(artifacts, device).expect("ort loads")),
    ));
    #[cfg(feature = "tch")]
    all.push((
        on("tch"),
        Box::new(osteo_backend_tch::TchBackend::load(artifacts, device).expect("tch loads")),
    ));
    all
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs()))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn check_model(name: &str, cases: &[Case]) {
    let artifacts = ModelArtifacts::open(&root().join("models").join(name)).expect("shipped model");
    let mut engines = backends(&artifacts);
    let all: Vec<&Case> = cases.iter().collect();
    let input = batch(&artifacts, &all);
    let probs = |engine: &mut Box<dyn Backend>| -> Vec<f32> {
        let logits = engine.predict(&input).expect("predict");
        assert_eq!(logits.shape(), [cases.len(), 3]);
        (0..cases.len())
            .flat_map(|i| softmax(logits.row(i).expect("row")))
            .collect()
    };
    let (reference, rest) = engines.split_first_mut().expect("candle");
    let ref_probs = probs(&mut reference.1);
    for (backend, engine) in rest.iter_mut() {
        let p = probs(engine);
        let diff = max_diff(&p, &ref_probs);
        eprintln!(
            "{name}: {backend} vs candle, batch {}: max |Δp| = {diff:.2e}",
            cases.len()
        );
        assert!(
            diff <= PROB_ABS,
            "{name}: {backend} probabilities differ from candle by {diff:e} (> {PROB_ABS:e})"
        );
    }
    let spec = artifacts.manifest.view;
    for (backend, engine) in rest.iter_mut() {
        let (mut worst_a, mut worst_alpha, mut worst_corr) = (0f32, 0f32, 1f64);
        let mut worst_tab = 0f32;
        for case in cases {
            let one = batch(&artifacts, &[case]);
            let re = reference.1.explain(&one).expect("candle explain");
            let oe = engine.explain(&one).expect("explain");
            // Explain's logits are the backend's own prediction.
            let predicted = engine.predict(&one).expect("predict");
            let drift = max_diff(&oe.logits, predicted.data());
            assert!(
                drift <= 1e-4 * max_abs(predicted.data()).max(1.0),
                "{name}: {backend} explain logits differ from its predict by {drift:e}"
            );
            // The clinical features' gradients (fused models): the same on every backend.
            assert_eq!(
                oe.tabular_gradients.len(),
                re.tabular_gradients.len(),
                "{name}: {backend} tabular gradients"
            );
            for (o, r) in oe.tabular_gradients.iter().zip(&re.tabular_gradients) {
                assert!(
                    max_abs(r) > 0.0,
                    "{name}: candle's tabular gradient is all zero"
                );
                let rel = max_diff(o, r) / max_abs(r).max(f32::MIN_POSITIVE);
                assert!(
                    rel <= PARTS_REL,
                    "{name}, {}: {backend} tabular gradient differs by {rel:e} relative",
                    case.label
                );
                worst_tab = worst_tab.max(rel);
            }
            // Grad-CAM (models that read CT): activation, weights and map.
            let Some(spec) = spec else {
                assert!(
                    oe.activation.is_none() && oe.alphas.is_empty(),
                    "{name}: {backend}"
                );
                continue;
            };
            for class in Grade::ALL {
                let r = re.parts(class).expect("candle Grad-CAM");
                let o = oe.parts(class).expect("Grad-CAM");
                assert!(
                    max_abs(&r.alpha) > 0.0,
                    "{name}: candle's alpha is all zero"
                );
                assert_eq!(o.activation.shape(), r.activation.shape());
                let rel_a = max_diff(o.activation.data(), r.activation.data())
                    / max_abs(r.activation.data()).max(f32::MIN_POSITIVE);
                let rel_alpha =
                    max_diff(&o.alpha, &r.alpha) / max_abs(&r.alpha).max(f32::MIN_POSITIVE);
                let map = |p| {
                    osteo_core::gradcam::assemble(p, spec.height, spec.width)
                        .expect("map")
                        .values
                };
                let corr = osteo_core::gradcam::correlation(&map(&o), &map(&r));
                let what = format!("{name}, {}, class {}", case.label, class.name());
                assert!(
                    rel_a <= PARTS_REL,
                    "{what}: {backend} activation differs by {rel_a:e} relative"
                );
                assert!(
                    rel_alpha <= PARTS_REL,
                    "{what}: {backend} alpha differs by {rel_alpha:e} relative"
                );
                assert!(
                    corr >= MAP_CORR,
                    "{what}: {backend} Grad-CAM map correlates {corr} with candle's"
                );
                worst_a = worst_a.max(rel_a);
                worst_alpha = worst_alpha.max(rel_alpha);
                worst_corr = worst_corr.min(corr);
            }
        }
        eprintln!(
            "{name}: {backend} vs candle, Grad-CAM over {} studies x 3 classes: A rel {worst_a:.2e}, \
             alpha rel {worst_alpha:.2e}, map correlation >= {worst_corr:.6}, tabular gradient \
             rel {worst_tab:.2e}",
            cases.len()
        );
    }
}

#[test]
fn backends_agree_on_the_shipped_models() {
    let cases = cases();
    for name in [
        "osteo-tabular-v1",
        "osteo-image-v1",
        "osteo-fused-v1",
        "osteo-fused-v3",
    ] {
        check_model(name, &cases);
    }
}

/// A model with an operating point: every backend's logits, passed through the pipeline as
/// every result is, give the same calibrated probabilities and the same referral and prediction
/// set (a case whose probability lies within the tolerance of a threshold could go either way
/// and is not compared).
fn check_decisions(name: &str, cases: &[Case]) {
    let artifacts = ModelArtifacts::open(&root().join("models").join(name)).expect("shipped model");
    let spec = artifacts
        .manifest
        .decision
        .clone()
        .expect("a model with a [decision]");
    let all: Vec<&Case> = cases.iter().collect();
    let input = batch(&artifacts, &all);
    let graded = |engine: &mut Box<dyn Backend>| -> Vec<osteo_pipeline::Graded> {
        let logits = engine.predict(&input).expect("predict");
        (0..cases.len())
            .map(|i| {
                osteo_pipeline::grade(Some(&spec), logits.row(i).expect("row")).expect("grade")
            })
            .collect()
    };
    let mut engines = backends(&artifacts);
    let (reference, rest) = engines.split_first_mut().expect("candle");
    let want = graded(&mut reference.1);
    let near = |p: f32, t: f64| (f64::from(p) - t).abs() <= f64::from(PROB_ABS);
    let mut compared = 0;
    for (backend, engine) in rest.iter_mut() {
        for (case, (g, r)) in cases.iter().zip(graded(engine).iter().zip(&want)) {
            let diff = max_diff(&g.probabilities, &r.probabilities);
            assert!(
                diff <= PROB_ABS,
                "{name}, {}: {backend} calibrated probabilities differ by {diff:e}",
                case.label
            );
            let (d, rd) = (g.decision.expect("decision"), r.decision.expect("decision"));
            if !near(r.probabilities[2], spec.osteoporosis_threshold)
                && !r.probabilities.iter().any(|p| near(*p, spec.set_threshold))
            {
                assert_eq!(
                    (d.refer, d.prediction_set, d.indeterminate),
                    (rd.refer, rd.prediction_set, rd.indeterminate),
                    "{name}, {}: {backend} decides otherwise than candle",
                    case.label
                );
                compared += 1;
            }
        }
    }
    eprintln!("{name}: {compared} decisions agree across backends");
    assert!(compared > 0, "{name}: no decision compared");
}

#[test]
fn backends_decide_alike_on_the_calibrated_models() {
    let cases = cases();
    check_decisions("osteo-fused-v2", &cases);
    check_decisions("osteo-fused-v3", &cases);
}

#[test]
fn every_shipped_onnx_file_is_in_sync_with_its_weights() {
    for name in [
        "osteo-tabular-v1",
        "osteo-image-v1",
        "osteo-fused-v1",
        "osteo-fused-v2",
        "osteo-fused-v3",
    ] {
        let artifacts =
            ModelArtifacts::open(&root().join("models").join(name)).expect("shipped model");
        osteo_onnx::check_in_sync(&artifacts).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn the_onnx_checker_accepts_the_exports() {
    // The official onnx package's full check (schema, types and shape inference).
    let python = root().join(".cache/venv/bin/python");
    assert!(python.is_file(), "run scripts/setup.sh first");
    for name in [
        "osteo-tabular-v1",
        "osteo-image-v1",
        "osteo-fused-v1",
        "osteo-fused-v3",
    ] {
        let file = root().join("models").join(name).join("model.onnx");
        let out = std::process::Command::new(&python)
            .args([
                "-c",
                "import sys, onnx; m = onnx.load(sys.argv[1]); onnx.checker.check_model(m, full_check=True); \
                 print(m.ir_version, m.opset_import[0].version, [o.name for o in m.graph.output])",
            ])
            .arg(&file)
            .output()
            .expect("python runs");
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(printed.starts_with("8 17 ['logits'"), "{name}: {printed}");
        assert_eq!(
            printed.contains("'activation', 'gradcam_alpha'"),
            name != "osteo-tabular-v1",
            "{name}: {printed}"
        );
        assert_eq!(
            printed.contains("'tabular_gradient'"),
            name != "osteo-image-v1",
            "{name}: {printed}"
        );
    }
}

#[test]
fn a_stale_onnx_file_is_refused_with_a_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = root().join("models/osteo-image-v1");
    for f in ["model.toml", "weights.safetensors", "model.onnx"] {
        std::fs::copy(src.join(f), dir.path().join(f)).expect("copy");
    }
    // Other weights (the fused model's are a different file) under the same ONNX export.
    let mut weights = std::fs::read(dir.path().join("weights.safetensors")).expect("read");
    let last = weights.len() - 1;
    weights[last] ^= 0x55;
    std::fs::write(dir.path().join("weights.safetensors"), weights).expect("write");
    let mut artifacts = ModelArtifacts::open(Path::new(dir.path())).expect("open");
    let e = OrtBackend::load(&artifacts, Device::Cpu).expect_err("weights not in model.toml");
    assert!(e.to_string().contains("weights_blake3"), "{e}");
    // New weights recorded in the manifest, but model.onnx not re-exported.
    artifacts.record_weights_digest().expect("digest");
    let e = OrtBackend::load(&artifacts, Device::Cpu).expect_err("stale");
    let msg = e.to_string();
    assert!(
        msg.contains("out of date") && msg.contains("osteo export-onnx --model"),
        "{msg}"
    );
    assert!(osteo_onnx::check_in_sync(&artifacts).is_err());
}

//! A tiny training run end to end through the real code path: synthetic cohort -> views -> split
//! -> training -> model directory -> the candle backend serves exactly what training evaluated.

use osteo_backend_candle::CandleBackend;
use osteo_core::manifest::Provenance;
use osteo_core::{Backend, Batch, Device, LoadBackend, ModelArtifacts, ModelKind, ViewSpec};
use osteo_train::cohort::{CohortSource, load};
use osteo_train::report::{self, ReportRequest};
use osteo_train::train::{Inputs, TrainConfig, predict, train};

fn provenance_for(seed: u64) -> Provenance {
    Provenance {
        command: "test".into(),
        seed,
        commit: "test".into(),
        data: "synthetic 60 / 8".into(),
    }
}

/// 60 synthetic patients on a coarse 32x32 view (12 mm pixels, same field of view): small runs.
fn tiny_cohort() -> (ViewSpec, Vec<osteo_train::Sample>) {
    let view = ViewSpec {
        height: 32,
        width: 32,
        pixel_mm: 12.0,
        ..ViewSpec::default()
    };
    let samples = load(
        &CohortSource::Synthetic {
            patients: 60,
            seed: 8,
        },
        Some(&view),
        None,
    )
    .expect("cohort");
    (view, samples)
}

#[test]
fn tiny_fused_training_run_writes_a_model_the_backend_serves() {
    let (view, samples) = tiny_cohort();
    let config = TrainConfig {
        epochs: 3,
        batch_size: 16,
        patience: 3,
        image_channels: vec![4, 8],
        progress: false,
        ..TrainConfig::new(ModelKind::Fused, 3)
    };
    let trained = train(&samples, &view, &config).expect("training runs");
    let again = train(&samples, &view, &config).expect("training runs again");
    assert_eq!(
        trained.history, again.history,
        "training is reproducible from the seed"
    );
    assert_eq!(trained.history.len(), 3);
    assert!(
        trained
            .history
            .iter()
            .all(|e| e.train_loss.is_finite() && e.train_loss > 0.0)
    );
    assert!((1..=3).contains(&trained.best_epoch));
    assert!(
        trained.history[2].learning_rate < trained.history[0].learning_rate,
        "cosine schedule decays"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = osteo_train::artifact::write_model(
        &trained,
        ("tiny-fused", "1"),
        provenance_for(3),
        Default::default(),
        dir.path(),
    )
    .expect("write");
    assert_eq!(manifest.kind, ModelKind::Fused);

    // A tabular model next to it, trained on the same cohort and seed, shares the test split and
    // appears in the report's table.
    let tabular = train(
        &samples,
        &view,
        &TrainConfig {
            epochs: 2,
            ..TrainConfig::new(ModelKind::Tabular, 3)
        },
    )
    .expect("tabular training");
    let models = tempfile::tempdir().expect("tempdir");
    let fused_dir = models.path().join("tiny-fused");
    for (t, name) in [(&trained, "tiny-fused"), (&tabular, "tiny-tabular")] {
        osteo_train::artifact::write_model(
            t,
            (name, "1"),
            provenance_for(3),
            Default::default(),
            &models.path().join(name),
        )
        .expect("write");
    }
    let source = CohortSource::Synthetic {
        patients: 60,
        seed: 8,
    };
    let results = report::write(ReportRequest {
        model_dir: &fused_dir,
        source: &source,
        seed: 3,
        cache: None,
        history: Some((trained.history.clone(), trained.best_epoch)),
    })
    .expect("report");
    assert_eq!(results.len(), 2, "the sibling tabular model is compared");
    assert_eq!(results[0].name, "tiny-fused");
    assert_eq!(results[1].name, "tiny-tabular");
    assert_eq!(results[0].eval.n, trained.split.test.len());
    let report_dir = fused_dir.join(report::REPORT_DIR);
    for png in ["roc.png", "confusion.png", "training.png", "gradcam.png"] {
        let bytes = std::fs::read(report_dir.join(png)).expect(png);
        assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 2000, "{png}");
    }
    let metrics: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(report_dir.join("metrics.json")).expect("metrics.json"),
    )
    .expect("JSON");
    assert_eq!(
        metrics["test"]["auc_macro"].as_f64(),
        Some(results[0].eval.auc_macro)
    );
    assert_eq!(metrics["history"].as_array().map(Vec::len), Some(3));
    let md = std::fs::read_to_string(report_dir.join("report.md")).expect("report.md");
    for row in [
        "| **tiny-fused** | CT + clinical variables |",
        "| tiny-tabular | clinical variables |",
        "| Bayes oracle | CT |",
    ] {
        assert!(md.contains(row), "{row} in\n{md}");
    }
    let recorded = ModelArtifacts::open(&fused_dir).expect("manifest").manifest;
    assert_eq!(
        recorded.metrics.get("auc_macro"),
        Some(&results[0].eval.auc_macro),
        "test metrics recorded in model.toml"
    );
    let wrong_seed = report::write(ReportRequest {
        model_dir: &fused_dir,
        source: &source,
        seed: 4,
        cache: None,
        history: None,
    });
    assert!(wrong_seed.is_err(), "a report on another split is refused");

    let inputs = Inputs::new(
        &samples,
        &trained.arch,
        trained.view,
        trained.tabular.as_ref(),
    )
    .expect("inputs");
    let expected = predict(&trained.network, &inputs, &trained.split.test).expect("predict");
    let artifacts = ModelArtifacts::open(dir.path()).expect("artifacts");
    let mut backend =
        CandleBackend::load(&artifacts, Device::Cpu).expect("backend loads the trained model");
    let spec = artifacts.manifest.tabular.as_ref().expect("tabular spec");
    for (k, &i) in trained.split.test.iter().enumerate() {
        let s = &samples[i];
        let sample = osteo_core::Sample {
            image: s.view.clone(),
            tabular: Some(
                spec.encode(&s.clinical, &osteo_core::features::Measured::NONE)
                    .expect("encode"),
            ),
        };
        let batch = Batch::stack(&artifacts.manifest.arch, &[sample]).expect("batch");
        let logits = backend.predict(&batch).expect("predict");
        let probs = osteo_core::backend::softmax(logits.data());
        for c in 0..3 {
            assert!(
                (f64::from(probs[c]) - expected[k][c]).abs() < 1e-5,
                "{}: class {c}",
                s.patient_id
            );
        }
    }
}

#[test]
fn two_stage_fusion_keeps_the_image_models_cnn_frozen() {
    let (view, samples) = tiny_cohort();
    let base = |kind| TrainConfig {
        epochs: 2,
        batch_size: 16,
        image_channels: vec![4, 8],
        progress: false,
        ..TrainConfig::new(kind, 3)
    };
    let image = train(&samples, &view, &base(ModelKind::Image)).expect("image model");
    let dir = tempfile::tempdir().expect("tempdir");
    let image_dir = dir.path().join("tiny-image");
    osteo_train::artifact::write_model(
        &image,
        ("tiny-image", "1"),
        provenance_for(3),
        Default::default(),
        &image_dir,
    )
    .expect("write");
    let fused = train(
        &samples,
        &view,
        &TrainConfig {
            image_from: Some(image_dir.clone()),
            ..base(ModelKind::Fused)
        },
    )
    .expect("two-stage fused model");
    let tensors = |varmap: &candle_nn::VarMap| {
        let data = varmap.data().lock().expect("lock");
        let mut out: Vec<(String, Vec<f32>)> = data
            .iter()
            .filter(|(n, _)| n.starts_with("image."))
            .map(|(n, v)| {
                let t = v.as_tensor().flatten_all().expect("flatten");
                (n.clone(), t.to_vec1::<f32>().expect("values"))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    };
    let (before, after) = (tensors(&image.varmap), tensors(&fused.varmap));
    assert!(!before.is_empty());
    assert_eq!(
        before, after,
        "the CNN, batch-norm statistics included, is unchanged"
    );
    assert!(fused.history.iter().all(|e| e.train_loss.is_finite()));

    // A CNN of another shape is refused with a clear error.
    let other = train(
        &samples,
        &view,
        &TrainConfig {
            image_from: Some(image_dir),
            image_channels: vec![4, 8, 8],
            ..base(ModelKind::Fused)
        },
    );
    let err = other.err().expect("mismatched CNN").to_string();
    assert!(err.contains("--image-from"), "{err}");
}

#[test]
fn a_fused_model_reads_the_attenuation_as_serving_measures_it() {
    let (view, mut samples) = tiny_cohort();
    let config = TrainConfig {
        epochs: 2,
        batch_size: 16,
        image_channels: vec![4, 8],
        progress: false,
        measured: true,
        ..TrainConfig::new(ModelKind::Fused, 3)
    };
    let err = train(&samples, &view, &config)
        .err()
        .expect("a cohort that was not measured is refused")
        .to_string();
    assert!(err.contains("without measuring"), "{err}");
    let tabular_only = TrainConfig {
        kind: ModelKind::Tabular,
        ..config.clone()
    };
    let err = train(&samples, &view, &tabular_only)
        .err()
        .expect("tabular");
    assert!(err.to_string().contains("fused models only"), "{err}");

    // Measured once, then read back from the cache.
    let cache = tempfile::tempdir().expect("cache");
    osteo_train::cohort::measure(&mut samples, Some(cache.path())).expect("measures");
    let first: Vec<_> = samples.iter().map(|s| s.measured).collect();
    assert!(
        first
            .iter()
            .all(|m| m.is_some_and(|m| m.lumbar_hu.is_some() && m.femoral_neck_hu.is_some())),
        "every phantom shows L1-L4 and the femoral necks"
    );
    let cached = std::fs::read_dir(cache.path())
        .expect("cache dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".measured.json"))
        .count();
    assert_eq!(cached, samples.len());
    for s in &mut samples {
        s.measured = None;
    }
    osteo_train::cohort::measure(&mut samples, Some(cache.path())).expect("from the cache");
    assert_eq!(
        samples.iter().map(|s| s.measured).collect::<Vec<_>>(),
        first
    );

    let trained = train(&samples, &view, &config).expect("trains on the measurement");
    let spec = trained.tabular.as_ref().expect("tabular spec");
    let names: Vec<&str> = spec.features.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        &names[13..],
        [
            "lumbar_trabecular_hu",
            "lumbar_trabecular_hu_missing",
            "femoral_neck_trabecular_hu",
            "femoral_neck_trabecular_hu_missing"
        ]
    );
    let lumbar = &spec.features[13];
    assert!(
        (50.0..250.0).contains(&lumbar.mean) && lumbar.std > 5.0,
        "normalised over the measured patients: {lumbar:?}"
    );
    // Training batches withhold the measurement from some patients; evaluation never does.
    let inputs = Inputs::new(&samples, &trained.arch, Some(view), Some(spec)).expect("inputs");
    let all: Vec<usize> = (0..samples.len()).collect();
    // Every training patient was measured, so the neck indicator encodes as 0, and 1 withheld.
    let necks_missing = |b: &Batch| {
        let t = b.tabular.as_ref().expect("tabular");
        (0..samples.len())
            .filter(|r| t.data()[r * 17 + 16] > 0.5)
            .count()
    };
    let plain = inputs.batch(&all, None).expect("batch");
    assert_eq!(necks_missing(&plain), 0, "every neck measured");
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(5);
    let augmented = inputs.batch(&all, Some(&mut rng)).expect("batch");
    let withheld = necks_missing(&augmented);
    assert!(
        (5..=40).contains(&withheld),
        "about a third of 60 patients lose their necks: {withheld}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let model_dir = dir.path().join("tiny-measured");
    let manifest = osteo_train::artifact::write_model(
        &trained,
        ("tiny-measured", "3"),
        provenance_for(3),
        Default::default(),
        &model_dir,
    )
    .expect("write");
    assert!(manifest.reads_measured());
    assert_eq!(manifest.version, "3");
    assert_eq!(
        manifest.arch.tabular.as_ref().map(|t| t.in_features),
        Some(17)
    );

    // Serving measures the patient's DICOM study as training measured its volume.
    let s = &samples[trained.split.test[0]];
    let osteo_train::cohort::Study::Phantom { seed, index } = s.study else {
        panic!("a synthetic patient");
    };
    let patient = osteo_phantom::TScoreModel::default().patient(seed, index);
    let (_, volume) =
        osteo_phantom::phantom_volume(&patient, &osteo_phantom::PhantomSpec::default());
    let study = dir.path().join("study");
    osteo_phantom::write_series(
        &volume,
        &osteo_phantom::SeriesIdentity::for_patient(&patient),
        &study,
    )
    .expect("DICOM series");
    let ingested = osteo_dicom::ingest(
        osteo_dicom::DicomSource::Path(study),
        &osteo_dicom::IngestOptions::default(),
    )
    .expect("ingest");
    let served_view = osteo_dicom::coronal_slab(&ingested.volume, &view).expect("view");
    let attenuation = osteo_pipeline::attenuation(&ingested.volume);
    let served = osteo_pipeline::input(
        &manifest,
        Some(&served_view),
        Some(&s.clinical),
        attenuation.as_ref(),
    )
    .expect("input")
    .tabular
    .expect("tabular");
    let measured = s.measured.expect("measured");
    let trained_row = spec.encode(&s.clinical, &measured).expect("encode");
    assert_eq!(served[..13], trained_row[..13], "clinical features");
    for k in 13..17 {
        assert!(
            (served[k] - trained_row[k]).abs() < 0.1,
            "feature {}: served {} trained {}",
            names[k],
            served[k],
            trained_row[k]
        );
    }
    // Without a measurement the features say so instead of failing the request.
    let unmeasured = osteo_pipeline::input(&manifest, Some(&served_view), Some(&s.clinical), None)
        .expect("input")
        .tabular
        .expect("tabular");
    assert_eq!(unmeasured[13..], [0.0, 1.0, 0.0, 1.0]);
}

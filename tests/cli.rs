//! End-to-end tests of the `osteo` binary: `dicom inspect`, `dicom view` and `synth`, on real and
//! synthetic input, including the error contract (exit 2, one `error:` line naming the file).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn osteo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_osteo"))
        .args(args)
        .output()
        .expect("run osteo")
}

fn testdata(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".cache/testdata")
        .join(rel);
    assert!(p.exists(), "{} missing: run scripts/setup.sh", p.display());
    p
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn inspect_json_prints_exactly_one_object_with_the_documented_fields() {
    let file = testdata("data_store/data/693_UNCR.dcm");
    let out = osteo(&["dicom", "inspect", s(&file), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(
        stdout.trim().lines().count(),
        1,
        "one line of JSON: {stdout}"
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("valid JSON");
    let keys: Vec<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    for k in [
        "modality",
        "slices",
        "rows",
        "columns",
        "spacing_mm",
        "hu",
        "transfer_syntaxes",
        "series_count",
    ] {
        assert!(keys.contains(&k), "missing {k} in {stdout}");
    }
    assert_eq!(v["modality"], "CT");
    assert_eq!(v["slices"], 1);
    assert_eq!(v["rows"], 512);
    assert_eq!(v["columns"], 512);
    // A single slice: z is SliceThickness (5 mm in this file).
    assert_eq!(v["spacing_mm"][0], 5.0);
    assert_eq!(v["spacing_mm"][1], 0.478516);
    assert_eq!(v["hu"]["min"], -3024.0);
    assert_eq!(v["hu"]["max"], 1468.0);
    assert!(v["hu"]["mean"].as_f64().expect("mean") < -1000.0);
    assert_eq!(v["transfer_syntaxes"][0], "1.2.840.10008.1.2.1");
    assert_eq!(v["series_count"], 1);

    // Enhanced multi-frame: slices counts frames.
    let out = osteo(&[
        "dicom",
        "inspect",
        s(&testdata("data_store/data/eCT_Supplemental.dcm")),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(v["slices"], 2);
    assert_eq!(v["spacing_mm"][0], 10.0);
}

fn assert_clean_error(out: &Output, must_name: &str) {
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit code (101 would be a panic)"
    );
    assert!(out.stdout.is_empty(), "nothing on stdout on error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(
        stderr.contains(must_name),
        "error must name {must_name}: {stderr}"
    );
}

#[test]
fn invalid_input_exits_2_with_one_line_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let random = dir.path().join("random.dcm");
    std::fs::write(
        &random,
        (0..5000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect::<Vec<u8>>(),
    )
    .expect("write");
    assert_clean_error(
        &osteo(&["dicom", "inspect", s(&random), "--json"]),
        "random.dcm",
    );

    let empty = dir.path().join("empty.dcm");
    std::fs::write(&empty, b"").expect("write");
    assert_clean_error(
        &osteo(&["dicom", "inspect", s(&empty), "--json"]),
        "empty.dcm",
    );

    let good = std::fs::read(testdata("data_store/data/693_J2KR.dcm")).expect("read");
    let truncated = dir.path().join("truncated.dcm");
    std::fs::write(&truncated, &good[..good.len() / 3]).expect("write");
    assert_clean_error(
        &osteo(&["dicom", "inspect", s(&truncated), "--json"]),
        "truncated.dcm",
    );
    assert_clean_error(
        &osteo(&[
            "dicom",
            "view",
            s(&truncated),
            "--out",
            s(&dir.path().join("x.png")),
        ]),
        "truncated.dcm",
    );

    let missing = dir.path().join("nope");
    assert_clean_error(&osteo(&["dicom", "inspect", s(&missing)]), "nope");
}

/// Three patients of seed 5 into `out`.
fn synth(out: &Path, dicom: bool) -> Output {
    let mut args = vec!["synth", "--patients", "3", "--seed", "5", "--out", s(out)];
    if dicom {
        args.push("--dicom");
    }
    osteo(&args)
}

#[test]
fn synth_writes_a_cohort_whose_studies_inspect_and_render() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = synth(dir.path(), true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rdr = csv::Reader::from_path(dir.path().join("cohort.csv")).expect("cohort.csv");
    let headers: Vec<String> = rdr
        .headers()
        .expect("headers")
        .iter()
        .map(String::from)
        .collect();
    assert_eq!(
        headers,
        [
            "patient_id",
            "age",
            "sex",
            "height_cm",
            "weight_kg",
            "prior_fragility_fracture",
            "glucocorticoids",
            "smoker",
            "rheumatoid_arthritis",
            "t_score",
            "grade",
            "study_dir",
            "trabecular_hu_T12",
            "trabecular_hu_L1",
            "trabecular_hu_L2",
            "trabecular_hu_L3",
            "trabecular_hu_L4",
            "trabecular_hu_L5",
            "trabecular_hu_femoral_neck_left",
            "trabecular_hu_femoral_neck_right",
            "calibration_hu",
            "contrast_phase"
        ]
    );
    let rows: Vec<csv::StringRecord> = rdr.records().map(|r| r.expect("row")).collect();
    assert_eq!(rows.len(), 3);
    for row in &rows {
        let t: f64 = row[9].parse().expect("t_score");
        let grade = &row[10];
        let expected = if t >= -1.0 {
            "normal"
        } else if t > -2.5 {
            "osteopenia"
        } else {
            "osteoporosis"
        };
        assert_eq!(grade, expected, "grade follows the WHO cut-offs");
        let study = dir.path().join(&row[11]);
        let out = osteo(&["dicom", "inspect", s(&study), "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(v["modality"], "CT");
        assert!(v["slices"].as_u64().expect("slices") > 50);
    }
    let png = dir.path().join("view.png");
    let out = osteo(&[
        "dicom",
        "view",
        s(&dir.path().join(&rows[0][11])),
        "--out",
        s(&png),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&png).expect("png written");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");

    // Same seed, same cohort; without --dicom the study_dir column is empty.
    let again = tempfile::tempdir().expect("tempdir");
    let out = synth(again.path(), false);
    assert!(out.status.success());
    let a = std::fs::read_to_string(dir.path().join("cohort.csv")).expect("read");
    let b = std::fs::read_to_string(again.path().join("cohort.csv")).expect("read");
    // Every column but study_dir (the twelfth) is the same.
    let strip = |t: &str| {
        t.lines()
            .map(|l| {
                let mut fields: Vec<&str> = l.split(',').collect();
                fields.remove(11);
                fields.join(",")
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&a), strip(&b));
    let row = b.lines().nth(1).expect("row");
    assert_eq!(row.split(',').nth(11), Some(""), "{row}");
}

#[test]
fn train_then_evaluate_json_reports_the_documented_fields() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("osteo-tabular-test");
    let cache = dir.path().join("views");
    let out = osteo(&[
        "train",
        "--kind",
        "tabular",
        "--synthetic",
        "300",
        "--seed",
        "4",
        "--epochs",
        "4",
        "--out",
        s(&model),
        "--cache",
        s(&cache),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "model.toml",
        "weights.safetensors",
        "report/metrics.json",
        "report/report.md",
        "report/roc.png",
        "report/confusion.png",
        "report/training.png",
        "report/reliability.png",
    ] {
        assert!(model.join(f).exists(), "{f} written");
    }
    // Training fits the operating point on the validation patients and reports it on test.
    let trained = osteo_core::ModelArtifacts::open(&model).expect("model.toml");
    let d = trained
        .manifest
        .decision
        .clone()
        .expect("[decision] fitted");
    assert_eq!((d.target_sensitivity, d.coverage), (0.9, 0.9));
    assert!(
        (40..=50).contains(&d.fitted_on),
        "about 15% of 300 patients validate: {}",
        d.fitted_on
    );
    assert!(d.temperature > 0.0 && d.set_threshold < 1.0, "{d:?}");
    for k in [
        "ece_calibrated",
        "refer_sensitivity",
        "set_coverage",
        "indeterminate_rate",
    ] {
        assert!(trained.manifest.metrics.contains_key(k), "{k} recorded");
    }
    let md = std::fs::read_to_string(model.join("report/report.md")).expect("report.md");
    assert!(
        md.contains("## Acting on a grade") && md.contains("(refer) |"),
        "{md}"
    );
    // The test patients' CT read again: the L1 thresholds and the subgroups.
    assert!(md.contains("| L1 ≤ 110 HU | osteoporosis |"), "{md}");
    assert!(
        md.contains("## Subgroups") && md.contains("| sex: F |"),
        "{md}"
    );
    assert!(
        !md.contains("## Where the model looks"),
        "a tabular model has no Grad-CAM"
    );
    assert!(
        !model.join("report/gradcam.png").exists(),
        "a tabular model has no Grad-CAM"
    );
    let manifest = std::fs::read_to_string(model.join("model.toml")).expect("manifest");
    assert!(
        manifest.contains("command = ") && manifest.contains("seed = 4"),
        "provenance recorded: {manifest}"
    );

    let out = osteo(&[
        "evaluate",
        "--model",
        s(&model),
        "--synthetic",
        "200",
        "--seed",
        "99",
        "--json",
        "--cache",
        s(&cache),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(stdout.trim().lines().count(), 1);
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(v["model"], "osteo-tabular-test");
    assert_eq!(v["kind"], "tabular");
    assert_eq!(v["patients"], 200);
    for k in ["normal", "osteopenia", "osteoporosis"] {
        let auc = v["auc"][k].as_f64().expect("per-class AUC");
        assert!((0.0..=1.0).contains(&auc));
    }
    let auc = v["auc_macro"].as_f64().expect("macro AUC");
    let oracle = v["oracle"]["auc_macro"]
        .as_f64()
        .expect("oracle on a synthetic cohort");
    assert!(
        auc > 0.5,
        "a trained tabular model beats chance on unseen patients: {auc}"
    );
    assert!(
        auc <= oracle + 0.05,
        "no model beats the Bayes oracle by more than sampling noise: {auc} vs {oracle}"
    );
    assert!(v["accuracy"].as_f64().is_some() && v["balanced_accuracy"].as_f64().is_some());

    // The report is rewritten from the model directory; a wrong seed names the right one.
    let md = model.join("report/report.md");
    std::fs::remove_file(&md).expect("remove report.md");
    let report = |seed: &str| {
        osteo(&[
            "report",
            "--model",
            s(&model),
            "--synthetic",
            "300",
            "--seed",
            seed,
            "--cache",
            s(&cache),
        ])
    };
    let out = report("4");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&md).expect("report.md rewritten");
    assert!(
        text.contains("| **osteo-tabular-test** | clinical variables |"),
        "{text}"
    );
    assert!(
        text.contains("| Bayes oracle | CT + clinical variables |"),
        "{text}"
    );
    assert_clean_error(&report("5"), "--seed 4");

    // `osteo calibrate` fits another operating point as a new version; the source keeps its own.
    let before = std::fs::read_to_string(model.join("model.toml")).expect("manifest");
    let recalibrated = dir.path().join("osteo-tabular-low-bmd");
    let calibrate = |out: &Path, seed: &str| {
        osteo(&[
            "calibrate",
            "--model",
            s(&model),
            "--synthetic",
            "300",
            "--seed",
            seed,
            "--refer-on",
            "low-bmd",
            "--target-sensitivity",
            "0.95",
            "--out",
            s(out),
            "--cache",
            s(&cache),
        ])
    };
    let out = calibrate(&recalibrated, "4");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(model.join("model.toml")).expect("manifest"),
        before,
        "the source model is unchanged"
    );
    let new = osteo_core::ModelArtifacts::open(&recalibrated).expect("new model.toml");
    new.verify_weights().expect("the weights were copied whole");
    assert_eq!(
        (new.manifest.name.as_str(), new.manifest.version.as_str()),
        ("osteo-tabular-low-bmd", "2")
    );
    let nd = new.manifest.decision.expect("[decision]");
    assert_eq!(nd.refer_on, osteo_core::ReferOn::LowBmd);
    assert_eq!(nd.target_sensitivity, 0.95);
    assert!(
        nd.low_bmd_threshold <= d.low_bmd_threshold,
        "a higher target lowers the bar"
    );
    assert!(
        recalibrated.join("model.onnx").exists()
            && recalibrated.join("report/reliability.png").exists()
    );
    assert_clean_error(&calibrate(&dir.path().join("other"), "5"), "--seed 4");
    assert_clean_error(&calibrate(&model, "4"), "--out must be a new directory");

    // Missing model directory: exit 2 with a clear message.
    assert_clean_error(
        &osteo(&[
            "evaluate",
            "--model",
            s(&dir.path().join("none")),
            "--synthetic",
            "5",
            "--json",
        ]),
        "model.toml",
    );
}

#[test]
fn predict_grades_a_study_and_writes_the_grad_cam_overlay() {
    use osteo_core::{ModelKind, ViewSpec};
    use osteo_train::cohort::{CohortSource, load};
    use osteo_train::train::{TrainConfig, train};

    let dir = tempfile::tempdir().expect("tempdir");
    // A tiny fused model on a coarse 32x32 view, trained through the library.
    let view = ViewSpec {
        height: 32,
        width: 32,
        pixel_mm: 12.0,
        ..ViewSpec::default()
    };
    let samples = load(
        &CohortSource::Synthetic {
            patients: 40,
            seed: 6,
        },
        Some(&view),
        None,
    )
    .expect("cohort");
    let config = TrainConfig {
        epochs: 2,
        batch_size: 16,
        image_channels: vec![4, 8],
        progress: false,
        ..TrainConfig::new(ModelKind::Fused, 6)
    };
    let trained = train(&samples, &view, &config).expect("train");
    let model = dir.path().join("tiny-fused");
    osteo_train::artifact::write_model(
        &trained,
        ("tiny-fused", "1"),
        Default::default(),
        Default::default(),
        &model,
    )
    .expect("write");

    let out = synth(dir.path(), true);
    assert!(out.status.success());
    let study = dir.path().join("studies/S5-P000000");
    let png = dir.path().join("cam.png");
    let out = osteo(&[
        "predict",
        "--model",
        s(&model),
        "--dicom",
        s(&study),
        "--age",
        "70",
        "--sex",
        "F",
        "--height-cm",
        "158",
        "--weight-kg",
        "55",
        "--smoker",
        "true",
        "--json",
        "--explain-png",
        s(&png),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let grade = v["grade"].as_str().expect("grade");
    assert!(["normal", "osteopenia", "osteoporosis"].contains(&grade));
    let total: f64 = ["normal", "osteopenia", "osteoporosis"]
        .iter()
        .map(|k| v["probabilities"][k].as_f64().expect("p"))
        .sum();
    assert!(
        (total - 1.0).abs() < 1e-5,
        "probabilities sum to 1: {total}"
    );
    assert_eq!(
        v["probabilities"][grade].as_f64().map(|p| p >= 1.0 / 3.0),
        Some(true),
        "the grade is the most probable class"
    );
    let bytes = std::fs::read(&png).expect("overlay written");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    // IHDR: width and height (32 x 4 each).
    assert_eq!(
        u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]),
        128
    );

    // An image model without --dicom, and out-of-range clinical input: exit 2, actionable message.
    assert_clean_error(
        &osteo(&[
            "predict",
            "--model",
            s(&model),
            "--age",
            "70",
            "--sex",
            "F",
            "--height-cm",
            "158",
            "--weight-kg",
            "55",
        ]),
        "--dicom",
    );
    assert_clean_error(
        &osteo(&[
            "predict",
            "--model",
            s(&model),
            "--dicom",
            s(&study),
            "--age",
            "70",
            "--sex",
            "F",
            "--height-cm",
            "1.58",
            "--weight-kg",
            "55",
        ]),
        "height_cm",
    );
}

#[test]
fn predict_measures_the_vertebrae_within_5_hu_of_the_truth_synth_writes() {
    // Real DICOM files through the real reader: six phantoms of a seed no model saw.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = osteo(&[
        "synth",
        "--patients",
        "6",
        "--seed",
        "4242",
        "--dicom",
        "--out",
        s(dir.path()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cohort = csv::Reader::from_path(dir.path().join("cohort.csv")).expect("cohort.csv");
    let headers = cohort.headers().expect("header").clone();
    for column in [
        "trabecular_hu_T12",
        "trabecular_hu_L5",
        "trabecular_hu_femoral_neck_left",
        "trabecular_hu_femoral_neck_right",
        "calibration_hu",
        "contrast_phase",
    ] {
        assert!(
            headers.iter().any(|h| h == column),
            "cohort.csv has {column}"
        );
    }
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/osteo-fused-v2");
    let (mut errors, mut neck_errors) = (Vec::new(), Vec::new());
    for row in cohort.deserialize::<osteo_train::cohort::CohortRow>() {
        let row = row.expect("row");
        let study = dir
            .path()
            .join(row.study_dir.as_deref().expect("study_dir"));
        let out = osteo(&[
            "predict",
            "--json",
            "--model",
            s(&model),
            "--dicom",
            s(&study),
            "--clinical-from-dicom",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("predict --json prints JSON");
        let measured = v["vertebrae"].as_array().expect("vertebrae");
        let levels: Vec<&str> = measured
            .iter()
            .filter_map(|m| m["level"].as_str())
            .collect();
        assert_eq!(levels, ["T12", "L1", "L2", "L3", "L4", "L5"], "{v}");
        assert_eq!(v["attenuation_calibration"]["sacrum_found"], true);
        for (m, truth) in measured.iter().zip(row.trabecular_truth()) {
            assert_eq!(m["level_uncertain"], false, "{m}");
            let hu = m["trabecular_hu"].as_f64().expect("HU");
            errors.push((hu - truth.expect("truth")).abs());
        }
        // Both femoral necks against the truth columns.
        for (side, truth) in [
            ("left", row.trabecular_hu_femoral_neck_left),
            ("right", row.trabecular_hu_femoral_neck_right),
        ] {
            let neck = v["femoral_necks"]
                .as_array()
                .and_then(|n| n.iter().find(|n| n["side"] == side))
                .unwrap_or_else(|| panic!("the {side} femoral neck: {v}"));
            let hu = neck["trabecular_hu"].as_f64().expect("HU");
            neck_errors.push((hu - truth.expect("truth")).abs());
        }
        let offset = v["attenuation_calibration"]["offset_hu"]
            .as_f64()
            .expect("offset");
        assert!(
            (offset - row.calibration_hu.expect("offset truth")).abs() < 3.0,
            "offset {offset} vs {:?}",
            row.calibration_hu
        );
    }
    errors.sort_by(f64::total_cmp);
    let median = errors[errors.len() / 2];
    let p95 = errors[((errors.len() - 1) as f64 * 0.95).round() as usize];
    eprintln!(
        "{} levels: |calibrated - true| median {median:.2} HU, 95th percentile {p95:.2} HU",
        errors.len()
    );
    assert!(median <= 5.0, "median absolute error {median:.2} HU");
    neck_errors.sort_by(f64::total_cmp);
    let neck = neck_errors[neck_errors.len() / 2];
    eprintln!(
        "{} femoral necks: median {neck:.2} HU, largest {:.2} HU",
        neck_errors.len(),
        neck_errors[neck_errors.len() - 1]
    );
    assert!(
        neck <= 5.0,
        "femoral neck median absolute error {neck:.2} HU"
    );
}

#[test]
fn evaluate_against_another_version_gives_paired_differences_on_the_measured_patients() {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let cache = tempfile::tempdir().expect("cache");
    let evaluate = |model: &str, against: &str| {
        let out = osteo(&[
            "evaluate",
            "--model",
            s(&models.join(model)),
            "--against",
            s(&models.join(against)),
            "--synthetic",
            "40",
            "--seed",
            "515",
            "--json",
            "--cache",
            s(cache.path()),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON")
    };
    // The model that reads the attenuation: the cohort is measured (and cached) for it.
    let v = evaluate("osteo-fused-v3", "osteo-fused-v2");
    assert_eq!(v["against"]["model"], "osteo-fused-v2");
    let d = &v["against"]["difference"];
    let own = v["auc_macro"].as_f64().expect("auc");
    let theirs = v["against"]["test"]["auc_macro"]
        .as_f64()
        .expect("their auc");
    let diff = d["auc_macro"].as_f64().expect("difference");
    assert!((diff - (own - theirs)).abs() < 1e-9, "{v}");
    let (low, high) = (
        d["auc_macro_ci95"]["low"].as_f64().expect("low"),
        d["auc_macro_ci95"]["high"].as_f64().expect("high"),
    );
    assert!(low <= diff && diff <= high, "{d}");
    let measured = std::fs::read_dir(cache.path())
        .expect("cache")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".measured.json"))
        .count();
    assert_eq!(measured, 40, "every patient's measurement cached");
    // A model against itself differs by nothing.
    let same = evaluate("osteo-fused-v3", "osteo-fused-v3");
    assert_eq!(same["against"]["difference"]["auc_macro"], 0.0);
    assert_eq!(same["against"]["difference"]["accuracy"], 0.0);
}

//! Results as DICOM: `osteo predict --sr-out` writes a Comprehensive SR into the source study,
//! checked by dciodvfy (no errors) and by Pixelmed's DicomSRValidator (the IHE AI Results
//! validator: no error, nothing outside the template) for every model kind and backend, read
//! back by dcmtk's dsrdump, pydicom and highdicom (grade code, probabilities, algorithm, patient
//! and study copied, new series, the graded series as evidence and as the source images).

use crate::common;
use crate::common::inproc::{InProc, registry};
use osteo_proto::v1 as pb;
use std::path::Path;
use std::process::Command;
use tonic::Code;

/// Runs a command and returns (success, stdout + stderr).
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("run");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn predict_writes_a_valid_structured_report_in_the_source_study() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = common::study(&dir.path().join("study"));
    let study = files[0].parent().expect("dir");
    let sr = dir.path().join("sr.dcm");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (ok, out) = run(Command::new(env!("CARGO_BIN_EXE_osteo"))
        .args(["predict", "--json", "--model"])
        .arg(root.join("models/osteo-fused-v1"))
        .arg("--dicom")
        .arg(study)
        .args(common::CLINICAL_FLAGS)
        .arg("--sr-out")
        .arg(&sr));
    assert!(ok, "{out}");
    let result: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");

    // dciodvfy: the Comprehensive SR IOD with no error (warnings name the private scheme).
    let (_, report) = run(Command::new("dciodvfy").arg(&sr));
    assert!(report.contains("ComprehensiveSR"), "{report}");
    assert!(!report.contains("Error"), "{report}");

    // dsrdump reads the tree.
    let (ok, dump) = run(Command::new("dsrdump").arg("+Pl").arg(&sr));
    assert!(ok, "{dump}");
    assert!(dump.contains("Imaging Measurement Report"), "{dump}");
    assert!(dump.contains("\"Finding\")=("), "{dump}");
    assert!(
        dump.contains("Algorithm Name\")=\"osteo-fused-v1\""),
        "{dump}"
    );
    assert!(dump.contains("not for diagnosis"), "{dump}");

    // pydicom: codes, values, copied modules, references.
    let python = root.join(".cache/venv/bin/python");
    let (ok, read) = run(Command::new(python).arg("-c").arg(
        r#"
import json, sys, pydicom
sr = pydicom.dcmread(sys.argv[1])
src = [pydicom.dcmread(f) for f in sys.argv[2:]]
def walk(items, out):
    for it in items:
        out.append(it)
        walk(getattr(it, "ContentSequence", []), out)
    return out
items = walk(sr.ContentSequence, [])
name = lambda it: it.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in it else ""
finding = next(it for it in items if name(it) == "Finding").ConceptCodeSequence[0]
probs = {name(it): float(it.MeasuredValueSequence[0].NumericValue) for it in items if it.ValueType == "NUM"}
ev = sr.CurrentRequestedProcedureEvidenceSequence[0]
refs = sorted(r.ReferencedSOPInstanceUID for r in ev.ReferencedSeriesSequence[0].ReferencedSOPSequence)
print(json.dumps({
  "sop_class": sr.SOPClassUID,
  "modality": sr.Modality,
  "finding": [finding.CodeValue, finding.CodingSchemeDesignator, finding.CodeMeaning],
  "probabilities": probs,
  "patient_id_copied": sr.PatientID == src[0].PatientID,
  "patient_name_copied": str(sr.PatientName) == str(src[0].PatientName),
  "same_study": sr.StudyInstanceUID == src[0].StudyInstanceUID == ev.StudyInstanceUID,
  "new_series": sr.SeriesInstanceUID != src[0].SeriesInstanceUID,
  "evidence_series": ev.ReferencedSeriesSequence[0].SeriesInstanceUID == src[0].SeriesInstanceUID,
  "evidence_complete": refs == sorted(s.SOPInstanceUID for s in src),
  "template": sr.ContentTemplateSequence[0].TemplateIdentifier,
}))
"#,
    ).arg(&sr).args(&files));
    assert!(ok, "{read}");
    let v: serde_json::Value = serde_json::from_str(read.trim()).expect("JSON");
    assert_eq!(v["sop_class"], "1.2.840.10008.5.1.4.1.1.88.33");
    assert_eq!(v["modality"], "SR");
    let grade = result["grade"].as_str().expect("grade");
    assert_eq!(v["finding"], grade_code(grade), "{v}");
    assert_probabilities(&v["probabilities"], &result, SR_PROBABILITIES, "predict");
    for key in [
        "patient_id_copied",
        "patient_name_copied",
        "same_study",
        "new_series",
        "evidence_series",
        "evidence_complete",
    ] {
        assert_eq!(v[key], true, "{key}: {v}");
    }
    assert_eq!(v["template"], "1500");
}

#[test]
fn an_sr_and_a_bundle_on_real_ct_attributes_pass_the_validators() {
    // A real abdominal slice (pydicom-data's explicit_VR-UN.dcm: JPEG 2000, every attribute
    // UN) stacked into a 300 mm series the quality gate accepts.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("tempdir");
    let series = dir.path().join("series");
    let real = root.join(".cache/testdata/data_store/data/explicit_VR-UN.dcm");
    assert!(
        real.exists(),
        "real DICOM test data missing: run scripts/setup.sh"
    );
    let (ok, out) = run(Command::new(root.join(".cache/venv/bin/python"))
        .arg(root.join("tests/python/stack_slice.py"))
        .arg(&real)
        .arg(&series)
        .args(["61", "5"]));
    assert!(ok, "{out}");
    let (sr, fhir) = (dir.path().join("sr.dcm"), dir.path().join("bundle.json"));
    let (ok, out) = run(Command::new(env!("CARGO_BIN_EXE_osteo"))
        .args(["predict", "--json", "--model"])
        .arg(root.join("models/osteo-fused-v1"))
        .arg("--dicom")
        .arg(&series)
        .args(common::CLINICAL_FLAGS)
        .arg("--sr-out")
        .arg(&sr)
        .arg("--fhir-out")
        .arg(&fhir));
    assert!(ok, "{out}");
    let result: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_valid(&sr, "ComprehensiveSR");
    common::assert_air_valid(&[&sr]);
    let (ok, read) = run(Command::new(root.join(".cache/venv/bin/python"))
        .arg(root.join("tests/python/read_sr.py"))
        .arg(&sr));
    assert!(ok, "{read}");
    let v: serde_json::Value = serde_json::from_str(read.trim()).expect("JSON");
    let grade = grade_code(result["grade"].as_str().expect("grade"));
    assert_eq!((&v["finding"], &v["grade"][0]), (&grade, &grade), "{v}");
    assert_probabilities(&v["probabilities"], &result, SR_PROBABILITIES, "real CT");
    assert_eq!(v["source_images"].as_array().map(Vec::len), Some(61));
    let study_uid = osteo_dicom::instance_identity(&real, &Default::default())
        .expect("identity")
        .study_uid;
    let checked = common::fhir_checked(&[&fhir]);
    assert_fhir(
        &checked[0],
        "osteo-fused-v1",
        "ort",
        &result,
        Some(&study_uid),
    );
}

/// The SR's probability measurements by meaning, with the grade each belongs to.
const SR_PROBABILITIES: [(&str, &str); 3] = [
    ("Probability of normal bone density", "normal"),
    ("Probability of osteopenia", "osteopenia"),
    ("Probability of osteoporosis", "osteoporosis"),
];

/// The probabilities `read` (by `names`' first element) are `result`'s (by grade) to 1e-6.
fn assert_probabilities(
    read: &serde_json::Value,
    result: &serde_json::Value,
    names: [(&str, &str); 3],
    what: &str,
) {
    for (name, grade) in names {
        let got = read[name].as_f64().expect("probability");
        let want = result["probabilities"][grade]
            .as_f64()
            .expect("probability");
        assert!(
            (got - want).abs() <= 1e-6,
            "{what}, {name}: {got} vs {want}"
        );
    }
}

/// The expected finding code of a grade.
fn grade_code(grade: &str) -> serde_json::Value {
    match grade {
        "normal" => serde_json::json!(["17621005", "SCT", "Normal"]),
        "osteopenia" => serde_json::json!(["312894000", "SCT", "Osteopenia"]),
        _ => serde_json::json!(["64859006", "SCT", "Osteoporosis"]),
    }
}

#[test]
fn every_model_and_backend_writes_an_sr_that_passes_the_ihe_air_validator_and_reads_in_highdicom() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = common::study(&dir.path().join("study"));
    let study = files[0].parent().expect("dir");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut written = Vec::new();
    for model in ["osteo-fused-v1", "osteo-image-v1", "osteo-tabular-v1"] {
        for backend in ["ort", "candle"] {
            let sr = dir.path().join(format!("{model}-{backend}.dcm"));
            let fhir = dir.path().join(format!("{model}-{backend}.json"));
            let (ok, out) = run(Command::new(env!("CARGO_BIN_EXE_osteo"))
                .args(["predict", "--json", "--backend", backend, "--model"])
                .arg(root.join("models").join(model))
                .arg("--dicom")
                .arg(study)
                .arg("--clinical-from-dicom")
                .arg("--sr-out")
                .arg(&sr)
                .arg("--fhir-out")
                .arg(&fhir));
            assert!(ok, "{model} on {backend}: {out}");
            let result: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
            let (_, report) = run(Command::new("dciodvfy").arg(&sr));
            assert!(
                report.contains("ComprehensiveSR") && !report.contains("Error"),
                "{model} on {backend}: {report}"
            );
            written.push((sr, model, result, fhir));
        }
    }

    // Pixelmed's DicomSRValidator, its rules compiled once for all the files.
    common::assert_air_valid(&written.iter().map(|(sr, ..)| sr).collect::<Vec<_>>());

    // highdicom reads each as a TID 1500 measurement report.
    let (ok, read) = run(Command::new(root.join(".cache/venv/bin/python"))
        .arg(root.join("tests/python/read_sr.py"))
        .args(written.iter().map(|(sr, ..)| sr)));
    assert!(ok, "{read}");
    let mut sources: Vec<String> = files
        .iter()
        .map(|f| {
            osteo_dicom::instance_identity(f, &Default::default())
                .expect("identity")
                .sop_instance_uid
        })
        .collect();
    sources.sort();
    for (line, (_, model, result, _)) in read.lines().zip(&written) {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON");
        assert_eq!(v["report"], "MeasurementReport", "{v}");
        // One group for the grade, one per vertebral body measured (models that read CT).
        let vertebrae = result["vertebrae"].as_array().cloned().unwrap_or_default();
        let necks = result["femoral_necks"].as_array().map_or(0, Vec::len);
        assert_eq!(v["groups"], 1 + vertebrae.len() + necks, "{v}");
        assert_eq!(necks, if model.contains("tabular") { 0 } else { 2 });
        assert_eq!(
            vertebrae.len(),
            if model.contains("tabular") { 0 } else { 6 }
        );
        for (g, want) in v["vertebrae"]
            .as_array()
            .expect("groups")
            .iter()
            .zip(&vertebrae)
        {
            assert_eq!(g[0][1], "SCT", "{g}");
            assert_eq!(
                g[0][2],
                format!("{} vertebra", want["level"].as_str().unwrap_or(""))
            );
            let hu = g[1][0].as_f64().expect("HU");
            assert!((hu - want["trabecular_hu"].as_f64().unwrap_or(f64::NAN)).abs() < 1e-3);
            assert_eq!(g[2], serde_json::json!(["[hnsf'U]"]), "{g}");
        }
        let grade = grade_code(result["grade"].as_str().expect("grade"));
        assert_eq!(v["finding"], grade, "{v}");
        assert_eq!(v["grade"], serde_json::json!([grade]), "{v}");
        assert_probabilities(&v["probabilities"], result, SR_PROBABILITIES, model);
        assert_eq!(v["algorithm_name"], serde_json::json!([model]), "{v}");
        assert_eq!(v["algorithm_version"], serde_json::json!(["1"]), "{v}");
        let backend = result["backend"].as_str().expect("backend");
        assert_eq!(
            v["algorithm_parameters"],
            serde_json::json!([
                format!("backend={backend}"),
                "device=cpu",
                format!("weights_blake3={}", common::weights_digest(model)),
                format!("osteoserve={}", env!("CARGO_PKG_VERSION")),
            ]),
            "{v}"
        );
        assert_eq!(v["source_images"], serde_json::json!(sources), "{model}");
        assert_eq!(
            v["statement"],
            serde_json::json!([
                "This result comes from a model trained on synthetic data. It is not for diagnosis."
            ])
        );
    }

    // The FHIR Bundles, validated against FHIR R4 by fhir.resources.
    let study_uid = osteo_dicom::instance_identity(&files[0], &Default::default())
        .expect("identity")
        .study_uid;
    let bundles: Vec<&std::path::PathBuf> = written.iter().map(|(.., f)| f).collect();
    for (line, (_, model, result, _)) in common::fhir_checked(&bundles).iter().zip(&written) {
        let backend = result["backend"].as_str().expect("backend");
        assert_fhir(line, model, backend, result, Some(&study_uid));
        assert_eq!(
            line["subject"],
            common::PATIENT_ID,
            "the study's own PatientID"
        );
    }
}

/// A Bundle as read by check_fhir.py states `result` (grade, probabilities) of `model` on
/// `backend`, its provenance, and the study `study_uid` when there is one.
fn assert_fhir(
    v: &serde_json::Value,
    model: &str,
    backend: &str,
    result: &serde_json::Value,
    study_uid: Option<&str>,
) {
    assert_eq!(v["bundle_type"], "collection", "{v}");
    // The report, the grade and its three probabilities, one Observation per vertebral body
    // measured, the Device.
    let vertebrae = result["vertebrae"].as_array().cloned().unwrap_or_default();
    let necks = result["femoral_necks"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut resources = vec!["DiagnosticReport"; 1];
    resources.extend(std::iter::repeat_n(
        "Observation",
        4 + vertebrae.len() + necks.len(),
    ));
    resources.push("Device");
    assert_eq!(v["resources"], serde_json::json!(resources), "{v}");
    let levels: Vec<String> = vertebrae
        .iter()
        .map(|m| format!("{} vertebra", m["level"].as_str().unwrap_or("")))
        .chain(
            necks
                .iter()
                .map(|_| osteo_dicom::sr::PROXIMAL_FEMUR.2.to_string()),
        )
        .collect();
    let stated: Vec<&str> = v["vertebrae"]
        .as_array()
        .map(|a| a.iter().filter_map(|o| o[1].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(stated, levels, "{v}");
    assert_eq!(
        v["report_code"],
        serde_json::json!([
            "http://dicom.nema.org/resources/ontology/DCM",
            "126000",
            "Imaging Measurement Report"
        ])
    );
    assert_eq!(
        v["imaging_study"],
        serde_json::json!(
            study_uid
                .map(|u| format!("urn:oid:{u}"))
                .into_iter()
                .collect::<Vec<_>>()
        ),
        "{v}"
    );
    let grade = grade_code(result["grade"].as_str().expect("grade"));
    let fhir_grade = serde_json::json!([[
        match grade[1].as_str() {
            Some("SCT") => "http://snomed.info/sct",
            _ => "",
        },
        grade[0],
        grade[2]
    ]]);
    assert_eq!(v["grade"], fhir_grade, "{v}");
    let codes = [
        ("P-NORMAL", "normal"),
        ("P-OSTEOPENIA", "osteopenia"),
        ("P-OSTEOPOROSIS", "osteoporosis"),
    ];
    assert_probabilities(&v["probabilities"], result, codes, model);
    assert_eq!(v["units"], serde_json::json!(["1"]));
    assert_eq!(v["performer_is_device"], true);
    assert_eq!(v["observations_by_device"], true);
    assert_eq!(v["device_name"], serde_json::json!([model]));
    assert_eq!(
        v["device_versions"],
        serde_json::json!({
            "model version": "1",
            "weights BLAKE3": common::weights_digest(model),
            "OsteoServe": env!("CARGO_PKG_VERSION"),
        })
    );
    assert_eq!(
        v["device_properties"],
        serde_json::json!({"backend": backend, "device": "cpu"})
    );
    assert_eq!(
        v["notes"],
        serde_json::json!([osteo_pipeline::fhir::SYNTHETIC_NOTE])
    );
}

/// dciodvfy's verdict on a file: the IOD it recognised must appear and no error.
fn assert_valid(file: &Path, iod: &str) {
    let (_, report) = run(Command::new("dciodvfy").arg(file));
    assert!(report.contains(iod), "{report}");
    assert!(!report.contains("Error"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classify_and_explain_return_the_sr_and_the_grad_cam_secondary_capture() {
    // One ingest thread: uploads still work (ingest.threads bounds the pool).
    let server = InProc::start(
        "[ingest]\nthreads = 1\n",
        &[
            ("osteo-fused-v1", "backends = [\"ort\"]"),
            ("osteo-tabular-v1", "backends = [\"ort\"]"),
        ],
        registry(),
    )
    .await;
    let mut c = server.client().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let files = common::study(&dir.path().join("study"));
    let handle = common::upload(&mut c, &common::read_all(&files), 256 << 10).await;
    let study = || {
        Some(pb::StudyRef {
            source: Some(pb::study_ref::Source::Study(handle.clone())),
        })
    };
    let classified = c
        .classify(pb::ClassifyRequest {
            study: study(),
            clinical: Some(common::clinical()),
            dicom_outputs: true,
            fhir_outputs: true,
            ..Default::default()
        })
        .await
        .expect("classify")
        .into_inner();
    let explained = c
        .explain(pb::ExplainRequest {
            study: study(),
            clinical: Some(common::clinical()),
            dicom_outputs: true,
            fhir_outputs: true,
            ..Default::default()
        })
        .await
        .expect("explain")
        .into_inner();
    // The FHIR Bundles of both, referencing the uploaded study.
    let study_uid = osteo_dicom::instance_identity(&files[0], &Default::default())
        .expect("identity")
        .study_uid;
    let explained_classification = explained.classification.clone().expect("classification");
    let answers = [&classified, &explained_classification];
    let bundles: Vec<std::path::PathBuf> = answers
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let path = dir.path().join(format!("bundle-{i}.json"));
            std::fs::write(&path, &r.fhir_bundle).expect("write");
            path
        })
        .collect();
    let checked = common::fhir_checked(&bundles.iter().collect::<Vec<_>>());
    for (v, r) in checked.iter().zip(answers) {
        let result = osteo_client::report::classification(r);
        assert_fhir(v, "osteo-fused-v1", "ort", &result, Some(&study_uid));
    }
    let sr = dir.path().join("sr.dcm");
    let explain_sr = dir.path().join("explain-sr.dcm");
    let sc = dir.path().join("sc.dcm");
    std::fs::write(&sr, &classified.dicom_sr).expect("write");
    let e = explained.classification.clone().expect("classification");
    std::fs::write(&explain_sr, &e.dicom_sr).expect("write");
    std::fs::write(&sc, &explained.dicom_secondary_capture).expect("write");
    assert_valid(&sr, "ComprehensiveSR");
    assert_valid(&explain_sr, "ComprehensiveSR");
    common::assert_air_valid(&[&sr, &explain_sr]);
    assert_valid(&sc, "SCImage");

    // The SC's pixels are the overlay PNG's; both results belong to the source study, in new
    // series of their own.
    let decoder = png::Decoder::new(std::io::Cursor::new(
        explained.gradcam.clone().expect("gradcam").overlay_png,
    ));
    let mut reader = decoder.read_info().expect("png");
    let mut png_pixels = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut png_pixels).expect("frame");
    png_pixels.truncate(info.buffer_size());
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/venv/bin/python");
    let (ok, read) = run(Command::new(python)
        .arg("-c")
        .arg(
            r#"
import json, sys, pydicom
sr, sc, src = (pydicom.dcmread(f) for f in sys.argv[1:4])
print(json.dumps({
  "rows": sc.Rows, "columns": sc.Columns, "samples": sc.SamplesPerPixel,
  "photometric": sc.PhotometricInterpretation, "modality": sc.Modality,
  "pixels": sc.PixelData.hex(),
  "same_study": sc.StudyInstanceUID == sr.StudyInstanceUID == src.StudyInstanceUID,
  "series_differ": len({sc.SeriesInstanceUID, sr.SeriesInstanceUID, src.SeriesInstanceUID}) == 3,
  "sources": len(sc.SourceImageSequence),
  "patient": sc.PatientID == src.PatientID,
  "description": sc.DerivationDescription,
}))
"#,
        )
        .arg(&sr)
        .arg(&sc)
        .arg(&files[0]));
    assert!(ok, "{read}");
    let v: serde_json::Value = serde_json::from_str(read.trim()).expect("JSON");
    assert_eq!(
        (v["rows"].as_u64(), v["columns"].as_u64()),
        (Some(256), Some(256))
    );
    assert_eq!(v["samples"], 3);
    assert_eq!(v["photometric"], "RGB");
    assert_eq!(v["modality"], "OT");
    assert_eq!(
        v["pixels"].as_str().map(str::len),
        Some(png_pixels.len() * 2)
    );
    let hex: String = png_pixels.iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        v["pixels"] == hex.as_str(),
        "the SC's pixels are the overlay PNG's"
    );
    assert_eq!(v["same_study"], true);
    assert_eq!(v["series_differ"], true);
    assert_eq!(v["sources"].as_u64(), Some(files.len() as u64));
    assert_eq!(v["patient"], true);
    let description = v["description"].as_str().unwrap_or_default();
    assert!(description.contains("not for diagnosis"), "{v}");
    assert!(
        description.contains(&format!(
            "osteo-fused-v1 v1 on ort (cpu), weights BLAKE3 {}, OsteoServe {}",
            common::weights_digest("osteo-fused-v1"),
            env!("CARGO_PKG_VERSION")
        )),
        "the SC names the exact weights: {v}"
    );

    // Without a study there is nothing to write into.
    let e = c
        .classify(pb::ClassifyRequest {
            clinical: Some(common::clinical()),
            model: "osteo-tabular-v1".into(),
            dicom_outputs: true,
            ..Default::default()
        })
        .await
        .expect_err("no study");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("dicom_outputs"), "{}", e.message());
    // A FHIR Bundle needs none: it references no study then, and no patient.
    let tabular = c
        .classify(pb::ClassifyRequest {
            clinical: Some(common::clinical()),
            model: "osteo-tabular-v1".into(),
            fhir_outputs: true,
            ..Default::default()
        })
        .await
        .expect("classify")
        .into_inner();
    let path = dir.path().join("tabular.json");
    std::fs::write(&path, &tabular.fhir_bundle).expect("write");
    let v = &common::fhir_checked(&[&path])[0];
    let result = osteo_client::report::classification(&tabular);
    assert_fhir(v, "osteo-tabular-v1", "ort", &result, None);
    assert_eq!(v["subject"], serde_json::Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_and_the_server_grade_a_study_alike_and_write_the_same_report() {
    let server = InProc::start(
        "",
        &[("osteo-fused-v1", "backends = [\"ort\"]")],
        registry(),
    )
    .await;
    let mut c = server.client().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let files = common::study(&dir.path().join("study"));
    let handle = common::upload(&mut c, &common::read_all(&files), 256 << 10).await;
    let served = c
        .classify(pb::ClassifyRequest {
            study: Some(pb::StudyRef {
                source: Some(pb::study_ref::Source::Study(handle)),
            }),
            // The values of common::CLINICAL_FLAGS.
            clinical: Some(pb::ClinicalVariables {
                smoker: None,
                ..common::clinical()
            }),
            dicom_outputs: true,
            ..Default::default()
        })
        .await
        .expect("classify")
        .into_inner();
    let served_sr = dir.path().join("served.dcm");
    std::fs::write(&served_sr, &served.dicom_sr).expect("write");

    let local_sr = dir.path().join("local.dcm");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (ok, out) = run(Command::new(env!("CARGO_BIN_EXE_osteo"))
        .args(["predict", "--json", "--backend", "ort", "--model"])
        .arg(root.join("models/osteo-fused-v1"))
        .arg("--dicom")
        .arg(files[0].parent().expect("dir"))
        .args(common::CLINICAL_FLAGS)
        .arg("--sr-out")
        .arg(&local_sr));
    assert!(ok, "{out}");
    let local: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");

    // The same probabilities, to the last bit of an f32.
    let p = served.probabilities.expect("probabilities");
    for (key, value) in [
        ("normal", p.normal),
        ("osteopenia", p.osteopenia),
        ("osteoporosis", p.osteoporosis),
    ] {
        let l = local["probabilities"][key].as_f64().expect("probability") as f32;
        assert_eq!(l.to_bits(), value.to_bits(), "{key}: {l} vs {value}");
    }
    let grade = pb::Grade::try_from(served.grade).expect("grade");
    let name = grade
        .as_str_name()
        .trim_start_matches("GRADE_")
        .to_lowercase();
    assert_eq!(local["grade"].as_str(), Some(name.as_str()));

    // The same report, element by element, apart from generated UIDs and the times written.
    let python = root.join(".cache/venv/bin/python");
    let (ok, diff) = run(Command::new(python)
        .arg("-c")
        .arg(
            r#"
import json, sys, pydicom
a, b = (pydicom.dcmread(f).to_json_dict() for f in sys.argv[1:3])
SKIP = {"UI", "DA", "TM", "DT"}
def compare(x, y, path, out):
    for tag in sorted(set(x) | set(y)):
        if tag not in x or tag not in y:
            out.append(path + tag + " only in one")
            continue
        ex, ey = x[tag], y[tag]
        if ex.get("vr") != ey.get("vr"):
            out.append(path + tag + " VR differs")
        elif ex.get("vr") in SKIP:
            continue
        elif ex.get("vr") == "SQ":
            ix, iy = ex.get("Value", []), ey.get("Value", [])
            if len(ix) != len(iy):
                out.append(path + tag + " item count differs")
            for k, (i, j) in enumerate(zip(ix, iy)):
                compare(i, j, path + tag + "[%d]." % k, out)
        elif ex.get("Value") != ey.get("Value"):
            out.append(path + tag + ": %r vs %r" % (ex.get("Value"), ey.get("Value")))
    return out
print(json.dumps(compare(a, b, "", [])))
"#,
        )
        .arg(&served_sr)
        .arg(&local_sr));
    assert!(ok, "{diff}");
    let differences: Vec<String> = serde_json::from_str(diff.trim()).expect("JSON");
    assert!(differences.is_empty(), "{differences:#?}");
}

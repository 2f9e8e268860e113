//! Clinical variables from the DICOM header (`clinical_from_dicom`, `--clinical-from-dicom`):
//! on phantom studies the header's age, sex, height and weight give the grade the explicit
//! values give; values sent win; each missing or implausible attribute is refused naming it,
//! never echoing its value.

use crate::common::inproc::{InProc, registry};
use crate::common::*;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use osteo_phantom::{
    Patient, PhantomSpec, SeriesIdentity, TScoreModel, phantom_volume, write_series,
};
use osteo_proto::v1 as pb;
use std::path::{Path, PathBuf};
use std::process::Command;
use tonic::Code;

const MODELS: &[(&str, &str)] = &[
    ("osteo-fused-v1", "backends = [\"ort\"]"),
    ("osteo-tabular-v1", "backends = [\"ort\"]"),
];

/// A phantom study of patient `index` written into `dir`: its files and who it shows.
fn phantom(dir: &Path, index: u64) -> (Vec<PathBuf>, Patient) {
    let patient = TScoreModel::default().patient(7, index);
    let (_, volume) = phantom_volume(&patient, &PhantomSpec::default());
    let files =
        write_series(&volume, &SeriesIdentity::for_patient(&patient), dir).expect("write series");
    (files, patient)
}

/// The clinical variables a phantom's header states, sent explicitly.
fn explicit(p: &Patient) -> pb::ClinicalVariables {
    pb::ClinicalVariables {
        age_years: f64::from(p.age_years as u32),
        sex: match p.sex.code() {
            "F" => pb::Sex::Female as i32,
            _ => pb::Sex::Male as i32,
        },
        height_cm: p.height_cm,
        weight_kg: p.weight_kg,
        ..Default::default()
    }
}

/// Rewrites every file with `edit` applied to its dataset.
fn edit_files(files: &[PathBuf], edit: &dyn Fn(&mut dicom_object::DefaultDicomObject)) {
    for f in files {
        let mut obj = dicom_object::open_file(f).expect("open");
        edit(&mut obj);
        obj.write_to_file(f).expect("write");
    }
}

async fn classify(
    c: &mut osteo_proto::v1::osteo_service_client::OsteoServiceClient<tonic::transport::Channel>,
    model: &str,
    handle: Option<&str>,
    clinical: Option<pb::ClinicalVariables>,
    from_dicom: bool,
) -> Result<pb::ClassifyResponse, tonic::Status> {
    c.classify(pb::ClassifyRequest {
        study: handle.map(|h| pb::StudyRef {
            source: Some(pb::study_ref::Source::Study(h.to_string())),
        }),
        clinical,
        model: model.into(),
        backend: String::new(),
        clinical_from_dicom: from_dicom,
        dicom_outputs: false,
        fhir_outputs: false,
        model_version: String::new(),
    })
    .await
    .map(tonic::Response::into_inner)
}

fn probabilities(r: &pb::ClassifyResponse) -> [f32; 3] {
    let p = r.probabilities.unwrap_or_default();
    [p.normal, p.osteopenia, p.osteoporosis]
}

fn assert_close(a: [f32; 3], b: [f32; 3], what: &str) {
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-4, "{what}: {a:?} vs {b:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_gives_the_grade_the_explicit_values_give() {
    let server = InProc::start("", MODELS, registry()).await;
    let mut c = server.client().await;
    let dir = tempfile::tempdir().expect("tempdir");
    for index in 0..3 {
        let (files, patient) = phantom(&dir.path().join(index.to_string()), index);
        let handle = upload(&mut c, &read_all(&files), 256 << 10).await;
        for model in ["osteo-fused-v1", "osteo-tabular-v1"] {
            let header = classify(&mut c, model, Some(&handle), None, true)
                .await
                .expect("from the header");
            let given = classify(
                &mut c,
                model,
                Some(&handle),
                Some(explicit(&patient)),
                false,
            )
            .await
            .expect("explicit");
            assert_close(
                probabilities(&header),
                probabilities(&given),
                &format!("{model}, patient {index}"),
            );
            assert_eq!(header.grade, given.grade);
        }
        // A value sent wins over the header's.
        let older = pb::ClinicalVariables {
            age_years: 95.0,
            ..Default::default()
        };
        let mixed = classify(&mut c, "osteo-tabular-v1", Some(&handle), Some(older), true)
            .await
            .expect("mixed");
        let want = classify(
            &mut c,
            "osteo-tabular-v1",
            Some(&handle),
            Some(pb::ClinicalVariables {
                age_years: 95.0,
                ..explicit(&patient)
            }),
            false,
        )
        .await
        .expect("explicit");
        assert_close(probabilities(&mixed), probabilities(&want), "age sent");
    }
    // Without a study there is no header.
    let e = classify(&mut c, "osteo-tabular-v1", None, None, true)
        .await
        .expect_err("no study");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("clinical_from_dicom"),
        "{}",
        e.message()
    );
}

/// A header edit: name, attribute, new value (None = removed), expected attribute and field in
/// the refusal.
type Case = (
    &'static str,
    Tag,
    Option<(VR, &'static str)>,
    &'static str,
    &'static str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_missing_or_implausible_attribute_is_refused_naming_it() {
    let server = InProc::start("", MODELS, registry()).await;
    let mut c = server.client().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: [Case; 5] = [
        (
            "no-age",
            tags::PATIENT_AGE,
            None,
            "PatientBirthDate",
            "clinical.age_years",
        ),
        (
            "no-sex",
            tags::PATIENT_SEX,
            None,
            "PatientSex (0010,0040)",
            "clinical.sex",
        ),
        (
            "no-size",
            tags::PATIENT_SIZE,
            None,
            "PatientSize (0010,1020)",
            "clinical.height_cm",
        ),
        (
            "no-weight",
            tags::PATIENT_WEIGHT,
            None,
            "PatientWeight (0010,1030)",
            "clinical.weight_kg",
        ),
        (
            "heavy",
            tags::PATIENT_WEIGHT,
            Some((VR::DS, "412.5")),
            "PatientWeight (0010,1030) is implausible",
            "clinical.weight_kg",
        ),
    ];
    for (i, (name, tag, value, attribute, field)) in cases.into_iter().enumerate() {
        let (files, _) = phantom(&dir.path().join(name), 10 + i as u64);
        edit_files(&files, &|obj| match value {
            None => {
                obj.remove_element(tag);
            }
            Some((vr, v)) => {
                obj.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
            }
        });
        let handle = upload(&mut c, &read_all(&files), 256 << 10).await;
        let e = classify(&mut c, "osteo-fused-v1", Some(&handle), None, true)
            .await
            .expect_err(name);
        assert_eq!(
            e.code(),
            Code::FailedPrecondition,
            "{name}: {}",
            e.message()
        );
        assert!(
            e.message().contains(attribute) && e.message().contains(field),
            "{name}: {}",
            e.message()
        );
        assert!(!e.message().contains("412.5"), "{}", e.message());
    }
}

#[test]
fn predict_reads_the_clinical_variables_from_the_header_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (files, patient) = phantom(dir.path(), 3);
    let study = files[0].parent().expect("dir").to_path_buf();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/osteo-fused-v1");
    let run = |extra: &[String]| -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_osteo"))
            .args(["predict", "--backend", "ort", "--json", "--model"])
            .arg(&model)
            .arg("--dicom")
            .arg(&study)
            .args(extra)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON")
    };
    let header = run(&["--clinical-from-dicom".into()]);
    let given = run(&[
        "--age".into(),
        (patient.age_years as u32).to_string(),
        "--sex".into(),
        patient.sex.code().into(),
        "--height-cm".into(),
        patient.height_cm.to_string(),
        "--weight-kg".into(),
        patient.weight_kg.to_string(),
    ]);
    assert_eq!(header["grade"], given["grade"], "{header} vs {given}");
    let p = |v: &serde_json::Value, k: &str| v["probabilities"][k].as_f64().unwrap_or(-1.0);
    for k in ["normal", "osteopenia", "osteoporosis"] {
        assert!(
            (p(&header, k) - p(&given, k)).abs() <= 1e-4,
            "{header} vs {given}"
        );
    }
    // Without the flag the clinical flags are required.
    let out = Command::new(env!("CARGO_BIN_EXE_osteo"))
        .args(["predict", "--model"])
        .arg(&model)
        .arg("--dicom")
        .arg(&study)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--age"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_attributes_the_grade_to_each_clinical_feature_alike_on_every_backend() {
    let backends = "backends = [\"ort\", \"candle\"]";
    let server = InProc::start(
        "",
        &[("osteo-fused-v1", backends), ("osteo-tabular-v1", backends)],
        registry(),
    )
    .await;
    let mut c = server.client().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (files, patient) = phantom(dir.path(), 21);
    let handle = upload(&mut c, &read_all(&files), 256 << 10).await;
    // The fused model explains the image and the features; the tabular model, given no study,
    // only the features.
    for (model, study) in [
        ("osteo-fused-v1", by_handle(&handle)),
        ("osteo-tabular-v1", None),
    ] {
        let mut by_backend = Vec::new();
        for backend in ["ort", "candle"] {
            let r = c
                .explain(pb::ExplainRequest {
                    study: study.clone(),
                    clinical: Some(explicit(&patient)),
                    model: model.into(),
                    backend: backend.into(),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("{model} on {backend}: {e:?}"))
                .into_inner();
            assert_eq!(
                r.gradcam.is_some(),
                model == "osteo-fused-v1",
                "{model}: a Grad-CAM map only for the model that reads CT"
            );
            by_backend.push(r.features);
        }
        let spec = osteo_core::ModelArtifacts::open(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("models")
                .join(model),
        )
        .expect("model")
        .manifest
        .tabular
        .expect("tabular");
        let names: Vec<&str> = spec.features.iter().map(|f| f.name.as_str()).collect();
        for features in &by_backend {
            let got: Vec<&str> = features.iter().map(|f| f.feature.as_str()).collect();
            assert_eq!(
                got, names,
                "{model}: one attribution per feature, in the model's order"
            );
            assert!(
                features.iter().any(|f| f.attribution.abs() > 1e-4),
                "{model}"
            );
        }
        for (o, c) in by_backend[0].iter().zip(&by_backend[1]) {
            assert!(
                (o.attribution - c.attribution).abs() <= 1e-4 * c.attribution.abs().max(1.0),
                "{model}, {}: ort {} vs candle {}",
                o.feature,
                o.attribution,
                c.attribution
            );
        }
    }
}

//! Acting on a grade: a model with an operating point (`osteo-fused-v2`, model.toml
//! `[decision]`) calibrates its probabilities and says whether to refer for DXA and which grades
//! its conformal prediction set holds, on every front door (osteo.v1, the Open Inference
//! Protocol, the CLI) and in every filed result (the SR passes Pixelmed's validator, the FHIR
//! Bundle fhir.resources); a model without one (`osteo-fused-v1`) answers as before; an
//! indeterminate result says so. Every result of a CT study also carries its vertebral
//! attenuation.

use crate::common;
use crate::common::inproc::{InProc, registry};
use osteo_core::{DecisionSpec, Grade, ModelArtifacts};
use osteo_proto::inference as v2;
use osteo_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use osteo_proto::v1 as pb;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The shipped model directory `name`.
fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(name)
}

/// The `[decision]` of the shipped calibrated model.
fn decision() -> DecisionSpec {
    ModelArtifacts::open(&shipped("osteo-fused-v2"))
        .expect("model.toml")
        .manifest
        .decision
        .expect("osteo-fused-v2 carries a [decision]")
}

/// Softmax of `logits / t`.
fn softmax(logits: &[f32], t: f64) -> [f32; 3] {
    osteo_core::decision::calibrated(&[logits[0], logits[1], logits[2]], t)
}

/// The grades whose probability reaches `threshold` (the argmax when none does).
fn set_of(p: &[f32; 3], threshold: f64) -> Vec<&'static str> {
    osteo_core::PredictionSet::of(p, threshold)
        .grades()
        .iter()
        .map(|g| g.name())
        .collect()
}

/// Checks a wire decision against the probabilities it was made from and the model's section.
fn assert_decided(d: &pb::Decision, p: &[f32; 3], spec: &DecisionSpec) {
    assert_eq!(d.refer_on, "osteoporosis");
    assert!((d.refer_threshold - spec.osteoporosis_threshold).abs() < 1e-12);
    assert_eq!(
        d.refer,
        f64::from(p[2]) >= spec.osteoporosis_threshold,
        "{d:?} {p:?}"
    );
    let set: Vec<&str> = d
        .prediction_set
        .iter()
        .map(|g| osteo_client::report::grade_name(*g))
        .collect();
    assert_eq!(set, set_of(p, spec.set_threshold), "{d:?} {p:?}");
    assert_eq!(
        d.indeterminate,
        set.contains(&"normal") && set.contains(&"osteoporosis")
    );
    assert!((d.coverage - spec.coverage).abs() < 1e-12);
}

fn probabilities(p: Option<pb::GradeProbabilities>) -> [f32; 3] {
    let p = p.expect("probabilities");
    [p.normal, p.osteopenia, p.osteoporosis]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calibrated_model_decides_on_every_front_door_and_in_its_results() {
    let spec = decision();
    let both = "backends = [\"ort\", \"candle\"]";
    let server = InProc::start(
        "",
        &[("osteo-fused-v2", both), ("osteo-fused-v1", both)],
        registry(),
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let files = common::read_all(&common::study(&dir.path().join("study")));
    let mut c = server.client().await;
    let handle = common::upload(&mut c, &files, 1 << 20).await;
    let classify = |model: &str, outputs: bool| pb::ClassifyRequest {
        study: common::by_handle(&handle),
        clinical: Some(common::clinical()),
        model: model.into(),
        dicom_outputs: outputs,
        fhir_outputs: outputs,
        ..Default::default()
    };

    // osteo.v1 Classify: calibrated probabilities and their decision, with the SR and Bundle.
    let r = c
        .classify(classify("osteo-fused-v2", true))
        .await
        .expect("classify")
        .into_inner();
    let p = probabilities(r.probabilities);
    let want = softmax(&r.logits, spec.temperature);
    for k in 0..3 {
        assert!((p[k] - want[k]).abs() < 1e-6, "{p:?} vs {want:?}");
    }
    let d = r.decision.clone().expect("a decision");
    assert_decided(&d, &p, &spec);

    // The version without an operating point answers as before: softmax, no decision.
    let old = c
        .classify(classify("osteo-fused-v1", false))
        .await
        .expect("classify v1")
        .into_inner();
    assert!(old.decision.is_none(), "{:?}", old.decision);
    let raw = softmax(&old.logits, 1.0);
    let p1 = probabilities(old.probabilities);
    for k in 0..3 {
        assert!((p1[k] - raw[k]).abs() < 1e-6);
    }

    // CompareBackends: each backend decides, and they agree.
    let cmp = c
        .compare_backends(pb::CompareBackendsRequest {
            study: common::by_handle(&handle),
            clinical: Some(common::clinical()),
            model: "osteo-fused-v2".into(),
            ..Default::default()
        })
        .await
        .expect("compare")
        .into_inner();
    assert_eq!(cmp.results.len(), 2);
    for b in &cmp.results {
        let bd = b.decision.clone().expect("each backend's decision");
        assert_decided(&bd, &probabilities(b.probabilities), &spec);
        assert_eq!((bd.refer, &bd.prediction_set), (d.refer, &d.prediction_set));
    }

    // The SR: valid for the IHE AI Results validator, with the referral and the set.
    let sr = dir.path().join("sr.dcm");
    std::fs::write(&sr, &r.dicom_sr).expect("write SR");
    common::assert_air_valid(&[&sr]);
    let dump = Command::new("dsrdump")
        .arg("+Pl")
        .arg(&sr)
        .output()
        .expect("dsrdump");
    let dump = String::from_utf8_lossy(&dump.stdout);
    let yes_no = if d.refer {
        "(373066001,SCT,\"Yes\")"
    } else {
        "(373067005,SCT,\"No\")"
    };
    assert!(
        dump.contains(&format!("\"Referral for DXA recommended\")={yes_no}")),
        "{dump}"
    );
    let in_set = dump
        .matches("Grade in the conformal prediction set")
        .count();
    assert_eq!(in_set, d.prediction_set.len(), "{dump}");
    assert!(dump.contains("\"Determinate\""), "{dump}");
    assert!(
        dump.contains(&format!(
            "refer_threshold={:.6}",
            spec.osteoporosis_threshold
        )),
        "{dump}"
    );

    // The vertebral attenuation: every level in the answer, each a measurement group of the SR
    // (Attenuation Coefficient in HU at its vertebra) and an Observation of the Bundle.
    let a = r
        .attenuation
        .clone()
        .expect("the vertebrae of a phantom are measured");
    let levels: Vec<&str> = a.vertebrae.iter().map(|v| v.level.as_str()).collect();
    assert_eq!(levels, ["T12", "L1", "L2", "L3", "L4", "L5"]);
    assert!(a.sacrum_found && !a.contrast_phase.is_empty(), "{a:?}");
    let sides: Vec<&str> = a.femoral_necks.iter().map(|n| n.side.as_str()).collect();
    assert_eq!(sides, ["right", "left"], "{a:?}");
    assert_eq!(
        dump.matches("\"Attenuation Coefficient\")=").count(),
        8,
        "{dump}"
    );
    assert!(
        dump.contains("Right femoral neck trabecular attenuation"),
        "{dump}"
    );
    for (code, v) in [
        "23215003", "66794005", "14293000", "36470004", "11994002", "49668003",
    ]
    .iter()
    .zip(&a.vertebrae)
    {
        assert!(
            dump.contains(&format!("({code},SCT,\"{} vertebra\")", v.level)),
            "{dump}"
        );
    }

    // The FHIR Bundle: valid R4, with the referral and the set.
    let bundle = dir.path().join("bundle.json");
    std::fs::write(&bundle, &r.fhir_bundle).expect("write bundle");
    let read = common::fhir_checked(&[&bundle]);
    assert_eq!(read[0]["refer"], serde_json::json!([d.refer]));
    let codes: Vec<&str> = d
        .prediction_set
        .iter()
        .map(|g| match osteo_client::report::grade_of(*g) {
            Some(Grade::Normal) => "17621005",
            Some(Grade::Osteopenia) => "312894000",
            _ => "64859006",
        })
        .collect();
    assert_eq!(read[0]["prediction_set"], serde_json::json!([codes]));
    assert_eq!(read[0]["interpretation"], serde_json::json!([]));
    let vertebrae = read[0]["vertebrae"].as_array().expect("vertebrae");
    assert_eq!(vertebrae.len(), 8, "six vertebrae and two femoral necks");
    for (o, v) in vertebrae.iter().zip(&a.vertebrae) {
        assert_eq!(o[1], format!("{} vertebra", v.level));
        assert!(
            (o[2].as_f64().expect("HU") - v.trabecular_hu).abs() < 0.06,
            "{o}"
        );
    }

    // The Open Inference Protocol: calibrated probabilities and one decision per row.
    let mut oip = GrpcInferenceServiceClient::connect(server.url.clone())
        .await
        .expect("connect");
    let m = ModelArtifacts::open(&shipped("osteo-fused-v2"))
        .expect("model.toml")
        .manifest;
    let image = m.arch.image.as_ref().expect("image branch");
    let per_image = image.in_channels * image.height * image.width;
    let features = m.arch.tabular.as_ref().expect("tabular").in_features;
    let tensor =
        |name: &str, dims: Vec<i64>, values: Vec<f32>| v2::model_infer_request::InferInputTensor {
            name: name.into(),
            datatype: "FP32".into(),
            shape: dims,
            contents: Some(v2::InferTensorContents {
                fp32_contents: values,
                ..Default::default()
            }),
            ..Default::default()
        };
    // Two rows: an empty view, and a bright one with the clinical means.
    let mut pixels = vec![0.0f32; per_image];
    pixels.extend(std::iter::repeat_n(0.8f32, per_image));
    let req = v2::ModelInferRequest {
        model_name: "osteo-fused-v2".into(),
        inputs: vec![
            tensor(
                "images",
                vec![
                    2,
                    image.in_channels as i64,
                    image.height as i64,
                    image.width as i64,
                ],
                pixels,
            ),
            tensor("tabular", vec![2, features as i64], vec![0.0; 2 * features]),
        ],
        ..Default::default()
    };
    let out = oip.model_infer(req).await.expect("infer").into_inner();
    let param = |k: &str| match out
        .parameters
        .get(k)
        .and_then(|p| p.parameter_choice.clone())
    {
        Some(v2::infer_parameter::ParameterChoice::StringParam(s)) => s,
        Some(v2::infer_parameter::ParameterChoice::DoubleParam(d)) => d.to_string(),
        other => panic!("parameter {k}: {other:?}"),
    };
    let tensor_of = |name: &str| {
        out.outputs
            .iter()
            .find(|o| o.name == name)
            .and_then(|o| o.contents.clone())
            .expect(name)
            .fp32_contents
    };
    let (logits, probs) = (tensor_of("logits"), tensor_of("probabilities"));
    let refer: Vec<String> = param("refer").split(',').map(str::to_string).collect();
    let sets: Vec<String> = param("prediction_set")
        .split(',')
        .map(str::to_string)
        .collect();
    assert_eq!((refer.len(), sets.len()), (2, 2), "one value per row");
    for row in 0..2 {
        let l = &logits[3 * row..3 * row + 3];
        let p = softmax(l, spec.temperature);
        for k in 0..3 {
            assert!((probs[3 * row + k] - p[k]).abs() < 1e-6, "row {row}");
        }
        assert_eq!(
            refer[row],
            (f64::from(p[2]) >= spec.osteoporosis_threshold).to_string()
        );
        assert_eq!(sets[row], set_of(&p, spec.set_threshold).join("|"));
    }
    assert_eq!(param("refer_on"), "osteoporosis");
    assert_eq!(param("coverage"), spec.coverage.to_string());

    // The CLI prints the decision next to the grade.
    let cli = common::output({
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_osteo"));
        cmd.args(["classify", "--json", "--server", &server.url])
            .args(["--model", "osteo-fused-v2", "--dicom"])
            .arg(dir.path().join("study"))
            .args(common::CLINICAL_FLAGS);
        cmd
    })
    .await;
    assert!(cli.status.success(), "{cli:?}");
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&cli.stdout).trim()).expect("JSON");
    assert_eq!(v["refer"], serde_json::json!(d.refer), "{v}");
    assert_eq!(v["refer_on"], "osteoporosis");
    assert_eq!(v["indeterminate"], serde_json::json!(d.indeterminate));
    assert_eq!(
        v["prediction_set"].as_array().map(Vec::len),
        Some(d.prediction_set.len()),
        "{v}"
    );
    assert_eq!(v["vertebrae"].as_array().map(Vec::len), Some(6), "{v}");
    assert_eq!(v["vertebrae"][1]["level"], "L1");
    assert_eq!(v["femoral_necks"].as_array().map(Vec::len), Some(2), "{v}");
    server.stop().await.expect("stop");
}

#[test]
fn an_indeterminate_result_says_so_on_every_backend_and_in_its_results() {
    // The shipped model with a set threshold of 0: every grade joins every set.
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("osteo-fused-v2");
    common::copy_model("osteo-fused-v2", &model);
    let mut a = ModelArtifacts::open(&model).expect("model.toml");
    if let Some(d) = a.manifest.decision.as_mut() {
        d.set_threshold = 0.0;
    }
    std::fs::write(
        model.join("model.toml"),
        a.manifest.to_toml().expect("toml"),
    )
    .expect("write model.toml");
    let files = common::study(&dir.path().join("study"));
    let study = files[0].parent().expect("dir").to_path_buf();
    let mut answers = Vec::new();
    for backend in ["candle", "ort"] {
        let sr = dir.path().join(format!("{backend}.dcm"));
        let bundle = dir.path().join(format!("{backend}.json"));
        let out = Command::new(env!("CARGO_BIN_EXE_osteo"))
            .args(["predict", "--json", "--backend", backend, "--model"])
            .arg(&model)
            .arg("--dicom")
            .arg(&study)
            .args(common::CLINICAL_FLAGS)
            .arg("--sr-out")
            .arg(&sr)
            .arg("--fhir-out")
            .arg(&bundle)
            .output()
            .expect("osteo predict");
        assert!(out.status.success(), "{out:?}");
        let v: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).expect("JSON");
        assert_eq!(v["indeterminate"], true, "{v}");
        assert_eq!(
            v["prediction_set"],
            serde_json::json!(["normal", "osteopenia", "osteoporosis"])
        );
        answers.push((v["refer"].clone(), v["grade"].clone()));
        common::assert_air_valid(&[&sr]);
        let dump = Command::new("dsrdump")
            .arg("+Pl")
            .arg(&sr)
            .output()
            .expect("dsrdump");
        let dump = String::from_utf8_lossy(&dump.stdout);
        assert!(dump.contains("\"Indeterminate\""), "{dump}");
        assert!(
            dump.contains("Indeterminate: the model cannot tell. Its 90% prediction set spans"),
            "{dump}"
        );
        let read = common::fhir_checked(&[&bundle]);
        assert_eq!(read[0]["interpretation"], serde_json::json!(["IND"]));
        let conclusion = read[0]["conclusion"].as_str().unwrap_or_default();
        assert!(conclusion.contains("Indeterminate"), "{conclusion}");
    }
    assert_eq!(
        answers[0], answers[1],
        "candle and ONNX Runtime decide alike"
    );
}

//! Backends side by side on a real server: the backend is chosen per model in configuration and
//! overridden per request, ListModels shows who serves what where, CompareBackends and
//! `osteo compare` run one study through several backends, and Explain works on every backend.

use crate::common;
/// Runs `osteo compare --json` on the study in `dir` (the clinical values of
/// `common::clinical()`) through `backends`.
fn compare_cli(url: &str, dir: &std::path::Path, backends: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_osteo"))
        .args(["compare", "--server", url, "--dicom"])
        .arg(dir)
        .args(CLINICAL_FLAGS)
        .args(["--smoker", "true", "--backends", backends, "--json"])
        .output()
        .expect("osteo compare")
}

use crate::common::{CLINICAL_FLAGS, Server, by_handle, clinical, read_all, study, upload};
use osteo_proto::v1 as pb;
use std::process::Command;
use tonic::Code;

/// Largest probability difference allowed between backends (as in tests/backend_parity.rs).
const PROB_ABS: f64 = 1e-4;

fn probs(p: Option<pb::GradeProbabilities>) -> [f64; 3] {
    let p = p.expect("probabilities");
    [p.normal, p.osteopenia, p.osteoporosis].map(f64::from)
}

fn max_diff(a: [f64; 3], b: [f64; 3]) -> f64 {
    (0..3).map(|k| (a[k] - b[k]).abs()).fold(0.0, f64::max)
}

#[tokio::test(flavor = "multi_thread")]
async fn backends_are_chosen_per_model_overridden_per_request_and_compared() {
    let server = Server::start_with(
        "[backends.ort]\nintra_threads = 1\n",
        &[
            (
                "osteo-fused-v1",
                "backends = [\"candle\", \"ort\"]\ndefault_backend = \"ort\"",
            ),
            ("osteo-tabular-v1", "backends = [\"candle\"]"),
        ],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let files = read_all(&study(dir.path()));
    let mut client = server.client().await;

    // ListModels: backends, devices and library versions per model.
    let listed = client
        .list_models(pb::ListModelsRequest {})
        .await
        .expect("list")
        .into_inner();
    let model = |name: &str| {
        listed
            .models
            .iter()
            .find(|m| m.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} listed"))
    };
    let fused = model("osteo-fused-v1");
    let served: Vec<(&str, &str)> = fused
        .backends
        .iter()
        .map(|b| (b.name.as_str(), b.device.as_str()))
        .collect();
    assert_eq!(served, [("candle", "cpu"), ("ort", "cpu")]);
    assert_eq!(fused.default_backend, "ort");
    assert!(
        fused.backends[1]
            .library_version
            .starts_with("onnxruntime 1."),
        "{:?}",
        fused.backends[1]
    );
    let tabular = model("osteo-tabular-v1");
    assert_eq!(tabular.backends.len(), 1);
    assert_eq!(tabular.default_backend, "candle");

    // The configured default, then a per-request override.
    let handle = upload(&mut client, &files, 256 * 1024).await;
    let classify = |backend: &str| pb::ClassifyRequest {
        study: by_handle(&handle),
        clinical: Some(clinical()),
        model: String::new(),
        backend: backend.into(),
        clinical_from_dicom: false,
        dicom_outputs: false,
        fhir_outputs: false,
        model_version: String::new(),
    };
    let by_default = client
        .classify(classify(""))
        .await
        .expect("classify")
        .into_inner();
    assert_eq!(
        by_default.backend.as_ref().map(|b| b.name.as_str()),
        Some("ort")
    );
    let on_candle = client
        .classify(classify("candle"))
        .await
        .expect("classify on candle")
        .into_inner();
    assert_eq!(
        on_candle.backend.as_ref().map(|b| b.name.as_str()),
        Some("candle")
    );
    let d = max_diff(
        probs(by_default.probabilities),
        probs(on_candle.probabilities),
    );
    assert!(d <= PROB_ABS, "ort and candle differ by {d}");

    // CompareBackends: every backend (empty list), in configuration order.
    let compared = client
        .compare_backends(pb::CompareBackendsRequest {
            study: by_handle(&handle),
            clinical: Some(clinical()),
            model: String::new(),
            backends: Vec::new(),
            clinical_from_dicom: false,
            model_version: String::new(),
        })
        .await
        .expect("compare")
        .into_inner();
    let names: Vec<&str> = compared
        .results
        .iter()
        .filter_map(|r| r.backend.as_ref().map(|b| b.name.as_str()))
        .collect();
    assert_eq!(names, ["candle", "ort"]);
    assert!(compared.grades_agree);
    assert!(
        compared.max_abs_diff <= PROB_ABS,
        "{}",
        compared.max_abs_diff
    );
    let own = max_diff(
        probs(compared.results[0].probabilities),
        probs(compared.results[1].probabilities),
    );
    assert!(
        (own - compared.max_abs_diff).abs() < 1e-9,
        "max_abs_diff is the largest difference"
    );
    assert!(
        compared
            .results
            .iter()
            .all(|r| r.latency_ms > 0.0 && r.logits.len() == 3)
    );

    // A backend that does not serve the model: NOT_FOUND naming the ones that do.
    for (model, backends) in [
        ("osteo-fused-v1", vec!["candle", "tch"]),
        ("osteo-tabular-v1", vec!["ort"]),
    ] {
        let e = client
            .compare_backends(pb::CompareBackendsRequest {
                study: by_handle(&handle),
                clinical: Some(clinical()),
                model: model.into(),
                backends: backends.iter().map(|s| s.to_string()).collect(),
                clinical_from_dicom: false,
                model_version: String::new(),
            })
            .await
            .expect_err("unknown backend");
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        assert!(e.message().contains("serving: candle"), "{}", e.message());
    }

    // Explain on either backend: the same Grad-CAM map.
    let explain = |backend: &str| pb::ExplainRequest {
        study: by_handle(&handle),
        clinical: Some(clinical()),
        model: String::new(),
        backend: backend.into(),
        target: pb::Grade::Osteoporosis as i32,
        clinical_from_dicom: false,
        dicom_outputs: false,
        fhir_outputs: false,
        model_version: String::new(),
    };
    let mut maps = Vec::new();
    for backend in ["candle", "ort"] {
        let r = client
            .explain(explain(backend))
            .await
            .unwrap_or_else(|e| panic!("explain on {backend}: {e:?}"))
            .into_inner();
        let map = r.gradcam.expect("map");
        assert!(map.overlay_png.starts_with(b"\x89PNG"));
        maps.push(map.values);
    }
    let corr = osteo_core::gradcam::correlation(&maps[0], &maps[1]);
    assert!(
        corr >= 0.999,
        "Grad-CAM maps of candle and ort correlate {corr}"
    );

    // The CLI: `osteo compare --json` prints the documented object.
    let cli = |backends: &str| compare_cli(&server.url, dir.path(), backends);
    let out = cli("candle,ort");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let cli_backends = v["backends"].as_object().expect("backends object");
    assert_eq!(cli_backends.len(), 2);
    for name in ["candle", "ort"] {
        let b = &cli_backends[name];
        assert!(
            ["normal", "osteopenia", "osteoporosis"].contains(&b["grade"].as_str().unwrap_or("")),
            "{b}"
        );
        let p = &b["probabilities"];
        let sum: f64 = ["normal", "osteopenia", "osteoporosis"]
            .iter()
            .map(|k| p[k].as_f64().expect("probability"))
            .sum();
        assert!((sum - 1.0).abs() < 1e-5, "{p}");
        assert!(b["latency_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{b}");
    }
    assert!(
        v["max_abs_diff"].as_f64().is_some_and(|d| d <= PROB_ABS),
        "{v}"
    );
    assert_eq!(v["grades_agree"], true);
    assert_eq!(
        cli_backends["ort"]["grade"].as_str(),
        Some(["normal", "osteopenia", "osteoporosis"][by_default.grade as usize - 1]),
        "the CLI and Classify agree"
    );
    let out = cli("candle,tch");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: NOT_FOUND: "), "{stderr}");

    // Requests are counted per backend; each loaded (model, backend) reports its device.
    let metrics = server.scrape();
    assert_eq!(
        common::metric(
            &metrics,
            "osteo_backend_info",
            &[
                "model=\"osteo-fused-v1\"",
                "backend=\"ort\"",
                "device=\"cpu\"",
                "library=\"onnxruntime 1."
            ]
        ),
        1.0,
        "{metrics}"
    );
    for backend in ["candle", "ort"] {
        assert!(
            common::metric(
                &metrics,
                "osteo_requests_total",
                &[&format!("backend=\"{backend}\"")]
            ) > 0.0,
            "no requests counted for {backend}"
        );
    }
}

#[test]
fn a_missing_onnx_runtime_library_is_a_clear_error() {
    let missing = "/nonexistent/libonnxruntime.so";
    let out = Command::new(env!("CARGO_BIN_EXE_osteo"))
        .args([
            "predict",
            "--model",
            "models/osteo-tabular-v1",
            "--backend",
            "ort",
        ])
        .args(CLINICAL_FLAGS)
        .env("ORT_DYLIB_PATH", missing)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("osteo predict");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("ORT_DYLIB_PATH={missing} does not name a file")),
        "{stderr}"
    );

    // The server refuses to start, naming the model entry and the backend.
    let out = Command::new(env!("CARGO_BIN_EXE_osteo"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "",
            "--http-listen",
            "",
        ])
        .env("ORT_DYLIB_PATH", missing)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("osteo serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("models[0], backend ort") && stderr.contains("ORT_DYLIB_PATH"),
        "{stderr}"
    );
}

/// With the `tch` feature the server serves libtorch too, and every comparison covers it.
#[cfg(feature = "tch")]
#[tokio::test(flavor = "multi_thread")]
async fn three_backends_agree_on_one_server() {
    let server = Server::start_with(
        "",
        &[
            (
                "osteo-fused-v1",
                "backends = [\"candle\", \"ort\", \"tch\"]",
            ),
            (
                "osteo-tabular-v1",
                "backends = [\"candle\", \"ort\", \"tch\"]",
            ),
        ],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let files = read_all(&study(dir.path()));
    let mut client = server.client().await;
    let listed = client
        .list_models(pb::ListModelsRequest {})
        .await
        .expect("list")
        .into_inner();
    for m in &listed.models {
        let tch = m
            .backends
            .iter()
            .find(|b| b.name == "tch")
            .expect("tch listed");
        assert_eq!(
            (tch.device.as_str(), tch.library_version.as_str()),
            ("cpu", "libtorch 2.11.0")
        );
    }
    let handle = upload(&mut client, &files, 256 * 1024).await;
    for model in ["osteo-fused-v1", "osteo-tabular-v1"] {
        let r = client
            .compare_backends(pb::CompareBackendsRequest {
                study: by_handle(&handle),
                clinical: Some(clinical()),
                model: model.into(),
                backends: Vec::new(),
                clinical_from_dicom: false,
                model_version: String::new(),
            })
            .await
            .expect("compare")
            .into_inner();
        assert_eq!(r.results.len(), 3, "{model}");
        assert!(r.grades_agree, "{model}");
        assert!(r.max_abs_diff <= PROB_ABS, "{model}: {}", r.max_abs_diff);
    }
    let explained = client
        .explain(pb::ExplainRequest {
            study: by_handle(&handle),
            clinical: Some(clinical()),
            model: String::new(),
            backend: "tch".into(),
            target: pb::Grade::Unspecified as i32,
            clinical_from_dicom: false,
            dicom_outputs: true,
            fhir_outputs: true,
            model_version: String::new(),
        })
        .await
        .expect("explain on tch")
        .into_inner();
    assert!(
        explained
            .gradcam
            .as_ref()
            .expect("map")
            .overlay_png
            .starts_with(b"\x89PNG")
    );
    // The SR and the FHIR Bundle of a libtorch result, as the other backends' are checked.
    let c = explained.classification.expect("classification");
    let results = tempfile::tempdir().expect("tempdir");
    let (sr, bundle) = (
        results.path().join("sr.dcm"),
        results.path().join("bundle.json"),
    );
    std::fs::write(&sr, &c.dicom_sr).expect("write");
    std::fs::write(&bundle, &c.fhir_bundle).expect("write");
    common::assert_air_valid(&[&sr]);
    let checked = common::fhir_checked(&[&bundle]);
    assert_eq!(
        checked[0]["device_properties"],
        serde_json::json!({"backend": "tch", "device": "cpu"})
    );
    let out = compare_cli(&server.url, dir.path(), "candle,ort,tch");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["backends"].as_object().map(|b| b.len()), Some(3), "{v}");
    assert_eq!(v["grades_agree"], true);
}

#[test]
fn osteo_bench_times_every_backend_side_by_side() {
    let out = Command::new(env!("CARGO_BIN_EXE_osteo"))
        .args([
            "bench",
            "--model",
            "models/osteo-fused-v1",
            "--backends",
            "candle,ort",
        ])
        .args(["--batches", "1,4", "--iterations", "2", "--json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("osteo bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["model"], "osteo-fused-v1");
    assert_eq!(v["device"], "cpu");
    let rows = v["results"].as_array().expect("results");
    let mut seen: Vec<(String, String, u64)> = rows
        .iter()
        .map(|r| {
            assert!(r["p50_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{r}");
            assert!(r["samples_per_s"].as_f64().is_some_and(|s| s > 0.0), "{r}");
            (
                r["backend"].as_str().unwrap_or("").to_string(),
                r["op"].as_str().unwrap_or("").to_string(),
                r["batch"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    seen.sort();
    let want: Vec<(String, String, u64)> = ["candle", "ort"]
        .iter()
        .flat_map(|b| {
            [("explain", 1), ("predict", 1), ("predict", 4)]
                .map(|(op, n)| (b.to_string(), op.to_string(), n))
        })
        .collect();
    assert_eq!(seen, want);

    // A backend this binary does not have is named with the ones it has.
    let out = Command::new(env!("CARGO_BIN_EXE_osteo"))
        .args([
            "bench",
            "--model",
            "models/osteo-fused-v1",
            "--backends",
            "tensorrt",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("osteo bench");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("\"tensorrt\" is not built into this binary (available: candle, ort"),
        "{stderr}"
    );
}

//! Independent clients against the real server: Python grpcio with stubs generated from proto/
//! at test time, and grpcurl through server reflection (both installed by scripts/setup.sh).

use crate::common;
use crate::common::*;
use osteo_proto::v1 as pb;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub(crate) fn cache(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".cache")
        .join(rel);
    assert!(p.exists(), "{} missing: run scripts/setup.sh", p.display());
    p
}

pub(crate) fn check(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Python stubs of osteo.proto generated into `dir` with grpcio-tools.
pub(crate) fn python_stubs(dir: &Path) -> PathBuf {
    let stubs = dir.join("stubs");
    std::fs::create_dir_all(&stubs).expect("stubs dir");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    check(
        &Command::new(cache("venv/bin/python"))
            .args(["-m", "grpc_tools.protoc", "-I"])
            .arg(root.join("proto"))
            .arg(format!("--python_out={}", stubs.display()))
            .arg(format!("--grpc_python_out={}", stubs.display()))
            .arg(root.join("proto/osteo/v1/osteo.proto"))
            .output()
            .expect("protoc"),
        "generating Python stubs",
    );
    stubs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_generated_from_the_proto_calls_every_rpc() {
    let server = Server::start("");
    let dir = tempfile::tempdir().expect("tempdir");
    let study_dir = dir.path().join("study");
    let files = read_all(&study(&study_dir));
    let stubs = python_stubs(dir.path());
    let python = cache("venv/bin/python");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let address = server.url.trim_start_matches("http://").to_string();
    let stdout = check(
        &Command::new(&python)
            .arg(root.join("tests/python/osteo_client.py"))
            .arg(&stubs)
            .arg(&address)
            .arg(&study_dir)
            .output()
            .expect("python client"),
        "the Python client",
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(v["slices"].as_u64(), Some(files.len() as u64));
    assert_eq!(v["model"], "osteo-fused-v1");
    assert_eq!(v["backend"], "ort");
    assert_eq!(v["gradcam_values"], 128 * 128);
    assert_eq!(v["overlay_is_png"], true);
    assert_eq!(v["compare_backends"], serde_json::json!(["ort", "candle"]));
    assert_eq!(v["grades_agree"], true);
    assert_eq!(v["get_study"], v["handle"]);
    assert_eq!(v["freed_bytes"], v["stored_bytes"]);
    // GetShadowReport: no pairs configured, the default resamples.
    assert_eq!(
        (v["shadow_pairs"].as_u64(), v["shadow_resamples"].as_u64()),
        (Some(0), Some(1000))
    );
    assert_eq!(v["after_delete"], "NOT_FOUND");
    assert_eq!(v["without_sex"], "INVALID_ARGUMENT");

    // The Rust client gets the same probabilities for the same files.
    let mut client = server.client().await;
    let rust = client
        .classify(pb::ClassifyRequest {
            study: inline(&files),
            clinical: Some(clinical()),
            model: String::new(),
            backend: String::new(),
            clinical_from_dicom: false,
            dicom_outputs: false,
            fhir_outputs: false,
            model_version: String::new(),
        })
        .await
        .expect("classify")
        .into_inner();
    let p = rust.probabilities.expect("probabilities");
    let py: Vec<f64> = v["probabilities"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .collect();
    for (a, b) in py.iter().zip([p.normal, p.osteopenia, p.osteoporosis]) {
        assert!((a - f64::from(b)).abs() < 1e-6, "{py:?} vs {p:?}");
    }
}

/// Base64 (standard alphabet, padded), as protobuf JSON encodes `bytes`.
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            if k <= c.len() {
                out.push(A[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn grpcurl_lists_describes_and_calls_every_method_through_reflection() {
    let server = Server::start("");
    let grpcurl = cache("bin/grpcurl");
    let address = server.url.trim_start_matches("http://").to_string();
    let call = |args: &[&str], stdin: Option<&str>| -> Output {
        let mut cmd = Command::new(&grpcurl);
        cmd.arg("-plaintext").args(args);
        match stdin {
            None => cmd.output().expect("grpcurl"),
            Some(input) => {
                use std::io::Write;
                let mut child = cmd
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("grpcurl");
                child
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(input.as_bytes())
                    .expect("write");
                child.wait_with_output().expect("grpcurl")
            }
        }
    };
    let json = |out: &Output, what: &str| -> serde_json::Value {
        serde_json::from_str(&check(out, what)).expect("grpcurl prints JSON")
    };

    let services = check(&call(&[&address, "list"], None), "list");
    for s in [
        "osteo.v1.OsteoService",
        "grpc.health.v1.Health",
        "inference.GRPCInferenceService",
    ] {
        assert!(services.contains(s), "{s} listed: {services}");
    }
    let methods = check(
        &call(&[&address, "list", "osteo.v1.OsteoService"], None),
        "list methods",
    );
    for m in osteo_proto::METHODS {
        assert!(methods.contains(m), "{m} listed: {methods}");
    }
    let described = check(
        &call(&[&address, "describe", "osteo.v1.ClinicalVariables"], None),
        "describe",
    );
    assert!(described.contains("age_years"), "{described}");

    let health = json(
        &call(
            &[
                "-d",
                r#"{"service":"osteo.v1.OsteoService"}"#,
                &address,
                "grpc.health.v1.Health/Check",
            ],
            None,
        ),
        "health",
    );
    assert_eq!(health["status"], "SERVING");
    let models = json(
        &call(&[&address, "osteo.v1.OsteoService/ListModels"], None),
        "ListModels",
    );
    assert_eq!(models["defaultModel"], "osteo-fused-v1");

    // Client streaming from JSON messages on stdin: the header, then one chunk per file.
    let dir = tempfile::tempdir().expect("tempdir");
    let files = read_all(&study(dir.path()));
    let mut stream = format!("{{\"header\":{{\"expectedFiles\":{}}}}}\n", files.len());
    for (i, f) in files.iter().enumerate() {
        stream.push_str(&format!(
            "{{\"chunk\":{{\"fileIndex\":{i},\"data\":\"{}\",\"last\":true}}}}\n",
            base64(f)
        ));
    }
    let uploaded = json(
        &call(
            &["-d", "@", &address, "osteo.v1.OsteoService/UploadStudy"],
            Some(&stream),
        ),
        "UploadStudy",
    );
    let handle = uploaded["summary"]["study"]
        .as_str()
        .expect("handle")
        .to_string();
    let request = format!(
        r#"{{"study":{{"study":"{handle}"}},"clinical":{{"age_years":71,"sex":"SEX_FEMALE","height_cm":158,"weight_kg":52}}}}"#
    );
    let classified = json(
        &call(
            &["-d", &request, &address, "osteo.v1.OsteoService/Classify"],
            None,
        ),
        "Classify",
    );
    assert!(
        classified["grade"]
            .as_str()
            .is_some_and(|g| g.starts_with("GRADE_"))
    );
    let explained = json(
        &call(
            &["-d", &request, &address, "osteo.v1.OsteoService/Explain"],
            None,
        ),
        "Explain",
    );
    assert_eq!(explained["gradcam"]["height"], 128);
    let compared = json(
        &call(
            &[
                "-d",
                &request,
                &address,
                "osteo.v1.OsteoService/CompareBackends",
            ],
            None,
        ),
        "CompareBackends",
    );
    assert_eq!(compared["gradesAgree"], true);
    let by_handle = format!(r#"{{"study":"{handle}"}}"#);
    let got = json(
        &call(
            &["-d", &by_handle, &address, "osteo.v1.OsteoService/GetStudy"],
            None,
        ),
        "GetStudy",
    );
    assert_eq!(got["summary"]["study"], handle.as_str());
    json(
        &call(
            &[
                "-d",
                &by_handle,
                &address,
                "osteo.v1.OsteoService/DeleteStudy",
            ],
            None,
        ),
        "DeleteStudy",
    );
    let missing = call(
        &["-d", &by_handle, &address, "osteo.v1.OsteoService/GetStudy"],
        None,
    );
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("NotFound"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_and_grpcurl_over_tls_with_a_token_or_a_client_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let common::pki::EitherServer {
        server,
        ca,
        clients,
        token,
        ..
    } = common::pki::EitherServer::start(
        dir.path(),
        &[("osteo-tabular-v1", "backends = [\"candle\"]")],
    )
    .await;
    let address = server.addr.to_string();
    let reporter = clients.client("reporting-ws");
    let stubs = python_stubs(dir.path());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut python = Command::new(cache("venv/bin/python"));
    python
        .arg(root.join("tests/python/tls_client.py"))
        .arg(&stubs)
        .arg(&address)
        .arg(&ca.cert)
        .arg(&token)
        .arg(&reporter.cert)
        .arg(&reporter.key);
    let out = tokio::task::spawn_blocking(move || python.output().expect("python"))
        .await
        .expect("join");
    let stdout = check(&out, "the Python TLS client");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(v["no_credentials"], "UNAUTHENTICATED", "{v}");
    assert_eq!(v["wrong_token"], "UNAUTHENTICATED", "{v}");
    assert_eq!(
        v["token"],
        serde_json::json!(["OK", "osteo-tabular-v1"]),
        "{v}"
    );
    assert_eq!(
        v["certificate"],
        serde_json::json!(["OK", "osteo-tabular-v1"]),
        "{v}"
    );
    assert!(
        v["grade"].as_str().is_some_and(|g| g.starts_with("GRADE_")),
        "{v}"
    );

    // grpcurl: reflection and calls over TLS, with the token or the client certificate.
    let grpcurl = cache("bin/grpcurl");
    let run = |args: Vec<String>| {
        let grpcurl = grpcurl.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                Command::new(grpcurl).args(args).output().expect("grpcurl")
            })
            .await
            .expect("join")
        }
    };
    let tls = |extra: &[&str]| -> Vec<String> {
        let mut a = vec![
            "-cacert".to_string(),
            ca.cert.display().to_string(),
            "-servername".into(),
            "localhost".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let bearer = format!("authorization: Bearer {token}");
    let listed = run(tls(&["-H", &bearer, &address, "list"])).await;
    let services = check(&listed, "grpcurl list over TLS");
    assert!(services.contains("osteo.v1.OsteoService"), "{services}");
    let models = run(tls(&[
        "-H",
        &bearer,
        &address,
        "osteo.v1.OsteoService/ListModels",
    ]))
    .await;
    assert!(check(&models, "ListModels").contains("osteo-tabular-v1"));
    let reporter_cert = reporter.cert.display().to_string();
    let reporter_key = reporter.key.display().to_string();
    let by_cert = run(tls(&[
        "-cert",
        &reporter_cert,
        "-key",
        &reporter_key,
        &address,
        "osteo.v1.OsteoService/ListModels",
    ]))
    .await;
    assert!(check(&by_cert, "ListModels with a client certificate").contains("osteo-tabular-v1"));
    // Reflection follows the authentication mode: nothing without credentials.
    let refused = run(tls(&[&address, "list"])).await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Unauthenticated"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // And plaintext gets nothing from the TLS port.
    let plaintext = run(vec!["-plaintext".into(), address.clone(), "list".into()]).await;
    assert!(!plaintext.status.success());
}

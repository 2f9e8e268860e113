//! Telemetry of the real server: spans exported over OTLP/gRPC to a real receiver on loopback
//! (Python grpcio + opentelemetry-proto), JSON log lines, and neither carrying patient data.

use crate::common::*;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_and_logs_are_json_without_patient_data() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".cache/venv/bin/python");
    assert!(python.exists(), "run scripts/setup.sh");
    let mut receiver = Command::new(&python)
        .arg(root.join("tests/python/otlp_receiver.py"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the OTLP receiver");
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = receiver.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the receiver reports its port");
    let port = first.strip_prefix("PORT ").expect("PORT line").to_string();

    let mut server = Server::start(&format!(
        "[telemetry]\nlog_format = \"json\"\notlp_endpoint = \"http://127.0.0.1:{port}\"\n\
         service_name = \"osteoserve-test\"\n"
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let files = read_all(&study(dir.path()));
    let mut client = server.client().await;
    let handle = upload(&mut client, &files, 64 * 1024).await;
    client
        .classify(osteo_proto::v1::ClassifyRequest {
            study: by_handle(&handle),
            clinical: Some(clinical()),
            model: String::new(),
            backend: String::new(),
            clinical_from_dicom: false,
            dicom_outputs: false,
            fhir_outputs: false,
            model_version: String::new(),
        })
        .await
        .expect("classify");
    // Shutting down flushes the batch exporter.
    assert!(server.terminate().success());

    let mut spans: Vec<serde_json::Value> = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            spans.push(serde_json::from_str(&line).expect("span JSON"));
        }
        let classify = spans.iter().any(|s| {
            s["attributes"]["rpc"] == "Classify" && s["attributes"]["study"] == handle.as_str()
        });
        if classify && spans.iter().any(|s| s["name"] == "batch") {
            break;
        }
    }
    let _ = receiver.kill();
    let _ = receiver.wait();
    let classify = spans
        .iter()
        .find(|s| s["attributes"]["rpc"] == "Classify")
        .unwrap_or_else(|| panic!("a Classify span was exported: {spans:?}"));
    assert_eq!(classify["service"], "osteoserve-test");
    assert_eq!(classify["name"], "rpc");
    assert_eq!(classify["attributes"]["study"], handle.as_str());
    assert_eq!(classify["attributes"]["model"], "osteo-fused-v1");
    assert_eq!(classify["attributes"]["backend"], "ort");
    assert!(
        spans
            .iter()
            .any(|s| s["attributes"]["rpc"] == "UploadStudy"),
        "{spans:?}"
    );
    // The model ran on the worker thread inside the call's trace.
    assert!(
        spans.iter().any(|s| s["name"] == "batch"
            && s["parent"] == classify["id"]
            && s["trace"] == classify["trace"]),
        "a batch span under the Classify span: {spans:?}"
    );

    let exported = serde_json::to_string(&spans).expect("JSON");
    let output = server.output();
    for secret in [PATIENT_NAME, PATIENT_ID, "JANE", "QUIETLY"] {
        assert!(!exported.contains(secret), "{secret} in an exported span");
        assert!(!output.contains(secret), "{secret} in the logs");
    }
    let mut served = 0;
    for line in output.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        if v["message"] == "request served" {
            served += 1;
        }
    }
    assert!(served >= 2, "upload and classify logged:\n{output}");
}

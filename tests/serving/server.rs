//! The real `osteo serve` process over loopback, called with the generated Rust client: upload in
//! many chunks, classify (handle and inline), explain, list, get, delete, concurrent clients with
//! dynamic batching observed in /metrics, every documented error code, graceful shutdown, and no
//! patient identifier anywhere in the server's output.

use crate::common::*;
use osteo_proto::v1 as pb;
use osteo_proto::v1::osteo_service_client::OsteoServiceClient;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_classify_explain_and_manage_a_study() {
    let server = Server::start("");
    let dir = tempfile::tempdir().expect("tempdir");
    let files = read_all(&study(dir.path()));
    let mut client = server.client().await;

    // Many small chunks: ~10 per file.
    let messages = upload_messages(&files, 8 * 1024);
    assert!(messages.len() > 10 * files.len());
    let summary = client
        .upload_study(tokio_stream::iter(messages))
        .await
        .expect("upload")
        .into_inner()
        .summary
        .expect("summary");
    let handle = summary.study.clone();
    assert!(handle.starts_with("st_"));
    assert_eq!(summary.modality, "CT");
    let geometry = summary.geometry.expect("geometry");
    assert_eq!(geometry.slices as usize, files.len());
    assert!(summary.stored_bytes > 0 && summary.expires_in_s > 0);

    let request = |study| pb::ClassifyRequest {
        study,
        clinical: Some(clinical()),
        model: String::new(),
        backend: String::new(),
        clinical_from_dicom: false,
        dicom_outputs: false,
        fhir_outputs: false,
        model_version: String::new(),
    };
    let classified = client
        .classify(request(by_handle(&handle)))
        .await
        .expect("classify by handle")
        .into_inner();
    assert_eq!(classified.study, handle);
    assert_eq!(
        classified.model.as_ref().map(|m| m.name.as_str()),
        Some("osteo-fused-v1")
    );
    let p = classified.probabilities.expect("probabilities");
    assert!(((p.normal + p.osteopenia + p.osteoporosis) - 1.0).abs() < 1e-5);

    // The one-call form without state gives the same answer.
    let inline = client
        .classify(request(inline(&files)))
        .await
        .expect("inline classify")
        .into_inner();
    assert_eq!(inline.logits, classified.logits);

    // The server agrees with local inference on the same files (`osteo predict`).
    let local = Command::new(env!("CARGO_BIN_EXE_osteo"))
        .args(["predict", "--model"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/osteo-fused-v1"))
        .arg("--dicom")
        .arg(dir.path())
        .args(CLINICAL_FLAGS)
        .args(["--smoker", "true", "--json"])
        .output()
        .expect("predict");
    assert!(
        local.status.success(),
        "{}",
        String::from_utf8_lossy(&local.stderr)
    );
    let local: serde_json::Value = serde_json::from_slice(&local.stdout).expect("JSON");
    let local_p = local["probabilities"]["osteoporosis"].as_f64().expect("p");
    assert!(
        (local_p - f64::from(p.osteoporosis)).abs() < 1e-5,
        "{local_p} vs {p:?}"
    );

    let explained = client
        .explain(pb::ExplainRequest {
            study: by_handle(&handle),
            clinical: Some(clinical()),
            model: String::new(),
            backend: String::new(),
            target: pb::Grade::Osteoporosis as i32,
            clinical_from_dicom: false,
            dicom_outputs: false,
            fhir_outputs: false,
            model_version: String::new(),
        })
        .await
        .expect("explain")
        .into_inner();
    assert_eq!(explained.target, pb::Grade::Osteoporosis as i32);
    let map = explained.gradcam.expect("map");
    assert_eq!((map.height, map.width), (128, 128));
    assert_eq!(map.values.len(), 128 * 128);
    assert!(map.values.iter().all(|v| (0.0..=1.0).contains(v)));
    let max = map.values.iter().fold(0f32, |m, v| m.max(*v));
    // Normalised to 1 on the activation grid, then interpolated: the peak stays near 1.
    assert!(
        max == 0.0 || (0.5..=1.0).contains(&max),
        "normalised map (all 0 without positive evidence): peak {max}"
    );
    assert!(map.overlay_png.starts_with(b"\x89PNG"));
    let g = map.geometry.expect("geometry");
    assert_eq!(g.view, "coronal_slab");
    assert!((g.pixel_mm - 3.0).abs() < 1e-9);

    // Without a target the predicted grade is explained.
    let predicted = client
        .explain(pb::ExplainRequest {
            study: by_handle(&handle),
            clinical: Some(clinical()),
            model: String::new(),
            backend: String::new(),
            target: pb::Grade::Unspecified as i32,
            clinical_from_dicom: false,
            dicom_outputs: false,
            fhir_outputs: false,
            model_version: String::new(),
        })
        .await
        .expect("explain the prediction")
        .into_inner();
    assert_eq!(predicted.target, classified.grade);
    let max = predicted
        .gradcam
        .expect("map")
        .values
        .iter()
        .fold(0f32, |m, v| m.max(*v));
    assert!(
        max > 0.5,
        "the predicted grade has positive evidence: peak {max}"
    );

    let models = client
        .list_models(pb::ListModelsRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(models.default_model, "osteo-fused-v1");
    assert_eq!(models.models.len(), 2);
    let fused = &models.models[0];
    assert_eq!(fused.backends[0].name, "ort");
    assert_eq!(fused.backends[0].device, "cpu");
    assert!(fused.metrics.contains_key("auc_macro"));

    let got = client
        .get_study(pb::GetStudyRequest {
            study: handle.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.summary.map(|s| s.study), Some(handle.clone()));
    let freed = client
        .delete_study(pb::DeleteStudyRequest {
            study: handle.clone(),
        })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(freed.freed_bytes, summary.stored_bytes);
    let gone = client
        .get_study(pb::GetStudyRequest {
            study: handle.clone(),
        })
        .await
        .expect_err("deleted");
    assert_eq!(gone.code(), Code::NotFound);

    // A file whose header names the patient but whose pixels are cut off is refused.
    let mut broken = files[0].clone();
    broken.truncate(broken.len() / 2);
    let refused = client
        .upload_study(tokio_stream::iter(upload_messages(&[broken], 4096)))
        .await
        .expect_err("truncated file");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");

    // The CLI client: `classify --json` prints the documented object; errors exit 2 with the
    // gRPC code and message.
    let cli = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_osteo"))
            .args(["classify", "--server", &server.url, "--dicom"])
            .arg(dir.path())
            .args(["--sex", "F", "--height-cm", "158", "--weight-kg", "52"])
            .args(extra)
            .output()
            .expect("osteo classify")
    };
    let out = cli(&["--age", "71", "--smoker", "true", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["model"], "osteo-fused-v1");
    assert_eq!(v["backend"], "ort");
    assert_eq!(
        v["grade"].as_str(),
        Some(local["grade"].as_str().expect("grade"))
    );
    let p_cli = v["probabilities"]["osteoporosis"]
        .as_f64()
        .expect("probability");
    assert!((p_cli - local_p).abs() < 1e-5);
    assert!(v["latency_ms"].as_f64().is_some_and(|ms| ms > 0.0));
    assert!(v["study"].as_str().is_some_and(|h| h.starts_with("st_")));
    let out = cli(&["--age", "12", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: INVALID_ARGUMENT: ") && stderr.contains("age_years"),
        "{stderr}"
    );

    let metrics = server.scrape();
    assert_eq!(
        metric(&metrics, "osteo_store_bytes", &[]),
        0.0,
        "nothing left behind"
    );
    // The upload was decoded and gated once, each timed.
    for stage in ["stage=\"decode\"", "stage=\"gate\""] {
        assert!(
            metric(&metrics, "osteo_ingest_seconds_count", &[stage]) >= 1.0,
            "{stage}"
        );
    }
    let output = server.output();
    for secret in [PATIENT_NAME, PATIENT_ID, "JANE", "QUIETLY"] {
        assert!(
            !output.contains(secret),
            "{secret} leaked into the server output:\n{output}"
        );
        assert!(!metrics.contains(secret), "{secret} leaked into /metrics");
    }
    assert!(
        output.contains(&handle),
        "logs carry the de-identified handle"
    );
}

/// The code of a failed call, with its message for the assertion text.
fn code_of<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    let s = r.expect_err("the call must fail");
    (s.code(), s.message().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_error_code_is_returned_with_an_actionable_message() {
    let server =
        Server::start("[store]\nmax_upload_bytes = 20000000\n[scheduler]\nmax_delay_ms = 1000\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let files = read_all(&study(dir.path()));
    let mut client = server.client().await;
    let classify = |study, model: &str, clinical| pb::ClassifyRequest {
        study,
        clinical,
        model: model.to_string(),
        backend: String::new(),
        clinical_from_dicom: false,
        dicom_outputs: false,
        fhir_outputs: false,
        model_version: String::new(),
    };

    // INVALID_ARGUMENT: bytes that are not DICOM, out-of-range clinical values.
    let (code, msg) = code_of(
        client
            .upload_study(tokio_stream::iter(upload_messages(
                &[vec![7u8; 5000]],
                1000,
            )))
            .await,
    );
    assert_eq!(code, Code::InvalidArgument, "{msg}");
    assert!(msg.contains("upload file #0"), "names the file: {msg}");
    let mut young = clinical();
    young.age_years = 9.0;
    let (code, msg) = code_of(
        client
            .classify(classify(None, "osteo-tabular-v1", Some(young)))
            .await,
    );
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("age_years"), "{msg}");

    // NOT_FOUND: unknown study, model and backend.
    let (code, msg) = code_of(
        client
            .classify(classify(by_handle("st_0000"), "", Some(clinical())))
            .await,
    );
    assert_eq!(code, Code::NotFound);
    assert!(msg.contains("upload it again"), "{msg}");
    let (code, msg) = code_of(
        client
            .classify(classify(None, "osteo-x", Some(clinical())))
            .await,
    );
    assert_eq!(code, Code::NotFound);
    assert!(
        msg.contains("osteo-fused-v1"),
        "lists the served models: {msg}"
    );
    let mut other_backend = classify(None, "osteo-tabular-v1", Some(clinical()));
    other_backend.backend = "tch".into();
    let (code, msg) = code_of(client.classify(other_backend).await);
    assert_eq!(code, Code::NotFound);
    assert!(msg.contains("candle"), "{msg}");

    // RESOURCE_EXHAUSTED: an upload declaring more than store.max_upload_bytes.
    let mut big = upload_messages(&files[..1], 4096);
    if let Some(pb::upload_study_request::Part::Header(h)) = &mut big[0].part {
        h.expected_bytes = 50_000_000;
    }
    let (code, msg) = code_of(client.upload_study(tokio_stream::iter(big)).await);
    assert_eq!(code, Code::ResourceExhausted);
    assert!(msg.contains("store.max_upload_bytes"), "{msg}");

    // FAILED_PRECONDITION: an image model without a study (Classify and Explain); DICOM outputs
    // of a tabular model's explanation without a study to write them into.
    let (code, msg) = code_of(client.classify(classify(None, "", Some(clinical()))).await);
    assert_eq!(code, Code::FailedPrecondition);
    assert!(msg.contains("reads CT"), "{msg}");
    let explain = |model: &str, dicom_outputs: bool| pb::ExplainRequest {
        study: None,
        clinical: Some(clinical()),
        model: model.into(),
        dicom_outputs,
        ..Default::default()
    };
    let (code, msg) = code_of(client.explain(explain("", false)).await);
    assert_eq!(code, Code::FailedPrecondition);
    assert!(msg.contains("reads CT"), "{msg}");
    let (code, msg) = code_of(client.explain(explain("osteo-tabular-v1", true)).await);
    assert_eq!(code, Code::FailedPrecondition, "{msg}");

    // An upload that stops inside a file stores nothing.
    let mut cut = upload_messages(&files[..2], 4096);
    cut.pop();
    let (code, msg) = code_of(client.upload_study(tokio_stream::iter(cut)).await);
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("ended inside file #1"), "{msg}");
    assert_eq!(metric(&server.scrape(), "osteo_store_bytes", &[]), 0.0);

    // DEADLINE_EXCEEDED: the batcher holds a lone request for up to 1 s hoping for company
    // (max_delay_ms below); a 200 ms deadline passes first, and the worker then skips the
    // abandoned request instead of computing it.
    let handle = upload(&mut client, &files, 1 << 20).await;
    // The study's view and attenuation are computed once, before the deadline's request.
    client
        .classify(classify(by_handle(&handle), "", Some(clinical())))
        .await
        .expect("a first classification of the study");
    let mut request = tonic::Request::new(classify(by_handle(&handle), "", Some(clinical())));
    // The header alone: tonic's client-side timer would answer CANCELLED on its own.
    request
        .metadata_mut()
        .insert("grpc-timeout", "200m".parse().expect("header value"));
    let (code, msg) = code_of(client.classify(request).await);
    assert_eq!(code, Code::DeadlineExceeded, "{msg}");
    assert!(msg.contains("deadline"), "{msg}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let skipped = metric(&server.scrape(), "osteo_cancelled_total", &[]);
    assert_eq!(skipped, 1.0, "the abandoned request was skipped");

    // UNAVAILABLE: the server has stopped.
    let url = server.url.clone();
    let mut server = server;
    assert!(server.terminate().success(), "clean exit on SIGTERM");
    let channel = Channel::from_shared(url).expect("url").connect_lazy();
    let mut late = OsteoServiceClient::new(channel);
    let (code, _) = code_of(late.list_models(pb::ListModelsRequest {}).await);
    assert_eq!(code, Code::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_are_batched_and_a_full_queue_is_refused() {
    let server = Server::start("[scheduler]\nmax_batch = 16\nmax_delay_ms = 25\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let files = read_all(&study(dir.path()));
    let mut client = server.client().await;
    let handle = upload(&mut client, &files, 1 << 20).await;

    // 8 clients with 6 requests each, bounded in time.
    let (clients, per_client) = (8, 6);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut c = server.client().await;
        let handle = handle.clone();
        tasks.push(tokio::spawn(async move {
            let mut codes = Vec::new();
            for _ in 0..per_client {
                let r = c
                    .classify(pb::ClassifyRequest {
                        study: by_handle(&handle),
                        clinical: Some(clinical()),
                        model: String::new(),
                        backend: String::new(),
                        clinical_from_dicom: false,
                        dicom_outputs: false,
                        fhir_outputs: false,
                        model_version: String::new(),
                    })
                    .await;
                codes.push(r.map(|r| r.into_inner().logits).map_err(|s| s.code()));
            }
            codes
        }));
    }
    let mut logits = Vec::new();
    for t in tasks {
        let results = tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("clients finish in time")
            .expect("task");
        for r in results {
            logits.push(r.expect("every concurrent request succeeds"));
        }
    }
    assert_eq!(logits.len(), clients * per_client);
    assert!(
        logits.windows(2).all(|w| w[0] == w[1]),
        "batching does not change a request's answer"
    );
    let metrics = server.scrape();
    let labels = ["model=\"osteo-fused-v1\""];
    let batches = metric(&metrics, "osteo_batch_size_count", &labels);
    let samples = metric(&metrics, "osteo_batch_size_sum", &labels);
    assert_eq!(samples, (clients * per_client) as f64, "{metrics}");
    assert!(
        batches < samples,
        "batches larger than one formed: {samples} requests in {batches} batches"
    );
    let served = metric(
        &metrics,
        "osteo_requests_total",
        &["rpc=\"Classify\"", "code=\"Ok\""],
    );
    assert_eq!(served, (clients * per_client) as f64);

    // A queue of one: a burst is partly refused with RESOURCE_EXHAUSTED, the rest is served.
    drop(server);
    let server =
        Server::start("[scheduler]\nmax_batch = 1\nmax_delay_ms = 0\nqueue_capacity = 1\n");
    let mut client = server.client().await;
    let handle = upload(&mut client, &files, 1 << 20).await;
    let mut burst = Vec::new();
    for _ in 0..24 {
        let mut c = client.clone();
        let handle = handle.clone();
        burst.push(tokio::spawn(async move {
            c.classify(pb::ClassifyRequest {
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
            .map(|_| ())
            .map_err(|s| (s.code(), s.message().to_string()))
        }));
    }
    let mut refused = 0;
    let mut ok = 0;
    for t in burst {
        match t.await.expect("task") {
            Ok(()) => ok += 1,
            Err((Code::ResourceExhausted, msg)) => {
                assert!(msg.contains("queue"), "{msg}");
                refused += 1;
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(ok >= 1 && refused >= 1, "served {ok}, refused {refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests() {
    let mut server = Server::start("");
    let dir = tempfile::tempdir().expect("tempdir");
    let files = read_all(&study(dir.path()));
    let mut client = server.client().await;
    let inline = pb::ExplainRequest {
        study: inline(&files),
        clinical: Some(clinical()),
        model: String::new(),
        backend: String::new(),
        target: 0,
        clinical_from_dicom: false,
        dicom_outputs: false,
        fhir_outputs: false,
        model_version: String::new(),
    };
    let in_flight = tokio::spawn(async move { client.explain(inline).await });
    // Once the request has reached the server, ask it to stop.
    server.wait_until("request started");
    let status = server.terminate();
    let answer = in_flight.await.expect("task");
    assert!(
        answer.is_ok(),
        "the in-flight request finished: {answer:?}\n{}",
        server.output()
    );
    assert!(status.success());
    assert!(server.output().contains("shutting down"));
}

/// SIGTERM to the real binary drains first: NOT_SERVING and REST 503 at once, requests still
/// answered for `server.drain_delay_s`, then a clean exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_reporting_not_serving_while_still_answering() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let mut server = Server::start("[server]\ndrain_delay_s = 4\n");
    let mut client = server.client().await;
    let channel = Channel::from_shared(server.url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);
    server.signal_term();
    server.wait_until("draining");
    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers while draining")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::NotServing as i32);
    let request = pb::ClassifyRequest {
        clinical: Some(clinical()),
        model: "osteo-tabular-v1".into(),
        ..Default::default()
    };
    client
        .classify(request)
        .await
        .expect("still serving while draining");
    let ready = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("{}/v2/health/ready", server.rest))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&ready.stdout), "503");
    assert!(server.wait_exit().success(), "{}", server.output());
    let log = server.output();
    assert!(
        log.find("draining") < log.find("shutting down"),
        "drained, then shut down:\n{log}"
    );
}

#[test]
fn an_invalid_configuration_stops_the_server_at_start_up_naming_the_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_osteo"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("OSTEO__SCHEDULER__MAX_BATCH", "0")
        .output()
        .expect("osteo serve");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("scheduler.max_batch"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_osteo"))
        .args(["serve", "--listen", "not-an-address"])
        .output()
        .expect("osteo serve");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.listen"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_text_can_neither_forge_nor_flood_a_log_line() {
    const FORGED: &str = "2026-01-01T00:00:00.000000Z  INFO osteo_server: FORGED";
    let hostile = format!("st_x\n{FORGED}\u{1b}[31m\r\"}}{{\"level\":\"ERROR\"");
    let huge = "A".repeat(20 << 20);
    for format in ["pretty", "json"] {
        let server = Server::start(&format!("[telemetry]\nlog_format = \"{format}\"\n"));
        let mut client = server.client().await;
        for text in [hostile.as_str(), huge.as_str()] {
            let get = client
                .get_study(pb::GetStudyRequest {
                    study: text.to_string(),
                })
                .await;
            assert_eq!(code_of(get).0, Code::NotFound);
            let delete = client
                .delete_study(pb::DeleteStudyRequest {
                    study: text.to_string(),
                })
                .await;
            assert_eq!(code_of(delete).0, Code::NotFound);
            for (model, backend) in [(text, ""), ("", text)] {
                let (c, msg) = code_of(
                    client
                        .classify(pb::ClassifyRequest {
                            clinical: Some(clinical()),
                            model: model.to_string(),
                            backend: backend.to_string(),
                            study: by_handle(text),
                            clinical_from_dicom: false,
                            dicom_outputs: false,
                            fhir_outputs: false,
                            model_version: String::new(),
                        })
                        .await,
                );
                assert_eq!(c, Code::NotFound, "{msg}");
                assert!(msg.len() < 1024, "{} bytes of message", msg.len());
                assert!(!msg.contains('\n') && !msg.contains('\u{1b}'), "{msg:?}");
            }
        }
        // Every failed request was logged; the log must still be one event per line.
        let start = std::time::Instant::now();
        while server.output().matches("request failed").count() < 8 {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{}",
                server.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let out = server.output();
        for line in out.lines() {
            assert!(
                !line.starts_with(FORGED),
                "forged line in the {format} log: {line}"
            );
            assert!(
                !line.contains('\u{1b}'),
                "raw escape in the {format} log: {line:?}"
            );
            assert!(
                line.len() < 8192,
                "a {} byte line in the {format} log",
                line.len()
            );
            if format == "json" {
                serde_json::from_str::<serde_json::Value>(line)
                    .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_silent_connection_exits_at_once() {
    // A grace period far longer than the harness waits: waiting for the silent connection
    // would fail the test.
    let mut server = Server::start("[server]\nshutdown_grace_s = 600\n");
    let addr = server.url.trim_start_matches("http://").to_string();
    let _silent = std::net::TcpStream::connect(&addr).expect("connect");
    let _preface_only = {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(&addr).expect("connect");
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .expect("preface");
        s
    };
    let status = server.terminate();
    assert!(status.success(), "{}", server.output());
}

#[test]
fn accept_errors_back_off_instead_of_spinning() {
    // The server runs with few file descriptors; connections beyond them make accept fail
    // with EMFILE until some close. It must neither spin nor log each failure. Its listeners'
    // connection limits cannot fit 64 descriptors: `fd_limit = "warn"` serves anyway, saying so.
    let mut server = Server::start_limited("[server]\nfd_limit = \"warn\"\n", 64);
    assert!(
        server.output().contains("the open-file limit is 64"),
        "the shortfall is logged:\n{}",
        server.output()
    );
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut held = Vec::new();
    for _ in 0..120 {
        if let Ok(s) = std::net::TcpStream::connect(&addr) {
            held.push(s);
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    let out = server.output();
    let failures = out.matches("accept failed").count();
    eprintln!("accept failures logged in 3 s of descriptor exhaustion: {failures}");
    assert!(failures >= 1, "the exhaustion was not reached:\n{out}");
    assert!(failures < 10, "{failures} accept failures logged in 3 s");
    drop(held);
    let status = server.terminate();
    assert!(status.success());
}

//! GradeStudy, handles across server instances, and draining at shutdown, on in-process servers:
//! one call uploads and grades (classify, explain, compare) and stores nothing; a bad stream is
//! refused before its files are read; a handle taken to another instance names the cause and the
//! remedy; a server told to stop reports NOT_SERVING at once and keeps answering for its drain
//! delay.

use crate::common::auth::code_of;
use crate::common::inproc::{InProc, registry};
use crate::common::*;
use osteo_proto::v1 as pb;
use pb::grade_action::Action;
use pb::grade_study_response::Result as Graded;
use std::time::{Duration, Instant};
use tonic::Code;

const FUSED_AND_TABULAR: [(&str, &str); 2] = [
    ("osteo-fused-v1", "backends = [\"candle\", \"ort\"]"),
    ("osteo-tabular-v1", "backends = [\"candle\"]"),
];

fn classify_action() -> Action {
    Action::Classify(pb::ClassifyRequest {
        clinical: Some(clinical()),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grade_study_answers_in_one_call_and_keeps_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = read_all(&study(&dir.path().join("study")));
    let audit = dir.path().join("audit.jsonl");
    let server = InProc::start(
        &format!("[audit]\npath = \"{}\"\n", audit.display()),
        &FUSED_AND_TABULAR,
        registry(),
    )
    .await;
    let mut c = server.client().await;
    let grade = |action: Action| tokio_stream::iter(grade_messages(action, &files, 64 << 10));

    let r = c
        .grade_study(grade(classify_action()))
        .await
        .expect("GradeStudy classify")
        .into_inner();
    let summary = r.summary.expect("summary");
    assert!(summary.geometry.expect("geometry").slices > 0);
    assert_eq!((summary.stored_bytes, summary.expires_in_s), (0, 0));
    let gate = summary
        .quality
        .iter()
        .find(|q| q.model == "osteo-fused-v1")
        .expect("the fused model's gate");
    assert!(gate.passed, "{gate:?}");
    let Some(Graded::Classification(one_call)) = r.result else {
        panic!("a classification");
    };
    let model = one_call.model.as_ref().expect("model");
    assert_eq!(model.weights_blake3, weights_digest("osteo-fused-v1"));
    assert_eq!(model.server_version, env!("CARGO_PKG_VERSION"));
    // The same answer as upload + Classify by handle.
    let handle = upload(&mut c, &files, 1 << 20).await;
    let by_handle_answer = c
        .classify(pb::ClassifyRequest {
            study: by_handle(&handle),
            clinical: Some(clinical()),
            ..Default::default()
        })
        .await
        .expect("classify by handle")
        .into_inner();
    assert_eq!(one_call.grade, by_handle_answer.grade);
    assert_eq!(one_call.logits, by_handle_answer.logits);
    // Nothing was stored: the transient handle is unknown.
    let (code, msg) = code_of(
        c.get_study(pb::GetStudyRequest {
            study: summary.study.clone(),
        })
        .await,
    );
    assert_eq!(code, Code::NotFound, "{msg}");
    assert_eq!(one_call.study, summary.study);

    let r = c
        .grade_study(grade(Action::Explain(pb::ExplainRequest {
            clinical: Some(clinical()),
            dicom_outputs: true,
            ..Default::default()
        })))
        .await
        .expect("GradeStudy explain")
        .into_inner();
    let Some(Graded::Explanation(e)) = r.result else {
        panic!("an explanation");
    };
    let map = e.gradcam.expect("Grad-CAM");
    assert_eq!(map.values.len(), (map.height * map.width) as usize);
    assert!(!e.dicom_secondary_capture.is_empty());
    assert!(
        !e.classification
            .expect("classification")
            .dicom_sr
            .is_empty()
    );

    let r = c
        .grade_study(grade(Action::Compare(pb::CompareBackendsRequest {
            clinical_from_dicom: true,
            ..Default::default()
        })))
        .await
        .expect("GradeStudy compare")
        .into_inner();
    let Some(Graded::Comparison(cmp)) = r.result else {
        panic!("a comparison");
    };
    let names: Vec<&str> = cmp
        .results
        .iter()
        .filter_map(|b| b.backend.as_ref().map(|b| b.name.as_str()))
        .collect();
    assert_eq!(names, ["candle", "ort"]);

    let records = audit_records(&audit, "GradeStudy");
    assert_eq!(records.len(), 3, "{records:?}");
    assert!(records.iter().all(|r| r["code"] == "Ok"), "{records:?}");
    assert!(records.iter().all(|r| r["model"] == "osteo-fused-v1"));
    let digest = weights_digest("osteo-fused-v1");
    assert!(
        records
            .iter()
            .all(|r| r["weights_blake3"] == digest.as_str()),
        "{records:?}"
    );
    assert!(
        records[0]["study"]
            .as_str()
            .is_some_and(|s| s.starts_with("st_"))
    );
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grade_study_refuses_a_bad_stream_before_reading_its_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = read_all(&study(&dir.path().join("study")));
    let server = InProc::start(
        "[server]\nrequest_timeout_s = 2\n[store]\nmax_upload_bytes = 67108864\n\
         max_concurrent_uploads = 1\n",
        &FUSED_AND_TABULAR,
        registry(),
    )
    .await;
    let mut c = server.client().await;
    let header = |action: Option<Action>, upload: pb::UploadHeader| pb::GradeStudyRequest {
        part: Some(pb::grade_study_request::Part::Header(
            pb::GradeStudyHeader {
                action: Some(pb::GradeAction { action }),
                upload: Some(upload),
            },
        )),
    };
    let refused = |messages: Vec<pb::GradeStudyRequest>| {
        let mut c = c.clone();
        async move { code_of(c.grade_study(tokio_stream::iter(messages)).await) }
    };

    let (code, msg) = refused(vec![header(None, Default::default())]).await;
    assert_eq!(code, Code::InvalidArgument, "{msg}");
    assert!(msg.contains("header.action"), "{msg}");

    let (code, msg) = refused(vec![header(
        Some(Action::Classify(pb::ClassifyRequest {
            study: by_handle("st_89abcdef_0123456789abcdef0123456789abcdef"),
            ..Default::default()
        })),
        Default::default(),
    )])
    .await;
    assert_eq!(code, Code::InvalidArgument, "{msg}");
    assert!(msg.contains("header.action.classify.study"), "{msg}");

    let mut chunks_first = grade_messages(classify_action(), &files, 1 << 20);
    chunks_first.remove(0);
    let (code, msg) = refused(chunks_first).await;
    assert_eq!(code, Code::InvalidArgument, "{msg}");
    assert!(msg.contains("first message must be the header"), "{msg}");

    let mut twice = grade_messages(classify_action(), &files, 1 << 20);
    twice.insert(1, twice[0].clone());
    let (code, msg) = refused(twice).await;
    assert_eq!(code, Code::InvalidArgument, "{msg}");
    assert!(msg.contains("only once"), "{msg}");

    // An unknown model is refused on the header alone, while the stream is still open.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(header(
        Some(Action::Explain(pb::ExplainRequest {
            model: "osteo-nope".into(),
            ..Default::default()
        })),
        Default::default(),
    ))
    .await
    .expect("send");
    let answered = tokio::time::timeout(
        Duration::from_secs(1),
        c.clone()
            .grade_study(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .expect("answered before the stream ended");
    let (code, msg) = code_of(answered);
    assert_eq!(code, Code::NotFound, "{msg}");
    assert!(
        msg.contains("osteo-fused-v1"),
        "lists the served models: {msg}"
    );
    drop(tx);

    // Over the size limit: refused on the header, marked "do not retry".
    let status = c
        .grade_study(tokio_stream::iter(vec![header(
            Some(classify_action()),
            pb::UploadHeader {
                expected_bytes: 1 << 40,
                ..Default::default()
            },
        )]))
        .await
        .expect_err("too large");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("store.max_upload_bytes"),
        "{status:?}"
    );
    assert_eq!(
        status
            .metadata()
            .get("grpc-retry-pushback-ms")
            .and_then(|v| v.to_str().ok()),
        Some("-1")
    );

    // A header and then nothing: cut at the request deadline, and its upload slot (the only
    // one) is free again afterwards.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(header(Some(classify_action()), Default::default()))
        .await
        .expect("send");
    let (code, msg) = code_of(
        c.clone()
            .grade_study(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await,
    );
    assert_eq!(code, Code::DeadlineExceeded, "{msg}");
    assert!(msg.contains("GradeStudy"), "{msg}");
    drop(tx);
    let ok = c
        .grade_study(tokio_stream::iter(grade_messages(
            classify_action(),
            &files,
            1 << 20,
        )))
        .await;
    assert!(ok.is_ok(), "the stalled call left its slot behind: {ok:?}");
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_taken_to_another_replica_names_the_cause_and_the_remedy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = read_all(&study(&dir.path().join("study")));
    let models = [("osteo-fused-v1", "backends = [\"candle\"]")];
    let a = InProc::start("", &models, registry()).await;
    let b = InProc::start("", &models, registry()).await;
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    let handle = upload(&mut on_a, &files, 1 << 20).await;
    let request = pb::ClassifyRequest {
        study: by_handle(&handle),
        clinical: Some(clinical()),
        ..Default::default()
    };
    let (code, msg) = code_of(on_b.classify(request.clone()).await);
    assert_eq!(code, Code::NotFound, "{msg}");
    let instance = handle.split('_').nth(1).expect("instance");
    assert!(
        msg.contains(&format!("server instance {instance}")),
        "{msg}"
    );
    assert!(
        msg.contains("x-osteo-affinity") && msg.contains("GradeStudy"),
        "{msg}"
    );
    assert!(!msg.contains("never uploaded"), "{msg}");
    assert_eq!(code_of(on_a.classify(request).await).0, Code::Ok);
    a.stop().await.expect("stop");
    b.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_server_reports_not_serving_and_answers_through_its_drain_delay() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut server = InProc::start(
        "[server]\ndrain_delay_s = 4\n",
        &[("osteo-tabular-v1", "backends = [\"candle\"]")],
        registry(),
    )
    .await;
    let mut c = server.client().await;
    let request = pb::ClassifyRequest {
        clinical: Some(clinical()),
        ..Default::default()
    };
    assert!(
        server
            .rest_get("/v2/health/ready")
            .await
            .starts_with("HTTP/1.1 200")
    );
    server.signal_shutdown();
    server.wait_for_health("", ServingStatus::NotServing).await;
    assert_eq!(
        server.health("osteo-tabular-v1").await,
        Some(ServingStatus::NotServing),
        "every service reports NOT_SERVING"
    );
    let ready = server.rest_get("/v2/health/ready").await;
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    // Still answering, on the open connection and on a new one.
    assert_eq!(code_of(c.classify(request.clone()).await).0, Code::Ok);
    let mut fresh = server.client().await;
    let (code, msg) = code_of(fresh.classify(request.clone()).await);
    assert_eq!(code, Code::Ok, "{msg}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.finished() {
        assert!(Instant::now() < deadline, "the server never stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        tokio::net::TcpStream::connect(server.addr).await.is_err(),
        "no longer accepting"
    );
}

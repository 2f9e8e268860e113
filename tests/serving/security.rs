//! Security of a clinical deployment (issue: Security): the hash-chained audit log, written for
//! every request by an in-process server and checked with `osteo audit verify`.

use crate::common::auth::*;
use crate::common::inproc::{InProc, registry};
use crate::common::*;
use osteo_proto::v1 as pb;
use std::process::Command;
use tonic::Code;

const MODELS: &[(&str, &str)] = &[
    ("osteo-fused-v1", "backends = [\"candle\"]"),
    ("osteo-tabular-v1", "backends = [\"candle\"]"),
];

fn verify(path: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_osteo"))
        .args(["audit", "verify"])
        .arg(path)
        .output()
        .expect("run osteo audit verify");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// A server with `auth.mode = "token"` on the tokens file `tokens` (and the TOML `extra`)
/// serving the tabular model on candle.
async fn token_server(tokens: &std::path::Path, extra: &str) -> InProc {
    let config = format!(
        "{extra}[auth]\nmode = \"token\"\ntokens_file = \"{}\"\n",
        tokens.display()
    );
    InProc::start(
        &config,
        &[("osteo-tabular-v1", "backends = [\"candle\"]")],
        registry(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_audited_without_patient_data_and_the_chain_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("audit.jsonl");
    let config = format!("[audit]\npath = \"{}\"\n", log.display());
    let server = InProc::start(&config, MODELS, registry()).await;
    let mut client = server.client().await;
    let files = read_all(&study(&dir.path().join("study")));
    let handle = upload(&mut client, &files, 64 << 10).await;
    let classified = client
        .classify(pb::ClassifyRequest {
            study: by_handle(&handle),
            clinical: Some(clinical()),
            ..Default::default()
        })
        .await
        .expect("classify")
        .into_inner();
    client
        .get_study(pb::GetStudyRequest {
            study: handle.clone(),
        })
        .await
        .expect("get");
    client
        .delete_study(pb::DeleteStudyRequest {
            study: handle.clone(),
        })
        .await
        .expect("delete");
    let gone = client
        .get_study(pb::GetStudyRequest {
            study: handle.clone(),
        })
        .await
        .expect_err("deleted");
    assert_eq!(gone.code(), Code::NotFound);
    server.stop().await.expect("stop");

    let text = std::fs::read_to_string(&log).expect("audit log");
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let rpcs: Vec<&str> = records
        .iter()
        .map(|r| r["rpc"].as_str().expect("rpc"))
        .collect();
    assert_eq!(
        rpcs,
        [
            "UploadStudy",
            "Classify",
            "GetStudy",
            "DeleteStudy",
            "GetStudy"
        ],
        "{text}"
    );
    for r in &records {
        assert_eq!(r["principal"], "anonymous");
        assert!(
            r["peer"].as_str().expect("peer").starts_with("127.0.0.1:"),
            "{r}"
        );
        assert_eq!(r["study"], handle.as_str(), "{r}");
        assert!(r["time"].as_str().expect("time").ends_with('Z'), "{r}");
    }
    let grade = match pb::Grade::try_from(classified.grade).expect("grade") {
        pb::Grade::Normal => "normal",
        pb::Grade::Osteopenia => "osteopenia",
        _ => "osteoporosis",
    };
    assert_eq!(records[1]["grade"], grade);
    assert_eq!(records[1]["model"], "osteo-fused-v1");
    assert_eq!(records[1]["backend"], "candle");
    assert_eq!(records[4]["code"], "NotFound");
    // No patient data and no DICOM identifier (the phantom's UIDs are 2.25.*).
    for planted in [PATIENT_NAME, PATIENT_ID, "2.25."] {
        assert!(
            !text.contains(planted),
            "{planted} in the audit log:\n{text}"
        );
    }

    let (ok, out) = verify(&log);
    assert!(ok && out.contains("5 records, chain intact"), "{out}");
    let lines: Vec<&str> = text.lines().collect();
    let tampered = dir.path().join("tampered.jsonl");
    let edited = lines[1].replace(&format!("\"{grade}\""), "\"normal-ish\"");
    std::fs::write(
        &tampered,
        [lines[0], &edited, lines[2], lines[3], lines[4]].join("\n") + "\n",
    )
    .expect("write");
    let (ok, out) = verify(&tampered);
    assert!(
        !ok && out.contains("line 3"),
        "an edited line 2 breaks line 3: {out}"
    );
    std::fs::write(
        &tampered,
        [lines[0], lines[2], lines[3], lines[4]].join("\n") + "\n",
    )
    .expect("write");
    let (ok, out) = verify(&tampered);
    assert!(!ok && out.contains("line 2"), "a removed line: {out}");
    std::fs::write(
        &tampered,
        [lines[0], lines[2], lines[1], lines[3], lines[4]].join("\n") + "\n",
    )
    .expect("write");
    let (ok, out) = verify(&tampered);
    assert!(!ok && out.contains("line 2"), "reordered lines: {out}");
    std::fs::write(&tampered, &text[..text.len() - 10]).expect("write");
    let (ok, out) = verify(&tampered);
    assert!(!ok && out.contains("line 5"), "a truncated log: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_record_cannot_be_written_fails() {
    // Every write to /dev/full fails with "no space left on device".
    let server = InProc::start(
        "[audit]\npath = \"/dev/full\"\n",
        &[("osteo-tabular-v1", "backends = [\"candle\"]")],
        registry(),
    )
    .await;
    let mut client = server.client().await;
    let err = client
        .classify(pb::ClassifyRequest {
            clinical: Some(clinical()),
            ..Default::default()
        })
        .await
        .expect_err("no audit record, no answer");
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert!(err.message().contains("audit record"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_roles_and_isolation_between_principals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens.toml");
    let alice = new_token(&tokens, "alice", "client");
    let bob = new_token(&tokens, "bob", "client");
    let root = new_token(&tokens, "root@hospital", "admin");
    // A principal without roles.
    let mut text = std::fs::read_to_string(&tokens).expect("read");
    text.push_str(&format!(
        "\n[[tokens]]\nprincipal = \"nobody\"\nsha256 = \"{}\"\nroles = []\n",
        osteo_server::auth::token_digest("nobody-token")
    ));
    std::fs::write(&tokens, text).expect("write");
    let log = dir.path().join("audit.jsonl");
    let files = read_all(&study(&dir.path().join("study")));
    // One phantom study (10.9 MB of i16 HU) fits the per-principal quota, two do not.
    let config = format!(
        "[store]\nmax_bytes_per_principal = {}\n[auth]\nmode = \"token\"\ntokens_file = \"{}\"\n[audit]\npath = \"{}\"\n",
        16 << 20,
        tokens.display(),
        log.display()
    );
    let server = InProc::start(&config, MODELS, registry()).await;
    // Health needs no token (Kubernetes probes); InProc::start waited on it without one.
    let list = |c: &mut Authed| {
        let mut c = c.clone();
        async move { code_of(c.list_models(pb::ListModelsRequest::default()).await) }
    };
    let (c, msg) = list(&mut connect_as(&server.url, None, None).await).await;
    assert_eq!(c, Code::Unauthenticated, "{msg}");
    let (c, msg) = list(&mut connect_as(&server.url, None, Some("ost_guessed")).await).await;
    assert_eq!(c, Code::Unauthenticated, "{msg}");
    assert!(
        !msg.contains("ost_guessed"),
        "the token is not echoed: {msg}"
    );
    let (c, msg) = list(&mut connect_as(&server.url, None, Some("nobody-token")).await).await;
    assert_eq!(c, Code::PermissionDenied, "{msg}");

    let mut a = connect_as(&server.url, None, Some(&alice)).await;
    let mut b = connect_as(&server.url, None, Some(&bob)).await;
    let mut r = connect_as(&server.url, None, Some(&root)).await;
    let upload_as = |c: &mut Authed| {
        let mut c = c.clone();
        let messages = upload_messages(&files, 64 << 10);
        async move { c.upload_study(tokio_stream::iter(messages)).await }
    };
    let handle = upload_as(&mut a)
        .await
        .expect("alice uploads")
        .into_inner()
        .summary
        .expect("summary")
        .study;
    let (c, msg) = code_of(upload_as(&mut a).await);
    assert_eq!(c, Code::ResourceExhausted, "alice's quota: {msg}");
    assert!(msg.contains("store.max_bytes_per_principal"), "{msg}");
    let bobs = upload_as(&mut b).await.expect("bob has his own quota");
    drop(bobs);

    let classify = |h: &str| pb::ClassifyRequest {
        study: by_handle(h),
        clinical: Some(clinical()),
        ..Default::default()
    };
    assert_eq!(code_of(a.classify(classify(&handle)).await).0, Code::Ok);
    // Bob gets exactly what a handle that never existed gets, on every RPC.
    // A handle of this server instance that it never issued.
    let never = format!("{}0123456789abcdef0123456789abcdef", &handle[..12]);
    let theirs = every_study_rpc(&mut b, &handle).await;
    let missing = every_study_rpc(&mut b, &never).await;
    for ((rpc, (code, msg)), (_, (_, missing_msg))) in theirs.iter().zip(&missing) {
        assert_eq!(*code, Code::NotFound, "{rpc}: {msg}");
        assert_eq!(
            msg.replace(handle.as_str(), "HANDLE"),
            missing_msg.replace(never.as_str(), "HANDLE"),
            "{rpc}: no oracle"
        );
    }
    // The admin reads and deletes any study but may not classify.
    let (c, msg) = code_of(r.classify(classify(&handle)).await);
    assert_eq!(c, Code::PermissionDenied, "{msg}");
    let got = r
        .get_study(pb::GetStudyRequest {
            study: handle.clone(),
        })
        .await;
    assert!(got.is_ok(), "{got:?}");
    let deleted = r
        .delete_study(pb::DeleteStudyRequest {
            study: handle.clone(),
        })
        .await;
    assert!(deleted.is_ok(), "{deleted:?}");
    let (c, _) = code_of(
        a.get_study(pb::GetStudyRequest {
            study: handle.clone(),
        })
        .await,
    );
    assert_eq!(c, Code::NotFound, "deleted by the admin");
    server.stop().await.expect("stop");

    let text = std::fs::read_to_string(&log).expect("audit");
    for who in ["\"alice\"", "\"bob\"", "\"root@hospital\"", "\"nobody\""] {
        assert!(
            text.contains(&format!("\"principal\":{who}")),
            "{who} audited:\n{text}"
        );
    }
    for secret in [&alice, &bob, &root] {
        assert!(!text.contains(secret.as_str()), "a token in the audit log");
    }
    for planted in [PATIENT_NAME, PATIENT_ID] {
        assert!(!text.contains(planted), "{planted} in the audit log");
    }
    let (ok, out) = verify(&log);
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_clients_send_their_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens.toml");
    let token = new_token(&tokens, "ris-gateway", "client");
    let server = token_server(&tokens, "").await;
    let classify = |token: Option<&str>, env: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_osteo"));
        cmd.args([
            "classify",
            "--server",
            &server.url,
            "--age",
            "71",
            "--sex",
            "F",
        ])
        .args(["--height-cm", "158", "--weight-kg", "52", "--json"])
        .env_remove("OSTEO_TOKEN");
        if let Some(t) = token {
            cmd.args(["--token", t]);
        }
        if let Some(t) = env {
            cmd.env("OSTEO_TOKEN", t);
        }
        let out = cmd.output().expect("run osteo classify");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = classify(None, None);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("error: UNAUTHENTICATED"), "{out}");
    let (code, out) = classify(Some(&token), None);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("\"grade\""), "{out}");
    let (code, out) = classify(None, Some(&token));
    assert_eq!(code, Some(0), "OSTEO_TOKEN: {out}");
}

#[test]
fn a_listener_reachable_from_other_hosts_needs_tls_and_authentication_or_an_explicit_opt_in() {
    let check = |allow: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_osteo"));
        cmd.args(["serve", "--check", "--listen", "0.0.0.0:50051"])
            .env_remove("OSTEO__SERVER__ALLOW_INSECURE");
        if let Some(a) = allow {
            cmd.env("OSTEO__SERVER__ALLOW_INSECURE", a);
        }
        let out = cmd.output().expect("run osteo serve --check");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = check(None);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("server.listen") && err.contains("server.allow_insecure"),
        "{err}"
    );
    let (code, err) = check(Some("true"));
    assert_eq!(code, Some(0), "{err}");
    // TLS alone is not enough; TLS with authentication is.
    let tls = |auth: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_osteo"))
            .args(["serve", "--check", "--listen", "0.0.0.0:50051"])
            .env_remove("OSTEO__SERVER__ALLOW_INSECURE")
            .env(
                "OSTEO__SERVER__TLS__CERT_FILE",
                "/etc/osteoserve/tls/tls.crt",
            )
            .env(
                "OSTEO__SERVER__TLS__KEY_FILE",
                "/etc/osteoserve/tls/tls.key",
            )
            .env("OSTEO__AUTH__MODE", auth)
            .env(
                "OSTEO__AUTH__TOKENS_FILE",
                "/etc/osteoserve/auth/tokens.toml",
            )
            .output()
            .expect("run osteo serve --check");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = tls("none");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("server.allow_insecure"), "{err}");
    let (code, err) = tls("token");
    assert_eq!(code, Some(0), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_can_require_a_token() {
    let server = InProc::start(
        "[telemetry]\nmetrics_token = \"scrape-secret\"\n",
        &[("osteo-tabular-v1", "backends = [\"candle\"]")],
        registry(),
    )
    .await;
    let refused = server.http("GET /metrics HTTP/1.1").await;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    assert!(!refused.contains("osteo_requests_total"), "{refused}");
    let wrong = server
        .http("GET /metrics HTTP/1.1\r\nAuthorization: Bearer not-it")
        .await;
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    let ok = server
        .http("GET /metrics HTTP/1.1\r\nAuthorization: Bearer scrape-secret")
        .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("osteo_"), "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_added_and_revoked_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens.toml");
    let alice = new_token(&tokens, "alice", "client");
    let server = token_server(&tokens, "").await;
    let list = |token: String| {
        let server = &server;
        async move {
            let mut c = connect_as(&server.url, None, Some(&token)).await;
            code_of(c.list_models(pb::ListModelsRequest::default()).await).0
        }
    };
    let eventually = |token: String, want: Code| {
        let list = &list;
        async move {
            for _ in 0..300 {
                if list(token.clone()).await == want {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            panic!("the token never became {want:?}");
        }
    };
    let before = std::fs::read_to_string(&tokens).expect("read");
    let bob = new_token(&tokens, "bob", "client");
    eventually(bob.clone(), Code::Ok).await;
    // A broken file fails closed: no token is valid until the file is valid again, so a
    // revocation can never be undone by a typo. So does a deleted file.
    let good = std::fs::read_to_string(&tokens).expect("read");
    std::fs::write(&tokens, "[[tokens]]\nprincipal = \n").expect("write");
    eventually(alice.clone(), Code::Unauthenticated).await;
    std::fs::write(&tokens, &good).expect("write");
    eventually(alice.clone(), Code::Ok).await;
    std::fs::remove_file(&tokens).expect("rm");
    eventually(alice.clone(), Code::Unauthenticated).await;
    std::fs::write(&tokens, &good).expect("write");
    eventually(alice.clone(), Code::Ok).await;
    let text = server.scrape().await;
    assert_eq!(metric(&text, "osteo_auth_tokens_file_valid", &[]), 1.0);
    // Bob's entry removed: his token stops working, Alice's keeps working.
    std::fs::write(&tokens, before).expect("write");
    eventually(bob, Code::Unauthenticated).await;
    assert_eq!(list(alice).await, Code::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_ends_when_its_token_is_revoked_and_at_its_lifetime_limit() {
    use osteo_proto::inference as v2;
    use osteo_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens.toml");
    let before = std::fs::read_to_string(&tokens).unwrap_or_default();
    let alice = new_token(&tokens, "alice", "client");
    let server = token_server(&tokens, "[server]\nmax_stream_s = 600\n").await;
    // A ModelStreamInfer stream on `url` opened with `token`: where to send, what comes back.
    let open = |url: String, token: Option<String>| async move {
        let channel = tonic::transport::Channel::from_shared(url)
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let mut c = GrpcInferenceServiceClient::with_interceptor(channel, Bearer(token));
        let (tx, rx) = tokio::sync::mpsc::channel::<v2::ModelInferRequest>(4);
        let answers = c
            .model_stream_infer(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("stream")
            .into_inner();
        (tx, answers)
    };
    let request = v2::ModelInferRequest {
        model_name: "osteo-tabular-v1".into(),
        inputs: vec![zero_tabular_input()],
        ..Default::default()
    };
    let (tx, mut answers) = open(server.url.clone(), Some(alice)).await;
    tx.send(request.clone()).await.expect("send");
    let first = answers.message().await.expect("answer").expect("one");
    assert!(first.error_message.is_empty(), "{first:?}");
    // alice revoked while her stream is open and idle: the server ends it on its own.
    std::fs::write(&tokens, before).expect("write");
    let ended = tokio::time::timeout(std::time::Duration::from_secs(30), answers.message())
        .await
        .expect("the stream ends (guard, not a measurement)");
    let status = ended.expect_err("ended with a status");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
    drop(tx);

    // A stream lives at most server.max_stream_s.
    let short = InProc::start(
        "[server]\nmax_stream_s = 1\n",
        &[("osteo-tabular-v1", "backends = [\"candle\"]")],
        registry(),
    )
    .await;
    let (tx, mut answers) = open(short.url.clone(), None).await;
    tx.send(request).await.expect("send");
    let mut ended = None;
    while ended.is_none() {
        match answers.message().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ends with a status"),
            Err(status) => ended = Some(status),
        }
    }
    let status = ended.expect("status");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("server.max_stream_s"),
        "{status:?}"
    );
}

//! TLS and mutual TLS against an in-process server: certificates made at test time, plaintext
//! refused on the TLS port, tokens over TLS, client certificates naming principals and isolating
//! their studies, certificate rotation without a restart, and the CLI over https.

use crate::common::auth::*;
use crate::common::inproc::{InProc, registry};
use crate::common::pki::*;
use crate::common::*;
use osteo_proto::v1 as pb;
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::Code;

const TABULAR: &[(&str, &str)] = &[("osteo-tabular-v1", "backends = [\"candle\"]")];
const FUSED: &[(&str, &str)] = &[("osteo-fused-v1", "backends = [\"candle\"]")];

/// ListModels' status code (and message) for a client.
async fn list(c: &Authed) -> (Code, String) {
    code_of(
        c.clone()
            .list_models(pb::ListModelsRequest::default())
            .await,
    )
}

/// Whether a client with `tls` and `token` gets any answer from `url`; the status it gets.
async fn reach(
    url: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
    token: Option<&str>,
) -> Result<(Code, String), String> {
    match try_connect_as(url, tls, token).await {
        Err(e) => Err(format!("{e:?}")),
        Ok(c) => Ok(list(&c).await),
    }
}

/// Asserts that a client got no answer: no connection, or a transport or HTTP/2 failure at its
/// first call (with TLS 1.3 a refused client certificate shows only then, as whichever of
/// these codes the client's connection task reports first).
fn assert_refused(r: Result<(Code, String), String>, what: &str) {
    if let Ok((code, msg)) = r {
        assert!(
            matches!(
                code,
                Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
            ),
            "{what}: {code:?} {msg}"
        );
    }
}

/// The audit log's records.
fn audit_records(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .expect("audit log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_tokens_refuses_plaintext_untrusted_and_unauthenticated_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "hospital");
    let tokens = dir.path().join("tokens.toml");
    let token = new_token(&tokens, "ris-gateway", "client");
    let audit = dir.path().join("audit.jsonl");
    let config = format!(
        "{}[auth]\nmode = \"token\"\ntokens_file = \"{}\"\n[audit]\npath = \"{}\"\n",
        tls_toml(&ca.server(), None, "none"),
        tokens.display(),
        audit.display()
    );
    // InProc::start waits for SERVING on the plaintext health-only listener, without a token.
    let server = InProc::start(&config, TABULAR, registry()).await;
    assert!(server.url.starts_with("https://"), "{}", server.url);

    // Plaintext HTTP/2 on the TLS port gets no answer.
    let plain = format!("http://{}", server.addr);
    assert_refused(reach(&plain, None, Some(&token)).await, "plaintext");
    // A client that does not trust the server's certificate does not talk to it.
    let other = Ca::new(dir.path(), "elsewhere");
    assert_refused(
        reach(&server.url, Some(client_tls(&other, None)), Some(&token)).await,
        "untrusted server",
    );
    // Over TLS: no token and a wrong token are UNAUTHENTICATED, the right one is served.
    let tls = || Some(client_tls(&ca, None));
    let (code, msg) = list(&connect_as(&server.url, tls(), None).await).await;
    assert_eq!(code, Code::Unauthenticated, "{msg}");
    let (code, msg) = list(&connect_as(&server.url, tls(), Some("ost_wrong")).await).await;
    assert_eq!(code, Code::Unauthenticated, "{msg}");
    let mut c = connect_as(&server.url, tls(), Some(&token)).await;
    assert_eq!(list(&c).await.0, Code::Ok);
    let r = c
        .classify(pb::ClassifyRequest {
            clinical: Some(clinical()),
            ..Default::default()
        })
        .await
        .expect("classify over TLS")
        .into_inner();
    assert_eq!(r.model.map(|m| m.name).as_deref(), Some("osteo-tabular-v1"));

    let text = server.scrape().await;
    assert!(
        metric(
            &text,
            "osteo_tls_handshake_failures_total",
            &["listener=\"grpc\""]
        ) >= 1.0,
        "the plaintext and untrusting clients failed their handshakes:\n{text}"
    );
    assert!(metric(&text, "osteo_auth_failures_total", &["reason=\"missing\""]) >= 1.0);
    assert!(
        metric(
            &text,
            "osteo_auth_failures_total",
            &["reason=\"invalid_token\""]
        ) >= 1.0
    );
    // Refusals are audited too, without the token.
    let records = audit_records(&audit);
    let refused: Vec<_> = records
        .iter()
        .filter(|r| r["code"] == "Unauthenticated")
        .collect();
    assert_eq!(refused.len(), 2, "{records:?}");
    assert!(
        refused
            .iter()
            .all(|r| r["rpc"] == "ListModels" && r["principal"] == "")
    );
    assert!(
        records
            .iter()
            .any(|r| r["principal"] == "ris-gateway" && r["rpc"] == "Classify")
    );
    let raw = std::fs::read_to_string(&audit).expect("audit");
    assert!(!raw.contains("ost_wrong") && !raw.contains(&token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_certificates_name_the_principal_and_isolate_studies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "hospital");
    let clients = Ca::new(dir.path(), "clients");
    let audit = dir.path().join("audit.jsonl");
    let config = format!(
        "{}[auth]\nmode = \"mtls\"\nmtls_admins = [\"pacs-admin\"]\n[audit]\npath = \"{}\"\n",
        tls_toml(&ca.server(), Some(&clients), "required"),
        audit.display()
    );
    let server = InProc::start(&config, FUSED, registry()).await;
    let as_cert = |id: Option<&Issued>| Some(client_tls(&ca, id));

    // Without a certificate, or with one from a CA the server does not trust, no call is served
    // (with TLS 1.3 the client may learn it only at its first call).
    let rogue = Ca::new(dir.path(), "rogue").client("alice");
    for (what, id) in [("no certificate", None), ("untrusted CA", Some(&rogue))] {
        assert_refused(reach(&server.url, as_cert(id), None).await, what);
    }

    let alice = clients.client("alice");
    let bob = clients.client("bob");
    let admin = clients.client("pacs-admin");
    let mut a = connect_as(&server.url, as_cert(Some(&alice)), None).await;
    let mut b = connect_as(&server.url, as_cert(Some(&bob)), None).await;
    let mut r = connect_as(&server.url, as_cert(Some(&admin)), None).await;
    let files = read_all(&study(&dir.path().join("study")));
    let handle = a
        .upload_study(tokio_stream::iter(upload_messages(&files, 256 << 10)))
        .await
        .expect("alice uploads over mTLS")
        .into_inner()
        .summary
        .expect("summary")
        .study;
    for (rpc, (code, msg)) in every_study_rpc(&mut b, &handle).await {
        assert_eq!(code, Code::NotFound, "bob's {rpc} on alice's study: {msg}");
    }
    let (code, msg) = code_of(
        r.get_study(pb::GetStudyRequest {
            study: handle.clone(),
        })
        .await,
    );
    assert_eq!(
        code,
        Code::Ok,
        "the admin certificate reads any study: {msg}"
    );
    let (code, msg) = code_of(
        r.classify(pb::ClassifyRequest {
            clinical: Some(clinical()),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(
        code,
        Code::PermissionDenied,
        "an admin does not classify: {msg}"
    );
    assert!(msg.contains("pacs-admin"), "{msg}");
    let (code, msg) = code_of(
        a.delete_study(pb::DeleteStudyRequest {
            study: handle.clone(),
        })
        .await,
    );
    assert_eq!(code, Code::Ok, "{msg}");

    let records = audit_records(&audit);
    let principals: std::collections::BTreeSet<&str> = records
        .iter()
        .filter_map(|r| r["principal"].as_str())
        .collect();
    assert_eq!(
        principals,
        ["cert:alice", "cert:bob", "cert:pacs-admin"]
            .into_iter()
            .collect(),
        "{records:?}"
    );
    let raw = std::fs::read_to_string(&audit).expect("audit");
    assert!(!raw.contains(PATIENT_NAME) && !raw.contains(PATIENT_ID));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_client_certificates_or_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let EitherServer {
        server,
        ca,
        clients,
        token,
        audit,
    } = EitherServer::start(dir.path(), TABULAR).await;
    let modality = clients.client("modality-ct1");
    let cases = [
        (None, Some(token.as_str()), Code::Ok),
        (Some(&modality), None, Code::Ok),
        (None, None, Code::Unauthenticated),
        // A wrong token is refused even on a connection with a good certificate.
        (Some(&modality), Some("ost_wrong"), Code::Unauthenticated),
    ];
    for (id, tok, want) in cases {
        let c = connect_as(&server.url, Some(client_tls(&ca, id)), tok).await;
        let (code, msg) = list(&c).await;
        assert_eq!(code, want, "cert {:?}, token {tok:?}: {msg}", id.is_some());
    }
    let principals: Vec<String> = audit_records(&audit)
        .iter()
        .map(|r| r["principal"].as_str().unwrap_or("?").to_string())
        .collect();
    assert_eq!(principals, ["ris-gateway", "cert:modality-ct1", "", ""]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_to_new_connections_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old_ca = Ca::new(dir.path(), "old");
    let new_ca = Ca::new(dir.path(), "new");
    let live = Issued {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
    };
    let install = |from: &Issued| {
        std::fs::copy(&from.key, &live.key).expect("key");
        std::fs::copy(&from.cert, &live.cert).expect("cert");
    };
    install(&old_ca.server());
    let server = InProc::start(&tls_toml(&live, None, "none"), TABULAR, registry()).await;
    let before = connect_as(&server.url, Some(client_tls(&old_ca, None)), None).await;
    assert_eq!(list(&before).await.0, Code::Ok);

    install(&new_ca.server());
    let start = Instant::now();
    loop {
        if let Ok((Code::Ok, _)) = reach(&server.url, Some(client_tls(&new_ca, None)), None).await {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the rotated certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // New connections now get the new certificate; the open connection carries on.
    assert_refused(
        reach(&server.url, Some(client_tls(&old_ca, None)), None).await,
        "the old CA",
    );
    assert_eq!(list(&before).await.0, Code::Ok);
    // A broken file keeps the certificate in force.
    std::fs::write(&live.cert, "garbage").expect("write");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        reach(&server.url, Some(client_tls(&new_ca, None)), None)
            .await
            .map(|r| r.0),
        Ok(Code::Ok)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_speaks_tls_with_a_token_or_a_client_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let EitherServer {
        server,
        ca,
        clients,
        token,
        ..
    } = EitherServer::start(dir.path(), TABULAR).await;
    let reporter = clients.client("reporting-ws");
    let classify = |flags: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_osteo"))
            .args(["classify", "--server", &server.url, "--json"])
            .args(CLINICAL_FLAGS)
            .args(flags)
            .env_remove("OSTEO_TOKEN")
            .output()
            .expect("run osteo classify");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let ca_file = ca.cert.to_str().expect("path");
    let (code, out) = classify(&["--ca-cert", ca_file, "--token", &token]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("\"grade\""), "{out}");
    let (code, out) = classify(&[
        "--ca-cert",
        ca_file,
        "--client-cert",
        reporter.cert.to_str().expect("path"),
        "--client-key",
        reporter.key.to_str().expect("path"),
    ]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = classify(&["--ca-cert", ca_file]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("error: UNAUTHENTICATED"), "{out}");
    // The system roots do not know the test CA.
    let (code, out) = classify(&["--token", &token]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("error: UNAVAILABLE"), "{out}");
    let plain = format!("http://{}", server.addr);
    let out = Command::new(env!("CARGO_BIN_EXE_osteo"))
        .args(["classify", "--server", &plain, "--ca-cert", ca_file])
        .args(CLINICAL_FLAGS)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("https://"), "{err}");
}

/// curl's HTTP status for `args` (plus `-s -o /dev/null -w %{http_code}`); 0 when no HTTP
/// answer came (a refused handshake).
fn curl_status(args: &[&str]) -> u16 {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(args)
        .output()
        .expect("curl (scripts/setup.sh installs it)");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_endpoints_have_the_same_tls_and_client_certificates_as_grpc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "hospital");
    let clients = Ca::new(dir.path(), "clients");
    let config = format!(
        "{}[auth]\nmode = \"mtls\"\n",
        tls_toml(&ca.server(), Some(&clients), "optional")
    );
    let server = InProc::start(&config, TABULAR, registry()).await;
    let alice = clients.client("alice");
    let base = format!("https://{}", server.http);
    let owned = |p: &std::path::Path| p.display().to_string();
    let (ca_file, cert, key) = (owned(&ca.cert), owned(&alice.cert), owned(&alice.key));
    let status = tokio::task::spawn_blocking(move || {
        let health = format!("{base}/v2/health/ready");
        let metadata = format!("{base}/v2/models/osteo-tabular-v1");
        [
            // Health needs no client certificate; metadata does.
            curl_status(&["--cacert", &ca_file, &health]),
            curl_status(&["--cacert", &ca_file, &metadata]),
            curl_status(&[
                "--cacert", &ca_file, "--cert", &cert, "--key", &key, &metadata,
            ]),
            // Plaintext HTTP on the TLS port gets no answer; nor does an unknown server CA.
            curl_status(&[&health.replace("https://", "http://")]),
            curl_status(&[&health]),
        ]
    })
    .await
    .expect("join");
    assert_eq!(status, [200, 401, 200, 0, 0]);
}

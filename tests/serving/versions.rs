//! Model versions: a model repository in Triton's layout served next to `[[models]]`, the
//! highest version answering by default unless pinned, a request naming its version over
//! osteo.v1 and the Open Inference Protocol, and every answer, audit record and listing saying
//! which version answered.

use crate::common::auth::code_of;
use crate::common::inproc::{InProc, registry, settings};
use crate::common::*;
use osteo_proto::inference as v2;
use osteo_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use osteo_proto::v1 as pb;
use std::path::Path;
use tonic::Code;

/// A copy of the shipped tabular model in `repo/osteo-tabular-v1/<version>/` whose model.toml
/// states `stated`.
fn version_dir(repo: &Path, version: &str, stated: &str) {
    let dir = repo.join("osteo-tabular-v1").join(version);
    copy_model("osteo-tabular-v1", &dir);
    let toml = dir.join("model.toml");
    let text = std::fs::read_to_string(&toml).expect("model.toml");
    let text = text.replacen("version = \"1\"", &format!("version = \"{stated}\""), 1);
    std::fs::write(&toml, text).expect("write model.toml");
}

/// The configuration of a server with the shipped tabular model (version 1) as a `[[models]]`
/// entry and `repo` as its repository, plus `extra` keys of `[repository]`.
fn config(repo: &Path, audit: &Path, extra: &str) -> String {
    format!(
        "[audit]\npath = \"{}\"\n[repository]\npath = \"{}\"\nbackends = [\"candle\"]\n{extra}\n",
        audit.display(),
        repo.display()
    )
}

const SHIPPED: [(&str, &str); 1] = [("osteo-tabular-v1", "backends = [\"candle\"]")];

fn classify(version: &str) -> pb::ClassifyRequest {
    pb::ClassifyRequest {
        clinical: Some(clinical()),
        model: "osteo-tabular-v1".into(),
        model_version: version.into(),
        ..Default::default()
    }
}

fn answered_version(r: &pb::ClassifyResponse) -> &str {
    r.model.as_ref().map_or("", |m| m.version.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_serves_every_version_and_the_highest_answers_by_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    version_dir(&repo, "2", "2");
    version_dir(&repo, "10", "10");
    let audit = dir.path().join("audit.jsonl");
    let server = InProc::start(&config(&repo, &audit, ""), &SHIPPED, registry()).await;
    let mut c = server.client().await;

    // 10 > 2 > 1: versions compare as numbers.
    let r = c
        .classify(classify(""))
        .await
        .expect("default")
        .into_inner();
    assert_eq!(answered_version(&r), "10");
    for v in ["1", "2", "10"] {
        let r = c.classify(classify(v)).await.expect("named").into_inner();
        assert_eq!(answered_version(&r), v);
    }
    let (code, msg) = code_of(c.classify(classify("9")).await);
    assert_eq!(code, Code::NotFound, "{msg}");
    assert!(msg.contains("1, 2, 10"), "names the served versions: {msg}");

    let listed = c
        .list_models(pb::ListModelsRequest {})
        .await
        .expect("list")
        .into_inner();
    let versions: Vec<&str> = listed
        .models
        .iter()
        .filter(|m| m.name == "osteo-tabular-v1")
        .map(|m| m.version.as_str())
        .collect();
    assert_eq!(versions, ["1", "2", "10"]);
    let defaults: Vec<&str> = listed
        .models
        .iter()
        .filter(|m| m.name == "osteo-tabular-v1" && m.default_version)
        .map(|m| m.version.as_str())
        .collect();
    assert_eq!(defaults, ["10"], "ListModels marks the default version");

    // The CLI names a version and prints the one that answered.
    let mut classify_v2 = std::process::Command::new(env!("CARGO_BIN_EXE_osteo"));
    classify_v2
        .args([
            "classify",
            "--server",
            &server.url,
            "--model",
            "osteo-tabular-v1",
        ])
        .args(["--model-version", "2", "--json"])
        .args(CLINICAL_FLAGS);
    let out = output(classify_v2).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["model_version"], "2", "{v}");

    // The Open Inference Protocol: every version in the metadata, a named version answers.
    let mut oip = GrpcInferenceServiceClient::connect(server.url.clone())
        .await
        .expect("connect");
    let meta = oip
        .model_metadata(v2::ModelMetadataRequest {
            name: "osteo-tabular-v1".into(),
            version: String::new(),
        })
        .await
        .expect("metadata")
        .into_inner();
    assert_eq!(meta.versions, ["1", "2", "10"]);
    let infer = oip
        .model_infer(v2::ModelInferRequest {
            model_name: "osteo-tabular-v1".into(),
            model_version: "2".into(),
            inputs: vec![zero_tabular_input()],
            ..Default::default()
        })
        .await
        .expect("infer version 2")
        .into_inner();
    assert_eq!(infer.model_version, "2");

    let records: Vec<serde_json::Value> = audit_records(&audit, "Classify")
        .into_iter()
        .filter(|r| r["code"] == "Ok")
        .collect();
    let audited: Vec<&str> = records
        .iter()
        .filter_map(|r| r["version"].as_str())
        .collect();
    assert_eq!(audited, ["10", "1", "2", "10", "2"], "{records:?}");
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_chooses_the_default_version_and_a_misfiled_version_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    version_dir(&repo, "2", "2");
    version_dir(&repo, "3", "3");
    let audit = dir.path().join("audit.jsonl");
    let pinned = config(&repo, &audit, "pins = { \"osteo-tabular-v1\" = \"2\" }");
    let server = InProc::start(&pinned, &SHIPPED, registry()).await;
    let mut c = server.client().await;
    let r = c.classify(classify("")).await.expect("pinned").into_inner();
    assert_eq!(answered_version(&r), "2");
    server.stop().await.expect("stop");

    // A pin naming no served version stops the server at start-up, naming the key.
    let bad_pin = config(&repo, &audit, "pins = { \"osteo-tabular-v1\" = \"7\" }");
    let e = InProc::spawn(settings(&bad_pin, &SHIPPED), registry())
        .await
        .exit()
        .await
        .expect_err("no version 7");
    assert!(e.to_string().contains("repository.pins"), "{e}");

    // A version directory whose model.toml states another version is refused by name.
    version_dir(&repo, "4", "5");
    let e = InProc::spawn(settings(&config(&repo, &audit, ""), &SHIPPED), registry())
        .await
        .exit()
        .await
        .expect_err("misfiled");
    let m = e.to_string();
    assert!(
        m.contains("osteo-tabular-v1/4") && m.contains("version 5"),
        "{m}"
    );
}

/// Triton's client loads (or unloads) `model` through RepositoryModelLoad with `token`; returns
/// "OK" or the error's text.
async fn triton_repository(url: &str, verb: &str, model: &str, token: &str) -> String {
    let script = "import sys\nimport tritonclient.grpc as tc\n\
        c = tc.InferenceServerClient(url=sys.argv[1])\n\
        h = {'authorization': 'Bearer ' + sys.argv[4]}\n\
        try:\n\
        \x20   getattr(c, sys.argv[2] + '_model')(sys.argv[3], headers=h)\n\
        \x20   print('OK')\n\
        except Exception as e:\n\
        \x20   print(str(e).replace(chr(10), ' '))\n";
    let args = [
        url.trim_start_matches("http://").to_string(),
        verb.to_string(),
        model.to_string(),
        token.to_string(),
    ];
    let mut python = std::process::Command::new(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/triton-venv/bin/python"),
    );
    python.arg("-c").arg(script).args(args);
    let out = output(python).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_swap_while_clients_classify_and_a_corrupt_version_is_refused() {
    use crate::common::auth::{connect_as, new_token};
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    version_dir(&repo, "2", "2");
    let audit = dir.path().join("audit.jsonl");
    let tokens = dir.path().join("tokens.toml");
    let admin = new_token(&tokens, "ops", "admin");
    let client = new_token(&tokens, "ris", "client");
    let config = format!(
        "{}[auth]\nmode = \"token\"\ntokens_file = \"{}\"\n",
        config(&repo, &audit, ""),
        tokens.display()
    );
    let server = InProc::start(&config, &SHIPPED, registry()).await;

    // Four clients classify in a loop; each notes the versions that answered, in order.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut loops = Vec::new();
    for _ in 0..4 {
        let mut c = connect_as(&server.url, None, Some(&client)).await;
        let done = done.clone();
        loops.push(tokio::spawn(async move {
            let (mut seen, mut failed) = (Vec::new(), Vec::new());
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                match c.classify(classify("")).await {
                    Ok(r) => seen.push(answered_version(&r.into_inner()).to_string()),
                    Err(s) => failed.push(format!("{:?}: {}", s.code(), s.message())),
                }
            }
            (seen, failed)
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    // A client may not load models; the admin may, with Triton's own client.
    let refused = triton_repository(&server.url, "load", "osteo-tabular-v1", &client).await;
    assert!(
        refused.contains("may not call RepositoryModelLoad"),
        "{refused}"
    );
    version_dir(&repo, "3", "3");
    let loaded = triton_repository(&server.url, "load", "osteo-tabular-v1", &admin).await;
    assert_eq!(loaded, "OK");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    // A version whose weights do not match their digest is refused; version 3 keeps serving.
    version_dir(&repo, "4", "4");
    let weights = repo.join("osteo-tabular-v1/4/weights.safetensors");
    let mut bytes = std::fs::read(&weights).expect("weights");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&weights, bytes).expect("corrupt");
    let corrupt = triton_repository(&server.url, "load", "osteo-tabular-v1", &admin).await;
    assert!(
        corrupt.contains("served versions stay in force") && corrupt.contains("weights_blake3"),
        "{corrupt}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    done.store(true, std::sync::atomic::Ordering::SeqCst);

    let mut served = 0;
    for l in loops {
        let (seen, failed) = l.await.expect("client");
        assert!(failed.is_empty(), "failed: {failed:?}");
        // Version 2 until the swap, version 3 from then on, never back.
        let first_new = seen
            .iter()
            .position(|v| v == "3")
            .expect("version 3 answered");
        assert!(seen[..first_new].iter().all(|v| v == "2"), "{seen:?}");
        assert!(seen[first_new..].iter().all(|v| v == "3"), "{seen:?}");
        served += seen.len();
    }
    assert!(served > 8, "{served}");

    // Over REST: a client is refused (403), the admin reloads once the corrupt version is gone.
    std::fs::remove_dir_all(repo.join("osteo-tabular-v1/4")).expect("remove version 4");
    let rest = |token: &str| {
        let url = format!(
            "http://{}/v2/repository/models/osteo-tabular-v1/load",
            server.http
        );
        let header = format!("Authorization: Bearer {token}");
        std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                "POST",
                "-H",
            ])
            .arg(header)
            .arg(url)
            .output()
            .expect("curl")
    };
    assert_eq!(String::from_utf8_lossy(&rest(&client).stdout), "403");
    assert_eq!(String::from_utf8_lossy(&rest(&admin).stdout), "200");
    let mut c = connect_as(&server.url, None, Some(&client)).await;
    let r = c
        .classify(classify(""))
        .await
        .expect("after the reload")
        .into_inner();
    assert_eq!(answered_version(&r), "3");

    // Unloading the default model is refused.
    let unloaded = triton_repository(&server.url, "unload", "osteo-tabular-v1", &admin).await;
    assert!(
        unloaded.contains("default model"),
        "the default model stays: {unloaded}"
    );
    let records = audit_records(&audit, "RepositoryModelLoad");
    let codes: Vec<&str> = records.iter().filter_map(|r| r["code"].as_str()).collect();
    assert_eq!(
        codes,
        [
            "PermissionDenied",
            "Ok",
            "FailedPrecondition",
            "PermissionDenied",
            "Ok"
        ],
        "{records:?}"
    );
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_repository_loads_new_versions_within_max_loaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    version_dir(&repo, "2", "2");
    let audit = dir.path().join("audit.jsonl");
    let server = InProc::start(
        &config(&repo, &audit, "poll_s = 1\nmax_loaded = 4"),
        &SHIPPED,
        registry(),
    )
    .await;
    let mut c = server.client().await;
    let answering = |c: &mut osteo_proto::v1::osteo_service_client::OsteoServiceClient<
        tonic::transport::Channel,
    >| {
        let mut c = c.clone();
        async move {
            let r = c
                .classify(classify(""))
                .await
                .expect("classify")
                .into_inner();
            answered_version(&r).to_string()
        }
    };
    assert_eq!(answering(&mut c).await, "2");
    // A new version directory is picked up by the watcher.
    version_dir(&repo, "3", "3");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while answering(&mut c).await != "3" {
        assert!(
            std::time::Instant::now() < deadline,
            "version 3 never answered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Three versions are loaded (1, 2, 3): reloading 2, 3 and a new 4 beside them would hold
    // six during the swap, over max_loaded = 4: refused, and 3 keeps answering.
    version_dir(&repo, "4", "4");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let refused = audit_records(&audit, "RepositoryModelLoad")
            .into_iter()
            .any(|r| r["code"] == "ResourceExhausted" && r["principal"] == "repository-watch");
        if refused {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the watcher never tried version 4"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(answering(&mut c).await, "3");
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_versions_than_max_loaded_stop_the_start_before_any_loads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    version_dir(&repo, "2", "2");
    let audit = dir.path().join("audit.jsonl");
    let s = crate::common::inproc::settings(&config(&repo, &audit, "max_loaded = 1"), &SHIPPED);
    let e = InProc::spawn(s, registry())
        .await
        .exit()
        .await
        .expect_err("refused");
    assert!(
        e.to_string().contains("2 model versions are configured")
            && e.to_string().contains("repository.max_loaded (1)"),
        "{e}"
    );
}

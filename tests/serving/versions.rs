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
    let url = server.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        let mut args = vec![
            "classify".to_string(),
            "--server".into(),
            url,
            "--model".into(),
            "osteo-tabular-v1".into(),
            "--model-version".into(),
            "2".into(),
            "--json".into(),
        ];
        args.extend(CLINICAL_FLAGS.iter().map(|s| s.to_string()));
        std::process::Command::new(env!("CARGO_BIN_EXE_osteo"))
            .args(&args)
            .output()
            .expect("osteo classify")
    })
    .await
    .expect("join");
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

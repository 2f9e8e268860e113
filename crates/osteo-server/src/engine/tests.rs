//! The engine's operations against a fake backend, without any front door.

use super::*;
use crate::models::ModelSet;
use crate::principal::{Principal, Role};
use crate::registry::Registry;
use osteo_core::{Backend, BackendError, BackendInfo, Batch, Device, Explanation, Tensor};
use osteo_proto::inference as v2;
use osteo_proto::v1 as pb;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Logits that grade every sample osteoporosis.
const LOGITS: [f32; 3] = [0.0, 1.0, 3.0];

/// A backend that answers [`LOGITS`] for every row.
struct Fake;

impl Backend for Fake {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: "fake".into(),
            device: Device::Cpu,
            library_version: "test".into(),
        }
    }

    fn predict(&mut self, batch: &Batch) -> Result<Tensor, BackendError> {
        let n = batch.len();
        Tensor::new(vec![n, 3], LOGITS.repeat(n)).map_err(|e| BackendError::Runtime(e.to_string()))
    }

    fn explain(&mut self, batch: &Batch) -> Result<Explanation, BackendError> {
        let width = batch.tabular.as_ref().map_or(0, |t| t.shape()[1]);
        Ok(Explanation {
            logits: LOGITS.to_vec(),
            activation: None,
            alphas: Vec::new(),
            tabular_gradients: vec![vec![0.5; width]; 3],
        })
    }
}

/// An engine serving the shipped tabular model on the fake backend (registered as `candle`),
/// with an audit log, and the directory holding the log.
fn engine() -> (Engine, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/osteo-tabular-v1");
    let file = dir.path().join("osteo.toml");
    let toml = format!(
        "[server]\ndefault_model = \"osteo-tabular-v1\"\n[audit]\npath = \"{}\"\n\
         [[models]]\npath = \"{}\"\nbackends = [\"candle\"]\n",
        dir.path().join("audit.jsonl").display(),
        model.display()
    );
    std::fs::write(&file, toml).expect("config");
    let env = config::Environment::with_prefix("OSTEO_ENGINE_TEST_NONE")
        .source(Some(std::collections::HashMap::new()));
    let settings = crate::config::load_from(Some(&file), &[], env).expect("settings");
    let mut registry = Registry::new();
    registry.register_loader(
        "candle",
        Arc::new(|_, _| Ok(Box::new(Fake) as Box<dyn Backend>)),
    );
    let state = Arc::new(crate::state::State::new(settings.clone()).expect("state"));
    let changed = Arc::new(tokio::sync::Notify::new());
    let models = ModelSet::load(&settings, &registry, &changed).expect("models");
    state.set_models(models);
    (Engine::new(state), dir)
}

fn principal(name: &str, role: Role) -> Option<Principal> {
    Some(Principal {
        name: name.into(),
        roles: [role].into_iter().collect(),
    })
}

fn call(rpc: Rpc) -> Call {
    Call::new(
        rpc,
        principal("ris", Role::Client),
        None,
        Duration::from_secs(10),
    )
}

fn clinical() -> pb::ClinicalVariables {
    pb::ClinicalVariables {
        age_years: 70.0,
        sex: pb::Sex::Female as i32,
        height_cm: 160.0,
        weight_kg: 55.0,
        ..Default::default()
    }
}

/// The audit records written so far, as JSON.
fn audit_records(dir: &tempfile::TempDir) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.path().join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record"))
        .collect()
}

#[tokio::test]
async fn classify_grades_and_the_audit_record_reads_the_outcome() {
    let (engine, dir) = engine();
    let req = pb::ClassifyRequest {
        clinical: Some(clinical()),
        ..Default::default()
    };
    let r = engine
        .run(call(Rpc::Classify), |e, c| Box::pin(e.classify(c, req)))
        .await
        .expect("classified");
    assert_eq!(r.grade, pb::Grade::Osteoporosis as i32);
    let p = r.probabilities.expect("probabilities");
    let expected = osteo_core::backend::softmax(&LOGITS);
    assert!((p.osteoporosis - expected[2]).abs() < 1e-6);
    let records = audit_records(&dir);
    let last = records.last().expect("one record");
    assert_eq!(last["rpc"], "Classify");
    assert_eq!(last["principal"], "ris");
    assert_eq!(last["model"], "osteo-tabular-v1");
    assert_eq!(last["backend"], "candle");
    assert_eq!(last["grade"], "osteoporosis");
    assert_eq!(last["code"], "Ok");
}

#[tokio::test]
async fn an_unknown_model_is_not_found_and_recorded_as_unknown() {
    let (engine, dir) = engine();
    let req = pb::ClassifyRequest {
        model: "no-such-model\n".into(),
        clinical: Some(clinical()),
        ..Default::default()
    };
    let e = engine
        .run(call(Rpc::Classify), |e, c| Box::pin(e.classify(c, req)))
        .await
        .expect_err("unknown model");
    assert_eq!(e.code(), tonic::Code::NotFound);
    let records = audit_records(&dir);
    let last = records.last().expect("one record");
    assert_eq!(last["model"], "unknown");
    assert_eq!(last["code"], "NotFound");
}

#[tokio::test]
async fn a_caller_without_the_role_is_refused_before_the_operation_runs() {
    let (engine, dir) = engine();
    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    let admin = Call::new(
        Rpc::Classify,
        principal("ops", Role::Admin),
        None,
        Duration::from_secs(10),
    );
    let e = engine
        .run(admin, move |_, _| {
            Box::pin(async move {
                flag.store(true, Ordering::SeqCst);
                Ok(())
            })
        })
        .await
        .expect_err("admins do not grade");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(!ran.load(Ordering::SeqCst), "the operation never ran");
    let nobody = Call::new(Rpc::ListModels, None, None, Duration::from_secs(10));
    let e = engine
        .run(nobody, |e, _| Box::pin(e.list_models()))
        .await
        .expect_err("no principal");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert_eq!(audit_records(&dir).len(), 2, "refusals are audited too");
}

#[tokio::test]
async fn a_call_past_its_budget_is_deadline_exceeded_and_keeps_what_it_recorded() {
    let (engine, dir) = engine();
    let short = Call::new(
        Rpc::GetStudy,
        principal("ris", Role::Client),
        None,
        Duration::from_millis(50),
    );
    let e = engine
        .run(short, |_, c| {
            Box::pin(async move {
                c.refers_to("st_89abcdef_0123456789abcdef0123456789abcdef");
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            })
        })
        .await
        .expect_err("too slow");
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded);
    let records = audit_records(&dir);
    let last = records.last().expect("one record");
    assert_eq!(last["code"], "DeadlineExceeded");
    assert_eq!(
        last["study"],
        "st_89abcdef_0123456789abcdef0123456789abcdef"
    );
}

#[tokio::test]
async fn a_client_string_that_is_no_handle_is_recorded_as_invalid() {
    let (engine, dir) = engine();
    let req = pb::GetStudyRequest {
        study: "../../etc/passwd".into(),
    };
    let e = engine
        .run(call(Rpc::GetStudy), |e, c| Box::pin(e.get_study(c, req)))
        .await
        .expect_err("no such study");
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert_eq!(
        audit_records(&dir).last().expect("record")["study"],
        "invalid"
    );
}

#[tokio::test]
async fn model_infer_answers_every_row_and_refuses_non_finite_values() {
    let (engine, _dir) = engine();
    let features = 13;
    let tensor = |values: Vec<f32>| v2::ModelInferRequest {
        model_name: "osteo-tabular-v1".into(),
        inputs: vec![v2::model_infer_request::InferInputTensor {
            name: osteo_core::names::TABULAR.into(),
            datatype: "FP32".into(),
            shape: vec![2, features],
            contents: Some(v2::InferTensorContents {
                fp32_contents: values,
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let r = engine
        .run(call(Rpc::ModelInfer), |e, c| {
            Box::pin(e.model_infer(c, tensor(vec![0.1; 26])))
        })
        .await
        .expect("two rows");
    let logits = r
        .outputs
        .iter()
        .find(|o| o.name == "logits")
        .expect("logits");
    assert_eq!(logits.shape, vec![2, 3]);
    let mut bad = vec![0.1; 26];
    bad[17] = f32::NAN;
    let e = engine
        .run(call(Rpc::ModelInfer), |e, c| {
            Box::pin(e.model_infer(c, tensor(bad)))
        })
        .await
        .expect_err("NaN");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn a_refused_upload_gives_back_every_byte_it_held() {
    let (engine, _dir) = engine();
    let messages = vec![
        pb::UploadStudyRequest {
            part: Some(pb::upload_study_request::Part::Header(pb::UploadHeader {
                expected_files: 1,
                ..Default::default()
            })),
        },
        pb::UploadStudyRequest {
            part: Some(pb::upload_study_request::Part::Chunk(pb::FileChunk {
                file_index: 0,
                data: vec![0x55; 100_000],
                last: true,
            })),
        },
    ];
    let stream = tokio_stream::iter(messages.into_iter().map(Ok));
    let e = engine
        .run(call(Rpc::UploadStudy), |e, c| Box::pin(e.upload(c, stream)))
        .await
        .expect_err("not DICOM");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(engine.state().upload_bytes().used(), 0);
    assert_eq!(engine.state().store.used_bytes(), 0);
}

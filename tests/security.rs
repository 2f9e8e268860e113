//! Security of a clinical deployment (issue: Security): the hash-chained audit log, written for
//! every request by an in-process server and checked with `osteo audit verify`.

mod common;

use common::inproc::{InProc, registry};
use common::*;
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

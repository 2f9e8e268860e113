//! `osteo screen` against a real PACS (Orthanc with DICOMweb, started on loopback ports) and an
//! in-process server: phantom abdomens are graded and their SR and Grad-CAM secondary capture
//! stored back; a real head CT is refused by the quality gate and nothing is stored for it; a
//! second run skips what is screened; shards split the studies disjointly; an unreachable PACS
//! is an error row and exit 1; bad arguments exit 2.

mod common;

use common::inproc::{InProc, registry};
use dicom_dictionary_std::tags;
use osteo_dicomweb::orthanc::Orthanc;
use osteo_dicomweb::{DicomWeb, Limits};
use osteo_phantom::{PhantomSpec, SeriesIdentity, TScoreModel, phantom_volume, write_series};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// One results CSV as `study_uid -> (status, grade, reason)`, checking there is one row each.
fn results(path: &Path) -> BTreeMap<String, (String, String, String)> {
    let mut reader = csv::Reader::from_path(path).expect("results");
    assert_eq!(
        reader.headers().expect("header").iter().collect::<Vec<_>>(),
        [
            "study_uid",
            "status",
            "grade",
            "p_normal",
            "p_osteopenia",
            "p_osteoporosis",
            "reason"
        ]
    );
    let mut rows = BTreeMap::new();
    for r in reader.records() {
        let r = r.expect("row");
        let previous = rows.insert(
            r[0].to_string(),
            (r[1].to_string(), r[2].to_string(), r[6].to_string()),
        );
        assert!(previous.is_none(), "study {} listed twice", &r[0]);
    }
    rows
}

/// Asserts that a run exited 0, showing its stderr and results file otherwise.
fn succeeded(out: &Output, results: &Path) {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(results).unwrap_or_default()
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn screen(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_osteo"))
            .arg("screen")
            .args(&args)
            .output()
            .expect("run osteo screen")
    })
    .await
    .expect("join")
}

fn study_uid(file: &Path) -> String {
    dicom_object::open_file(file)
        .expect("open")
        .element(tags::STUDY_INSTANCE_UID)
        .expect("uid")
        .to_str()
        .expect("text")
        .trim_end_matches('\0')
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screen_grades_the_pacs_and_stores_the_results_back() {
    let orthanc = Orthanc::start().expect("Orthanc");
    let pacs = DicomWeb::new(&orthanc.url, None, Limits::default()).expect("client");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut phantoms = Vec::new();
    for i in 0..2 {
        let patient = TScoreModel::default().patient(13, i);
        let (_, volume) = phantom_volume(&patient, &PhantomSpec::default());
        let identity = SeriesIdentity::for_patient(&patient);
        let study_dir = dir.path().join(format!("p{i}"));
        let files = write_series(&volume, &identity, &study_dir).expect("write");
        let bytes: Vec<Vec<u8>> = files
            .iter()
            .map(|f| std::fs::read(f).expect("read"))
            .collect();
        pacs.store(&bytes).await.expect("store phantom");
        phantoms.push((identity.study_uid, study_dir));
    }
    let head_file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(".cache/testdata/data_store/data/693_UNCR.dcm");
    let head = study_uid(&head_file);
    pacs.store(&[std::fs::read(&head_file).expect("read head")])
        .await
        .expect("store head");

    let server = InProc::start(
        "",
        &[("osteo-fused-v1", "backends = [\"ort\"]")],
        registry(),
    )
    .await;
    let base = |results: &Path| -> Vec<String> {
        vec![
            "--dicomweb".into(),
            orthanc.url.clone(),
            "--server".into(),
            server.url.clone(),
            "--results".into(),
            results.display().to_string(),
            "--concurrency".into(),
            "2".into(),
        ]
    };
    let with = |mut a: Vec<String>, extra: &[&str]| {
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };

    // First run: the query finds all three studies.
    let first = dir.path().join("first.csv");
    let out = screen(with(base(&first), &["--query", "ModalitiesInStudy=CT"])).await;
    succeeded(&out, &first);
    let rows = results(&first);
    assert_eq!(rows.len(), 3, "{rows:?}");
    let (status, grade, reason) = &rows[&head];
    assert_eq!(status, "refused");
    assert!(grade.is_empty());
    assert!(
        reason.contains("no lumbar spine in the field of view"),
        "{reason}"
    );
    for (uid, study_dir) in &phantoms {
        let (status, grade, _) = &rows[uid];
        assert_eq!(status, "classified", "{uid}");
        // The grade `osteo classify` gives on the same files.
        let classify = Command::new(env!("CARGO_BIN_EXE_osteo"))
            .args([
                "classify",
                "--server",
                &server.url,
                "--clinical-from-dicom",
                "--json",
            ])
            .arg("--dicom")
            .arg(study_dir)
            .output()
            .expect("classify");
        assert!(
            classify.status.success(),
            "{}",
            String::from_utf8_lossy(&classify.stderr)
        );
        let json: serde_json::Value =
            serde_json::from_slice(&classify.stdout).expect("classify json");
        assert_eq!(json["grade"].as_str(), Some(grade.as_str()), "{json}");
        // The SR and the secondary capture are in the study now: two new series.
        let sr = [("Modality".to_string(), "SR".to_string())];
        assert_eq!(
            pacs.search_series(uid, &sr, &[])
                .await
                .expect("series")
                .len(),
            1
        );
        assert_eq!(
            pacs.search_series(uid, &[], &[])
                .await
                .expect("series")
                .len(),
            3
        );
        let instances = pacs.retrieve_study(uid).await.expect("retrieve");
        let code = match grade.as_str() {
            "osteopenia" => "312894000",
            "osteoporosis" => "64859006",
            _ => "BMD-NORMAL",
        };
        let srs: Vec<&Vec<u8>> = instances
            .iter()
            .filter(|i| {
                contains(i, b"1.2.840.10008.5.1.4.1.1.88.33") && contains(i, code.as_bytes())
            })
            .collect();
        assert!(!srs.is_empty(), "{uid}: no SR with the grade's code {code}");
    }
    // Nothing was stored for the refused study.
    assert_eq!(
        pacs.search_series(&head, &[], &[])
            .await
            .expect("series")
            .len(),
        1
    );

    // Second run into a new file: the graded studies are skipped (their SR is in the PACS).
    let second = dir.path().join("second.csv");
    let out = screen(with(base(&second), &["--query", "ModalitiesInStudy=CT"])).await;
    succeeded(&out, &second);
    let rows = results(&second);
    for (uid, _) in &phantoms {
        assert_eq!(rows[uid].0, "skipped", "{rows:?}");
    }
    assert_eq!(rows[&head].0, "refused");
    // Resuming into the first file: nothing to do, no duplicates.
    let before = std::fs::read_to_string(&first).expect("read");
    let out = screen(with(base(&first), &["--query", "ModalitiesInStudy=CT"])).await;
    succeeded(&out, &first);
    assert_eq!(results(&first).len(), 3);
    assert_eq!(
        std::fs::read_to_string(&first)
            .expect("read")
            .lines()
            .count(),
        before.lines().count()
    );

    // Shards from a worklist: disjoint, and together every study.
    let worklist = dir.path().join("worklist.csv");
    let mut text = String::from("study_uid,note\n");
    for uid in phantoms.iter().map(|(u, _)| u).chain([&head]) {
        text.push_str(&format!("{uid},x\n"));
    }
    std::fs::write(&worklist, text).expect("worklist");
    let mut union = HashSet::new();
    for k in 0..2 {
        let file = dir.path().join(format!("shard{k}.csv"));
        let out = screen(with(
            base(&file),
            &[
                "--worklist",
                worklist.to_str().expect("utf-8"),
                "--shard",
                &format!("{k}/2"),
            ],
        ))
        .await;
        succeeded(&out, &file);
        for uid in results(&file).into_keys() {
            assert!(union.insert(uid), "a study in two shards");
        }
    }
    assert_eq!(union.len(), 3);

    // Killed after its first row and restarted: every study once.
    let killed = dir.path().join("killed.csv");
    let mut args = with(
        base(&killed),
        &["--worklist", worklist.to_str().expect("utf-8")],
    );
    args[7] = "1".into();
    let mut child = Command::new(env!("CARGO_BIN_EXE_osteo"))
        .arg("screen")
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::read_to_string(&killed)
        .map(|t| t.lines().count())
        .unwrap_or(0)
        < 2
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let out = screen(args).await;
    succeeded(&out, &killed);
    assert_eq!(
        results(&killed).len(),
        3,
        "every study once after the restart"
    );

    // Bad arguments exit 2; an unreachable PACS is an error row and exit 1.
    let bad = screen(with(
        base(&dir.path().join("bad.csv")),
        &["--study", &head, "--shard", "2/2"],
    ))
    .await;
    assert_eq!(
        bad.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let gone = dir.path().join("gone.csv");
    let mut args = base(&gone);
    args[1] = "http://127.0.0.1:9/dicom-web".into();
    let out = screen(with(args, &["--study", &head])).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(results(&gone)[&head].0, "error");
    server.stop().await.expect("stop");
}

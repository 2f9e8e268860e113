//! `osteo screen` against a real PACS (Orthanc with DICOMweb, started on loopback ports) and an
//! in-process server: phantom abdomens are graded and their SR and Grad-CAM secondary capture
//! stored back; a real head CT is refused by the quality gate and nothing is stored for it; a
//! second run skips what is screened; shards split the studies disjointly; an unreachable PACS
//! is an error row and exit 1; bad arguments exit 2.

use crate::common::inproc::{InProc, registry};
use crate::common::{fhir_checked, weights_digest};
use dicom_dictionary_std::tags;
use osteo_dicomweb::{DicomWeb, Limits, TlsOptions};
use osteo_phantom::{PhantomSpec, SeriesIdentity, TScoreModel, phantom_volume, write_series};
use osteo_test_support::orthanc::Orthanc;
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
            "reason",
            "model",
            "model_version",
            "weights_blake3",
            "backend",
            "device",
            "osteoserve_version",
            "refer",
            "prediction_set",
            "indeterminate",
            "trabecular_hu_T12",
            "trabecular_hu_L1",
            "trabecular_hu_L2",
            "trabecular_hu_L3",
            "trabecular_hu_L4",
            "trabecular_hu_L5",
            "trabecular_hu_femoral_neck_left",
            "trabecular_hu_femoral_neck_right"
        ]
    );
    let mut rows = BTreeMap::new();
    for r in reader.records() {
        let r = r.expect("row");
        // Every row names what graded it (or would have): the exact weights.
        assert_eq!(
            (&r[7], &r[8], &r[9]),
            (
                "osteo-fused-v2",
                "2",
                weights_digest("osteo-fused-v2").as_str()
            ),
            "{r:?}"
        );
        assert_eq!(
            (&r[10], &r[12]),
            ("ort", env!("CARGO_PKG_VERSION")),
            "{r:?}"
        );
        if &r[1] == "classified" {
            assert_eq!(&r[11], "cpu", "{r:?}");
            // The calibrated model's decision next to the grade.
            assert!(matches!(&r[13], "true" | "false"), "{r:?}");
            let set: Vec<&str> = r[14].split('|').collect();
            assert!(set.contains(&&r[2]) || set.len() > 1, "{r:?}");
            assert!(
                set.iter()
                    .all(|g| ["normal", "osteopenia", "osteoporosis"].contains(g)),
                "{r:?}"
            );
            assert_eq!(
                &r[15],
                (set.contains(&"normal") && set.contains(&"osteoporosis")).to_string(),
                "{r:?}"
            );
            // The vertebral attenuation of every lumbar level a phantom shows.
            for level in 16..24 {
                let hu: f64 = r[level].parse().unwrap_or_else(|_| panic!("{r:?}"));
                assert!((-100.0..500.0).contains(&hu), "{r:?}");
            }
        } else {
            assert_eq!((&r[13], &r[14], &r[15]), ("", "", ""), "{r:?}");
        }
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

/// Asserts that a run exited 1 with `uid` in error in `results`; returns the reason.
fn ended_in_error(out: Output, results_file: &Path, uid: &str) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, _, reason) = results(results_file).remove(uid).expect("a row");
    assert_eq!(status, "error");
    reason
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
    let pacs = orthanc.client().expect("client");
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
        &[("osteo-fused-v2", "backends = [\"ort\"]")],
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
    let fhir = dir.path().join("fhir");
    let out = screen(with(
        base(&first),
        &[
            "--query",
            "ModalitiesInStudy=CT",
            "--fhir-dir",
            fhir.to_str().expect("path"),
        ],
    ))
    .await;
    succeeded(&out, &first);
    let rows = results(&first);
    assert_eq!(rows.len(), 3, "{rows:?}");
    // One FHIR Bundle per graded study, named by a hash of its UID, referencing it.
    let mut bundles: Vec<String> = std::fs::read_dir(&fhir)
        .expect("fhir dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    bundles.sort();
    let mut want: Vec<String> = phantoms
        .iter()
        .map(|(uid, _)| osteo_client::screen::fhir_file_name(uid))
        .collect();
    want.sort();
    assert_eq!(
        bundles, want,
        "one Bundle per classified study, none for the refused one"
    );
    let paths: Vec<std::path::PathBuf> = phantoms
        .iter()
        .map(|(uid, _)| fhir.join(osteo_client::screen::fhir_file_name(uid)))
        .collect();
    for (v, (uid, _)) in fhir_checked(&paths.iter().collect::<Vec<_>>())
        .iter()
        .zip(&phantoms)
    {
        assert_eq!(
            v["imaging_study"],
            serde_json::json!([format!("urn:oid:{uid}")])
        );
        assert_eq!(v["device_name"], serde_json::json!(["osteo-fused-v2"]));
    }
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
            _ => "17621005",
        };
        let srs: Vec<_> = instances
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

/// A study over the server's upload limit is refused once: the server marks the refusal "do not
/// retry" (`grpc-retry-pushback-ms: -1`) and `osteo screen` ends the study in error at once
/// instead of sending it four times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_over_the_servers_limit_is_not_retried() {
    let orthanc = Orthanc::start().expect("Orthanc");
    let pacs = orthanc.client().expect("client");
    let dir = tempfile::tempdir().expect("tempdir");
    let patient = TScoreModel::default().patient(17, 0);
    let (_, volume) = phantom_volume(&patient, &PhantomSpec::default());
    let identity = SeriesIdentity::for_patient(&patient);
    let files = write_series(&volume, &identity, &dir.path().join("study")).expect("write");
    let bytes: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).expect("read"))
        .collect();
    assert!(bytes.iter().map(Vec::len).sum::<usize>() > 1 << 20);
    pacs.store(&bytes).await.expect("store phantom");
    let audit = dir.path().join("audit.jsonl");
    let server = InProc::start(
        &format!(
            "[store]\nmax_upload_bytes = 1048576\n[audit]\npath = \"{}\"\n",
            audit.display()
        ),
        &[("osteo-fused-v2", "backends = [\"ort\"]")],
        registry(),
    )
    .await;
    let results_file = dir.path().join("results.csv");
    let out = screen(vec![
        "--dicomweb".into(),
        orthanc.url.clone(),
        "--server".into(),
        server.url.clone(),
        "--results".into(),
        results_file.display().to_string(),
        "--study".into(),
        identity.study_uid.clone(),
    ])
    .await;
    let reason = ended_in_error(out, &results_file, &identity.study_uid);
    assert!(
        reason.starts_with("RESOURCE_EXHAUSTED") && reason.contains("store.max_upload_bytes"),
        "{reason}"
    );
    let uploads = std::fs::read_to_string(&audit)
        .expect("audit log")
        .lines()
        .filter(|l| l.contains("\"GradeStudy\""))
        .count();
    assert_eq!(uploads, 1, "the refused GradeStudy was sent once");
    server.stop().await.expect("stop");
}

/// `osteo screen` against a PACS published over https the way sites do it: nginx terminating
/// TLS in front of Orthanc, verifying client certificates and requiring a bearer token. The
/// DICOMweb client tells an untrusted certificate (not retried), a missing client certificate
/// and a wrong token apart; a study over --max-study-mib is an error; the screen stores its SR
/// through the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screen_reaches_a_pacs_over_tls_with_client_certificates() {
    use crate::common::pki::Ca;
    use osteo_dicomweb::DicomWebError;
    use osteo_test_support::nginx::{ProxyAuth, TlsProxy};

    let dir = tempfile::tempdir().expect("tempdir");
    let orthanc = Orthanc::start().expect("Orthanc");
    let pacs_ca = Ca::new(dir.path(), "pacs");
    let clients = Ca::new(dir.path(), "clients");
    let (site, screener) = (pacs_ca.server(), clients.client("screening"));
    let token = "pacsToken42";
    let proxy = TlsProxy::start(
        orthanc.http_port,
        &site.cert,
        &site.key,
        &ProxyAuth {
            client_ca: Some(clients.cert.clone()),
            token: Some(token.into()),
        },
    )
    .expect("nginx");
    let read = |p: &Path| std::fs::read(p).expect("read PEM");
    let trusted = TlsOptions {
        ca_pem: Some(read(&pacs_ca.cert)),
        identity: Some((read(&screener.cert), read(&screener.key))),
    };
    let client = |token: Option<&str>, tls: &TlsOptions| {
        DicomWeb::new(&proxy.url, token.map(String::from), tls, Limits::default()).expect("client")
    };
    let pacs = client(Some(token), &trusted);

    // Through the proxy: store a phantom study and find it.
    let patient = TScoreModel::default().patient(17, 0);
    let (_, volume) = phantom_volume(&patient, &PhantomSpec::default());
    let identity = SeriesIdentity::for_patient(&patient);
    let files = write_series(&volume, &identity, &dir.path().join("p")).expect("write");
    let bytes: Vec<Vec<u8>> = files.iter().map(|f| read(f)).collect();
    pacs.store(&bytes).await.expect("store over TLS");
    let uid = identity.study_uid;
    let by_uid = [("StudyInstanceUID".to_string(), uid.clone())];
    assert_eq!(
        pacs.search_studies(&by_uid).await.expect("search"),
        std::slice::from_ref(&uid)
    );

    // Refusals, each told apart.
    let system_roots = TlsOptions {
        ca_pem: None,
        identity: trusted.identity.clone(),
    };
    match DicomWeb::new(
        &proxy.url,
        Some(token.into()),
        &system_roots,
        Limits::default(),
    ) {
        // No system roots at all: refused before connecting.
        Err(e) => assert!(matches!(e, DicomWebError::TlsConfig(_)), "{e}"),
        Ok(untrusting) => {
            let e = untrusting
                .search_studies(&by_uid)
                .await
                .expect_err("untrusted");
            assert!(matches!(e, DicomWebError::Handshake { .. }), "{e}");
            assert!(e.to_string().contains("UnknownIssuer"), "{e}");
            assert!(!e.is_transient());
        }
    }
    let anonymous = TlsOptions {
        ca_pem: trusted.ca_pem.clone(),
        identity: None,
    };
    let e = client(Some(token), &anonymous)
        .search_studies(&by_uid)
        .await
        .expect_err("no client certificate");
    assert!(
        matches!(e, DicomWebError::Status { status: 400, .. }),
        "{e}"
    );
    let e = client(Some("wrong"), &trusted)
        .search_studies(&by_uid)
        .await
        .expect_err("wrong token");
    assert!(
        matches!(e, DicomWebError::Status { status: 401, .. }),
        "{e}"
    );
    assert!(!e.is_transient());

    let server = InProc::start(
        "",
        &[("osteo-fused-v2", "backends = [\"ort\"]")],
        registry(),
    )
    .await;
    let tls_args = |results: &Path, ca: &Path| -> Vec<String> {
        [
            "--dicomweb",
            &proxy.url,
            "--dicomweb-token",
            token,
            "--dicomweb-ca-cert",
            ca.to_str().expect("utf-8"),
            "--dicomweb-client-cert",
            screener.cert.to_str().expect("utf-8"),
            "--dicomweb-client-key",
            screener.key.to_str().expect("utf-8"),
            "--server",
            &server.url,
            "--results",
            results.to_str().expect("utf-8"),
            "--study",
            &uid,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    // The wrong CA: an error row naming the handshake, exit 1, nothing stored.
    let wrong = dir.path().join("wrong-ca.csv");
    let reason = ended_in_error(screen(tls_args(&wrong, &clients.cert)).await, &wrong, &uid);
    assert!(reason.contains("TLS handshake failed"), "{reason}");
    // A study over --max-study-mib: an error row naming the flag, nothing stored.
    let small = dir.path().join("small.csv");
    let mut args = tls_args(&small, &pacs_ca.cert);
    args.extend(["--max-study-mib".to_string(), "1".to_string()]);
    let reason = ended_in_error(screen(args).await, &small, &uid);
    assert!(
        reason.contains("exceed --max-study-mib (1 MiB)"),
        "{reason}"
    );
    // The right CA: graded, and the SR is in the PACS (read back through the proxy).
    let good = dir.path().join("tls.csv");
    let out = screen(tls_args(&good, &pacs_ca.cert)).await;
    succeeded(&out, &good);
    assert_eq!(results(&good)[&uid].0, "classified");
    let sr = [("Modality".to_string(), "SR".to_string())];
    assert_eq!(
        pacs.search_series(&uid, &sr, &[])
            .await
            .expect("series")
            .len(),
        1
    );

    // TLS files on an http:// URL are bad arguments.
    let mut plain = tls_args(&dir.path().join("plain.csv"), &pacs_ca.cert);
    plain[1] = orthanc.url.clone();
    let out = screen(plain).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs an https:// URL"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop().await.expect("stop");
}

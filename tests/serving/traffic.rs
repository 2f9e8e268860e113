//! Live traffic: shadow pairs (candle behind ONNX Runtime agrees exactly, a deliberately
//! different model is reported as different, a full shadow queue drops shadows and never a
//! primary request) and canary splits (by weight, sticky per study and per affinity key,
//! changed by editing the traffic file while serving).

use crate::common::inproc::{InProc, registry, settings};
use crate::common::*;
use osteo_proto::v1 as pb;
use osteo_proto::v1::osteo_service_client::OsteoServiceClient;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const TABULAR: [(&str, &str); 1] = [("osteo-tabular-v1", "backends = [\"ort\", \"candle\"]")];

/// Clinical variables that vary with `i` (ages 50-89, both sexes, a range of builds), so the
/// grades vary too.
fn varied(i: usize) -> pb::ClinicalVariables {
    pb::ClinicalVariables {
        age_years: 50.0 + ((i * 7) % 40) as f64,
        sex: if i.is_multiple_of(2) {
            pb::Sex::Female as i32
        } else {
            pb::Sex::Male as i32
        },
        height_cm: 150.0 + ((i * 3) % 30) as f64,
        weight_kg: 42.0 + ((i * 11) % 50) as f64,
        ..Default::default()
    }
}

/// A copy of the shipped tabular model as `repo/osteo-tabular-v1/<version>/`, its age and
/// weight normalisation shifted so that it grades the same patients differently.
fn shifted_version(repo: &Path, version: &str) {
    let dir = repo.join("osteo-tabular-v1").join(version);
    copy_model("osteo-tabular-v1", &dir);
    let toml = dir.join("model.toml");
    let text = std::fs::read_to_string(&toml).expect("model.toml");
    let text = text
        .replacen("version = \"1\"", &format!("version = \"{version}\""), 1)
        .replacen("mean = 66.14895635673625", "mean = 46.0", 1)
        .replacen("mean = 67.44852941176475", "mean = 85.0", 1);
    std::fs::write(&toml, text).expect("write model.toml");
}

async fn report(c: &mut OsteoServiceClient<Channel>) -> pb::GetShadowReportResponse {
    c.get_shadow_report(pb::GetShadowReportRequest { resamples: 200 })
        .await
        .expect("report")
        .into_inner()
}

/// Waits (at most 60 s) until every pair has accounted for `n` mirrored requests.
async fn settled(c: &mut OsteoServiceClient<Channel>, n: u64) -> pb::GetShadowReportResponse {
    let start = Instant::now();
    loop {
        let r = report(c).await;
        if r.pairs
            .iter()
            .all(|p| p.compared + p.dropped + p.failed >= n)
        {
            return r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "shadows never settled: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn estimate(i: &Option<pb::Interval>) -> f64 {
    i.expect("interval").estimate
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_of_candle_behind_ort_agrees_and_a_different_model_is_reported_different() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    shifted_version(&repo, "2");
    let config = format!(
        "[traffic]\nshadow_queue = 1024\n\
         [repository]\npath = \"{}\"\nbackends = [\"candle\"]\npins = {{ \"osteo-tabular-v1\" = \"1\" }}\n\
         [[shadow]]\nmodel = \"osteo-tabular-v1\"\nversion = \"1\"\nbackend = \"ort\"\n\
         target_version = \"1\"\ntarget_backend = \"candle\"\nfraction = 1.0\n\
         [[shadow]]\nmodel = \"osteo-tabular-v1\"\nversion = \"1\"\nbackend = \"ort\"\n\
         target_version = \"2\"\nfraction = 1.0\n",
        repo.display()
    );
    let server = InProc::start(&config, &TABULAR, registry()).await;
    let mut c = server.client().await;
    let n = 60;
    for i in 0..n {
        let r = c
            .classify(pb::ClassifyRequest {
                clinical: Some(varied(i)),
                model: "osteo-tabular-v1".into(),
                ..Default::default()
            })
            .await
            .expect("classify")
            .into_inner();
        assert_eq!(r.backend.expect("backend").name, "ort");
        assert_eq!(r.model.expect("model").version, "1");
    }
    let r = settled(&mut c, n as u64).await;
    assert_eq!(r.pairs.len(), 2, "{r:?}");
    let (same, different) = (&r.pairs[0], &r.pairs[1]);
    assert_eq!(same.model, "osteo-tabular-v1:1@ort");
    assert_eq!(same.shadow, "osteo-tabular-v1:1@candle");
    assert_eq!((same.compared, same.dropped, same.failed), (n as u64, 0, 0));
    assert_eq!(same.disagreements, 0);
    assert_eq!(estimate(&same.agreement), 1.0);
    assert_eq!(estimate(&same.kappa), 1.0);
    assert!(same.max_abs_diff < 1e-4, "{}", same.max_abs_diff);
    let diagonal: u64 = (0..3).map(|k| same.confusion[k * 4]).sum();
    assert_eq!(diagonal, n as u64);
    let graded: Vec<u64> = (0..3)
        .map(|k| same.confusion[k * 3..k * 3 + 3].iter().sum())
        .collect();
    assert!(
        graded.iter().filter(|&&g| g > 0).count() >= 2,
        "the varied patients get more than one grade: {graded:?}"
    );

    assert_eq!(different.shadow, "osteo-tabular-v1:2");
    assert_eq!(different.compared, n as u64);
    assert!(different.disagreements > 0, "{different:?}");
    let a = different.agreement.expect("agreement");
    assert!(a.estimate < 1.0 && a.low <= a.estimate && a.estimate <= a.high);
    assert!(estimate(&different.kappa) < 1.0);
    assert!(different.max_abs_diff > 0.05);

    // Prometheus: counts and the agreement gauge, labelled from configuration.
    let text = server.scrape().await;
    let labels = [
        "model=\"osteo-tabular-v1:1@ort\"",
        "shadow=\"osteo-tabular-v1:1@candle\"",
    ];
    let with = |extra: &'static str| {
        let mut l = labels.to_vec();
        l.push(extra);
        l
    };
    assert_eq!(
        metric(
            &text,
            "osteo_shadow_requests_total",
            &with("outcome=\"compared\"")
        ),
        n as f64
    );
    assert_eq!(
        metric(&text, "osteo_shadow_grade_agreement", &labels),
        1.0,
        "{text}"
    );

    // The CLI prints the same report.
    let mut ab = std::process::Command::new(env!("CARGO_BIN_EXE_osteo"));
    ab.args(["ab", "report", "--server", &server.url, "--json"]);
    let out = output(ab).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["pairs"][0]["compared"], n as u64, "{v}");
    assert_eq!(v["pairs"][0]["kappa"]["estimate"], 1.0, "{v}");
    assert_eq!(v["pairs"][1]["shadow"], "osteo-tabular-v1:2", "{v}");
    let mut table = std::process::Command::new(env!("CARGO_BIN_EXE_osteo"));
    table.args(["ab", "report", "--server", &server.url]);
    let out = output(table).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("osteo-tabular-v1:1@ort -> osteo-tabular-v1:1@candle")
            && text.contains("Cohen's kappa     1.000 [1.000, 1.000]"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_overload_the_shadow_drops_and_no_primary_request_fails() {
    // The fused model on ONNX Runtime, shadowed by candle (slower, and slower still in a debug
    // build) through a queue of one: eight clients at once outpace the shadow.
    let config = "[traffic]\nshadow_queue = 1\n\
         [[shadow]]\nmodel = \"osteo-fused-v1\"\nbackend = \"ort\"\ntarget_backend = \"candle\"\nfraction = 1.0\n";
    let models = [("osteo-fused-v1", "backends = [\"ort\", \"candle\"]")];
    let server = InProc::start(config, &models, registry()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let files = read_all(&study(dir.path()));
    let mut c = server.client().await;
    let handle = upload(&mut c, &files, 1 << 20).await;
    let (clients, each) = (8, 12);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut c = server.client().await;
        let handle = handle.clone();
        tasks.push(tokio::spawn(async move {
            let mut failed = Vec::new();
            for _ in 0..each {
                let r = c
                    .classify(pb::ClassifyRequest {
                        study: by_handle(&handle),
                        clinical: Some(clinical()),
                        ..Default::default()
                    })
                    .await;
                if let Err(s) = r {
                    failed.push(s.code());
                }
            }
            failed
        }));
    }
    for t in tasks {
        assert_eq!(
            t.await.expect("client"),
            Vec::new(),
            "no primary request fails"
        );
    }
    let r = settled(&mut c, (clients * each) as u64).await;
    let p = &r.pairs[0];
    assert_eq!(p.compared + p.dropped, (clients * each) as u64, "{p:?}");
    assert!(p.dropped > 0, "a queue of one overflows: {p:?}");
    assert!(p.compared > 0, "{p:?}");
    assert_eq!(p.failed, 0);
    assert_eq!(estimate(&p.agreement), 1.0);
    let text = server.scrape().await;
    assert_eq!(
        metric(
            &text,
            "osteo_shadow_requests_total",
            &["outcome=\"dropped\""]
        ),
        p.dropped as f64
    );
}

/// A Classify of the tabular model sent with affinity key `key`; answers the version.
async fn version_for(c: &mut OsteoServiceClient<Channel>, key: &str) -> String {
    let mut req = tonic::Request::new(pb::ClassifyRequest {
        clinical: Some(clinical()),
        model: "osteo-tabular-v1".into(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("x-osteo-affinity", key.parse().expect("ascii"));
    c.classify(req)
        .await
        .expect("classify")
        .into_inner()
        .model
        .expect("model")
        .version
}

fn canary(weight_1: u32, weight_2: u32) -> String {
    format!(
        "[[canary]]\nmodel = \"osteo-tabular-v1\"\n\
         targets = [{{ version = \"1\", weight = {weight_1} }}, {{ version = \"2\", weight = {weight_2} }}]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_splits_by_weight_sticks_to_a_study_and_changes_with_its_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    shifted_version(&repo, "2");
    let traffic = dir.path().join("traffic.toml");
    std::fs::write(&traffic, canary(50, 50)).expect("traffic file");
    let config = format!(
        "[traffic]\nfile = \"{}\"\npoll_s = 1\n\
         [repository]\npath = \"{}\"\nbackends = [\"candle\"]\n",
        traffic.display(),
        repo.display()
    );
    let server = InProc::start(&config, &TABULAR, registry()).await;
    let mut c = server.client().await;

    // Split by weight, the same key always to the same version.
    let mut seen = std::collections::BTreeMap::new();
    for i in 0..40 {
        let key = format!("study-{i}");
        let v = version_for(&mut c, &key).await;
        assert_eq!(version_for(&mut c, &key).await, v, "sticky per key");
        *seen.entry(v).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "both versions answer: {seen:?}");

    // A study's calls meet one version: by handle and in one GradeStudy, keyed on the study.
    let files = read_all(&study(dir.path()));
    let handle = upload(&mut c, &files, 1 << 20).await;
    let by_study = pb::ClassifyRequest {
        study: by_handle(&handle),
        clinical_from_dicom: true,
        model: "osteo-tabular-v1".into(),
        ..Default::default()
    };
    let first = c
        .classify(by_study.clone())
        .await
        .expect("classify")
        .into_inner()
        .model
        .expect("model")
        .version;
    for _ in 0..4 {
        let again = c.classify(by_study.clone()).await.expect("classify");
        assert_eq!(again.into_inner().model.expect("model").version, first);
    }
    let graded = c
        .grade_study(tokio_stream::iter(grade_messages(
            pb::grade_action::Action::Classify(pb::ClassifyRequest {
                clinical_from_dicom: true,
                model: "osteo-tabular-v1".into(),
                ..Default::default()
            }),
            &files,
            1 << 20,
        )))
        .await
        .expect("grade")
        .into_inner();
    let version = match graded.result {
        Some(pb::grade_study_response::Result::Classification(r)) => {
            r.model.expect("model").version
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(version, first, "GradeStudy meets the study's version");

    // A named version is never re-routed.
    let named = c
        .classify(pb::ClassifyRequest {
            clinical: Some(clinical()),
            model: "osteo-tabular-v1".into(),
            model_version: "1".into(),
            ..Default::default()
        })
        .await
        .expect("named");
    assert_eq!(named.into_inner().model.expect("model").version, "1");

    // A file that does not parse leaves the split in force.
    std::fs::write(&traffic, "[[canary]]\nmodel = 3\n").expect("bad file");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut still = std::collections::BTreeSet::new();
    for i in 0..40 {
        still.insert(version_for(&mut c, &format!("study-{i}")).await);
    }
    assert_eq!(still.len(), 2, "the old split stays");

    // All weight on version 2: once the file is read again, every key meets version 2.
    std::fs::write(&traffic, canary(0, 100)).expect("traffic file");
    let start = Instant::now();
    loop {
        let mut versions = std::collections::BTreeSet::new();
        for i in 0..40 {
            versions.insert(version_for(&mut c, &format!("study-{i}")).await);
        }
        if versions.len() == 1 && versions.contains("2") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the new weights never took effect: {versions:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = server.scrape().await;
    assert!(
        metric(
            &text,
            "osteo_canary_requests_total",
            &["model=\"osteo-tabular-v1\"", "target=\"2@default\""]
        ) >= 40.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_names_what_is_not_served_stops_the_start_with_its_reason() {
    let config = "[[shadow]]\nmodel = \"osteo-tabular-v1\"\ntarget_model = \"osteo-tabular-v9\"\nfraction = 0.5\n";
    let server = InProc::spawn(settings(config, &TABULAR), registry()).await;
    let e = server.exit().await.expect_err("refused");
    let msg = e.to_string();
    assert!(
        msg.contains("shadow osteo-tabular-v1 -> osteo-tabular-v9") && msg.contains("not served"),
        "{msg}"
    );
    // A canary whose weights add up to nothing is refused when the configuration is read.
    let zero = format!(
        "{}\n{}",
        "[[canary]]\nmodel = \"osteo-tabular-v1\"\ntargets = [{ version = \"1\", weight = 0 }]",
        models_toml(&TABULAR)
    );
    let file = tempfile::NamedTempFile::new().expect("file");
    std::fs::write(file.path(), zero).expect("write");
    let e = osteo_server::config::load(Some(file.path()), &[]).expect_err("refused");
    assert!(e.to_string().contains("canary[0].targets"), "{e}");
}

//! Three replicas behind nginx `grpc_pass`, the way a service mesh or an L7 ingress balances
//! gRPC (per request, not per connection): every client workflow (the CLI's classify, explain,
//! compare and screen, Python grpcio GradeStudy, tritonclient v2 infer) succeeds through a
//! round-robin balancer; calls by handle stay on one replica through consistent hashing on the
//! affinity key; a rolling restart of every replica while four clients grade in a loop fails no
//! request.

use crate::clients::{cache, check, python_stubs};
use crate::common::inproc::{InProc, registry};
use crate::common::*;
use osteo_client::grade::{Choice, Subject};
use osteo_test_support::balancer::{GrpcBalancer, Routing};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const REPLICAS: usize = 3;

/// Replicas, each with its own audit log, behind one balancer.
struct Cluster {
    replicas: Vec<InProc>,
    audits: Vec<PathBuf>,
    balancer: GrpcBalancer,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// [`REPLICAS`] in-process servers with the shipped `models` and `config`, behind nginx
    /// routing as `routing` says.
    async fn start(routing: Routing, config: &str, models: &[(&str, &str)]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut replicas = Vec::new();
        let mut audits = Vec::new();
        for i in 0..REPLICAS {
            let audit = dir.path().join(format!("audit-{i}.jsonl"));
            let config = format!("{config}\n[audit]\npath = \"{}\"\n", audit.display());
            replicas.push(InProc::start(&config, models, registry()).await);
            audits.push(audit);
        }
        let addrs: Vec<_> = replicas.iter().map(|r| r.addr).collect();
        let balancer = GrpcBalancer::start(&addrs, &routing).expect("nginx");
        Cluster {
            replicas,
            audits,
            balancer,
            _dir: dir,
        }
    }

    /// How many calls to `rpc` each replica's audit log records.
    fn served(&self, rpc: &str) -> Vec<usize> {
        let needle = format!("\"rpc\":\"{rpc}\"");
        self.audits
            .iter()
            .map(|a| {
                std::fs::read_to_string(a)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains(&needle))
                    .count()
            })
            .collect()
    }
}

/// Runs the `osteo` CLI with `args`.
async fn osteo(args: Vec<String>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_osteo"));
    command.args(&args);
    output(command).await
}

/// `osteo <command> --server URL --dicom STUDY <clinical flags> <extra>`.
fn grading(command: &str, url: &str, study: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        command.into(),
        "--server".into(),
        url.into(),
        "--dicom".into(),
        study.display().to_string(),
    ];
    a.extend(CLINICAL_FLAGS.iter().map(|s| s.to_string()));
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workflow_succeeds_through_a_round_robin_balancer() {
    let cluster = Cluster::start(
        Routing::RoundRobin,
        "",
        &[
            ("osteo-fused-v1", "backends = [\"candle\", \"ort\"]"),
            ("osteo-tabular-v1", "backends = [\"candle\"]"),
        ],
    )
    .await;
    let url = cluster.balancer.url.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let study_dir = dir.path().join("study");
    study(&study_dir);

    // The CLI, one GradeStudy call each: three of each command, so every replica answers.
    for i in 0..REPLICAS {
        let out = osteo(grading("classify", &url, &study_dir, &["--json"])).await;
        let v: serde_json::Value = serde_json::from_str(ok(&out, "classify").trim()).expect("JSON");
        assert_eq!(v["model"], "osteo-fused-v1", "{v}");
        let png = dir.path().join(format!("overlay-{i}.png"));
        let png_arg = png.display().to_string();
        let out = osteo(grading("explain", &url, &study_dir, &["--out", &png_arg])).await;
        ok(&out, "explain");
        assert!(
            std::fs::read(&png)
                .expect("overlay")
                .starts_with(b"\x89PNG")
        );
        let out = osteo(grading("compare", &url, &study_dir, &["--json"])).await;
        let v: serde_json::Value = serde_json::from_str(ok(&out, "compare").trim()).expect("JSON");
        assert_eq!(v["grades_agree"], true, "{v}");
    }
    let spread = cluster.served("GradeStudy");
    assert!(
        spread.iter().all(|n| *n > 0),
        "every replica answered: {spread:?}"
    );

    // Upload, then Classify by handle, without an affinity-aware balancer: the handle lands on
    // another replica, which names the cause and the remedy.
    let out = osteo(grading("classify", &url, &study_dir, &["--upload-first"])).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("NOT_FOUND") && stderr.contains("x-osteo-affinity"),
        "{stderr}"
    );

    // Python grpcio: GradeStudy three times.
    let stubs = python_stubs(dir.path());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let address = url.trim_start_matches("http://").to_string();
    let stdout = check(
        &Command::new(cache("venv/bin/python"))
            .arg(root.join("tests/python/grade_study.py"))
            .arg(&stubs)
            .arg(&address)
            .arg(&study_dir)
            .arg(REPLICAS.to_string())
            .output()
            .expect("python"),
        "GradeStudy from Python",
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    let calls = v.as_array().expect("array");
    assert_eq!(calls.len(), REPLICAS);
    for c in calls {
        assert_eq!(c["gate_passed"], serde_json::json!([true]), "{c}");
        assert_eq!(c["stored_bytes"], 0, "{c}");
        assert_eq!(c["grade"], calls[0]["grade"], "{v}");
    }

    // Triton's own client: v2 infer on the tabular model.
    let script = "import json, sys\nimport numpy as np\nimport tritonclient.grpc as tc\n\
        c = tc.InferenceServerClient(url=sys.argv[1])\nout = []\n\
        for _ in range(int(sys.argv[2])):\n\
        \x20   i = tc.InferInput('tabular', [1, 13], 'FP32')\n\
        \x20   i.set_data_from_numpy(np.zeros((1, 13), dtype=np.float32))\n\
        \x20   r = c.infer('osteo-tabular-v1', [i])\n\
        \x20   out.append(r.as_numpy('probabilities').ravel().tolist())\n\
        print(json.dumps(out))\n";
    let stdout = check(
        &Command::new(root.join(".cache/triton-venv/bin/python"))
            .args(["-c", script, &address, &REPLICAS.to_string()])
            .output()
            .expect("python"),
        "tritonclient infer",
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_eq!(v.as_array().map(Vec::len), Some(REPLICAS), "{v}");
    let infers = cluster.served("ModelInfer");
    assert_eq!(infers.iter().sum::<usize>(), REPLICAS, "{infers:?}");

    // osteo screen: the PACS's studies graded through the balancer.
    let orthanc = osteo_test_support::orthanc::Orthanc::start().expect("Orthanc");
    let pacs = orthanc.client().expect("client");
    for i in 0..2 {
        use osteo_phantom::{PhantomSpec, SeriesIdentity, TScoreModel, phantom_volume};
        let patient = TScoreModel::default().patient(29, i);
        let (_, volume) = phantom_volume(&patient, &PhantomSpec::default());
        let files = osteo_phantom::write_series(
            &volume,
            &SeriesIdentity::for_patient(&patient),
            &dir.path().join(format!("pacs-{i}")),
        )
        .expect("write");
        pacs.store(&read_all(&files)).await.expect("store");
    }
    let results = dir.path().join("results.csv");
    let out = osteo(vec![
        "screen".into(),
        "--dicomweb".into(),
        orthanc.url.clone(),
        "--server".into(),
        url.clone(),
        "--results".into(),
        results.display().to_string(),
        "--concurrency".into(),
        "2".into(),
        "--query".into(),
        "ModalitiesInStudy=CT".into(),
    ])
    .await;
    ok(&out, "screen");
    let rows = std::fs::read_to_string(&results).expect("results");
    assert_eq!(
        rows.lines().filter(|l| l.contains(",classified,")).count(),
        2,
        "{rows}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_by_handle_stay_on_one_replica_through_consistent_hashing_on_the_affinity_key() {
    let cluster = Cluster::start(
        Routing::ConsistentHash(osteo_client::affinity::HEADER.into()),
        "",
        &[("osteo-fused-v1", "backends = [\"candle\"]")],
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let study_dir = dir.path().join("study");
    study(&study_dir);
    let url = cluster.balancer.url.clone();
    for command in [
        "classify", "explain", "compare", "classify", "classify", "classify",
    ] {
        let out = osteo(grading(command, &url, &study_dir, &["--upload-first"])).await;
        let stdout = ok(&out, command);
        assert!(stdout.contains("osteo-fused-v1"), "{stdout}");
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let uploads = cluster.served("UploadStudy");
    let deletes = cluster.served("DeleteStudy");
    assert_eq!(uploads, deletes, "each study deleted where it was uploaded");
    assert_eq!(uploads.iter().sum::<usize>(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_replica_fails_no_request() {
    let config = "[server]\ndrain_delay_s = 1\n";
    let models = [("osteo-fused-v1", "backends = [\"candle\"]")];
    let mut cluster = Cluster::start(Routing::RoundRobin, config, &models).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let study_dir = dir.path().join("study");
    study(&study_dir);
    let url = cluster.balancer.url.clone();
    let done = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (url, study_dir, done) = (url.clone(), study_dir.clone(), done.clone());
        clients.push(tokio::spawn(async move {
            let mut client = osteo_client::connect(&url, &Default::default())
                .await
                .expect("connect");
            let subject = Subject {
                dicom: Some(&study_dir),
                clinical: clinical(),
                clinical_from_dicom: false,
            };
            let (mut served, mut failed) = (0usize, Vec::new());
            while !done.load(Ordering::SeqCst) {
                match osteo_client::grade::classify(
                    &mut client,
                    &Choice::default(),
                    &subject,
                    Default::default(),
                )
                .await
                {
                    Ok(_) => served += 1,
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (served, failed)
        }));
    }
    // Each replica in turn: told to stop (it drains, then closes), restarted on its address.
    for i in 0..REPLICAS {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let addr = cluster.replicas[i].addr;
        cluster.replicas[i].signal_shutdown();
        while !cluster.replicas[i].finished() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let config = format!(
            "{config}\n[audit]\npath = \"{}\"\n",
            cluster.audits[i].display()
        );
        cluster.replicas[i] = InProc::start_at(addr, &config, &models, registry()).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    done.store(true, Ordering::SeqCst);
    let (mut served, mut failed) = (0, Vec::new());
    for c in clients {
        let (s, f) = c.await.expect("client task");
        served += s;
        failed.extend(f);
    }
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    assert!(served >= 4, "{served} served");
    // What the replicas refused at all is UNAVAILABLE from a restarted replica still loading
    // its models (nginx has no readiness probe; Kubernetes would not route to it yet), which
    // the client retried.
    for audit in &cluster.audits {
        let log = std::fs::read_to_string(audit).unwrap_or_default();
        for line in log.lines().filter(|l| !l.contains("\"code\":\"Ok\"")) {
            assert!(line.contains("\"code\":\"Unavailable\""), "{line}");
        }
    }
    let answered = cluster.served("GradeStudy");
    assert!(answered.iter().all(|n| *n > 0), "{answered:?}");
}

//! The DICOM node (`osteo receive`, osteo-node) with real peers: dcmtk's `echoscu` and
//! `storescu` push a phantom CT study to the node, which grades it on an in-process server and
//! sends the SR and the secondary capture to dcmtk's `storescp`; results stay in the spool
//! until the destination acknowledges them, a restarted node finishes what it acknowledged, and
//! what does not fit is refused with DIMSE statuses.

use crate::common::inproc::{InProc, registry};
use crate::common::*;
use osteo_node::{Destination, NodeSettings, ScpSettings};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const FUSED: [(&str, &str); 1] = [("osteo-fused-v2", "backends = [\"ort\"]")];

/// A free loopback port.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

/// dcmtk's storescp as the results destination (AE PACS), writing into its own directory.
pub(crate) struct StoreScp {
    child: std::process::Child,
    dir: tempfile::TempDir,
    pub(crate) port: u16,
}

impl StoreScp {
    pub(crate) fn start(port: u16) -> Self {
        Self::start_with(port, &[])
    }

    /// storescp with `extra` arguments (its TLS options, say) before the port.
    fn start_with(port: u16, extra: &[std::ffi::OsString]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new("storescp")
            .args(extra)
            .args(["-aet", "PACS", "-od"])
            .arg(dir.path())
            .arg(port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("storescp (dcmtk; scripts/setup.sh installs it)");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "storescp did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, dir, port }
    }

    /// The files received so far.
    pub(crate) fn received(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl Drop for StoreScp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node running in this process.
struct Node {
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), osteo_node::NodeError>>,
}

impl Node {
    async fn start(server: &InProc, settings: NodeSettings) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let client = osteo_client::connect(&server.url, &Default::default())
            .await
            .expect("connect");
        let grader = osteo_client::screen::Grader::new(client, &Default::default())
            .await
            .expect("grader");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(osteo_node::run(
            listener,
            None,
            settings,
            grader,
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            port,
            stop: Some(stop),
            task,
        }
    }

    /// Stops the node as a crash would leave it: whatever is in flight is dropped, the spool
    /// stays.
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }
}

fn settings(dir: &Path, send_to: Option<u16>, idle_s: u64) -> NodeSettings {
    NodeSettings {
        scp: ScpSettings {
            ae_title: "OSTEO".into(),
            allow_ae: vec!["STORESCU".into(), "ECHOSCU".into()],
            max_associations: 8,
            max_pdu: 64 << 10,
            // Peers starved of CPU while the abuse test runs beside them may pause between
            // PDUs for seconds; tests/python/dimse_peer.py waits 120 s for an answer too.
            read_timeout: Duration::from_secs(120),
            max_instance_bytes: 64 << 20,
            tls: None,
        },
        spool: dir.join("spool"),
        spool_bytes: 1 << 30,
        journal_bytes: 16 << 20,
        results: dir.join("results.csv"),
        send_to: send_to.map(|p| Destination {
            ae_title: "PACS".into(),
            address: format!("127.0.0.1:{p}"),
            tls: None,
        }),
        stow: None,
        study_idle: Duration::from_secs(idle_s),
        max_study_instances: 4096,
        max_study_bytes: 1 << 30,
        fhir_dir: None,
        concurrency: 2,
    }
}

/// `storescu -v` sending `paths` as STORESCU; its output.
pub(crate) async fn storescu(port: u16, paths: &[PathBuf]) -> std::process::Output {
    storescu_with(port, &[], paths).await
}

/// dcmtk's storescu with `options` (before the peer) sending `paths` to the node on `port`.
pub(crate) async fn storescu_with(
    port: u16,
    options: &[&str],
    paths: &[PathBuf],
) -> std::process::Output {
    let mut c = Command::new("storescu");
    // dcmtk waits for a delayed ACK after each instance without it.
    c.env("TCP_NODELAY", "1")
        .args(["-v", "+sd", "-aec", "OSTEO", "-aet", "STORESCU"])
        .args(options)
        .arg("127.0.0.1")
        .arg(port.to_string())
        .args(paths);
    output(c).await
}

/// The rows of the results CSV once it holds `n` (at most 60 s).
pub(crate) async fn rows(results: &Path, n: usize) -> Vec<Vec<String>> {
    rows_of(results, n, true).await
}

/// The rows of the results CSV once it holds `n` (at most 60 s): those with a final status
/// (`final_only`, as a rerun keeps them), or every row, `error` rows included.
pub(crate) async fn rows_of(results: &Path, n: usize, final_only: bool) -> Vec<Vec<String>> {
    let start = Instant::now();
    loop {
        let rows = if final_only {
            osteo_client::screen::earlier(results).unwrap_or_default()
        } else {
            csv::Reader::from_path(results)
                .map(|mut r| {
                    r.records()
                        .flatten()
                        .map(|r| r.iter().map(str::to_string).collect())
                        .collect()
                })
                .unwrap_or_default()
        };
        if rows.len() >= n {
            return rows;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the results CSV never held {n} rows"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (at most 30 s) until nothing is left in the spool: the outbox is removed just after
/// the row is written.
async fn emptied(spool: &Path) {
    let start = Instant::now();
    while left(spool) > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the spool was not emptied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Directories (studies, graded, outbox) left in the spool.
pub(crate) fn left(spool: &Path) -> usize {
    ["studies", "grading", "outbox"]
        .iter()
        .map(|d| std::fs::read_dir(spool.join(d)).map_or(0, |e| e.count()))
        .sum()
}

/// A phantom CT study on disk, in `dir/study`: that directory.
pub(crate) fn phantom(dir: &Path) -> PathBuf {
    let at = dir.join("study");
    std::fs::create_dir_all(&at).expect("mkdir");
    let files = study(&at);
    files[0].parent().expect("study directory").to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_study_is_graded_and_its_results_stored_back_to_the_pacs() {
    let server = InProc::start("", &FUSED, registry()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pacs = StoreScp::start(free_port());
    let fhir = dir.path().join("fhir");
    let node = Node::start(
        &server,
        NodeSettings {
            fhir_dir: Some(fhir.clone()),
            ..settings(dir.path(), Some(pacs.port), 1)
        },
    )
    .await;

    let mut echo = Command::new("echoscu");
    echo.args(["-aec", "OSTEO", "-aet", "ECHOSCU", "127.0.0.1"])
        .arg(node.port.to_string());
    assert!(output(echo).await.status.success(), "C-ECHO");
    let mut stranger = Command::new("echoscu");
    stranger
        .args(["-aec", "OSTEO", "-aet", "STRANGER", "127.0.0.1"])
        .arg(node.port.to_string());
    let refused = output(stranger).await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Calling AE Title Not Recognized"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let sent = storescu(node.port, &[phantom(dir.path())]).await;
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let rows = rows(&dir.path().join("results.csv"), 1).await;
    assert_eq!(rows[0][1], "classified", "{rows:?}");
    assert!(!rows[0][2].is_empty());
    // The row names the exact weights; the FHIR Bundle is beside it, named by a hash of the UID.
    assert_eq!(
        rows[0][7..13],
        [
            "osteo-fused-v2".to_string(),
            "2".into(),
            weights_digest("osteo-fused-v2"),
            "ort".into(),
            "cpu".into(),
            env!("CARGO_PKG_VERSION").into(),
        ]
    );
    // The calibrated model's decision: refer, the prediction set, determinacy.
    assert!(matches!(rows[0][13].as_str(), "true" | "false"), "{rows:?}");
    assert!(!rows[0][14].is_empty(), "{rows:?}");
    assert!(matches!(rows[0][15].as_str(), "true" | "false"), "{rows:?}");
    let bundle = fhir.join(osteo_client::screen::fhir_file_name(&rows[0][0]));
    let checked = fhir_checked(&[&bundle]);
    assert_eq!(
        checked[0]["imaging_study"],
        serde_json::json!([format!("urn:oid:{}", rows[0][0])])
    );
    let received = pacs.received();
    assert_eq!(
        received.len(),
        2,
        "the SR and the secondary capture: {received:?}"
    );
    assert!(received.iter().any(|n| n.starts_with("SR")), "{received:?}");
    assert!(received.iter().any(|n| n.starts_with("SC")), "{received:?}");
    emptied(&dir.path().join("spool")).await;

    // An SR pushed back to the node (its own result) is acknowledged and not kept.
    let sr = pacs
        .dir
        .path()
        .join(received.iter().find(|n| n.starts_with("SR")).expect("SR"));
    let again = storescu(node.port, &[sr]).await;
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(left(&dir.path().join("spool")), 0);
    assert_eq!(
        osteo_client::screen::earlier(&dir.path().join("results.csv"))
            .expect("csv")
            .len(),
        1
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_wait_in_the_spool_until_acknowledged_and_a_restart_finishes_the_study() {
    let server = InProc::start("", &FUSED, registry()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    let pacs_port = free_port();

    // 1. Received, then the node stops before the study is complete.
    let node = Node::start(&server, settings(dir.path(), Some(pacs_port), 3600)).await;
    let sent = storescu(node.port, &[phantom(dir.path())]).await;
    assert!(sent.status.success());
    node.stop().await;
    assert_eq!(
        std::fs::read_dir(spool.join("studies"))
            .expect("studies")
            .count(),
        1
    );

    // 2. Restarted: the study completes and is graded, but the PACS is down, so the results
    // stay in the outbox and no row is written.
    let node = Node::start(&server, settings(dir.path(), Some(pacs_port), 1)).await;
    let start = Instant::now();
    while std::fs::read_dir(spool.join("outbox")).map_or(0, |e| e.count()) == 0 {
        assert!(start.elapsed() < Duration::from_secs(60), "never graded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        osteo_client::screen::earlier(&dir.path().join("results.csv"))
            .expect("csv")
            .is_empty()
    );
    node.stop().await;

    // 3. The PACS is up and the node restarts: the results are sent once, the row written,
    // the spool emptied.
    let pacs = StoreScp::start(pacs_port);
    let node = Node::start(&server, settings(dir.path(), Some(pacs_port), 1)).await;
    let rows = rows(&dir.path().join("results.csv"), 1).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][1], "classified");
    let start = Instant::now();
    while left(&spool) > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the spool was not emptied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        pacs.received().len(),
        2,
        "graded once, sent once: {:?}",
        pacs.received()
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_refuses_with_out_of_resources_and_keeps_nothing_half_written() {
    let server = InProc::start("", &FUSED, registry()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = settings(dir.path(), None, 3600);
    // Room for a handful of the study's instances only.
    s.spool_bytes = 400 << 10;
    let node = Node::start(&server, s).await;
    let sent = storescu(node.port, &[phantom(dir.path())]).await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&sent.stdout),
        String::from_utf8_lossy(&sent.stderr)
    );
    assert!(
        text.contains("Refused: OutOfResources"),
        "storescu reports the refusals: {text}"
    );
    let kept: u64 = std::fs::read_dir(dir.path().join("spool/studies"))
        .expect("studies")
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).expect("study").flatten())
        .map(|f| f.metadata().expect("meta").len())
        .sum();
    assert!(
        kept > 0 && kept <= 400 << 10,
        "kept {kept} bytes within the budget"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("spool/incoming"))
            .expect("incoming")
            .count(),
        0,
        "no half-written instance"
    );
    node.stop().await;
}

/// One HTTP/1.1 request to Orthanc's REST API on `port`; the response body.
async fn orthanc_rest(port: u16, method: &str, path: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("Orthanc REST");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: orthanc\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    assert!(out.starts_with("HTTP/1.1 200"), "{method} {path}: {out}");
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orthanc_pushes_a_study_to_the_node_and_receives_the_results_over_dimse() {
    use osteo_test_support::orthanc::Orthanc;
    let orthanc = Orthanc::start().expect("Orthanc");
    let pacs = orthanc.client().expect("client");
    let dir = tempfile::tempdir().expect("tempdir");
    let files = read_all(&study(&dir.path().join("study")));
    pacs.store(&files)
        .await
        .expect("store the phantom in Orthanc");

    let server = InProc::start("", &FUSED, registry()).await;
    let mut s = settings(dir.path(), Some(orthanc.dicom_port), 1);
    s.send_to = Some(Destination {
        ae_title: "ORTHANC".into(),
        address: format!("127.0.0.1:{}", orthanc.dicom_port),
        tls: None,
    });
    s.scp.allow_ae = vec!["ORTHANC".into()];
    let node = Node::start(&server, s).await;

    // The node as one of Orthanc's modalities; Orthanc pushes the study to it (C-STORE).
    orthanc_rest(
        orthanc.http_port,
        "PUT",
        "/modalities/osteo",
        &format!(
            "{{\"AET\":\"OSTEO\",\"Host\":\"127.0.0.1\",\"Port\":{}}}",
            node.port
        ),
    )
    .await;
    let studies = orthanc_rest(orthanc.http_port, "GET", "/studies", "").await;
    let ids: Vec<String> = serde_json::from_str(&studies).expect("study ids");
    assert_eq!(ids.len(), 1);
    orthanc_rest(
        orthanc.http_port,
        "POST",
        "/modalities/osteo/store",
        &format!("\"{}\"", ids[0]),
    )
    .await;

    // The SR and the secondary capture arrive in Orthanc's copy of the study.
    let rows = rows(&dir.path().join("results.csv"), 1).await;
    assert_eq!(rows[0][1], "classified", "{rows:?}");
    let uid = rows[0][0].clone();
    let series = pacs
        .search_series(&uid, &[], &["00080060"])
        .await
        .expect("series");
    let modalities: Vec<&str> = series
        .iter()
        .filter_map(|s| osteo_dicomweb::attribute(s, "00080060"))
        .collect();
    assert!(modalities.contains(&"SR"), "{modalities:?}");
    assert_eq!(
        modalities.len(),
        3,
        "CT, the SR and the secondary capture: {modalities:?}"
    );
    node.stop().await;
}

/// `osteo receive` as a process, its log in `log`.
pub(crate) fn receive_process(
    server: &str,
    dir: &Path,
    port: u16,
    send_to: u16,
    idle_s: u64,
    log: &Path,
    extra: &[&str],
) -> std::process::Child {
    let log = std::fs::File::create(log).expect("log");
    Command::new(env!("CARGO_BIN_EXE_osteo"))
        .args(["receive", "--ae-title", "OSTEO", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--server", server, "--spool"])
        .arg(dir.join("spool"))
        .arg("--results")
        .arg(dir.join("results.csv"))
        .args(["--send-to", &format!("PACS@127.0.0.1:{send_to}")])
        .args([
            "--study-idle-s",
            &idle_s.to_string(),
            "--allow-ae",
            "STORESCU",
        ])
        .args(extra)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("osteo receive")
}

/// Waits until something accepts connections on `port`.
pub(crate) async fn listening(port: u16) {
    let start = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "nothing listens on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_after_acknowledging_finishes_the_study_when_restarted_and_logs_no_patient_data()
 {
    let server = InProc::start("", &FUSED, registry()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pacs = StoreScp::start(free_port());
    let port = free_port();
    let first_log = dir.path().join("first.log");
    let mut node = receive_process(
        &server.url,
        dir.path(),
        port,
        pacs.port,
        3600,
        &first_log,
        &[],
    );
    listening(port).await;

    // A silent connection and a malformed PDU are closed; the node keeps serving.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut garbage = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        garbage
            .write_all(&[0x01, 0x00, 0xff, 0xff, 0xff, 0xff, 0x00])
            .await
            .expect("write");
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), garbage.read_to_end(&mut buf)).await;
    }
    let sent = storescu(port, &[phantom(dir.path())]).await;
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    // Acknowledged, not yet complete: kill -9.
    node.kill().expect("kill -9");
    let _ = node.wait();

    let second_log = dir.path().join("second.log");
    let mut node = receive_process(
        &server.url,
        dir.path(),
        port,
        pacs.port,
        1,
        &second_log,
        &[],
    );
    let rows = rows(&dir.path().join("results.csv"), 1).await;
    assert_eq!(rows[0][1], "classified", "{rows:?}");
    let start = Instant::now();
    while left(&dir.path().join("spool")) > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the spool was not emptied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pacs.received().len(), 2, "{:?}", pacs.received());
    node.kill().expect("kill");
    let _ = node.wait();

    let logs = format!(
        "{}{}",
        std::fs::read_to_string(&first_log).expect("log"),
        std::fs::read_to_string(&second_log).expect("log")
    );
    assert!(
        logs.contains("study graded") && logs.contains("results sent"),
        "{logs}"
    );
    for secret in [PATIENT_NAME, PATIENT_ID, "DOE", rows[0][0].as_str()] {
        assert!(!logs.contains(secret), "the log holds {secret}: {logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_what_does_not_fit_and_an_unsupported_class_is_negotiated_away() {
    let server = InProc::start("", &FUSED, registry()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let study_dir = phantom(dir.path());
    let mut s = settings(dir.path(), None, 3600);
    s.max_study_instances = 5;
    s.scp.read_timeout = Duration::from_secs(1);
    let node = Node::start(&server, s).await;

    // A connection that never sends is closed after the read timeout.
    {
        use tokio::io::AsyncReadExt;
        let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", node.port))
            .await
            .expect("connect");
        let mut buf = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut buf)).await;
        assert!(closed.is_ok(), "the silent connection stayed open");
    }

    // Five instances of a study, then A700.
    let sent = storescu(node.port, std::slice::from_ref(&study_dir)).await;
    let text =
        String::from_utf8_lossy(&sent.stdout).to_string() + &String::from_utf8_lossy(&sent.stderr);
    assert!(text.contains("Refused: OutOfResources"), "{text}");
    let studies: Vec<PathBuf> = std::fs::read_dir(dir.path().join("spool/studies"))
        .expect("studies")
        .flatten()
        .map(|d| d.path())
        .collect();
    let kept: usize = studies
        .iter()
        .map(|d| {
            std::fs::read_dir(d)
                .expect("study")
                .flatten()
                .filter(|f| f.path().extension().is_some_and(|e| e == "dcm"))
                .count()
        })
        .sum();
    assert_eq!(kept, 5);
    assert!(
        studies[0].join(osteo_node::spool::INCOMPLETE).exists(),
        "the study is marked: it will not be graded"
    );

    // A CT file relabelled as an Encapsulated PDF: no presentation context is accepted for it.
    let one = std::fs::read_dir(&study_dir)
        .expect("study")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "dcm"))
        .expect("a file");
    let pdf = dir.path().join("pdf.dcm");
    std::fs::copy(&one, &pdf).expect("copy");
    let mut relabel = Command::new("dcmodify");
    relabel
        .args(["-nb", "-m", "SOPClassUID=1.2.840.10008.5.1.4.1.1.104.1"])
        .arg(&pdf);
    assert!(output(relabel).await.status.success());
    let refused = storescu(node.port, &[pdf]).await;
    let text = String::from_utf8_lossy(&refused.stdout).to_string()
        + &String::from_utf8_lossy(&refused.stderr);
    assert!(
        text.contains("No presentation context")
            || text.contains("no presentation context")
            || text.contains("No Acceptable Presentation Contexts"),
        "{text}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_can_be_stored_back_with_stow_rs() {
    use osteo_test_support::orthanc::Orthanc;
    let orthanc = Orthanc::start().expect("Orthanc");
    let server = InProc::start("", &FUSED, registry()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = settings(dir.path(), None, 1);
    s.stow = Some(osteo_node::Stow(orthanc.client().expect("client")));
    let node = Node::start(&server, s).await;
    let sent = storescu(node.port, &[phantom(dir.path())]).await;
    assert!(sent.status.success());
    let rows = rows(&dir.path().join("results.csv"), 1).await;
    assert_eq!(rows[0][1], "classified");
    let series = orthanc
        .client()
        .expect("client")
        .search_series(&rows[0][0], &[], &["00080060"])
        .await
        .expect("series");
    let modalities: Vec<&str> = series
        .iter()
        .filter_map(|s| osteo_dicomweb::attribute(s, "00080060"))
        .collect();
    assert!(
        modalities.contains(&"SR"),
        "only the results went to Orthanc: {modalities:?}"
    );
    assert_eq!(modalities.len(), 2, "{modalities:?}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pynetdicom_sends_a_study_and_receives_the_results() {
    let server = InProc::start("", &FUSED, registry()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let scp_port = free_port();
    let mut s = settings(dir.path(), None, 1);
    s.send_to = Some(Destination {
        ae_title: "PYSCP".into(),
        address: format!("127.0.0.1:{scp_port}"),
        tls: None,
    });
    s.scp.allow_ae = vec!["PYNETDICOM".into()];
    let node = Node::start(&server, s).await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut peer = Command::new(root.join(".cache/venv/bin/python"));
    peer.arg(root.join("tests/python/dimse_peer.py"))
        .arg(node.port.to_string())
        .arg(phantom(dir.path()))
        .arg(scp_port.to_string());
    let out = output(peer).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["echo"], 0, "{v}");
    assert_eq!(
        v["statuses"],
        serde_json::json!([0]),
        "every C-STORE succeeded: {v}"
    );
    assert_eq!(v["received"].as_array().map(Vec::len), Some(2), "{v}");
    assert!(
        v["received"]
            .as_array()
            .expect("list")
            .contains(&serde_json::json!("SR")),
        "{v}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dicom_tls_in_with_client_certificates_and_out_to_a_tls_pacs() {
    use crate::common::pki::Ca;
    let server = InProc::start("", &FUSED, registry()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let node_ca = Ca::new(dir.path(), "node");
    let clients = Ca::new(dir.path(), "modalities");
    let cert = node_ca.server();
    let modality = clients.client("modality");
    // The PACS speaks DICOM TLS too, and wants the node's client certificate.
    let pacs_ca = Ca::new(dir.path(), "pacs");
    let pacs_cert = pacs_ca.server();
    let node_identity = clients.client("osteo-node");
    let pacs = StoreScp::start_with(
        free_port(),
        &[
            "+tls".into(),
            pacs_cert.key.clone().into(),
            pacs_cert.cert.clone().into(),
            "+cf".into(),
            clients.cert.clone().into(),
        ],
    );
    let (port, tls_port) = (free_port(), free_port());
    let log = dir.path().join("node.log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_osteo"));
    command
        .args(["receive", "--ae-title", "OSTEO", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--tls-listen")
        .arg(format!("127.0.0.1:{tls_port}"))
        .arg("--tls-cert")
        .arg(&cert.cert)
        .arg("--tls-key")
        .arg(&cert.key)
        .arg("--tls-client-ca")
        .arg(&clients.cert)
        .args([
            "--tls-client-auth",
            "required",
            "--server",
            &server.url,
            "--spool",
        ])
        .arg(dir.path().join("spool"))
        .arg("--results")
        .arg(dir.path().join("results.csv"))
        .args(["--send-to", &format!("PACS@127.0.0.1:{}", pacs.port)])
        .arg("--send-tls-ca")
        .arg(&pacs_ca.cert)
        .arg("--send-tls-cert")
        .arg(&node_identity.cert)
        .arg("--send-tls-key")
        .arg(&node_identity.key)
        .args(["--study-idle-s", "1", "--allow-ae", "STORESCU"])
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::fs::File::create(dir.path().join("node.err")).expect("log"));
    let mut node = command.spawn().expect("osteo receive");
    listening(tls_port).await;
    let study_dir = phantom(dir.path());
    let tls_store = |identity: bool| {
        let mut c = Command::new("storescu");
        c.args(["+sd", "-pw"]);
        if identity {
            c.arg("+tls").arg(&modality.key).arg(&modality.cert);
        } else {
            c.arg("+tla");
        }
        c.arg("+cf")
            .arg(&node_ca.cert)
            .args(["-aec", "OSTEO", "-aet", "STORESCU", "127.0.0.1"])
            .arg(tls_port.to_string())
            .arg(&study_dir);
        c
    };
    let anonymous = output(tls_store(false)).await;
    assert!(
        !anonymous.status.success(),
        "a peer without a client certificate is refused"
    );
    let sent = output(tls_store(true)).await;
    assert!(
        sent.status.success(),
        "{}{}",
        String::from_utf8_lossy(&sent.stdout),
        String::from_utf8_lossy(&sent.stderr)
    );
    // The results are acknowledged by the TLS PACS before the row is written.
    let rows = rows(&dir.path().join("results.csv"), 1).await;
    assert_eq!(rows[0][1], "classified");
    assert_eq!(pacs.received().len(), 2, "{:?}", pacs.received());
    node.kill().expect("kill");
    let _ = node.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_down_for_longer_than_the_clients_retries_grades_the_study_once_it_is_back() {
    use osteo_client::retry::{ATTEMPTS, BACKOFF, MAX_BACKOFF};
    let config = "[server]\ndrain_delay_s = 0\n";
    let server = InProc::start(config, &FUSED, registry()).await;
    let address: std::net::SocketAddr = server
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("address");
    let dir = tempfile::tempdir().expect("tempdir");
    let pacs = StoreScp::start(free_port());
    let node = Node::start(&server, settings(dir.path(), Some(pacs.port), 1)).await;
    server.stop().await.expect("stop");

    let sent = storescu(node.port, &[phantom(dir.path())]).await;
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    // Longer than every retry of one call could wait (the study completes after 1 s).
    let retries: Duration = (1..ATTEMPTS)
        .map(|r| BACKOFF.saturating_mul(1 << (r - 1)).min(MAX_BACKOFF))
        .sum();
    tokio::time::sleep(retries + Duration::from_secs(4)).await;
    let results = dir.path().join("results.csv");
    assert!(
        osteo_client::screen::earlier(&results)
            .unwrap_or_default()
            .is_empty(),
        "no row while the server is down"
    );
    let spool = dir.path().join("spool");
    assert_eq!(left(&spool), 1, "the study waits in the spool");

    let server = InProc::start_at(address, config, &FUSED, registry()).await;
    let rows = rows(&results, 1).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][1], "classified", "{rows:?}");
    emptied(&spool).await;
    assert_eq!(pacs.received().len(), 2, "{:?}", pacs.received());
    node.stop().await;
    server.stop().await.expect("stop");
}

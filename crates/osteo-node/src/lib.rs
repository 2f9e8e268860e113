//! OsteoServe's DICOM node (`osteo receive`): a storage SCP that PACS, routers and scanners
//! push CT studies to over DIMSE, a client of `osteo serve` that grades each study once it is
//! complete (the screening job's grading code: one GradeStudy call, clinical variables from
//! the header, the model's quality gate first), and a storage SCU that sends the SR and the
//! Grad-CAM secondary capture back. Everything acknowledged is on disk first (the spool), so a
//! restart finishes every acknowledged study and resends unsent results.

pub mod dimse;
pub mod error;
pub mod journal;
pub mod scp;
pub mod scu;
pub mod spool;
pub mod studies;

pub use error::NodeError;
pub use scp::{ScpSettings, TlsConfig};
pub use scu::Destination;

use osteo_client::screen::{Grader, Row};
use spool::Spool;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use studies::Tracker;
use tokio::net::TcpListener;

/// A node's configuration.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// The SCP's settings.
    pub scp: ScpSettings,
    /// The spool directory.
    pub spool: PathBuf,
    /// The spool's byte budget.
    pub spool_bytes: u64,
    /// The spool journal's bytes (two segments; 0: each instance's file is synced instead).
    pub journal_bytes: u64,
    /// The results CSV.
    pub results: PathBuf,
    /// Where results are sent by C-STORE (none = not by DIMSE).
    pub send_to: Option<Destination>,
    /// Where results are stored by STOW-RS (none = not by DICOMweb).
    pub stow: Option<Stow>,
    /// Seconds without a new instance after which a study is complete.
    pub study_idle: Duration,
    /// Most instances in one study.
    pub max_study_instances: usize,
    /// Most bytes in one study (what grading holds in memory).
    pub max_study_bytes: u64,
    /// Studies graded at once.
    pub concurrency: usize,
    /// Where each graded study's FHIR R4 Bundle is written once its results are acknowledged
    /// (one file per study, named by a hash of its UID), if anywhere.
    pub fhir_dir: Option<PathBuf>,
}

/// A DICOMweb service the results are stored to (STOW-RS).
#[derive(Clone)]
pub struct Stow(pub osteo_dicomweb::DicomWeb);

impl std::fmt::Debug for Stow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stow")
    }
}

/// The results CSV, appended one row per study (a study already in it is not written twice).
struct Results {
    path: PathBuf,
    written: Mutex<HashSet<String>>,
}

impl Results {
    fn open(path: PathBuf) -> Result<Self, NodeError> {
        // A file of an earlier version gets the provenance columns (its rows kept).
        osteo_client::screen::upgrade(&path)?;
        let rows = if path.exists() {
            osteo_client::screen::earlier(&path)?
        } else {
            Vec::new()
        };
        if !path.exists() {
            std::fs::write(&path, format!("{}\n", Row::COLUMNS.join(",")))
                .map_err(|e| NodeError::io(format!("--results {}", path.display()), e))?;
        }
        Ok(Self {
            written: Mutex::new(
                rows.into_iter()
                    .filter_map(|r| r.into_iter().next())
                    .collect(),
            ),
            path,
        })
    }

    /// Appends a row (an already written study is skipped) and syncs the file.
    /// The study UID of a CSV record (its first field).
    fn uid(record: &[u8]) -> String {
        record
            .split(|b| *b == b',')
            .next()
            .map(|u| String::from_utf8_lossy(u).trim_matches('"').to_string())
            .unwrap_or_default()
    }

    fn append(&self, record: &[u8]) -> Result<(), NodeError> {
        use std::io::Write;
        let uid = Self::uid(record);
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if !written.insert(uid) {
            return Ok(());
        }
        let what = || format!("--results {}", self.path.display());
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| NodeError::io(what(), e))?;
        f.write_all(record)
            .and_then(|()| f.sync_data())
            .map_err(|e| NodeError::io(what(), e))
    }
}

/// What the node's tasks share.
struct Node {
    settings: NodeSettings,
    spool: Arc<Spool>,
    tracker: Arc<Tracker>,
    grader: Grader,
    results: Results,
    /// Studies whose results wait to be sent.
    outbox: tokio::sync::mpsc::UnboundedSender<String>,
}

/// Runs the node on `listener` (and DICOM TLS on `tls_listener`, which needs `scp.tls`) until
/// `shutdown` completes: studies left by an earlier run are taken up first (spooled ones
/// complete after the idle time, graded ones are sent).
pub async fn run(
    listener: TcpListener,
    tls_listener: Option<TcpListener>,
    settings: NodeSettings,
    grader: Grader,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), NodeError> {
    if settings.scp.ae_title.is_empty() || settings.scp.ae_title.len() > 16 {
        return Err(NodeError::Config(
            "--ae-title must be 1 to 16 characters".into(),
        ));
    }
    let spool = Arc::new(Spool::open(
        &settings.spool,
        settings.spool_bytes,
        settings.journal_bytes,
    )?);
    let tracker = Arc::new(Tracker::new(
        settings.study_idle,
        settings.max_study_instances,
        settings.max_study_bytes,
    ));
    let (outbox_tx, mut outbox_rx) = tokio::sync::mpsc::unbounded_channel();
    let node = Arc::new(Node {
        results: Results::open(settings.results.clone())?,
        grader: grader.with_fhir(settings.fhir_dir.is_some()),
        settings,
        spool: spool.clone(),
        tracker: tracker.clone(),
        outbox: outbox_tx,
    });
    // Taken up from an earlier run.
    for (study, files) in spool.studies() {
        let instances: Vec<u64> = files
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .collect();
        tracker.restore(&study, instances.len(), instances.iter().sum());
    }
    let graded: HashSet<String> = spool.outbox().into_iter().collect();
    let (grade_tx, grade_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for (study, _) in spool.grading() {
        if graded.contains(&study) {
            // Graded before the crash: only its instances are left to delete.
            let _ = spool.remove(&spool.grading_dir(&study));
        } else {
            let _ = grade_tx.send(study);
        }
    }
    for study in graded {
        let _ = node.outbox.send(study);
    }
    tracing::info!(
        ae_title = %scp::shown_ae(&node.settings.scp.ae_title),
        open = tracker.len(),
        spool_bytes = spool.used(),
        "DICOM node listening"
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let scp = Arc::new(scp::Scp::new(
        node.settings.scp.clone(),
        spool.clone(),
        tracker.clone(),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(scp.clone().serve(listener, false, stop_rx.clone()));
    if let Some(l) = tls_listener {
        if node.settings.scp.tls.is_none() {
            return Err(NodeError::Config(
                "a DICOM TLS listener needs a certificate and key".into(),
            ));
        }
        tasks.spawn(scp.serve(l, true, stop_rx.clone()));
    }
    // Completion: idle studies move to grading.
    {
        let node = node.clone();
        let grade_tx = grade_tx.clone();
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            let tick = (node.settings.study_idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(tick) => {}
                    _ = stop.changed() => return,
                }
                for study in node.tracker.complete(Instant::now()) {
                    let spool = node.spool.clone();
                    let claimed = {
                        let study = study.clone();
                        tokio::task::spawn_blocking(move || spool.claim(&study))
                            .await
                            .unwrap_or_else(|e| Err(NodeError::Config(format!("claim: {e}"))))
                    };
                    match claimed {
                        Ok(true) => {
                            let _ = grade_tx.send(study);
                        }
                        Ok(false) => {
                            // An earlier part is still being graded: wait another idle time.
                            let (instances, bytes) = node.spool.held(&study);
                            node.tracker.restore(&study, instances, bytes);
                        }
                        Err(e) => tracing::error!(study = %study, error = %e, "cannot take up a complete study"),
                    }
                }
            }
        });
    }
    // Grading, `concurrency` studies at once.
    {
        let node = node.clone();
        let permits = Arc::new(tokio::sync::Semaphore::new(
            node.settings.concurrency.max(1),
        ));
        let grade_rx = Arc::new(tokio::sync::Mutex::new(grade_rx));
        tasks.spawn(async move {
            loop {
                let Some(study) = grade_rx.lock().await.recv().await else {
                    return;
                };
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let node = node.clone();
                tokio::spawn(async move {
                    node.grade(&study).await;
                    drop(permit);
                });
            }
        });
    }
    // Sending.
    {
        let node = node.clone();
        tasks.spawn(async move {
            while let Some(study) = outbox_rx.recv().await {
                node.send(&study).await;
            }
        });
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    tasks.abort_all();
    tracing::info!("DICOM node stopped; the spool keeps what is not finished");
    Ok(())
}

impl Node {
    /// Grades one complete study and writes its outbox (row and results); its instances are
    /// deleted once the outbox is on disk. A server that stays unreachable or busy through the
    /// client's retries leaves the study in the spool, graded again after a pause; only an
    /// answer that will not change (a refusal, bad data) ends it with an `error` row.
    async fn grade(&self, study: &str) {
        let dir = self.spool.grading_dir(study);
        let mut pause = Duration::from_secs(5);
        let (row, results, fhir) = loop {
            let started = Instant::now();
            match self.graded(&dir).await {
                Ok((_, g)) => {
                    tracing::info!(
                        study = %study,
                        status = g.row.status,
                        results = g.results.len(),
                        ms = started.elapsed().as_secs_f64() * 1e3,
                        "study graded"
                    );
                    break (g.row, g.results, g.fhir);
                }
                Err((_, NodeError::Client(e))) if transient(&e) => {
                    tracing::warn!(study = %study, error = %e, wait_s = pause.as_secs(), "the server did not grade the study; it stays in the spool and is graded again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(300));
                }
                Err((uid, e)) => {
                    tracing::warn!(study = %study, error = %e, "study ended in error");
                    let reason = osteo_core::error::chain(&e).replace('\n', " ");
                    let row = Row {
                        provenance: self.grader.provenance(),
                        ..Row::ended(&uid, "error", reason)
                    };
                    break (row, Vec::new(), None);
                }
            }
        };
        match self
            .spool
            .write_outbox(study, &row.record(), &results, fhir.as_deref())
        {
            Ok(()) => {
                let _ = self.spool.remove(&dir);
                let _ = self.outbox.send(study.to_string());
            }
            Err(e) => {
                tracing::error!(study = %study, error = %e, "cannot write a study's results; it stays in the spool")
            }
        }
    }

    /// The study's UID and its grading.
    async fn graded(
        &self,
        dir: &std::path::Path,
    ) -> Result<(String, osteo_client::screen::Graded), (String, NodeError)> {
        let mut files = Vec::new();
        let mut listed = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        listed.sort();
        if dir.join(spool::INCOMPLETE).exists() {
            let uid = listed
                .first()
                .and_then(|p| osteo_dicom::instance_identity(p, &scp::spooled_limits()).ok())
                .map(|i| i.study_uid)
                .unwrap_or_default();
            return Err((
                uid,
                NodeError::Incomplete(format!(
                    "instances were refused because the study reached --max-study-instances ({}) or --max-study-mib ({}); the study is not graded",
                    self.settings.max_study_instances,
                    self.settings.max_study_bytes >> 20
                )),
            ));
        }
        for p in &listed {
            match tokio::fs::read(p).await {
                Ok(b) => files.push(bytes::Bytes::from(b)),
                Err(e) => {
                    return Err((
                        String::new(),
                        NodeError::io("cannot read a spooled instance", e),
                    ));
                }
            }
        }
        // The study's UID from the first instance, already in memory (its first 64 KiB).
        let uid = files
            .first()
            .and_then(|f| osteo_dicom::instance_identity_in(f, &scp::spooled_limits()).ok())
            .map(|i| i.study_uid)
            .unwrap_or_default();
        match self.grader.grade(&uid, Arc::new(files)).await {
            Ok(g) => Ok((uid, g)),
            Err(e) => Err((uid, e.into())),
        }
    }

    /// Sends a study's results until the destination acknowledges them (with backoff), then
    /// writes its row and deletes its outbox.
    async fn send(&self, study: &str) {
        let dir = self.spool.outbox_dir(study);
        let mut results = Vec::new();
        let mut row = Vec::new();
        let mut bundle = None;
        let mut listed: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        listed.sort();
        for p in &listed {
            let Ok(bytes) = std::fs::read(p) else {
                continue;
            };
            if p.extension().is_some_and(|e| e == "dcm") {
                results.push(bytes);
            } else if p.file_name().is_some_and(|n| n == "row.csv") {
                row = bytes;
            } else if p.file_name().is_some_and(|n| n == spool::FHIR_BUNDLE) {
                bundle = String::from_utf8(bytes).ok();
            }
        }
        let destinations = self.settings.send_to.is_some() || self.settings.stow.is_some();
        if !results.is_empty() && destinations {
            let mut attempt = 0u32;
            while let Err(e) = self.deliver(study, &results).await {
                attempt += 1;
                let wait = Duration::from_secs(1 << attempt.min(8)).min(Duration::from_secs(300));
                tracing::warn!(study = %study, attempt, error = %e, wait_s = wait.as_secs(), "sending results failed; they stay in the spool and are sent again");
                tokio::time::sleep(wait).await;
            }
        }
        if let (Some(fhir_dir), Some(bundle)) = (&self.settings.fhir_dir, &bundle) {
            let uid = Results::uid(&row);
            if let Err(e) = osteo_client::screen::write_fhir(fhir_dir, &uid, bundle) {
                tracing::error!(study = %study, error = %e, "cannot write a study's FHIR Bundle; it stays in the spool");
                return;
            }
        }
        if let Err(e) = self.results.append(&row) {
            tracing::error!(error = %e, "cannot write the results CSV");
            return;
        }
        let _ = self.spool.remove(&dir);
    }
}

impl Node {
    /// Sends a study's results to every destination (C-STORE, STOW-RS); both are idempotent
    /// (the same SOP instances), so a retry after a partial failure sends all again.
    async fn deliver(&self, study: &str, results: &[Vec<u8>]) -> Result<(), NodeError> {
        let started = Instant::now();
        if let Some(to) = &self.settings.send_to {
            scu::store(
                to,
                &self.settings.scp.ae_title,
                results,
                Duration::from_secs(30),
            )
            .await?;
        }
        if let Some(Stow(web)) = &self.settings.stow {
            osteo_client::retry::retry(osteo_dicomweb::DicomWebError::is_transient, || {
                web.store(results)
            })
            .await
            .map_err(|e| NodeError::Association(format!("STOW-RS: {e}")))?;
        }
        tracing::info!(study = %study, results = results.len(), ms = started.elapsed().as_secs_f64() * 1e3, "results sent");
        Ok(())
    }
}

/// Whether grading may succeed later: the server unreachable, draining or busy.
fn transient(e: &osteo_client::ClientError) -> bool {
    match e {
        osteo_client::ClientError::Unavailable(_) => true,
        osteo_client::ClientError::Status(s) => osteo_client::retry::transient_status(s),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_or_busy_server_is_transient_and_a_refusal_is_not() {
        use osteo_client::ClientError;
        assert!(transient(&ClientError::Unavailable(
            "connection refused".into()
        )));
        assert!(transient(&tonic::Status::unavailable("draining").into()));
        assert!(transient(&tonic::Status::resource_exhausted("busy").into()));
        assert!(!transient(
            &tonic::Status::invalid_argument("bad DICOM").into()
        ));
        assert!(!transient(&ClientError::Answer("no SR".into())));
    }
}

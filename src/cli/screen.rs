//! `osteo screen`: opportunistic screening straight from a PACS. Studies are found with QIDO-RS
//! (or listed), retrieved with WADO-RS, graded by an OsteoServe server (clinical variables from
//! the header, the model's quality gate first) and the SR and the Grad-CAM secondary capture are
//! stored back with STOW-RS; one row per study goes to the results CSV.

use super::client::{self, Endpoint, grade_name};
use anyhow::{Context, anyhow};
use clap::{ArgGroup, Args};
use indicatif::{ProgressBar, ProgressStyle};
use osteo_dicomweb::{DicomWeb, DicomWebError, Limits, TlsOptions, attribute, valid_uid};
use osteo_proto::v1 as pb;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Attempts of a call that fails transiently.
const ATTEMPTS: u32 = 4;
/// The first retry's wait; each further retry waits twice as long.
const BACKOFF: Duration = Duration::from_millis(500);
/// Modality (0008,0060) in DICOM JSON.
const MODALITY: &str = "00080060";
/// SeriesDescription (0008,103E) in DICOM JSON.
const SERIES_DESCRIPTION: &str = "0008103E";
/// SeriesInstanceUID (0020,000E) in DICOM JSON.
const SERIES_UID: &str = "0020000E";
/// The results CSV's columns.
const COLUMNS: [&str; 7] = [
    "study_uid",
    "status",
    "grade",
    "p_normal",
    "p_osteopenia",
    "p_osteoporosis",
    "reason",
];

/// Arguments of `osteo screen`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("studies").required(true).args(["study", "worklist", "query"])))]
pub struct ScreenArgs {
    /// DICOMweb service root of the PACS, e.g. http://pacs:8042/dicom-web.
    #[arg(long, value_name = "URL")]
    dicomweb: String,
    /// Bearer token for the DICOMweb service (or the OSTEO_DICOMWEB_TOKEN variable).
    #[arg(
        long,
        env = "OSTEO_DICOMWEB_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    dicomweb_token: Option<String>,
    /// PEM CA bundle that signs the PACS's certificate (https:// only; default: the system's
    /// trusted roots).
    #[arg(long, value_name = "FILE")]
    dicomweb_ca_cert: Option<PathBuf>,
    /// PEM client certificate chain for a PACS that authenticates clients by certificate (with
    /// --dicomweb-client-key).
    #[arg(long, value_name = "FILE", requires = "dicomweb_client_key")]
    dicomweb_client_cert: Option<PathBuf>,
    /// PEM private key of --dicomweb-client-cert.
    #[arg(long, value_name = "FILE", requires = "dicomweb_client_cert")]
    dicomweb_client_key: Option<PathBuf>,
    #[command(flatten)]
    endpoint: Endpoint,
    /// A study to screen (StudyInstanceUID); repeat for several.
    #[arg(long, value_name = "UID")]
    study: Vec<String>,
    /// A CSV file with a `study_uid` column.
    #[arg(long, value_name = "CSV")]
    worklist: Option<PathBuf>,
    /// A QIDO-RS search key, e.g. ModalitiesInStudy=CT or StudyDate=20240101-20241231; repeat
    /// for several.
    #[arg(long, value_name = "KEY=VALUE")]
    query: Vec<String>,
    /// The results CSV (study_uid,status,grade,p_normal,p_osteopenia,p_osteoporosis,reason);
    /// rows already there with a final status are kept and their studies not screened again.
    #[arg(long, value_name = "CSV")]
    results: PathBuf,
    /// Most bytes of one study's CT series retrieved from the PACS (MiB); a larger study ends
    /// in error. The default is what the server accepts by default (store.max_upload_bytes).
    /// Memory use is up to about twice --concurrency times this.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=65536))]
    max_study_mib: u64,
    /// Studies in flight at once (retrieval, upload, grading and store overlap).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    /// This worker's share of the studies, K/N with K from 0: N workers split one worklist or
    /// query result deterministically and disjointly.
    #[arg(long, value_name = "K/N")]
    shard: Option<String>,
}

impl ScreenArgs {
    /// The TLS options of the PACS connection from the files named on the command line.
    fn pacs_tls(&self) -> anyhow::Result<TlsOptions> {
        let read = client::read_flag_file;
        Ok(TlsOptions {
            ca_pem: self
                .dicomweb_ca_cert
                .as_deref()
                .map(|p| read("--dicomweb-ca-cert", p))
                .transpose()?,
            identity: match (&self.dicomweb_client_cert, &self.dicomweb_client_key) {
                (Some(cert), Some(key)) => Some((
                    read("--dicomweb-client-cert", cert)?,
                    read("--dicomweb-client-key", key)?,
                )),
                _ => None,
            },
        })
    }
}

/// How one study ended.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    study_uid: String,
    status: &'static str,
    grade: String,
    probabilities: Option<[f32; 3]>,
    reason: String,
}

impl Row {
    fn ended(study_uid: &str, status: &'static str, reason: impl Into<String>) -> Row {
        Row {
            study_uid: study_uid.to_string(),
            status,
            grade: String::new(),
            probabilities: None,
            reason: reason.into(),
        }
    }

    fn record(&self) -> Vec<String> {
        let p = |i: usize| {
            self.probabilities
                .map(|p| format!("{:.6}", p[i]))
                .unwrap_or_default()
        };
        vec![
            self.study_uid.clone(),
            self.status.to_string(),
            self.grade.clone(),
            p(0),
            p(1),
            p(2),
            self.reason.clone(),
        ]
    }
}

/// The error `osteo screen` ends with when a study ended in error (exit code 1).
#[derive(Debug)]
pub struct StudiesFailed(pub usize);

impl std::fmt::Display for StudiesFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} study(ies) ended in error; see the results CSV",
            self.0
        )
    }
}

impl std::error::Error for StudiesFailed {}

/// `K/N` as (K, N).
fn shard(text: &str) -> anyhow::Result<(u64, u64)> {
    let bad = || anyhow!("--shard {text}: expected K/N with 0 <= K < N, e.g. 0/4");
    let (k, n) = text.split_once('/').ok_or_else(bad)?;
    let (k, n): (u64, u64) = (
        k.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if n == 0 || k >= n {
        return Err(bad());
    }
    Ok((k, n))
}

/// FNV-1a of a UID: the shard a study belongs to does not depend on list order.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The worklist's study UIDs.
fn worklist(path: &Path) -> anyhow::Result<Vec<String>> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("--worklist {}", path.display()))?;
    let column = reader
        .headers()?
        .iter()
        .position(|h| h.trim() == "study_uid")
        .ok_or_else(|| anyhow!("--worklist {}: no study_uid column", path.display()))?;
    let mut uids = Vec::new();
    for record in reader.records() {
        let record = record.with_context(|| format!("--worklist {}", path.display()))?;
        uids.push(record.get(column).unwrap_or_default().trim().to_string());
        if uids.len() > 10_000_000 {
            anyhow::bail!("--worklist {}: more than 10,000,000 rows", path.display());
        }
    }
    Ok(uids)
}

/// Rows of an earlier run with a final status, by study.
fn earlier(path: &Path) -> anyhow::Result<Vec<Vec<String>>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    // Flexible: a run killed mid-write may have left a partial last line; it is screened again.
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .with_context(|| format!("--results {}", path.display()))?;
    if reader.headers()?.iter().collect::<Vec<_>>() != COLUMNS {
        anyhow::bail!(
            "--results {}: not a results file of osteo screen (columns differ)",
            path.display()
        );
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let Ok(record) = record else { continue };
        if record.len() == COLUMNS.len()
            && valid_uid(&record[0])
            && matches!(record.get(1), Some("classified" | "refused" | "skipped"))
        {
            rows.push(record.iter().map(str::to_string).collect());
        }
    }
    Ok(rows)
}

/// Whether a gRPC failure may pass on retry.
fn transient_status(s: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        s.code(),
        Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded | Code::Aborted
    )
}

/// Runs `call` up to [`ATTEMPTS`] times while it fails transiently, backing off between tries.
async fn retry<T, E, F, Fut>(transient: impl Fn(&E) -> bool, mut call: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut wait = BACKOFF;
    for _ in 1..ATTEMPTS {
        match call().await {
            Err(e) if transient(&e) => {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            other => return other,
        }
    }
    call().await
}

/// What every study's screening needs.
/// Where screening time goes: the stages, summed over studies.
const STAGES: [&str; 5] = [
    "PACS search",
    "PACS retrieval",
    "upload + ingest + gate",
    "grading + DICOM outputs",
    "PACS store",
];

struct Job {
    pacs: DicomWeb,
    server: client::Client,
    model: String,
    backend: String,
    description: String,
    /// Most bytes retrieved for one study.
    max_study_bytes: u64,
    /// Nanoseconds spent in each of [`STAGES`], over all studies.
    spent: [AtomicU64; 5],
}

impl Job {
    /// Runs `f`, adding its time to stage `i`.
    async fn timed<T>(&self, i: usize, f: impl std::future::Future<Output = T>) -> T {
        let start = Instant::now();
        let out = f.await;
        self.spent[i].fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        out
    }

    /// Screens one study.
    async fn screen(&self, uid: &str) -> Row {
        match self.run(uid).await {
            Ok(row) => row,
            Err(e) => Row::ended(uid, "error", format!("{e:#}").replace('\n', " ")),
        }
    }

    async fn run(&self, uid: &str) -> anyhow::Result<Row> {
        let web = DicomWebError::is_transient;
        // One series search: an SR series of this model version (by its description, compared
        // here, not in the query: PACS differ in how they match text) means already screened;
        // otherwise only the CT series go to the server (not earlier results or other
        // modalities).
        let series = self
            .timed(
                0,
                retry(web, || {
                    self.pacs
                        .search_series(uid, &[], &[MODALITY, SERIES_DESCRIPTION])
                }),
            )
            .await?;
        let modality = |s: &serde_json::Value, m: &str| attribute(s, MODALITY) == Some(m);
        if series.iter().any(|s| {
            modality(s, "SR") && attribute(s, SERIES_DESCRIPTION) == Some(self.description.as_str())
        }) {
            return Ok(Row::ended(
                uid,
                "skipped",
                "the PACS already holds an SR of this model version",
            ));
        }
        let series: Vec<&serde_json::Value> = series.iter().filter(|s| modality(s, "CT")).collect();
        // The study's CT series together stay within --max-study-mib.
        let mut files: Vec<Vec<u8>> = Vec::new();
        let mut left = self.max_study_bytes;
        for s in &series {
            let series_uid = attribute(s, SERIES_UID)
                .ok_or_else(|| anyhow!("a CT series of the study has no SeriesInstanceUID"))?;
            let got = self
                .timed(
                    1,
                    retry(web, || self.pacs.retrieve_series(uid, series_uid, left)),
                )
                .await
                .map_err(|e| match e {
                    DicomWebError::TooLarge { .. } => anyhow!(
                        "the study's CT series exceed --max-study-mib ({} MiB)",
                        self.max_study_bytes >> 20
                    ),
                    e => e.into(),
                })?;
            left = left.saturating_sub(got.iter().map(|f| f.len() as u64).sum());
            files.extend(got);
        }
        if files.is_empty() {
            return Ok(Row::ended(
                uid,
                "refused",
                "the PACS holds no CT series of the study",
            ));
        }
        let bytes: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
        let mut server = self.server.clone();
        let summary = self
            .timed(
                2,
                retry(transient_status, || {
                    let mut c = server.clone();
                    let b = bytes.clone();
                    async move { client::upload_bytes(&mut c, &b).await }
                }),
            )
            .await
            .map_err(client::status)?;
        drop(files);
        let handle = summary.study.clone();
        let row = self.grade(&mut server, uid, &summary).await;
        // The upload is not needed any more, whatever happened.
        let _ = server
            .delete_study(pb::DeleteStudyRequest { study: handle })
            .await;
        row
    }

    async fn grade(
        &self,
        server: &mut client::Client,
        uid: &str,
        summary: &pb::StudySummary,
    ) -> anyhow::Result<Row> {
        // The model's quality gate, as the upload summary reports it.
        let gate = summary
            .quality
            .iter()
            .find(|q| self.model.is_empty() || q.model == self.model);
        if let Some(q) = gate.filter(|q| !q.passed) {
            let reason: Vec<&str> = q
                .checks
                .iter()
                .filter(|c| !c.passed)
                .map(|c| c.finding.as_str())
                .collect();
            return Ok(Row::ended(uid, "refused", reason.join("; ")));
        }
        let request = pb::ExplainRequest {
            study: Some(pb::StudyRef {
                source: Some(pb::study_ref::Source::Study(summary.study.clone())),
            }),
            model: self.model.clone(),
            backend: self.backend.clone(),
            clinical_from_dicom: true,
            dicom_outputs: true,
            ..Default::default()
        };
        let explained = self
            .timed(
                3,
                retry(transient_status, || {
                    let mut c = server.clone();
                    let r = request.clone();
                    async move { c.explain(r).await }
                }),
            )
            .await;
        let explained = match explained {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                return Ok(Row::ended(uid, "refused", s.message()));
            }
            Err(s) => return Err(client::status(s)),
        };
        let c = explained.classification.clone().unwrap_or_default();
        let mut results = vec![c.dicom_sr.clone()];
        if !explained.dicom_secondary_capture.is_empty() {
            results.push(explained.dicom_secondary_capture.clone());
        }
        if results[0].is_empty() {
            anyhow::bail!("the server returned no SR");
        }
        self.timed(
            4,
            retry(DicomWebError::is_transient, || self.pacs.store(&results)),
        )
        .await?;
        let p = c.probabilities.unwrap_or_default();
        Ok(Row {
            study_uid: uid.to_string(),
            status: "classified",
            grade: grade_name(c.grade).to_string(),
            probabilities: Some([p.normal, p.osteopenia, p.osteoporosis]),
            reason: String::new(),
        })
    }
}

/// Runs `osteo screen`.
pub fn run(args: ScreenArgs) -> anyhow::Result<()> {
    let shard = args.shard.as_deref().map(shard).transpose()?;
    let pacs = DicomWeb::new(
        &args.dicomweb,
        args.dicomweb_token.clone(),
        &args.pacs_tls()?,
        Limits::default(),
    )
    .map_err(|e| anyhow!("--dicomweb: {e}"))?;
    if args.dicomweb_token.is_some() && args.dicomweb.starts_with("http://") {
        eprintln!("warning: the DICOMweb token is sent unencrypted over http://");
    }
    let query: Vec<(String, String)> = args
        .query
        .iter()
        .map(|q| {
            q.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| anyhow!("--query {q}: expected KEY=VALUE"))
        })
        .collect::<anyhow::Result<_>>()?;
    let kept = earlier(&args.results)?;
    client::runtime()?.block_on(async {
        let mut server = client::connect(&args.endpoint.server, &args.endpoint.credentials).await?;
        let models = server
            .list_models(pb::ListModelsRequest {})
            .await
            .map_err(client::status)?
            .into_inner();
        let wanted = match args.endpoint.model() {
            m if m.is_empty() => models.default_model.clone(),
            m => m,
        };
        let model = models
            .models
            .iter()
            .find(|m| m.name == wanted)
            .ok_or_else(|| anyhow!("NOT_FOUND: the server serves no model {wanted}"))?;
        // The studies: listed, from the worklist, or found by QIDO-RS; then this shard's.
        let mut uids = if !args.study.is_empty() {
            args.study.clone()
        } else if let Some(path) = &args.worklist {
            worklist(path)?
        } else {
            retry(DicomWebError::is_transient, || pacs.search_studies(&query))
                .await
                .map_err(|e| anyhow!("{e}"))?
        };
        if let Some(bad) = uids.iter().find(|u| !valid_uid(u)) {
            anyhow::bail!(
                "study UID {:?} is not a valid UID (digits and dots, at most 64)",
                bad.chars().take(64).collect::<String>()
            );
        }
        let mut seen = HashSet::new();
        uids.retain(|u| seen.insert(u.clone()));
        if let Some((k, n)) = shard {
            uids.retain(|u| fnv1a(u) % n == k);
        }
        let finished: HashSet<String> = kept.iter().map(|r| r[0].clone()).collect();
        uids.retain(|u| !finished.contains(u));

        // The results file: the kept rows, then one row per study as it ends.
        let mut out = csv::Writer::from_path(&args.results)
            .with_context(|| format!("--results {}", args.results.display()))?;
        out.write_record(COLUMNS)?;
        for r in &kept {
            out.write_record(r)?;
        }
        out.flush()?;

        let job = Arc::new(Job {
            pacs,
            server,
            model: model.name.clone(),
            backend: args.endpoint.backend(),
            description: osteo_dicom::sr::series_description(&model.name, &model.version),
            max_study_bytes: args.max_study_mib << 20,
            spent: Default::default(),
        });
        let started = Instant::now();
        let bar = ProgressBar::new(uids.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:40} {pos}/{len} studies, {per_sec}, ETA {eta} {msg}",
            )
            .map_err(|e| anyhow!("{e}"))?,
        );
        let permits = Arc::new(Semaphore::new(usize::from(args.concurrency)));
        let mut tasks = tokio::task::JoinSet::new();
        let mut errors = 0usize;
        let mut pending = uids.into_iter();
        loop {
            // Keep `concurrency` studies in flight.
            while permits.available_permits() > 0 {
                let Some(uid) = pending.next() else { break };
                let permit = permits.clone().acquire_owned().await?;
                let job = job.clone();
                tasks.spawn(async move {
                    let row = job.screen(&uid).await;
                    drop(permit);
                    row
                });
            }
            let Some(done) = tasks.join_next().await else {
                break;
            };
            let row = done.map_err(|e| anyhow!("a screening task failed: {e}"))?;
            if row.status == "error" {
                errors += 1;
            }
            out.write_record(row.record())?;
            out.flush()?;
            bar.inc(1);
            bar.set_message(format!("{errors} error(s)"));
        }
        bar.finish();
        // Throughput and where the time went (stages overlap across studies in flight).
        let wall = started.elapsed().as_secs_f64();
        let screened = bar.position();
        let stages: Vec<String> = STAGES
            .iter()
            .zip(&job.spent)
            .map(|(name, ns)| format!("{name} {:.1} s", ns.load(Ordering::Relaxed) as f64 / 1e9))
            .collect();
        eprintln!(
            "screened {screened} studies in {wall:.1} s ({:.0} studies/hour); time summed over \
             studies: {}",
            screened as f64 / wall.max(1e-9) * 3600.0,
            stages.join(", ")
        );
        if errors > 0 {
            return Err(StudiesFailed(errors).into());
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_split_disjointly() {
        assert_eq!(shard("1/4").expect("shard"), (1, 4));
        for bad in ["4/4", "1", "a/2", "0/0", "-1/2"] {
            assert!(shard(bad).is_err(), "{bad}");
        }
        let uids: Vec<String> = (0..200).map(|i| format!("1.2.3.{i}")).collect();
        let mut counts = [0usize; 3];
        for u in &uids {
            counts[(fnv1a(u) % 3) as usize] += 1;
        }
        assert_eq!(counts.iter().sum::<usize>(), 200);
        assert!(counts.iter().all(|&c| c > 40), "{counts:?}");
    }
}

//! Opportunistic screening straight from a PACS: studies found with QIDO-RS (or listed, or
//! from a worklist), retrieved with WADO-RS, graded by an OsteoServe server (clinical
//! variables from the header, the model's quality gate first), the SR and the Grad-CAM
//! secondary capture stored back with STOW-RS; one row per study in the results CSV, which a
//! later run resumes from. Several studies are in flight at once; N workers split the studies
//! by shard.

mod grader;
mod job;
mod studies;

pub use grader::{Graded, Grader};
pub use job::STAGES;
pub use studies::{Shard, earlier, upgrade, worklist};

use crate::connect::Client;
use crate::error::ClientError;
use crate::retry::retry;
use job::Job;
use osteo_dicomweb::{DicomWeb, DicomWebError, valid_uid};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// How one study ended: a row of the results CSV.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The StudyInstanceUID.
    pub study_uid: String,
    /// classified, refused, skipped or error.
    pub status: &'static str,
    /// The grade (classified studies).
    pub grade: String,
    /// The probabilities in class order (classified studies).
    pub probabilities: Option<[f32; 3]>,
    /// Why the study was refused, skipped or ended in error.
    pub reason: String,
    /// What graded it (or would have): model, version, weights digest, backend, device and the
    /// server's OsteoServe version, as far as known.
    pub provenance: Provenance,
    /// Referral and prediction set (classified studies, models with an operating point).
    pub decision: Option<osteo_core::Decision>,
    /// The vertebral attenuation (classified studies whose vertebrae were measured).
    pub vertebrae: Option<crate::report::Vertebrae>,
}

/// The provenance columns of a row.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Provenance {
    /// Model name.
    pub model: String,
    /// Model version.
    pub model_version: String,
    /// Hex BLAKE3 digest of the model's weights.
    pub weights_blake3: String,
    /// Backend that ran the model.
    pub backend: String,
    /// Device it ran on.
    pub device: String,
    /// The server's OsteoServe version.
    pub osteoserve_version: String,
}

impl Provenance {
    /// The provenance of a result of `model` (as the server describes it) on `backend` and
    /// `device`.
    pub fn of(model: &osteo_proto::v1::ModelDescriptor, backend: &str, device: &str) -> Self {
        Self {
            model: model.name.clone(),
            model_version: model.version.clone(),
            weights_blake3: model.weights_blake3.clone(),
            backend: backend.to_string(),
            device: device.to_string(),
            osteoserve_version: model.server_version.clone(),
        }
    }
}

impl Row {
    /// The results CSV's columns.
    pub const COLUMNS: [&'static str; 24] = [
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
        "trabecular_hu_femoral_neck_right",
    ];

    /// How many of [`Row::COLUMNS`] results files of earlier versions have: before the
    /// provenance columns, before the decision columns, and before the attenuation columns.
    /// They are read, and rewritten with the missing columns empty.
    pub const EARLIER_COLUMNS: [usize; 3] = [7, 13, 16];

    /// A study that ended without a grade.
    pub fn ended(study_uid: &str, status: &'static str, reason: impl Into<String>) -> Row {
        Row {
            study_uid: study_uid.to_string(),
            status,
            grade: String::new(),
            probabilities: None,
            reason: reason.into(),
            provenance: Provenance::default(),
            decision: None,
            vertebrae: None,
        }
    }

    /// The row as CSV fields.
    pub fn record(&self) -> Vec<String> {
        let p = |i: usize| {
            self.probabilities
                .map(|p| format!("{:.6}", p[i]))
                .unwrap_or_default()
        };
        let d = |f: &dyn Fn(&osteo_core::Decision) -> String| {
            self.decision.as_ref().map(f).unwrap_or_default()
        };
        let mut fields = vec![
            self.study_uid.clone(),
            self.status.to_string(),
            self.grade.clone(),
            p(0),
            p(1),
            p(2),
            self.reason.clone(),
            self.provenance.model.clone(),
            self.provenance.model_version.clone(),
            self.provenance.weights_blake3.clone(),
            self.provenance.backend.clone(),
            self.provenance.device.clone(),
            self.provenance.osteoserve_version.clone(),
            d(&|d| d.refer.to_string()),
            d(&|d| d.prediction_set.joined()),
            d(&|d| d.indeterminate.to_string()),
        ];
        // One column per level: calibrated HU to 0.1, empty where not measured.
        fields.extend(["T12", "L1", "L2", "L3", "L4", "L5"].map(|level| {
            self.vertebrae
                .as_ref()
                .and_then(|v| v.hu(level))
                .map(|hu| format!("{hu:.1}"))
                .unwrap_or_default()
        }));
        fields.extend(["left", "right"].map(|side| {
            self.vertebrae
                .as_ref()
                .and_then(|v| v.neck_hu(side))
                .map(|hu| format!("{hu:.1}"))
                .unwrap_or_default()
        }));
        fields
    }
}

/// Where the studies come from.
#[derive(Debug, Clone)]
pub enum Studies {
    /// These StudyInstanceUIDs.
    Listed(Vec<String>),
    /// The `study_uid` column of a CSV file.
    Worklist(PathBuf),
    /// A QIDO-RS study search with these keys.
    Query(Vec<(String, String)>),
}

/// A screening run.
pub struct Screening {
    /// The PACS.
    pub pacs: DicomWeb,
    /// The OsteoServe server.
    pub server: Client,
    /// The model ("" = the server's default) and backend ("" = the model's).
    pub choice: crate::grade::Choice,
    /// The studies to screen.
    pub studies: Studies,
    /// The results CSV (kept rows of an earlier run are not screened again).
    pub results: PathBuf,
    /// Most bytes of one study's CT series retrieved from the PACS.
    pub max_study_bytes: u64,
    /// Studies in flight at once.
    pub concurrency: usize,
    /// This worker's share of the studies.
    pub shard: Option<Shard>,
    /// Where each graded study's FHIR R4 Bundle is written ([`write_fhir`]), if anywhere.
    pub fhir_dir: Option<PathBuf>,
}

/// A short hash of a UID (32 hex digits of its BLAKE3): a file or directory name that names
/// nothing (the DICOM node's spool uses it too).
pub fn uid_key(uid: &str) -> String {
    blake3::hash(uid.as_bytes()).to_hex()[..32].to_string()
}

/// The name of study `uid`'s FHIR Bundle in a `--fhir-dir`: [`uid_key`], `.json`.
pub fn fhir_file_name(uid: &str) -> String {
    format!("{}.json", uid_key(uid))
}

/// Writes study `uid`'s FHIR Bundle into `dir` ([`fhir_file_name`]) in one step: written beside
/// its name, synced, renamed over an earlier one.
pub fn write_fhir(dir: &std::path::Path, uid: &str, bundle: &str) -> Result<PathBuf, ClientError> {
    use std::io::Write;
    let what = || format!("--fhir-dir {}", dir.display());
    std::fs::create_dir_all(dir).map_err(|e| ClientError::file(what(), e))?;
    let path = dir.join(fhir_file_name(uid));
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| ClientError::file(what(), e))?;
    f.write_all(bundle.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| ClientError::file(what(), e))?;
    std::fs::rename(&tmp, &path).map_err(|e| ClientError::file(what(), e))?;
    Ok(path)
}

/// What a run reports as it goes.
pub trait Progress {
    /// The run will screen `total` studies.
    fn started(&mut self, total: u64);
    /// A study ended as `row`; `errors` studies ended in error so far.
    fn ended(&mut self, row: &Row, errors: usize);
}

/// How a run went.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Studies screened by this run.
    pub screened: u64,
    /// Studies that ended in error.
    pub errors: usize,
    /// The run's wall time.
    pub wall: Duration,
    /// Time spent in each of [`STAGES`], summed over studies (they overlap across studies in
    /// flight).
    pub stages: Vec<(&'static str, Duration)>,
}

/// Runs a screening: the studies chosen, each screened once (at most `concurrency` at a
/// time), each row written to the results CSV as its study ends.
pub async fn run(s: Screening, progress: &mut dyn Progress) -> Result<Summary, ClientError> {
    let kept = earlier(&s.results)?;
    let grader = Grader::new(s.server, &s.choice)
        .await?
        .with_fhir(s.fhir_dir.is_some());
    // The studies: listed, from the worklist, or found by QIDO-RS; then this shard's.
    let mut uids = match s.studies {
        Studies::Listed(uids) => uids,
        Studies::Worklist(path) => worklist(&path)?,
        Studies::Query(query) => {
            retry(DicomWebError::is_transient, || {
                s.pacs.search_studies(&query)
            })
            .await?
        }
    };
    if let Some(bad) = uids.iter().find(|u| !valid_uid(u)) {
        return Err(ClientError::InvalidArgument(format!(
            "study UID {:?} is not a valid UID (digits and dots, at most 64)",
            bad.chars().take(64).collect::<String>()
        )));
    }
    let mut seen = HashSet::new();
    uids.retain(|u| seen.insert(u.clone()));
    if let Some(shard) = s.shard {
        uids.retain(|u| shard.holds(u));
    }
    let finished: HashSet<String> = kept.iter().map(|r| r[0].clone()).collect();
    uids.retain(|u| !finished.contains(u));

    // The results file: the kept rows, then one row per study as it ends.
    let what = || format!("--results {}", s.results.display());
    let mut out = csv::Writer::from_path(&s.results).map_err(|e| ClientError::file(what(), e))?;
    let mut write = |record: &[String]| -> Result<(), ClientError> {
        out.write_record(record)
            .and_then(|()| out.flush().map_err(csv::Error::from))
            .map_err(|e| ClientError::file(what(), e))
    };
    write(&Row::COLUMNS.map(String::from))?;
    for r in &kept {
        write(r)?;
    }

    let job = Arc::new(Job {
        pacs: s.pacs,
        grader,
        max_study_bytes: s.max_study_bytes,
        fhir_dir: s.fhir_dir,
        spent: Default::default(),
    });
    let started = Instant::now();
    progress.started(uids.len() as u64);
    let permits = Arc::new(Semaphore::new(s.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let (mut errors, mut screened) = (0usize, 0u64);
    let mut pending = uids.into_iter();
    loop {
        // Keep `concurrency` studies in flight.
        while permits.available_permits() > 0 {
            let Some(uid) = pending.next() else { break };
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| ClientError::Answer(format!("screening stopped: {e}")))?;
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
        let row = done.map_err(|e| ClientError::Answer(format!("a screening task failed: {e}")))?;
        if row.status == "error" {
            errors += 1;
        }
        screened += 1;
        write(&row.record())?;
        progress.ended(&row, errors);
    }
    let stages = STAGES
        .iter()
        .zip(&job.spent)
        .map(|(name, ns)| (*name, Duration::from_nanos(ns.load(Ordering::Relaxed))))
        .collect();
    Ok(Summary {
        screened,
        errors,
        wall: started.elapsed(),
        stages,
    })
}

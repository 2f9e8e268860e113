//! `osteo screen`: opportunistic screening straight from a PACS, its arguments mapped onto the
//! client library's screening job (osteo-client's `screen`), with a progress bar and a summary.

use super::client::{self, Endpoint};
use anyhow::anyhow;
use clap::{ArgGroup, Args};
use indicatif::{ProgressBar, ProgressStyle};
use osteo_client::screen::{Progress, Row, Screening, Shard, Studies};
use osteo_dicomweb::{DicomWeb, Limits, TlsOptions};
use std::path::PathBuf;

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
    /// The results CSV (study_uid,status,grade,p_normal,p_osteopenia,p_osteoporosis,reason,
    /// model,model_version,weights_blake3,backend,device,osteoserve_version); rows already there
    /// with a final status are kept and their studies not screened again.
    #[arg(long, value_name = "CSV")]
    results: PathBuf,
    /// Most bytes of one study's CT series retrieved from the PACS (MiB); a larger study ends
    /// in error. The default is what the server accepts by default (store.max_upload_bytes).
    /// Each study in flight is held about once: memory use is up to about --concurrency times
    /// this.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=65536))]
    max_study_mib: u64,
    /// Studies in flight at once (retrieval, upload, grading and store overlap).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    /// This worker's share of the studies, K/N with K from 0: N workers split one worklist or
    /// query result deterministically and disjointly.
    #[arg(long, value_name = "K/N")]
    shard: Option<String>,
    /// Also write each graded study's result as a FHIR R4 Bundle into this directory, one file
    /// per study named by a hash of its Study Instance UID.
    #[arg(long, value_name = "DIR")]
    fhir_dir: Option<PathBuf>,
}

impl ScreenArgs {
    /// The TLS options of the PACS connection from the files named on the command line.
    fn pacs_tls(&self) -> anyhow::Result<TlsOptions> {
        client::tls_files(
            ("--dicomweb-ca-cert", self.dicomweb_ca_cert.as_deref()),
            (
                "--dicomweb-client-cert",
                self.dicomweb_client_cert.as_deref(),
            ),
            ("--dicomweb-client-key", self.dicomweb_client_key.as_deref()),
        )
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

/// The progress bar of a run.
struct Bar(ProgressBar);

impl Progress for Bar {
    fn started(&mut self, total: u64) {
        self.0.set_length(total);
    }

    fn ended(&mut self, _: &Row, errors: usize) {
        self.0.inc(1);
        self.0.set_message(format!("{errors} error(s)"));
    }
}

/// Runs `osteo screen`.
pub fn run(args: ScreenArgs) -> anyhow::Result<()> {
    let shard = args.shard.as_deref().map(Shard::parse).transpose()?;
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
    let studies = if !args.study.is_empty() {
        Studies::Listed(args.study.clone())
    } else if let Some(path) = &args.worklist {
        Studies::Worklist(path.clone())
    } else {
        let query = args
            .query
            .iter()
            .map(|q| {
                q.split_once('=')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .ok_or_else(|| anyhow!("--query {q}: expected KEY=VALUE"))
            })
            .collect::<anyhow::Result<_>>()?;
        Studies::Query(query)
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} studies, {per_sec}, ETA {eta} {msg}")
            .map_err(|e| anyhow!("{e}"))?,
    );
    let summary = client::runtime()?.block_on(async {
        let server = args.endpoint.connect().await?;
        let screening = Screening {
            pacs,
            server,
            choice: args.endpoint.choice(),
            studies,
            results: args.results.clone(),
            max_study_bytes: args.max_study_mib << 20,
            concurrency: usize::from(args.concurrency),
            shard,
            fhir_dir: args.fhir_dir.clone(),
        };
        anyhow::Ok(osteo_client::screen::run(screening, &mut Bar(bar.clone())).await?)
    })?;
    bar.finish();
    // Throughput and where the time went (stages overlap across studies in flight).
    let wall = summary.wall.as_secs_f64();
    let stages: Vec<String> = summary
        .stages
        .iter()
        .map(|(name, t)| format!("{name} {:.1} s", t.as_secs_f64()))
        .collect();
    eprintln!(
        "screened {} studies in {wall:.1} s ({:.0} studies/hour); time summed over studies: {}",
        summary.screened,
        summary.screened as f64 / wall.max(1e-9) * 3600.0,
        stages.join(", ")
    );
    if summary.errors > 0 {
        return Err(StudiesFailed(summary.errors).into());
    }
    Ok(())
}

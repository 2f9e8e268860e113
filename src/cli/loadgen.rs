//! `osteo loadgen`: a bounded load generator for Classify. Uploads the study once, sends a fixed
//! number of requests from concurrent clients, checks every response's status and reports
//! throughput and latency percentiles; optionally runs the same input through the backend
//! directly, in the same process run, for the serving overhead ratio.

use super::client::Endpoint;
use super::clinical::ClinicalArgs;
use super::predict::local_input;
use anyhow::bail;
use clap::Args;
use osteo_client::grade::Subject;
use osteo_client::load::{Load, Measured};
use osteo_core::{Device, ModelArtifacts};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

/// Arguments of `osteo loadgen`.
#[derive(Debug, Args)]
pub struct LoadgenArgs {
    #[command(flatten)]
    endpoint: Endpoint,
    /// The CT study sent with every request (uploaded once, classified by handle).
    #[arg(long)]
    dicom: PathBuf,
    #[command(flatten)]
    clinical: ClinicalArgs,
    /// Concurrent clients, each with its own connection.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Total requests (split evenly between the clients).
    #[arg(long, default_value_t = 400)]
    requests: usize,
    /// Stop early after this many seconds.
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
    /// Also time the same input through the backend in this process (a model directory; the
    /// --backend named, else ort), one call at a time, for the serving overhead ratio.
    #[arg(long, value_name = "MODEL_DIR")]
    direct: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Latency percentiles in milliseconds.
fn percentiles(mut ms: Vec<f64>) -> serde_json::Value {
    if ms.is_empty() {
        return json!(null);
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((q * (ms.len() - 1) as f64).round() as usize).min(ms.len() - 1)];
    json!({"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": at(1.0), "n": ms.len()})
}

/// Times `n` direct backend calls on the study and clinical input.
fn direct(
    model_dir: &std::path::Path,
    args: &LoadgenArgs,
    n: usize,
) -> anyhow::Result<serde_json::Value> {
    let artifacts = ModelArtifacts::open(model_dir)?;
    let m = &artifacts.manifest;
    let batch = local_input(m, Some(&args.dicom), &args.clinical, false)?.batch;
    let name = match args.endpoint.choice().backend {
        b if b.is_empty() => "ort".to_string(),
        b => b,
    };
    let mut backend = osteo_backends::load(&name, &artifacts, Device::Cpu)?;
    let ms = super::bench::timings(1, n, || {
        backend.predict(&batch)?;
        Ok(())
    })?;
    Ok(percentiles(ms))
}

/// Runs `osteo loadgen`.
pub fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    if args.clients == 0 || args.requests == 0 {
        bail!("--clients and --requests must be positive");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let subject = Subject {
        dicom: Some(&args.dicom),
        clinical: args.clinical.message(),
        clinical_from_dicom: args.clinical.reads_header(),
    };
    let load = Load {
        clients: args.clients,
        requests: args.requests,
        max_time: Duration::from_secs(args.max_seconds),
    };
    let credentials = args.endpoint.credentials.load()?;
    let Measured {
        served_ms: served,
        codes,
        wall,
    } = runtime.block_on(osteo_client::load::classify(
        &args.endpoint.server,
        &credentials,
        &args.endpoint.choice(),
        &subject,
        &load,
    ))?;
    let wall = wall.as_secs_f64();
    let total: usize = codes.values().sum();
    let direct = match &args.direct {
        Some(dir) => Some(direct(dir, &args, served.len().clamp(1, 2000))?),
        None => None,
    };
    let classify = percentiles(served.clone());
    let ratio = direct.as_ref().and_then(|d| {
        Some(json!({
            "p50": classify["p50"].as_f64()? / d["p50"].as_f64()?,
            "p99": classify["p99"].as_f64()? / d["p99"].as_f64()?,
        }))
    });
    let report = json!({
        "clients": args.clients,
        "requests": total,
        "ok": served.len(),
        "codes": codes,
        "seconds": wall,
        "throughput_rps": served.len() as f64 / wall,
        "classify_ms": classify,
        "direct_backend_ms": direct,
        "classify_over_direct": ratio,
    });
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if served.len() != total {
        bail!(
            "{} of {total} requests failed: {:?}",
            total - served.len(),
            codes
        );
    }
    Ok(())
}

//! `osteo loadgen`: a bounded load generator for Classify. Uploads the study once, sends a fixed
//! number of requests from concurrent clients, checks every response's status and reports
//! throughput and latency percentiles; optionally runs the same input through the backend
//! directly, in the same process run, for the serving overhead ratio.

use super::client::{Endpoint, code_name, connect, upload};
use super::clinical::ClinicalArgs;
use super::predict::local_input;
use anyhow::{Context, anyhow, bail};
use clap::Args;
use osteo_core::{Device, ModelArtifacts};
use osteo_proto::v1 as pb;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
    let name = match args.endpoint.backend() {
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
    let (served, codes, wall) = runtime.block_on(async {
        let mut first = connect(&args.endpoint.server, &args.endpoint.credentials).await?;
        let handle = upload(&mut first, &args.dicom).await?;
        let request = pb::ClassifyRequest {
            study: Some(pb::StudyRef {
                source: Some(pb::study_ref::Source::Study(handle.clone())),
            }),
            clinical: Some(args.clinical.message()),
            model: args.endpoint.model(),
            backend: args.endpoint.backend(),
            clinical_from_dicom: args.clinical.reads_header(),
            dicom_outputs: false,
        };
        // Warm-up: one request, not counted.
        first
            .classify(request.clone())
            .await
            .map_err(|s| anyhow!("{}: {}", code_name(s.code()), s.message()))?;
        let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..args.clients {
            let share =
                args.requests / args.clients + usize::from(c < args.requests % args.clients);
            let mut client = connect(&args.endpoint.server, &args.endpoint.credentials).await?;
            let request = request.clone();
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::with_capacity(share);
                for _ in 0..share {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let t = Instant::now();
                    let r = client.classify(request.clone()).await;
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    out.push((r.map(|_| ()).map_err(|s| s.code()), ms));
                }
                out
            }));
        }
        let mut served = Vec::new();
        let mut codes: BTreeMap<&'static str, usize> = BTreeMap::new();
        for t in tasks {
            for (r, ms) in t.await.context("a client task failed")? {
                match r {
                    Ok(()) => {
                        *codes.entry("OK").or_default() += 1;
                        served.push(ms);
                    }
                    Err(code) => *codes.entry(code_name(code)).or_default() += 1,
                }
            }
        }
        let wall = start.elapsed().as_secs_f64();
        let _ = first
            .delete_study(pb::DeleteStudyRequest { study: handle })
            .await;
        anyhow::Ok((served, codes, wall))
    })?;
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

//! `osteo bench`: backends side by side in this process: predict latency per batch size and
//! Grad-CAM latency on one device, on a phantom study (latency does not depend on the content).

use anyhow::{Context, bail};
use clap::Args;
use osteo_core::{Batch, Device, ModelArtifacts, Sample};
use osteo_train::cohort::{CohortSource, load_for};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `osteo bench`.
#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  osteo bench --model models/osteo-fused-v1 --backends candle,ort --batches 1,32 --device cpu"
)]
pub struct BenchArgs {
    /// Model directory.
    #[arg(long)]
    model: PathBuf,
    /// Backends to time, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "candle,ort")]
    backends: Vec<String>,
    /// Device: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    batches: Vec<usize>,
    /// Timed calls per batch size (after 3 warm-up calls).
    #[arg(long, default_value_t = 30)]
    iterations: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Median and mean of timings in milliseconds.
fn summary(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    (ms[ms.len() / 2], mean)
}

/// Milliseconds of `n` calls of `f`, after `warm_up` untimed calls.
pub fn timings(
    warm_up: usize,
    n: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Vec<f64>> {
    for _ in 0..warm_up {
        f()?;
    }
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f()?;
            Ok(t.elapsed().as_secs_f64() * 1e3)
        })
        .collect()
}

/// Median and mean of `n` timed calls after 3 warm-up calls.
fn time(n: usize, f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<(f64, f64)> {
    Ok(summary(timings(3, n, f)?))
}

/// Runs `osteo bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.iterations == 0 || args.batches.contains(&0) || args.backends.is_empty() {
        bail!("--iterations, --batches and --backends must be positive / non-empty");
    }
    let device: Device = args.device.parse()?;
    let artifacts = ModelArtifacts::open(&args.model)
        .with_context(|| format!("cannot open model directory {}", args.model.display()))?;
    let m = &artifacts.manifest;
    let sample = load_for(
        &CohortSource::Synthetic {
            patients: 1,
            seed: 7,
        },
        &[m],
        None,
    )?
    .remove(0);
    let one = Sample {
        image: sample.view.clone(),
        tabular: m
            .tabular
            .as_ref()
            .map(|spec| anyhow::Ok(spec.encode(&sample.clinical, &sample.measured_for(spec)?)?))
            .transpose()?,
    };
    let batch = |n: usize| -> anyhow::Result<Batch> { Ok(Batch::stack(&m.arch, &vec![&one; n])?) };
    let mut rows = Vec::new();
    for name in &args.backends {
        let mut backend = osteo_backends::load(name, &artifacts, device)?;
        let library = backend.info().library_version;
        for &n in &args.batches {
            let input = batch(n)?;
            let (p50, mean) = time(args.iterations, || {
                backend.predict(&input)?;
                Ok(())
            })?;
            rows.push(json!({"backend": name, "library": library, "op": "predict", "batch": n,
                             "p50_ms": p50, "mean_ms": mean, "samples_per_s": n as f64 * 1e3 / mean}));
        }
        if m.view.is_some() {
            let one = batch(1)?;
            let (p50, mean) = time(args.iterations, || {
                backend.explain(&one)?;
                Ok(())
            })?;
            rows.push(
                json!({"backend": name, "library": library, "op": "explain", "batch": 1,
                             "p50_ms": p50, "mean_ms": mean, "samples_per_s": 1e3 / mean}),
            );
        }
    }
    if args.json {
        let out = json!({"model": m.name, "device": device.to_string(), "iterations": args.iterations, "results": rows});
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    println!(
        "{} on {device} ({} timed calls each)",
        m.name, args.iterations
    );
    println!(
        "{:<8} {:<20} {:<8} {:>5} {:>10} {:>10} {:>12}",
        "backend", "library", "op", "batch", "p50 ms", "mean ms", "samples/s"
    );
    for r in &rows {
        println!(
            "{:<8} {:<20} {:<8} {:>5} {:>10.3} {:>10.3} {:>12.1}",
            r["backend"].as_str().unwrap_or(""),
            r["library"].as_str().unwrap_or(""),
            r["op"].as_str().unwrap_or(""),
            r["batch"],
            r["p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["mean_ms"].as_f64().unwrap_or(f64::NAN),
            r["samples_per_s"].as_f64().unwrap_or(f64::NAN)
        );
    }
    Ok(())
}

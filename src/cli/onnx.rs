//! `osteo export-onnx`: writes (or checks) a model directory's `model.onnx`.

use anyhow::Context;
use clap::Args;
use osteo_core::ModelArtifacts;
use std::path::PathBuf;

/// Arguments of `osteo export-onnx`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  osteo export-onnx --model models/osteo-fused-v1\n  osteo export-onnx --model models/osteo-image-v1 --model models/osteo-tabular-v1 --check"
)]
pub struct ExportArgs {
    /// Model directory (model.toml + weights.safetensors); repeat for several.
    #[arg(long = "model", required = true)]
    models: Vec<PathBuf>,
    /// Only check that each model.onnx is what the exporter writes from the current weights;
    /// exit non-zero when one is not.
    #[arg(long)]
    check: bool,
}

/// Runs `osteo export-onnx`.
pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    for dir in &args.models {
        let mut artifacts = ModelArtifacts::open(dir)
            .with_context(|| format!("cannot open model directory {}", dir.display()))?;
        if args.check {
            artifacts.verify_weights()?;
            osteo_onnx::check_in_sync(&artifacts)?;
            println!(
                "{}: in sync with weights.safetensors",
                artifacts.onnx_path().display()
            );
        } else {
            // The weights in the directory are the ones to trust from now on: record their
            // digest in model.toml, then export them.
            artifacts.record_weights_digest()?;
            let manifest = artifacts.dir.join(osteo_core::manifest::MANIFEST_FILE);
            std::fs::write(&manifest, artifacts.manifest.to_toml()?)
                .with_context(|| format!("cannot write {}", manifest.display()))?;
            let bytes = osteo_onnx::write_model(&artifacts)?;
            println!(
                "{}: {bytes} bytes (IR {}, opset {})",
                artifacts.onnx_path().display(),
                osteo_onnx::IR_VERSION,
                osteo_onnx::OPSET
            );
        }
    }
    Ok(())
}

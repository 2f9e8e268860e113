//! `osteo synth`.

use clap::Args;
use std::path::PathBuf;

/// Arguments of `osteo synth`.
#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Number of patients.
    #[arg(long)]
    patients: usize,
    /// Random seed; the same seed gives the same cohort.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Also write one DICOM CT series per patient.
    #[arg(long)]
    dicom: bool,
}

/// Runs `osteo synth`.
pub fn run(_args: SynthArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}

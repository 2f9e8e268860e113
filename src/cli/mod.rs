//! Command-line definitions and dispatch.

mod dicom;
mod synth;

use clap::{Parser, Subcommand};

/// OsteoServe: osteoporosis grading (normal / osteopenia / osteoporosis) from abdominal CT.
#[derive(Debug, Parser)]
#[command(name = "osteo", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read DICOM CT studies: summarise them or render the model's view.
    #[command(subcommand)]
    Dicom(dicom::DicomCommand),
    /// Synthesise a phantom cohort: patients with known T-scores and, optionally, CT series.
    Synth(synth::SynthArgs),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dicom(cmd) => dicom::run(cmd),
        Command::Synth(args) => synth::run(args),
    }
}

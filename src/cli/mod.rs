//! Command-line definitions and dispatch.

mod ab;
mod audit;
mod bench;
mod client;
mod clinical;
mod dicom;
mod loadgen;
mod onnx;
mod predict;
mod receive;
mod screen;

pub use screen::StudiesFailed;
mod serve;
mod synth;
mod token;
mod train;

use clap::{Parser, Subcommand};

/// OsteoServe: osteoporosis grading (normal / osteopenia / osteoporosis) from abdominal CT.
#[derive(Debug, Parser)]
#[command(
    name = "osteo",
    version,
    propagate_version = true,
    about = "OsteoServe: osteoporosis grading (normal / osteopenia / osteoporosis) from abdominal CT",
    after_help = "Examples:\n  osteo synth --patients 5 --seed 1 --out cohort --dicom   # phantom patients + CT series\n  osteo dicom inspect cohort/studies/S1-P000000 --json     # summarise a study\n  osteo dicom view cohort/studies/S1-P000000 --out v.png   # render the model's input view"
)]
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
    /// Train an image, tabular or fused model on a cohort CSV or the synthetic cohort.
    Train(train::TrainArgs),
    /// Evaluate a model directory on a cohort (with the Bayes oracle on synthetic cohorts).
    Evaluate(train::EvaluateArgs),
    /// Rewrite a model's report folder (metrics.json, report.md, plots) from its test patients.
    Report(train::ReportArgs),
    /// Fit a trained model's calibration, screening operating point and prediction sets on its
    /// validation patients, as a new model version (the source directory is not changed).
    Calibrate(train::CalibrateArgs),
    /// Write a model's model.onnx from its weights (or check that it is in sync).
    ExportOnnx(onnx::ExportArgs),
    /// Serve the models over gRPC (with health, reflection and Prometheus metrics).
    Serve(serve::ServeArgs),
    /// Check a server's hash-chained audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Create bearer tokens for the server's tokens file.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Grade a study on a server (the DICOM files and the question in one GradeStudy call).
    Classify(client::ClassifyArgs),
    /// Grade and explain a study on a server; writes the Grad-CAM overlay PNG.
    Explain(client::ExplainArgs),
    /// Screen studies from a PACS: find them (QIDO-RS), grade them on a server, store the SR and
    /// the Grad-CAM secondary capture back (STOW-RS); exit 1 when a study ended in error.
    Screen(screen::ScreenArgs),
    /// Run a DICOM node: receive CT studies pushed over DIMSE (C-STORE), grade each complete
    /// study on a server and send the SR and secondary capture back (C-STORE).
    Receive(receive::ReceiveArgs),
    /// Run the same study through several backends of a server and compare the results.
    Compare(client::CompareArgs),
    /// Time predict (per batch size) and Grad-CAM on several backends in this process.
    Bench(bench::BenchArgs),
    /// Live-traffic experiments on a server: the shadow pairs' agreement report.
    #[command(subcommand)]
    Ab(ab::AbCommand),
    /// Load-test Classify: concurrent clients, throughput, latency percentiles, status check.
    Loadgen(loadgen::LoadgenArgs),
    /// Grade one study locally (no server): grade, probabilities, optional Grad-CAM overlay.
    Predict(predict::PredictArgs),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dicom(cmd) => dicom::run(cmd),
        Command::Synth(args) => synth::run(args),
        Command::Train(args) => train::run_train(args),
        Command::Evaluate(args) => train::run_evaluate(args),
        Command::Report(args) => train::run_report(args),
        Command::Calibrate(args) => train::run_calibrate(args),
        Command::Predict(args) => predict::run(args),
        Command::ExportOnnx(args) => onnx::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Audit(cmd) => audit::run(cmd),
        Command::Token(cmd) => token::run(cmd),
        Command::Classify(args) => client::classify(args),
        Command::Explain(args) => client::explain(args),
        Command::Screen(args) => screen::run(args),
        Command::Receive(args) => receive::run(args),
        Command::Compare(args) => client::compare(args),
        Command::Bench(args) => bench::run(args),
        Command::Ab(cmd) => ab::run(cmd),
        Command::Loadgen(args) => loadgen::run(args),
    }
}

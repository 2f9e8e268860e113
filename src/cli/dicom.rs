//! `osteo dicom inspect` and `osteo dicom view`.

use anyhow::Context;
use clap::{Args, Subcommand};
use osteo_dicom::ingest::Ingested;
use osteo_dicom::{DicomSource, IngestOptions, ViewSpec};
use serde::Serialize;
use std::path::PathBuf;

/// DICOM subcommands.
#[derive(Debug, Subcommand)]
pub enum DicomCommand {
    /// Summarise the CT series in a file or directory: size, spacing, HU range, encodings.
    ///
    /// PATH is one DICOM file or a directory searched recursively. When it holds several series,
    /// the axial CT series with the most slices is described unless --series names another.
    Inspect(InspectArgs),
    /// Render the model's input view (a coronal slab through the spine) as a PNG.
    ///
    /// The image shows the slab mean (left) and slab maximum (right), patient head at the top and
    /// patient right on the image's left.
    View(ViewArgs),
}

/// Input selection shared by the DICOM subcommands.
#[derive(Debug, Args)]
pub struct InputArgs {
    /// A DICOM file, or a directory searched recursively.
    path: PathBuf,
    /// SeriesInstanceUID to select when the input holds several series.
    #[arg(long)]
    series: Option<String>,
}

/// Arguments of `osteo dicom inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    input: InputArgs,
    /// Print exactly one JSON object on stdout instead of text.
    #[arg(long)]
    json: bool,
}

/// Arguments of `osteo dicom view`.
#[derive(Debug, Args)]
pub struct ViewArgs {
    #[command(flatten)]
    input: InputArgs,
    /// Where to write the PNG.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Upscaling factor of the rendered image.
    #[arg(long, default_value_t = 3)]
    scale: usize,
}

fn load(input: &InputArgs) -> anyhow::Result<Ingested> {
    let options = IngestOptions {
        series_uid: input.series.clone(),
        ..Default::default()
    };
    Ok(osteo_dicom::ingest(
        DicomSource::Path(input.path.clone()),
        &options,
    )?)
}

#[derive(Serialize)]
struct HuStats {
    min: f64,
    max: f64,
    mean: f64,
}

#[derive(Serialize)]
struct InspectJson<'a> {
    modality: &'a str,
    slices: usize,
    rows: usize,
    columns: usize,
    spacing_mm: [f64; 3],
    hu: HuStats,
    transfer_syntaxes: &'a [String],
    series_count: usize,
}

/// Runs a DICOM subcommand.
pub fn run(cmd: DicomCommand) -> anyhow::Result<()> {
    match cmd {
        DicomCommand::Inspect(args) => {
            let ingested = load(&args.input)?;
            let s = &ingested.volume.summary;
            if args.json {
                let json = InspectJson {
                    modality: &s.modality,
                    slices: s.slices,
                    rows: s.rows,
                    columns: s.columns,
                    spacing_mm: s.spacing_mm,
                    hu: HuStats {
                        min: s.hu_min,
                        max: s.hu_max,
                        mean: s.hu_mean,
                    },
                    transfer_syntaxes: &s.transfer_syntaxes,
                    series_count: s.series_count,
                };
                println!("{}", serde_json::to_string(&json)?);
            } else {
                println!("modality          {}", s.modality);
                println!(
                    "size              {} slices x {} rows x {} columns",
                    s.slices, s.rows, s.columns
                );
                println!(
                    "spacing (mm)      z {:.3}, row {:.3}, column {:.3}",
                    s.spacing_mm[0], s.spacing_mm[1], s.spacing_mm[2]
                );
                println!(
                    "HU                min {:.1}, max {:.1}, mean {:.2}",
                    s.hu_min, s.hu_max, s.hu_mean
                );
                println!("transfer syntax   {}", s.transfer_syntaxes.join(", "));
                println!("series in input   {}", s.series_count);
                for info in &ingested.series {
                    println!(
                        "  {} {:>4} slices {}{}",
                        info.modality,
                        info.slices,
                        if info.axial { "axial " } else { "" },
                        info.uid
                    );
                }
            }
        }
        DicomCommand::View(args) => {
            let ingested = load(&args.input)?;
            let view = osteo_dicom::coronal_slab(&ingested.volume, &ViewSpec::default())?;
            let png = osteo_dicom::render::view_png(&view, args.scale)?;
            std::fs::write(&args.out, png)
                .with_context(|| format!("cannot write {}", args.out.display()))?;
            eprintln!("wrote {}", args.out.display());
        }
    }
    Ok(())
}

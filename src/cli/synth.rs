//! `osteo synth`: a synthetic cohort as `cohort.csv`, optionally with one CT series per patient.

use anyhow::Context;
use clap::Args;
use osteo_phantom::{
    PhantomSpec, SeriesIdentity, TScoreModel, cohort, phantom_volume, write_series,
};
use osteo_train::cohort::CohortRow;
use rayon::prelude::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Arguments of `osteo synth`.
#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Number of patients to generate.
    #[arg(long)]
    patients: usize,
    /// Random seed: the same seed gives the same patients, images and UIDs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output directory (created if missing); cohort.csv is written there.
    #[arg(long)]
    out: PathBuf,
    /// Also write one DICOM CT series per patient under OUT/studies/<patient_id>/.
    #[arg(long)]
    dicom: bool,
    /// Rows and columns of each CT slice (512 gives clinical-size series).
    #[arg(long, default_value_t = 192, value_parser = clap::value_parser!(u16).range(64..=1024))]
    matrix: u16,
}

/// Runs `osteo synth`.
pub fn run(args: SynthArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.patients > 0, "--patients must be at least 1");
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let model = TScoreModel::default();
    let patients = cohort(&model, args.seed, args.patients);
    let study_dir = |id: &str| {
        if args.dicom {
            format!("studies/{id}")
        } else {
            String::new()
        }
    };
    if args.dicom {
        let spec = PhantomSpec {
            matrix: usize::from(args.matrix),
            ..PhantomSpec::default()
        };
        let done = AtomicUsize::new(0);
        let start = Instant::now();
        patients
            .par_iter()
            .try_for_each(|p| -> anyhow::Result<()> {
                let (_, volume) = phantom_volume(p, &spec);
                write_series(
                    &volume,
                    &SeriesIdentity::for_patient(p),
                    &args.out.join(study_dir(&p.id)),
                )?;
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_multiple_of(50) || n == patients.len() {
                    eprintln!(
                        "synth: {n}/{} studies written ({:.1} s)",
                        patients.len(),
                        start.elapsed().as_secs_f64()
                    );
                }
                Ok(())
            })?;
    }
    let csv_path = args.out.join("cohort.csv");
    let mut w = csv::Writer::from_path(&csv_path)
        .with_context(|| format!("cannot write {}", csv_path.display()))?;
    for p in &patients {
        w.serialize(CohortRow::of_patient(p, Some(study_dir(&p.id))))?;
    }
    w.flush()?;
    eprintln!(
        "synth: wrote {} ({} patients, seed {})",
        csv_path.display(),
        patients.len(),
        args.seed
    );
    Ok(())
}

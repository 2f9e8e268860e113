//! Measures phantom throughput: patients per second from demographics to the model's view, on all
//! cores. Usage: `cargo run --release -p osteo-phantom --example throughput -- [PATIENTS] [SEED]`.

use osteo_dicom::{ViewSpec, coronal_slab};
use osteo_phantom::{PhantomSpec, TScoreModel, phantom_volume};
use rayon::prelude::*;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200);
    let seed: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1);
    let model = TScoreModel::default();
    let spec = PhantomSpec::default();
    let view_spec = ViewSpec::default();
    let start = Instant::now();
    let voxels: usize = (0..n)
        .into_par_iter()
        .map(|i| -> Result<usize, osteo_dicom::DicomError> {
            let p = model.patient(seed, i);
            let (_, volume) = phantom_volume(&p, &spec);
            coronal_slab(&volume, &view_spec)?;
            Ok(volume.hu.len())
        })
        .try_reduce(|| 0, |a, b| Ok(a + b))?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{n} patients (volume + coronal_slab view) in {secs:.2} s on {} threads: {:.1} patients/s, {:.0} Mvoxel/s; 3,012 patients would take {:.0} s",
        rayon::current_num_threads(),
        n as f64 / secs,
        voxels as f64 / secs / 1e6,
        3012.0 * secs / n as f64
    );
    Ok(())
}

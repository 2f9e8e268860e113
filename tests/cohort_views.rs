//! A cohort written with `osteo synth --dicom` yields the same views as the in-memory synthetic
//! path (one view function for DICOM and phantom input), and the view cache serves them back.

use osteo_core::ViewSpec;
use osteo_train::cohort::{CohortSource, load};
use std::process::Command;

#[test]
fn dicom_cohort_and_in_memory_cohort_give_the_same_views() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_osteo"))
        .args([
            "synth",
            "--patients",
            "3",
            "--seed",
            "31",
            "--dicom",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .expect("run osteo synth");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spec = ViewSpec::default();
    let from_dicom = load(
        &CohortSource::Csv(dir.path().join("cohort.csv")),
        Some(&spec),
        None,
    )
    .expect("csv cohort");
    let in_memory = load(
        &CohortSource::Synthetic {
            patients: 3,
            seed: 31,
        },
        Some(&spec),
        None,
    )
    .expect("synthetic cohort");
    assert_eq!(from_dicom.len(), 3);
    for (a, b) in from_dicom.iter().zip(&in_memory) {
        assert_eq!(a.patient_id, b.patient_id);
        assert_eq!(a.grade, b.grade);
        assert_eq!(a.clinical, b.clinical, "clinical variables survive the CSV");
        let (va, vb) = (
            a.view.as_ref().expect("view"),
            b.view.as_ref().expect("view"),
        );
        let max_diff = va
            .iter()
            .zip(vb)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        // HU round-trip exactly; positions are written with 0.1 µm precision, so interpolation
        // weights may differ in the last bits.
        assert!(
            max_diff < 1e-4,
            "{}: views differ by {max_diff}",
            a.patient_id
        );
    }

    // The cache returns the same views, keyed by study content + view spec.
    let cache = dir.path().join("cache");
    let first = load(
        &CohortSource::Csv(dir.path().join("cohort.csv")),
        Some(&spec),
        Some(&cache),
    )
    .expect("cached load");
    let entries = std::fs::read_dir(&cache).expect("cache dir").count();
    assert_eq!(entries, 3, "one cache file per study");
    let second = load(
        &CohortSource::Csv(dir.path().join("cohort.csv")),
        Some(&spec),
        Some(&cache),
    )
    .expect("from cache");
    assert_eq!(first, second);
    let other = ViewSpec {
        slab_mm: 30.0,
        ..spec
    };
    load(
        &CohortSource::Csv(dir.path().join("cohort.csv")),
        Some(&other),
        Some(&cache),
    )
    .expect("another spec");
    assert_eq!(
        std::fs::read_dir(&cache).expect("cache dir").count(),
        6,
        "a different spec is a different entry"
    );
}

#[test]
fn bad_cohort_rows_name_the_file_and_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("cohort.csv");
    std::fs::write(
        &csv,
        "patient_id,age,sex,height_cm,weight_kg,prior_fragility_fracture,glucocorticoids,smoker,rheumatoid_arthritis,t_score,grade,study_dir\n\
         A,70,F,160,60,0,0,0,0,-1.5,osteopenia,\n\
         B,70,F,160,600,0,0,0,0,-1.5,osteopenia,\n",
    )
    .expect("write");
    let err = load(&CohortSource::Csv(csv.clone()), None, None).expect_err("weight 600");
    assert!(
        err.to_string().contains("row 2") && err.to_string().contains("weight_kg"),
        "{err}"
    );
    std::fs::write(
        &csv,
        "patient_id,age,sex,height_cm,weight_kg,prior_fragility_fracture,glucocorticoids,smoker,rheumatoid_arthritis,t_score,grade,study_dir\n\
         A,70,F,160,60,0,0,0,0,-2.7,normal,\n",
    )
    .expect("write");
    let err = load(&CohortSource::Csv(csv.clone()), None, None).expect_err("contradiction");
    assert!(err.to_string().contains("contradicts"), "{err}");
    let err = load(&CohortSource::Csv(csv), Some(&ViewSpec::default()), None);
    assert!(err.is_err(), "no study_dir while images are needed");
}

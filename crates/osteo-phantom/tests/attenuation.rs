//! The vertebral attenuation measured on phantoms against the truth they were drawn with: the
//! calibrated trabecular HU of every level within 5 HU of the truth (median absolute error over
//! patients and levels; the 95th percentile is printed), the levels counted from the sacrum,
//! the scanner's offset recovered from the internal references, and the contrast phase.

use osteo_dicom::attenuation::{Level, measure};
use osteo_phantom::{PhantomSpec, TScoreModel, phantom_volume};

/// Patients measured (seed 77: none of them trained a model).
const PATIENTS: u64 = 40;

fn percentile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * q).round() as usize]
}

#[test]
fn calibrated_vertebral_attenuation_matches_the_phantoms_truth() {
    let model = TScoreModel::default();
    let (mut errors, mut raw_errors, mut offsets) = (Vec::new(), Vec::new(), Vec::new());
    let (mut complete, mut phases) = (0, 0);
    let mut necks = Vec::new();
    for i in 0..PATIENTS {
        let p = model.patient(77, i);
        let (anatomy, volume) = phantom_volume(&p, &PhantomSpec::default());
        let truth = anatomy.truth();
        let a = measure(&volume).expect("measured");
        assert!(
            a.sacrum_found,
            "patient {i}: the sacrum is in every phantom's field of view"
        );
        offsets.push((a.calibration.offset_hu - truth.calibration_hu).abs());
        phases += usize::from(a.calibration.contrast_phase == truth.contrast_phase);
        let air = a.calibration.air_hu.expect("air");
        assert!((air + 1000.0).abs() < 5.0, "patient {i}: air {air}");
        for n in &a.femoral_necks {
            necks.push((n.trabecular_hu - truth.femoral_neck_hu).abs());
        }
        let levels: Vec<Level> = a.vertebrae.iter().map(|v| v.level).collect();
        complete += usize::from(levels == Level::ALL);
        for v in &a.vertebrae {
            assert!(!v.level_uncertain, "patient {i}: {:?}", v.level);
            let want = truth.trabecular_hu[Level::ALL
                .iter()
                .position(|l| *l == v.level)
                .expect("level")];
            errors.push((v.trabecular_hu - want).abs());
            raw_errors.push((v.measured_hu - want).abs());
            assert!(
                v.voxels >= 30,
                "patient {i} {}: {} voxels",
                v.level,
                v.voxels
            );
        }
    }
    let median = percentile(&mut errors.clone(), 0.5);
    let p95 = percentile(&mut errors.clone(), 0.95);
    let raw = percentile(&mut raw_errors, 0.5);
    let offset = percentile(&mut offsets, 0.5);
    eprintln!(
        "{} levels of {PATIENTS} phantoms: calibrated |error| median {median:.2} HU, 95th \
         percentile {p95:.2} HU (uncalibrated median {raw:.2} HU); offset |error| median \
         {offset:.2} HU; all six levels in {complete}; contrast phase right in {phases}",
        errors.len()
    );
    assert!(median <= 5.0, "median absolute error {median:.2} HU");
    let neck_median = percentile(&mut necks.clone(), 0.5);
    eprintln!(
        "{} femoral necks: calibrated |error| median {neck_median:.2} HU, 95th percentile {:.2} HU",
        necks.len(),
        percentile(&mut necks.clone(), 0.95)
    );
    assert!(
        necks.len() as f64 >= 0.9 * 2.0 * PATIENTS as f64,
        "{} necks",
        necks.len()
    );
    assert!(
        neck_median <= 5.0,
        "neck median absolute error {neck_median:.2} HU"
    );
    assert!(
        complete as f64 >= 0.9 * PATIENTS as f64,
        "all six levels in only {complete} of {PATIENTS}"
    );
    assert!(median < raw, "calibration helps: {median} vs {raw}");
    assert!(
        phases as f64 >= 0.9 * PATIENTS as f64,
        "phase right in {phases}"
    );
}

//! Phantom -> DICOM -> ingest round trip, IOD validity with dciodvfy, and the image model.

use osteo_dicom::{DicomSource, IngestOptions, ViewSpec, coronal_slab, ingest};
use osteo_phantom::{PhantomSpec, SeriesIdentity, TScoreModel, phantom_volume, write_series};
use std::process::Command;

#[test]
fn phantom_series_round_trips_exactly_through_dicom() {
    let model = TScoreModel::default();
    let dir = tempfile::tempdir().expect("tempdir");
    for index in [0, 5] {
        let p = model.patient(42, index);
        let (anatomy, volume) = phantom_volume(&p, &PhantomSpec::default());
        let out = dir.path().join(&p.id);
        let files = write_series(&volume, &SeriesIdentity::for_patient(&p), &out).expect("write");
        assert_eq!(files.len(), volume.dims[0]);
        let back = ingest(DicomSource::Path(out), &IngestOptions::default())
            .expect("ingest")
            .volume;
        assert_eq!(back.dims, volume.dims);
        assert!(
            back.hu.to_f32() == volume.hu.to_f32(),
            "HU differ after the round trip"
        );
        assert!(
            matches!(back.hu, osteo_dicom::Voxels::I16(_)),
            "integral HU are stored as i16"
        );
        for i in 0..3 {
            assert!(
                (back.spacing_mm[i] - volume.spacing_mm[i]).abs() < 1e-6,
                "spacing {i}"
            );
            assert!(
                (back.origin_mm[i] - volume.origin_mm[i]).abs() < 1e-4,
                "origin {i}"
            );
        }
        assert_eq!(back.direction, volume.direction);
        assert_eq!(
            back.summary.transfer_syntaxes,
            vec!["1.2.840.10008.1.2.1".to_string()]
        );
        assert!(anatomy.thickness_mm > 0.0);
    }
}

#[test]
fn generated_series_pass_dciodvfy_without_errors() {
    let p = TScoreModel::default().patient(9, 3);
    let (_, volume) = phantom_volume(&p, &PhantomSpec::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let files = write_series(&volume, &SeriesIdentity::for_patient(&p), dir.path()).expect("write");
    for f in [&files[0], &files[files.len() / 2], &files[files.len() - 1]] {
        let out = Command::new("dciodvfy")
            .arg(f)
            .output()
            .expect("dciodvfy runs (scripts/setup.sh installs dicom3tools)");
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            report.contains("CTImage"),
            "dciodvfy did not recognise a CT image: {report}"
        );
        let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("Error")).collect();
        assert!(
            errors.is_empty(),
            "{}: dciodvfy errors: {errors:#?}",
            f.display()
        );
    }
}

/// Mean of the slab-maximum channel over the view's central columns and vertebral rows.
fn spine_brightness(seed: u64, index: u64) -> (f64, f64) {
    let p = TScoreModel::default().patient(seed, index);
    let (_, volume) = phantom_volume(&p, &PhantomSpec::default());
    let view = coronal_slab(&volume, &ViewSpec::default()).expect("view");
    let w = view.spec.width;
    let ch = view.channel(0);
    let centre: f64 = (20..70)
        .flat_map(|r| (w / 2 - 2..w / 2 + 2).map(move |c| (r, c)))
        .map(|(r, c)| f64::from(ch[r * w + c]))
        .sum::<f64>()
        / 200.0;
    (p.t_score, centre)
}

#[test]
fn view_brightness_over_the_spine_follows_the_t_score() {
    let mut pairs: Vec<(f64, f64)> = (0..24).map(|i| spine_brightness(77, i)).collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = pairs.len() / 3;
    let low: f64 = pairs[..n].iter().map(|p| p.1).sum::<f64>() / n as f64;
    let high: f64 = pairs[pairs.len() - n..].iter().map(|p| p.1).sum::<f64>() / n as f64;
    assert!(
        high > low,
        "denser bone should look brighter: low-T third {low:.4}, high-T third {high:.4}"
    );
}

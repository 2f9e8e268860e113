//! Real DICOM files nobody here wrote (pydicom and pydicom-data wheels) decode to the same HU
//! as pydicom(+pylibjpeg); a multi-slice series transcoded by dcmtk and gdcm into every lossless
//! transfer syntax decodes to the identical volume.

mod support;

use osteo_dicom::{DicomError, DicomSource, IngestOptions, ingest};
use std::path::{Path, PathBuf};
use support::*;

/// Transfer syntaxes whose pixel data is lossy: decoders may legitimately differ slightly.
const LOSSY: [&str; 2] = ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.91"];

fn ingest_path(p: &Path) -> Result<osteo_dicom::ingest::Ingested, DicomError> {
    ingest(
        DicomSource::Path(p.to_path_buf()),
        &IngestOptions::default(),
    )
}

#[test]
fn every_real_ct_file_matches_pydicom_hu() {
    let files: Vec<PathBuf> = reference(&["list", testdata().to_str().expect("utf-8")])
        .lines()
        .map(PathBuf::from)
        .collect();
    assert!(
        files.len() >= 15,
        "expected the real CT files of both wheels, found {}",
        files.len()
    );
    let out = tempfile::tempdir().expect("tempdir");
    let mut args = vec!["dump", out.path().to_str().expect("utf-8")];
    args.extend(files.iter().map(|f| f.to_str().expect("utf-8")));
    reference(&args);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("manifest.json")).expect("manifest"))
            .expect("json");
    let mut checked_512 = 0;
    let mut stored_i16 = 0;
    for (i, entry) in manifest.as_array().expect("array").iter().enumerate() {
        let file = &files[i];
        let expected = read_f32(&out.path().join(format!("{i}.f32")));
        let shape: Vec<usize> = entry["shape"]
            .as_array()
            .expect("shape")
            .iter()
            .map(|v| v.as_u64().expect("u64") as usize)
            .collect();
        let ts = entry["transfer_syntax"].as_str().expect("ts");
        let vol = ingest_path(file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .volume;
        assert_eq!(vol.dims.to_vec(), shape, "{}: shape", file.display());
        let (max_diff, n_diff) = diff(&vol.hu.to_f32(), &expected);
        if LOSSY.contains(&ts) {
            // Lossy codecs: independent decoders may round differently by one stored value.
            let tolerance = 1.0 + f32::EPSILON;
            assert!(
                max_diff <= tolerance * 40.0,
                "{}: lossy max diff {max_diff}",
                file.display()
            );
        } else {
            assert_eq!(
                n_diff,
                0,
                "{}: {n_diff} voxels differ (max {max_diff}) from pydicom",
                file.display()
            );
        }
        if shape[1] == 512 {
            checked_512 += 1;
        }
        // Integral HU (every CT here) are stored as i16: exact, half the memory.
        if expected
            .iter()
            .all(|v| v.fract() == 0.0 && v.abs() <= 32767.0)
        {
            assert!(
                matches!(vol.hu, osteo_dicom::Voxels::I16(_)),
                "{}: integral HU stored as f32",
                file.display()
            );
            stored_i16 += 1;
        }
    }
    eprintln!(
        "{stored_i16} of {} real CT files stored as i16",
        files.len()
    );
    assert!(
        checked_512 >= 6,
        "expected several 512x512 real CTs, checked {checked_512}"
    );
}

/// Transcodes every file of `src` into `dst` with a tool invocation.
fn transcode(src: &Path, dst: &Path, program: &str, pre: &[&str]) {
    std::fs::create_dir_all(dst).expect("mkdir");
    for entry in std::fs::read_dir(src).expect("read_dir") {
        let f = entry.expect("entry").path();
        let target = dst.join(f.file_name().expect("name"));
        let mut args: Vec<&Path> = pre.iter().map(Path::new).collect();
        args.push(&f);
        args.push(&target);
        tool(program, &args);
    }
}

#[test]
fn transcoded_series_decode_to_the_identical_volume() {
    let work = tempfile::tempdir().expect("tempdir");
    let src = work.path().join("explicit");
    let source = data_store("693_UNCR.dcm");
    reference(&[
        "make-series",
        source.to_str().expect("utf-8"),
        src.to_str().expect("utf-8"),
        "12",
    ]);
    let refdir = work.path().join("ref");
    let mut args = vec!["series".to_string(), refdir.display().to_string()];
    let mut names: Vec<PathBuf> = std::fs::read_dir(&src)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .collect();
    names.sort();
    args.extend(names.iter().map(|p| p.display().to_string()));
    reference(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let expected = read_f32(&refdir.join("series.f32"));

    let syntaxes: [(&str, &str, &[&str], &str); 9] = [
        ("implicit", "dcmconv", &["+ti"], "1.2.840.10008.1.2"),
        ("big-endian", "dcmconv", &["+tb"], "1.2.840.10008.1.2.2"),
        ("deflate", "dcmconv", &["+td"], "1.2.840.10008.1.2.1.99"),
        ("rle-dcmtk", "dcmcrle", &[], "1.2.840.10008.1.2.5"),
        ("rle-gdcm", "gdcmconv", &["--rle"], "1.2.840.10008.1.2.5"),
        (
            "jpeg-lossless-sv1",
            "dcmcjpeg",
            &["+e1"],
            "1.2.840.10008.1.2.4.70",
        ),
        (
            "jpeg-lossless",
            "dcmcjpeg",
            &["+el"],
            "1.2.840.10008.1.2.4.57",
        ),
        ("jpeg-ls", "dcmcjpls", &["+el"], "1.2.840.10008.1.2.4.80"),
        ("jpeg2000", "gdcmconv", &["--j2k"], "1.2.840.10008.1.2.4.90"),
    ];
    let original = ingest_path(&src).expect("explicit VR little endian").volume;
    // The same files as an explicit list in reverse order, and as in-memory buffers.
    let reversed: Vec<PathBuf> = names.iter().rev().cloned().collect();
    let listed = ingest(DicomSource::Paths(reversed), &IngestOptions::default())
        .expect("paths")
        .volume;
    assert_eq!(
        listed, original,
        "a list of paths in any order gives the same volume"
    );
    let buffers: Vec<Vec<u8>> = names
        .iter()
        .rev()
        .map(|p| std::fs::read(p).expect("read"))
        .collect();
    let from_memory = ingest(DicomSource::Buffers(buffers), &IngestOptions::default())
        .expect("buffers")
        .volume;
    assert_eq!(
        from_memory, original,
        "in-memory buffers give the same volume"
    );
    assert_eq!(original.dims, [12, 512, 512]);
    assert_eq!(
        diff(&original.hu.to_f32(), &expected).1,
        0,
        "explicit VR LE differs from pydicom"
    );
    assert!((original.spacing_mm[0] - 2.5).abs() < 1e-9);
    for (name, program, pre, uid) in syntaxes {
        let dst = work.path().join(name);
        transcode(&src, &dst, program, pre);
        let vol = ingest_path(&dst)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .volume;
        assert_eq!(
            vol.summary.transfer_syntaxes,
            vec![uid.to_string()],
            "{name}: transfer syntax"
        );
        assert_eq!(vol.dims, original.dims, "{name}: dims");
        let (max_diff, n_diff) = diff(&vol.hu.to_f32(), &original.hu.to_f32());
        assert_eq!(n_diff, 0, "{name}: {n_diff} voxels differ (max {max_diff})");
        assert_eq!(vol.origin_mm, original.origin_mm, "{name}: origin");
    }

    // 12-bit JPEG extended has no offline decoder: refused with its name.
    let ext = work.path().join("jpeg-extended");
    transcode(&src, &ext, "dcmcjpeg", &["+ee"]);
    let err = ingest_path(&ext).expect_err("JPEG extended is refused");
    let msg = err.to_string();
    assert!(
        matches!(err, DicomError::UnsupportedTransferSyntax { .. }),
        "{msg}"
    );
    assert!(
        msg.contains("JPEG Extended") && msg.contains("1.2.840.10008.1.2.4.51"),
        "{msg}"
    );

    // JPEG baseline (lossy, 8-bit with a rescale): decodes, close to the original in HU.
    let base = work.path().join("jpeg-baseline");
    transcode(&src, &base, "dcmcjpeg", &["+eb"]);
    let vol = ingest_path(&base).expect("baseline decodes").volume;
    assert_eq!(
        vol.summary.transfer_syntaxes,
        vec!["1.2.840.10008.1.2.4.50".to_string()]
    );
    let mean_abs: f64 = vol
        .hu
        .to_f32()
        .iter()
        .zip(&original.hu.to_f32())
        .map(|(a, b)| f64::from((a - b).abs()))
        .sum::<f64>()
        / vol.hu.len() as f64;
    assert!(mean_abs < 40.0, "baseline mean abs HU error {mean_abs}");
}

#[test]
fn enhanced_multiframe_ct_frames_are_slices_in_normal_order() {
    let vol = ingest_path(&data_store("eCT_Supplemental.dcm"))
        .expect("enhanced CT")
        .volume;
    assert_eq!(vol.dims, [2, 512, 512]);
    assert!(
        (vol.spacing_mm[0] - 10.0).abs() < 1e-6,
        "frames 10 mm apart: {:?}",
        vol.spacing_mm
    );
    // Row direction is -x in this file; the slice normal is therefore -z.
    assert!(
        (vol.direction[2][2] + 1.0).abs() < 1e-9,
        "{:?}",
        vol.direction
    );
    // Rescale comes from the shared functional groups: air is -1024 HU, not 0.
    assert_eq!(vol.summary.hu_min, -1024.0);
}

#[test]
fn vr_un_attributes_are_read_through_the_dictionary() {
    // A real file (pydicom-data) whose geometry and rescale attributes are all VR UN.
    let vol = ingest_path(&data_store("explicit_VR-UN.dcm"))
        .expect("VR-UN file")
        .volume;
    assert_eq!(vol.summary.modality, "CT");
    assert_eq!(
        vol.spacing_mm[1], 0.859375,
        "PixelSpacing read from UN bytes"
    );
    assert_eq!(
        vol.origin_mm,
        [0.0, 0.0, -121.0],
        "ImagePositionPatient read from UN bytes"
    );
}

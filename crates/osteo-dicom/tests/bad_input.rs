//! Bad and awkward input: every case is a clear error naming the file and attribute (or a correct
//! result), never a panic.

mod support;

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;
use osteo_dicom::{DicomError, DicomSource, IngestLimits, IngestOptions, ingest};
use std::path::{Path, PathBuf};
use support::*;

fn ct_small() -> DefaultDicomObject {
    dicom_object::open_file(pydicom_file("CT_small.dcm")).expect("CT_small opens")
}

fn run(source: DicomSource) -> Result<osteo_dicom::ingest::Ingested, DicomError> {
    ingest(source, &IngestOptions::default())
}

fn write(obj: &DefaultDicomObject, dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    obj.write_to_file(&p).expect("write");
    p
}

fn bytes_of(obj: &DefaultDicomObject) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::read(write(obj, dir.path(), "x.dcm")).expect("read")
}

/// A copy of CT_small moved to slice position `z` in series `series`.
fn slice(series: &str, z: f64) -> DefaultDicomObject {
    let mut o = ct_small();
    o.put(DataElement::new(
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from(series),
    ));
    let ipp = format!("-158.135803\\-179.035797\\{z}");
    o.put(DataElement::new(
        tags::IMAGE_POSITION_PATIENT,
        VR::DS,
        PrimitiveValue::from(ipp.as_str()),
    ));
    o
}

#[test]
fn zero_bytes_random_bytes_and_truncation_are_parse_errors() {
    let err = run(DicomSource::Buffers(vec![Vec::new()])).expect_err("empty");
    assert!(
        err.to_string().contains("upload file #0") && err.to_string().contains("empty"),
        "{err}"
    );

    let mut state = 0x2545_f491_4f6c_dd1du64;
    let random: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let err = run(DicomSource::Buffers(vec![random.clone()])).expect_err("random");
    assert!(matches!(err, DicomError::Parse { .. }), "{err}");
    // Random bytes behind a valid preamble and magic code.
    let mut fake = vec![0u8; 128];
    fake.extend_from_slice(b"DICM");
    fake.extend_from_slice(&random);
    let err = run(DicomSource::Buffers(vec![fake])).expect_err("random after magic");
    assert!(
        matches!(
            err,
            DicomError::Parse { .. } | DicomError::InvalidAttribute { .. }
        ),
        "{err}"
    );
    assert!(err.to_string().starts_with("upload file #0"), "{err}");

    let good = std::fs::read(data_store("693_UNCR.dcm")).expect("read");
    for cut in [100, 140, 1000, good.len() / 2, good.len() - 2] {
        let err = run(DicomSource::Buffers(vec![good[..cut].to_vec()])).expect_err("truncated");
        let msg = err.to_string();
        assert!(msg.starts_with("upload file #0"), "cut {cut}: {msg}");
    }
    // The same on disk names the path.
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("truncated.dcm");
    std::fs::write(&p, &good[..good.len() / 2]).expect("write");
    let err = run(DicomSource::Path(p)).expect_err("truncated file");
    assert!(err.to_string().contains("truncated.dcm"), "{err}");
}

#[test]
fn mutated_files_never_panic() {
    let good = std::fs::read(pydicom_file("CT_small.dcm")).expect("read");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    for _ in 0..1500 {
        let mut bytes = good.clone();
        for _ in 0..(1 + next() % 8) {
            let i = next() % bytes.len().min(2000);
            bytes[i] = next() as u8;
        }
        // Either a volume or an error: both are fine; a panic or a runaway allocation fails.
        let _ = run(DicomSource::Buffers(vec![bytes]));
    }
}

#[test]
fn element_lengths_beyond_the_file_are_refused_before_allocation() {
    // (0009,10E7) UL in CT_small, its tag bumped so that the parser sees a ~970 MB length.
    let mut bytes = std::fs::read(pydicom_file("CT_small.dcm")).expect("read");
    bytes[903] = 212;
    let err = run(DicomSource::Buffers(vec![bytes])).expect_err("absurd length");
    assert!(err.to_string().contains("remain in the file"), "{err}");
    // A sequence whose declared length passes the end of the file.
    let mut enhanced = std::fs::read(data_store("eCT_Supplemental.dcm")).expect("read");
    let at = enhanced
        .windows(4)
        .position(|w| w == [0x00, 0x52, 0x30, 0x92])
        .expect("PerFrameFunctionalGroupsSequence");
    enhanced[at + 8..at + 12].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
    let err = run(DicomSource::Buffers(vec![enhanced])).expect_err("sequence too long");
    assert!(err.to_string().contains("remain in the file"), "{err}");
}

#[test]
fn missing_pixel_data_names_the_attribute() {
    let mut o = ct_small();
    o.remove_element(tags::PIXEL_DATA);
    let err = run(DicomSource::Buffers(vec![bytes_of(&o)])).expect_err("no pixels");
    assert!(matches!(err, DicomError::MissingAttribute { .. }), "{err}");
    assert!(err.to_string().contains("PixelData (7FE0,0010)"), "{err}");
}

#[test]
fn huge_declared_sizes_are_refused_before_allocation() {
    let mut o = ct_small();
    o.put(DataElement::new(
        tags::ROWS,
        VR::US,
        PrimitiveValue::from(65535u16),
    ));
    o.put(DataElement::new(
        tags::COLUMNS,
        VR::US,
        PrimitiveValue::from(65535u16),
    ));
    let err = run(DicomSource::Buffers(vec![bytes_of(&o)])).expect_err("huge");
    assert!(matches!(err, DicomError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("65535 x 65535"), "{err}");

    // Encapsulated (JPEG 2000) pixel data claiming 60000 x 60000: refused before decoding.
    let mut j = dicom_object::open_file(data_store("693_J2KR.dcm")).expect("open");
    j.put(DataElement::new(
        tags::ROWS,
        VR::US,
        PrimitiveValue::from(60000u16),
    ));
    j.put(DataElement::new(
        tags::COLUMNS,
        VR::US,
        PrimitiveValue::from(60000u16),
    ));
    assert!(matches!(
        run(DicomSource::Buffers(vec![bytes_of(&j)])),
        Err(DicomError::TooLarge { .. })
    ));

    // Frames: NumberOfFrames claiming millions.
    let mut f = ct_small();
    f.put(DataElement::new(
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        PrimitiveValue::from("9999999"),
    ));
    assert!(matches!(
        run(DicomSource::Buffers(vec![bytes_of(&f)])),
        Err(DicomError::TooLarge { .. })
    ));

    // Total bytes over a configured limit: refused before reading further files.
    let limits = IngestLimits {
        max_total_bytes: 50_000,
        ..Default::default()
    };
    let opts = IngestOptions {
        limits,
        ..Default::default()
    };
    let b = bytes_of(&ct_small());
    let err = ingest(DicomSource::Buffers(vec![b.clone(), b]), &opts).expect_err("over budget");
    assert!(err.to_string().contains("upload file #1"), "{err}");
}

#[test]
fn a_directory_mixing_two_series_selects_the_larger_or_the_requested_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, z) in [0.0, 5.0, 10.0].iter().enumerate() {
        write(&slice("1.2.3.4.1", *z), dir.path(), &format!("a{i}.dcm"));
    }
    for (i, z) in [0.0, 5.0].iter().enumerate() {
        write(&slice("1.2.3.4.2", *z), dir.path(), &format!("b{i}.dcm"));
    }
    let got = run(DicomSource::Path(dir.path().into())).expect("mixed directory");
    assert_eq!(got.volume.dims[0], 3);
    assert_eq!(got.volume.summary.series_count, 2);
    let opts = IngestOptions {
        series_uid: Some("1.2.3.4.2".into()),
        ..Default::default()
    };
    let b = ingest(DicomSource::Path(dir.path().into()), &opts).expect("explicit series");
    assert_eq!(b.volume.dims[0], 2);
    let opts = IngestOptions {
        series_uid: Some("9.9".into()),
        ..Default::default()
    };
    let err = ingest(DicomSource::Path(dir.path().into()), &opts).expect_err("unknown series");
    assert!(
        matches!(err, DicomError::SeriesNotFound { .. })
            && err.to_string().contains("\"CT\" with 3 slice(s)")
            && !err.to_string().contains("1.2.3.4")
            && !err.to_string().contains("9.9"),
        "no UID, requested or present, in the message: {err}"
    );
}

#[test]
fn inconsistent_series_are_rejected_with_the_file_and_attribute() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(&slice("1.2.3.5", 0.0), dir.path(), "a.dcm");
    write(&slice("1.2.3.5", 0.0), dir.path(), "b.dcm");
    let err = run(DicomSource::Path(dir.path().into())).expect_err("duplicate position");
    assert!(
        err.to_string().contains("ImagePositionPatient") && err.to_string().contains("b.dcm"),
        "{err}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    for (i, z) in [0.0, 5.0, 10.0, 25.0].iter().enumerate() {
        write(&slice("1.2.3.6", *z), dir.path(), &format!("s{i}.dcm"));
    }
    let err = run(DicomSource::Path(dir.path().into())).expect_err("gap");
    assert!(err.to_string().contains("uneven slice spacing"), "{err}");

    let dir = tempfile::tempdir().expect("tempdir");
    write(&slice("1.2.3.7", 0.0), dir.path(), "a.dcm");
    let mut other = dicom_object::open_file(data_store("693_UNCR.dcm")).expect("open");
    other.put(DataElement::new(
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from("1.2.3.7"),
    ));
    write(&other, dir.path(), "z.dcm");
    let err = run(DicomSource::Path(dir.path().into())).expect_err("size mismatch");
    assert!(
        matches!(err, DicomError::InconsistentSeries { .. })
            && err.to_string().contains("Rows/Columns"),
        "{err}"
    );
}

#[test]
fn rescale_stored_as_vr_un_gives_the_same_hu_and_absurd_rescale_is_refused() {
    let original = run(DicomSource::Buffers(vec![bytes_of(&ct_small())]))
        .expect("original")
        .volume;
    let mut un = ct_small();
    un.put(DataElement::new(
        tags::RESCALE_INTERCEPT,
        VR::UN,
        PrimitiveValue::from(b"-1024 ".to_vec()),
    ));
    un.put(DataElement::new(
        tags::RESCALE_SLOPE,
        VR::UN,
        PrimitiveValue::from(b"1 ".to_vec()),
    ));
    let fixed = run(DicomSource::Buffers(vec![bytes_of(&un)]))
        .expect("VR-UN rescale")
        .volume;
    assert_eq!(fixed.hu, original.hu, "VR-UN rescale must give the same HU");
    assert_eq!(fixed.summary.hu_min, original.summary.hu_min);

    let mut absurd = ct_small();
    absurd.put(DataElement::new(
        tags::RESCALE_SLOPE,
        VR::DS,
        PrimitiveValue::from("1e9"),
    ));
    let err = run(DicomSource::Buffers(vec![bytes_of(&absurd)])).expect_err("absurd slope");
    assert!(
        err.to_string().contains("RescaleSlope (0028,1053)"),
        "{err}"
    );
}

#[test]
fn non_ct_input_is_refused() {
    let err = run(DicomSource::Path(pydicom_file("MR_small.dcm"))).expect_err("MR");
    assert!(
        matches!(err, DicomError::NoCtImages { .. }) && err.to_string().contains("\"MR\""),
        "{err}"
    );
}

#[test]
fn no_attribute_value_reaches_an_error_message() {
    // A value that could be a patient's name, planted in every attribute ingest reads.
    const PLANTED: &str = "DOE^JANE^PLANTED";
    let cases = [
        (tags::RESCALE_SLOPE, VR::DS),
        (tags::RESCALE_INTERCEPT, VR::DS),
        (tags::PIXEL_SPACING, VR::DS),
        (tags::SLICE_THICKNESS, VR::DS),
        (tags::IMAGE_POSITION_PATIENT, VR::DS),
        (tags::IMAGE_ORIENTATION_PATIENT, VR::DS),
        (tags::NUMBER_OF_FRAMES, VR::IS),
        (tags::MODALITY, VR::CS),
        (tags::PHOTOMETRIC_INTERPRETATION, VR::CS),
        (tags::SERIES_INSTANCE_UID, VR::UI),
        (tags::ROWS, VR::UN),
        (tags::RESCALE_SLOPE, VR::UN),
    ];
    let mut refused = 0;
    for (tag, vr) in cases {
        let mut o = ct_small();
        o.put(DataElement::new(tag, vr, PrimitiveValue::from(PLANTED)));
        let Err(err) = run(DicomSource::Buffers(vec![bytes_of(&o)])) else {
            continue;
        };
        refused += 1;
        let msg = err.to_string();
        assert!(
            !msg.contains("DOE") && !msg.contains("PLANTED"),
            "{tag}: {msg}"
        );
    }
    assert!(refused >= 8, "most planted values are refused: {refused}");
    // An unknown requested series is not echoed either.
    let opts = IngestOptions {
        series_uid: Some(PLANTED.into()),
        ..Default::default()
    };
    let err = ingest(DicomSource::Buffers(vec![bytes_of(&ct_small())]), &opts).expect_err("series");
    assert!(!err.to_string().contains("DOE"), "{err}");
}

/// A 256 x 256 slice at `z` (pixels past the 64 KiB the reader takes first), with varied values.
fn large_slice(z: f64) -> DefaultDicomObject {
    let mut o = slice("1.2.3.6", z);
    o.put(DataElement::new(
        tags::ROWS,
        VR::US,
        PrimitiveValue::from(256u16),
    ));
    o.put(DataElement::new(
        tags::COLUMNS,
        VR::US,
        PrimitiveValue::from(256u16),
    ));
    let pixels: Vec<u16> = (0..256 * 256u32)
        .map(|i| ((i * 7 + z as u32 * 131) % 4000) as u16)
        .collect();
    o.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(pixels.into()),
    ));
    o
}

#[test]
fn files_on_disk_decode_like_uploads_and_a_file_changed_mid_ingest_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut paths = Vec::new();
    for (i, z) in [0.0, 5.0, 10.0].iter().enumerate() {
        paths.push(write(&large_slice(*z), dir.path(), &format!("s{i}.dcm")));
    }
    // A header longer than the first read: a 70 kB private value before the pixels.
    let mut long = large_slice(15.0);
    long.put(DataElement::new(
        dicom_core::Tag(0x0009, 0x0010),
        VR::LO,
        PrimitiveValue::from("OSTEO TEST"),
    ));
    long.put(DataElement::new(
        dicom_core::Tag(0x0009, 0x1001),
        VR::OB,
        PrimitiveValue::U8(vec![7u8; 70_000].into()),
    ));
    paths.push(write(&long, dir.path(), "s3.dcm"));
    let from_disk = run(DicomSource::Path(dir.path().into())).expect("from disk");
    let buffers = paths
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect();
    let uploaded = run(DicomSource::Buffers(buffers)).expect("uploaded");
    assert_eq!(from_disk.volume.dims, [4, 256, 256]);
    assert_eq!(from_disk.volume.hu, uploaded.volume.hu);
    assert!(matches!(from_disk.volume.hu, osteo_dicom::Voxels::I16(_)));

    // Headers read, pixels not yet: a file replaced in between is refused, not mixed in.
    let planned =
        osteo_dicom::plan(DicomSource::Path(dir.path().into()), &Default::default()).expect("plan");
    let mut grown = std::fs::read(&paths[1]).expect("read");
    grown.extend_from_slice(&[0, 0]);
    std::fs::write(&paths[1], grown).expect("rewrite");
    let err = planned.decode().expect_err("changed file");
    assert!(
        matches!(err, DicomError::Io { .. })
            && err.to_string().contains("s1.dcm")
            && err.to_string().contains("changed while the study was read"),
        "{err}"
    );
}

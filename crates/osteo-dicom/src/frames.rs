//! Per-file header reading: image attributes, per-frame geometry (classic single-frame files and
//! Enhanced multi-frame functional groups) and size/rescale validation before decoding.

use crate::attrs::Parsed;
use crate::element::{attr_name, floats, floats_n, required_uint, text, uint};
use crate::error::DicomError;
use crate::limits::IngestLimits;
use crate::rescale::{integral, rescale, rescale_fits_i16};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

/// Geometry of one frame (slice) in patient coordinates.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FrameGeom {
    pub position: Option<[f64; 3]>,
    pub orientation: Option<[f64; 6]>,
    pub pixel_spacing: Option<[f64; 2]>,
    pub slice_thickness: Option<f64>,
}

/// What one file says about itself, read before any pixel is decoded.
#[derive(Debug, Clone)]
pub(crate) struct FileHeader {
    pub label: String,
    pub modality: String,
    pub series_uid: String,
    pub transfer_syntax: String,
    pub rows: u32,
    pub columns: u32,
    pub frames: Vec<FrameGeom>,
    pub has_pixel_data: bool,
    /// Whether every frame's rescale is integral (HU are integers).
    pub integral: bool,
    /// Whether, moreover, the whole stored range rescales into `i16`.
    pub fits_i16: bool,
}

/// The first item of sequence `seq` inside `item`.
fn first_item(item: &InMemDicomObject, seq: dicom_core::Tag) -> Option<&InMemDicomObject> {
    item.get(seq)?.items()?.first()
}

/// The functional-group macro `seq` for a frame: per-frame item first, then the shared item.
fn group_item<'a>(
    per_frame: Option<&'a InMemDicomObject>,
    shared: Option<&'a InMemDicomObject>,
    seq: dicom_core::Tag,
) -> Option<&'a InMemDicomObject> {
    per_frame
        .and_then(|f| first_item(f, seq))
        .or_else(|| shared.and_then(|s| first_item(s, seq)))
}

fn read_geom(item: &InMemDicomObject, file: &str, geom: &mut FrameGeom) -> Result<(), DicomError> {
    if let Some(p) = floats_n::<3>(item, file, tags::IMAGE_POSITION_PATIENT)? {
        geom.position = Some(p);
    }
    if let Some(o) = floats_n::<6>(item, file, tags::IMAGE_ORIENTATION_PATIENT)? {
        geom.orientation = Some(o);
    }
    if let Some(s) = floats_n::<2>(item, file, tags::PIXEL_SPACING)? {
        geom.pixel_spacing = Some(s);
    }
    if let Some(t) = floats(item, file, tags::SLICE_THICKNESS)? {
        geom.slice_thickness = Some(t[0]);
    }
    Ok(())
}

/// Reads and validates a file's header against the limits.
pub(crate) fn read_header(p: &Parsed, limits: &IngestLimits) -> Result<FileHeader, DicomError> {
    let file = p.label.as_str();
    let obj: &InMemDicomObject = &p.obj;
    let transfer_syntax = p
        .obj
        .meta()
        .transfer_syntax()
        .trim_end_matches(['\0', ' '])
        .to_string();
    let modality = text(obj, tags::MODALITY).unwrap_or_default();
    let series_uid = text(obj, tags::SERIES_INSTANCE_UID)
        .ok_or_else(|| DicomError::missing(file, &attr_name(tags::SERIES_INSTANCE_UID)))?;
    let has_pixel_data = p.has_pixel_data();
    if !has_pixel_data {
        return Ok(FileHeader {
            label: p.label.clone(),
            modality,
            series_uid,
            transfer_syntax,
            rows: 0,
            columns: 0,
            frames: Vec::new(),
            has_pixel_data,
            integral: false,
            fits_i16: false,
        });
    }
    let rows = required_uint(obj, file, tags::ROWS)?;
    let columns = required_uint(obj, file, tags::COLUMNS)?;
    if rows == 0 || columns == 0 {
        return Err(DicomError::invalid(
            file,
            "Rows/Columns (0028,0010/0011)",
            "must be positive",
        ));
    }
    let pixels = u64::from(rows) * u64::from(columns);
    if pixels > limits.max_pixels_per_slice {
        return Err(DicomError::TooLarge {
            file: file.to_string(),
            what: format!("Rows x Columns ({rows} x {columns}) pixels per slice"),
            value: pixels,
            limit: limits.max_pixels_per_slice,
        });
    }
    let n_frames = uint(obj, file, tags::NUMBER_OF_FRAMES)?.unwrap_or(1).max(1);
    if u64::from(n_frames) > limits.max_slices {
        return Err(DicomError::TooLarge {
            file: file.to_string(),
            what: attr_name(tags::NUMBER_OF_FRAMES),
            value: u64::from(n_frames),
            limit: limits.max_slices,
        });
    }
    let samples = uint(obj, file, tags::SAMPLES_PER_PIXEL)?.unwrap_or(1);
    if samples != 1 {
        return Err(DicomError::invalid(
            file,
            &attr_name(tags::SAMPLES_PER_PIXEL),
            "CT images must be greyscale (1 sample per pixel)",
        ));
    }
    let bits = required_uint(obj, file, tags::BITS_ALLOCATED)?;
    if !matches!(bits, 8 | 16 | 32) {
        return Err(DicomError::invalid(
            file,
            &attr_name(tags::BITS_ALLOCATED),
            "must be 8, 16 or 32",
        ));
    }
    if let Some(pi) = text(obj, tags::PHOTOMETRIC_INTERPRETATION)
        && pi != "MONOCHROME1"
        && pi != "MONOCHROME2"
    {
        return Err(DicomError::invalid(
            file,
            &attr_name(tags::PHOTOMETRIC_INTERPRETATION),
            "CT images must be MONOCHROME1 or MONOCHROME2",
        ));
    }
    check_native_length(p, rows, columns, n_frames, bits)?;

    let mut base = FrameGeom::default();
    read_geom(obj, file, &mut base)?;
    let base_rescale = rescale(obj, file)?.unwrap_or((1.0, 0.0));
    let bits_stored = uint(obj, file, tags::BITS_STORED)?
        .unwrap_or(bits)
        .clamp(1, bits);
    let signed = uint(obj, file, tags::PIXEL_REPRESENTATION)? == Some(1);
    let stored_range = if signed {
        let half = 2f64.powi(bits_stored as i32 - 1);
        (-half, half - 1.0)
    } else {
        (0.0, 2f64.powi(bits_stored as i32) - 1.0)
    };
    let mut integral_hu = integral(base_rescale);
    let mut fits_i16 = rescale_fits_i16(base_rescale, stored_range);
    let shared = obj
        .get(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|e| e.items()?.first());
    let per_frame: Vec<&InMemDicomObject> = obj
        .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|e| e.items())
        .map(|items| items.iter().collect())
        .unwrap_or_default();
    if !per_frame.is_empty() && per_frame.len() != n_frames as usize {
        return Err(DicomError::invalid(
            file,
            &attr_name(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE),
            format!("must have one item per frame (NumberOfFrames = {n_frames})"),
        ));
    }
    let mut frames = Vec::with_capacity(n_frames as usize);
    for f in 0..n_frames as usize {
        let mut geom = base;
        let pf = per_frame.get(f).copied();
        if pf.is_some() || shared.is_some() {
            for seq in [
                tags::PLANE_POSITION_SEQUENCE,
                tags::PLANE_ORIENTATION_SEQUENCE,
                tags::PIXEL_MEASURES_SEQUENCE,
            ] {
                if let Some(item) = group_item(pf, shared, seq) {
                    read_geom(item, file, &mut geom)?;
                }
            }
            if let Some(item) = group_item(pf, shared, tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE)
                && let Some(r) = rescale(item, file)?
            {
                integral_hu &= integral(r);
                fits_i16 &= rescale_fits_i16(r, stored_range);
            }
        }
        frames.push(geom);
    }
    Ok(FileHeader {
        label: p.label.clone(),
        modality,
        series_uid,
        transfer_syntax,
        rows,
        columns,
        frames,
        has_pixel_data,
        integral: integral_hu,
        fits_i16,
    })
}

/// For native (uncompressed) pixel data, the element must hold every declared frame.
fn check_native_length(
    p: &Parsed,
    rows: u32,
    columns: u32,
    frames: u32,
    bits: u32,
) -> Result<(), DicomError> {
    let have = match (&p.native, p.obj.get(tags::PIXEL_DATA).map(|e| e.value())) {
        (Some(native), _) => Some(native.len()),
        (None, Some(dicom_core::DicomValue::Primitive(v))) => Some(v.calculate_byte_len() as u64),
        _ => None,
    };
    if let Some(have) = have {
        let need = u64::from(rows) * u64::from(columns) * u64::from(frames) * u64::from(bits / 8);
        if have < need {
            return Err(DicomError::invalid(
                &p.label,
                &attr_name(tags::PIXEL_DATA),
                format!(
                    "Rows x Columns x NumberOfFrames x BitsAllocated/8 = {rows} x {columns} x {frames} x {} needs {need} bytes (truncated file?)",
                    bits / 8
                ),
            ));
        }
    }
    Ok(())
}

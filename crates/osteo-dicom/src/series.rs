//! Series grouping, selection and slice ordering.

use crate::element::attr_name;
use crate::error::DicomError;
use crate::frames::FileHeader;
use dicom_dictionary_std::tags;
use serde::Serialize;
use std::collections::BTreeMap;

/// |normal . z| above which a series counts as axial.
const AXIAL_MIN_COS: f64 = 0.8;
/// Largest accepted ratio between the largest and smallest slice gap.
const MAX_GAP_RATIO: f64 = 1.1;
/// Orientation cosines and pixel spacings must agree within this tolerance.
const GEOMETRY_TOLERANCE: f64 = 1e-3;

/// One series found in the input.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesInfo {
    /// SeriesInstanceUID.
    pub uid: String,
    /// Modality (empty when absent).
    pub modality: String,
    /// Files in the series.
    pub files: usize,
    /// Image slices (frames) in the series.
    pub slices: usize,
    /// Whether the slices are axial.
    pub axial: bool,
}

/// One slice of the selected series, in sorted order.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SliceRef {
    pub file: usize,
    pub frame: usize,
}

/// The selected series, ordered, with its geometry.
#[derive(Debug, Clone)]
pub(crate) struct Ordered {
    pub slices: Vec<SliceRef>,
    pub rows: u32,
    pub columns: u32,
    pub spacing_mm: [f64; 3],
    pub origin_mm: [f64; 3],
    pub direction: [[f64; 3]; 3],
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn normalise(v: [f64; 3]) -> Option<[f64; 3]> {
    let n = dot(v, v).sqrt();
    (n > 1e-6).then(|| [v[0] / n, v[1] / n, v[2] / n])
}

/// Row direction, column direction and slice normal from ImageOrientationPatient.
fn directions(o: [f64; 6]) -> Option<[[f64; 3]; 3]> {
    let r = normalise([o[0], o[1], o[2]])?;
    let c = normalise([o[3], o[4], o[5]])?;
    let n = normalise(cross(r, c))?;
    Some([r, c, n])
}

/// Groups files by SeriesInstanceUID (keys sorted for determinism).
pub(crate) fn group(headers: &[FileHeader]) -> BTreeMap<String, Vec<usize>> {
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, h) in headers.iter().enumerate() {
        groups.entry(h.series_uid.clone()).or_default().push(i);
    }
    groups
}

/// Describes every series.
pub(crate) fn describe(
    headers: &[FileHeader],
    groups: &BTreeMap<String, Vec<usize>>,
) -> Vec<SeriesInfo> {
    groups
        .iter()
        .map(|(uid, files)| {
            let first = &headers[files[0]];
            let axial = files
                .iter()
                .flat_map(|&f| headers[f].frames.iter())
                .any(|g| {
                    g.orientation
                        .and_then(directions)
                        .is_some_and(|d| d[2][2].abs() >= AXIAL_MIN_COS)
                });
            SeriesInfo {
                uid: uid.clone(),
                modality: first.modality.clone(),
                files: files.len(),
                slices: files.iter().map(|&f| headers[f].frames.len().max(1)).sum(),
                axial,
            }
        })
        .collect()
}

/// A Modality value as messages may show it: a well-formed code string (such as `CT` or `MR`,
/// never patient data) in quotes, anything else only as `(not a valid code string)`.
pub(crate) fn shown_modality(m: &str) -> String {
    let valid = !m.is_empty()
        && m.len() <= 16
        && m.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b' ');
    if valid {
        format!("\"{m}\"")
    } else {
        "(not a valid code string)".into()
    }
}

/// Picks the requested series, else the axial CT series with the most slices.
pub(crate) fn select(series: &[SeriesInfo], requested: Option<&str>) -> Result<String, DicomError> {
    let available = || {
        series
            .iter()
            .map(|s| format!("{} with {} slice(s)", shown_modality(&s.modality), s.slices))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(uid) = requested {
        return series
            .iter()
            .find(|s| s.uid == uid)
            .map(|s| s.uid.clone())
            .ok_or_else(|| DicomError::SeriesNotFound {
                available: available(),
            });
    }
    let ct = series.iter().filter(|s| s.modality == "CT");
    // Most slices first; axial preferred; ties broken by UID order (the iteration order).
    ct.max_by_key(|s| (s.axial, s.slices, std::cmp::Reverse(s.uid.clone())))
        .map(|s| s.uid.clone())
        .ok_or_else(|| {
            let found = series
                .iter()
                .map(|s| {
                    format!(
                        "{} file(s) of modality {}",
                        s.files,
                        shown_modality(&s.modality)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            DicomError::NoCtImages {
                details: format!("found {found}"),
            }
        })
}

fn inconsistent(file: &str, attribute: &str, details: String) -> DicomError {
    DicomError::InconsistentSeries {
        file: file.to_string(),
        attribute: attribute.to_string(),
        details,
    }
}

fn close(a: &[f64], b: &[f64]) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| (x - y).abs() <= GEOMETRY_TOLERANCE * (1.0 + x.abs().max(y.abs())))
}

/// Orders the frames of the selected files by position along the slice normal and checks that
/// they form one regular volume.
pub(crate) fn order(headers: &[FileHeader], files: &[usize]) -> Result<Ordered, DicomError> {
    let first = &headers[files[0]];
    let label0 = first.label.as_str();
    let mut all = Vec::new();
    for &f in files {
        let h = &headers[f];
        if !h.has_pixel_data {
            return Err(DicomError::missing(&h.label, &attr_name(tags::PIXEL_DATA)));
        }
        if h.modality != first.modality {
            return Err(inconsistent(
                &h.label,
                &attr_name(tags::MODALITY),
                format!(
                    "{} differs from {} in {label0}",
                    shown_modality(&h.modality),
                    shown_modality(&first.modality)
                ),
            ));
        }
        if (h.rows, h.columns) != (first.rows, first.columns) {
            return Err(inconsistent(
                &h.label,
                "Rows/Columns (0028,0010/0011)",
                format!(
                    "{}x{} differs from {}x{} in {label0}",
                    h.rows, h.columns, first.rows, first.columns
                ),
            ));
        }
        for (k, g) in h.frames.iter().enumerate() {
            all.push((SliceRef { file: f, frame: k }, *g));
        }
    }
    let g0 = all[0].1;
    let orientation = g0.orientation.unwrap_or([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
    let direction = directions(orientation).ok_or_else(|| {
        DicomError::invalid(
            label0,
            &attr_name(tags::IMAGE_ORIENTATION_PATIENT),
            "row and column cosines must be non-zero and not parallel",
        )
    })?;
    let pixel_spacing = g0.pixel_spacing.unwrap_or([1.0, 1.0]);
    if pixel_spacing.iter().any(|s| *s <= 0.0) {
        return Err(DicomError::invalid(
            label0,
            &attr_name(tags::PIXEL_SPACING),
            "must be positive",
        ));
    }
    for (s, g) in &all {
        let label = &headers[s.file].label;
        if let Some(o) = g.orientation
            && !close(&o, &orientation)
        {
            return Err(inconsistent(
                label,
                &attr_name(tags::IMAGE_ORIENTATION_PATIENT),
                format!("{o:?} differs from {orientation:?} in {label0}"),
            ));
        }
        if let Some(ps) = g.pixel_spacing
            && !close(&ps, &pixel_spacing)
        {
            return Err(inconsistent(
                label,
                &attr_name(tags::PIXEL_SPACING),
                format!("{ps:?} differs from {pixel_spacing:?} in {label0}"),
            ));
        }
    }
    let thickness = g0.slice_thickness.filter(|t| *t > 0.0).unwrap_or(0.0);
    if all.len() == 1 {
        return Ok(Ordered {
            slices: vec![all[0].0],
            rows: first.rows,
            columns: first.columns,
            spacing_mm: [thickness, pixel_spacing[0], pixel_spacing[1]],
            origin_mm: g0.position.unwrap_or([0.0; 3]),
            direction,
        });
    }
    let normal = direction[2];
    let mut keyed = Vec::with_capacity(all.len());
    for (s, g) in &all {
        let pos = g.position.ok_or_else(|| {
            DicomError::missing(
                &headers[s.file].label,
                &attr_name(tags::IMAGE_POSITION_PATIENT),
            )
        })?;
        keyed.push((dot(pos, normal), *s, pos));
    }
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
    let gaps: Vec<f64> = keyed.windows(2).map(|w| w[1].0 - w[0].0).collect();
    for (i, gap) in gaps.iter().enumerate() {
        if *gap < 1e-3 {
            let a = &headers[keyed[i].1.file].label;
            let b = &headers[keyed[i + 1].1.file].label;
            return Err(inconsistent(
                b,
                &attr_name(tags::IMAGE_POSITION_PATIENT),
                format!(
                    "same slice position as {a} ({:.3} mm along the normal): duplicate slice or two series with one SeriesInstanceUID",
                    keyed[i].0
                ),
            ));
        }
    }
    let (min_gap, max_gap) = gaps.iter().fold((f64::INFINITY, 0f64), |(lo, hi), g| {
        (lo.min(*g), hi.max(*g))
    });
    if max_gap > min_gap * MAX_GAP_RATIO {
        let i = gaps.iter().position(|g| *g == max_gap).unwrap_or(0);
        return Err(inconsistent(
            &headers[keyed[i + 1].1.file].label,
            &attr_name(tags::IMAGE_POSITION_PATIENT),
            format!(
                "uneven slice spacing: gaps range from {min_gap:.3} to {max_gap:.3} mm (missing slices?)"
            ),
        ));
    }
    let n = keyed.len();
    let spacing_z = (keyed[n - 1].0 - keyed[0].0) / (n - 1) as f64;
    Ok(Ordered {
        slices: keyed.iter().map(|k| k.1).collect(),
        rows: first.rows,
        columns: first.columns,
        spacing_mm: [spacing_z, pixel_spacing[0], pixel_spacing[1]],
        origin_mm: keyed[0].2,
        direction,
    })
}

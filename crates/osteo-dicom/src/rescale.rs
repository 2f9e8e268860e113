//! The rescale (RescaleSlope, RescaleIntercept) from stored values to HU: read and
//! validated, and whether it keeps integers integral and within `i16`.

use crate::element::{attr_name, floats};
use crate::error::DicomError;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

/// Largest accepted |RescaleSlope|: a larger slope means the attribute was misread.
const MAX_RESCALE_SLOPE: f64 = 1000.0;
/// Largest accepted |RescaleIntercept| in HU.
const MAX_RESCALE_INTERCEPT: f64 = 65536.0;

/// The rescale of `obj` (slope, intercept) where it states one, validated.
pub(crate) fn rescale(
    obj: &InMemDicomObject,
    file: &str,
) -> Result<Option<(f64, f64)>, DicomError> {
    let slope = floats(obj, file, tags::RESCALE_SLOPE)?.map(|v| v[0]);
    let intercept = floats(obj, file, tags::RESCALE_INTERCEPT)?.map(|v| v[0]);
    if let Some(s) = slope
        && (s == 0.0 || s.abs() > MAX_RESCALE_SLOPE)
    {
        return Err(DicomError::invalid(
            file,
            &attr_name(tags::RESCALE_SLOPE),
            format!(
                "must be non-zero and at most {MAX_RESCALE_SLOPE} in magnitude (a misread VR-UN value?)"
            ),
        ));
    }
    if let Some(i) = intercept
        && i.abs() > MAX_RESCALE_INTERCEPT
    {
        return Err(DicomError::invalid(
            file,
            &attr_name(tags::RESCALE_INTERCEPT),
            format!(
                "must be at most {MAX_RESCALE_INTERCEPT} HU in magnitude (a misread VR-UN value?)"
            ),
        ));
    }
    Ok((slope.is_some() || intercept.is_some())
        .then(|| (slope.unwrap_or(1.0), intercept.unwrap_or(0.0))))
}

/// Whether a rescale maps integers to integers.
pub(crate) fn integral((slope, intercept): (f64, f64)) -> bool {
    slope.fract() == 0.0 && intercept.fract() == 0.0
}

/// Whether stored values in `[lo, hi]` rescaled by `(slope, intercept)` are integers in `i16`.
pub(crate) fn rescale_fits_i16((slope, intercept): (f64, f64), (lo, hi): (f64, f64)) -> bool {
    let range = f64::from(i16::MIN)..=f64::from(i16::MAX);
    integral((slope, intercept))
        && range.contains(&(lo * slope + intercept))
        && range.contains(&(hi * slope + intercept))
}

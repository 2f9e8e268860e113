//! Reading one attribute of a parsed DICOM object: its keyword and tag for messages, its text,
//! its numbers and its unsigned integers, each checked and named in the error it gives.

use crate::error::DicomError;
use dicom_core::Tag;
use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::header::HasLength;
use dicom_dictionary_std::StandardDataDictionary;
use dicom_object::InMemDicomObject;

/// `Keyword (gggg,eeee)` for error messages.
pub(crate) fn attr_name(tag: Tag) -> String {
    match StandardDataDictionary.by_tag(tag) {
        Some(entry) => format!(
            "{} ({:04X},{:04X})",
            entry.alias(),
            tag.group(),
            tag.element()
        ),
        None => format!("({:04X},{:04X})", tag.group(), tag.element()),
    }
}

/// Trimmed string value of an attribute, `None` when absent or empty.
pub(crate) fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let s = obj.get(tag)?.to_str().ok()?;
    let s = s.trim_matches(['\0', ' ']).to_string();
    (!s.is_empty()).then_some(s)
}

/// All numeric values of a decimal/integer/binary attribute; `None` when absent or empty.
pub(crate) fn floats(
    obj: &InMemDicomObject,
    file: &str,
    tag: Tag,
) -> Result<Option<Vec<f64>>, DicomError> {
    let Some(e) = obj.get(tag) else {
        return Ok(None);
    };
    if e.is_empty() {
        return Ok(None);
    }
    let values = e.to_multi_float64().map_err(|err| {
        DicomError::invalid(file, &attr_name(tag), format!("not a number: {err}"))
    })?;
    if values.iter().any(|v| !v.is_finite()) {
        return Err(DicomError::invalid(
            file,
            &attr_name(tag),
            "not a finite number",
        ));
    }
    Ok(Some(values))
}

/// Exactly `N` numeric values, or `None` when absent.
pub(crate) fn floats_n<const N: usize>(
    obj: &InMemDicomObject,
    file: &str,
    tag: Tag,
) -> Result<Option<[f64; N]>, DicomError> {
    let Some(values) = floats(obj, file, tag)? else {
        return Ok(None);
    };
    let arr: [f64; N] = values
        .as_slice()
        .try_into()
        .map_err(|_| DicomError::invalid(file, &attr_name(tag), format!("expected {N} values")))?;
    Ok(Some(arr))
}

/// One unsigned integer value, or `None` when absent.
pub(crate) fn uint(
    obj: &InMemDicomObject,
    file: &str,
    tag: Tag,
) -> Result<Option<u32>, DicomError> {
    let Some(e) = obj.get(tag) else {
        return Ok(None);
    };
    if e.is_empty() {
        return Ok(None);
    }
    let v = e.to_int::<i64>().map_err(|err| {
        DicomError::invalid(file, &attr_name(tag), format!("not an integer: {err}"))
    })?;
    u32::try_from(v)
        .map(Some)
        .map_err(|_| DicomError::invalid(file, &attr_name(tag), "must be non-negative"))
}

/// A required unsigned integer.
pub(crate) fn required_uint(
    obj: &InMemDicomObject,
    file: &str,
    tag: Tag,
) -> Result<u32, DicomError> {
    uint(obj, file, tag)?.ok_or_else(|| DicomError::missing(file, &attr_name(tag)))
}

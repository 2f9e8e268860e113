//! What a series' header says about the patient for the clinical variables: age (PatientAge,
//! else PatientBirthDate and StudyDate), sex (PatientSex), height (PatientSize, metres) and
//! weight (PatientWeight, kg). These are patient data: [`Demographics`] prints as redacted in
//! debug output, and nothing here is logged; problems name the attribute, never its value.

use crate::element::{attr_name, text};
use crate::error::DicomError;
use dicom_core::Tag;
use dicom_core::header::HasLength;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use osteo_core::Sex;
use osteo_core::clinical::{AGE_YEARS, HEIGHT_CM, WEIGHT_KG};

/// One header value: absent, present but unusable (with why, never the value), or read.
#[derive(Clone, PartialEq)]
pub enum HeaderValue<T> {
    /// The attribute is absent or empty.
    Missing,
    /// The attribute is present but cannot be read; the reason names no value.
    Invalid(String),
    /// The value.
    Value(T),
}

/// PatientSex as the header codes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderSex {
    /// `F`.
    Female,
    /// `M`.
    Male,
    /// `O` (other).
    Other,
}

/// The demographic attributes of a series' header.
#[derive(Clone, PartialEq)]
pub struct Demographics {
    /// Age in years, with the attribute it came from.
    pub age_years: HeaderValue<f64>,
    /// The attribute the age was read from (or would have been).
    pub age_source: String,
    /// Sex.
    pub sex: HeaderValue<HeaderSex>,
    /// Height in metres (PatientSize).
    pub height_m: HeaderValue<f64>,
    /// Weight in kilograms (PatientWeight).
    pub weight_kg: HeaderValue<f64>,
}

impl Default for Demographics {
    fn default() -> Self {
        Self {
            age_years: HeaderValue::Missing,
            age_source: attr_name(tags::PATIENT_AGE),
            sex: HeaderValue::Missing,
            height_m: HeaderValue::Missing,
            weight_kg: HeaderValue::Missing,
        }
    }
}

impl std::fmt::Debug for Demographics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Demographics { <patient data> }")
    }
}

/// A DICOM date (DA, `YYYYMMDD`) as (year, month, day).
fn date(s: &str) -> Option<(i32, u32, u32)> {
    let s = s.trim();
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let y: i32 = s[0..4].parse().ok()?;
    let m: u32 = s[4..6].parse().ok()?;
    let d: u32 = s[6..8].parse().ok()?;
    ((1..=12).contains(&m) && (1..=31).contains(&d)).then_some((y, m, d))
}

/// Whole years between two dates (the later second).
fn years_between(born: (i32, u32, u32), on: (i32, u32, u32)) -> Option<f64> {
    let mut years = on.0 - born.0;
    if (on.1, on.2) < (born.1, born.2) {
        years -= 1;
    }
    (years >= 0).then_some(f64::from(years))
}

/// PatientAge (AS: `nnnD`, `nnnW`, `nnnM` or `nnnY`) in years.
fn age_string(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.len() != 4 {
        return None;
    }
    let n: f64 = s[..3].parse::<u32>().ok()?.into();
    match &s[3..] {
        "Y" => Some(n),
        "M" => Some(n / 12.0),
        "W" => Some(n * 7.0 / 365.25),
        "D" => Some(n / 365.25),
        _ => None,
    }
}

/// A decimal string attribute (DS) as a positive finite number.
fn positive(obj: &InMemDicomObject, tag: Tag) -> HeaderValue<f64> {
    match obj.get(tag) {
        None => HeaderValue::Missing,
        Some(e) if e.is_empty() => HeaderValue::Missing,
        Some(e) => match e.to_float64() {
            Ok(v) if v.is_finite() && v > 0.0 => HeaderValue::Value(v),
            Ok(_) => HeaderValue::Invalid("is not a positive number".into()),
            Err(_) => HeaderValue::Invalid("is not a number".into()),
        },
    }
}

impl Demographics {
    /// Reads the demographic attributes of one file of the series.
    pub(crate) fn read(obj: &InMemDicomObject) -> Self {
        let (age_years, age_source) = match text(obj, tags::PATIENT_AGE) {
            Some(s) => (
                age_string(&s).map_or_else(
                    || HeaderValue::Invalid("is not an age string such as 065Y".into()),
                    HeaderValue::Value,
                ),
                attr_name(tags::PATIENT_AGE),
            ),
            None => {
                let source = format!(
                    "{} and {}",
                    attr_name(tags::PATIENT_BIRTH_DATE),
                    attr_name(tags::STUDY_DATE)
                );
                let born = text(obj, tags::PATIENT_BIRTH_DATE);
                let on = text(obj, tags::STUDY_DATE);
                let age = match (born, on) {
                    (Some(b), Some(o)) => match (date(&b), date(&o)) {
                        (Some(b), Some(o)) => years_between(b, o).map_or_else(
                            || HeaderValue::Invalid("put the birth after the study".into()),
                            HeaderValue::Value,
                        ),
                        _ => HeaderValue::Invalid("are not dates such as 19580131".into()),
                    },
                    _ => HeaderValue::Missing,
                };
                (age, source)
            }
        };
        let sex = match text(obj, tags::PATIENT_SEX).as_deref() {
            None => HeaderValue::Missing,
            Some("F") => HeaderValue::Value(HeaderSex::Female),
            Some("M") => HeaderValue::Value(HeaderSex::Male),
            Some("O") => HeaderValue::Value(HeaderSex::Other),
            Some(_) => HeaderValue::Invalid("is not F, M or O".into()),
        };
        Self {
            age_years,
            age_source,
            sex,
            height_m: positive(obj, tags::PATIENT_SIZE),
            weight_kg: positive(obj, tags::PATIENT_WEIGHT),
        }
    }
}

/// The clinical variables a caller gave explicitly (they win over the header).
#[derive(Debug, Clone, Copy, Default)]
pub struct Explicit {
    /// Age in years.
    pub age_years: Option<f64>,
    /// Sex.
    pub sex: Option<Sex>,
    /// Height in centimetres.
    pub height_cm: Option<f64>,
    /// Weight in kilograms.
    pub weight_kg: Option<f64>,
}

/// Age, sex, height (cm) and weight (kg), complete.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Completed {
    /// Age in years.
    pub age_years: f64,
    /// Sex.
    pub sex: Sex,
    /// Height in centimetres.
    pub height_cm: f64,
    /// Weight in kilograms.
    pub weight_kg: f64,
}

/// A header value within `range` (after `scale`), or why not, naming the attribute only.
fn plausible(
    value: &HeaderValue<f64>,
    attribute: String,
    scale: f64,
    range: (f64, f64),
    unit: &str,
    field: &'static str,
) -> Result<f64, DicomError> {
    // "PatientBirthDate (...) and StudyDate (...)" are two attributes.
    let verb = if attribute.contains(" and ") {
        "are"
    } else {
        "is"
    };
    let problem = |reason: String| DicomError::Demographic {
        attribute: attribute.clone(),
        reason,
        field,
    };
    match value {
        HeaderValue::Missing => Err(problem(format!("{verb} missing"))),
        HeaderValue::Invalid(why) => Err(problem(why.clone())),
        HeaderValue::Value(v) => {
            let v = v * scale;
            if (range.0..=range.1).contains(&v) {
                Ok(v)
            } else {
                Err(problem(format!(
                    "{verb} implausible (outside {} to {} {unit})",
                    range.0, range.1
                )))
            }
        }
    }
}

impl Demographics {
    /// Completes `explicit` from the header: each variable not given is read from its attribute;
    /// a missing, unreadable or implausible one is an error naming the attribute (never its
    /// value) and the clinical variable to send instead.
    pub fn complete(&self, explicit: Explicit) -> Result<Completed, DicomError> {
        let age_years = match explicit.age_years {
            Some(v) => v,
            None => plausible(
                &self.age_years,
                self.age_source.clone(),
                1.0,
                AGE_YEARS,
                "years",
                "clinical.age_years",
            )?,
        };
        let sex = match explicit.sex {
            Some(s) => s,
            None => match &self.sex {
                HeaderValue::Value(HeaderSex::Female) => Sex::Female,
                HeaderValue::Value(HeaderSex::Male) => Sex::Male,
                other => {
                    return Err(DicomError::Demographic {
                        attribute: attr_name(tags::PATIENT_SEX),
                        reason: match other {
                            HeaderValue::Missing => "is missing".into(),
                            HeaderValue::Invalid(why) => why.clone(),
                            HeaderValue::Value(_) => {
                                "is neither F nor M, and the model needs female or male".into()
                            }
                        },
                        field: "clinical.sex",
                    });
                }
            },
        };
        let height_cm = match explicit.height_cm {
            Some(v) => v,
            None => plausible(
                &self.height_m,
                attr_name(tags::PATIENT_SIZE),
                100.0,
                HEIGHT_CM,
                "cm",
                "clinical.height_cm",
            )?,
        };
        let weight_kg = match explicit.weight_kg {
            Some(v) => v,
            None => plausible(
                &self.weight_kg,
                attr_name(tags::PATIENT_WEIGHT),
                1.0,
                WEIGHT_KG,
                "kg",
                "clinical.weight_kg",
            )?,
        };
        Ok(Completed {
            age_years,
            sex,
            height_cm,
            weight_kg,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue, VR};

    fn obj(elements: &[(Tag, VR, &str)]) -> InMemDicomObject {
        InMemDicomObject::from_element_iter(
            elements
                .iter()
                .map(|(t, vr, v)| DataElement::new(*t, *vr, PrimitiveValue::from(*v))),
        )
    }

    #[test]
    fn ages_come_from_patient_age_or_from_the_dates() {
        let d = Demographics::read(&obj(&[(tags::PATIENT_AGE, VR::AS, "065Y")]));
        assert!(d.age_years == HeaderValue::Value(65.0));
        let d = Demographics::read(&obj(&[(tags::PATIENT_AGE, VR::AS, "018M")]));
        assert!(d.age_years == HeaderValue::Value(1.5));
        let d = Demographics::read(&obj(&[
            (tags::PATIENT_BIRTH_DATE, VR::DA, "19580615"),
            (tags::STUDY_DATE, VR::DA, "20240614"),
        ]));
        assert!(d.age_years == HeaderValue::Value(65.0));
        assert!(d.age_source.contains("PatientBirthDate"));
        let d = Demographics::read(&obj(&[(tags::PATIENT_AGE, VR::AS, "65")]));
        assert!(matches!(d.age_years, HeaderValue::Invalid(_)));
        let d = Demographics::read(&obj(&[]));
        assert!(d.age_years == HeaderValue::Missing);
    }

    #[test]
    fn sex_height_and_weight_are_read_or_named_as_missing_or_invalid() {
        let d = Demographics::read(&obj(&[
            (tags::PATIENT_SEX, VR::CS, "F"),
            (tags::PATIENT_SIZE, VR::DS, "1.62"),
            (tags::PATIENT_WEIGHT, VR::DS, "58.5"),
        ]));
        assert!(d.sex == HeaderValue::Value(HeaderSex::Female));
        assert!(d.height_m == HeaderValue::Value(1.62));
        assert!(d.weight_kg == HeaderValue::Value(58.5));
        let d = Demographics::read(&obj(&[
            (tags::PATIENT_SEX, VR::CS, "X"),
            (tags::PATIENT_WEIGHT, VR::DS, "0"),
        ]));
        assert!(matches!(d.sex, HeaderValue::Invalid(_)));
        assert!(matches!(d.weight_kg, HeaderValue::Invalid(_)));
        assert!(d.height_m == HeaderValue::Missing);
        assert_eq!(format!("{d:?}"), "Demographics { <patient data> }");
    }

    #[test]
    fn explicit_values_win_and_gaps_name_the_attribute_and_the_field() {
        let d = Demographics::read(&obj(&[
            (tags::PATIENT_AGE, VR::AS, "070Y"),
            (tags::PATIENT_SEX, VR::CS, "F"),
            (tags::PATIENT_SIZE, VR::DS, "1.58"),
        ]));
        let e = d.complete(Explicit::default()).expect_err("no weight");
        let msg = e.to_string();
        assert!(
            msg.contains("PatientWeight (0010,1030) is missing")
                && msg.contains("clinical.weight_kg"),
            "{msg}"
        );
        let c = d
            .complete(Explicit {
                weight_kg: Some(52.0),
                age_years: Some(71.0),
                ..Explicit::default()
            })
            .expect("complete");
        assert_eq!(
            c,
            Completed {
                age_years: 71.0,
                sex: Sex::Female,
                height_cm: 158.0,
                weight_kg: 52.0
            }
        );
        // Implausible: 4.2 m tall; the message names the range, not the value.
        let tall = Demographics::read(&obj(&[(tags::PATIENT_SIZE, VR::DS, "4.2")]));
        let e = tall
            .complete(Explicit {
                age_years: Some(70.0),
                sex: Some(Sex::Male),
                weight_kg: Some(80.0),
                ..Explicit::default()
            })
            .expect_err("implausible");
        assert!(e.to_string().contains("implausible"), "{e}");
        assert!(!e.to_string().contains("4.2"), "{e}");
    }
}

//! The result as a FHIR R4 Bundle (type `collection`), for electronic health records that take
//! results as FHIR rather than DICOM. Following the mapping of HL7's DICOM SR to FHIR
//! implementation guide where it applies: the report (the SR's TID 1500 document) is a
//! DiagnosticReport coded as DCM 126000 "Imaging Measurement Report" that references the
//! ImagingStudy by its Study Instance UID; the measurement group's finding (the grade) and its
//! three measurements (the probabilities) are Observations; the algorithm (TID 4019) is a
//! Device with the model's name, version, weights digest, backend, device and OsteoServe's
//! version. No patient identifier beyond what the source study carries: the subject is the
//! study's PatientID (with its issuer), referenced by identifier, and only when the study has one.

use crate::{Graded, Producer};
use osteo_dicom::SourceStudy;
use osteo_dicom::attenuation::Attenuation;
use osteo_dicom::sr::{self, GRADE_CODES, GRADE_CONCEPT, PROBABILITY_CODES};
use serde_json::{Value, json};

/// FHIR's system URI of a DICOM coding scheme designator (the private `99OSTEO` as a URN).
fn system(scheme: &str) -> String {
    match scheme {
        "SCT" => "http://snomed.info/sct".into(),
        "LN" => "http://loinc.org".into(),
        "DCM" => "http://dicom.nema.org/resources/ontology/DCM".into(),
        "UCUM" => "http://unitsofmeasure.org".into(),
        other => format!("urn:osteoserve:codes:{other}"),
    }
}

/// A CodeableConcept of one DICOM code.
fn concept(c: osteo_dicom::sr::Code) -> Value {
    json!({
        "coding": [{"system": system(c.1), "code": c.0, "display": c.2}],
        "text": c.2,
    })
}

/// A string attribute of the source study, when present and not empty.
fn attribute(source: &SourceStudy, tag: dicom_core::Tag) -> Option<String> {
    source
        .elements
        .iter()
        .find(|e| e.header().tag == tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// A fresh `urn:uuid:` for a bundle entry.
fn urn() -> String {
    let b: u128 = rand::random();
    let h = format!("{b:032x}");
    format!(
        "urn:uuid:{}-{}-4{}-8{}-{}",
        &h[..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// The decision in the DiagnosticReport's conclusion: referral, prediction set, determinacy.
fn conclusion(d: &osteo_core::Decision) -> String {
    let mut out = format!(
        "; refer for DXA: {}; {:.0}% prediction set: {}",
        if d.refer { "yes" } else { "no" },
        d.coverage * 100.0,
        d.prediction_set.joined()
    );
    if d.indeterminate {
        out.push_str(". ");
        out.push_str(&sr::indeterminate_statement(d.coverage));
    }
    out
}

/// The statement a result of a model trained on synthetic data carries (the SR's).
pub const SYNTHETIC_NOTE: &str = osteo_dicom::sr::NOT_FOR_DIAGNOSIS;

/// The Bundle of a result: `graded` by `by`, of `source` when the model read a study, with the
/// vertebral attenuation when it was measured.
pub fn bundle(
    source: Option<&SourceStudy>,
    by: Producer<'_>,
    graded: &Graded,
    attenuation: Option<&Attenuation>,
) -> Value {
    let p = by.provenance();
    let now = osteo_core::utc::Utc::now().rfc3339();
    let subject = source
        .and_then(|s| {
            let id = attribute(s, dicom_dictionary_std::tags::PATIENT_ID)?;
            let mut identifier = json!({"value": id});
            if let Some(issuer) = attribute(s, dicom_dictionary_std::tags::ISSUER_OF_PATIENT_ID) {
                identifier["system"] = json!(format!("urn:osteoserve:issuer:{issuer}"));
            }
            Some(json!({"type": "Patient", "identifier": identifier}))
        })
        .map(|s| ("subject", s));
    let note = by
        .manifest
        .trained_on_synthetic()
        .then(|| ("note", json!([{"text": SYNTHETIC_NOTE}])));
    let category = json!([{
        "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "imaging",
            "display": "Imaging",
        }]
    }]);
    let device_url = urn();
    let device = json!({
        "resourceType": "Device",
        "status": "active",
        "manufacturer": "OsteoServe",
        "deviceName": [{"name": p.model, "type": "model-name"}],
        "version": [
            {"type": {"text": "model version"}, "value": p.version},
            {"type": {"text": "weights BLAKE3"}, "value": p.weights_blake3},
            {"type": {"text": "OsteoServe"}, "value": osteo_core::provenance::OSTEOSERVE_VERSION},
        ],
        "property": [
            {"type": {"text": "backend"}, "valueCode": [{"text": p.backend}]},
            {"type": {"text": "device"}, "valueCode": [{"text": p.device}]},
        ],
    });
    // Every Observation: status, category, subject, time, device, the statement.
    let observation = |code: Value, value: (&str, Value)| {
        let mut o = json!({
            "resourceType": "Observation",
            "status": "preliminary",
            "category": category,
            "code": code,
            "effectiveDateTime": now,
            "issued": now,
            "device": {"reference": device_url},
        });
        for (k, v) in [Some(value), subject.clone(), note.clone()]
            .into_iter()
            .flatten()
        {
            o[k] = v;
        }
        o
    };
    let grade_code = GRADE_CODES[graded.grade.index().min(2)];
    let mut grade = observation(
        concept(GRADE_CONCEPT),
        ("valueCodeableConcept", concept(grade_code)),
    );
    if graded.decision.is_some_and(|d| d.indeterminate) {
        grade["interpretation"] = json!([{
            "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                "code": "IND",
                "display": "Indeterminate",
            }]
        }]);
    }
    let mut entries = vec![(urn(), grade)];
    if let Some(d) = &graded.decision {
        entries.push((
            urn(),
            observation(concept(sr::REFER_CONCEPT), ("valueBoolean", json!(d.refer))),
        ));
        let mut set = observation(
            concept(sr::PREDICTION_SET_CONCEPT),
            ("valueString", json!(d.prediction_set.joined())),
        );
        set["component"] = d
            .prediction_set
            .grades()
            .iter()
            .map(|g| {
                json!({
                    "code": concept(sr::PREDICTION_SET_CONCEPT),
                    "valueCodeableConcept": concept(GRADE_CODES[g.index()]),
                })
            })
            .collect();
        entries.push((urn(), set));
    }
    for (p, code) in graded.probabilities.iter().zip(PROBABILITY_CODES) {
        let value = json!({
            "value": (f64::from(*p) * 1e6).round() / 1e6,
            "unit": "1",
            "system": "http://unitsofmeasure.org",
            "code": "1",
        });
        entries.push((urn(), observation(concept(code), ("valueQuantity", value))));
    }
    let sites = attenuation.into_iter().flat_map(|a| {
        a.vertebrae
            .iter()
            .map(|v| {
                (
                    sr::vertebra_tracking(v),
                    sr::vertebra_code(v.level),
                    v.trabecular_hu,
                )
            })
            .chain(
                a.femoral_necks
                    .iter()
                    .map(|n| (sr::neck_tracking(n), sr::PROXIMAL_FEMUR, n.trabecular_hu)),
            )
    });
    for (tracking, site, hu) in sites {
        let mut o = observation(
            concept(sr::ATTENUATION_CONCEPT),
            (
                "valueQuantity",
                json!({
                    "value": (hu * 10.0).round() / 10.0,
                    "unit": "HU",
                    "system": "http://unitsofmeasure.org",
                    "code": sr::HU_UNIT.0,
                }),
            ),
        );
        o["bodySite"] = concept(site);
        o["method"] = json!({"text": tracking});
        entries.push((urn(), o));
    }
    let mut report = json!({
        "resourceType": "DiagnosticReport",
        "status": "preliminary",
        "category": [{
            "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                "code": "RAD",
                "display": "Radiology",
            }]
        }],
        "code": concept(osteo_dicom::sr::Code("126000", "DCM", "Imaging Measurement Report")),
        "effectiveDateTime": now,
        "issued": now,
        "performer": [{"reference": device_url, "type": "Device"}],
        "result": entries.iter().map(|(url, _)| json!({"reference": url})).collect::<Vec<_>>(),
        "conclusion": format!(
            "{} (probability {:.3}){} by {}",
            grade_code.2,
            graded.probabilities[graded.grade.index().min(2)],
            graded.decision.as_ref().map_or_else(String::new, conclusion),
            p.line()
        ),
        "conclusionCode": [concept(grade_code)],
    });
    if let Some((k, v)) = subject.clone() {
        report[k] = v;
    }
    if let Some(study) = source.filter(|s| !s.study_uid.is_empty()) {
        report["imagingStudy"] = json!([{
            "type": "ImagingStudy",
            "identifier": {"system": "urn:dicom:uid", "value": format!("urn:oid:{}", study.study_uid)},
        }]);
    }
    let mut all = vec![(urn(), report)];
    all.extend(entries);
    all.push((device_url, device));
    json!({
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": now,
        "entry": all
            .into_iter()
            .map(|(url, resource)| json!({"fullUrl": url, "resource": resource}))
            .collect::<Vec<_>>(),
    })
}

/// The Bundle as pretty-printed JSON bytes.
pub fn bundle_json(
    source: Option<&SourceStudy>,
    by: Producer<'_>,
    graded: &Graded,
    attenuation: Option<&Attenuation>,
) -> Vec<u8> {
    let mut out =
        serde_json::to_vec_pretty(&bundle(source, by, graded, attenuation)).unwrap_or_default();
    out.push(b'\n');
    out
}

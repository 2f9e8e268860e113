//! The grade of a study as a DICOM Comprehensive SR in the source study: a new series, the
//! patient and study attributes copied from the source, and a TID 1500 Measurement Report
//! (Imaging Measurement Report > Imaging Measurements > Measurement Group, TID 1501) holding the
//! grade as the group's finding and as the report's qualitative evaluation, the three probabilities as
//! numeric measurements, the graded images as the source of measurement, the algorithm
//! identification (TID 4019: model name and version; backend, device, weights digest and
//! OsteoServe version as its parameters), the graded series as evidence and in
//! the Image Library, and, for a model trained on synthetic data, a statement that the result
//! is not for diagnosis (a TEXT beside the grade in Qualitative Evaluations). Written to
//! pass Pixelmed's DicomSRValidator (the IHE AI Results profile's validator) with no error and no
//! content item outside the template.
//!
//! Codes: DCM, LOINC and SNOMED CT where they exist and could be checked against the DICOM
//! context groups offline — the procedure CT unspecified body region LN 25045-6 (CID 100),
//! Normal SCT 17621005 (CID 222), Osteopenia (disorder) SCT 312894000, Osteoporosis (disorder)
//! SCT 64859006 — and the private scheme `99OSTEO` (documented in docs/dicom.md) for the grade
//! as a concept and the three probability measurements.

use crate::attenuation::{Level, NeckMeasurement, VertebraMeasurement};
use crate::error::DicomError;
use crate::source_study::SourceStudy;
pub use crate::write::new_uid;
use crate::write::{instance_references, now, part10, patient_and_study, sequence, text};
use dicom_core::VR;
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use osteo_core::provenance::Provenance;

/// The DICOM coding scheme.
const DCM: &str = "DCM";

/// The private coding scheme for concepts with no standard code.
pub const PRIVATE_SCHEME: &str = "99OSTEO";

/// A coded concept: value, scheme, meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code(pub &'static str, pub &'static str, pub &'static str);

/// The finding code of each grade, in class order normal, osteopenia, osteoporosis.
pub const GRADE_CODES: [Code; 3] = [
    Code("17621005", "SCT", "Normal"),
    Code("312894000", "SCT", "Osteopenia"),
    Code("64859006", "SCT", "Osteoporosis"),
];

/// The measurement code of each grade's probability, in class order.
pub const PROBABILITY_CODES: [Code; 3] = [
    Code(
        "P-NORMAL",
        PRIVATE_SCHEME,
        "Probability of normal bone density",
    ),
    Code("P-OSTEOPENIA", PRIVATE_SCHEME, "Probability of osteopenia"),
    Code(
        "P-OSTEOPOROSIS",
        PRIVATE_SCHEME,
        "Probability of osteoporosis",
    ),
];

/// What a result of a model trained on synthetic data states (the SR, the FHIR Bundle).
pub const NOT_FOR_DIAGNOSIS: &str =
    "This result comes from a model trained on synthetic data. It is not for diagnosis.";

/// The concept of the grade as a qualitative evaluation (its value one of [`GRADE_CODES`]).
pub const GRADE_CONCEPT: Code = Code(
    "BMD-GRADE",
    PRIVATE_SCHEME,
    "Bone density grade (WHO T-score category)",
);

/// The concept of the referral decision (its value [`YES`] or [`NO`]).
pub const REFER_CONCEPT: Code = Code("REFER-DXA", PRIVATE_SCHEME, "Referral for DXA recommended");
/// Yes (CID 230).
pub const YES: Code = Code("373066001", "SCT", "Yes");
/// No (CID 230).
pub const NO: Code = Code("373067005", "SCT", "No");
/// The concept of a grade in the conformal prediction set (one item per grade, value one of
/// [`GRADE_CODES`]).
pub const PREDICTION_SET_CONCEPT: Code = Code(
    "PREDICTION-SET",
    PRIVATE_SCHEME,
    "Grade in the conformal prediction set",
);
/// The concept of the grade's determinacy (value [`DETERMINATE`] or [`INDETERMINATE`]).
pub const DETERMINACY_CONCEPT: Code = Code(
    "DETERMINACY",
    PRIVATE_SCHEME,
    "Determinacy of the bone density grade",
);
/// A grade whose prediction set does not span normal to osteoporosis.
pub const DETERMINATE: Code = Code("DETERMINATE", PRIVATE_SCHEME, "Determinate");
/// A grade whose prediction set spans normal to osteoporosis.
pub const INDETERMINATE: Code = Code("INDETERMINATE", PRIVATE_SCHEME, "Indeterminate");

/// What an indeterminate result states, after the coverage in percent.
pub fn indeterminate_statement(coverage: f64) -> String {
    format!(
        "Indeterminate: the model cannot tell. Its {:.0}% prediction set spans normal to \
         osteoporosis, so the grade must not be read on its own.",
        coverage * 100.0
    )
}

/// Finding Site (TID 1501).
pub const FINDING_SITE: Code = Code("363698007", "SCT", "Finding Site");
/// The measurement of a vertebral body's trabecular attenuation (CID 7180).
pub const ATTENUATION_CONCEPT: Code = Code("112031", DCM, "Attenuation Coefficient");
/// Hounsfield units (UCUM).
pub const HU_UNIT: Code = Code("[hnsf'U]", "UCUM", "Hounsfield unit");

/// The SNOMED CT code of a vertebra (CID 7151).
pub fn vertebra_code(level: Level) -> Code {
    match level {
        Level::T12 => Code("23215003", "SCT", "T12 vertebra"),
        Level::L1 => Code("66794005", "SCT", "L1 vertebra"),
        Level::L2 => Code("14293000", "SCT", "L2 vertebra"),
        Level::L3 => Code("36470004", "SCT", "L3 vertebra"),
        Level::L4 => Code("11994002", "SCT", "L4 vertebra"),
        Level::L5 => Code("49668003", "SCT", "L5 vertebra"),
    }
}

/// The tracking identifier of a vertebra's measurement group, naming how it was measured.
pub fn vertebra_tracking(v: &VertebraMeasurement) -> String {
    format!(
        "{}{} trabecular attenuation (median HU, calibrated to subcutaneous fat{})",
        v.level,
        if v.level_uncertain {
            ", level uncertain"
        } else {
            ""
        },
        if v.partial {
            "; body cut by the field of view"
        } else {
            ""
        }
    )
}

/// The finding site of a femoral neck measurement (its side in the tracking identifier).
pub const PROXIMAL_FEMUR: Code = Code(
    "310651003",
    "SCT",
    "Bone structure of proximal femur (body structure)",
);

/// The tracking identifier of a femoral neck's measurement group.
pub fn neck_tracking(n: &NeckMeasurement) -> String {
    format!(
        "{} femoral neck trabecular attenuation (median HU, calibrated to subcutaneous fat)",
        match n.side {
            crate::attenuation::Side::Right => "Right",
            crate::attenuation::Side::Left => "Left",
        }
    )
}

/// What the report states.
#[derive(Debug, Clone)]
pub struct Finding {
    /// Index of the grade in class order (0 normal, 1 osteopenia, 2 osteoporosis).
    pub grade: usize,
    /// Probabilities in class order.
    pub probabilities: [f32; 3],
    /// What produced it: model, version, weights digest, backend, device.
    pub provenance: Provenance,
    /// Whether the model was trained on synthetic data (adds the not-for-diagnosis statement).
    pub synthetic: bool,
    /// SeriesInstanceUID of the new series ([`new_uid`]).
    pub series_uid: String,
    /// SeriesNumber of the new series.
    pub series_number: u32,
    /// Referral and prediction set (models with an operating point).
    pub decision: Option<osteo_core::Decision>,
    /// The vertebral bodies' trabecular attenuation (studies where they were measured).
    pub vertebrae: Vec<VertebraMeasurement>,
    /// The femoral necks' trabecular attenuation (studies where they were measured).
    pub femoral_necks: Vec<NeckMeasurement>,
}

/// A code sequence item.
fn code_item(c: Code) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        text(tags::CODE_VALUE, VR::SH, c.0),
        text(tags::CODING_SCHEME_DESIGNATOR, VR::SH, c.1),
        text(tags::CODE_MEANING, VR::LO, c.2),
    ])
}

/// The value of a content item.
enum Value {
    Container(Vec<InMemDicomObject>),
    Code(Code),
    Text(String),
    Uid(String),
    Num(f64, Code),
    Image(String, String),
}

/// A content item with relationship `rel` (empty for the root), concept `name` and `value`.
fn item(rel: &str, name: Option<Code>, value: Value) -> InMemDicomObject {
    let mut e = Vec::new();
    if !rel.is_empty() {
        e.push(text(tags::RELATIONSHIP_TYPE, VR::CS, rel));
    }
    let value_type = match &value {
        Value::Container(_) => "CONTAINER",
        Value::Code(_) => "CODE",
        Value::Text(_) => "TEXT",
        Value::Uid(_) => "UIDREF",
        Value::Num(..) => "NUM",
        Value::Image(..) => "IMAGE",
    };
    e.push(text(tags::VALUE_TYPE, VR::CS, value_type));
    if let Some(n) = name {
        e.push(sequence(
            tags::CONCEPT_NAME_CODE_SEQUENCE,
            vec![code_item(n)],
        ));
    }
    match value {
        Value::Container(children) => {
            e.push(text(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"));
            if !children.is_empty() {
                e.push(sequence(tags::CONTENT_SEQUENCE, children));
            }
        }
        Value::Code(c) => e.push(sequence(tags::CONCEPT_CODE_SEQUENCE, vec![code_item(c)])),
        Value::Text(t) => e.push(text(tags::TEXT_VALUE, VR::UT, &t)),
        Value::Uid(u) => e.push(text(tags::UID, VR::UI, &u)),
        Value::Num(v, unit) => {
            let measured = InMemDicomObject::from_element_iter([
                sequence(tags::MEASUREMENT_UNITS_CODE_SEQUENCE, vec![code_item(unit)]),
                text(tags::NUMERIC_VALUE, VR::DS, &format!("{v:.6}")),
            ]);
            e.push(sequence(tags::MEASURED_VALUE_SEQUENCE, vec![measured]));
        }
        Value::Image(class, instance) => {
            let reference = InMemDicomObject::from_element_iter([
                text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, &class),
                text(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, &instance),
            ]);
            e.push(sequence(tags::REFERENCED_SOP_SEQUENCE, vec![reference]));
        }
    }
    InMemDicomObject::from_element_iter(e)
}

/// The content tree of the report.
fn content(source: &SourceStudy, f: &Finding, device_uid: &str) -> Vec<InMemDicomObject> {
    let mut root = vec![
        item(
            "HAS CONCEPT MOD",
            Some(Code(
                "121049",
                DCM,
                "Language of Content Item and Descendants",
            )),
            Value::Code(Code("en-US", "RFC5646", "English (United States)")),
        ),
        item(
            "HAS OBS CONTEXT",
            Some(Code("121005", DCM, "Observer Type")),
            Value::Code(Code("121007", DCM, "Device")),
        ),
        item(
            "HAS OBS CONTEXT",
            Some(Code("121012", DCM, "Device Observer UID")),
            Value::Uid(device_uid.to_string()),
        ),
        item(
            "HAS OBS CONTEXT",
            Some(Code("121013", DCM, "Device Observer Name")),
            Value::Text("OsteoServe".into()),
        ),
        item(
            "HAS CONCEPT MOD",
            Some(Code("121058", DCM, "Procedure reported")),
            Value::Code(Code("25045-6", "LN", "CT unspecified body region")),
        ),
    ];
    let images: Vec<InMemDicomObject> = source
        .instances
        .iter()
        .map(|(class, instance)| {
            item(
                "CONTAINS",
                None,
                Value::Image(class.clone(), instance.clone()),
            )
        })
        .collect();
    root.push(item(
        "CONTAINS",
        Some(Code("111028", DCM, "Image Library")),
        Value::Container(vec![item(
            "CONTAINS",
            Some(Code("126200", DCM, "Image Library Group")),
            Value::Container(images),
        )]),
    ));
    let mut group = vec![
        item(
            "HAS OBS CONTEXT",
            Some(Code("112039", DCM, "Tracking Identifier")),
            Value::Text("Osteoporosis grade from CT".into()),
        ),
        item(
            "HAS OBS CONTEXT",
            Some(Code("112040", DCM, "Tracking Unique Identifier")),
            Value::Uid(new_uid()),
        ),
        item(
            "CONTAINS",
            Some(Code("121071", DCM, "Finding")),
            Value::Code(GRADE_CODES[f.grade.min(2)]),
        ),
    ];
    for (class, instance) in &source.instances {
        group.push(item(
            "CONTAINS",
            Some(Code("121112", DCM, "Source of Measurement")),
            Value::Image(class.clone(), instance.clone()),
        ));
    }
    for (p, code) in f.probabilities.iter().zip(PROBABILITY_CODES) {
        group.push(item(
            "CONTAINS",
            Some(code),
            Value::Num(f64::from(*p), Code("1", "UCUM", "no units")),
        ));
    }

    // TID 4019: the model, and its parameters (backend, device, weights digest, OsteoServe).
    let p = &f.provenance;
    group.extend([
        item(
            "HAS CONCEPT MOD",
            Some(Code("111001", DCM, "Algorithm Name")),
            Value::Text(p.model.clone()),
        ),
        item(
            "HAS CONCEPT MOD",
            Some(Code("111003", DCM, "Algorithm Version")),
            Value::Text(p.version.clone()),
        ),
    ]);
    let operating_point = f.decision.iter().flat_map(|d| {
        [
            format!("refer_on={}", d.refer_on),
            format!("refer_threshold={:.6}", d.refer_threshold),
            format!("coverage={}", d.coverage),
        ]
    });
    for parameter in p.parameters().into_iter().chain(operating_point) {
        group.push(item(
            "HAS CONCEPT MOD",
            Some(Code("111002", DCM, "Algorithm Parameters")),
            Value::Text(parameter),
        ));
    }
    let mut groups = vec![item(
        "CONTAINS",
        Some(Code("125007", DCM, "Measurement Group")),
        Value::Container(group),
    )];
    // One group per vertebral body and femoral neck measured: its trabecular attenuation in HU
    // at its site.
    let sites = f
        .vertebrae
        .iter()
        .map(|v| {
            (
                vertebra_tracking(v),
                vertebra_code(v.level),
                v.trabecular_hu,
            )
        })
        .chain(
            f.femoral_necks
                .iter()
                .map(|n| (neck_tracking(n), PROXIMAL_FEMUR, n.trabecular_hu)),
        );
    for (tracking, site, hu) in sites {
        let mut group = vec![
            item(
                "HAS OBS CONTEXT",
                Some(Code("112039", DCM, "Tracking Identifier")),
                Value::Text(tracking),
            ),
            item(
                "HAS OBS CONTEXT",
                Some(Code("112040", DCM, "Tracking Unique Identifier")),
                Value::Uid(new_uid()),
            ),
            item("HAS CONCEPT MOD", Some(FINDING_SITE), Value::Code(site)),
        ];
        for (class, instance) in &source.instances {
            group.push(item(
                "CONTAINS",
                Some(Code("121112", DCM, "Source of Measurement")),
                Value::Image(class.clone(), instance.clone()),
            ));
        }
        group.push(item(
            "CONTAINS",
            Some(ATTENUATION_CONCEPT),
            Value::Num(hu, HU_UNIT),
        ));
        groups.push(item(
            "CONTAINS",
            Some(Code("125007", DCM, "Measurement Group")),
            Value::Container(group),
        ));
    }
    root.push(item(
        "CONTAINS",
        Some(Code("126010", DCM, "Imaging Measurements")),
        Value::Container(groups),
    ));
    // The grade as a qualitative evaluation of the report (TID 1500 row 13; the 2022 rules of
    // Pixelmed's validator have no qualitative CODE row in the measurement group), and the
    // statement on synthetic training data (row 14).
    let mut evaluations = vec![item(
        "CONTAINS",
        Some(GRADE_CONCEPT),
        Value::Code(GRADE_CODES[f.grade.min(2)]),
    )];
    if let Some(d) = &f.decision {
        evaluations.push(item(
            "CONTAINS",
            Some(REFER_CONCEPT),
            Value::Code(if d.refer { YES } else { NO }),
        ));
        for g in d.prediction_set.grades() {
            evaluations.push(item(
                "CONTAINS",
                Some(PREDICTION_SET_CONCEPT),
                Value::Code(GRADE_CODES[g.index()]),
            ));
        }
        evaluations.push(item(
            "CONTAINS",
            Some(DETERMINACY_CONCEPT),
            Value::Code(if d.indeterminate {
                INDETERMINATE
            } else {
                DETERMINATE
            }),
        ));
        if d.indeterminate {
            evaluations.push(item(
                "CONTAINS",
                Some(Code("121106", DCM, "Comment")),
                Value::Text(indeterminate_statement(d.coverage)),
            ));
        }
    }
    if f.synthetic {
        evaluations.push(item(
            "CONTAINS",
            Some(Code("121106", DCM, "Comment")),
            Value::Text(NOT_FOR_DIAGNOSIS.into()),
        ));
    }
    root.push(item(
        "CONTAINS",
        Some(Code("C0034375", "UMLS", "Qualitative Evaluations")),
        Value::Container(evaluations),
    ));
    root
}

/// The SeriesDescription of the SR series of a model version (at most 64 characters): what a
/// screening run searches for to skip a study that was already graded by that version.
pub fn series_description(model: &str, version: &str) -> String {
    let d = format!("OsteoServe osteoporosis grade, {model} v{version}");
    d.chars().take(64).collect()
}

/// The Comprehensive SR of `finding` on `source`, as DICOM Part-10 bytes.
pub fn structured_report(source: &SourceStudy, finding: &Finding) -> Result<Vec<u8>, DicomError> {
    let sop_uid = new_uid();
    let (date, time) = now();
    let mut e = vec![
        text(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"),
        text(tags::SOP_CLASS_UID, VR::UI, uids::COMPREHENSIVE_SR_STORAGE),
        text(tags::SOP_INSTANCE_UID, VR::UI, &sop_uid),
        text(tags::INSTANCE_CREATION_DATE, VR::DA, &date),
        text(tags::INSTANCE_CREATION_TIME, VR::TM, &time),
        text(tags::MODALITY, VR::CS, "SR"),
        text(tags::SERIES_INSTANCE_UID, VR::UI, &finding.series_uid),
        text(
            tags::SERIES_NUMBER,
            VR::IS,
            &finding.series_number.to_string(),
        ),
        text(
            tags::SERIES_DESCRIPTION,
            VR::LO,
            &series_description(&finding.provenance.model, &finding.provenance.version),
        ),
        sequence(
            tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE,
            Vec::new(),
        ),
        text(tags::MANUFACTURER, VR::LO, "OsteoServe"),
        text(
            tags::MANUFACTURER_MODEL_NAME,
            VR::LO,
            &finding.provenance.model,
        ),
        text(
            tags::SOFTWARE_VERSIONS,
            VR::LO,
            concat!("osteoserve ", env!("CARGO_PKG_VERSION")),
        ),
        text(tags::INSTANCE_NUMBER, VR::IS, "1"),
        text(tags::COMPLETION_FLAG, VR::CS, "COMPLETE"),
        text(tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED"),
        text(tags::CONTENT_DATE, VR::DA, &date),
        text(tags::CONTENT_TIME, VR::TM, &time),
        sequence(tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, Vec::new()),
    ];
    let (copied, study_uid) = patient_and_study(source);
    e.extend(copied);
    if !source.instances.is_empty() {
        let referenced = instance_references(source);
        let series = InMemDicomObject::from_element_iter([
            text(tags::SERIES_INSTANCE_UID, VR::UI, &source.series_uid),
            sequence(tags::REFERENCED_SOP_SEQUENCE, referenced),
        ]);
        let evidence = InMemDicomObject::from_element_iter([
            text(tags::STUDY_INSTANCE_UID, VR::UI, &study_uid),
            sequence(tags::REFERENCED_SERIES_SEQUENCE, vec![series]),
        ]);
        e.push(sequence(
            tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
            vec![evidence],
        ));
    }
    // The document content: the root container.
    let template = InMemDicomObject::from_element_iter([
        text(tags::MAPPING_RESOURCE, VR::CS, "DCMR"),
        text(tags::TEMPLATE_IDENTIFIER, VR::CS, "1500"),
    ]);
    let root = item(
        "",
        Some(Code("126000", DCM, "Imaging Measurement Report")),
        Value::Container(content(source, finding, &new_uid())),
    );
    e.extend(root);
    e.push(sequence(tags::CONTENT_TEMPLATE_SEQUENCE, vec![template]));
    // The private coding scheme, declared.
    let scheme = InMemDicomObject::from_element_iter([
        text(tags::CODING_SCHEME_DESIGNATOR, VR::SH, PRIVATE_SCHEME),
        text(
            tags::CODING_SCHEME_NAME,
            VR::ST,
            "OsteoServe codes for concepts without a standard code",
        ),
        text(
            tags::CODING_SCHEME_RESPONSIBLE_ORGANIZATION,
            VR::ST,
            "OsteoServe",
        ),
    ]);
    e.push(sequence(
        tags::CODING_SCHEME_IDENTIFICATION_SEQUENCE,
        vec![scheme],
    ));
    part10(
        e,
        uids::COMPREHENSIVE_SR_STORAGE,
        &sop_uid,
        "structured report",
    )
}

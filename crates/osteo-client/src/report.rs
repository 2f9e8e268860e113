//! Results as the documented JSON objects (`osteo classify --json`, `explain --json`,
//! `compare --json`) and grade names.

use osteo_core::{Decision, Grade, PredictionSet, ReferOn};
use osteo_proto::v1 as pb;
use serde_json::{Value, json};

/// The name of a wire grade (`unspecified` for anything else).
pub fn grade_name(g: i32) -> &'static str {
    match pb::Grade::try_from(g) {
        Ok(pb::Grade::Normal) => "normal",
        Ok(pb::Grade::Osteopenia) => "osteopenia",
        Ok(pb::Grade::Osteoporosis) => "osteoporosis",
        _ => "unspecified",
    }
}

/// The grade of a wire value, if it names one.
pub fn grade_of(g: i32) -> Option<Grade> {
    grade_name(g).parse().ok()
}

/// A wire decision as the domain's (None when it names an unknown target).
pub fn decision_of(d: &pb::Decision) -> Option<Decision> {
    let grades: Vec<Grade> = d
        .prediction_set
        .iter()
        .filter_map(|g| grade_of(*g))
        .collect();
    Some(Decision {
        refer: d.refer,
        refer_on: d.refer_on.parse().ok()?,
        refer_threshold: d.refer_threshold,
        prediction_set: PredictionSet::from_grades(&grades),
        indeterminate: d.indeterminate,
        coverage: d.coverage,
    })
}

/// Adds a decision's fields (`refer`, `refer_on`, `refer_threshold`, `prediction_set`,
/// `indeterminate`, `coverage`) to a result's JSON object; nothing for a model without one.
pub fn merge_decision(v: &mut Value, decision: Option<&Decision>) {
    let (Some(o), Some(d)) = (v.as_object_mut(), decision) else {
        return;
    };
    if let Ok(Value::Object(fields)) = serde_json::to_value(d) {
        o.extend(fields);
    }
}

/// A decision in one line of text, e.g. `refer for DXA: yes (P(osteoporosis) 0.31 >= 0.18);
/// 90% prediction set: osteopenia|osteoporosis`.
pub fn decision_line(d: &Decision) -> String {
    let target = match d.refer_on {
        ReferOn::Osteoporosis => "P(osteoporosis)",
        ReferOn::LowBmd => "P(osteopenia or osteoporosis)",
    };
    format!(
        "  refer for DXA: {} ({target} threshold {:.3}); {:.0}% prediction set: {}{}",
        if d.refer { "yes" } else { "no" },
        d.refer_threshold,
        d.coverage * 100.0,
        d.prediction_set.joined(),
        if d.indeterminate {
            " (indeterminate: the model cannot tell normal from osteoporosis)"
        } else {
            ""
        }
    )
}

/// One vertebral body as results state it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Vertebra {
    /// `T12`, `L1` … `L5`.
    pub level: String,
    /// Calibrated median trabecular HU.
    pub trabecular_hu: f64,
    /// Whether the level is uncertain.
    pub level_uncertain: bool,
    /// Whether the field of view cuts the body.
    pub partial: bool,
}

/// One femoral neck as results state it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Neck {
    /// `right` or `left`.
    pub side: String,
    /// Calibrated median trabecular HU.
    pub trabecular_hu: f64,
}

/// The calibration of a study's attenuation as results state it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AttenuationCalibration {
    /// The scanner's offset removed, HU.
    pub offset_hu: f64,
    /// The contrast phase.
    pub contrast_phase: String,
    /// Whether the sacrum was found.
    pub sacrum_found: bool,
}

/// A study's vertebral attenuation as results state it (CLI JSON, results CSV), from the wire
/// or from a local measurement.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Vertebrae {
    /// The bodies measured, superior first.
    pub vertebrae: Vec<Vertebra>,
    /// The femoral necks measured.
    pub femoral_necks: Vec<Neck>,
    /// Their calibration.
    pub attenuation_calibration: AttenuationCalibration,
}

impl Vertebrae {
    /// A local measurement.
    pub fn of(a: &osteo_dicom::attenuation::Attenuation) -> Self {
        Self {
            vertebrae: a
                .vertebrae
                .iter()
                .map(|v| Vertebra {
                    level: v.level.name().to_string(),
                    trabecular_hu: v.trabecular_hu,
                    level_uncertain: v.level_uncertain,
                    partial: v.partial,
                })
                .collect(),
            femoral_necks: a
                .femoral_necks
                .iter()
                .map(|n| Neck {
                    side: n.side.name().to_string(),
                    trabecular_hu: n.trabecular_hu,
                })
                .collect(),
            attenuation_calibration: AttenuationCalibration {
                offset_hu: a.calibration.offset_hu,
                contrast_phase: a.calibration.contrast_phase.name().to_string(),
                sacrum_found: a.sacrum_found,
            },
        }
    }

    /// A server's answer.
    pub fn from_wire(a: &pb::Attenuation) -> Self {
        Self {
            vertebrae: a
                .vertebrae
                .iter()
                .map(|v| Vertebra {
                    level: v.level.clone(),
                    trabecular_hu: v.trabecular_hu,
                    level_uncertain: v.level_uncertain,
                    partial: v.partial,
                })
                .collect(),
            femoral_necks: a
                .femoral_necks
                .iter()
                .map(|n| Neck {
                    side: n.side.clone(),
                    trabecular_hu: n.trabecular_hu,
                })
                .collect(),
            attenuation_calibration: AttenuationCalibration {
                offset_hu: a.calibration_offset_hu,
                contrast_phase: a.contrast_phase.clone(),
                sacrum_found: a.sacrum_found,
            },
        }
    }

    /// The calibrated HU of the femoral neck of `side`, if measured.
    pub fn neck_hu(&self, side: &str) -> Option<f64> {
        self.femoral_necks
            .iter()
            .find(|n| n.side == side)
            .map(|n| n.trabecular_hu)
    }

    /// The calibrated HU of `level`, if measured.
    pub fn hu(&self, level: &str) -> Option<f64> {
        self.vertebrae
            .iter()
            .find(|v| v.level == level)
            .map(|v| v.trabecular_hu)
    }
}

/// Adds `vertebrae` and `attenuation_calibration` to a result's JSON object; nothing when no
/// vertebra was measured.
pub fn merge_attenuation(v: &mut Value, vertebrae: Option<Vertebrae>) {
    let (Some(o), Some(a)) = (v.as_object_mut(), vertebrae) else {
        return;
    };
    if let Ok(Value::Object(fields)) = serde_json::to_value(a) {
        o.extend(fields);
    }
}

/// The attenuation in one line of text, e.g. `  trabecular attenuation (HU; scanner offset +4
/// HU removed; portal venous): T12 151, L1 148, …` (an uncertain level marked `?`).
pub fn vertebrae_line(a: &Vertebrae) -> String {
    let levels: Vec<String> = a
        .vertebrae
        .iter()
        .map(|v| {
            format!(
                "{} {:.0}{}",
                v.level,
                v.trabecular_hu,
                if v.level_uncertain { "?" } else { "" }
            )
        })
        .collect();
    let necks: Vec<String> = a
        .femoral_necks
        .iter()
        .map(|n| format!("{} femoral neck {:.0}", n.side, n.trabecular_hu))
        .collect();
    format!(
        "  trabecular attenuation (HU; scanner offset {:+.0} HU removed; {}): {}",
        a.attenuation_calibration.offset_hu,
        a.attenuation_calibration.contrast_phase.replace('_', " "),
        levels
            .into_iter()
            .chain(necks)
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Probabilities as a JSON object keyed by grade.
fn probabilities(p: Option<pb::GradeProbabilities>) -> Value {
    let p = p.unwrap_or_default();
    json!({"normal": p.normal, "osteopenia": p.osteopenia, "osteoporosis": p.osteoporosis})
}

/// A classification: study, model and its version, backend, grade, probabilities, server
/// latency.
pub fn classification(r: &pb::ClassifyResponse) -> Value {
    let mut v = json!({
        "study": r.study,
        "model": r.model.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
        "model_version": r.model.as_ref().map(|m| m.version.clone()).unwrap_or_default(),
        "weights_blake3": r.model.as_ref().map(|m| m.weights_blake3.clone()).unwrap_or_default(),
        "backend": r.backend.as_ref().map(|b| b.name.clone()).unwrap_or_default(),
        "device": r.backend.as_ref().map(|b| b.device.clone()).unwrap_or_default(),
        "grade": grade_name(r.grade),
        "probabilities": probabilities(r.probabilities),
        "latency_ms": r.latency_ms,
    });
    merge_decision(&mut v, r.decision.as_ref().and_then(decision_of).as_ref());
    merge_attenuation(&mut v, r.attenuation.as_ref().map(Vertebrae::from_wire));
    v
}

/// An explanation: its classification, the target grade, the overlay file written (if any)
/// and the clinical features' attributions.
pub fn explanation(r: &pb::ExplainResponse, overlay_png: Option<&str>) -> Value {
    let mut v = classification(&r.classification.clone().unwrap_or_default());
    if let Some(o) = v.as_object_mut() {
        o.insert("target".into(), json!(grade_name(r.target)));
        if let Some(path) = overlay_png {
            o.insert("overlay_png".into(), json!(path));
        }
        let features: serde_json::Map<String, Value> = r
            .features
            .iter()
            .map(|f| (f.feature.clone(), json!(f.attribution)))
            .collect();
        o.insert("features".into(), json!(features));
    }
    v
}

/// A comparison: each backend's grade, probabilities, latency and device, the largest
/// probability difference and whether the grades agree.
pub fn comparison(r: &pb::CompareBackendsResponse) -> Value {
    let backends: serde_json::Map<String, Value> = r
        .results
        .iter()
        .map(|b| {
            let d = b.backend.clone().unwrap_or_default();
            let mut entry = json!({
                "grade": grade_name(b.grade),
                "probabilities": probabilities(b.probabilities),
                "latency_ms": b.latency_ms,
                "device": d.device,
            });
            merge_decision(
                &mut entry,
                b.decision.as_ref().and_then(decision_of).as_ref(),
            );
            (d.name, entry)
        })
        .collect();
    json!({
        "model": r.model.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
        "backends": backends,
        "max_abs_diff": r.max_abs_diff,
        "grades_agree": r.grades_agree,
    })
}

//! Results as the documented JSON objects (`osteo classify --json`, `explain --json`,
//! `compare --json`) and grade names.

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

/// Probabilities as a JSON object keyed by grade.
fn probabilities(p: Option<pb::GradeProbabilities>) -> Value {
    let p = p.unwrap_or_default();
    json!({"normal": p.normal, "osteopenia": p.osteopenia, "osteoporosis": p.osteoporosis})
}

/// A classification: study, model and its version, backend, grade, probabilities, server
/// latency.
pub fn classification(r: &pb::ClassifyResponse) -> Value {
    json!({
        "study": r.study,
        "model": r.model.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
        "model_version": r.model.as_ref().map(|m| m.version.clone()).unwrap_or_default(),
        "weights_blake3": r.model.as_ref().map(|m| m.weights_blake3.clone()).unwrap_or_default(),
        "backend": r.backend.as_ref().map(|b| b.name.clone()).unwrap_or_default(),
        "device": r.backend.as_ref().map(|b| b.device.clone()).unwrap_or_default(),
        "grade": grade_name(r.grade),
        "probabilities": probabilities(r.probabilities),
        "latency_ms": r.latency_ms,
    })
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
            let entry = json!({
                "grade": grade_name(b.grade),
                "probabilities": probabilities(b.probabilities),
                "latency_ms": b.latency_ms,
                "device": d.device,
            });
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

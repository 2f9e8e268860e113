//! Conversions between the `osteo.v1` messages and the domain types.

use crate::error::ServerError;
use crate::models::ServedModel;
use crate::store::Study;
use osteo_core::{BackendInfo, ClinicalInput, ClinicalVariables, Grade, ModelKind, RiskFlags, Sex};
use osteo_dicom::{Assessment, View};
use osteo_proto::v1 as pb;
use std::sync::Arc;
use std::time::Duration;

/// Validated clinical variables from the request message.
pub fn clinical(p: &pb::ClinicalVariables) -> Result<ClinicalVariables, ServerError> {
    let sex = match pb::Sex::try_from(p.sex) {
        Ok(pb::Sex::Female) => Sex::Female,
        Ok(pb::Sex::Male) => Sex::Male,
        _ => {
            return Err(ServerError::InvalidArgument(
                "clinical.sex is required: SEX_FEMALE or SEX_MALE".into(),
            ));
        }
    };
    ClinicalVariables::validate(ClinicalInput {
        age_years: p.age_years,
        sex,
        height_cm: p.height_cm,
        weight_kg: p.weight_kg,
        bmi: p.bmi,
        risk: RiskFlags {
            prior_fragility_fracture: p.prior_fragility_fracture,
            glucocorticoids: p.glucocorticoids,
            smoker: p.smoker,
            rheumatoid_arthritis: p.rheumatoid_arthritis,
        },
    })
    .map_err(|e| ServerError::InvalidArgument(format!("clinical variables: {e}")))
}

/// The clinical variables of a request whose unset age, sex, height and weight come from the
/// study's header `d` (values sent win; the risk flags and BMI come from `given` only).
pub fn clinical_from_header(
    given: Option<&pb::ClinicalVariables>,
    d: &osteo_dicom::Demographics,
) -> Result<ClinicalVariables, ServerError> {
    let mut g = given.cloned().unwrap_or_default();
    let set = |v: f64| (v != 0.0).then_some(v);
    let explicit = osteo_dicom::Explicit {
        age_years: set(g.age_years),
        sex: match pb::Sex::try_from(g.sex) {
            Ok(pb::Sex::Female) => Some(Sex::Female),
            Ok(pb::Sex::Male) => Some(Sex::Male),
            _ => None,
        },
        height_cm: set(g.height_cm),
        weight_kg: set(g.weight_kg),
    };
    let c = d.complete(explicit)?;
    g.age_years = c.age_years;
    g.sex = match c.sex {
        Sex::Female => pb::Sex::Female as i32,
        Sex::Male => pb::Sex::Male as i32,
    };
    g.height_cm = c.height_cm;
    g.weight_kg = c.weight_kg;
    clinical(&g)
}

/// Gradient x input attribution of each clinical feature of `m` to the explained logit: the
/// encoded input `x` times the logit's gradient `g` with respect to it (empty for a model without
/// clinical features).
pub fn attributions(
    m: &osteo_core::ModelManifest,
    x: Option<&[f32]>,
    g: Option<&Vec<f32>>,
) -> Vec<pb::FeatureAttribution> {
    match (&m.tabular, x, g) {
        (Some(spec), Some(x), Some(g)) => spec
            .features
            .iter()
            .zip(x.iter().zip(g))
            .map(|(f, (x, g))| pb::FeatureAttribution {
                feature: f.name.clone(),
                attribution: x * g,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The wire value of a grade.
pub fn grade(g: Grade) -> i32 {
    match g {
        Grade::Normal => pb::Grade::Normal as i32,
        Grade::Osteopenia => pb::Grade::Osteopenia as i32,
        Grade::Osteoporosis => pb::Grade::Osteoporosis as i32,
    }
}

/// A requested grade: `None` for GRADE_UNSPECIFIED.
pub fn grade_from(value: i32) -> Result<Option<Grade>, ServerError> {
    match pb::Grade::try_from(value) {
        Ok(pb::Grade::Unspecified) => Ok(None),
        Ok(pb::Grade::Normal) => Ok(Some(Grade::Normal)),
        Ok(pb::Grade::Osteopenia) => Ok(Some(Grade::Osteopenia)),
        Ok(pb::Grade::Osteoporosis) => Ok(Some(Grade::Osteoporosis)),
        Err(_) => Err(ServerError::InvalidArgument(format!(
            "target = {value} is not a Grade value"
        ))),
    }
}

/// The wire form of a grade's class probabilities (the pipeline refuses non-finite logits,
/// so a grade is never made of NaN).
pub fn grade_probabilities(g: &osteo_pipeline::Graded) -> pb::GradeProbabilities {
    let [normal, osteopenia, osteoporosis] = g.probabilities;
    pb::GradeProbabilities {
        normal,
        osteopenia,
        osteoporosis,
    }
}

/// The wire form of a result's decision.
pub fn decision(d: &osteo_core::Decision) -> pb::Decision {
    pb::Decision {
        refer: d.refer,
        refer_on: d.refer_on.name().to_string(),
        refer_threshold: d.refer_threshold,
        prediction_set: d.prediction_set.grades().into_iter().map(grade).collect(),
        indeterminate: d.indeterminate,
        coverage: d.coverage,
    }
}

/// The wire form of a study's vertebral attenuation.
pub fn attenuation(a: &osteo_dicom::attenuation::Attenuation) -> pb::Attenuation {
    pb::Attenuation {
        vertebrae: a
            .vertebrae
            .iter()
            .map(|v| pb::VertebralAttenuation {
                level: v.level.name().to_string(),
                trabecular_hu: v.trabecular_hu,
                level_uncertain: v.level_uncertain,
                partial: v.partial,
            })
            .collect(),
        calibration_offset_hu: a.calibration.offset_hu,
        contrast_phase: a.calibration.contrast_phase.name().to_string(),
        sacrum_found: a.sacrum_found,
        femoral_necks: a
            .femoral_necks
            .iter()
            .map(|n| pb::FemoralNeckAttenuation {
                side: n.side.name().to_string(),
                trabecular_hu: n.trabecular_hu,
            })
            .collect(),
    }
}

/// The wire value of a model kind.
fn kind(k: ModelKind) -> i32 {
    match k {
        ModelKind::Image => pb::ModelKind::Image as i32,
        ModelKind::Tabular => pb::ModelKind::Tabular as i32,
        ModelKind::Fused => pb::ModelKind::Fused as i32,
    }
}

/// Descriptor of a backend.
pub fn backend(info: &BackendInfo) -> pb::BackendDescriptor {
    pb::BackendDescriptor {
        name: info.name.clone(),
        device: info.device.to_string(),
        library_version: info.library_version.clone(),
    }
}

/// Descriptor of a served model.
pub fn model(m: &ServedModel) -> pb::ModelDescriptor {
    let manifest = &m.artifacts.manifest;
    pb::ModelDescriptor {
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        kind: kind(manifest.kind),
        view: manifest
            .view
            .map(|_| osteo_core::ViewSpec::NAME.to_string())
            .unwrap_or_default(),
        features: manifest
            .tabular
            .as_ref()
            .map(|t| t.features.iter().map(|f| f.name.clone()).collect())
            .unwrap_or_default(),
        classes: manifest.classes.clone(),
        backends: m.workers.iter().map(|(_, w)| backend(w.info())).collect(),
        default_backend: m.default_backend.clone(),
        metrics: manifest.metrics.clone().into_iter().collect(),
        // Set by ListModels, which knows every served version.
        default_version: false,
        weights_blake3: manifest.weights_blake3.clone(),
        server_version: osteo_core::provenance::OSTEOSERVE_VERSION.to_string(),
    }
}

/// One model's quality gate on a study.
pub fn quality(model: &str, a: &Assessment) -> pb::QualityAssessment {
    pb::QualityAssessment {
        model: model.to_string(),
        passed: a.passed(),
        checks: a
            .checks
            .iter()
            .map(|c| pb::QualityCheck {
                name: c.name.to_string(),
                passed: c.passed,
                value: c.value,
                min: c.accepted[0],
                max: c.accepted[1],
                unit: c.unit.to_string(),
                finding: c.message.clone(),
            })
            .collect(),
    }
}

/// The de-identified summary of a study, with the quality gate of each model that reads CT.
pub fn summary(
    study: &Study,
    expires_in: Option<Duration>,
    gates: &[(String, Arc<Assessment>)],
) -> pb::StudySummary {
    let v = &study.volume;
    let s = &v.summary;
    pb::StudySummary {
        study: study.handle.clone(),
        modality: s.modality.clone(),
        geometry: Some(pb::VolumeGeometry {
            slices: s.slices as u32,
            rows: s.rows as u32,
            columns: s.columns as u32,
            spacing_mm: s.spacing_mm.to_vec(),
            origin_mm: v.origin_mm.to_vec(),
            direction: v.direction.iter().flatten().copied().collect(),
        }),
        transfer_syntaxes: s.transfer_syntaxes.clone(),
        series_count: s.series_count as u32,
        hu_min: s.hu_min,
        hu_max: s.hu_max,
        hu_mean: s.hu_mean,
        stored_bytes: expires_in.map_or(0, |_| study.stored_bytes),
        expires_in_s: expires_in.map_or(0, |d| d.as_secs()),
        quality: gates.iter().map(|(m, a)| quality(m, a)).collect(),
    }
}

/// Where a view lies in the patient.
pub fn view_geometry(view: &View) -> pb::ViewGeometry {
    let g = &view.geometry;
    pb::ViewGeometry {
        view: osteo_core::ViewSpec::NAME.to_string(),
        height: view.spec.height as u32,
        width: view.spec.width as u32,
        pixel_mm: g.pixel_mm,
        top_left_mm: g.top_left_mm.to_vec(),
        row_step_mm: g.row_step_mm.to_vec(),
        col_step_mm: g.col_step_mm.to_vec(),
        slab_thickness_mm: g.slab_thickness_mm,
    }
}

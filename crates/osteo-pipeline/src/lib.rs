//! The grading pipeline, one implementation for every place that grades a study: the
//! server's engine, `osteo predict` and the trainer's evaluation. A study's volume passes the
//! model's quality gate and becomes the model's view; the view and the clinical variables
//! become the model input; the logits become a grade; an explanation becomes a Grad-CAM map;
//! the result becomes a DICOM Comprehensive SR and the map a Secondary Capture, in series
//! whose numbers only this crate knows. Running the model is the caller's (a local backend, or
//! a server's scheduler).
#![deny(missing_docs)]

pub mod fhir;

use osteo_core::features::Measured;
use osteo_core::{
    ClinicalVariables, CoreError, Decision, DecisionSpec, Explanation, GradCamMap, Grade,
    ModelManifest, Sample,
};
use osteo_dicom::attenuation::{Attenuation, Level};
use osteo_dicom::{Assessment, DicomError, SourceStudy, View, ViewSpec, Volume};

/// SeriesNumber of the SR series OsteoServe adds to a study.
pub const SR_SERIES_NUMBER: u32 = 9901;
/// SeriesNumber of the Grad-CAM secondary capture series.
pub const SC_SERIES_NUMBER: u32 = 9902;
/// Upscaling of the model view in the secondary capture (128x128 views become 256x256).
pub const SC_SCALE: usize = 2;

/// Why a step of the pipeline failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The study failed the quality gate, or a DICOM step failed.
    #[error(transparent)]
    Dicom(#[from] DicomError),
    /// Encoding, Grad-CAM assembly or another domain step failed.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The model reads CT and no view was given.
    #[error("model {model} reads CT: it needs the study's view")]
    NoView {
        /// The model's name.
        model: String,
    },
    /// The model reads clinical variables and none were given.
    #[error("model {model} reads clinical variables (age, sex, height, weight)")]
    NoClinical {
        /// The model's name.
        model: String,
    },
    /// The logits are not three finite numbers.
    #[error("the model's class probabilities are not numbers")]
    NotANumber,
    /// A view too large to write as DICOM.
    #[error("a view of {0} pixels is too large for a secondary capture")]
    TooLarge(usize),
}

/// The model view of `volume` for `spec`, refused (with every finding) when `assessment`, the
/// spec's quality gate on that volume, did not pass.
pub fn gated_view(
    assessment: &Assessment,
    volume: &Volume,
    spec: &ViewSpec,
) -> Result<View, PipelineError> {
    assessment.check()?;
    Ok(osteo_dicom::coronal_slab(volume, spec)?)
}

/// The model input of one study: the view's channels (models that read CT) and the encoded
/// clinical variables (models that read them), with what was measured on the study
/// (`attenuation`, from [`attenuation`]; None when nothing could be measured) for models that
/// read measured features.
pub fn input(
    manifest: &ModelManifest,
    view: Option<&View>,
    clinical: Option<&ClinicalVariables>,
    attenuation: Option<&Attenuation>,
) -> Result<Sample, PipelineError> {
    let image = match manifest.view {
        None => None,
        Some(_) => Some(
            view.ok_or_else(|| PipelineError::NoView {
                model: manifest.name.clone(),
            })?
            .data
            .clone(),
        ),
    };
    let tabular = match &manifest.tabular {
        None => None,
        Some(spec) => {
            let c = clinical.ok_or_else(|| PipelineError::NoClinical {
                model: manifest.name.clone(),
            })?;
            Some(spec.encode(c, &measured(attenuation))?)
        }
    };
    Ok(Sample { image, tabular })
}

/// The measured features of a study's attenuation: the mean calibrated trabecular HU of the
/// lumbar bodies L1-L4 measured whole (a body the field of view cuts is left out) and of the
/// femoral necks measured.
pub fn measured(attenuation: Option<&Attenuation>) -> Measured {
    let Some(a) = attenuation else {
        return Measured::NONE;
    };
    let mean = |values: Vec<f64>| {
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    let lumbar = a
        .vertebrae
        .iter()
        .filter(|v| (Level::L1..=Level::L4).contains(&v.level) && !v.partial)
        .map(|v| v.trabecular_hu)
        .collect();
    let necks = a.femoral_necks.iter().map(|n| n.trabecular_hu).collect();
    Measured {
        lumbar_hu: mean(lumbar),
        femoral_neck_hu: mean(necks),
    }
}

/// A grade, its class probabilities and, for a model that carries a `[decision]` section, what
/// to do about it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Graded {
    /// The most probable grade (temperature scaling never changes it).
    pub grade: Grade,
    /// Probabilities in class order (normal, osteopenia, osteoporosis), calibrated when the
    /// model carries a temperature.
    pub probabilities: [f32; 3],
    /// Referral and prediction set (models with a `[decision]` section).
    pub decision: Option<Decision>,
}

/// The grade of one sample's logits (class order); refused unless they are three finite
/// numbers. With `decision` (the model's `[decision]` section) the probabilities are
/// calibrated by its temperature and the result carries its referral and prediction set;
/// every backend's logits pass through here, so each applies it identically.
pub fn grade(decision: Option<&DecisionSpec>, logits: &[f32]) -> Result<Graded, PipelineError> {
    let [a, b, c] = logits else {
        return Err(PipelineError::NotANumber);
    };
    let logits = [*a, *b, *c];
    let probabilities = match decision {
        Some(d) => d.calibrate(&logits),
        None => osteo_core::decision::calibrated(&logits, 1.0),
    };
    let grade = Grade::most_probable(&probabilities).ok_or(PipelineError::NotANumber)?;
    Ok(Graded {
        grade,
        probabilities,
        decision: decision.map(|d| d.decide(&probabilities)),
    })
}

/// The Grad-CAM map of `target` from `explanation`, at the resolution of `view`.
pub fn gradcam(
    explanation: &Explanation,
    target: Grade,
    view: &View,
) -> Result<GradCamMap, PipelineError> {
    let parts = explanation.parts(target)?;
    Ok(osteo_core::gradcam::assemble(
        &parts,
        view.spec.height,
        view.spec.width,
    )?)
}

/// What produced a result: the model and the backend that ran it.
#[derive(Debug, Clone, Copy)]
pub struct Producer<'a> {
    /// The model's manifest (name, version, weights digest, training data).
    pub manifest: &'a ModelManifest,
    /// The backend's name.
    pub backend: &'a str,
    /// The device the backend ran on.
    pub device: &'a str,
}

impl Producer<'_> {
    /// The provenance of its results.
    pub fn provenance(&self) -> osteo_core::provenance::Provenance {
        osteo_core::provenance::Provenance::new(self.manifest, self.backend, self.device)
    }
}

/// The trabecular attenuation of the study's vertebral bodies, calibrated per study; None when
/// no vertebral body could be measured (only models that read measured features grade with
/// it, see [`measured`]).
pub fn attenuation(volume: &Volume) -> Option<Attenuation> {
    osteo_dicom::attenuation::measure(volume)
        .ok()
        .filter(|a| !a.vertebrae.is_empty())
}

/// The result as a DICOM Comprehensive SR in `source`'s study, in a new series numbered
/// [`SR_SERIES_NUMBER`], with the vertebral attenuation when it was measured.
pub fn structured_report(
    source: &SourceStudy,
    by: Producer<'_>,
    graded: &Graded,
    attenuation: Option<&Attenuation>,
) -> Result<Vec<u8>, PipelineError> {
    let m = by.manifest;
    let finding = osteo_dicom::sr::Finding {
        grade: graded.grade.index(),
        probabilities: graded.probabilities,
        provenance: by.provenance(),
        synthetic: m.trained_on_synthetic(),
        series_uid: osteo_dicom::sr::new_uid(),
        series_number: SR_SERIES_NUMBER,
        decision: graded.decision,
        vertebrae: attenuation.map(|a| a.vertebrae.clone()).unwrap_or_default(),
        femoral_necks: attenuation
            .map(|a| a.femoral_necks.clone())
            .unwrap_or_default(),
    };
    Ok(osteo_dicom::sr::structured_report(source, &finding)?)
}

/// The Grad-CAM overlay (`map` over `view`, explaining `grade`) as a DICOM Secondary Capture in
/// `source`'s study, in a new series numbered [`SC_SERIES_NUMBER`].
pub fn secondary_capture(
    source: &SourceStudy,
    by: Producer<'_>,
    view: &View,
    map: &[f32],
    grade: Grade,
) -> Result<Vec<u8>, PipelineError> {
    let m = by.manifest;
    let pixels = osteo_dicom::render::overlay_rgb(view.channel(1), map, view.spec.width, SC_SCALE)?;
    let size = |n: usize| u16::try_from(n * SC_SCALE).map_err(|_| PipelineError::TooLarge(n));
    let image = osteo_dicom::secondary_capture::RgbImage {
        rows: size(view.spec.height)?,
        columns: size(view.spec.width)?,
        pixels,
    };
    let description = osteo_dicom::secondary_capture::Description {
        provenance: by.provenance(),
        grade: grade.name().to_string(),
        synthetic: m.trained_on_synthetic(),
        series_number: SC_SERIES_NUMBER,
    };
    Ok(osteo_dicom::secondary_capture::secondary_capture(
        source,
        &image,
        &description,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logits_grade_by_the_most_probable_class() {
        let g = grade(None, &[0.0, 2.0, 1.0]).expect("finite");
        assert_eq!(g.grade, Grade::Osteopenia);
        let sum: f32 = g.probabilities.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6);
    }

    #[test]
    fn a_decision_calibrates_the_probabilities_and_decides_on_them() {
        let spec = DecisionSpec {
            temperature: 2.0,
            target_sensitivity: 0.9,
            refer_on: osteo_core::ReferOn::Osteoporosis,
            osteoporosis_threshold: 0.25,
            low_bmd_threshold: 0.5,
            coverage: 0.9,
            set_threshold: 0.2,
            fitted_on: 10,
            fitted_with: String::new(),
        };
        let logits = [2.0, 0.0, 0.5];
        let raw = grade(None, &logits).expect("finite");
        let g = grade(Some(&spec), &logits).expect("finite");
        assert_eq!(raw.decision, None);
        assert_eq!(g.grade, raw.grade, "temperature keeps the grade");
        assert!(g.probabilities[2] > raw.probabilities[2], "softer");
        let d = g.decision.expect("decision");
        // Softmax of [1, 0, 0.25]: about [0.51, 0.19, 0.30].
        assert!(d.refer, "P(osteoporosis) {} >= 0.25", g.probabilities[2]);
        assert_eq!(
            d.prediction_set.grades(),
            vec![Grade::Normal, Grade::Osteoporosis]
        );
        assert!(d.indeterminate);
    }

    #[test]
    fn non_finite_or_misshapen_logits_are_refused() {
        assert!(matches!(
            grade(None, &[f32::NAN, 0.0, 0.0]),
            Err(PipelineError::NotANumber)
        ));
        assert!(matches!(
            grade(None, &[f32::INFINITY, f32::INFINITY, 0.0]),
            Err(PipelineError::NotANumber)
        ));
        assert!(matches!(
            grade(None, &[0.0, 1.0]),
            Err(PipelineError::NotANumber)
        ));
    }
}

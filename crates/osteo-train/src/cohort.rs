//! Cohorts: a cohort CSV (the `osteo synth` format, `study_dir` pointing at DICOM series) or the
//! in-memory synthetic cohort. Both go through the same view function; computed views are cached
//! on disk by the content of the study plus the view specification.

use crate::error::TrainError;
use osteo_core::features::Measured;
use osteo_core::{
    ClinicalInput, ClinicalVariables, Grade, ModelManifest, RiskFlags, Sex, TScore, TabularSpec,
    ViewSpec,
};
use osteo_dicom::{DicomSource, IngestOptions, View, coronal_slab};
use osteo_phantom::{PhantomSpec, TScoreModel, phantom_volume};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where a cohort comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum CohortSource {
    /// A cohort CSV; relative `study_dir` values resolve against the CSV's directory.
    Csv(PathBuf),
    /// The built-in synthetic phantom cohort: patients `0..patients` of `seed`.
    Synthetic {
        /// Number of patients.
        patients: usize,
        /// Cohort seed.
        seed: u64,
    },
}

impl CohortSource {
    /// The cohort in words, as recorded in a model's provenance.
    pub fn describe(&self) -> String {
        match self {
            CohortSource::Synthetic { patients, seed } => {
                format!("synthetic phantom cohort, {patients} patients, seed {seed}")
            }
            CohortSource::Csv(p) => format!("cohort CSV {}", p.display()),
        }
    }
}

/// One patient of a cohort, ready for training or evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Patient identifier (synthetic or from the CSV).
    pub patient_id: String,
    /// Validated clinical variables.
    pub clinical: ClinicalVariables,
    /// DXA T-score.
    pub t_score: f64,
    /// WHO grade of the T-score.
    pub grade: Grade,
    /// The model's view of the study (`None` when views were not requested or the row has no study).
    pub view: Option<Vec<f32>>,
    /// Where its CT comes from.
    pub study: Study,
    /// What was measured on its CT (`None` until [`measure`] ran on the cohort).
    pub measured: Option<Measured>,
}

/// Where a sample's CT comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Study {
    /// A phantom of the synthetic cohort.
    Phantom {
        /// The cohort's seed.
        seed: u64,
        /// The patient's index.
        index: u64,
    },
    /// A DICOM study directory.
    Dir(PathBuf),
    /// No study.
    None,
}

impl Sample {
    /// The sample's CT volume, generated or read again (None without a study).
    pub fn volume(&self) -> Result<Option<osteo_dicom::Volume>, TrainError> {
        match &self.study {
            Study::Phantom { seed, index } => {
                let p = TScoreModel::default().patient(*seed, *index);
                Ok(Some(phantom_volume(&p, &PhantomSpec::default()).1))
            }
            Study::Dir(dir) => {
                osteo_dicom::ingest(DicomSource::Path(dir.clone()), &IngestOptions::default())
                    .map(|i| Some(i.volume))
                    .map_err(|e| TrainError::Input {
                        patient: self.patient_id.clone(),
                        message: e.to_string(),
                    })
            }
            Study::None => Ok(None),
        }
    }

    /// What the model input needs of the measurement: `Measured::NONE` for a specification
    /// that reads no measured feature, an error when it does and the cohort was not measured.
    pub fn measured_for(&self, spec: &TabularSpec) -> Result<Measured, TrainError> {
        match (spec.reads_measured(), self.measured) {
            (false, _) => Ok(Measured::NONE),
            (true, Some(m)) => Ok(m),
            (true, None) => Err(TrainError::Input {
                patient: self.patient_id.clone(),
                message: "the model reads the CT's measured attenuation and the cohort was \
                          loaded without measuring it"
                    .into(),
            }),
        }
    }
}

/// The cache key of a synthetic study: its generator inputs, not its bytes.
fn phantom_key(seed: u64, index: u64) -> Vec<u8> {
    format!("synthetic/v1/{seed}/{index}/{:?}", PhantomSpec::default()).into_bytes()
}

/// Version of the measurement in the cache key: bump it when `osteo_dicom::attenuation`
/// changes what it measures.
const MEASUREMENT_VERSION: &str = "attenuation/1";

/// Measures every sample's CT (the features of [`Measured`]; a sample without a study measures
/// nothing), cached on disk next to the views by the study's content.
pub fn measure(samples: &mut [Sample], cache: Option<&Path>) -> Result<(), TrainError> {
    samples.par_iter_mut().try_for_each(|s| {
        let key = match &s.study {
            Study::Phantom { seed, index } => Some(phantom_key(*seed, *index)),
            Study::Dir(dir) => Some(study_digest(dir)?),
            Study::None => None,
        };
        let path = cache.zip(key).map(|(dir, key)| {
            let mut h = blake3::Hasher::new();
            h.update(&key);
            h.update(MEASUREMENT_VERSION.as_bytes());
            dir.join(format!("{}.measured.json", h.finalize().to_hex()))
        });
        if let Some(m) = path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<Measured>(&b).ok())
        {
            s.measured = Some(m);
            return Ok(());
        }
        let m = match s.volume()? {
            Some(volume) => osteo_pipeline::measured(osteo_pipeline::attenuation(&volume).as_ref()),
            None => Measured::NONE,
        };
        if let Some(p) = &path {
            let bytes = serde_json::to_vec(&m).map_err(|e| TrainError::Io {
                path: p.display().to_string(),
                message: e.to_string(),
            })?;
            write_atomically(p, &bytes)?;
        }
        s.measured = Some(m);
        Ok(())
    })
}

/// Writes `bytes` to `p` (creating its folder) through a temporary file and a rename, so a
/// concurrent reader never sees a partial file.
fn write_atomically(p: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let io = |e: std::io::Error| TrainError::Io {
        path: p.display().to_string(),
        message: e.to_string(),
    };
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = p.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, p).map_err(io)
}

/// One row of a cohort CSV (the format `osteo synth` writes and `osteo train` reads). Risk flags
/// are 1 / 0, or empty when unknown; `study_dir` is relative to the CSV's directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CohortRow {
    /// Patient identifier.
    pub patient_id: String,
    /// Age in years.
    pub age: f64,
    /// F or M.
    pub sex: String,
    /// Height in cm.
    pub height_cm: f64,
    /// Weight in kg.
    pub weight_kg: f64,
    /// Prior fragility fracture.
    pub prior_fragility_fracture: Option<u8>,
    /// Glucocorticoid use.
    pub glucocorticoids: Option<u8>,
    /// Smoker.
    pub smoker: Option<u8>,
    /// Rheumatoid arthritis.
    pub rheumatoid_arthritis: Option<u8>,
    /// DXA T-score.
    pub t_score: f64,
    /// WHO grade (checked against the T-score when present).
    pub grade: Option<String>,
    /// The patient's DICOM study directory.
    pub study_dir: Option<String>,
    /// Synthetic patients: the true trabecular HU of T12 (before the scanner's offset).
    #[serde(default, rename = "trabecular_hu_T12")]
    pub trabecular_hu_t12: Option<f64>,
    /// The same of L1.
    #[serde(default, rename = "trabecular_hu_L1")]
    pub trabecular_hu_l1: Option<f64>,
    /// The same of L2.
    #[serde(default, rename = "trabecular_hu_L2")]
    pub trabecular_hu_l2: Option<f64>,
    /// The same of L3.
    #[serde(default, rename = "trabecular_hu_L3")]
    pub trabecular_hu_l3: Option<f64>,
    /// The same of L4.
    #[serde(default, rename = "trabecular_hu_L4")]
    pub trabecular_hu_l4: Option<f64>,
    /// The same of L5.
    #[serde(default, rename = "trabecular_hu_L5")]
    pub trabecular_hu_l5: Option<f64>,
    /// The true trabecular HU of the left femoral neck.
    #[serde(default)]
    pub trabecular_hu_femoral_neck_left: Option<f64>,
    /// The true trabecular HU of the right femoral neck.
    #[serde(default)]
    pub trabecular_hu_femoral_neck_right: Option<f64>,
    /// The scanner's calibration offset added to every tissue, HU.
    #[serde(default)]
    pub calibration_hu: Option<f64>,
    /// The contrast phase (`unenhanced`, `portal_venous`, `arterial`).
    #[serde(default)]
    pub contrast_phase: Option<String>,
}

impl CohortRow {
    /// The truth columns of a synthetic patient (what its CT was drawn with); the rest empty.
    fn truth_of(p: &osteo_phantom::Patient) -> Self {
        let t = osteo_phantom::Anatomy::draw(p, &PhantomSpec::default()).truth();
        let round = |v: f64| (v * 100.0).round() / 100.0;
        let hu = |i: usize| Some(round(t.trabecular_hu[i]));
        Self {
            patient_id: String::new(),
            age: 0.0,
            sex: String::new(),
            height_cm: 0.0,
            weight_kg: 0.0,
            prior_fragility_fracture: None,
            glucocorticoids: None,
            smoker: None,
            rheumatoid_arthritis: None,
            t_score: 0.0,
            grade: None,
            study_dir: None,
            trabecular_hu_t12: hu(0),
            trabecular_hu_l1: hu(1),
            trabecular_hu_l2: hu(2),
            trabecular_hu_l3: hu(3),
            trabecular_hu_l4: hu(4),
            trabecular_hu_l5: hu(5),
            trabecular_hu_femoral_neck_left: Some(round(t.femoral_neck_hu)),
            trabecular_hu_femoral_neck_right: Some(round(t.femoral_neck_hu)),
            calibration_hu: Some(round(t.calibration_hu)),
            contrast_phase: Some(t.contrast_phase.name().to_string()),
        }
    }

    /// The true trabecular HU of each level T12 … L5 (synthetic patients).
    pub fn trabecular_truth(&self) -> [Option<f64>; 6] {
        [
            self.trabecular_hu_t12,
            self.trabecular_hu_l1,
            self.trabecular_hu_l2,
            self.trabecular_hu_l3,
            self.trabecular_hu_l4,
            self.trabecular_hu_l5,
        ]
    }

    /// The row of a synthetic patient.
    pub fn of_patient(p: &osteo_phantom::Patient, study_dir: Option<String>) -> Self {
        let r = p.recorded_risk();
        let flag = |f: Option<bool>| f.map(u8::from);
        Self {
            patient_id: p.id.clone(),
            age: p.age_years,
            sex: p.sex.code().to_string(),
            height_cm: p.height_cm,
            weight_kg: p.weight_kg,
            prior_fragility_fracture: flag(r.prior_fragility_fracture),
            glucocorticoids: flag(r.glucocorticoids),
            smoker: flag(r.smoker),
            rheumatoid_arthritis: flag(r.rheumatoid_arthritis),
            t_score: p.t_score,
            grade: Some(p.grade.name().to_string()),
            study_dir,
            ..Self::truth_of(p)
        }
    }
}

/// Loads a cohort; with `view` set, every patient's view is built (or read from `cache`).
pub fn load(
    source: &CohortSource,
    view: Option<&ViewSpec>,
    cache: Option<&Path>,
) -> Result<Vec<Sample>, TrainError> {
    match source {
        CohortSource::Synthetic { patients, seed } => synthetic(*patients, *seed, view, cache),
        CohortSource::Csv(path) => csv_cohort(path, view, cache),
    }
}

/// The cohort as `models` read it, evaluated on the same loaded patients: the first view any of
/// them reads (the caller keeps models of other views out), and the attenuation measured when
/// any of them reads it.
pub fn load_for(
    source: &CohortSource,
    models: &[&ModelManifest],
    cache: Option<&Path>,
) -> Result<Vec<Sample>, TrainError> {
    let view = models.iter().find_map(|m| m.view);
    let mut samples = load(source, view.as_ref(), cache)?;
    if models.iter().any(|m| m.reads_measured()) {
        measure(&mut samples, cache)?;
    }
    Ok(samples)
}

fn synthetic(
    n: usize,
    seed: u64,
    view: Option<&ViewSpec>,
    cache: Option<&Path>,
) -> Result<Vec<Sample>, TrainError> {
    let model = TScoreModel::default();
    let phantom = PhantomSpec::default();
    (0..n as u64)
        .into_par_iter()
        .map(|i| {
            let p = model.patient(seed, i);
            let clinical = ClinicalVariables::validate(p.clinical_input()).map_err(|e| {
                TrainError::Cohort {
                    file: "synthetic cohort".into(),
                    row: i as usize + 1,
                    message: e.to_string(),
                }
            })?;
            let view = match view {
                None => None,
                Some(spec) => Some(cached(cache, &phantom_key(seed, i), spec, &p.id, || {
                    let (_, volume) = phantom_volume(&p, &phantom);
                    coronal_slab(&volume, spec)
                })?),
            };
            Ok(Sample {
                patient_id: p.id.clone(),
                clinical,
                t_score: p.t_score,
                grade: p.grade,
                view,
                study: Study::Phantom { seed, index: i },
                measured: None,
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .collect()
}

fn flag(v: Option<u8>) -> Option<bool> {
    v.map(|x| x != 0)
}

fn csv_cohort(
    path: &Path,
    view: Option<&ViewSpec>,
    cache: Option<&Path>,
) -> Result<Vec<Sample>, TrainError> {
    let file = path.display().to_string();
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut reader = csv::Reader::from_path(path).map_err(|e| TrainError::Io {
        path: file.clone(),
        message: e.to_string(),
    })?;
    let rows: Vec<(usize, CohortRow)> = reader
        .deserialize::<CohortRow>()
        .enumerate()
        .map(|(i, r)| {
            r.map(|row| (i + 1, row)).map_err(|e| TrainError::Cohort {
                file: file.clone(),
                row: i + 1,
                message: e.to_string(),
            })
        })
        .collect::<Result<_, _>>()?;
    rows.into_par_iter()
        .map(|(row_no, row)| {
            let bad = |message: String| TrainError::Cohort {
                file: file.clone(),
                row: row_no,
                message,
            };
            let sex: Sex = row
                .sex
                .parse()
                .map_err(|e: osteo_core::CoreError| bad(e.to_string()))?;
            let clinical = ClinicalVariables::validate(ClinicalInput {
                age_years: row.age,
                sex,
                height_cm: row.height_cm,
                weight_kg: row.weight_kg,
                bmi: None,
                risk: RiskFlags {
                    prior_fragility_fracture: flag(row.prior_fragility_fracture),
                    glucocorticoids: flag(row.glucocorticoids),
                    smoker: flag(row.smoker),
                    rheumatoid_arthritis: flag(row.rheumatoid_arthritis),
                },
            })
            .map_err(|e| bad(e.to_string()))?;
            let grade = TScore::new(row.t_score)
                .map_err(|e| bad(e.to_string()))?
                .grade();
            if let Some(g) = row.grade.as_deref().filter(|g| !g.is_empty()) {
                let stated: Grade = g
                    .parse()
                    .map_err(|e: osteo_core::CoreError| bad(e.to_string()))?;
                if stated != grade {
                    return Err(bad(format!(
                        "grade {stated} contradicts t_score {} ({grade} by the WHO cut-offs)",
                        row.t_score
                    )));
                }
            }
            let view = match (view, row.study_dir.as_deref().filter(|d| !d.is_empty())) {
                (Some(spec), Some(dir)) => {
                    let dir = base.join(dir);
                    let key = study_digest(&dir).map_err(|e| bad(e.to_string()))?;
                    Some(cached(cache, &key, spec, &row.patient_id, || {
                        let ingested = osteo_dicom::ingest(
                            DicomSource::Path(dir.clone()),
                            &IngestOptions::default(),
                        )?;
                        coronal_slab(&ingested.volume, spec)
                    })?)
                }
                (Some(_), None) => {
                    return Err(bad("study_dir is empty but the model needs images".into()));
                }
                (None, _) => None,
            };
            let study = match row.study_dir.as_deref().filter(|d| !d.is_empty()) {
                Some(dir) => Study::Dir(base.join(dir)),
                None => Study::None,
            };
            Ok(Sample {
                patient_id: row.patient_id,
                clinical,
                t_score: row.t_score,
                grade,
                view,
                study,
                measured: None,
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .collect()
}

/// Digest of every file of a study directory (names and bytes, in name order).
fn study_digest(dir: &Path) -> Result<Vec<u8>, TrainError> {
    let io = |e: std::io::Error| TrainError::Io {
        path: dir.display().to_string(),
        message: e.to_string(),
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    files.sort();
    let mut h = blake3::Hasher::new();
    for f in files.iter().filter(|f| f.is_file()) {
        h.update(
            f.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        h.update(&std::fs::read(f).map_err(io)?);
    }
    Ok(h.finalize().as_bytes().to_vec())
}

/// Returns the view for a study key, from the cache when present, else computed and stored.
fn cached(
    cache: Option<&Path>,
    study_key: &[u8],
    spec: &ViewSpec,
    patient: &str,
    compute: impl FnOnce() -> Result<View, osteo_dicom::DicomError>,
) -> Result<Vec<f32>, TrainError> {
    let path = cache.map(|dir| {
        let mut h = blake3::Hasher::new();
        h.update(study_key);
        h.update(serde_json::to_string(spec).unwrap_or_default().as_bytes());
        dir.join(format!("{}.f32", h.finalize().to_hex()))
    });
    let expected = 2 * spec.height * spec.width;
    if let Some(p) = &path
        && let Ok(bytes) = std::fs::read(p)
        && bytes.len() == expected * 4
    {
        return Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect());
    }
    let view = compute().map_err(|source| TrainError::Study {
        patient: patient.to_string(),
        source,
    })?;
    if let Some(p) = &path {
        let bytes: Vec<u8> = view.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        write_atomically(p, &bytes)?;
    }
    Ok(view.data)
}

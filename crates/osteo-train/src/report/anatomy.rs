//! The report's sections that read the test patients' CT again: the published L1 attenuation
//! thresholds as a comparator, the subgroups, and where Grad-CAM looks (its mass over the
//! lumbar bodies and femoral necks the attenuation measurement found, and elsewhere).

use crate::calibration::Screening;
use crate::cohort::Sample;
use crate::error::TrainError;
use crate::metrics::bootstrap;
use osteo_core::{Backend, Batch, Grade, ModelManifest};
use osteo_dicom::attenuation::{Attenuation, Level};
use osteo_dicom::{ViewGeometry, ViewSpec};
use rayon::prelude::*;
use serde_json::{Value, json};

/// Most test patients whose Grad-CAM is computed for the region shares.
const CAM_PATIENTS: usize = 200;
/// Bootstrap resamples of a subgroup's AUC interval.
const RESAMPLES: usize = 300;

/// What one test patient's CT shows.
pub struct Measured {
    /// The vertebral attenuation (None when none could be measured).
    pub attenuation: Option<Attenuation>,
    /// Where the model's view lies (models that read CT).
    pub geometry: Option<ViewGeometry>,
}

/// Measures the test patients `idx` of `samples` (their CT generated or read again).
pub fn measure(
    samples: &[Sample],
    idx: &[usize],
    view: Option<&ViewSpec>,
) -> Result<Vec<Measured>, TrainError> {
    idx.par_iter()
        .map(|&i| {
            let Some(volume) = samples[i].volume()? else {
                return Ok(Measured {
                    attenuation: None,
                    geometry: None,
                });
            };
            let geometry = view
                .and_then(|spec| osteo_dicom::coronal_slab(&volume, spec).ok())
                .map(|v| v.geometry);
            Ok(Measured {
                attenuation: osteo_pipeline::attenuation(&volume),
                geometry,
            })
        })
        .collect()
}

/// The calibrated L1 attenuation of a patient, when L1 was measured at a certain level.
fn l1(m: &Measured) -> Option<f64> {
    m.attenuation
        .as_ref()?
        .level(Level::L1)
        .filter(|v| !v.level_uncertain)
        .map(|v| v.trabecular_hu)
}

/// The published L1 thresholds (Pickhardt et al. 2013) against osteoporosis and low bone
/// density, on the test patients with L1 measured.
pub fn thresholds(measured: &[Measured], truth: &[Grade]) -> (String, Value) {
    let pairs: Vec<(f64, Grade)> = measured
        .iter()
        .zip(truth)
        .filter_map(|(m, t)| l1(m).map(|hu| (hu, *t)))
        .collect();
    let mut md = format!(
        "### The published L1 thresholds as a comparator\n\nL1 trabecular attenuation as \
         measured (calibrated) on the {} of {} test patients whose L1 was found at a certain \
         level. Pickhardt et al. (2013) report ≤ 160 HU as 90% sensitive and ≤ 110 HU as over \
         90% specific for osteoporosis on real CT; these are phantoms.\n\n\
         | rule | target | sensitivity (95% CI) | specificity (95% CI) | PPV (95% CI) | NPV (95% CI) |\n\
         |---|---|---|---|---|---|\n",
        pairs.len(),
        truth.len()
    );
    let mut rows = Vec::new();
    for cut in [110.0, 160.0] {
        for (target, positive) in [
            (
                "osteoporosis",
                (|g: Grade| g == Grade::Osteoporosis) as fn(Grade) -> bool,
            ),
            ("osteopenia or worse", |g: Grade| g != Grade::Normal),
        ] {
            let flag: Vec<bool> = pairs.iter().map(|(hu, _)| *hu <= cut).collect();
            let pos: Vec<bool> = pairs.iter().map(|(_, g)| positive(*g)).collect();
            let f = Screening::of(&flag, &pos);
            md.push_str(&format!(
                "| L1 ≤ {cut:.0} HU | {target} | {} | {} | {} | {} |\n",
                f.sensitivity.cell(),
                f.specificity.cell(),
                f.ppv.cell(),
                f.npv.cell()
            ));
            rows.push(json!({"rule": format!("L1 <= {cut} HU"), "target": target,
                "sensitivity": f.sensitivity, "specificity": f.specificity,
                "ppv": f.ppv, "npv": f.npv}));
        }
    }
    md.push('\n');
    (md, json!({"patients": pairs.len(), "rules": rows}))
}

/// One subgroup: its name and the indices (into the test patients) it holds.
struct Group {
    family: &'static str,
    name: String,
    members: Vec<usize>,
}

/// The subgroups of the test patients: sex, age band, BMI band, contrast phase and calibration
/// offset band (both measured).
fn groups(samples: &[Sample], test: &[usize], measured: &[Measured]) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    let mut add = |family: &'static str, name: String, n: usize| match out
        .iter_mut()
        .find(|g| g.family == family && g.name == name)
    {
        Some(g) => g.members.push(n),
        None => out.push(Group {
            family,
            name,
            members: vec![n],
        }),
    };
    for (n, &i) in test.iter().enumerate() {
        let c = &samples[i].clinical;
        add("sex", c.sex().code().to_string(), n);
        let age = c.age_years();
        let band = if age < 60.0 {
            "< 60"
        } else if age < 70.0 {
            "60–69"
        } else if age < 80.0 {
            "70–79"
        } else {
            "≥ 80"
        };
        add("age (years)", band.to_string(), n);
        let bmi = c.bmi();
        let band = if bmi < 18.5 {
            "< 18.5"
        } else if bmi < 25.0 {
            "18.5–24.9"
        } else if bmi < 30.0 {
            "25–29.9"
        } else {
            "≥ 30"
        };
        add("BMI (kg/m²)", band.to_string(), n);
        if let Some(a) = &measured[n].attenuation {
            add(
                "contrast phase (measured)",
                a.calibration.contrast_phase.name().replace('_', " "),
                n,
            );
            let o = a.calibration.offset_hu;
            let band = if o < -10.0 {
                "< −10 HU"
            } else if o <= 10.0 {
                "−10 to 10 HU"
            } else {
                "> 10 HU"
            };
            add("scanner offset (measured)", band.to_string(), n);
        }
    }
    out.sort_by(|a, b| (a.family, &a.name).cmp(&(b.family, &b.name)));
    out
}

/// AUC, sensitivity and specificity of the referral (or, without an operating point, the
/// argmax grade) for osteoporosis per subgroup, each with its 95% interval; a subgroup whose
/// sensitivity interval lies wholly below the overall sensitivity is flagged.
pub fn subgroups(
    m: &ModelManifest,
    samples: &[Sample],
    test: &[usize],
    measured: &[Measured],
    probs: &[[f64; 3]],
    seed: u64,
) -> (String, Value) {
    let truth: Vec<Grade> = test.iter().map(|&i| samples[i].grade).collect();
    let flag = |p: &[f64; 3]| -> bool {
        let p32 = [p[0] as f32, p[1] as f32, p[2] as f32];
        match &m.decision {
            Some(d) => d.decide(&p32).refer,
            None => Grade::most_probable(p) == Some(Grade::Osteoporosis),
        }
    };
    let rule = if m.decision.is_some() {
        "`refer`"
    } else {
        "the argmax grade"
    };
    let positive = |g: &Grade| *g == Grade::Osteoporosis;
    let all: Vec<bool> = probs.iter().map(flag).collect();
    let overall = Screening::of(&all, &truth.iter().map(positive).collect::<Vec<_>>());
    let mut md = format!(
        "## Subgroups\n\nMacro AUC (95% bootstrap interval) and the sensitivity and specificity \
         of {rule} for osteoporosis (95% Wilson intervals) per subgroup of the test patients; \
         contrast phase and scanner offset as the attenuation measurement found them. Overall: \
         sensitivity {}, specificity {}. **Flagged**: the sensitivity's interval lies wholly \
         below the overall sensitivity.\n\n\
         | subgroup | patients | macro AUC (95% CI) | sensitivity (95% CI) | specificity (95% CI) | |\n\
         |---|---|---|---|---|---|\n",
        overall.sensitivity.cell(),
        overall.specificity.cell()
    );
    let mut rows = Vec::new();
    for g in groups(samples, test, measured) {
        let p: Vec<[f64; 3]> = g.members.iter().map(|&n| probs[n]).collect();
        let t: Vec<Grade> = g.members.iter().map(|&n| truth[n]).collect();
        let eval = crate::metrics::evaluate(&p, &t);
        let ci = bootstrap(&p, &t, RESAMPLES, seed);
        let f = Screening::of(
            &p.iter().map(flag).collect::<Vec<_>>(),
            &t.iter().map(positive).collect::<Vec<_>>(),
        );
        let flagged = f.sensitivity.n > 0 && f.sensitivity.high < overall.sensitivity.value;
        let auc = if eval.auc.iter().all(Option::is_some) {
            format!(
                "{:.3} ({:.3}–{:.3})",
                eval.auc_macro, ci.auc_macro.low, ci.auc_macro.high
            )
        } else {
            "n/a (a grade is missing)".to_string()
        };
        md.push_str(&format!(
            "| {}: {} | {} | {auc} | {} | {} | {} |\n",
            g.family,
            g.name,
            g.members.len(),
            f.sensitivity.cell(),
            f.specificity.cell(),
            if flagged { "**flagged**" } else { "" }
        ));
        rows.push(
            json!({"family": g.family, "subgroup": g.name, "patients": g.members.len(),
            "auc_macro": eval.auc_macro, "auc_macro_ci95": ci.auc_macro,
            "sensitivity": f.sensitivity, "specificity": f.specificity, "flagged": flagged}),
        );
    }
    md.push('\n');
    (
        md,
        json!({"rule": rule, "overall_sensitivity": overall.sensitivity, "groups": rows}),
    )
}

/// The share of a Grad-CAM map's mass over the lumbar bodies, the femoral necks and elsewhere.
#[derive(Debug, Clone, Copy, Default)]
struct Shares {
    lumbar: f64,
    femoral: f64,
    elsewhere: f64,
}

/// The view pixels over a patient's measured vertebral bodies and over its femoral necks (their
/// z extent widened by 2 mm, their core's left-right extent by 6 mm: the shell and partial
/// volume).
fn masks(a: &Attenuation, g: &ViewGeometry, (h, w): (usize, usize)) -> (Vec<bool>, Vec<bool>) {
    let inside = |z: f64, x: f64, zr: [f64; 2], xr: [f64; 2]| {
        (zr[0] - 2.0..=zr[1] + 2.0).contains(&z) && (xr[0] - 6.0..=xr[1] + 6.0).contains(&x)
    };
    let (mut lumbar, mut femoral) = (vec![false; h * w], vec![false; h * w]);
    for r in 0..h {
        for c in 0..w {
            let [x, _, z] = g.patient_position(r as f64, c as f64);
            lumbar[r * w + c] = a
                .vertebrae
                .iter()
                .any(|v| inside(z, x, v.z_range_mm, v.x_range_mm));
            femoral[r * w + c] = a
                .femoral_necks
                .iter()
                .any(|n| inside(z, x, n.z_range_mm, n.x_range_mm));
        }
    }
    (lumbar, femoral)
}

/// Per predicted grade, the mean share of the Grad-CAM mass (of that grade) over the lumbar
/// bodies the measurement found and elsewhere, on the first test patients.
pub fn gradcam_regions(
    backend: &mut dyn Backend,
    m: &ModelManifest,
    inputs: &crate::train::Inputs<'_>,
    (test, probs): (&[usize], &[[f64; 3]]),
    measured: &[Measured],
) -> Result<(String, Value), TrainError> {
    let Some(spec) = m.view else {
        return Ok((String::new(), Value::Null));
    };
    let mut sums = [(Shares::default(), 0usize); 3];
    let mut areas = (0.0, 0.0, 0usize);
    for (n, &i) in test.iter().enumerate().take(CAM_PATIENTS) {
        let (Some(a), Some(g), Some(grade)) = (
            measured[n].attenuation.as_ref(),
            measured[n].geometry.as_ref(),
            Grade::most_probable(&probs[n]),
        ) else {
            continue;
        };
        let batch: Batch = inputs.batch(&[i], None)?;
        let parts = backend
            .explain(&batch)
            .map_err(|e| TrainError::Engine(format!("Grad-CAM: {e}")))?
            .parts(grade)
            .map_err(|e| TrainError::Engine(format!("Grad-CAM: {e}")))?;
        let map = osteo_core::gradcam::assemble(&parts, spec.height, spec.width)
            .map_err(|e| TrainError::Engine(format!("Grad-CAM: {e}")))?;
        let (lumbar_mask, femoral_mask) = masks(a, g, (spec.height, spec.width));
        let total: f64 = map.values.iter().map(|v| f64::from(v.max(0.0))).sum();
        if total <= 0.0 {
            continue;
        }
        let over = |mask: &[bool]| -> f64 {
            map.values
                .iter()
                .zip(mask)
                .filter(|(_, m)| **m)
                .map(|(v, _)| f64::from(v.max(0.0)))
                .sum::<f64>()
                / total
        };
        let (lumbar, femoral) = (over(&lumbar_mask), over(&femoral_mask));
        let s = &mut sums[grade.index()];
        s.0.lumbar += lumbar;
        s.0.femoral += femoral;
        s.0.elsewhere += 1.0 - lumbar - femoral;
        s.1 += 1;
        let share = |m: &[bool]| m.iter().filter(|v| **v).count() as f64 / m.len() as f64;
        areas.0 += share(&lumbar_mask);
        areas.1 += share(&femoral_mask);
        areas.2 += 1;
    }
    let k = areas.2.max(1) as f64;
    let (area, femoral_area) = (areas.0 / k, areas.1 / k);
    let mut md = format!(
        "## Where the model looks\n\nShare of the Grad-CAM mass of the predicted grade over the \
         lumbar vertebral bodies and the femoral necks the attenuation measurement found (their \
         extent in the view) and elsewhere, averaged per predicted grade over the first {} test \
         patients. The lumbar bodies cover {:.1}% of the view and the femoral necks {:.1}%, so a \
         map that ignored anatomy would put about those shares there. The paper's Grad-CAM \
         pointed at the femoral neck (DXA grades by the lower of spine and hip).\n\n\
         | predicted grade | patients | lumbar bodies | femoral necks | elsewhere |\n\
         |---|---|---|---|---|\n",
        CAM_PATIENTS.min(test.len()),
        area * 100.0,
        femoral_area * 100.0
    );
    let mut rows = Vec::new();
    for g in Grade::ALL {
        let (s, k) = sums[g.index()];
        if k == 0 {
            continue;
        }
        let n = k as f64;
        let (l, f, e) = (s.lumbar / n, s.femoral / n, s.elsewhere / n);
        md.push_str(&format!(
            "| {g} | {k} | {:.1}% | {:.1}% | {:.1}% |\n",
            l * 100.0,
            f * 100.0,
            e * 100.0
        ));
        rows.push(
            json!({"grade": g.name(), "patients": k, "lumbar": l, "femoral_necks": f,
            "elsewhere": e}),
        );
    }
    md.push('\n');
    Ok((
        md,
        json!({"lumbar_area_share": area, "femoral_area_share": femoral_area, "by_grade": rows}),
    ))
}

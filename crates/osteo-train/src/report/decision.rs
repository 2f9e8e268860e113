//! The report's section on acting on a grade, for a model with a `[decision]`: calibration
//! before and after temperature scaling (expected calibration error, reliability diagram), the
//! screening operating points against the argmax grade (sensitivity, specificity, PPV, NPV with
//! Wilson 95% intervals) and the conformal prediction sets (coverage, abstention).

use crate::calibration::{Bin, Rate, Screening, SetFigures, reliability, set_figures};
use crate::error::TrainError;
use crate::plot::charts::{self, Reliability};
use osteo_core::decision::calibrated;
use osteo_core::{DecisionSpec, Grade, ReferOn};
use serde_json::{Value, json};

/// One screening rule's figures on the test patients.
pub struct Rule {
    /// What it flags, in words.
    pub label: String,
    /// Whether `refer` follows it.
    pub refers: bool,
    /// Its figures.
    pub figures: Screening,
}

/// The decision figures of a model on the test patients.
pub struct DecisionFigures {
    /// The fitted section.
    pub spec: DecisionSpec,
    /// Reliability bins and ECE of the uncalibrated probabilities.
    pub before: (Vec<Bin>, f64),
    /// The same after temperature scaling.
    pub after: (Vec<Bin>, f64),
    /// The operating points and the argmax comparators.
    pub rules: Vec<Rule>,
    /// The prediction sets.
    pub sets: SetFigures,
}

/// Computes the figures of `spec` from the test patients' raw logits and true grades.
pub fn figures(spec: &DecisionSpec, logits: &[[f32; 3]], truth: &[Grade]) -> DecisionFigures {
    let raw: Vec<[f32; 3]> = logits.iter().map(|l| calibrated(l, 1.0)).collect();
    let cal: Vec<[f32; 3]> = logits.iter().map(|l| spec.calibrate(l)).collect();
    let argmax: Vec<Option<Grade>> = cal.iter().map(Grade::most_probable).collect();
    let mut rules = Vec::new();
    for on in [ReferOn::Osteoporosis, ReferOn::LowBmd] {
        let positive: Vec<bool> = truth.iter().map(|t| on.positive(*t)).collect();
        let threshold = match on {
            ReferOn::Osteoporosis => spec.osteoporosis_threshold,
            ReferOn::LowBmd => spec.low_bmd_threshold,
        };
        let (what, prob) = match on {
            ReferOn::Osteoporosis => ("osteoporosis", "P(osteoporosis)"),
            ReferOn::LowBmd => ("osteopenia or worse", "P(osteopenia) + P(osteoporosis)"),
        };
        let flag: Vec<bool> = cal
            .iter()
            .map(|p| f64::from(on.score(p)) >= threshold)
            .collect();
        rules.push(Rule {
            label: format!("{what}: {prob} ≥ {threshold:.3}"),
            refers: on == spec.refer_on,
            figures: Screening::of(&flag, &positive),
        });
        let graded: Vec<bool> = argmax
            .iter()
            .map(|g| g.is_some_and(|g| on.positive(g)))
            .collect();
        rules.push(Rule {
            label: format!("{what}: the most probable grade (argmax)"),
            refers: false,
            figures: Screening::of(&graded, &positive),
        });
    }
    DecisionFigures {
        before: reliability(&raw, truth),
        after: reliability(&cal, truth),
        sets: set_figures(&cal, truth, spec.set_threshold),
        spec: spec.clone(),
        rules,
    }
}

impl DecisionFigures {
    /// The reliability diagram before and after calibration.
    pub fn png(&self, title: &str) -> Result<Vec<u8>, TrainError> {
        let curve = |label: &str, (bins, ece): &(Vec<Bin>, f64)| Reliability {
            label: format!("{label} (ECE {ece:.3})"),
            points: bins
                .iter()
                .filter(|b| b.n > 0)
                .map(|b| (b.confidence, b.accuracy))
                .collect(),
        };
        charts::reliability(
            title,
            &[
                curve("uncalibrated", &self.before),
                curve(
                    &format!("temperature {:.2}", self.spec.temperature),
                    &self.after,
                ),
            ],
        )
    }

    /// The rule `refer` follows.
    pub(super) fn referral(&self) -> Option<&Rule> {
        self.rules.iter().find(|r| r.refers)
    }

    /// Figures recorded in model.toml's `[metrics]`.
    pub fn recorded(&self) -> Vec<(&'static str, f64)> {
        let mut out = vec![
            ("ece_uncalibrated", self.before.1),
            ("ece_calibrated", self.after.1),
            ("set_coverage", self.sets.coverage.value),
            ("indeterminate_rate", self.sets.indeterminate.value),
            ("mean_set_size", self.sets.mean_size),
        ];
        if let Some(r) = self.referral() {
            out.push(("refer_sensitivity", r.figures.sensitivity.value));
            out.push(("refer_specificity", r.figures.specificity.value));
        }
        out
    }

    /// The section of metrics.json.
    pub fn json(&self) -> Value {
        let rule = |r: &Rule| {
            json!({"rule": r.label, "refer": r.refers, "sensitivity": r.figures.sensitivity,
                   "specificity": r.figures.specificity, "ppv": r.figures.ppv,
                   "npv": r.figures.npv, "flagged": r.figures.flagged})
        };
        json!({
            "temperature": self.spec.temperature,
            "ece_uncalibrated": self.before.1,
            "ece_calibrated": self.after.1,
            "reliability_uncalibrated": self.before.0,
            "reliability_calibrated": self.after.0,
            "screening": self.rules.iter().map(rule).collect::<Vec<_>>(),
            "prediction_sets": self.sets,
            "spec": self.spec,
        })
    }

    /// The section of report.md.
    pub fn markdown(&self) -> String {
        let s = &self.spec;
        let mut md = String::from("## Acting on a grade\n\n");
        md.push_str(&format!(
            "Fitted on the {} validation patients{}: a temperature for the probabilities, \
             thresholds that reach {:.0}% sensitivity, and conformal prediction sets at {:.0}% \
             coverage. Every figure below is on the test patients, which took no part in \
             fitting.\n\n",
            s.fitted_on,
            if s.fitted_with.is_empty() {
                String::new()
            } else {
                format!(" (`{}`)", s.fitted_with)
            },
            s.target_sensitivity * 100.0,
            s.coverage * 100.0
        ));
        md.push_str(&format!(
            "### Calibration\n\nTemperature scaling (T = {:.3}) changes no grade. Expected \
             calibration error over {} confidence bins: **{:.3}** uncalibrated, **{:.3}** \
             calibrated.\n\n![Reliability diagram](reliability.png)\n\n",
            s.temperature,
            crate::calibration::BINS,
            self.before.1,
            self.after.1
        ));
        md.push_str(&format!(
            "### Screening operating point\n\n`refer` (refer for DXA) is true when {}. The \
             argmax rows grade by the most probable class, as `grade` does.\n\n\
             | rule | sensitivity (95% CI) | specificity (95% CI) | PPV (95% CI) | NPV (95% CI) | flagged |\n\
             |---|---|---|---|---|---|\n",
            self.referral()
                .map_or("no rule applies".to_string(), |r| r.label.clone())
        ));
        for r in &self.rules {
            let f = &r.figures;
            let label = if r.refers {
                format!("**{}** (refer)", r.label)
            } else {
                r.label.clone()
            };
            md.push_str(&format!(
                "| {label} | {} | {} | {} | {} | {:.1}% |\n",
                f.sensitivity.cell(),
                f.specificity.cell(),
                f.ppv.cell(),
                f.npv.cell(),
                f.flagged * 100.0
            ));
        }
        let sets = &self.sets;
        let share = |r: &Rate| {
            format!(
                "{:.1}% ({:.1}–{:.1}%)",
                r.value * 100.0,
                r.low * 100.0,
                r.high * 100.0
            )
        };
        md.push_str(&format!(
            "\n### Prediction sets and abstention\n\nA grade joins the set when its calibrated \
             probability is at least {:.3}. A result whose set spans normal to osteoporosis is \
             `indeterminate`: the model cannot tell, and its grade must not be read on its \
             own.\n\n| | test patients |\n|---|---|\n\
             | coverage (target {:.0}%) | {} |\n\
             | indeterminate (abstained) | {} |\n\
             | mean set size | {:.2} |\n\
             | sets of 1 / 2 / 3 grades | {} / {} / {} |\n\n",
            s.set_threshold,
            s.coverage * 100.0,
            share(&sets.coverage),
            share(&sets.indeterminate),
            sets.mean_size,
            sets.sizes[0],
            sets.sizes[1],
            sets.sizes[2]
        ));
        md
    }
}

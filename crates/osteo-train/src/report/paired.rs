//! The report's comparison with the other models on the same test patients: each one's macro
//! AUC, osteopenia AUC and referral figures, the paired bootstrap difference in macro AUC from
//! the reported model, and how much of the gap to the Bayes oracle the reported model closes.

use super::{RESAMPLES, decision, reads};
use crate::metrics::{Evaluation, Intervals, paired_difference};
use osteo_core::{Grade, ModelManifest};
use serde_json::{Value, json};

/// One model's predictions on the test patients.
pub struct Compared<'a> {
    /// Its manifest.
    pub manifest: &'a ModelManifest,
    /// How its inputs differ from serving, if they do (e.g. the measurement withheld).
    pub variant: Option<&'a str>,
    /// Served (calibrated) probabilities.
    pub probs: &'a [[f64; 3]],
    /// Raw logits.
    pub logits: &'a [[f32; 3]],
    /// Test metrics.
    pub eval: &'a Evaluation,
    /// Their bootstrap intervals.
    pub ci: &'a Intervals,
}

/// A difference and its interval, signed.
fn signed(d: f64, ci: crate::metrics::Interval) -> String {
    format!("{d:+.3} ({:+.3} to {:+.3})", ci.low, ci.high)
}

/// The comparison section (markdown, JSON) of `own` against `others` on the same patients;
/// `oracle` is the Bayes oracle with `own`'s information set (synthetic cohorts).
pub fn section(
    own: &Compared<'_>,
    others: &[Compared<'_>],
    oracle: Option<&Evaluation>,
    truth: &[Grade],
    seed: u64,
) -> (String, Value) {
    if others.is_empty() {
        return (String::new(), Value::Null);
    }
    let osteopenia = Grade::Osteopenia.index();
    let mut md = format!(
        "### Against the other models on the same test patients\n\n\
         The {} test patients of the same split, every model served as it is (calibrated where \
         it carries a `[decision]`). Δ is this model's figure minus the other's, with a paired \
         bootstrap 95% interval ({RESAMPLES} resamples drawing the same patients for both); an \
         interval above 0 says this model does better on these patients.\n\n\
         | model | reads | macro AUC (95% CI) | osteopenia AUC (95% CI) | accuracy | refer \
         sensitivity | refer specificity | Δ macro AUC (paired 95% CI) | Δ accuracy (paired 95% \
         CI) |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        truth.len()
    );
    let mut rows = Vec::new();
    for (k, c) in std::iter::once(own).chain(others).enumerate() {
        let m = c.manifest;
        let referral = m.decision.as_ref().and_then(|spec| {
            let f = decision::figures(spec, c.logits, truth);
            f.referral().map(|r| r.figures)
        });
        let rate = |r: Option<&crate::calibration::Rate>| {
            r.map_or("—".to_string(), |r| {
                format!("{:.3} ({:.3}–{:.3})", r.value, r.low, r.high)
            })
        };
        let diff = (k > 0).then(|| paired_difference(own.probs, c.probs, truth, RESAMPLES, seed));
        let auc_osteopenia = c.eval.auc[osteopenia];
        md.push_str(&format!(
            "| {} (v{}){} | {} | {:.3} ({:.3}–{:.3}) | {} | {:.3} | {} | {} | {} | {} |\n",
            m.name,
            m.version,
            match (k, c.variant) {
                (0, _) => " (this model)".to_string(),
                (_, Some(v)) => format!(", {v}"),
                _ => String::new(),
            },
            reads(m),
            c.eval.auc_macro,
            c.ci.auc_macro.low,
            c.ci.auc_macro.high,
            auc_osteopenia.map_or("—".to_string(), |a| format!(
                "{a:.3} ({:.3}–{:.3})",
                c.ci.auc[osteopenia].low, c.ci.auc[osteopenia].high
            )),
            c.eval.accuracy,
            rate(referral.as_ref().map(|f| &f.sensitivity)),
            rate(referral.as_ref().map(|f| &f.specificity)),
            diff.map_or("—".to_string(), |d| signed(d.auc_macro, d.auc_macro_ci95)),
            diff.map_or("—".to_string(), |d| signed(d.accuracy, d.accuracy_ci95)),
        ));
        rows.push(json!({
            "model": m.name,
            "version": m.version,
            "variant": c.variant,
            "kind": m.kind.name(),
            "reads_measured_attenuation": m.reads_measured(),
            "auc_macro": c.eval.auc_macro,
            "auc_macro_ci95": c.ci.auc_macro,
            "auc_osteopenia": auc_osteopenia,
            "auc_osteopenia_ci95": c.ci.auc[osteopenia],
            "accuracy": c.eval.accuracy,
            "refer_sensitivity": referral.as_ref().map(|f| json!(f.sensitivity)),
            "refer_specificity": referral.as_ref().map(|f| json!(f.specificity)),
            "difference": diff,
        }));
    }
    let mut gaps = Vec::new();
    if let Some(o) = oracle {
        md.push_str(&format!(
            "\nThe Bayes oracle with this model's information reaches macro AUC {:.3} on these \
             patients.",
            o.auc_macro
        ));
        for c in others
            .iter()
            .filter(|c| c.manifest.kind == own.manifest.kind && c.variant.is_none())
        {
            let gap = o.auc_macro - c.eval.auc_macro;
            if gap <= 0.0 {
                continue;
            }
            let closed = (own.eval.auc_macro - c.eval.auc_macro) / gap;
            md.push_str(&format!(
                " Against {} ({:.3}) this model closes {:.0}% of the gap to it.",
                c.manifest.name,
                c.eval.auc_macro,
                100.0 * closed
            ));
            gaps.push(json!({"model": c.manifest.name, "gap_closed": closed}));
        }
        md.push('\n');
    }
    let json = json!({
        "models": rows,
        "oracle_auc_macro": oracle.map(|o| o.auc_macro),
        "oracle_gap_closed": gaps,
    });
    (md, json)
}

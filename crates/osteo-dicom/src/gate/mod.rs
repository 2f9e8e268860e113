//! The input quality gate: before a model reads a study, check that the study is one it can grade.
//!
//! Acquisition: modality CT, an axial series, slice and pixel spacing within the model's range.
//! Calibration: air near -1000 HU and the body's soft-tissue peak where muscle and organs lie.
//! Anatomy: a lumbar spine over enough cranio-caudal extent. A slice counts as lumbar when its
//! largest body part (air cavities included) is as large as an adult trunk, is not mostly
//! enclosed air (lungs), and shows, in the left-right band around that part's centre, bone as wide
//! as a vertebral body lying deep inside the body (soft tissue in front and behind; a skull or a
//! rib lies at the surface). The column is the longest run of lumbar slices whose gaps are no
//! longer than an intervertebral disc; its extent must cover L1 to L4. A head, a neck, limbs and
//! a chest (lungs) fail; every phantom and abdominal CT passes. All thresholds come from the
//! model's [`GateSpec`].

mod slice;

use slice::{Level, SliceFacts, slice_facts};

use crate::error::DicomError;
use crate::volume::Volume;
use osteo_core::{GateSpec, ViewSpec};
use serde::Serialize;

/// Voxels below this HU are outside the reconstruction (padding), not air.
const PADDING_HU: f32 = -1500.0;
/// Voxels below this HU (and above padding) are air.
const AIR_MAX_HU: f32 = -400.0;
/// Width of the histogram bins, HU.
const BIN_HU: f32 = 5.0;
/// Range of the soft-tissue histogram, HU (wider than any accepted peak, narrower than fat).
const SOFT_RANGE_HU: [f32; 2] = [-60.0, 200.0];
/// Grid step of the body masks, mm (finer pixels are subsampled: trunks, necks and lungs are
/// centimetres across).
const MASK_STEP_MM: f64 = 3.0;
/// Slices closer than this are subsampled for the anatomy check, mm (vertebrae are 25 mm tall).
const SLICE_STEP_MM: f64 = 2.5;

/// One check of the gate with its measured value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateCheck {
    /// Stable name: `modality`, `orientation`, `slice_spacing`, `pixel_spacing`,
    /// `air_calibration`, `soft_tissue_calibration` or `lumbar_spine`.
    pub name: &'static str,
    /// Whether the study passes it.
    pub passed: bool,
    /// The measured value (NaN when nothing could be measured).
    pub value: f64,
    /// Accepted range `[min, max]` (infinite where open).
    pub accepted: [f64; 2],
    /// Unit of value and range.
    pub unit: &'static str,
    /// The finding in words a clinician understands.
    pub message: String,
}

/// Every check of the gate on one study.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Assessment {
    /// In a fixed order: acquisition, calibration, anatomy.
    pub checks: Vec<GateCheck>,
}

impl Assessment {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// The failed checks' findings joined into one sentence, `None` when the study passed.
    pub fn refusal(&self) -> Option<String> {
        let failed: Vec<&str> = self
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.message.as_str())
            .collect();
        (!failed.is_empty()).then(|| failed.join("; "))
    }

    /// `Ok` when the study passed, else the refusal as an error.
    pub fn check(&self) -> Result<(), DicomError> {
        match self.refusal() {
            None => Ok(()),
            Some(findings) => Err(DicomError::QualityGate { findings }),
        }
    }
}

/// Runs every check of `spec.gate` on `v`.
pub fn assess(v: &Volume, spec: &ViewSpec) -> Assessment {
    let g = &spec.gate;
    let mut checks = Vec::with_capacity(7);
    let is_ct = v.summary.modality == "CT";
    checks.push(GateCheck {
        name: "modality",
        passed: is_ct,
        value: f64::from(u8::from(is_ct)),
        accepted: [1.0, 1.0],
        unit: "1 = CT",
        message: if is_ct {
            "modality CT".into()
        } else {
            format!(
                "the series is not CT (modality {})",
                crate::series::shown_modality(&v.summary.modality)
            )
        },
    });
    let tilt = tilt_deg(v);
    checks.push(GateCheck {
        name: "orientation",
        passed: tilt <= g.max_tilt_deg,
        value: tilt,
        accepted: [0.0, g.max_tilt_deg],
        unit: "degrees",
        message: if tilt <= g.max_tilt_deg {
            format!("axial series (tilt {tilt:.0}°)")
        } else {
            format!(
                "not an axial series: the slices are tilted {tilt:.0}° from the axial plane (at most {:.0}° accepted)",
                g.max_tilt_deg
            )
        },
    });
    let one_slice = v.dims[0] == 1;
    checks.push(range_check(
        "slice_spacing",
        v.spacing_mm[0],
        g.slice_spacing_mm,
        "mm",
        |x| match (one_slice, x > 0.0) {
            (false, _) => format!("slices {x:.2} mm apart"),
            (true, true) => format!("a single slice {x:.2} mm thick"),
            (true, false) => "a single slice without SliceThickness (0018,0050)".into(),
        },
        "the model was trained on slices of",
    ));
    let pixel = v.spacing_mm[1].max(v.spacing_mm[2]);
    checks.push(range_check(
        "pixel_spacing",
        pixel,
        g.pixel_spacing_mm,
        "mm",
        |x| format!("pixels of {x:.2} mm"),
        "the model accepts",
    ));
    let stride = slice_stride(v);
    let facts = slice_facts(v, spec, stride);
    let air = merged(facts.iter().map(|f| &f.air));
    let air_hu = median(&air).map_or(f64::NAN, |b| {
        f64::from(PADDING_HU + (b as f32 + 0.5) * BIN_HU)
    });
    checks.push(if air_hu.is_nan() {
        GateCheck {
            name: "air_calibration",
            passed: false,
            value: f64::NAN,
            accepted: g.air_hu,
            unit: "HU",
            message: "no air in the field of view to check the HU calibration".into(),
        }
    } else {
        range_check(
            "air_calibration",
            air_hu,
            g.air_hu,
            "HU",
            |x| format!("air measures {x:.0} HU"),
            "a calibrated scanner gives",
        )
    });
    let soft = merged(facts.iter().map(|f| &f.soft));
    let soft_hu = smoothed_mode(&soft).map_or(f64::NAN, |b| {
        f64::from(SOFT_RANGE_HU[0] + (b as f32 + 0.5) * BIN_HU)
    });
    checks.push(if soft_hu.is_nan() {
        GateCheck {
            name: "soft_tissue_calibration",
            passed: false,
            value: f64::NAN,
            accepted: g.soft_tissue_hu,
            unit: "HU",
            message: "no soft tissue in the field of view to check the HU calibration".into(),
        }
    } else {
        range_check(
            "soft_tissue_calibration",
            soft_hu,
            g.soft_tissue_hu,
            "HU",
            |x| format!("soft tissue peaks at {x:.0} HU"),
            "a calibrated scanner gives",
        )
    });
    checks.push(spine_check(v.spacing_mm[0] * stride as f64, g, &facts));
    Assessment { checks }
}

/// A check that a value lies in `[lo, hi]`.
fn range_check(
    name: &'static str,
    value: f64,
    [lo, hi]: [f64; 2],
    unit: &'static str,
    finding: impl Fn(f64) -> String,
    expected: &str,
) -> GateCheck {
    let passed = (lo..=hi).contains(&value);
    let message = if passed {
        finding(value)
    } else {
        format!("{}; {expected} {lo}–{hi} {unit}", finding(value))
    };
    GateCheck {
        name,
        passed,
        value,
        accepted: [lo, hi],
        unit,
        message,
    }
}

/// Largest angle, in degrees, between a volume axis and its patient axis.
fn tilt_deg(v: &Volume) -> f64 {
    let cos = (0..3)
        .map(|i| v.direction[i][i].abs())
        .fold(1.0f64, f64::min)
        .clamp(0.0, 1.0);
    cos.acos().to_degrees()
}

/// Every how many slices the anatomy is looked at.
fn slice_stride(v: &Volume) -> usize {
    let dz = v.spacing_mm[0];
    if dz > 0.0 {
        ((SLICE_STEP_MM / dz).floor() as usize).max(1)
    } else {
        1
    }
}

/// The lumbar-spine check: the longest column of lumbar slices, `dz` mm apart.
fn spine_check(dz: f64, g: &GateSpec, facts: &[SliceFacts]) -> GateCheck {
    let max_step = if dz > 0.0 {
        ((g.max_gap_mm / dz).floor() as usize).max(1)
    } else {
        1
    };
    let (mut best, mut start, mut last): (usize, Option<usize>, usize) = (0, None, 0);
    for (k, f) in facts.iter().enumerate() {
        if f.level != Level::Lumbar {
            continue;
        }
        match start {
            Some(s) if k - last <= max_step => best = best.max(k - s + 1),
            _ => {
                start = Some(k);
                best = best.max(1);
            }
        }
        last = k;
    }
    let extent = best as f64 * dz;
    let required = g.min_spine_extent_mm;
    let passed = extent >= required;
    let message = if passed {
        format!("lumbar spine over {extent:.0} mm (at least {required:.0} mm needed)")
    } else {
        format!(
            "no lumbar spine in the field of view (bone column found over {extent:.0} mm of the required {required:.0} mm){}",
            hint(facts)
        )
    };
    GateCheck {
        name: "lumbar_spine",
        passed,
        value: extent,
        accepted: [required, f64::INFINITY],
        unit: "mm",
        message,
    }
}

/// What most non-lumbar slices show, as a clause.
fn hint(facts: &[SliceFacts]) -> String {
    let reasons = [
        (Level::NoBody, "no body in the field of view"),
        (Level::SmallBody, "the body is smaller than an adult trunk"),
        (Level::Lungs, "air-filled lungs fill the trunk"),
        (
            Level::NoVertebra,
            "no vertebral body deep in the trunk's midline",
        ),
        (
            Level::Narrow,
            "the body around the spine is narrower than an adult trunk",
        ),
    ];
    let counted = reasons
        .iter()
        .map(|(l, text)| (facts.iter().filter(|f| f.level == *l).count(), *text))
        .max_by_key(|(n, _)| *n);
    match counted {
        Some((n, text)) if n > 0 => format!("; {text} on {n} of {} slices", facts.len()),
        _ => String::new(),
    }
}

/// Element-wise sum of histograms.
fn merged<'a>(hists: impl Iterator<Item = &'a Vec<u64>>) -> Vec<u64> {
    let mut total: Vec<u64> = Vec::new();
    for h in hists {
        if total.len() < h.len() {
            total.resize(h.len(), 0);
        }
        for (t, x) in total.iter_mut().zip(h) {
            *t += x;
        }
    }
    total
}

/// Bin holding the median of a histogram.
fn median(hist: &[u64]) -> Option<usize> {
    let n: u64 = hist.iter().sum();
    if n == 0 {
        return None;
    }
    let mut seen = 0;
    hist.iter().position(|&c| {
        seen += c;
        2 * seen >= n
    })
}

/// Bin of the highest point of a histogram smoothed over five bins (25 HU).
fn smoothed_mode(hist: &[u64]) -> Option<usize> {
    if hist.iter().all(|&c| c == 0) {
        return None;
    }
    (0..hist.len()).max_by_key(|&i| {
        let lo = i.saturating_sub(2);
        let hi = (i + 3).min(hist.len());
        hist[lo..hi].iter().sum::<u64>()
    })
}

/// Histogram bin of `hu` over `[lo, lo + bins * BIN_HU)`.
fn bin(hu: f32, lo: f32, bins: usize) -> Option<usize> {
    // Truncation is the floor for the non-negative quotients kept.
    let b = (hu - lo) / BIN_HU;
    (b >= 0.0 && (b as usize) < bins).then_some(b as usize)
}

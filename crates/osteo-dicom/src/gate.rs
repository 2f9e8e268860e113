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

use crate::error::DicomError;
use crate::view::BODY_MIN_HU;
use crate::volume::{Hu, Plane, Volume};
use osteo_core::{GateSpec, ViewSpec};
use rayon::prelude::*;
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

/// Why a slice is not at lumbar level (or that it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Lumbar,
    NoBody,
    SmallBody,
    Lungs,
    NoVertebra,
    Narrow,
}

/// What one slice shows.
struct SliceFacts {
    level: Level,
    /// HU histogram of air voxels, bins of [`BIN_HU`] from [`PADDING_HU`].
    air: Vec<u64>,
    /// HU histogram of body voxels over [`SOFT_RANGE_HU`].
    soft: Vec<u64>,
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

/// The facts of every `stride`-th slice, computed in parallel.
fn slice_facts(v: &Volume, spec: &ViewSpec, stride: usize) -> Vec<SliceFacts> {
    (0..v.dims[0].div_ceil(stride))
        .into_par_iter()
        .map(|k| slice(v, spec, k * stride))
        .collect()
}

/// Label of the cells outside every component in [`components`].
const CLOSED: u32 = u32::MAX;

/// The 4-connected components of the cells of a `w` x `h` grid where `open` holds, by union-find
/// in one row-major pass: each open cell is labelled with its component's first cell (in
/// row-major order), each closed cell with [`CLOSED`].
fn components(w: usize, h: usize, open: impl Fn(usize) -> bool) -> Vec<u32> {
    fn find(parent: &mut [u32], mut i: u32) -> u32 {
        while parent[i as usize] != i {
            let up = parent[parent[i as usize] as usize];
            parent[i as usize] = up; // path halving
            i = up;
        }
        i
    }
    fn union(parent: &mut [u32], a: u32, b: u32) {
        let (ra, rb) = (find(parent, a), find(parent, b));
        // The smaller index stays the root: the component's first cell.
        parent[ra.max(rb) as usize] = ra.min(rb);
    }
    // Every parent has a smaller index than its child, and a set's root is its smallest index.
    let mut parent = vec![CLOSED; w * h];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            if !open(i) {
                continue;
            }
            // Join the left neighbour's set (its root stays the smallest index), else start one.
            let p = if x > 0 && parent[i - 1] != CLOSED {
                parent[i - 1]
            } else {
                i as u32
            };
            parent[i] = p;
            if y > 0 {
                let up = parent[i - w];
                if up != CLOSED && up != p {
                    union(&mut parent, p, up);
                }
            }
        }
    }
    // Parents precede their children, so one forward pass resolves every cell to its root.
    for i in 0..w * h {
        let p = parent[i];
        if p != CLOSED {
            parent[i] = parent[p as usize];
        }
    }
    parent
}

/// What slice `z` shows.
fn slice(v: &Volume, spec: &ViewSpec, z: usize) -> SliceFacts {
    match v.plane(z) {
        Plane::I16(plane) => slice_of(v, spec, plane),
        Plane::F32(plane) => slice_of(v, spec, plane),
    }
}

/// What a slice of `v` with voxels `plane` shows.
fn slice_of<T: Hu>(v: &Volume, spec: &ViewSpec, plane: &[T]) -> SliceFacts {
    let [_, ny, nx] = v.dims;
    let (py, px) = (v.spacing_mm[1], v.spacing_mm[2]);
    // The body masks on a grid of about MASK_STEP_MM.
    let step = |p: f64| ((MASK_STEP_MM / p).round() as usize).max(1);
    let (sy, sx) = (step(py), step(px));
    let (h, w) = (ny.div_ceil(sy), nx.div_ceil(sx));
    let air_bins = ((AIR_MAX_HU - PADDING_HU) / BIN_HU) as usize;
    let soft_bins = ((SOFT_RANGE_HU[1] - SOFT_RANGE_HU[0]) / BIN_HU) as usize;
    let mut air = vec![0u64; air_bins];
    let mut soft = vec![0u64; soft_bins];
    let mut body = vec![false; h * w];
    for (gy, row) in plane.chunks_exact(nx).step_by(sy).enumerate() {
        for (gx, &voxel) in row.iter().step_by(sx).enumerate() {
            let hu = voxel.hu();
            if hu > BODY_MIN_HU {
                body[gy * w + gx] = true;
                if let Some(b) = bin(hu, SOFT_RANGE_HU[0], soft_bins) {
                    soft[b] += 1;
                }
            } else if let Some(b) = bin(hu, PADDING_HU, air_bins) {
                air[b] += 1;
            }
        }
    }
    let mask = Mask { body, h, w, sy, sx };
    SliceFacts {
        level: level(v, spec, plane, &mask),
        air,
        soft,
    }
}

/// A slice's body mask (voxels above [`BODY_MIN_HU`]) on a grid of `sy` x `sx` voxels.
struct Mask {
    body: Vec<bool>,
    h: usize,
    w: usize,
    sy: usize,
    sx: usize,
}

/// Whether a slice of `v` with voxels `plane` and body `mask` is at lumbar level, and if not,
/// why.
fn level<T: Hu>(v: &Volume, spec: &ViewSpec, plane: &[T], mask: &Mask) -> Level {
    let g = &spec.gate;
    let [_, ny, nx] = v.dims;
    let (py, px) = (v.spacing_mm[1], v.spacing_mm[2]);
    let &Mask {
        ref body,
        h,
        w,
        sy,
        sx,
    } = mask;
    // Air reachable from the image border is outside; the rest of the non-body cells are
    // cavities (lungs, bowel gas).
    let air = components(w, h, |i| !body[i]);
    let mut reaches_border = vec![false; h * w];
    let border = (0..w)
        .flat_map(|x| [x, (h - 1) * w + x])
        .chain((0..h).flat_map(|y| [y * w, y * w + w - 1]));
    for i in border {
        if air[i] != CLOSED {
            reaches_border[air[i] as usize] = true;
        }
    }
    let outside = |i: usize| air[i] != CLOSED && reaches_border[air[i] as usize];
    // The largest connected part of body plus cavities (the first in row-major order of the
    // largest ones).
    let labels = components(w, h, |i| !outside(i));
    let mut size = vec![0u32; h * w];
    for &l in &labels {
        if l != CLOSED {
            size[l as usize] += 1;
        }
    }
    let Some(part_id) = (0..h * w)
        .filter(|&i| size[i] > 0)
        .max_by_key(|&i| (size[i], std::cmp::Reverse(i)))
    else {
        return Level::NoBody;
    };
    let part_id = part_id as u32;
    let cells = size[part_id as usize] as usize;
    let cell_mm2 = (sy as f64 * py) * (sx as f64 * px);
    let area = cells as f64 * cell_mm2;
    if area < g.min_trunk_area_mm2 {
        return Level::SmallBody;
    }
    let (mut cavities, mut x_sum) = (0usize, 0usize);
    for (row, row_labels) in labels.chunks_exact(w).enumerate() {
        for (x, &l) in row_labels.iter().enumerate() {
            if l == part_id {
                cavities += usize::from(!body[row * w + x]);
                x_sum += x;
            }
        }
    }
    if cavities as f64 / cells as f64 > g.max_enclosed_air_fraction {
        return Level::Lungs;
    }
    let centre_gx = (x_sum as f64 / cells as f64).round() as usize;
    // The part's front and back along its centre column, in full-resolution rows.
    let column: Vec<usize> = (0..h)
        .filter(|&gy| labels[gy * w + centre_gx] == part_id)
        .collect();
    let (Some(&first), Some(&last)) = (column.first(), column.last()) else {
        return Level::NoVertebra;
    };
    let (top, bottom) = (first * sy, (last * sy + sy - 1).min(ny - 1));
    let cx = centre_gx * sx;
    let half = (spec.spine_band_mm / 2.0 / px).round() as usize;
    let (x0, x1) = (cx.saturating_sub(half), (cx + half).min(nx - 1));
    let bone = |y: usize, x: usize| plane[y * nx + x].hu() > spec.bone_threshold_hu;
    // Bone with a bone neighbour (noise alone rarely pairs), as its left-right span per row.
    let span = |y: usize| -> f64 {
        let supported = |x: usize| {
            bone(y, x)
                && ((x > 0 && bone(y, x - 1))
                    || (x + 1 < nx && bone(y, x + 1))
                    || (y > 0 && bone(y - 1, x))
                    || (y + 1 < ny && bone(y + 1, x)))
        };
        let left = (x0..=x1).find(|&x| supported(x));
        let right = (x0..=x1).rev().find(|&x| supported(x));
        match (left, right) {
            (Some(l), Some(r)) => (r - l + 1) as f64 * px,
            _ => 0.0,
        }
    };
    let depth = g.min_spine_depth_mm / py;
    // The filled part's left-right width along a full-resolution row, through the band centre.
    let width_at = |y: usize| -> f64 {
        let row = (y / sy) * w;
        let inside = |gx: usize| labels[row + gx] == part_id;
        if !inside(centre_gx) {
            return 0.0;
        }
        let left = (0..centre_gx).rev().take_while(|&gx| inside(gx)).count();
        let right = (centre_gx + 1..w).take_while(|&gx| inside(gx)).count();
        (left + right + 1) as f64 * sx as f64 * px
    };
    let (mut run, mut narrow): (Option<usize>, bool) = (None, false);
    for y in top..=bottom + 1 {
        let wide = y <= bottom && span(y) >= g.min_vertebra_width_mm;
        match (wide, run) {
            (true, None) => run = Some(y),
            (false, Some(r)) => {
                let centre = (r + y - 1) as f64 / 2.0;
                if centre - top as f64 >= depth && bottom as f64 - centre >= depth {
                    if width_at(centre.round() as usize) >= g.min_trunk_width_mm {
                        return Level::Lumbar;
                    }
                    narrow = true;
                }
                run = None;
            }
            _ => {}
        }
    }
    if narrow {
        Level::Narrow
    } else {
        Level::NoVertebra
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Labels by depth-first search from each unlabelled open cell in row-major order.
    fn reference(w: usize, h: usize, open: &[bool]) -> Vec<u32> {
        let mut label = vec![CLOSED; w * h];
        for start in 0..w * h {
            if !open[start] || label[start] != CLOSED {
                continue;
            }
            let mut stack = vec![start];
            label[start] = start as u32;
            while let Some(i) = stack.pop() {
                let (x, y) = (i % w, i / w);
                let mut next = Vec::new();
                if x > 0 {
                    next.push(i - 1);
                }
                if x + 1 < w {
                    next.push(i + 1);
                }
                if y > 0 {
                    next.push(i - w);
                }
                if y + 1 < h {
                    next.push(i + w);
                }
                for j in next {
                    if open[j] && label[j] == CLOSED {
                        label[j] = start as u32;
                        stack.push(j);
                    }
                }
            }
        }
        label
    }

    #[test]
    fn components_match_a_flood_fill_on_random_grids() {
        let mut state = 0x853c_49e6_748f_ea9bu64;
        for (w, h, density) in [
            (1, 1, 50),
            (7, 1, 50),
            (1, 9, 50),
            (17, 13, 45),
            (64, 48, 60),
        ] {
            for _ in 0..20 {
                let open: Vec<bool> = (0..w * h)
                    .map(|_| {
                        state = state
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        (state >> 33) % 100 < density
                    })
                    .collect();
                assert_eq!(
                    components(w, h, |i| open[i]),
                    reference(w, h, &open),
                    "{w} x {h}"
                );
            }
        }
    }
}

//! The trabecular attenuation of the lumbar vertebral bodies, in HU, as radiologists read it
//! from abdominal CT, calibrated per study against internal references.
//!
//! 1. Each axial slice's vertebral body is found as the largest region of non-bone enclosed by
//!    bone near the body's left-right centre behind its middle: the trabecular core inside the
//!    cortical shell. The bone threshold follows the study's own bone: of 40% to 90% of the
//!    spine region's 98th percentile, and of the trabecular level so found plus 3 to 6 noise
//!    standard deviations, the one that encloses a core on the most slices, so dense and
//!    osteoporotic cores alike are found. Discs and endplates have no enclosed core; the spinal canal is too small.
//! 2. Consecutive slices with a core form a body (a slice whose thin shell shows a gap keeps the
//!    core above it while its shell is still there: a disc has none). The sacrum is the lowest
//!    run of at least 15 mm whose core moves at least 8 mm posteriorly from its top to its
//!    bottom (a vertebral body's does not); the bodies above it are L5, L4, … T12, counted
//!    from it. Without a sacrum in the field of view, or past a run that is too short or too long
//!    for one vertebral body, levels are counted on but marked uncertain; a run longer than any
//!    body (40 mm) is not measured. A body cut by the field of view is marked partial.
//! 3. Each body's region of interest is its core, 2 mm in from the cortex, on every slice but
//!    the run's first and last
//!    (when it has four or more); its median HU is the measured attenuation.
//! 4. Internal references: air outside the body and subcutaneous fat under the skin. The
//!    scanner's offset is the fat's median minus −100 HU (fat's attenuation); air's median is
//!    reported as a check of the scale. The aorta's lumen (the brightest vessel in front of the
//!    upper lumbar bodies) gives the contrast phase; its blood is a reference only unenhanced
//!    (40 HU), which then joins the offset.
//!
//! The calibrated attenuation is the measured one minus the offset.

mod femur;
mod slice;
mod vessels;

use crate::error::DicomError;
use crate::volume::{Hu, Plane, Volume};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use slice::{CORE_AREA_MM2, Region, SliceFindings, eroded, findings};
use std::fmt;

/// Fractions of the spine region's 98th percentile (the cortical level) tried as the bone
/// threshold.
const THRESHOLD_FRACTIONS: [f32; 6] = [0.4, 0.5, 0.6, 0.7, 0.8, 0.9];
/// The lowest bone threshold, HU.
const MIN_BONE_HU: f32 = 150.0;
/// Subcutaneous fat's attenuation, HU.
pub const FAT_REFERENCE_HU: f64 = -100.0;
/// Unenhanced blood's attenuation, HU.
pub const BLOOD_REFERENCE_HU: f64 = 40.0;
/// Shortest run of slices that is the sacrum, mm.
const SACRUM_MIN_MM: f64 = 15.0;
/// Least posterior drift of the sacrum's core from its top to its bottom, mm.
const SACRUM_DRIFT_MM: f64 = 8.0;
/// Shortest and longest vertebral body, mm.
const BODY_MM: [f64; 2] = [10.0, 40.0];
/// Margin of the region of interest inside the cortex, mm.
const ROI_MARGIN_MM: f64 = 2.0;
/// Aortic lumen (calibrated HU) at or above which the phase is arterial.
const ARTERIAL_HU: f64 = 250.0;
/// A vessel brighter than soft tissue by this much (HU) is enhanced.
const ENHANCED_HU: f64 = 60.0;

/// A lumbar (or the lowest thoracic) vertebra.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Level {
    /// The twelfth thoracic vertebra.
    T12,
    /// The first lumbar vertebra.
    L1,
    /// The second lumbar vertebra.
    L2,
    /// The third lumbar vertebra.
    L3,
    /// The fourth lumbar vertebra.
    L4,
    /// The fifth lumbar vertebra.
    L5,
}

impl Level {
    /// T12 to L5, superior first.
    pub const ALL: [Level; 6] = [
        Level::T12,
        Level::L1,
        Level::L2,
        Level::L3,
        Level::L4,
        Level::L5,
    ];

    /// Its name, e.g. `L1`.
    pub fn name(self) -> &'static str {
        match self {
            Level::T12 => "T12",
            Level::L1 => "L1",
            Level::L2 => "L2",
            Level::L3 => "L3",
            Level::L4 => "L4",
            Level::L5 => "L5",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The contrast phase, from the aortic lumen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContrastPhase {
    /// No enhanced vessel in front of the spine.
    Unenhanced,
    /// An enhanced aorta below the arterial level.
    PortalVenous,
    /// An aorta at or above the arterial level.
    Arterial,
}

impl ContrastPhase {
    /// Its name, e.g. `portal_venous`.
    pub fn name(self) -> &'static str {
        match self {
            ContrastPhase::Unenhanced => "unenhanced",
            ContrastPhase::PortalVenous => "portal_venous",
            ContrastPhase::Arterial => "arterial",
        }
    }

    /// The phase of an aortic lumen of `hu` (calibrated); none when no vessel was enhanced.
    pub fn of_aorta(hu: Option<f64>) -> Self {
        match hu {
            None => ContrastPhase::Unenhanced,
            Some(v) if v >= ARTERIAL_HU => ContrastPhase::Arterial,
            Some(_) => ContrastPhase::PortalVenous,
        }
    }
}

/// One vertebral body's measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VertebraMeasurement {
    /// The level.
    pub level: Level,
    /// Median trabecular HU, calibrated (the scanner's offset removed).
    pub trabecular_hu: f64,
    /// Median trabecular HU as stored.
    pub measured_hu: f64,
    /// Voxels in the region of interest.
    pub voxels: usize,
    /// Patient z (superior) of the body's centre, mm.
    pub z_mm: f64,
    /// Patient z of its lowest and highest slice with a core, mm.
    pub z_range_mm: [f64; 2],
    /// Patient x (left) of its core's rightmost and leftmost pixel, mm.
    pub x_range_mm: [f64; 2],
    /// Whether the level is uncertain (counted without a sacrum, or past an irregular run).
    pub level_uncertain: bool,
    /// Whether the field of view cuts the body.
    pub partial: bool,
}

/// The patient's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// Patient right.
    Right,
    /// Patient left.
    Left,
}

impl Side {
    /// `right` or `left`.
    pub fn name(self) -> &'static str {
        match self {
            Side::Right => "right",
            Side::Left => "left",
        }
    }
}

/// One femoral neck's measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeckMeasurement {
    /// Which femur.
    pub side: Side,
    /// Median trabecular HU, calibrated.
    pub trabecular_hu: f64,
    /// Median trabecular HU as stored.
    pub measured_hu: f64,
    /// Voxels in the region of interest.
    pub voxels: usize,
    /// Patient z of its lowest and highest slice, mm.
    pub z_range_mm: [f64; 2],
    /// Patient x of its region's extent, mm.
    pub x_range_mm: [f64; 2],
}

/// The study's internal references and what they give.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// The scanner's offset removed from every measurement, HU.
    pub offset_hu: f64,
    /// Median of air outside the body, HU (expected −1000).
    pub air_hu: Option<f64>,
    /// Median of subcutaneous fat, HU.
    pub fat_hu: Option<f64>,
    /// Median of the aortic lumen, calibrated HU (none when no vessel is enhanced).
    pub aorta_hu: Option<f64>,
    /// The contrast phase.
    pub contrast_phase: ContrastPhase,
}

/// Everything measured on a study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attenuation {
    /// The vertebral bodies measured, superior first.
    pub vertebrae: Vec<VertebraMeasurement>,
    /// The femoral necks measured (right, then left).
    #[serde(default)]
    pub femoral_necks: Vec<NeckMeasurement>,
    /// The references.
    pub calibration: Calibration,
    /// Whether the sacrum was found (the levels are counted from it).
    pub sacrum_found: bool,
}

impl Attenuation {
    /// The measurement of `level`, if it was measured.
    pub fn level(&self, level: Level) -> Option<&VertebraMeasurement> {
        self.vertebrae.iter().find(|v| v.level == level)
    }
}

/// The median of `values` (None when empty).
fn median(values: &mut [f32]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mid = values.len() / 2;
    let (_, m, _) = values.select_nth_unstable_by(mid, f32::total_cmp);
    Some(f64::from(*m))
}

/// The standard deviation of `values` estimated from their median absolute deviation.
fn noise_sd(values: &mut [f32]) -> Option<f64> {
    let m = median(values)? as f32;
    let mut dev: Vec<f32> = values.iter().map(|v| (v - m).abs()).collect();
    Some(median(&mut dev)? * 1.4826)
}

/// A slice's voxels as HU.
fn slice_hu(plane: Plane<'_>) -> Vec<f32> {
    match plane {
        Plane::I16(v) => v.iter().map(|x| x.hu()).collect(),
        Plane::F32(v) => v.to_vec(),
    }
}

/// What a slice shows.
type Found = SliceFindings;

/// A slice's HU by its superior-first index.
type HuOf<'a> = &'a (dyn Fn(usize) -> Vec<f32> + Sync);

/// One run of consecutive slices with a core (indices into the superior-first order).
struct Run {
    slices: Vec<usize>,
}

/// Measures the vertebral trabecular attenuation of an axial CT volume.
pub fn measure(volume: &Volume) -> Result<Attenuation, DicomError> {
    let [nz, rows, cols] = volume.dims;
    if nz == 0 || rows < 8 || cols < 8 {
        return Err(DicomError::Attenuation(
            "the volume is too small to find vertebrae in".into(),
        ));
    }
    let spacing = [volume.spacing_mm[1], volume.spacing_mm[2]];
    // Slices superior first.
    let mut order: Vec<(usize, f64)> = (0..nz)
        .map(|k| (k, volume.patient_position(k as f64, 0.0, 0.0)[2]))
        .collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1));
    let thickness = volume.spacing_mm[0].abs().max(0.1);

    // The bone threshold from the spine region's brightest voxels.
    let mut spine: Vec<f32> = order
        .par_iter()
        .flat_map_iter(|&(k, _)| {
            let hu = slice_hu(volume.plane(k));
            let f = findings(&hu, (rows, cols), spacing, f32::INFINITY);
            let mut out = Vec::new();
            if let Some((cx, front, back)) = f.body {
                let half = (35.0 / spacing[1]).round() as usize;
                let c = cx.round() as usize;
                for r in front + (back - front) / 4..=back {
                    for x in c.saturating_sub(half)..=(c + half).min(cols - 1) {
                        out.push(hu[r * cols + x]);
                    }
                }
            }
            out
        })
        .collect();
    if spine.is_empty() {
        return Err(DicomError::Attenuation(
            "no body in the field of view".into(),
        ));
    }
    let at = (spine.len() * 98 / 100).min(spine.len() - 1);
    let (_, p98, _) = spine.select_nth_unstable_by(at, f32::total_cmp);
    let p98 = *p98;
    // A slice's HU are read again where needed, never the whole volume at once: the study's
    // memory is accounted as stored, and this adds only a slice per thread.
    let hu_of = |i: usize| slice_hu(volume.plane(order[i].0));
    let at_threshold = |bone_hu: f32| -> Vec<SliceFindings> {
        (0..order.len())
            .into_par_iter()
            .map(|i| findings(&hu_of(i), (rows, cols), spacing, bone_hu))
            .collect()
    };
    // The threshold between trabecular and cortical bone differs by patient: the fraction of
    // the cortical level that encloses a core on the most slices.
    let (bone_hu, found) = THRESHOLD_FRACTIONS
        .iter()
        .map(|f| {
            let bone_hu = (f * p98).max(MIN_BONE_HU);
            (bone_hu, at_threshold(bone_hu))
        })
        .max_by_key(|(_, found)| found.iter().filter(|f| f.core.is_some()).count())
        .ok_or_else(|| DicomError::Attenuation("no threshold to try".into()))?;
    // Then thresholds just above the trabecular level those cores show (its median plus 3 to 6
    // standard deviations of the image noise, measured in subcutaneous fat): the one, of all
    // tried, that encloses a core on the most slices.
    let mut trabecular: Vec<f32> = Vec::new();
    for (i, f) in found.iter().enumerate() {
        if let Some(c) = &f.core {
            let hu = hu_of(i);
            trabecular.extend(c.pixels.iter().map(|&p| hu[p]));
        }
    }
    let mut fat: Vec<f32> = found.iter().flat_map(|f| f.fat.iter().copied()).collect();
    let noise = noise_sd(&mut fat).unwrap_or(20.0);
    let count = |f: &[SliceFindings]| f.iter().filter(|f| f.core.is_some()).count();
    let (mut bone_hu, mut found) = (bone_hu, found);
    if let Some(t) = median(&mut trabecular) {
        for k in [3.0, 4.0, 5.0, 6.0] {
            let above = ((t + k * noise) as f32).max(MIN_BONE_HU);
            let tried = at_threshold(above);
            if count(&tried) > count(&found) {
                (bone_hu, found) = (above, tried);
            }
        }
    }

    // Cores smaller than half the typical one are canals or noise.
    let mut areas: Vec<f32> = found
        .iter()
        .filter_map(|f| f.core.as_ref().map(|c| c.area_mm2 as f32))
        .collect();
    let typical = median(&mut areas).unwrap_or(CORE_AREA_MM2[0]);
    let mut cores: Vec<Option<Region>> = found
        .iter()
        .map(|f| f.core.clone().filter(|c| c.area_mm2 >= 0.5 * typical))
        .collect();
    // A slice whose shell has a gap the closing missed keeps the core of the slice above when
    // its shell is still there (bone on most rays from the core's centre) and that core's
    // pixels are not bone (an endplate is): a disc has no shell, so bodies stay apart.
    for i in 1..cores.len() {
        if cores[i].is_some() {
            continue;
        }
        let Some(prev) = cores[i - 1].clone() else {
            continue;
        };
        let hu = hu_of(i);
        let bony = prev.pixels.iter().filter(|&&p| hu[p] >= bone_hu).count();
        if bony * 5 < prev.pixels.len() && shell_around(&hu, cols, &prev, spacing, bone_hu) {
            cores[i] = Some(prev);
        }
    }
    let core = |i: usize| -> Option<&Region> { cores[i].as_ref() };
    let mut runs: Vec<Run> = Vec::new();
    for i in 0..found.len() {
        if core(i).is_none() {
            continue;
        }
        match runs.last_mut() {
            Some(r) if i > 0 && r.slices.last() == Some(&(i - 1)) => r.slices.push(i),
            _ => runs.push(Run { slices: vec![i] }),
        }
    }
    // A run too short for a body one slice away from another run around the same centre is a
    // piece of that body.
    let centre = |r: &Run| {
        let c: Vec<(f64, f64)> = r
            .slices
            .iter()
            .filter_map(|&i| core(i))
            .map(|c| c.centre)
            .collect();
        let k = c.len().max(1) as f64;
        c.iter()
            .fold((0.0, 0.0), |a, b| (a.0 + b.0 / k, a.1 + b.1 / k))
    };
    let mut k = 0;
    while k + 1 < runs.len() {
        let (a, b) = (&runs[k], &runs[k + 1]);
        let gap = b.slices[0] - a.slices[a.slices.len() - 1];
        let short = |r: &Run| (r.slices.len() as f64) * thickness < BODY_MM[0];
        let (ca, cb) = (centre(a), centre(b));
        let near = ((ca.0 - cb.0) * spacing[0]).hypot((ca.1 - cb.1) * spacing[1]) <= 3.0;
        if gap == 2 && near && (short(a) || short(b)) {
            let tail = runs.remove(k + 1);
            runs[k].slices.extend(tail.slices);
        } else {
            k += 1;
        }
    }
    let length = |r: &Run| r.slices.len() as f64 * thickness;
    let row_of = |i: usize| core(i).map_or(0.0, |c| c.centre.0);

    // The sacrum: the lowest long run whose core drifts posteriorly.
    let sacrum = runs.iter().rposition(|r| {
        let (Some(&top), Some(&bottom)) = (r.slices.first(), r.slices.last()) else {
            return false;
        };
        length(r) >= SACRUM_MIN_MM && (row_of(bottom) - row_of(top)) * spacing[0] >= SACRUM_DRIFT_MM
    });
    let mut above = match sacrum {
        Some(s) => &runs[..s],
        None => &runs[..],
    };
    // Pieces of the sacrum's top (its shell broken by the iliac wings) lie behind the lumbar
    // column: runs just above the sacrum whose core is SACRUM_DRIFT_MM behind the column's.
    if sacrum.is_some() {
        let mut rows: Vec<f32> = above.iter().map(|r| centre(r).0 as f32).collect();
        if let Some(column) = median(&mut rows) {
            while let Some(last) = above.last() {
                if (centre(last).0 - column) * spacing[0] < SACRUM_DRIFT_MM {
                    break;
                }
                above = &above[..above.len() - 1];
            }
        }
    }

    // The references.
    let mut air: Vec<f32> = found.iter().flat_map(|f| f.air.iter().copied()).collect();
    let mut fat: Vec<f32> = found.iter().flat_map(|f| f.fat.iter().copied()).collect();
    let (air_hu, fat_hu) = (median(&mut air), median(&mut fat));
    let fat_offset = fat_hu.map(|f| f - FAT_REFERENCE_HU);
    // The aorta in front of the upper bodies (the four above the lowest two lumbar ones).
    let upper: Vec<usize> = above
        .iter()
        .rev()
        .skip(2)
        .flat_map(|r| r.slices.iter().copied())
        .collect();
    let soft = fat_offset.unwrap_or(0.0) + 45.0;
    let aorta_raw = vessels::aorta(
        (&found, &hu_of),
        &upper,
        (rows, cols),
        spacing,
        soft + ENHANCED_HU,
        bone_hu,
    );
    let phase = ContrastPhase::of_aorta(aorta_raw.map(|a| a - fat_offset.unwrap_or(0.0)));
    let offset = match (fat_offset, phase) {
        (Some(f), ContrastPhase::Unenhanced) => {
            let blood = vessels::blood((&found, &hu_of), &upper, (rows, cols), spacing);
            blood.map_or(f, |b| (f + (b - BLOOD_REFERENCE_HU)) / 2.0)
        }
        (Some(f), _) => f,
        (None, _) => 0.0,
    };

    // Label from the sacrum up; measure each body.
    // The core already lies GROWTH pixels inside the shell; fine pixels need more.
    let margin = ((ROI_MARGIN_MM / spacing[1].min(spacing[0])).ceil() as usize)
        .saturating_sub(slice::GROWTH);
    let mut vertebrae = Vec::new();
    let mut uncertain = sacrum.is_none();
    for (n, run) in above.iter().rev().enumerate() {
        let Some(&level) = Level::ALL.iter().rev().nth(n) else {
            break;
        };
        let cut = run.slices.first() == Some(&0) || run.slices.last() == Some(&(found.len() - 1));
        // A body cut by the field of view may be short; any other run of the wrong length
        // makes this level and those above it uncertain, and a run longer than any body is no
        // body to measure.
        let len = length(run);
        if (!cut && len < BODY_MM[0]) || len > BODY_MM[1] {
            uncertain = true;
        }
        if len > BODY_MM[1] {
            continue;
        }
        let inner: &[usize] = if run.slices.len() >= 4 {
            &run.slices[1..run.slices.len() - 1]
        } else {
            &run.slices
        };
        let mut values = Vec::new();
        for &i in inner {
            if let Some(c) = core(i) {
                let hu = hu_of(i);
                values.extend(eroded(&c.pixels, cols, margin).iter().map(|&p| hu[p]));
            }
        }
        let voxels = values.len();
        let Some(measured) = median(&mut values) else {
            continue;
        };
        let (Some(&first), Some(&last)) = (run.slices.first(), run.slices.last()) else {
            continue;
        };
        // The core's left-right extent on its slices, in patient mm.
        let columns = run
            .slices
            .iter()
            .filter_map(|&i| core(i))
            .flat_map(|c| c.pixels.iter().map(|p| p % cols));
        let (lo, hi) = columns.fold((usize::MAX, 0), |(lo, hi), c| (lo.min(c), hi.max(c)));
        let x_of = |c: usize| volume.patient_position(order[first].0 as f64, 0.0, c as f64)[0];
        let (xa, xb) = (x_of(lo.min(hi)), x_of(hi));
        vertebrae.push(VertebraMeasurement {
            level,
            trabecular_hu: measured - offset,
            measured_hu: measured,
            voxels,
            z_mm: (order[first].1 + order[last].1) / 2.0,
            z_range_mm: [order[last].1, order[first].1],
            x_range_mm: [xa.min(xb), xa.max(xb)],
            level_uncertain: uncertain,
            partial: cut,
        });
    }
    vertebrae.reverse();
    // The femoral necks, below the sacrum (or the lowest lumbar body).
    let below = match sacrum {
        Some(k) => runs[k].slices.last().copied(),
        None => above.last().and_then(|r| r.slices.last().copied()),
    };
    let femoral_necks = match below {
        Some(last) => femur::femoral_necks(
            volume,
            (&order, &found, &hu_of),
            last + 1,
            (spacing, bone_hu),
        )
        .into_iter()
        .map(|mut n| {
            n.trabecular_hu = n.measured_hu - offset;
            n
        })
        .collect(),
        None => Vec::new(),
    };
    Ok(Attenuation {
        vertebrae,
        femoral_necks,
        calibration: Calibration {
            offset_hu: offset,
            air_hu,
            fat_hu,
            aorta_hu: aorta_raw.map(|a| a - offset),
            contrast_phase: phase,
        },
        sacrum_found: sacrum.is_some(),
    })
}

/// Whether bone lies on at least 6 of 8 rays from `core`'s centre within 35 mm: a vertebral
/// shell around it.
fn shell_around(hu: &[f32], cols: usize, core: &Region, spacing: [f64; 2], bone_hu: f32) -> bool {
    let rows = hu.len() / cols;
    let (cy, cx) = core.centre;
    let hits = (0..8)
        .filter(|k| {
            let a = *k as f64 * std::f64::consts::FRAC_PI_4;
            let (dy, dx) = (a.sin() / spacing[0], a.cos() / spacing[1]);
            (1..=35).any(|mm| {
                let (y, x) = (cy + dy * mm as f64, cx + dx * mm as f64);
                y >= 0.0
                    && x >= 0.0
                    && (y.round() as usize) < rows
                    && (x.round() as usize) < cols
                    && hu[y.round() as usize * cols + x.round() as usize] >= bone_hu
            })
        })
        .count();
    hits >= 6
}

//! Thresholds of the input quality gate (the checks themselves live in osteo-dicom), stored with
//! the view in model manifests as `[view.gate]` so each model states what it can grade.

use crate::error::CoreError;
use serde::{Deserialize, Serialize};

/// What a study must satisfy before a model reads it: acquisition within what the model was
/// trained on, a plausible HU calibration and a lumbar spine in the field of view.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GateSpec {
    /// Accepted distance between slices, mm, `[min, max]`.
    pub slice_spacing_mm: [f64; 2],
    /// Accepted in-plane pixel size, mm, `[min, max]`.
    pub pixel_spacing_mm: [f64; 2],
    /// Largest tilt of the slices from the axial plane, degrees.
    pub max_tilt_deg: f64,
    /// Accepted median HU of air (voxels between -1500 and -400 HU), `[min, max]`.
    pub air_hu: [f64; 2],
    /// Accepted HU of the soft-tissue peak of the body's histogram, `[min, max]`.
    pub soft_tissue_hu: [f64; 2],
    /// Smallest cross-section of a slice's largest body part (air cavities included) that counts
    /// as an adult trunk, mm².
    pub min_trunk_area_mm2: f64,
    /// Largest fraction of that cross-section that may be enclosed air (lungs, bowel gas) on a
    /// lumbar slice.
    pub max_enclosed_air_fraction: f64,
    /// Smallest left-right width of bone in the body's midline band that counts as a vertebra,
    /// mm.
    pub min_vertebra_width_mm: f64,
    /// Smallest distance from the vertebra to the body surface, in front and behind, mm.
    pub min_spine_depth_mm: f64,
    /// Smallest left-right width of the body (air cavities included) through the vertebra, mm.
    pub min_trunk_width_mm: f64,
    /// Largest cranio-caudal gap between vertebra slices still counted as one column (the
    /// intervertebral discs), mm.
    pub max_gap_mm: f64,
    /// Cranio-caudal extent of the bone column a gradable study shows (L1 to L4), mm.
    pub min_spine_extent_mm: f64,
}

impl Default for GateSpec {
    fn default() -> Self {
        Self {
            slice_spacing_mm: [0.5, 5.0],
            pixel_spacing_mm: [0.4, 3.0],
            max_tilt_deg: 25.0,
            air_hu: [-1100.0, -900.0],
            soft_tissue_hu: [-30.0, 160.0],
            min_trunk_area_mm2: 25_000.0,
            max_enclosed_air_fraction: 0.3,
            min_vertebra_width_mm: 30.0,
            min_spine_depth_mm: 35.0,
            min_trunk_width_mm: 180.0,
            max_gap_mm: 25.0,
            min_spine_extent_mm: 120.0,
        }
    }
}

impl GateSpec {
    /// Checks that every threshold is usable.
    pub fn validate(&self) -> Result<(), CoreError> {
        let bad = |reason: String| {
            Err(CoreError::InvalidSpec {
                what: "quality gate",
                reason,
            })
        };
        let ranges = [
            ("slice_spacing_mm", self.slice_spacing_mm),
            ("pixel_spacing_mm", self.pixel_spacing_mm),
            ("air_hu", self.air_hu),
            ("soft_tissue_hu", self.soft_tissue_hu),
        ];
        for (name, [lo, hi]) in ranges {
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                return bad(format!("{name} must be an increasing [min, max] pair"));
            }
        }
        if self.slice_spacing_mm[0] <= 0.0 || self.pixel_spacing_mm[0] <= 0.0 {
            return bad("slice_spacing_mm and pixel_spacing_mm must be positive".into());
        }
        if !(0.0..90.0).contains(&self.max_tilt_deg) {
            return bad("max_tilt_deg must be within 0..90".into());
        }
        if !(0.0..=1.0).contains(&self.max_enclosed_air_fraction) {
            return bad("max_enclosed_air_fraction must be within 0..=1".into());
        }
        let positive = [
            ("min_trunk_area_mm2", self.min_trunk_area_mm2),
            ("min_vertebra_width_mm", self.min_vertebra_width_mm),
            ("min_spine_depth_mm", self.min_spine_depth_mm),
            ("min_trunk_width_mm", self.min_trunk_width_mm),
            ("max_gap_mm", self.max_gap_mm),
            ("min_spine_extent_mm", self.min_spine_extent_mm),
        ];
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return bad(format!("{name} must be positive"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_thresholds_are_named() {
        GateSpec::default().validate().expect("defaults");
        let bad = GateSpec {
            air_hu: [-900.0, -1100.0],
            ..GateSpec::default()
        };
        let err = bad.validate().expect_err("reversed range");
        assert!(err.to_string().contains("air_hu"), "{err}");
        let bad = GateSpec {
            min_spine_extent_mm: 0.0,
            ..GateSpec::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn a_partial_table_keeps_the_other_defaults() {
        let g: GateSpec = toml::from_str("min_spine_extent_mm = 90.0").expect("parse");
        assert_eq!(g.min_spine_extent_mm, 90.0);
        assert_eq!(g.air_hu, GateSpec::default().air_hu);
        assert!(toml::from_str::<GateSpec>("min_spine_extnt_mm = 90.0").is_err());
    }
}

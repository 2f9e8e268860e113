//! The model input view specification (the view itself is built by osteo-dicom), kept here so
//! model manifests can carry it without depending on DICOM code.

use crate::error::CoreError;
use crate::gate_spec::GateSpec;
use serde::{Deserialize, Serialize};

/// Parameters of the `coronal_slab` view (stored in model manifests).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ViewSpec {
    /// Output height in pixels (patient z).
    pub height: usize,
    /// Output width in pixels (patient x).
    pub width: usize,
    /// Output pixel size in mm.
    pub pixel_mm: f64,
    /// Thickness of the projected coronal slab in mm.
    pub slab_mm: f64,
    /// HU window mapped to [0, 1]: `[low, high]`.
    pub window_hu: [f32; 2],
    /// HU above which a voxel counts as bone when locating the spine.
    pub bone_threshold_hu: f32,
    /// Width in mm of the left-right band, centred on the body, searched for the spine.
    pub spine_band_mm: f64,
    /// What a study must satisfy before the view is built from it (`[view.gate]`; manifests
    /// without one get the defaults).
    #[serde(default)]
    pub gate: GateSpec,
}

impl Default for ViewSpec {
    fn default() -> Self {
        Self {
            height: 128,
            width: 128,
            pixel_mm: 3.0,
            slab_mm: 40.0,
            window_hu: [-200.0, 1200.0],
            bone_threshold_hu: 180.0,
            spine_band_mm: 60.0,
            gate: GateSpec::default(),
        }
    }
}

impl ViewSpec {
    /// The view's name in manifests and APIs.
    pub const NAME: &'static str = "coronal_slab";

    /// Checks that every parameter is usable.
    pub fn validate(&self) -> Result<(), CoreError> {
        let bad = |reason: String| {
            Err(CoreError::InvalidSpec {
                what: Self::NAME,
                reason,
            })
        };
        if !(8..=1024).contains(&self.height) || !(8..=1024).contains(&self.width) {
            return bad(format!(
                "size {}x{} must be within 8..=1024 pixels per side",
                self.height, self.width
            ));
        }
        if !(self.pixel_mm.is_finite()
            && self.pixel_mm > 0.0
            && self.slab_mm.is_finite()
            && self.slab_mm > 0.0)
        {
            return bad("pixel_mm and slab_mm must be positive".into());
        }
        if self.window_hu[0].partial_cmp(&self.window_hu[1]) != Some(std::cmp::Ordering::Less) {
            return bad(format!("window_hu {:?} must be increasing", self.window_hu));
        }
        if !(self.spine_band_mm.is_finite() && self.spine_band_mm > 0.0) {
            return bad("spine_band_mm must be positive".into());
        }
        self.gate.validate()
    }
}

//! The decoded CT volume and its de-identified summary.

use serde::{Deserialize, Serialize};

/// HU values, stored as `i16` when every value is an integer within its range (almost every CT:
/// the rescale is integral), else as `f32`: half the memory for the common case.
#[derive(Debug, Clone, PartialEq)]
pub enum Voxels {
    /// Integral HU.
    I16(Vec<i16>),
    /// Any HU.
    F32(Vec<f32>),
}

impl Voxels {
    /// Number of voxels.
    pub fn len(&self) -> usize {
        match self {
            Voxels::I16(v) => v.len(),
            Voxels::F32(v) => v.len(),
        }
    }

    /// Whether there is no voxel.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Voxel `i` in HU; panics only if `i` is out of bounds (a caller bug).
    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        match self {
            Voxels::I16(v) => f32::from(v[i]),
            Voxels::F32(v) => v[i],
        }
    }

    /// Bytes one voxel takes.
    pub fn bytes_per_voxel(&self) -> usize {
        match self {
            Voxels::I16(_) => std::mem::size_of::<i16>(),
            Voxels::F32(_) => std::mem::size_of::<f32>(),
        }
    }

    /// Bytes all voxels take.
    pub fn byte_len(&self) -> u64 {
        (self.len() * self.bytes_per_voxel()) as u64
    }

    /// Every voxel as `f32`.
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Voxels::I16(v) => v.iter().map(|&x| f32::from(x)).collect(),
            Voxels::F32(v) => v.clone(),
        }
    }

    /// Minimum, maximum and mean.
    pub fn stats(&self) -> (f64, f64, f64) {
        match self {
            Voxels::I16(v) => stats(v),
            Voxels::F32(v) => stats(v),
        }
    }
}

/// Minimum, maximum and mean of values (zeros for none).
fn stats<T: Copy + Into<f64>>(values: &[T]) -> (f64, f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let (mut lo, mut hi, mut sum) = (f64::INFINITY, f64::NEG_INFINITY, 0f64);
    for &x in values {
        let x: f64 = x.into();
        lo = lo.min(x);
        hi = hi.max(x);
        sum += x;
    }
    (lo, hi, sum / values.len() as f64)
}

impl From<Vec<f32>> for Voxels {
    fn from(v: Vec<f32>) -> Self {
        Voxels::F32(v)
    }
}

impl From<Vec<i16>> for Voxels {
    fn from(v: Vec<i16>) -> Self {
        Voxels::I16(v)
    }
}

/// A CT volume in Hounsfield units, stored `[z][y][x]` (slice, row, column).
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    /// HU values, `dims[0] * dims[1] * dims[2]` of them, slice-major then row-major.
    pub hu: Voxels,
    /// `[slices, rows, columns]`.
    pub dims: [usize; 3],
    /// Voxel spacing in mm: `[between slices, between rows, between columns]`.
    pub spacing_mm: [f64; 3],
    /// Patient position (LPS, mm) of the centre of voxel (0, 0, 0).
    pub origin_mm: [f64; 3],
    /// Unit vectors in patient space: `[row direction (column index +1), column direction
    /// (row index +1), slice normal (slice index +1)]`.
    pub direction: [[f64; 3]; 3],
    /// De-identified description of where the volume came from.
    pub summary: VolumeSummary,
}

/// De-identified facts about a volume: no names, IDs, dates or UIDs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeSummary {
    /// Modality of the selected series.
    pub modality: String,
    /// Slices (frames) in the volume.
    pub slices: usize,
    /// Rows per slice.
    pub rows: usize,
    /// Columns per slice.
    pub columns: usize,
    /// `[z, row, col]` spacing in mm; z is SliceThickness (or 0) for a single slice.
    pub spacing_mm: [f64; 3],
    /// Smallest HU value.
    pub hu_min: f64,
    /// Largest HU value.
    pub hu_max: f64,
    /// Mean HU value.
    pub hu_mean: f64,
    /// Transfer syntax UIDs of the selected series, sorted.
    pub transfer_syntaxes: Vec<String>,
    /// Distinct series found in the input.
    pub series_count: usize,
}

impl Volume {
    /// Index into `hu` of voxel `(z, y, x)`.
    pub fn index(&self, z: usize, y: usize, x: usize) -> usize {
        (z * self.dims[1] + y) * self.dims[2] + x
    }

    /// HU at voxel `(z, y, x)`; panics only if the index is outside `dims` (a caller bug).
    pub fn at(&self, z: usize, y: usize, x: usize) -> f32 {
        self.hu.get(self.index(z, y, x))
    }

    /// Patient position (LPS, mm) of the centre of voxel `(z, y, x)` (fractional indices allowed).
    pub fn patient_position(&self, z: f64, y: f64, x: f64) -> [f64; 3] {
        let [r, c, n] = self.direction;
        let steps = [
            x * self.spacing_mm[2],
            y * self.spacing_mm[1],
            z * self.spacing_mm[0],
        ];
        std::array::from_fn(|i| {
            self.origin_mm[i] + steps[0] * r[i] + steps[1] * c[i] + steps[2] * n[i]
        })
    }
}

/// Geometry of a volume, for building one from parts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VolumeGeometry {
    /// `[slices, rows, columns]`.
    pub dims: [usize; 3],
    /// `[z, row, col]` spacing in mm.
    pub spacing_mm: [f64; 3],
    /// Patient position of voxel (0, 0, 0).
    pub origin_mm: [f64; 3],
    /// Row direction, column direction, slice normal.
    pub direction: [[f64; 3]; 3],
}

impl Volume {
    /// Builds a volume from HU values and geometry, computing its summary; `None` when the value
    /// count does not match the dimensions.
    pub fn from_parts(
        hu: impl Into<Voxels>,
        g: VolumeGeometry,
        modality: &str,
        transfer_syntaxes: Vec<String>,
    ) -> Option<Volume> {
        let hu = hu.into();
        if hu.len() != g.dims.iter().product::<usize>() {
            return None;
        }
        let (hu_min, hu_max, hu_mean) = hu.stats();
        let summary = VolumeSummary {
            modality: modality.to_string(),
            slices: g.dims[0],
            rows: g.dims[1],
            columns: g.dims[2],
            spacing_mm: g.spacing_mm,
            hu_min,
            hu_max,
            hu_mean,
            transfer_syntaxes,
            series_count: 1,
        };
        Some(Volume {
            hu,
            dims: g.dims,
            spacing_mm: g.spacing_mm,
            origin_mm: g.origin_mm,
            direction: g.direction,
            summary,
        })
    }
}

//! The decoded CT volume and its de-identified summary.

use rayon::prelude::*;
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
        let (lo, hi, sum, n) = match self {
            Voxels::I16(v) => v
                .par_chunks(STATS_BLOCK)
                .map(stats_i16)
                .reduce(|| EMPTY, merge),
            Voxels::F32(v) => v
                .par_chunks(STATS_BLOCK)
                .map(stats_f32)
                .reduce(|| EMPTY, merge),
        };
        if n == 0 {
            (0.0, 0.0, 0.0)
        } else {
            (lo, hi, sum / n as f64)
        }
    }
}

/// Values per block of [`Voxels::stats`]: small enough that an `i32` lane sum of `i16` values
/// cannot overflow, large enough to amortise the work-stealing.
const STATS_BLOCK: usize = 1 << 15;

/// Lanes of the block loops: independent accumulators the compiler turns into SIMD registers.
const LANES: usize = 16;

/// Minimum, maximum, sum and count of a block.
type Partial = (f64, f64, f64, usize);

/// The partial of no values.
const EMPTY: Partial = (f64::INFINITY, f64::NEG_INFINITY, 0.0, 0);

fn merge(a: Partial, b: Partial) -> Partial {
    (a.0.min(b.0), a.1.max(b.1), a.2 + b.2, a.3 + b.3)
}

/// The partial of at most [`STATS_BLOCK`] `i16` values (exact: integer sums).
fn stats_i16(block: &[i16]) -> Partial {
    if block.is_empty() {
        return EMPTY;
    }
    let (mut lo, mut hi, mut sum) = ([i16::MAX; LANES], [i16::MIN; LANES], [0i32; LANES]);
    let mut chunks = block.chunks_exact(LANES);
    for c in &mut chunks {
        for k in 0..LANES {
            lo[k] = lo[k].min(c[k]);
            hi[k] = hi[k].max(c[k]);
            sum[k] += i32::from(c[k]);
        }
    }
    for &x in chunks.remainder() {
        lo[0] = lo[0].min(x);
        hi[0] = hi[0].max(x);
        sum[0] += i32::from(x);
    }
    let total: i64 = sum.iter().map(|&s| i64::from(s)).sum();
    (
        f64::from(*lo.iter().min().unwrap_or(&0)),
        f64::from(*hi.iter().max().unwrap_or(&0)),
        total as f64,
        block.len(),
    )
}

/// The partial of a block of `f32` values (sums in `f64`).
fn stats_f32(block: &[f32]) -> Partial {
    let (mut lo, mut hi, mut sum) = (
        [f32::INFINITY; LANES],
        [f32::NEG_INFINITY; LANES],
        [0f64; LANES],
    );
    let mut chunks = block.chunks_exact(LANES);
    for c in &mut chunks {
        for k in 0..LANES {
            lo[k] = lo[k].min(c[k]);
            hi[k] = hi[k].max(c[k]);
            sum[k] += f64::from(c[k]);
        }
    }
    for &x in chunks.remainder() {
        lo[0] = lo[0].min(x);
        hi[0] = hi[0].max(x);
        sum[0] += f64::from(x);
    }
    (
        f64::from(lo.iter().fold(f32::INFINITY, |a, &b| a.min(b))),
        f64::from(hi.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b))),
        sum.iter().sum(),
        block.len(),
    )
}

/// A voxel type a volume stores, read as HU.
pub trait Hu: Copy + Send + Sync {
    /// The value in HU.
    fn hu(self) -> f32;
}

impl Hu for i16 {
    #[inline]
    fn hu(self) -> f32 {
        f32::from(self)
    }
}

impl Hu for f32 {
    #[inline]
    fn hu(self) -> f32 {
        self
    }
}

/// One slice's voxels in their stored type, row-major: loops over a slice match the type once
/// instead of once per voxel.
#[derive(Debug, Clone, Copy)]
pub enum Plane<'a> {
    /// Integral HU.
    I16(&'a [i16]),
    /// Any HU.
    F32(&'a [f32]),
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

    /// The voxels of slice `z`; panics only if `z` is outside `dims` (a caller bug).
    pub fn plane(&self, z: usize) -> Plane<'_> {
        let n = self.dims[1] * self.dims[2];
        let range = z * n..(z + 1) * n;
        match &self.hu {
            Voxels::I16(v) => Plane::I16(&v[range]),
            Voxels::F32(v) => Plane::F32(&v[range]),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain one-pass statistics the blocked version must reproduce.
    fn naive(values: &[f64]) -> (f64, f64, f64) {
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lo, hi, values.iter().sum::<f64>() / values.len() as f64)
    }

    #[test]
    fn blocked_statistics_equal_the_plain_pass() {
        // Lengths around the lane and block sizes, values spanning the i16 range.
        for len in [
            1,
            15,
            16,
            17,
            STATS_BLOCK - 1,
            STATS_BLOCK + 1,
            3 * STATS_BLOCK + 5,
        ] {
            let ints: Vec<i16> = (0..len)
                .map(|i| ((i as i64 * 7919 + 13) % 65536 - 32768) as i16)
                .collect();
            let wide: Vec<f64> = ints.iter().map(|&x| f64::from(x)).collect();
            assert_eq!(Voxels::I16(ints).stats(), naive(&wide), "i16, {len} values");
            let floats: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin() * 1500.0).collect();
            let wide: Vec<f64> = floats.iter().map(|&x| f64::from(x)).collect();
            let (lo, hi, mean) = Voxels::F32(floats).stats();
            let (nlo, nhi, nmean) = naive(&wide);
            assert_eq!((lo, hi), (nlo, nhi), "f32, {len} values");
            assert!(
                (mean - nmean).abs() <= 1e-9 * nmean.abs().max(1.0),
                "f32 mean, {len} values"
            );
        }
        assert_eq!(Voxels::I16(Vec::new()).stats(), (0.0, 0.0, 0.0));
    }
}

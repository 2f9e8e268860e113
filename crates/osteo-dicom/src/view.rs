//! Model input views built from a volume: the same pure function at training and serving time.
//!
//! The default view, `coronal_slab`, bone-windows the volume, finds the spine's antero-posterior
//! position (median row of bone voxels in a band around the body's left-right centre), takes a
//! coronal slab around it and projects it along the antero-posterior axis into two channels (mean
//! and maximum), resampled onto a fixed physical grid: patient superior at the top, patient right on
//! the image's left (radiological convention). The geometry maps every pixel back to patient mm.

use crate::error::DicomError;
use crate::volume::{Hu, Plane, Volume};
pub use osteo_core::ViewSpec;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// HU below which a voxel is outside the body.
pub(crate) const BODY_MIN_HU: f32 = -300.0;
/// Smallest |cosine| accepted between volume axes and patient axes.
const AXIS_MIN_COS: f64 = 0.9;

/// Where a view lies in the patient (LPS, mm).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ViewGeometry {
    /// Patient position of the centre of pixel (0, 0).
    pub top_left_mm: [f64; 3],
    /// Patient displacement of one row down.
    pub row_step_mm: [f64; 3],
    /// Patient displacement of one column right.
    pub col_step_mm: [f64; 3],
    /// Pixel size in mm.
    pub pixel_mm: f64,
    /// Slab thickness in mm, centred on `top_left_mm[1]`.
    pub slab_thickness_mm: f64,
}

impl ViewGeometry {
    /// Patient position of the centre of pixel `(row, col)`.
    pub fn patient_position(&self, row: f64, col: f64) -> [f64; 3] {
        std::array::from_fn(|i| {
            self.top_left_mm[i] + row * self.row_step_mm[i] + col * self.col_step_mm[i]
        })
    }
}

/// A two-channel view image: channel 0 slab mean, channel 1 slab maximum, values in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// The specification it was built with.
    pub spec: ViewSpec,
    /// `[channel][row][col]`, `2 * height * width` values.
    pub data: Vec<f32>,
    /// Patient geometry.
    pub geometry: ViewGeometry,
}

impl View {
    /// Number of channels.
    pub const CHANNELS: usize = 2;

    /// One channel as a row-major slice.
    pub fn channel(&self, c: usize) -> &[f32] {
        let n = self.spec.height * self.spec.width;
        &self.data[c * n..(c + 1) * n]
    }
}

/// Axis mapping of an (almost) axis-aligned axial volume.
struct Axes {
    /// Sign of the row direction along patient x.
    sx: f64,
    /// Sign of the column direction along patient y.
    sy: f64,
    /// Sign of the slice normal along patient z.
    sz: f64,
}

fn axes(v: &Volume) -> Result<Axes, DicomError> {
    let [r, c, n] = v.direction;
    if r[0].abs() < AXIS_MIN_COS || c[1].abs() < AXIS_MIN_COS || n[2].abs() < AXIS_MIN_COS {
        return Err(DicomError::View {
            view: ViewSpec::NAME.into(),
            reason: format!(
                "needs an axial series (rows along patient x, columns along y); orientation is {r:?} / {c:?}"
            ),
        });
    }
    Ok(Axes {
        sx: r[0].signum(),
        sy: c[1].signum(),
        sz: n[2].signum(),
    })
}

/// The body voxels (above [`BODY_MIN_HU`]) of every other row of a slice: their number and the
/// sum of their column indices.
fn body_columns<T: Hu>(plane: &[T], nx: usize) -> (u64, u64) {
    let (mut sum, mut count) = (0u64, 0u64);
    for row in plane.chunks_exact(nx).step_by(2) {
        for (x, &voxel) in row.iter().enumerate() {
            let body = voxel.hu() > BODY_MIN_HU;
            sum += u64::from(body) * x as u64;
            count += u64::from(body);
        }
    }
    (sum, count)
}

/// The bone voxels (above `threshold`) of each row of a slice among the columns `band`.
fn band_bone<T: Hu>(plane: &[T], nx: usize, band: &[usize], threshold: f32) -> Vec<usize> {
    plane
        .chunks_exact(nx)
        .map(|row| band.iter().filter(|&&x| row[x].hu() > threshold).count())
        .collect()
}

/// Body left-right centre (patient x, mm) and spine antero-posterior position (patient y, mm).
fn locate_spine(v: &Volume, spec: &ViewSpec, ax: &Axes) -> (f64, f64) {
    let [nz, ny, nx] = v.dims;
    let x_of = |ix: usize| v.origin_mm[0] + ax.sx * ix as f64 * v.spacing_mm[2];
    let y_of = |iy: usize| v.origin_mm[1] + ax.sy * iy as f64 * v.spacing_mm[1];
    let z_step = (nz / 64).max(1);
    let slices: Vec<usize> = (0..nz).step_by(z_step).collect();
    // Body voxels of every other row: how many, and the sum of their column indices.
    let (index_sum, count) = slices
        .par_iter()
        .map(|&z| match v.plane(z) {
            Plane::I16(p) => body_columns(p, nx),
            Plane::F32(p) => body_columns(p, nx),
        })
        .reduce(|| (0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let centre_x = if count > 0 {
        v.origin_mm[0] + ax.sx * v.spacing_mm[2] * (index_sum as f64 / count as f64)
    } else {
        (x_of(0) + x_of(nx - 1)) / 2.0
    };
    // Columns whose centres lie in the band, computed once.
    let band: Vec<usize> = (0..nx)
        .filter(|&x| (x_of(x) - centre_x).abs() <= spec.spine_band_mm / 2.0)
        .collect();
    // Bone voxels in the band, per row, summed over the slices.
    let per_row = slices
        .par_iter()
        .map(|&z| match v.plane(z) {
            Plane::I16(p) => band_bone(p, nx, &band, spec.bone_threshold_hu),
            Plane::F32(p) => band_bone(p, nx, &band, spec.bone_threshold_hu),
        })
        .reduce(
            || vec![0usize; ny],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                a
            },
        );
    let mut ys: Vec<f64> = Vec::new();
    for (y, &bone) in per_row.iter().enumerate() {
        ys.extend(std::iter::repeat_n(y_of(y), bone));
    }
    let spine_y = if ys.is_empty() {
        y_of(ny / 2)
    } else {
        let mid = ys.len() / 2;
        *ys.select_nth_unstable_by(mid, f64::total_cmp).1
    };
    (centre_x, spine_y)
}

/// Builds the `coronal_slab` view of a volume.
pub fn coronal_slab(v: &Volume, spec: &ViewSpec) -> Result<View, DicomError> {
    spec.validate().map_err(|e| DicomError::View {
        view: ViewSpec::NAME.into(),
        reason: e.to_string(),
    })?;
    let ax = axes(v)?;
    let [nz, ny, nx] = v.dims;
    let (centre_x, spine_y) = locate_spine(v, spec, &ax);
    // Vertical centre: middle of the volume's z extent.
    let z_first = v.origin_mm[2];
    let z_last = z_first + ax.sz * (nz.saturating_sub(1)) as f64 * v.spacing_mm[0];
    let centre_z = (z_first + z_last) / 2.0;
    let (h, w, p) = (spec.height, spec.width, spec.pixel_mm);
    let top_left = [
        centre_x - (w as f64 - 1.0) / 2.0 * p,
        spine_y,
        centre_z + (h as f64 - 1.0) / 2.0 * p,
    ];
    let geometry = ViewGeometry {
        top_left_mm: top_left,
        row_step_mm: [0.0, 0.0, -p],
        col_step_mm: [p, 0.0, 0.0],
        pixel_mm: p,
        slab_thickness_mm: spec.slab_mm,
    };
    // Slab rows (volume y indices) and the window.
    let y_index = |y_mm: f64| (y_mm - v.origin_mm[1]) * ax.sy / v.spacing_mm[1];
    let (ya, yb) = (
        y_index(spine_y - spec.slab_mm / 2.0),
        y_index(spine_y + spec.slab_mm / 2.0),
    );
    let y0 = ya.min(yb).ceil().max(0.0) as usize;
    let y1 = (ya.max(yb).floor() as i64).min(ny as i64 - 1);
    let rows: Vec<usize> = if y1 < y0 as i64 {
        Vec::new()
    } else {
        (y0..=y1 as usize).collect()
    };
    let [lo, hi] = spec.window_hu;
    let window = |hu: f32| ((hu - lo) / (hi - lo)).clamp(0.0, 1.0);
    // Sampling positions along x and z (fractional voxel indices, None outside the volume).
    let frac = |mm: f64,
                origin: f64,
                sign: f64,
                spacing: f64,
                n: usize,
                half_extent: f64|
     -> Option<(usize, usize, f32)> {
        if n == 1 || spacing <= 0.0 {
            let d = (mm - origin).abs();
            return (d <= half_extent).then_some((0, 0, 0.0));
        }
        let f = (mm - origin) * sign / spacing;
        if f < -0.5 || f > n as f64 - 0.5 {
            return None;
        }
        let f = f.clamp(0.0, (n - 1) as f64);
        let i = (f.floor() as usize).min(n - 2);
        Some((i, i + 1, (f - i as f64) as f32))
    };
    let xs: Vec<Option<(usize, usize, f32)>> = (0..w)
        .map(|c| {
            frac(
                top_left[0] + c as f64 * p,
                v.origin_mm[0],
                ax.sx,
                v.spacing_mm[2],
                nx,
                v.spacing_mm[2] / 2.0,
            )
        })
        .collect();
    let zs: Vec<Option<(usize, usize, f32)>> = (0..h)
        .map(|r| {
            frac(
                top_left[2] - r as f64 * p,
                z_first,
                ax.sz,
                v.spacing_mm[0],
                nz,
                (v.spacing_mm[0].max(p)) / 2.0,
            )
        })
        .collect();
    let mut data = vec![0f32; 2 * h * w];
    let (mean_ch, max_ch) = data.split_at_mut(h * w);
    for (r, zf) in zs.iter().enumerate() {
        let Some((z0, z1, tz)) = *zf else { continue };
        for (c, xf) in xs.iter().enumerate() {
            let Some((x0, x1, tx)) = *xf else { continue };
            let (mut sum, mut max) = (0f32, 0f32);
            for &y in &rows {
                let a = v.at(z0, y, x0) * (1.0 - tx) + v.at(z0, y, x1) * tx;
                let b = v.at(z1, y, x0) * (1.0 - tx) + v.at(z1, y, x1) * tx;
                let val = window(a * (1.0 - tz) + b * tz);
                sum += val;
                max = max.max(val);
            }
            if !rows.is_empty() {
                mean_ch[r * w + c] = sum / rows.len() as f32;
                max_ch[r * w + c] = max;
            }
        }
    }
    Ok(View {
        spec: *spec,
        data,
        geometry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::VolumeGeometry;

    /// A 40 x 64 x 64 volume (4 mm slices, 3 mm pixels) of soft tissue with a vertical bone rod
    /// (the "spine") at patient x = 15 mm, y = 30 mm and a bright point at z = 100 mm.
    fn phantom(flip_x: bool) -> Volume {
        let (nz, ny, nx) = (40usize, 64usize, 64usize);
        let sx = if flip_x { -1.0 } else { 1.0 };
        let origin = [sx * -94.5, -94.5, 0.0];
        let mut hu = vec![40f32; nz * ny * nx];
        for z in 0..nz {
            for y in 0..ny {
                for x in 0..nx {
                    let (px, py, pz) = (
                        origin[0] + sx * 3.0 * x as f64,
                        origin[1] + 3.0 * y as f64,
                        4.0 * z as f64,
                    );
                    let i = (z * ny + y) * nx + x;
                    if (px - 15.0).abs() <= 6.0 && (py - 30.0).abs() <= 6.0 {
                        hu[i] = 400.0;
                        if (pz - 100.0).abs() < 2.0 {
                            hu[i] = 1200.0;
                        }
                    }
                }
            }
        }
        let g = VolumeGeometry {
            dims: [nz, ny, nx],
            spacing_mm: [4.0, 3.0, 3.0],
            origin_mm: origin,
            direction: [[sx, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        };
        Volume::from_parts(hu, g, "CT", Vec::new()).expect("dims match")
    }

    fn brightest(view: &View) -> (usize, usize) {
        let ch = view.channel(1);
        let i = (0..ch.len())
            .max_by(|a, b| ch[*a].total_cmp(&ch[*b]))
            .expect("non-empty");
        (i / view.spec.width, i % view.spec.width)
    }

    #[test]
    fn geometry_maps_view_pixels_back_to_patient_mm() {
        let spec = ViewSpec {
            height: 64,
            width: 64,
            pixel_mm: 2.0,
            ..ViewSpec::default()
        };
        let view = coronal_slab(&phantom(false), &spec).expect("view");
        // The spine is found at its antero-posterior position.
        assert!(
            (view.geometry.top_left_mm[1] - 30.0).abs() <= 3.0,
            "{:?}",
            view.geometry
        );
        let (r, c) = brightest(&view);
        let p = view.geometry.patient_position(r as f64, c as f64);
        assert!((p[0] - 15.0).abs() <= 6.0 + spec.pixel_mm, "x {p:?}");
        assert!((p[2] - 100.0).abs() <= 2.0 + spec.pixel_mm, "z {p:?}");
        assert!(view.data.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn a_flipped_row_direction_gives_the_same_view() {
        let spec = ViewSpec {
            height: 64,
            width: 64,
            pixel_mm: 2.0,
            ..ViewSpec::default()
        };
        let a = coronal_slab(&phantom(false), &spec).expect("view");
        let b = coronal_slab(&phantom(true), &spec).expect("view");
        assert_eq!(brightest(&a), brightest(&b));
        let max_diff = a
            .data
            .iter()
            .zip(&b.data)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(max_diff < 0.05, "views differ by {max_diff}");
    }

    #[test]
    fn invalid_specs_and_non_axial_volumes_are_refused() {
        let v = phantom(false);
        let bad = ViewSpec {
            window_hu: [100.0, 100.0],
            ..ViewSpec::default()
        };
        assert!(matches!(
            coronal_slab(&v, &bad),
            Err(DicomError::View { .. })
        ));
        let mut sagittal = v.clone();
        sagittal.direction = [[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]];
        let err = coronal_slab(&sagittal, &ViewSpec::default()).expect_err("not axial");
        assert!(err.to_string().contains("axial"), "{err}");
    }
}

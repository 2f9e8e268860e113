//! The abdominal CT phantom: per-patient anatomy drawn from the patient's stream and rasterised
//! slice by slice into a HU [`Volume`].
//!
//! Structures (patient LPS mm; the T12 upper endplate is at local z = 0): body ellipse with a
//! subcutaneous fat layer whose thickness follows BMI; liver, spleen, kidneys (contrast-enhanced),
//! bladder and bowel gas; a contrast-enhanced aorta dividing into the iliac arteries at L4 and the
//! inferior vena cava; vertebral bodies T12–L5 (cortical shell, endplates, trabecular core whose HU
//! follows the T-score), intervertebral discs, neural arches with the spinal canal, spinous and
//! transverse processes, lumbar lordosis; sacrum, iliac wings, acetabula, femoral heads, necks and
//! proximal shafts. The scanner adds a calibration offset and Gaussian noise; the grid varies pixel
//! spacing, slice thickness and patient position.

use crate::patient::Patient;
use crate::rng;
use osteo_dicom::{Volume, VolumeGeometry};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

/// Air.
const AIR: f32 = -1000.0;
/// Subcutaneous fat.
const FAT: f32 = -100.0;
/// Muscle and unenhanced soft tissue.
const SOFT: f32 = 45.0;
/// Smallest and largest HU the 12-bit CT encoding stores (intercept −1024).
pub const HU_RANGE: (f32, f32) = (-1024.0, 3071.0);

/// How bone attenuation follows the T-score (HU = intercept + slope x T + deviations); the
/// oracle reads the same parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ImageModel {
    /// Vertebral trabecular HU: `[intercept, slope]`.
    pub spine: [f64; 2],
    /// Femoral trabecular HU: `[intercept, slope]`.
    pub femur: [f64; 2],
    /// Cortical HU: `[intercept, slope]`.
    pub cortex: [f64; 2],
    /// SD of the patient's individual trabecular deviation (shared by spine and femur).
    pub sd_individual: f64,
    /// SD of each vertebra's own deviation.
    pub sd_vertebra: f64,
    /// SD of the cortical deviation.
    pub sd_cortex: f64,
    /// SD of the scanner calibration offset (added to all tissue).
    pub sd_calibration: f64,
    /// Number of vertebrae (T12-L5).
    pub vertebrae: usize,
}

impl Default for ImageModel {
    fn default() -> Self {
        Self {
            spine: [190.0, 35.0],
            femur: [170.0, 38.0],
            cortex: [700.0, 45.0],
            sd_individual: 19.0,
            sd_vertebra: 6.0,
            sd_cortex: 70.0,
            sd_calibration: 11.0,
            vertebrae: 6,
        }
    }
}

/// Parameters of the acquisition grid.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PhantomSpec {
    /// Rows and columns of each slice.
    pub matrix: usize,
    /// Slice thicknesses to draw from (mm); spacing equals thickness.
    pub thicknesses_mm: [f64; 4],
}

impl Default for PhantomSpec {
    fn default() -> Self {
        Self {
            matrix: 192,
            thicknesses_mm: [2.5, 3.0, 3.75, 5.0],
        }
    }
}

/// One vertebra (local z, mm).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Vertebra {
    /// Upper endplate.
    pub z_top: f64,
    /// Lower endplate.
    pub z_bottom: f64,
    /// Trabecular core HU.
    pub hu_trabecular: f64,
}

/// Everything drawn for one patient's CT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anatomy {
    /// Pixel spacing (mm).
    pub pixel_mm: f64,
    /// Slice thickness and spacing (mm).
    pub thickness_mm: f64,
    /// `[slices, rows, columns]`.
    pub dims: [usize; 3],
    /// Patient position of voxel (0, 0, 0).
    pub origin_mm: [f64; 3],
    /// Patient offset from the grid's reference (positioning variation), mm.
    pub shift_mm: [f64; 3],
    /// Body semi-axes (x, y), mm.
    pub body: [f64; 2],
    /// Subcutaneous fat thickness, mm.
    pub fat_mm: f64,
    /// Antero-posterior position of the vertebral-body centres at L3 before lordosis, mm.
    pub spine_y: f64,
    /// Vertebral-body scale (1 = average adult).
    pub spine_scale: f64,
    /// T12 to L5.
    pub vertebrae: Vec<Vertebra>,
    /// Femoral-neck and head trabecular HU.
    pub hu_femoral: f64,
    /// Cortical bone HU.
    pub hu_cortical: f64,
    /// Aortic lumen HU (contrast phase).
    pub hu_aorta: f64,
    /// Bowel gas pockets: centre (x, y, z) and semi-axes, mm.
    pub gas: Vec<[f64; 6]>,
    /// Scanner calibration offset, HU.
    pub calibration_hu: f64,
    /// Noise standard deviation, HU.
    pub noise_sd: f64,
}

fn normal(r: &mut ChaCha8Rng, mean: f64, sd: f64) -> f64 {
    let z: f64 = StandardNormal.sample(r);
    mean + sd * z
}

fn round4(v: f64) -> f64 {
    (v * 1e4).round() / 1e4
}

impl Anatomy {
    /// Draws the anatomy of a patient (stream 1 of the patient).
    pub fn draw(p: &Patient, spec: &PhantomSpec) -> Anatomy {
        let r = &mut rng::stream(p.seed, p.index, 1);
        let bmi = p.bmi();
        let size = p.height_cm / 165.0;
        let body = [
            (150.0 + 6.0 * (bmi - 24.0)) * size.sqrt(),
            (105.0 + 4.5 * (bmi - 24.0)) * size.sqrt(),
        ];
        let body = [body[0].clamp(110.0, 240.0), body[1].clamp(80.0, 180.0)];
        let fat_mm = (8.0 + 2.2 * (bmi - 20.0) + normal(r, 0.0, 3.0)).clamp(4.0, 60.0);
        let spine_scale = (size
            * if p.sex == osteo_core::Sex::Male {
                1.08
            } else {
                1.0
            }
            * normal(r, 1.0, 0.04))
        .clamp(0.8, 1.3);
        let spine_y = body[1] - fat_mm - 62.0 * spine_scale;
        let patient_offset = normal(r, 0.0, 10.0);
        let t = p.t_score;
        let im = ImageModel::default();
        let individual = normal(r, 0.0, im.sd_individual);
        let trab_patient = im.spine[0] + im.spine[1] * t + individual;
        let mut vertebrae = Vec::with_capacity(im.vertebrae);
        let mut z = 0.0;
        for i in 0..im.vertebrae {
            let h = (23.0 + 1.0 * i as f64) * spine_scale;
            vertebrae.push(Vertebra {
                z_top: z,
                z_bottom: z - h,
                hu_trabecular: trab_patient + normal(r, 0.0, im.sd_vertebra),
            });
            z -= h + (8.0 + 0.4 * i as f64) * spine_scale;
        }
        let hu_femoral = im.femur[0] + im.femur[1] * t + individual;
        let hu_cortical =
            (im.cortex[0] + im.cortex[1] * t + normal(r, 0.0, im.sd_cortex)).clamp(350.0, 1100.0);
        let hu_aorta = normal(r, 230.0, 55.0).clamp(120.0, 380.0);
        let l5_bottom = vertebrae[5].z_bottom;
        let gas = (0..r.random_range(3..9))
            .map(|_| {
                [
                    r.random_range(-90.0..90.0),
                    r.random_range(-body[1] + fat_mm + 15.0..-10.0),
                    r.random_range(l5_bottom..vertebrae[1].z_top),
                    r.random_range(8.0..22.0),
                    r.random_range(6.0..16.0),
                    r.random_range(6.0..18.0),
                ]
            })
            .collect();
        let thickness_mm = spec.thicknesses_mm[r.random_range(0..spec.thicknesses_mm.len())];
        let fov = (2.0 * body[0] + 70.0 + r.random_range(-10.0..30.0)).clamp(340.0, 500.0);
        let pixel_mm = round4(fov / spec.matrix as f64);
        let z_femur = l5_bottom - 125.0 * spine_scale;
        let z_lo = z_femur - 55.0 + normal(r, 0.0, 6.0);
        let z_hi = 15.0 + normal(r, 0.0, 6.0);
        let slices = ((z_hi - z_lo) / thickness_mm).ceil() as usize + 1;
        let shift_mm = [normal(r, 0.0, 10.0), normal(r, 0.0, 8.0), patient_offset];
        let half = (spec.matrix as f64 - 1.0) / 2.0 * pixel_mm;
        // Grid origin: the patient's local frame is shifted by `shift_mm` within the grid.
        let origin_mm = [round4(-half), round4(-half), round4(z_lo + shift_mm[2])];
        Anatomy {
            pixel_mm,
            thickness_mm,
            dims: [slices, spec.matrix, spec.matrix],
            origin_mm,
            shift_mm,
            body,
            fat_mm,
            spine_y,
            spine_scale,
            vertebrae,
            hu_femoral,
            hu_cortical,
            hu_aorta,
            gas,
            calibration_hu: normal(r, 0.0, im.sd_calibration),
            noise_sd: r.random_range(8.0..22.0),
        }
    }

    /// Antero-posterior position of the vertebral-body centre at local height `z` (lordosis).
    pub fn spine_y_at(&self, z: f64) -> f64 {
        let z_l3 = (self.vertebrae[3].z_top + self.vertebrae[3].z_bottom) / 2.0;
        self.spine_y - 10.0 * (-((z - z_l3) / 70.0).powi(2)).exp()
    }

    /// Local height of the femoral-head centres.
    pub fn z_femoral_heads(&self) -> f64 {
        self.vertebrae[5].z_bottom - 125.0 * self.spine_scale
    }

    /// What a measurement on this phantom should find.
    pub fn truth(&self) -> Truth {
        Truth {
            trabecular_hu: std::array::from_fn(|i| {
                self.vertebrae.get(i).map_or(f64::NAN, |v| v.hu_trabecular)
            }),
            femoral_neck_hu: self.hu_femoral,
            calibration_hu: self.calibration_hu,
            contrast_phase: osteo_dicom::attenuation::ContrastPhase::of_aorta(Some(self.hu_aorta)),
        }
    }
}

/// The true attenuations of a phantom, before the scanner's offset and noise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Truth {
    /// Trabecular HU of T12, L1 … L5.
    pub trabecular_hu: [f64; 6],
    /// Trabecular HU of both femoral necks (and heads).
    pub femoral_neck_hu: f64,
    /// The scanner's calibration offset added to every tissue, HU.
    pub calibration_hu: f64,
    /// The contrast phase of its aorta.
    pub contrast_phase: osteo_dicom::attenuation::ContrastPhase,
}

/// A slice canvas in local patient coordinates.
struct Canvas<'a> {
    hu: &'a mut [f32],
    n: usize,
    x0: f64,
    y0: f64,
    p: f64,
}

impl Canvas<'_> {
    /// Paints a filled axis-aligned ellipse.
    fn ellipse(&mut self, cx: f64, cy: f64, ax: f64, ay: f64, v: f64) {
        if ax <= 0.0 || ay <= 0.0 {
            return;
        }
        let (c0, c1) = self.range(cx - ax, cx + ax, self.x0);
        let (r0, r1) = self.range(cy - ay, cy + ay, self.y0);
        for row in r0..r1 {
            let dy = (self.y0 + row as f64 * self.p - cy) / ay;
            for col in c0..c1 {
                let dx = (self.x0 + col as f64 * self.p - cx) / ax;
                if dx * dx + dy * dy <= 1.0 {
                    self.hu[row * self.n + col] = v as f32;
                }
            }
        }
    }

    /// Paints an axis-aligned box.
    fn rect(&mut self, x: (f64, f64), y: (f64, f64), v: f64) {
        let (c0, c1) = self.range(x.0, x.1, self.x0);
        let (r0, r1) = self.range(y.0, y.1, self.y0);
        for row in r0..r1 {
            for col in c0..c1 {
                self.hu[row * self.n + col] = v as f32;
            }
        }
    }

    /// Index range of pixels whose centres may lie in `[lo, hi]`.
    fn range(&self, lo: f64, hi: f64, origin: f64) -> (usize, usize) {
        let a = ((lo - origin) / self.p).floor().max(0.0) as usize;
        let b = (((hi - origin) / self.p).ceil() + 1.0).clamp(0.0, self.n as f64) as usize;
        (a.min(self.n), b)
    }
}

/// Cross-section semi-axis factor of an ellipsoid at distance `dz` from its centre.
fn section(dz: f64, c: f64) -> f64 {
    let u = 1.0 - (dz / c).powi(2);
    if u > 0.0 { u.sqrt() } else { 0.0 }
}

/// A bone cross-section: cortical ellipse with a trabecular core `shell` mm inside.
fn bone(cv: &mut Canvas<'_>, c: (f64, f64), a: (f64, f64), shell: f64, cortical: f64, core: f64) {
    cv.ellipse(c.0, c.1, a.0, a.1, cortical);
    cv.ellipse(c.0, c.1, a.0 - shell, a.1 - shell, core);
}

impl Anatomy {
    /// Rasterises one slice at local height `z` into `hu` (row-major, `n x n`).
    fn paint_slice(&self, z: f64, cv: &mut Canvas<'_>) {
        let [bx, by] = self.body;
        cv.hu.fill(AIR);
        cv.ellipse(0.0, 0.0, bx, by, f64::from(FAT));
        cv.ellipse(
            0.0,
            0.0,
            bx - self.fat_mm,
            by - self.fat_mm,
            f64::from(SOFT),
        );
        let s = self.spine_scale;
        let v = &self.vertebrae;
        let ys = self.spine_y_at(z);
        let (vax, vay) = (22.0 * s, 17.0 * s);
        let zf = self.z_femoral_heads();
        let l5b = v[5].z_bottom;
        // Organs.
        let liver_z = v[0].z_top - 10.0;
        let k = section(z - liver_z, 95.0);
        cv.ellipse(-70.0, -5.0, 75.0 * k, 62.0 * k, 95.0);
        let k = section(z - v[0].z_bottom, 55.0);
        cv.ellipse(85.0, 30.0, 35.0 * k, 28.0 * k, 100.0);
        for (side, zc) in [(-1.0, v[2].z_top), (1.0, v[1].z_bottom)] {
            let k = section(z - zc, 55.0 * s);
            cv.ellipse(side * 72.0 * s, ys + 8.0, 30.0 * k, 24.0 * k, 160.0);
            cv.ellipse(side * 72.0 * s, ys + 8.0, 12.0 * k, 9.0 * k, 25.0);
        }
        let k = section(z - (zf + 20.0), 38.0);
        cv.ellipse(0.0, -40.0, 48.0 * k, 38.0 * k, 10.0);
        for g in &self.gas {
            let k = section(z - g[2], g[5]);
            cv.ellipse(g[0], g[1], g[3] * k, g[4] * k, -900.0);
        }
        // Vessels: aorta to L4, then iliac arteries; IVC.
        let z_bif = (v[4].z_top + v[4].z_bottom) / 2.0;
        let ay_vessel = ys - vay - 13.0;
        if z >= z_bif {
            cv.ellipse(18.0 * s, ay_vessel, 11.0 * s, 11.0 * s, self.hu_aorta);
        } else if z >= zf - 10.0 {
            let f = ((z_bif - z) / (z_bif - zf + 10.0)).clamp(0.0, 1.0);
            for side in [-1.0, 1.0] {
                cv.ellipse(
                    side * (10.0 + 70.0 * f) * s,
                    ay_vessel + 25.0 * f,
                    6.5 * s,
                    6.5 * s,
                    self.hu_aorta,
                );
            }
        }
        if z >= l5b {
            cv.ellipse(-22.0 * s, ay_vessel + 2.0, 12.0 * s, 10.0 * s, 120.0);
        }
        // Spine.
        let cort = self.hu_cortical;
        for (i, vb) in v.iter().enumerate() {
            if z <= vb.z_top && z >= vb.z_bottom {
                let h = vb.z_top - vb.z_bottom;
                let endplate = (z - vb.z_bottom).min(vb.z_top - z) < 1.5;
                let core = if endplate { cort } else { vb.hu_trabecular };
                bone(cv, (0.0, ys), (vax, vay), 2.0, cort, core);
                let arch_y = ys + vay + 11.0 * s;
                let rel = (vb.z_top - z) / h;
                if rel < 0.85 {
                    cv.ellipse(0.0, arch_y, 14.0 * s, 12.0 * s, 0.6 * cort);
                }
                if (0.2..0.8).contains(&rel) {
                    cv.rect(
                        (-4.0 * s, 4.0 * s),
                        (arch_y + 8.0 * s, arch_y + 38.0 * s),
                        0.6 * cort,
                    );
                }
                if (0.25..0.6).contains(&rel) && i > 0 {
                    for side in [-1.0, 1.0] {
                        let (a, b) = (side * 13.0 * s, side * 46.0 * s);
                        cv.rect(
                            (a.min(b), a.max(b)),
                            (arch_y - 6.0 * s, arch_y + 2.0 * s),
                            0.6 * cort,
                        );
                    }
                }
            } else if i + 1 < v.len() && z < vb.z_bottom && z > v[i + 1].z_top {
                cv.ellipse(0.0, ys, vax, vay, 90.0);
            }
            cv.ellipse(0.0, ys + vay + 11.0 * s, 9.0 * s, 8.0 * s, 20.0);
        }
        // Sacrum and iliac wings.
        let sac_top = l5b - 9.0 * s;
        if z <= sac_top && z >= sac_top - 95.0 * s {
            let depth = sac_top - z;
            let w = 45.0 * s * (1.0 - depth / (130.0 * s));
            bone(
                cv,
                (0.0, ys + 8.0 + 0.45 * depth),
                (w, 17.0 * s),
                2.0,
                cort,
                150.0 + 30.0 * (self.hu_femoral - 170.0) / 38.0,
            );
        }
        if z <= l5b + 25.0 * s && z >= zf + 20.0 {
            let w = ((z - zf - 20.0) / (l5b + 25.0 * s - zf - 20.0)).clamp(0.2, 1.0);
            for side in [-1.0, 1.0] {
                bone(
                    cv,
                    (side * 82.0 * s, ys + 12.0 - 30.0 * (1.0 - w)),
                    (42.0 * s * w + 8.0, 13.0 * s),
                    3.0,
                    cort,
                    230.0,
                );
            }
        }
        // Hips: acetabula, femoral heads, necks, shafts.
        let yf = ys - 12.0 * s;
        let neck = [0.70f64, 0.714f64];
        let neck_len = 45.0 * s;
        for side in [-1.0, 1.0] {
            let cx = side * 95.0 * s;
            let k = section(z - zf, 28.0 * s);
            cv.ellipse(cx, yf, 28.0 * s * k, 28.0 * s * k, 0.85 * cort);
            let k = section(z - zf, 23.0 * s);
            if k > 0.0 {
                bone(
                    cv,
                    (cx, yf),
                    (23.0 * s * k, 23.0 * s * k),
                    1.5,
                    cort,
                    self.hu_femoral,
                );
            }
            // The neck axis runs from the head centre laterally and inferiorly.
            let t = (zf - z) / neck[1];
            if (0.0..=neck_len).contains(&t) {
                let px = cx + side * neck[0] * t;
                bone(
                    cv,
                    (px, yf),
                    (14.0 * s / neck[1], 14.0 * s),
                    1.5,
                    cort,
                    self.hu_femoral,
                );
            }
            let shaft_x = cx + side * (neck[0] * neck_len + 8.0);
            if z <= zf - neck[1] * neck_len + 12.0 {
                bone(
                    cv,
                    (shaft_x, yf),
                    (16.0 * s, 16.0 * s),
                    4.0,
                    cort + 100.0,
                    self.hu_femoral - 40.0,
                );
            }
        }
    }
}

/// Generates the HU volume of a patient's CT phantom.
pub fn phantom_volume(p: &Patient, spec: &PhantomSpec) -> (Anatomy, Volume) {
    let a = Anatomy::draw(p, spec);
    let [nz, ny, nx] = a.dims;
    let mut hu = vec![AIR; nz * ny * nx];
    for (k, slice) in hu.chunks_mut(ny * nx).enumerate() {
        let z_grid = a.origin_mm[2] + k as f64 * a.thickness_mm;
        let z_local = z_grid - a.shift_mm[2];
        let mut cv = Canvas {
            hu: slice,
            n: nx,
            x0: a.origin_mm[0] - a.shift_mm[0],
            y0: a.origin_mm[1] - a.shift_mm[1],
            p: a.pixel_mm,
        };
        a.paint_slice(z_local, &mut cv);
        let r = &mut rng::stream(p.seed, p.index, 1000 + k as u64);
        let (calib, sd) = (a.calibration_hu as f32, a.noise_sd as f32);
        for v in slice.iter_mut() {
            let noise: f32 = StandardNormal.sample(r);
            let tissue = if *v > -950.0 { calib } else { 0.0 };
            *v = (*v + tissue + sd * noise)
                .round()
                .clamp(HU_RANGE.0, HU_RANGE.1);
        }
    }
    let geometry = VolumeGeometry {
        dims: a.dims,
        spacing_mm: [a.thickness_mm, a.pixel_mm, a.pixel_mm],
        origin_mm: a.origin_mm,
        direction: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
    };
    let volume = Volume::from_parts(hu, geometry, "CT", Vec::new())
        .unwrap_or_else(|| unreachable!("dims match by construction"));
    (a, volume)
}

//! The femoral necks: below the sacrum, per side, the trabecular region of the neck just
//! below and lateral of the femoral head.

use super::slice::{Region, enclosed};
use super::{Found, HuOf, NeckMeasurement, Side, median};
use crate::volume::Volume;

/// The femoral necks on the slices from `first` down (superior-first indices): per side, the
/// femoral head is the slice whose largest enclosed region lateral of the pelvis's centre is
/// largest; the neck is the enclosed region on the slices down to 25 mm below it whose centre
/// lies 5 to 30 mm lateral of the head's (the shaft lies further out); its median HU.
pub(super) fn femoral_necks(
    volume: &Volume,
    (order, found, hu_of): (&[(usize, f64)], &[Found], HuOf<'_>),
    first: usize,
    (spacing, bone_hu): ([f64; 2], f32),
) -> Vec<NeckMeasurement> {
    let cols = volume.dims[2];
    let px = spacing[1];
    let x_mm = |k: usize, col: f64| volume.patient_position(order[k].0 as f64, 0.0, col)[0];
    let mut out = Vec::new();
    for side in [Side::Right, Side::Left] {
        // Regions per slice in the lateral box of this side (patient left is +x).
        let regions: Vec<(usize, Vec<Region>)> = (first..found.len())
            .filter_map(|k| {
                let f = &found[k];
                let (cx, front, back) = f.body?;
                let dir = if (x_mm(k, cx + 1.0) - x_mm(k, cx)) > 0.0 {
                    1.0
                } else {
                    -1.0
                };
                let sign = match side {
                    Side::Left => dir,
                    Side::Right => -dir,
                };
                let a = (cx + sign * 40.0 / px).clamp(0.0, (cols - 1) as f64) as usize;
                let b = (cx + sign * 170.0 / px).clamp(0.0, (cols - 1) as f64) as usize;
                let y0 = front + (back - front) / 4;
                let r = enclosed(
                    &hu_of(k),
                    cols,
                    spacing,
                    (a.min(b), a.max(b), y0, back),
                    bone_hu,
                );
                (!r.is_empty()).then_some((k, r))
            })
            .collect();
        let largest = |r: &[Region]| r.iter().map(|g| g.area_mm2).fold(0.0, f64::max);
        let Some((head_k, head)) = regions
            .iter()
            .max_by(|a, b| largest(&a.1).total_cmp(&largest(&b.1)))
        else {
            continue;
        };
        let Some(head) = head.iter().max_by(|a, b| a.area_mm2.total_cmp(&b.area_mm2)) else {
            continue;
        };
        let head_x = x_mm(*head_k, head.centre.1);
        let outward = match side {
            Side::Left => 1.0,
            Side::Right => -1.0,
        };
        let (mut values, mut zs, mut xs) = (Vec::new(), Vec::new(), Vec::new());
        for (k, rs) in regions.iter().filter(|(k, _)| k > head_k) {
            if order[*head_k].1 - order[*k].1 > 25.0 {
                break;
            }
            for r in rs {
                let lateral = outward * (x_mm(*k, r.centre.1) - head_x);
                if (5.0..=30.0).contains(&lateral) {
                    let hu = hu_of(*k);
                    values.extend(r.pixels.iter().map(|&p| hu[p]));
                    zs.push(order[*k].1);
                    xs.extend(r.pixels.iter().map(|&p| x_mm(*k, (p % cols) as f64)));
                }
            }
        }
        let voxels = values.len();
        if voxels < 10 {
            continue;
        }
        let Some(measured) = median(&mut values) else {
            continue;
        };
        let range = |v: &[f64]| {
            [
                v.iter().copied().fold(f64::INFINITY, f64::min),
                v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            ]
        };
        out.push(NeckMeasurement {
            side,
            trabecular_hu: measured,
            measured_hu: measured,
            voxels,
            z_range_mm: range(&zs),
            x_range_mm: range(&xs),
        });
    }
    out
}

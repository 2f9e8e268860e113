//! The vessels in front of the spine: the aortic lumen (the contrast phase) and unenhanced blood
//! (a calibration reference).

use super::slice::{Region, components};
use super::{Found, HuOf, median};

/// The box in front of a slice's vertebral core: rows 3 to 45 mm anterior of its front, columns
/// within 40 mm of its centre.
fn front_box(c: &Region, cols: usize, spacing: [f64; 2]) -> (usize, usize, usize, usize) {
    let front = c.pixels.iter().map(|p| p / cols).min().unwrap_or(0);
    let (y0, y1) = (
        front.saturating_sub((45.0 / spacing[0]).round() as usize),
        front.saturating_sub((3.0 / spacing[0]).round() as usize),
    );
    let half = (40.0 / spacing[1]).round() as usize;
    let cx = c.centre.1.round() as usize;
    (y0, y1, cx.saturating_sub(half), (cx + half).min(cols - 1))
}

/// The median HU of the aortic lumen: in front of the upper bodies, the connected region of
/// pixels between `vessel_hu` and `bone_hu` with the highest median (at least 50 mm²), pooled
/// over the slices; None when no slice has one.
pub(super) fn aorta(
    (found, hu_of): (&[Found], HuOf<'_>),
    slices: &[usize],
    (_, cols): (usize, usize),
    spacing: [f64; 2],
    vessel_hu: f64,
    bone_hu: f32,
) -> Option<f64> {
    let mut lumen = Vec::new();
    for &i in slices {
        let f = &found[i];
        let Some(c) = &f.core else { continue };
        let hu = &hu_of(i);
        let (y0, y1, x0, x1) = front_box(c, cols, spacing);
        if y1 <= y0 || x1 <= x0 {
            continue;
        }
        let w = x1 - x0 + 1;
        let at = |j: usize| (y0 + j / w) * cols + x0 + j % w;
        let bright = |j: usize| {
            let v = hu[at(j)];
            f64::from(v) >= vessel_hu && v < bone_hu
        };
        let labels = components(w, y1 - y0 + 1, bright);
        let mut groups: std::collections::BTreeMap<u32, Vec<f32>> = Default::default();
        for (j, &l) in labels.iter().enumerate() {
            if l != u32::MAX {
                groups.entry(l).or_default().push(hu[at(j)]);
            }
        }
        let min_px = (50.0 / (spacing[0] * spacing[1])).ceil() as usize;
        let best = groups
            .into_values()
            .filter(|g| g.len() >= min_px)
            .map(|mut g| (median(&mut g).unwrap_or(0.0), g))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        if let Some((_, g)) = best {
            lumen.extend(g);
        }
    }
    median(&mut lumen)
}

/// The median HU of unenhanced blood and soft tissue (0 to 90 HU) in front of the upper bodies.
pub(super) fn blood(
    (found, hu_of): (&[Found], HuOf<'_>),
    slices: &[usize],
    (_, cols): (usize, usize),
    spacing: [f64; 2],
) -> Option<f64> {
    let mut values = Vec::new();
    for &i in slices {
        let f = &found[i];
        let Some(c) = &f.core else { continue };
        let hu = &hu_of(i);
        let (y0, y1, x0, x1) = front_box(c, cols, spacing);
        for y in y0..y1 {
            values.extend(
                hu[y * cols + x0..=y * cols + x1]
                    .iter()
                    .filter(|v| (0.0..=90.0).contains(*v)),
            );
        }
    }
    median(&mut values)
}

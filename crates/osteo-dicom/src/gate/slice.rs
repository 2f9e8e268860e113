//! What one axial slice shows the quality gate: whether it is at lumbar level (the body's
//! largest part found by one-pass union-find over a coarse mask grid, its enclosed air, and a
//! vertebral body deep inside it) and the histograms of its air and soft tissue.

use super::{AIR_MAX_HU, BIN_HU, MASK_STEP_MM, PADDING_HU, SOFT_RANGE_HU, bin};
use crate::view::BODY_MIN_HU;
use crate::volume::{Hu, Plane, Volume};
use osteo_core::ViewSpec;
use rayon::prelude::*;

/// Why a slice is not at lumbar level (or that it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Level {
    Lumbar,
    NoBody,
    SmallBody,
    Lungs,
    NoVertebra,
    Narrow,
}

/// What one slice shows.
pub(super) struct SliceFacts {
    pub(super) level: Level,
    /// HU histogram of air voxels, bins of [`BIN_HU`] from [`PADDING_HU`].
    pub(super) air: Vec<u64>,
    /// HU histogram of body voxels over [`SOFT_RANGE_HU`].
    pub(super) soft: Vec<u64>,
}

/// The facts of every `stride`-th slice, computed in parallel.
pub(super) fn slice_facts(v: &Volume, spec: &ViewSpec, stride: usize) -> Vec<SliceFacts> {
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

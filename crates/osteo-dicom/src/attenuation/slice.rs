//! One axial slice's findings: the body's outline, the trabecular core of a vertebral body near
//! the midline (the largest region of non-bone enclosed by bone there), and the samples of the
//! internal references (air outside the body, subcutaneous fat).

/// HU above which a pixel belongs to the body.
const BODY_HU: f32 = -500.0;
/// Air outside the body, HU.
pub(super) const AIR_HU: [f32; 2] = [-1100.0, -900.0];
/// Subcutaneous fat, HU.
pub(super) const FAT_HU: [f32; 2] = [-190.0, -30.0];
/// Rows per slice sampled for the air and fat references (at most).
const REFERENCE_ROWS: usize = 64;
/// Depth under the skin searched for subcutaneous fat, mm.
const FAT_DEPTH_MM: f64 = 25.0;
/// Half width of the band around the body's centre searched for the spine, mm.
const SPINE_HALF_WIDTH_MM: f64 = 35.0;
/// Largest left-right distance of a vertebral core's centre from the body's centre, mm.
const CORE_OFF_CENTRE_MM: f64 = 20.0;
/// Smallest and largest area of a vertebral body's core, mm² (the spinal canal is smaller).
pub(super) const CORE_AREA_MM2: [f64; 2] = [60.0, 3000.0];

/// Pixels bone is grown by to seal gaps in a thin cortical shell (the core found lies this far
/// inside it).
pub(super) const GROWTH: usize = 2;

/// Pixel spacing of a slice: `[row step, column step]` in mm.
pub(super) type Spacing = [f64; 2];

/// A region of pixels inside a slice.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Region {
    /// Row-major pixel indices.
    pub pixels: Vec<usize>,
    /// Centroid `(row, column)`.
    pub centre: (f64, f64),
    /// Area in mm².
    pub area_mm2: f64,
}

/// What one slice shows.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct SliceFindings {
    /// The body's left-right centre (column) and front and back rows at that column.
    pub body: Option<(f64, usize, usize)>,
    /// The candidate vertebral core.
    pub core: Option<Region>,
    /// Samples of air outside the body (every pixel in range).
    pub air: Vec<f32>,
    /// Samples of subcutaneous fat.
    pub fat: Vec<f32>,
}

/// The left-right centre of the body pixels and the front and back rows along it.
fn body(hu: &[f32], rows: usize, cols: usize) -> Option<(f64, usize, usize)> {
    let (mut n, mut sum) = (0usize, 0usize);
    for (i, v) in hu.iter().enumerate() {
        if *v > BODY_HU {
            n += 1;
            sum += i % cols;
        }
    }
    if n == 0 {
        return None;
    }
    let cx = sum as f64 / n as f64;
    let col = (cx.round() as usize).min(cols - 1);
    let inside: Vec<usize> = (0..rows)
        .filter(|&r| hu[r * cols + col] > BODY_HU)
        .collect();
    Some((cx, *inside.first()?, *inside.last()?))
}

/// Labels the 4-connected components of `open` pixels in a `h x w` grid; `u32::MAX` marks
/// closed pixels.
pub(super) fn components(w: usize, h: usize, open: impl Fn(usize) -> bool) -> Vec<u32> {
    let mut label = vec![u32::MAX; w * h];
    let mut next = 0u32;
    let mut stack = Vec::new();
    for start in 0..w * h {
        if label[start] != u32::MAX || !open(start) {
            continue;
        }
        label[start] = next;
        stack.push(start);
        while let Some(i) = stack.pop() {
            let (y, x) = (i / w, i % w);
            let neighbours = [
                (x > 0).then(|| i - 1),
                (x + 1 < w).then(|| i + 1),
                (y > 0).then(|| i - w),
                (y + 1 < h).then(|| i + w),
            ];
            for j in neighbours.into_iter().flatten() {
                if label[j] == u32::MAX && open(j) {
                    label[j] = next;
                    stack.push(j);
                }
            }
        }
        next += 1;
    }
    label
}

/// Whether the count of `grid`'s set pixels in the square of radius `r` around pixel `i` (a `w
/// x h` grid; pixels outside it count as `outside`) satisfies `test`.
fn window(
    grid: &[bool],
    (w, h): (usize, usize),
    (i, r, outside): (usize, usize, bool),
    test: impl Fn(usize) -> bool,
) -> bool {
    let (y, x) = (i / w, i % w);
    let mut n = 0;
    for yy in y as isize - r as isize..=(y + r) as isize {
        for xx in x as isize - r as isize..=(x + r) as isize {
            let inside = yy >= 0 && xx >= 0 && (yy as usize) < h && (xx as usize) < w;
            if (!inside && outside) || (inside && grid[yy as usize * w + xx as usize]) {
                n += 1;
            }
        }
    }
    test(n)
}

/// The regions of non-bone pixels enclosed by bone (touching no edge of the box `x0..=x1`,
/// `y0..=y1`), with a core's area.
pub(super) fn enclosed(
    hu: &[f32],
    cols: usize,
    spacing: Spacing,
    (x0, x1, y0, y1): (usize, usize, usize, usize),
    bone_hu: f32,
) -> Vec<Region> {
    let [py, px] = spacing;
    if x1 <= x0 + 2 || y1 <= y0 + 2 {
        return Vec::new();
    }
    let (w, h) = (x1 - x0 + 1, y1 - y0 + 1);
    let at = |i: usize| (y0 + i / w) * cols + x0 + i % w;
    // A bone pixel needs a bone neighbour (diagonals count: a thin shell steps diagonally);
    // noise alone rarely pairs.
    let raw: Vec<bool> = (0..w * h).map(|i| hu[at(i)] >= bone_hu).collect();
    let bone: Vec<bool> = (0..w * h)
        .map(|i| raw[i] && window(&raw, (w, h), (i, 1, false), |n| n >= 2))
        .collect();
    // Bone grown by GROWTH pixels: a shell as thin as a pixel misses pixel centres and leaves
    // gaps the core would leak through. The core found is that far inside the shell.
    let grown: Vec<bool> = (0..w * h)
        .map(|i| window(&bone, (w, h), (i, GROWTH, false), |n| n > 0))
        .collect();
    let labels = components(w, h, |i| !grown[i]);
    let n = labels
        .iter()
        .filter(|l| **l != u32::MAX)
        .map(|l| *l as usize + 1)
        .max()
        .unwrap_or(0);
    let mut touches = vec![false; n];
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, &l) in labels.iter().enumerate() {
        if l == u32::MAX {
            continue;
        }
        let (y, x) = (i / w, i % w);
        if y == 0 || x == 0 || y + 1 == h || x + 1 == w {
            touches[l as usize] = true;
        }
        members[l as usize].push(i);
    }
    members
        .into_iter()
        .zip(touches)
        .filter(|(m, t)| !t && !m.is_empty())
        .map(|(m, _)| {
            let k = m.len() as f64;
            let (sy, sx) = m.iter().fold((0.0, 0.0), |(sy, sx), &i| {
                (sy + (y0 + i / w) as f64, sx + (x0 + i % w) as f64)
            });
            Region {
                centre: (sy / k, sx / k),
                area_mm2: k * px * py,
                pixels: m.into_iter().map(at).collect(),
            }
        })
        .filter(|r| (CORE_AREA_MM2[0]..=CORE_AREA_MM2[1]).contains(&r.area_mm2))
        .collect()
}

/// The largest region enclosed by bone in the band around the body's centre behind its front
/// quarter whose centre lies near the midline: a vertebral body's core.
fn core(
    hu: &[f32],
    cols: usize,
    spacing: Spacing,
    (cx, front, back): (f64, usize, usize),
    bone_hu: f32,
) -> Option<Region> {
    let px = spacing[1];
    let half = (SPINE_HALF_WIDTH_MM / px).round() as usize;
    let c = cx.round() as usize;
    let (x0, x1) = (c.saturating_sub(half), (c + half).min(cols - 1));
    // From a quarter of the body's depth: lordosis brings the upper lumbar bodies forward.
    let (y0, y1) = (front + (back - front) / 4, back);
    enclosed(hu, cols, spacing, (x0, x1, y0, y1), bone_hu)
        .into_iter()
        .filter(|r| ((r.centre.1 - cx) * px).abs() <= CORE_OFF_CENTRE_MM)
        .max_by(|a, b| a.area_mm2.total_cmp(&b.area_mm2))
}

/// The pixels of `region` at least `depth` pixels (4-neighbour steps) inside it; the region
/// itself when nothing is that deep.
pub(super) fn eroded(region: &[usize], cols: usize, depth: usize) -> Vec<usize> {
    let mut set: std::collections::HashSet<usize> = region.iter().copied().collect();
    for _ in 0..depth {
        let inner: std::collections::HashSet<usize> = set
            .iter()
            .copied()
            .filter(|&i| {
                let x = i % cols;
                x > 0
                    && x + 1 < cols
                    && set.contains(&(i - 1))
                    && set.contains(&(i + 1))
                    && i >= cols
                    && set.contains(&(i - cols))
                    && set.contains(&(i + cols))
            })
            .collect();
        if inner.is_empty() {
            break;
        }
        set = inner;
    }
    let mut out: Vec<usize> = set.into_iter().collect();
    out.sort_unstable();
    out
}

/// The findings of one slice (`hu` row-major, `rows x cols`) at bone threshold `bone_hu`.
pub(super) fn findings(
    hu: &[f32],
    (rows, cols): (usize, usize),
    spacing: Spacing,
    bone_hu: f32,
) -> SliceFindings {
    let Some(outline) = body(hu, rows, cols) else {
        return SliceFindings {
            air: hu
                .iter()
                .copied()
                .filter(|v| (AIR_HU[0]..=AIR_HU[1]).contains(v))
                .collect(),
            ..Default::default()
        };
    };
    let [_, px] = spacing;
    let depth = (FAT_DEPTH_MM / px).round() as usize;
    let (mut air, mut fat) = (Vec::new(), Vec::new());
    // At most REFERENCE_ROWS rows: the references need thousands of samples, not every pixel.
    let stride = (rows / REFERENCE_ROWS).max(1);
    for row in hu.chunks_exact(cols).step_by(stride) {
        let first = row.iter().position(|v| *v > BODY_HU);
        let last = row.iter().rposition(|v| *v > BODY_HU);
        let (Some(first), Some(last)) = (first, last) else {
            air.extend(row.iter().filter(|v| (AIR_HU[0]..=AIR_HU[1]).contains(*v)));
            continue;
        };
        let outside = row[..first].iter().chain(&row[last + 1..]);
        air.extend(outside.filter(|v| (AIR_HU[0]..=AIR_HU[1]).contains(*v)));
        if last > first + 2 * depth {
            let under_skin = row[first..first + depth]
                .iter()
                .chain(&row[last + 1 - depth..=last]);
            fat.extend(under_skin.filter(|v| (FAT_HU[0]..=FAT_HU[1]).contains(*v)));
        }
    }
    SliceFindings {
        body: Some(outline),
        core: core(hu, cols, spacing, outline, bone_hu),
        air,
        fat,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 100 x 100 slice of 1 mm pixels: a body ellipse of soft tissue with a fat rim, and a
    /// bone ring (the vertebral body) behind its middle around a core of `core_hu`.
    fn slice(core_hu: f32) -> Vec<f32> {
        let mut hu = vec![-1000.0f32; 100 * 100];
        for y in 0..100 {
            for x in 0..100 {
                let (dx, dy) = ((x as f64 - 50.0) / 45.0, (y as f64 - 50.0) / 40.0);
                let r = dx * dx + dy * dy;
                let i = y * 100 + x;
                if r <= 1.0 {
                    hu[i] = if r > 0.75 { -100.0 } else { 40.0 };
                }
                let (bx, by) = ((x as f64 - 50.0) / 14.0, (y as f64 - 68.0) / 11.0);
                let b = bx * bx + by * by;
                if b <= 1.0 {
                    hu[i] = if b > 0.7 { 700.0 } else { core_hu };
                }
            }
        }
        hu
    }

    #[test]
    fn the_core_of_a_vertebral_body_is_found_whatever_its_density() {
        for core_hu in [40.0, 150.0, 300.0] {
            let f = findings(&slice(core_hu), (100, 100), [1.0, 1.0], 400.0);
            let core = f.core.expect("a core");
            assert!((core.centre.0 - 68.0).abs() < 1.0 && (core.centre.1 - 50.0).abs() < 1.0);
            assert!(core.pixels.iter().all(|&i| slice(core_hu)[i] == core_hu));
            assert!(core.area_mm2 > 100.0, "{}", core.area_mm2);
            assert!(f.fat.iter().all(|v| *v == -100.0) && !f.fat.is_empty());
            assert!(f.air.iter().all(|v| *v == -1000.0) && !f.air.is_empty());
        }
    }

    #[test]
    fn a_slice_without_a_bone_ring_has_no_core() {
        let hu: Vec<f32> = slice(40.0)
            .into_iter()
            .map(|v| if v > 400.0 { 90.0 } else { v })
            .collect();
        assert_eq!(findings(&hu, (100, 100), [1.0, 1.0], 400.0).core, None);
    }

    #[test]
    fn erosion_keeps_the_inside() {
        let region: Vec<usize> = (2..8)
            .flat_map(|y| (2..8).map(move |x| y * 10 + x))
            .collect();
        let inner = eroded(&region, 10, 2);
        assert_eq!(inner, vec![44, 45, 54, 55]);
        assert_eq!(
            eroded(&region, 10, 10),
            vec![44, 45, 54, 55],
            "stops before empty"
        );
    }
}

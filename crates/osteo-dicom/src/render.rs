//! PNG rendering of views.

use crate::error::DicomError;
use crate::view::View;

/// Gap in pixels between the two channels of a rendered view.
const GAP: usize = 4;

/// Encodes 8-bit pixels (`Grayscale` or `Rgb`) as PNG.
fn encode_png(
    width: usize,
    height: usize,
    color: png::ColorType,
    pixels: &[u8],
) -> Result<Vec<u8>, DicomError> {
    let png_err = |e: &dyn std::fmt::Display| DicomError::Png(e.to_string());
    let w = u32::try_from(width).map_err(|e| png_err(&e))?;
    let h = u32::try_from(height).map_err(|e| png_err(&e))?;
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(color);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(|e| png_err(&e))?;
    writer.write_image_data(pixels).map_err(|e| png_err(&e))?;
    writer.finish().map_err(|e| png_err(&e))?;
    Ok(out)
}

/// Encodes an 8-bit greyscale image as PNG.
pub fn encode_grey_png(width: usize, height: usize, pixels: &[u8]) -> Result<Vec<u8>, DicomError> {
    encode_png(width, height, png::ColorType::Grayscale, pixels)
}

/// Encodes an 8-bit RGB image as PNG.
pub fn encode_rgb_png(width: usize, height: usize, pixels: &[u8]) -> Result<Vec<u8>, DicomError> {
    encode_png(width, height, png::ColorType::Rgb, pixels)
}

/// Renders a view as PNG: channel 0 (slab mean) left, channel 1 (slab maximum) right, each
/// scaled up `scale` times with nearest-neighbour sampling.
pub fn view_png(view: &View, scale: usize) -> Result<Vec<u8>, DicomError> {
    let scale = scale.max(1);
    let (h, w) = (view.spec.height, view.spec.width);
    let out_w = (2 * w) * scale + GAP;
    let out_h = h * scale;
    let mut pixels = vec![0u8; out_w * out_h];
    for c in 0..View::CHANNELS {
        let ch = view.channel(c);
        let x_off = c * (w * scale + GAP);
        for y in 0..out_h {
            for x in 0..w * scale {
                let v = ch[(y / scale) * w + x / scale];
                pixels[y * out_w + x_off + x] = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
    }
    encode_grey_png(out_w, out_h, &pixels)
}

/// A blue-cyan-yellow-red colour for a value in [0, 1].
fn heat(v: f32) -> [f32; 3] {
    let v = v.clamp(0.0, 1.0);
    let stops: [(f32, [f32; 3]); 5] = [
        (0.0, [0.0, 0.0, 0.5]),
        (0.25, [0.0, 0.4, 1.0]),
        (0.5, [0.0, 1.0, 1.0]),
        (0.75, [1.0, 1.0, 0.0]),
        (1.0, [1.0, 0.0, 0.0]),
    ];
    for w in stops.windows(2) {
        let ((a, ca), (b, cb)) = (w[0], w[1]);
        if v <= b {
            let t = (v - a) / (b - a);
            return std::array::from_fn(|i| ca[i] + (cb[i] - ca[i]) * t);
        }
    }
    stops[4].1
}

/// Renders a heatmap (row-major, values in [0, 1], the view's size) over the view's slab-maximum
/// channel as an RGB PNG, scaled up `scale` times; weak values stay transparent so bone shows.
pub fn overlay_png(view: &View, heatmap: &[f32], scale: usize) -> Result<Vec<u8>, DicomError> {
    let (h, w) = (view.spec.height, view.spec.width);
    let pixels = overlay_rgb(view.channel(1), heatmap, w, scale)?;
    let scale = scale.max(1);
    encode_rgb_png(w * scale, h * scale, &pixels)
}

/// RGB pixels of a heatmap over a greyscale image (both row-major, `width` wide, values in
/// [0, 1]), scaled up `scale` times; weak heatmap values stay transparent.
pub fn overlay_rgb(
    base: &[f32],
    heatmap: &[f32],
    width: usize,
    scale: usize,
) -> Result<Vec<u8>, DicomError> {
    if heatmap.len() != base.len() || width == 0 || !base.len().is_multiple_of(width) {
        return Err(DicomError::Png(format!(
            "heatmap has {} values, the {width}-wide image {}",
            heatmap.len(),
            base.len()
        )));
    }
    let (h, w) = (base.len() / width, width);
    let scale = scale.max(1);
    let (out_h, out_w) = (h * scale, w * scale);
    let mut pixels = Vec::with_capacity(out_h * out_w * 3);
    for y in 0..out_h {
        for x in 0..out_w {
            let i = (y / scale) * w + x / scale;
            let grey = base[i].clamp(0.0, 1.0);
            let m = heatmap[i].clamp(0.0, 1.0);
            let alpha = if m < 0.15 { 0.0 } else { 0.25 + 0.4 * m };
            let c = heat(m);
            for ch in c {
                pixels.push(((grey * (1.0 - alpha) + ch * alpha) * 255.0).round() as u8);
            }
        }
    }
    Ok(pixels)
}

//! PNG rendering of views.

use crate::error::DicomError;
use crate::view::View;

/// Gap in pixels between the two channels of a rendered view.
const GAP: usize = 4;

/// Encodes an 8-bit greyscale image as PNG.
pub fn encode_grey_png(width: usize, height: usize, pixels: &[u8]) -> Result<Vec<u8>, DicomError> {
    let mut out = Vec::new();
    {
        let w = u32::try_from(width).map_err(|e| DicomError::Png(e.to_string()))?;
        let h = u32::try_from(height).map_err(|e| DicomError::Png(e.to_string()))?;
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc
            .write_header()
            .map_err(|e| DicomError::Png(e.to_string()))?;
        writer
            .write_image_data(pixels)
            .map_err(|e| DicomError::Png(e.to_string()))?;
    }
    Ok(out)
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

//! An RGB raster canvas with lines, rectangles and bitmap text, encoded as PNG. Text uses the
//! public-domain 8x8 font of the `font8x8` crate, so plots need no system fonts.

use crate::error::TrainError;
use font8x8::UnicodeFonts;

/// An RGB colour.
pub type Rgb = [u8; 3];

/// White.
pub const WHITE: Rgb = [255, 255, 255];
/// Black.
pub const BLACK: Rgb = [0, 0, 0];
/// Light grey for grid lines.
pub const GRID: Rgb = [225, 225, 225];
/// Mid grey for secondary lines.
pub const GREY: Rgb = [140, 140, 140];
/// One colour per grade (normal, osteopenia, osteoporosis), distinguishable in colour-blind vision.
pub const GRADE_COLOURS: [Rgb; 3] = [[0, 114, 178], [230, 159, 0], [213, 94, 0]];

/// Side of a font glyph in font pixels.
const GLYPH: usize = 8;

/// A white RGB image to draw on.
pub struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl Canvas {
    /// A white canvas.
    pub fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            pixels: vec![255; width * height * 3],
        }
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Sets one pixel, blending `colour` with weight `alpha` in [0, 1]; outside pixels are ignored.
    pub fn blend(&mut self, x: i64, y: i64, colour: Rgb, alpha: f64) {
        if x < 0 || y < 0 || x >= self.width as i64 || y >= self.height as i64 {
            return;
        }
        let a = alpha.clamp(0.0, 1.0);
        let i = (y as usize * self.width + x as usize) * 3;
        for (c, &v) in colour.iter().enumerate() {
            let old = f64::from(self.pixels[i + c]);
            self.pixels[i + c] = (old * (1.0 - a) + f64::from(v) * a).round() as u8;
        }
    }

    /// Fills the rectangle with top-left corner `(x, y)`.
    pub fn fill_rect(&mut self, x: i64, y: i64, w: i64, h: i64, colour: Rgb) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.blend(xx, yy, colour, 1.0);
            }
        }
    }

    /// Outlines the rectangle with top-left corner `(x, y)`.
    pub fn stroke_rect(&mut self, x: i64, y: i64, w: i64, h: i64, colour: Rgb) {
        self.fill_rect(x, y, w, 1, colour);
        self.fill_rect(x, y + h - 1, w, 1, colour);
        self.fill_rect(x, y, 1, h, colour);
        self.fill_rect(x + w - 1, y, 1, h, colour);
    }

    /// An anti-aliased line `width` pixels wide (distance-based coverage).
    pub fn line(&mut self, from: (f64, f64), to: (f64, f64), width: f64, colour: Rgb) {
        let half = width / 2.0;
        let (x0, x1) = (from.0.min(to.0) - half - 1.0, from.0.max(to.0) + half + 1.0);
        let (y0, y1) = (from.1.min(to.1) - half - 1.0, from.1.max(to.1) + half + 1.0);
        let (dx, dy) = (to.0 - from.0, to.1 - from.1);
        let len2 = (dx * dx + dy * dy).max(1e-12);
        for y in y0.floor() as i64..=y1.ceil() as i64 {
            for x in x0.floor() as i64..=x1.ceil() as i64 {
                let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
                let t = (((px - from.0) * dx + (py - from.1) * dy) / len2).clamp(0.0, 1.0);
                let (cx, cy) = (from.0 + t * dx, from.1 + t * dy);
                let d = ((px - cx).powi(2) + (py - cy).powi(2)).sqrt();
                let coverage = (half + 0.5 - d).clamp(0.0, 1.0);
                if coverage > 0.0 {
                    self.blend(x, y, colour, coverage);
                }
            }
        }
    }

    /// A polyline through `points`.
    pub fn polyline(&mut self, points: &[(f64, f64)], width: f64, colour: Rgb) {
        for pair in points.windows(2) {
            self.line(pair[0], pair[1], width, colour);
        }
    }

    /// A dashed straight line.
    pub fn dashed(&mut self, from: (f64, f64), to: (f64, f64), dash: f64, colour: Rgb) {
        let (dx, dy) = (to.0 - from.0, to.1 - from.1);
        let len = (dx * dx + dy * dy).sqrt();
        let steps = (len / dash).ceil().max(1.0) as usize;
        for s in (0..steps).step_by(2) {
            let a = s as f64 / steps as f64;
            let b = ((s + 1) as f64 / steps as f64).min(1.0);
            self.line(
                (from.0 + a * dx, from.1 + a * dy),
                (from.0 + b * dx, from.1 + b * dy),
                1.0,
                colour,
            );
        }
    }

    /// Width in pixels of `text` at `scale` (glyphs are `8 * scale` pixels square).
    pub fn text_width(text: &str, scale: usize) -> i64 {
        (text.chars().count() * GLYPH * scale) as i64
    }

    /// Draws `text` with its top-left corner at `(x, y)`; characters without a glyph show as `?`.
    pub fn text(&mut self, x: i64, y: i64, text: &str, scale: usize, colour: Rgb) {
        for (n, ch) in text.chars().enumerate() {
            let glyph = glyph(ch);
            let gx = x + (n * GLYPH * scale) as i64;
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..GLYPH {
                    if bits & (1 << col) != 0 {
                        self.fill_rect(
                            gx + (col * scale) as i64,
                            y + (row * scale) as i64,
                            scale as i64,
                            scale as i64,
                            colour,
                        );
                    }
                }
            }
        }
    }

    /// Draws `text` centred horizontally on `cx`.
    pub fn text_centred(&mut self, cx: i64, y: i64, text: &str, scale: usize, colour: Rgb) {
        self.text(
            cx - Self::text_width(text, scale) / 2,
            y,
            text,
            scale,
            colour,
        );
    }

    /// Draws `text` rotated a quarter turn anticlockwise (reading bottom to top), centred
    /// vertically on `cy`, with its left edge at `x`.
    pub fn text_vertical(&mut self, x: i64, cy: i64, text: &str, scale: usize, colour: Rgb) {
        let bottom = cy + Self::text_width(text, scale) / 2;
        for (n, ch) in text.chars().enumerate() {
            let glyph = glyph(ch);
            let gy = bottom - ((n + 1) * GLYPH * scale) as i64;
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..GLYPH {
                    if bits & (1 << col) != 0 {
                        self.fill_rect(
                            x + (row * scale) as i64,
                            gy + ((GLYPH - 1 - col) * scale) as i64,
                            scale as i64,
                            scale as i64,
                            colour,
                        );
                    }
                }
            }
        }
    }

    /// Copies an RGB image (`w * h * 3` bytes) with its top-left corner at `(x, y)`.
    pub fn blit(&mut self, x: i64, y: i64, w: usize, h: usize, rgb: &[u8]) {
        for (row, line) in rgb.chunks_exact(w * 3).take(h).enumerate() {
            for (col, px) in line.chunks_exact(3).enumerate() {
                self.blend(x + col as i64, y + row as i64, [px[0], px[1], px[2]], 1.0);
            }
        }
    }

    /// Encodes the canvas as an RGB PNG.
    pub fn to_png(&self) -> Result<Vec<u8>, TrainError> {
        osteo_dicom::render::encode_rgb_png(self.width, self.height, &self.pixels)
            .map_err(|e| TrainError::Setup(format!("cannot encode a plot: {e}")))
    }
}

/// The 8x8 bitmap of a character (row by row, bit 0 leftmost).
fn glyph(ch: char) -> [u8; 8] {
    font8x8::BASIC_FONTS
        .get(ch)
        .or_else(|| font8x8::LATIN_FONTS.get(ch))
        .or_else(|| font8x8::BASIC_FONTS.get('?'))
        .unwrap_or([0; 8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dark_pixels(c: &Canvas) -> usize {
        c.pixels.chunks_exact(3).filter(|p| p[0] < 128).count()
    }

    #[test]
    fn text_draws_glyph_pixels_and_measures_its_width() {
        let mut c = Canvas::new(64, 16);
        assert_eq!(dark_pixels(&c), 0);
        c.text(0, 0, "AUC", 2, BLACK);
        assert!(dark_pixels(&c) > 30);
        assert_eq!(Canvas::text_width("AUC", 2), 48);
        let mut v = Canvas::new(16, 64);
        v.text_vertical(0, 32, "AUC", 2, BLACK);
        assert_eq!(dark_pixels(&v), dark_pixels(&c));
    }

    #[test]
    fn drawing_outside_the_canvas_is_clipped() {
        let mut c = Canvas::new(10, 10);
        c.line((-50.0, -50.0), (60.0, 60.0), 2.0, BLACK);
        c.fill_rect(-5, -5, 100, 3, BLACK);
        c.text(-20, 8, "clipped", 3, BLACK);
        assert!(dark_pixels(&c) > 0);
        assert!(c.to_png().is_ok());
    }
}

//! The report's charts: ROC curves, confusion matrix, training curves and a Grad-CAM panel.

use super::canvas::{BLACK, Canvas, GRADE_COLOURS, GREY, GRID, Rgb, WHITE};
use crate::error::TrainError;
use crate::train::Epoch;
use osteo_core::Grade;

/// Glyph scale of titles, labels and tick labels.
const TEXT: usize = 2;
/// Glyph height at `TEXT` scale.
const LINE: i64 = 8 * TEXT as i64;

/// A plotting rectangle mapping data coordinates to pixels.
struct Axes {
    left: f64,
    top: f64,
    width: f64,
    height: f64,
    x: (f64, f64),
    y: (f64, f64),
}

impl Axes {
    /// The pixel of a data point.
    fn at(&self, x: f64, y: f64) -> (f64, f64) {
        (
            self.left + (x - self.x.0) / (self.x.1 - self.x.0) * self.width,
            self.top + self.height - (y - self.y.0) / (self.y.1 - self.y.0) * self.height,
        )
    }

    /// Frame, grid, ticks with labels, axis labels and title.
    fn draw(&self, c: &mut Canvas, x_ticks: &[f64], y_ticks: &[f64], labels: [&str; 3]) {
        let [title, x_label, y_label] = labels;
        let decimals = |ticks: &[f64]| {
            let step = ticks.windows(2).map(|w| w[1] - w[0]).fold(1.0f64, f64::min);
            (-step.log10().floor()).clamp(0.0, 3.0) as usize
        };
        let (dx, dy) = (decimals(x_ticks), decimals(y_ticks));
        for &t in x_ticks {
            let (px, _) = self.at(t, self.y.0);
            c.line((px, self.top), (px, self.top + self.height), 1.0, GRID);
            c.text_centred(
                px as i64,
                (self.top + self.height) as i64 + 6,
                &format!("{t:.dx$}"),
                TEXT,
                BLACK,
            );
        }
        for &t in y_ticks {
            let (_, py) = self.at(self.x.0, t);
            c.line((self.left, py), (self.left + self.width, py), 1.0, GRID);
            let label = format!("{t:.dy$}");
            c.text(
                self.left as i64 - Canvas::text_width(&label, TEXT) - 6,
                py as i64 - LINE / 2,
                &label,
                TEXT,
                BLACK,
            );
        }
        c.stroke_rect(
            self.left as i64,
            self.top as i64,
            self.width as i64 + 1,
            self.height as i64 + 1,
            BLACK,
        );
        let cx = (self.left + self.width / 2.0) as i64;
        c.text_centred(
            cx,
            (self.top + self.height) as i64 + LINE + 14,
            x_label,
            TEXT,
            BLACK,
        );
        c.text_vertical(
            self.left as i64 - 72,
            (self.top + self.height / 2.0) as i64,
            y_label,
            TEXT,
            BLACK,
        );
        c.text_centred(cx, self.top as i64 - LINE - 12, title, TEXT, BLACK);
    }
}

/// A legend box whose bottom-right corner is at `(right, bottom)`: one coloured line and label
/// per entry.
fn legend(c: &mut Canvas, right: i64, bottom: i64, entries: &[(String, Rgb)]) {
    let width = entries
        .iter()
        .map(|(l, _)| Canvas::text_width(l, TEXT))
        .max()
        .unwrap_or(0)
        + 48;
    let height = entries.len() as i64 * (LINE + 8) + 8;
    let (x, y) = (right - width, bottom - height);
    c.fill_rect(x, y, width, height, WHITE);
    c.stroke_rect(x, y, width, height, GREY);
    for (n, (label, colour)) in entries.iter().enumerate() {
        let ly = y + 8 + n as i64 * (LINE + 8);
        let mid = (ly + LINE / 2) as f64;
        c.line((x as f64 + 8.0, mid), (x as f64 + 32.0, mid), 3.0, *colour);
        c.text(x + 40, ly, label, TEXT, BLACK);
    }
}

/// A chart of the unit square (title, x label, y label) with its dashed diagonal.
fn unit_square(labels: [&str; 3]) -> (Canvas, Axes) {
    let mut c = Canvas::new(660, 620);
    let axes = Axes {
        left: 100.0,
        top: 60.0,
        width: 500.0,
        height: 480.0,
        x: (0.0, 1.0),
        y: (0.0, 1.0),
    };
    let ticks = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0];
    axes.draw(&mut c, &ticks, &ticks, labels);
    c.dashed(axes.at(0.0, 0.0), axes.at(1.0, 1.0), 6.0, GREY);
    (c, axes)
}

/// One-vs-rest ROC curve of one grade.
pub struct RocCurve {
    /// The grade.
    pub grade: Grade,
    /// Its AUC.
    pub auc: Option<f64>,
    /// `(false positive rate, true positive rate)` points.
    pub points: Vec<(f64, f64)>,
}

/// ROC curves of the three grades in one chart.
pub fn roc(title: &str, curves: &[RocCurve]) -> Result<Vec<u8>, TrainError> {
    let (mut c, axes) = unit_square([title, "false positive rate", "true positive rate"]);
    let mut entries = Vec::new();
    for curve in curves {
        let colour = GRADE_COLOURS[curve.grade.index()];
        let points: Vec<(f64, f64)> = curve.points.iter().map(|&(x, y)| axes.at(x, y)).collect();
        c.polyline(&points, 2.5, colour);
        let auc = curve.auc.map_or("n/a".to_string(), |a| format!("{a:.3}"));
        entries.push((format!("{} AUC {auc}", curve.grade.name()), colour));
    }
    let (right, bottom) = axes.at(1.0, 0.0);
    legend(&mut c, right as i64 - 10, bottom as i64 - 10, &entries);
    c.to_png()
}

/// The confusion matrix: counts and row percentages, shaded by the row fraction.
pub fn confusion(title: &str, matrix: &[[usize; 3]; 3]) -> Result<Vec<u8>, TrainError> {
    let cell = 210i64;
    let (left, top) = (220i64, 120i64);
    let mut c = Canvas::new(
        (left + 3 * cell + 30) as usize,
        (top + 3 * cell + 80) as usize,
    );
    c.text_centred(left + 3 * cell / 2, 20, title, TEXT, BLACK);
    c.text_centred(left + 3 * cell / 2, top - 50, "predicted", TEXT, BLACK);
    c.text_vertical(8, top + 3 * cell / 2, "truth", TEXT, BLACK);
    for g in Grade::ALL {
        let k = g.index() as i64;
        c.text_centred(left + k * cell + cell / 2, top - 24, g.name(), TEXT, BLACK);
        c.text(
            left - Canvas::text_width(g.name(), TEXT) - 10,
            top + k * cell + cell / 2 - LINE / 2,
            g.name(),
            TEXT,
            BLACK,
        );
    }
    for (t, row) in matrix.iter().enumerate() {
        let total: usize = row.iter().sum();
        for (p, &n) in row.iter().enumerate() {
            let frac = if total == 0 {
                0.0
            } else {
                n as f64 / total as f64
            };
            let shade = |full: u8| (255.0 - (255.0 - f64::from(full)) * frac).round() as u8;
            let fill = [shade(8), shade(81), shade(156)];
            let (x, y) = (left + p as i64 * cell, top + t as i64 * cell);
            c.fill_rect(x, y, cell, cell, fill);
            c.stroke_rect(x, y, cell + 1, cell + 1, GREY);
            let ink = if frac > 0.5 { WHITE } else { BLACK };
            c.text_centred(
                x + cell / 2,
                y + cell / 2 - LINE - 4,
                &n.to_string(),
                3,
                ink,
            );
            c.text_centred(
                x + cell / 2,
                y + cell / 2 + 12,
                &format!("{:.0}%", 100.0 * frac),
                TEXT,
                ink,
            );
        }
    }
    c.text(
        left,
        top + 3 * cell + 20,
        "row % = share of the true grade",
        TEXT,
        GREY,
    );
    c.to_png()
}

/// Tick positions covering `[lo, hi]` with a round step of at least `min_step`.
fn nice_ticks(lo: f64, hi: f64, target: usize, min_step: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-9);
    let raw = (span / target.max(1) as f64).max(min_step);
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// Training loss (left) and validation macro AUC and accuracy (right) per epoch, with the best
/// epoch marked.
pub fn training(title: &str, history: &[Epoch], best_epoch: usize) -> Result<Vec<u8>, TrainError> {
    let mut c = Canvas::new(1240, 560);
    c.text_centred(620, 12, title, TEXT, BLACK);
    let epochs = history.len().max(2) as f64;
    let x_ticks = nice_ticks(1.0, epochs, 8, 1.0);
    let max_loss = history
        .iter()
        .map(|e| e.train_loss)
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.1;
    // Two panels side by side over the same epochs.
    let panel = |left: f64, y: (f64, f64)| Axes {
        left,
        top: 80.0,
        width: 470.0,
        height: 380.0,
        x: (1.0, epochs),
        y,
    };
    let loss = panel(110.0, (0.0, max_loss));
    loss.draw(
        &mut c,
        &x_ticks,
        &nice_ticks(0.0, max_loss, 5, 0.0),
        ["training loss", "epoch", "weighted cross-entropy"],
    );
    let val = panel(730.0, (0.0, 1.0));
    val.draw(
        &mut c,
        &x_ticks,
        &[0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
        ["validation", "epoch", "macro AUC / accuracy"],
    );
    let series = |axes: &Axes, f: &dyn Fn(&Epoch) -> f64| -> Vec<(f64, f64)> {
        history
            .iter()
            .map(|e| axes.at(e.epoch as f64, f(e)))
            .collect()
    };
    c.polyline(&series(&loss, &|e| e.train_loss), 2.5, GRADE_COLOURS[0]);
    c.polyline(&series(&val, &|e| e.validation_auc), 2.5, GRADE_COLOURS[0]);
    c.polyline(
        &series(&val, &|e| e.validation_accuracy),
        2.5,
        GRADE_COLOURS[2],
    );
    for axes in [&loss, &val] {
        if best_epoch >= 1 {
            let (top, bottom) = (
                axes.at(best_epoch as f64, axes.y.1),
                axes.at(best_epoch as f64, axes.y.0),
            );
            c.dashed(top, bottom, 5.0, GREY);
        }
    }
    let (right, bottom) = val.at(epochs, 0.0);
    legend(
        &mut c,
        right as i64 - 10,
        bottom as i64 - 10,
        &[
            ("macro AUC".to_string(), GRADE_COLOURS[0]),
            ("accuracy".to_string(), GRADE_COLOURS[2]),
            (format!("best epoch {best_epoch}"), GREY),
        ],
    );
    c.to_png()
}

/// One curve of a reliability diagram: its label and its non-empty bins as
/// `(mean confidence, accuracy)`.
pub struct Reliability {
    /// Legend label, e.g. `before (ECE 0.051)`.
    pub label: String,
    /// Points in bin order.
    pub points: Vec<(f64, f64)>,
}

/// A reliability diagram: accuracy against top-label confidence per bin, before (grey) and
/// after (blue) calibration, with the diagonal of perfect calibration.
pub fn reliability(title: &str, curves: &[Reliability]) -> Result<Vec<u8>, TrainError> {
    let (mut c, axes) = unit_square([title, "confidence of the predicted grade", "accuracy"]);
    let colours = [GREY, GRADE_COLOURS[0]];
    let mut entries = Vec::new();
    for (curve, colour) in curves.iter().zip(colours.iter().cycle()) {
        let points: Vec<(f64, f64)> = curve.points.iter().map(|&(x, y)| axes.at(x, y)).collect();
        c.polyline(&points, 2.5, *colour);
        for &(x, y) in &points {
            c.fill_rect(x as i64 - 4, y as i64 - 4, 9, 9, *colour);
        }
        entries.push((curve.label.clone(), *colour));
    }
    let (right, bottom) = axes.at(1.0, 0.0);
    legend(&mut c, right as i64 - 10, bottom as i64 - 10, &entries);
    c.to_png()
}

/// One Grad-CAM example: an RGB overlay and two caption lines.
pub struct CamTile {
    /// RGB pixels, `size * size * 3`.
    pub rgb: Vec<u8>,
    /// Side of the square overlay in pixels.
    pub size: usize,
    /// Caption lines under the overlay.
    pub caption: [String; 2],
}

/// Grad-CAM overlays side by side with their captions.
pub fn gradcam(title: &str, tiles: &[CamTile]) -> Result<Vec<u8>, TrainError> {
    let size = tiles.iter().map(|t| t.size).max().unwrap_or(256) as i64;
    let pad = 20i64;
    let caption_w = tiles
        .iter()
        .flat_map(|t| t.caption.iter().map(|l| Canvas::text_width(l, TEXT)))
        .max()
        .unwrap_or(0);
    let tile_w = size.max(caption_w);
    let width = pad + tiles.len().max(1) as i64 * (tile_w + pad);
    let height = 50 + size + 2 * (LINE + 8) + pad;
    let mut c = Canvas::new(width as usize, height as usize);
    c.text_centred(width / 2, 14, title, TEXT, BLACK);
    for (n, t) in tiles.iter().enumerate() {
        let x = pad + n as i64 * (tile_w + pad);
        c.blit(x + (tile_w - t.size as i64) / 2, 44, t.size, t.size, &t.rgb);
        for (l, line) in t.caption.iter().enumerate() {
            c.text_centred(
                x + tile_w / 2,
                52 + size + l as i64 * (LINE + 8),
                line,
                TEXT,
                BLACK,
            );
        }
    }
    c.to_png()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_inside_the_range() {
        let t = nice_ticks(0.0, 1.0, 5, 0.0);
        assert_eq!(t.len(), 6);
        assert!((t[3] - 0.6).abs() < 1e-12);
        assert_eq!(nice_ticks(1.0, 3.0, 8, 1.0), vec![1.0, 2.0, 3.0]);
        let t = nice_ticks(1.0, 37.0, 8, 1.0);
        assert_eq!(t.first(), Some(&5.0));
        assert!(t.iter().all(|v| (1.0..=37.0).contains(v)));
    }

    #[test]
    fn every_chart_encodes_as_png() {
        let png_magic = |b: &[u8]| b.starts_with(&[0x89, b'P', b'N', b'G']);
        let curve = RocCurve {
            grade: Grade::Osteopenia,
            auc: Some(0.8),
            points: vec![(0.0, 0.0), (0.2, 0.7), (1.0, 1.0)],
        };
        assert!(png_magic(&roc("roc", &[curve]).unwrap()));
        assert!(png_magic(
            &confusion("c", &[[5, 1, 0], [2, 7, 1], [0, 0, 0]]).unwrap()
        ));
        let history: Vec<Epoch> = (1..=3)
            .map(|epoch| Epoch {
                epoch,
                train_loss: 1.0 / epoch as f64,
                validation_auc: 0.7,
                validation_accuracy: 0.6,
                learning_rate: 1e-3,
            })
            .collect();
        assert!(png_magic(&training("t", &history, 2).unwrap()));
        let tile = CamTile {
            rgb: vec![128; 16 * 16 * 3],
            size: 16,
            caption: ["a".into(), "b".into()],
        };
        assert!(png_magic(&gradcam("g", &[tile]).unwrap()));
    }
}

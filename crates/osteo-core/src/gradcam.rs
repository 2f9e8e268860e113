//! Grad-CAM assembly shared by every backend: backends return the last conv block's activation
//! `A [K, h, w]` and `alpha [K]` (the spatial mean of d logit_c / d A); this turns them into the
//! map `relu(sum_k alpha_k A_k)`, normalised to [0, 1] and resampled to the view's size.

use crate::error::CoreError;
use crate::tensor::Tensor;

/// What a backend returns for one sample and one target class.
#[derive(Debug, Clone, PartialEq)]
pub struct GradCamParts {
    /// Activation of the last conv block, `[K, h, w]`.
    pub activation: Tensor,
    /// Channel weights, `K` of them.
    pub alpha: Vec<f32>,
}

/// What a backend returns for one sample in one pass: its logits, the Grad-CAM parts of every
/// class (image models; the activation is shared, the channel weights differ per class) and the
/// clinical features' gradients (models with clinical features).
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// Logits in class order (normal, osteopenia, osteoporosis).
    pub logits: Vec<f32>,
    /// Activation of the last conv block, `[K, h, w]` (`None` for models without an image).
    pub activation: Option<Tensor>,
    /// Channel weights of each class, in class order, `K` each (empty without an image).
    pub alphas: Vec<Vec<f32>>,
    /// Gradient of each class's logit with respect to the tabular input, in class order, `F`
    /// each (empty for models without clinical features).
    pub tabular_gradients: Vec<Vec<f32>>,
}

impl Explanation {
    /// The Grad-CAM parts of `class`.
    pub fn parts(&self, class: crate::Grade) -> Result<GradCamParts, CoreError> {
        let activation = self
            .activation
            .clone()
            .ok_or_else(|| CoreError::InvalidSpec {
                what: "Grad-CAM input",
                reason: "the model has no image branch to explain".into(),
            })?;
        let alpha = self
            .alphas
            .get(class.index())
            .ok_or_else(|| CoreError::InvalidSpec {
                what: "Grad-CAM input",
                reason: format!(
                    "no channel weights for class {} ({} classes explained)",
                    class.index(),
                    self.alphas.len()
                ),
            })?;
        Ok(GradCamParts {
            activation,
            alpha: alpha.clone(),
        })
    }
}

/// A Grad-CAM map on the view grid, values in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct GradCamMap {
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
    /// Row-major values.
    pub values: Vec<f32>,
}

/// Builds the normalised map at `height x width` (bilinear, pixel-centre aligned).
pub fn assemble(
    parts: &GradCamParts,
    height: usize,
    width: usize,
) -> Result<GradCamMap, CoreError> {
    let shape = parts.activation.shape();
    let bad = |reason: String| CoreError::InvalidSpec {
        what: "Grad-CAM input",
        reason,
    };
    let [k, h, w] = <[usize; 3]>::try_from(shape)
        .map_err(|_| bad(format!("activation must be [K, h, w], got {shape:?}")))?;
    if k != parts.alpha.len() || h == 0 || w == 0 || height == 0 || width == 0 {
        return Err(bad(format!(
            "activation {shape:?} with {} weights onto {height}x{width}",
            parts.alpha.len()
        )));
    }
    let a = parts.activation.data();
    let mut cam = vec![0f32; h * w];
    for (c, &alpha) in parts.alpha.iter().enumerate() {
        for (dst, src) in cam.iter_mut().zip(&a[c * h * w..(c + 1) * h * w]) {
            *dst += alpha * src;
        }
    }
    let max = cam.iter().fold(0f32, |m, v| m.max(*v));
    if !max.is_finite() {
        return Err(bad("non-finite activation or weights".into()));
    }
    for v in &mut cam {
        *v = if max > 0.0 { v.max(0.0) / max } else { 0.0 };
    }
    let sample = |y: f32, x: f32| {
        let y = y.clamp(0.0, (h - 1) as f32);
        let x = x.clamp(0.0, (w - 1) as f32);
        let (y0, x0) = (y.floor() as usize, x.floor() as usize);
        let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
        let (ty, tx) = (y - y0 as f32, x - x0 as f32);
        let top = cam[y0 * w + x0] * (1.0 - tx) + cam[y0 * w + x1] * tx;
        let bottom = cam[y1 * w + x0] * (1.0 - tx) + cam[y1 * w + x1] * tx;
        top * (1.0 - ty) + bottom * ty
    };
    let (sy, sx) = (h as f32 / height as f32, w as f32 / width as f32);
    let values = (0..height)
        .flat_map(|r| {
            (0..width).map(move |c| ((r as f32 + 0.5) * sy - 0.5, (c as f32 + 0.5) * sx - 0.5))
        })
        .map(|(y, x)| sample(y, x))
        .collect();
    Ok(GradCamMap {
        height,
        width,
        values,
    })
}

/// Pearson correlation of two maps of equal size (how alike two backends' Grad-CAMs are); two
/// constant maps correlate 1 when equal and 0 otherwise.
pub fn correlation(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() || a.is_empty() {
        return 0.0;
    }
    let n = a.len() as f64;
    let mean = |v: &[f32]| v.iter().map(|x| f64::from(*x)).sum::<f64>() / n;
    let (ma, mb) = (mean(a), mean(b));
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        let (dx, dy) = (f64::from(*x) - ma, f64::from(*y) - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    if saa == 0.0 || sbb == 0.0 {
        return if a == b { 1.0 } else { 0.0 };
    }
    sab / (saa * sbb).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_sum_relu_normalise_and_resample() {
        // Two channels on a 2x2 grid: channel 0 lights the top-left, channel 1 the bottom-right.
        let activation = Tensor::new(vec![2, 2, 2], vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
            .expect("tensor");
        let parts = GradCamParts {
            activation,
            alpha: vec![2.0, -1.0],
        };
        let m = assemble(&parts, 2, 2).expect("map");
        assert_eq!(
            m.values,
            vec![1.0, 0.0, 0.0, 0.0],
            "negative evidence is cut by the ReLU"
        );
        let up = assemble(&parts, 4, 4).expect("map");
        assert_eq!(up.values.len(), 16);
        assert_eq!(up.values[0], 1.0);
        assert!(up.values[1] > up.values[2] && up.values[2] > 0.0 && up.values[15] == 0.0);
        assert!(up.values.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn correlation_of_maps() {
        let a = [0.0, 0.5, 1.0, 0.25];
        assert!((correlation(&a, &a) - 1.0).abs() < 1e-12);
        let inverted: Vec<f32> = a.iter().map(|v| 1.0 - v).collect();
        assert!((correlation(&a, &inverted) + 1.0).abs() < 1e-12);
        assert_eq!(correlation(&[0.0; 4], &[0.0; 4]), 1.0);
        assert_eq!(correlation(&[0.0; 4], &a), 0.0);
        assert_eq!(correlation(&a, &a[..3]), 0.0);
    }

    #[test]
    fn all_negative_evidence_gives_a_zero_map_and_bad_shapes_are_errors() {
        let activation = Tensor::new(vec![1, 2, 2], vec![1.0; 4]).expect("tensor");
        let m = assemble(
            &GradCamParts {
                activation: activation.clone(),
                alpha: vec![-1.0],
            },
            3,
            3,
        )
        .expect("map");
        assert!(m.values.iter().all(|v| *v == 0.0));
        assert!(
            assemble(
                &GradCamParts {
                    activation,
                    alpha: vec![1.0, 2.0]
                },
                3,
                3
            )
            .is_err()
        );
    }
}

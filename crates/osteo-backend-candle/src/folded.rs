//! The candle backend's CPU inference path. Profiling predict showed candle's generic conv2d
//! spending most of its time building im2col tiles element by element; here each conv block is
//! a channels-last im2col (one slice copy per kernel tap) and one matrix product (gemm, the
//! kernels under candle's own matmul) against the convolution's weights with batch-norm folded
//! in at load, then bias, ReLU and the 2x2 max-pool in one pass. No autograd graph, no tensor
//! per operation, and no per-call thread-count lookup (candle's matmul reads the cgroup files
//! for it on every call: 10% of a batch-1 prediction). Explain and training keep the
//! [`Network`] graph, which this path must equal.

use crate::network::Network;
use candle_core::{Result, Tensor, bail};
use rayon::prelude::*;

/// One conv block (3x3, padding 1) with its batch-norm folded into the weights and bias.
#[derive(Debug, Clone)]
struct Block {
    c_in: usize,
    c_out: usize,
    /// `[9 * c_in, c_out]` row-major, rows ordered (kernel row, kernel column, input channel).
    weight: Vec<f32>,
    bias: Vec<f32>,
}

/// A linear layer, row-major `[output, input]` weights.
#[derive(Debug, Clone)]
struct Dense {
    input: usize,
    weight: Vec<f32>,
    bias: Vec<f32>,
    relu: bool,
}

/// The network of a [`Network`], folded for CPU inference.
#[derive(Debug, Clone)]
pub(crate) struct Folded {
    /// Input channels, height and width of the view, for models that read images.
    image: Option<(usize, usize, usize)>,
    blocks: Vec<Block>,
    tabular_in: usize,
    tabular: Vec<Dense>,
    head: Vec<Dense>,
    classes: usize,
}

fn values(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

fn dense(layers: &[candle_nn::Linear], relu_last: bool) -> Result<Vec<Dense>> {
    let n = layers.len();
    layers
        .iter()
        .enumerate()
        .map(|(k, layer)| {
            let (output, input) = layer.weight().dims2()?;
            let bias = match layer.bias() {
                Some(b) => values(b)?,
                None => vec![0.0; output],
            };
            Ok(Dense {
                input,
                weight: values(layer.weight())?,
                bias,
                relu: k + 1 < n || relu_last,
            })
        })
        .collect()
}

impl Folded {
    /// Folds the network's current weights (eval-mode batch-norm statistics).
    pub(crate) fn new(network: &Network) -> Result<Self> {
        let arch = network.arch();
        let mut blocks = Vec::new();
        for block in network.blocks() {
            let (conv, bn) = (&block.conv, &block.bn);
            let (c_out, c_in, kh, kw) = conv.weight().dims4()?;
            let config = conv.config();
            if (kh, kw) != (3, 3) || config.padding != 1 || config.stride != 1 {
                bail!("the folded path supports 3x3 convolutions with padding 1 only");
            }
            let w = values(conv.weight())?;
            let conv_bias = match conv.bias() {
                Some(b) => values(b)?,
                None => vec![0.0; c_out],
            };
            let (mean, var) = (values(bn.running_mean())?, values(bn.running_var())?);
            let (gamma, beta) = match bn.weight_and_bias() {
                Some((g, b)) => (values(g)?, values(b)?),
                None => (vec![1.0; c_out], vec![0.0; c_out]),
            };
            let eps = bn.eps() as f32;
            let scale: Vec<f32> = (0..c_out)
                .map(|o| gamma[o] / (var[o] + eps).sqrt())
                .collect();
            let mut folded = vec![0f32; 9 * c_in * c_out];
            for o in 0..c_out {
                for i in 0..c_in {
                    for tap in 0..9 {
                        folded[(tap * c_in + i) * c_out + o] =
                            w[(o * c_in + i) * 9 + tap] * scale[o];
                    }
                }
            }
            let bias = (0..c_out)
                .map(|o| (conv_bias[o] - mean[o]) * scale[o] + beta[o])
                .collect();
            blocks.push(Block {
                c_in,
                c_out,
                weight: folded,
                bias,
            });
        }
        let (tabular_layers, relu_last) = network.tabular_layers();
        Ok(Self {
            image: arch
                .image
                .as_ref()
                .map(|i| (i.in_channels, i.height, i.width)),
            blocks,
            tabular_in: arch.tabular.as_ref().map_or(0, |t| t.in_features),
            tabular: dense(tabular_layers, relu_last)?,
            head: dense(network.head_layers(), false)?,
            classes: arch.head.classes,
        })
    }

    /// Logits `[n * classes]` for `n` samples: views `[n, C, H, W]` and features `[n, F]`,
    /// each present when the model reads it (the caller has checked the shapes).
    pub(crate) fn forward(
        &self,
        n: usize,
        images: Option<&[f32]>,
        tabular: Option<&[f32]>,
    ) -> Result<Vec<f32>> {
        let per_image = self.image.map_or(0, |(c, h, w)| c * h * w);
        let one = |i: usize, parallel: bool| {
            self.sample(
                images.map(|x| &x[i * per_image..(i + 1) * per_image]),
                tabular.map(|t| &t[i * self.tabular_in..(i + 1) * self.tabular_in]),
                parallel,
            )
        };
        // One sample: the matrix products use every thread; several: one sample per thread.
        let logits: Vec<Vec<f32>> = if n == 1 {
            vec![one(0, true)?]
        } else {
            (0..n)
                .into_par_iter()
                .map(|i| one(i, false))
                .collect::<Result<_>>()?
        };
        Ok(logits.concat())
    }

    fn sample(
        &self,
        image: Option<&[f32]>,
        tabular: Option<&[f32]>,
        parallel: bool,
    ) -> Result<Vec<f32>> {
        let mut features = Vec::new();
        if let Some(x) = image {
            let (act, (c, h, w)) = self.activation_hwc(x, parallel)?;
            let mut mean = vec![0f32; c];
            for pixel in act.chunks_exact(c) {
                for (m, v) in mean.iter_mut().zip(pixel) {
                    *m += v;
                }
            }
            let count = (h * w).max(1) as f32;
            features.extend(mean.into_iter().map(|m| m / count));
        }
        if let Some(t) = tabular {
            let mut x = t.to_vec();
            for layer in &self.tabular {
                x = layer.run(&x);
            }
            features.extend(x);
        }
        let mut x = features;
        for layer in &self.head {
            x = layer.run(&x);
        }
        if x.len() != self.classes {
            bail!("the folded network produced {} logits", x.len());
        }
        Ok(x)
    }
}

impl Folded {
    /// The last conv block's activation of one view `[C, H, W]`, channels last `[h, w, K]`,
    /// with `(K, h, w)`.
    fn activation_hwc(
        &self,
        x: &[f32],
        parallel: bool,
    ) -> Result<(Vec<f32>, (usize, usize, usize))> {
        let Some((c, h, w)) = self.image else {
            bail!("the model reads no image");
        };
        if x.len() != c * h * w {
            bail!("a view must hold {} values", c * h * w);
        }
        let mut act = vec![0f32; h * w * c];
        for ch in 0..c {
            for (p, v) in x[ch * h * w..(ch + 1) * h * w].iter().enumerate() {
                act[p * c + ch] = *v;
            }
        }
        let (mut h, mut w) = (h, w);
        for block in &self.blocks {
            (act, h, w) = block.run(&act, h, w, parallel)?;
        }
        let k = self.blocks.last().map_or(c, |b| b.c_out);
        Ok((act, (k, h, w)))
    }

    /// The last conv block's activation of one view `[C, H, W]` as `[K, h, w]` (channels
    /// first, as the graph has it) and its shape.
    pub(crate) fn activation(&self, x: &[f32]) -> Result<(Vec<f32>, (usize, usize, usize))> {
        let (act, (k, h, w)) = self.activation_hwc(x, true)?;
        let mut chw = vec![0f32; act.len()];
        for (p, pixel) in act.chunks_exact(k).enumerate() {
            for (ch, v) in pixel.iter().enumerate() {
                chw[ch * h * w + p] = *v;
            }
        }
        Ok((chw, (k, h, w)))
    }
}

impl Block {
    /// conv -> (folded) batch-norm -> ReLU -> 2x2 max-pool on a channels-last `[h, w, c_in]`
    /// activation; returns `[h/2, w/2, c_out]` and its size. With `parallel`, bands of rows run
    /// on the threads at once (im2col, product and pool alike).
    fn run(
        &self,
        x: &[f32],
        h: usize,
        w: usize,
        parallel: bool,
    ) -> Result<(Vec<f32>, usize, usize)> {
        let (ph, pw) = (h / 2, w / 2);
        let bands = if parallel {
            rayon::current_num_threads().clamp(1, ph.max(1))
        } else {
            1
        };
        let per = ph.div_ceil(bands);
        let band = |b: usize| self.band(x, w, b * per, ((b + 1) * per).min(ph));
        let parts: Vec<Vec<f32>> = if bands == 1 {
            vec![band(0)?]
        } else {
            (0..bands)
                .into_par_iter()
                .map(band)
                .collect::<Result<_>>()?
        };
        Ok((parts.concat(), ph, pw))
    }

    /// Pooled rows `p0..p1` of [`Block::run`] (conv rows `2 p0..2 p1`), `x` being `[h, w, c_in]`.
    fn band(&self, x: &[f32], w: usize, p0: usize, p1: usize) -> Result<Vec<f32>> {
        let (c_in, c_out) = (self.c_in, self.c_out);
        let h = x.len() / (w * c_in).max(1);
        let (k, rows, pw) = (9 * c_in, 2 * (p1 - p0), w / 2);
        let mut col = vec![0f32; rows * w * k];
        for (p, row) in col.chunks_exact_mut(k).enumerate() {
            let (y, xx) = (2 * p0 + p / w, p % w);
            for ky in 0..3 {
                let Some(iy) = (y + ky).checked_sub(1).filter(|&iy| iy < h) else {
                    continue;
                };
                for kx in 0..3 {
                    let Some(ix) = (xx + kx).checked_sub(1).filter(|&ix| ix < w) else {
                        continue;
                    };
                    let src = (iy * w + ix) * c_in;
                    let dst = (ky * 3 + kx) * c_in;
                    row[dst..dst + c_in].copy_from_slice(&x[src..src + c_in]);
                }
            }
        }
        let mut z = vec![0f32; rows * w * c_out];
        matmul((rows * w, k, c_out), &col, &self.weight, &mut z)?;
        // ReLU and the bias commute with the max: pool first, then one add and clamp.
        let mut pooled = vec![0f32; (p1 - p0) * pw * c_out];
        for (q, dst) in pooled.chunks_exact_mut(c_out).enumerate() {
            let (py, px) = (q / pw, q % pw);
            let at = |dy: usize, dx: usize| {
                let p = (2 * py + dy) * w + 2 * px + dx;
                &z[p * c_out..(p + 1) * c_out]
            };
            let (a, b, c, d) = (at(0, 0), at(0, 1), at(1, 0), at(1, 1));
            for o in 0..c_out {
                dst[o] = (a[o].max(b[o]).max(c[o]).max(d[o]) + self.bias[o]).max(0.0);
            }
        }
        Ok(pooled)
    }
}

/// `dst [m, n] = lhs [m, k] x rhs [k, n]`, all row-major and contiguous.
fn matmul(
    (m, k, n): (usize, usize, usize),
    lhs: &[f32],
    rhs: &[f32],
    dst: &mut [f32],
) -> Result<()> {
    if lhs.len() != m * k || rhs.len() != k * n || dst.len() != m * n {
        bail!("matmul: operand sizes do not match [{m}, {k}] x [{k}, {n}]");
    }
    // SAFETY: the three slices were checked above to hold exactly m*k, k*n and m*n values, and
    // the strides given (row stride = columns, column stride = 1) stay inside them; `dst` is an
    // exclusive borrow, so nothing else reads or writes it during the call.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    Ok(())
}

impl Dense {
    fn run(&self, x: &[f32]) -> Vec<f32> {
        self.weight
            .chunks_exact(self.input)
            .zip(&self.bias)
            .map(|(row, b)| {
                let v = b + row.iter().zip(x).map(|(w, v)| w * v).sum::<f32>();
                if self.relu { v.max(0.0) } else { v }
            })
            .collect()
    }
}

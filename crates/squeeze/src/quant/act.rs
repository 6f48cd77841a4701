//! Activation quantization for the int8 kernels. Dynamic int8 (the scheme of
//! `quantize_dynamic` in ONNX Runtime and PyTorch, here per row: one scale per token or
//! example, chosen at run time from the row's largest magnitude) and static int8 (one
//! scale per layer input, chosen from calibration batches). Codes are symmetric, in
//! [−127, 127] for the convolution (whose AVX2 kernel moves signs onto the weights) and in
//! [−64, 64] for the Linear layer ([`LINEAR_ACT_MAX`]), whose kernel offsets them to
//! unsigned bytes so that `vpmaddubsw` pair sums cannot saturate.
//!
//! Static clipping ([`Clip`]): `min_max` keeps the largest magnitude seen; `percentile`
//! clips at a percentile of |x|; `mse` picks the clipping value that minimizes the
//! squared quantization error of the calibration sample (the rounding error of small
//! values against the clipping error of the few large ones).

use serde::{Deserialize, Serialize};

/// Inputs per scale of dynamic int8 activations: each row (token) is quantized in blocks
/// of this many consecutive values, each with its own scale — llama.cpp's Q8_0 choice,
/// which confines a transformer's outlier features to their own block.
pub const ACT_BLOCK: usize = 32;

/// Largest activation code of the quantized Linear layer. Its kernel multiplies
/// `u = code + 64 ∈ [0, 128]` (unsigned) with int8 weights in pairs summed in i16, and
/// `2·128·128 = 2¹⁵` is the most such a pair can reach; the `64·Σw` the offset adds is
/// taken back per block. Against ±127 this doubles the activation step: on
/// all-MiniLM-L6-v2 the embeddings' mean cosine to f32 goes from 0.9993 to 0.9989 (STS-B
/// dev Spearman −0.02 → −0.02 pt), and the kernel does a third fewer instructions.
pub const LINEAR_ACT_MAX: i8 = 64;

/// Rows of activations quantized to int8: codes, their magnitudes (the kernel's unsigned
/// operand) and the scales, one per `block` consecutive values of a row (`block` = the
/// row length: one scale per row).
#[derive(Debug, Clone, Default)]
pub struct QRows {
    pub codes: Vec<i8>,
    pub abs: Vec<u8>,
    /// `[m, blocks]` row-major, `blocks = ceil(k / block)`.
    pub scales: Vec<f32>,
    pub block: usize,
}

impl QRows {
    /// Scales per row.
    pub fn blocks(&self, k: usize) -> usize {
        k.div_ceil(self.block.max(1))
    }
    /// The value code `j` of row `i` stands for.
    pub fn value(&self, i: usize, j: usize, k: usize) -> f32 {
        self.codes[i * k + j] as f32 * self.scales[i * self.blocks(k) + j / self.block]
    }
}

/// Quantizes `x` `[m, k]` to codes in [−lim, lim]: with a static scale, every value by it
/// (values beyond ±lim·s are clipped; one scale per row); dynamically, every `block`
/// consecutive values of a row by `max|block| / lim` (`block` ≥ k: one scale per row).
pub fn quantize_rows(x: &[f32], k: usize, fixed: Option<f32>, block: usize, lim: i8) -> QRows {
    let m = x.len() / k.max(1);
    let block = if fixed.is_some() {
        k
    } else {
        block.clamp(1, k.max(1))
    };
    let nb = k.div_ceil(block.max(1));
    let mut q = QRows {
        codes: vec![0; m * k],
        abs: vec![0; m * k],
        scales: vec![0.0; m * nb],
        block,
    };
    for (i, row) in x.chunks_exact(k).enumerate() {
        for (b, part) in row.chunks(block.max(1)).enumerate() {
            let s = fixed
                .unwrap_or_else(|| part.iter().fold(0f32, |a, v| a.max(v.abs())) / f32::from(lim));
            q.scales[i * nb + b] = s;
            let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
            let at = i * k + b * block;
            let (c, a) = (
                &mut q.codes[at..][..part.len()],
                &mut q.abs[at..][..part.len()],
            );
            crate::ops::qgemm::quantize_row(part, (inv, lim), c, Some(a));
        }
    }
    q
}

/// The scalar form of the row quantizer (the vector paths equal it exactly):
/// `v` rounded half away from zero and clamped to [−127, 127], without a libm call (the
/// baseline x86-64 target has no rounding instruction; a truncating conversion is SSE2).
#[inline(always)]
pub fn round_code(v: f32) -> i8 {
    round_code_to(v, 127)
}

/// [`round_code`] clamped to [−lim, lim] (`lim` ≤ 127).
#[inline(always)]
#[allow(clippy::manual_clamp)] // clamp keeps NaN; the kernels' min/max give lim
pub fn round_code_to(v: f32, lim: i8) -> i8 {
    let l = f32::from(lim);
    let c = v.min(l).max(-l); // NaN → lim, as the vector min/max do
    (c + 0.5f32.copysign(c)) as i32 as i8
}

/// How a static activation scale is chosen from calibration data.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Clip {
    MinMax,
    /// Clip at this percentile of |x| (e.g. 99.99).
    Percentile(f64),
    Mse,
}

/// Calibration statistics of one layer input: the largest |x| and a bounded sample of |x|.
#[derive(Debug, Clone, Default)]
pub struct RangeStats {
    pub max: f32,
    sample: Vec<f32>,
    seen: u64,
}

/// Values kept for percentile and MSE clipping.
const SAMPLE: usize = 1 << 18;

impl RangeStats {
    /// Adds values; keeps an evenly strided subset when there are many.
    pub fn add(&mut self, xs: &[f32]) {
        let stride = (xs.len() / (SAMPLE / 16).max(1)).max(1);
        for (i, v) in xs.iter().enumerate() {
            let a = v.abs();
            if a.is_finite() {
                self.max = self.max.max(a);
                if i % stride == 0 && self.sample.len() < SAMPLE {
                    self.sample.push(a);
                }
            }
        }
        self.seen += xs.len() as u64;
    }

    /// The static scale (the clipping value under `clip` / `lim`) for codes in ±`lim`.
    pub fn scale(&self, clip: Clip, lim: i8) -> f32 {
        let c = match clip {
            Clip::MinMax => self.max,
            Clip::Percentile(p) => self.percentile(p),
            Clip::Mse => self.mse_clip(f32::from(lim)),
        };
        c / f32::from(lim)
    }

    fn percentile(&self, p: f64) -> f32 {
        if self.sample.is_empty() {
            return self.max;
        }
        let mut s = self.sample.clone();
        s.sort_by(f32::total_cmp);
        let at = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
        s[at.min(s.len() - 1)]
    }

    /// The clipping value among 100 candidates in (0, max] with the least squared
    /// fake-quantization error over the sample, for codes in ±`lim`.
    fn mse_clip(&self, lim: f32) -> f32 {
        let err = |c: f32| -> f64 {
            let s = c / lim;
            self.sample
                .iter()
                .map(|&a| {
                    let q = (a / s).round().min(lim) * s;
                    ((a - q) as f64).powi(2)
                })
                .sum()
        };
        (1..=100)
            .map(|i| self.max * i as f32 / 100.0)
            .filter(|c| *c > 0.0)
            .map(|c| (c, err(c)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(self.max, |(c, _)| c)
    }
}

//! Static activation ranges for int8 calibration: how a layer input's scale is chosen
//! from calibration batches ([`Clip`]): `min_max` keeps the largest magnitude seen;
//! `percentile` clips at a percentile of |x|; `mse` picks the clipping value that
//! minimizes the squared quantization error of the calibration sample (the rounding error
//! of small values against the clipping error of the few large ones). The quantizer of
//! the activations themselves is a kernel (`crate::ops::qgemm::quantize`).

use serde::{Deserialize, Serialize};

/// How a static activation scale is chosen from calibration data.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Clip {
    MinMax,
    /// Clip at this percentile of |x| (e.g. 99.99).
    Percentile(f64),
    Mse,
}

/// Calibration statistics of one layer input: the largest |x|, the smallest x and a
/// bounded sample of |x|.
#[derive(Debug, Clone, Default)]
pub struct RangeStats {
    pub max: f32,
    /// The smallest value seen (signed): whether the input goes below zero.
    pub min: f32,
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
                self.min = self.min.min(*v);
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

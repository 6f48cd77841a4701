//! Low-rank factorization (Cheng et al.'s second family): a layer's weight, read as a
//! matrix, is replaced by its best rank-r approximation from a truncated SVD
//! (`crate::math::svd`), stored as two smaller layers of the ordinary kinds. Why two nodes
//! and not a `low_rank` kind: each half is a plain Linear or Conv2d, so the existing fast
//! kernels, sibling packing, coupling, quantization and every report apply to it
//! unchanged, and a later pass may prune or quantize the rank channels like any others.
//!
//! - Linear `[out, in]` → Linear `in → r` (no bias), then Linear `r → out` (the original's
//!   name and bias, so its readers do not change).
//! - Conv2d, [`Form::Unfold`]: the `[out, in·kh·kw]` unfolding → a kh×kw convolution with r
//!   filters, then a 1×1 convolution.
//! - Conv2d, [`Form::Spatial`] (Jaderberg et al. 2014, scheme 2, as AIMET's spatial SVD):
//!   the `[in·kh, out·kw]` matrix → a kh×1 convolution with r filters (the vertical stride
//!   and padding), then a 1×kw one (the horizontal ones).
//!
//! Activation-aware variants factor `W·S` and fold `S⁻¹` into the first factor
//! ([`ColumnScale`]): ASVD (Yuan et al. 2023) scales input channel j by its calibration
//! RMS^α; SVD-LLM (Wang et al. 2024) whitens by the Cholesky factor `L` of the inputs'
//! second moment, so that the discarded singular values equal the output error
//! ‖(W − W′)X‖ on the calibration inputs. The two factors share √σ each.

mod rewrite;

pub use rewrite::{apply, shape_of, Factorized, LayerShape};

use crate::error::{Error, Result};
use crate::math::linalg::cholesky;
use crate::math::svd::{svd, Svd};

/// How a convolution is read as a matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `[out, in·kh·kw]`: a kh×kw convolution with r filters, then a 1×1 one.
    Unfold,
    /// `[in·kh, out·kw]`: a kh×1 convolution with r filters, then a 1×kw one.
    Spatial,
}

/// How the rank of a layer is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RankRule {
    /// This rank.
    Rank(usize),
    /// The smallest rank keeping this fraction of the (scaled) weight's energy.
    Energy(f64),
    /// The largest rank whose two factors hold at most this fraction of the original
    /// weight's parameters.
    Params(f64),
}

/// The input-side scaling `S` of an activation-aware factorization (identity for plain
/// SVD): the SVD is of `W·S`, the first factor then multiplied by `S⁻¹`.
#[derive(Debug, Clone)]
pub enum ColumnScale {
    Identity,
    /// A positive scale per input column.
    Diagonal(Vec<f64>),
    /// The lower Cholesky factor `L` (row-major `n × n`) of the inputs' second moment.
    Whitening(Vec<f64>),
}

impl ColumnScale {
    /// ASVD's scale: each column's RMS `√(Σx²/rows)` raised to `alpha` (floored so that a
    /// dead input does not make `S` singular).
    pub fn asvd(sq: &[f64], rows: usize, alpha: f64) -> Self {
        let rms: Vec<f64> = sq.iter().map(|s| (s / rows.max(1) as f64).sqrt()).collect();
        let mean = rms.iter().sum::<f64>() / rms.len().max(1) as f64;
        let floor = (mean * 1e-3).max(1e-12);
        ColumnScale::Diagonal(rms.iter().map(|r| r.max(floor).powf(alpha)).collect())
    }

    /// SVD-LLM's whitening: `L` with `L Lᵀ = H + damp·mean(diag H)·I`, `H` the inputs'
    /// second moment (`n × n`).
    pub fn whitening(h: &[f64], n: usize, damp: f64) -> Result<Self> {
        let mean = (0..n).map(|i| h[i * n + i]).sum::<f64>() / n.max(1) as f64;
        let add = damp * mean.max(1e-12);
        let mut a = h.to_vec();
        for i in 0..n {
            a[i * n + i] += add;
        }
        Ok(ColumnScale::Whitening(cholesky(&a, n)?))
    }

    /// `W·S` for `w` `rows × cols`.
    fn apply(&self, w: &[f64], cols: usize) -> Vec<f64> {
        match self {
            ColumnScale::Identity => w.to_vec(),
            ColumnScale::Diagonal(s) => w
                .chunks_exact(cols)
                .flat_map(|r| r.iter().zip(s).map(|(x, s)| x * s))
                .collect(),
            ColumnScale::Whitening(l) => {
                let mut out = vec![0.0; w.len()];
                for (o, r) in out.chunks_exact_mut(cols).zip(w.chunks_exact(cols)) {
                    // (W L)[j] = Σ_{k ≥ j} W[k] L[k][j]
                    for (k, wk) in r.iter().enumerate() {
                        for (j, x) in o[..=k].iter_mut().enumerate() {
                            *x += wk * l[k * cols + j];
                        }
                    }
                }
                out
            }
        }
    }

    /// `y = x·S⁻¹` for a row vector `x` of `cols` entries.
    fn undo(&self, x: &[f64]) -> Vec<f64> {
        match self {
            ColumnScale::Identity => x.to_vec(),
            ColumnScale::Diagonal(s) => x.iter().zip(s).map(|(x, s)| x / s).collect(),
            ColumnScale::Whitening(l) => {
                // y L = x ⇔ Lᵀ yᵀ = xᵀ: back substitution, L lower so Lᵀ upper
                let n = x.len();
                let mut y = vec![0.0; n];
                for j in (0..n).rev() {
                    let s: f64 = (j + 1..n).map(|k| l[k * n + j] * y[k]).sum();
                    y[j] = (x[j] - s) / l[j * n + j];
                }
                y
            }
        }
    }
}

/// The SVD of a layer's scaled weight matrix, ready to be truncated at any rank.
#[derive(Debug, Clone)]
pub struct Decomposition {
    pub svd: Svd,
    pub scale: ColumnScale,
}

/// Decomposes `w` (`rows × cols`, row-major) scaled by `scale`.
pub fn decompose(w: &[f64], rows: usize, cols: usize, scale: ColumnScale) -> Result<Decomposition> {
    let svd = svd(&scale.apply(w, cols), rows, cols)?;
    Ok(Decomposition { svd, scale })
}

impl Decomposition {
    /// The two factors at rank `r`: `first` `r × cols` (√σ·vᵢᵀ·S⁻¹ per row) and `second`
    /// `rows × r` (√σ·uᵢ per column), row-major; `second · first ≈ W`.
    pub fn factors(&self, r: usize) -> (Vec<f64>, Vec<f64>) {
        let d = &self.svd;
        let mut first = Vec::with_capacity(r * d.cols);
        let mut second = vec![0.0; d.rows * r];
        for i in 0..r {
            let root = d.s[i].sqrt();
            let row: Vec<f64> = d.v[i].iter().map(|v| v * root).collect();
            first.extend(self.scale.undo(&row));
            for (o, u) in d.u[i].iter().enumerate() {
                second[o * r + i] = u * root;
            }
        }
        (first, second)
    }

    /// The fraction of the scaled weight's energy a rank-`r` truncation keeps.
    pub fn energy_kept(&self, r: usize) -> f64 {
        let e = self.svd.energy();
        if e > 0.0 {
            1.0 - self.svd.discarded(r) / e
        } else {
            1.0
        }
    }
}

/// The rank `rule` gives a layer of shape `shape` whose decomposition is `d` (the
/// decomposition is only read by [`RankRule::Energy`]); an error names `layer` when the
/// rank is 0 or above the matrix's smaller side.
pub fn choose_rank(
    rule: RankRule,
    shape: &LayerShape,
    d: Option<&Decomposition>,
    layer: &str,
) -> Result<usize> {
    let max = shape.max_rank();
    let r = match rule {
        RankRule::Rank(r) => r,
        RankRule::Energy(e) => d
            .ok_or_else(|| Error::Data("an energy rule needs the decomposition".into()))?
            .svd
            .rank_for_energy(e),
        RankRule::Params(p) => {
            ((p * shape.full_params() as f64) / shape.params_per_rank() as f64).floor() as usize
        }
    };
    if r == 0 {
        return Err(Error::Data(format!(
            "`{layer}`: rank 0 (a ratio this small leaves no rank; the smallest rank 1 holds {} parameters)",
            shape.params_per_rank()
        )));
    }
    if r > max {
        return Err(Error::Data(format!(
            "`{layer}`: rank {r} is above min(rows, cols) = {max} of its {} × {} matrix",
            shape.rows, shape.cols
        )));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitening_undo_inverts_apply() {
        let h = [4.0, 1.0, 0.5, 1.0, 3.0, 0.2, 0.5, 0.2, 2.0];
        let s = ColumnScale::whitening(&h, 3, 0.0).unwrap();
        let w = [1.0, -2.0, 0.5, 0.3, 0.7, -1.1];
        let ws = s.apply(&w, 3);
        for (row, want) in ws.chunks(3).zip(w.chunks(3)) {
            let back = s.undo(row);
            for (a, b) in back.iter().zip(want) {
                assert!((a - b).abs() < 1e-12);
            }
        }
    }
}

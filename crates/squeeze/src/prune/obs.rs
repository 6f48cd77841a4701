//! Pruning Linear layers from calibration activations, one layer at a time. For a layer
//! `y = W x` and its captured inputs `X` (rows = tokens or images):
//!
//! - **Wanda** (Sun et al. 2023): score `|W_ij|·‖X_j‖₂`, compared within each output row;
//!   no weight update.
//! - **SparseGPT** (Frantar & Alistarh 2023): the layer-wise OBS problem with Hessian
//!   `H = XᵀX + λI`. Columns are visited in blocks; within a block the mask is chosen by
//!   the OBS error `w²/[H⁻¹]_cc²` (or per `m` columns for N:M), each pruned weight's error
//!   is spread over the not-yet-visited columns of its row through the rows of the upper
//!   Cholesky factor of `H⁻¹`, and the block's accumulated errors update the rest lazily.
//!
//! Both work on a [`Weight`] (row-major `[out, in]`) and the statistics of its inputs.

use super::select::{self, drop_lowest, Group};
use super::{Pattern, Weight};
use crate::error::{Error, Result};
use crate::math::hessian::lazy_update;
pub use crate::math::hessian::InputStats;
use crate::math::linalg::inverse_upper_cholesky;

/// Wanda: new mask of `w` from `|W_ij|·‖X_j‖₂`, compared per output row.
pub fn wanda(w: &mut Weight, stats: &InputStats, pattern: Pattern) -> Result<()> {
    let (_, cols) = w.rows();
    check_cols(w, stats)?;
    let norms: Vec<f32> = stats.sq.iter().map(|s| s.sqrt() as f32).collect();
    let scores: Vec<f32> = w
        .values
        .iter()
        .enumerate()
        .map(|(i, v)| v.abs() * norms[i % cols])
        .collect();
    let m = select::masks(std::slice::from_ref(w), &[scores], pattern, Group::Row)?;
    w.mask = m.into_iter().next().unwrap_or_default();
    Ok(())
}

fn check_cols(w: &Weight, stats: &InputStats) -> Result<()> {
    let (_, cols) = w.rows();
    if cols != stats.cols || w.shape.len() != 2 {
        return Err(Error::Data(format!(
            "`{}`: weight {:?} does not take inputs of {} features",
            w.name, w.shape, stats.cols
        )));
    }
    Ok(())
}

/// SparseGPT options.
#[derive(Debug, Clone, Copy)]
pub struct SparseGptOpts {
    /// Columns per block (lazy batch updates).
    pub block: usize,
    /// Dampening λ as a fraction of the mean of diag(H).
    pub damp: f64,
}

/// SparseGPT: prunes `w` to `pattern` and updates its remaining weights to compensate.
pub fn sparsegpt(
    w: &mut Weight,
    stats: &InputStats,
    pattern: Pattern,
    o: SparseGptOpts,
) -> Result<()> {
    check_cols(w, stats)?;
    let (rows, cols) = w.rows();
    if let Pattern::NofM { m, .. } = pattern {
        if !cols.is_multiple_of(m) || !o.block.is_multiple_of(m) {
            return Err(Error::Data(format!(
                "`{}`: {cols} columns (block {}) do not split into groups of m = {m}",
                w.name, o.block
            )));
        }
    }
    let mut h = stats.hessian()?;
    let mut wv: Vec<f64> = w.values.iter().map(|v| *v as f64).collect();
    for c in 0..cols {
        if h[c * cols + c] == 0.0 {
            h[c * cols + c] = 1.0; // a dead input: its weights cannot matter
            for r in 0..rows {
                wv[r * cols + c] = 0.0;
            }
        }
    }
    let mean_diag = (0..cols).map(|c| h[c * cols + c]).sum::<f64>() / cols as f64;
    for c in 0..cols {
        h[c * cols + c] += o.damp * mean_diag;
    }
    let u = inverse_upper_cholesky(&h, cols)?;
    let mut mask = w.mask.clone();
    let block = o.block.max(1);
    for i1 in (0..cols).step_by(block) {
        let i2 = (i1 + block).min(cols);
        let count = i2 - i1;
        if let Pattern::Fraction(s) = pattern {
            block_mask(&wv, &u, &mut mask, (rows, cols), (i1, i2), s);
        }
        let mut err = vec![0.0; rows * count];
        for i in 0..count {
            let c = i1 + i;
            if let Pattern::NofM { n, m } = pattern {
                if i % m == 0 {
                    group_mask(&wv, &u, &mut mask, (rows, cols), c, (n, m));
                }
            }
            let d = u[c * cols + c];
            let uc = &u[c * cols + c + 1..c * cols + i2];
            for r in 0..rows {
                let at = r * cols + c;
                if mask[at] != 0 {
                    continue;
                }
                let e = wv[at] / d;
                wv[at] = 0.0;
                err[r * count + i] = e;
                for (x, uv) in wv[at + 1..r * cols + i2].iter_mut().zip(uc) {
                    *x -= e * uv;
                }
            }
        }
        lazy_update(&mut wv, &u, &err, (rows, cols), (i1, i2));
    }
    w.values = wv
        .iter()
        .zip(&mask)
        .map(|(v, &k)| if k == 0 { 0.0 } else { *v as f32 })
        .collect();
    w.mask = mask;
    Ok(())
}

/// OBS error of pruning entry (r, c): w² / [U]_cc².
fn obs_err(wv: &[f64], u: &[f64], cols: usize, r: usize, c: usize) -> f32 {
    let d = u[c * cols + c];
    (wv[r * cols + c] * wv[r * cols + c] / (d * d)) as f32
}

/// Unstructured mask of block columns `i1..i2`: the fraction `s` of lowest OBS errors over
/// the whole block (entries pruned before stay pruned).
fn block_mask(
    wv: &[f64],
    u: &[f64],
    mask: &mut [u8],
    (rows, cols): (usize, usize),
    (i1, i2): (usize, usize),
    s: f64,
) {
    let mut scores = Vec::with_capacity(rows * (i2 - i1));
    for r in 0..rows {
        for c in i1..i2 {
            let at = r * cols + c;
            scores.push(if mask[at] == 0 {
                f32::NEG_INFINITY
            } else {
                obs_err(wv, u, cols, r, c)
            });
        }
    }
    let k = (s * scores.len() as f64).round() as usize;
    let m = drop_lowest(&scores, k);
    let w = i2 - i1;
    for r in 0..rows {
        for c in i1..i2 {
            mask[r * cols + c] = m[r * w + c - i1];
        }
    }
}

/// N:M mask of columns `c..c+m` of every row: the `m − n` lowest OBS errors go.
fn group_mask(
    wv: &[f64],
    u: &[f64],
    mask: &mut [u8],
    (rows, cols): (usize, usize),
    c: usize,
    (n, m): (usize, usize),
) {
    for r in 0..rows {
        let scores: Vec<f32> = (c..c + m)
            .map(|j| {
                if mask[r * cols + j] == 0 {
                    f32::NEG_INFINITY
                } else {
                    obs_err(wv, u, cols, r, j)
                }
            })
            .collect();
        let kept = drop_lowest(&scores, m - n);
        for (j, k) in kept.into_iter().enumerate() {
            mask[r * cols + c + j] = k;
        }
    }
}

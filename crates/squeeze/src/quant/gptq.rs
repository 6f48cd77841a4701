//! GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative
//! Pre-trained Transformers"): quantizes a Linear weight column by column, each
//! column's rounding error spread over the columns not yet quantized through the rows of
//! the upper Cholesky factor of `H⁻¹`, `H = XᵀX/n + λI` from the layer's calibration
//! inputs — the OBS update of SparseGPT ([`crate::prune::obs`]) with "quantize" in place
//! of "prune". Columns are visited in blocks with lazy updates of the rest. Group scales
//! are chosen when the walk reaches a group's first column, from the already-updated
//! weights; per-channel and per-tensor scales from the original weight. With `act_order`
//! the columns are visited by decreasing `H_cc` (the inputs with the most energy first)
//! and group scales are fixed up front from the original weight (static groups), so the
//! stored layout stays in the original column order.

use super::{layout::Scales, QWeight};
use crate::error::{Error, Result};
use crate::math::hessian::{lazy_update, InputStats};
use crate::math::linalg::inverse_upper_cholesky;
use crate::math::qlayout::Layout;

/// GPTQ options.
#[derive(Debug, Clone, Copy)]
pub struct GptqOpts {
    /// Columns per block (lazy batch updates).
    pub block: usize,
    /// Dampening λ as a fraction of the mean of diag(H).
    pub damp: f64,
    /// Visit columns by decreasing diag(H).
    pub act_order: bool,
}

/// Quantizes the row-major `[rows, cols]` weight `w` with GPTQ.
pub fn gptq(
    w: &[f32],
    rows: usize,
    stats: &InputStats,
    layout: Layout,
    o: GptqOpts,
) -> Result<QWeight> {
    let cols = stats.cols;
    if w.len() != rows * cols {
        return Err(Error::Data(format!(
            "GPTQ: a weight of {} values is not [{rows}, {cols}]",
            w.len()
        )));
    }
    let mut h = stats.hessian()?;
    let mut wv: Vec<f64> = w.iter().map(|v| *v as f64).collect();
    for c in 0..cols {
        if h[c * cols + c] == 0.0 {
            h[c * cols + c] = 1.0; // a dead input: its weights cannot matter
            (0..rows).for_each(|r| wv[r * cols + c] = 0.0);
        }
    }
    let mut perm: Vec<usize> = (0..cols).collect();
    if o.act_order {
        perm.sort_by(|&a, &b| h[b * cols + b].total_cmp(&h[a * cols + a]));
    }
    // scales fixed before the walk: from the (dead-column-cleared) original weight
    let upfront = o.act_order || !matches!(layout.scales, Scales::Group(_));
    let start: Vec<f32> = wv.iter().map(|v| *v as f32).collect();
    let mut q = QWeight::quantize(&start, rows, cols, layout)?;
    let (wv, h) = (
        permute_cols(&wv, rows, cols, &perm),
        permute_sym(&h, cols, &perm),
    );
    let mut wv = wv;
    let mut h = h;
    let mean_diag = (0..cols).map(|c| h[c * cols + c]).sum::<f64>() / cols as f64;
    (0..cols).for_each(|c| h[c * cols + c] += o.damp * mean_diag);
    let u = inverse_upper_cholesky(&h, cols)?;
    let bl = layout.block_len(cols);
    let mut codes = vec![0u8; rows * cols]; // original column order
    let block = o.block.max(1);
    for i1 in (0..cols).step_by(block) {
        let i2 = (i1 + block).min(cols);
        let count = i2 - i1;
        let mut err = vec![0.0; rows * count];
        for i in 0..count {
            let c = i1 + i;
            let oc = perm[c];
            let d = u[c * cols + c];
            let uc = &u[c * cols + c + 1..c * cols + i2];
            for r in 0..rows {
                if !upfront && oc.is_multiple_of(bl) {
                    // the group's columns, not yet quantized (no act-order: perm is identity)
                    let vals: Vec<f32> = wv[r * cols + c..r * cols + c + bl]
                        .iter()
                        .map(|v| *v as f32)
                        .collect();
                    q.block_params_at(r, oc / bl, &vals);
                }
                let si = layout.scale_index(r, oc / bl, cols);
                let (s, z) = (q.scales[si], q.zero(si));
                let at = r * cols + c;
                let code = layout.encode(wv[at] as f32, s, z);
                codes[r * cols + oc] = code;
                let e = (wv[at] - layout.decode(code, s, z) as f64) / d;
                wv[at] = layout.decode(code, s, z) as f64;
                err[r * count + i] = e;
                for (x, uv) in wv[at + 1..r * cols + i2].iter_mut().zip(uc) {
                    *x -= e * uv;
                }
            }
        }
        lazy_update(&mut wv, &u, &err, (rows, cols), (i1, i2));
    }
    for r in 0..rows {
        q.set_row(r, &codes[r * cols..(r + 1) * cols]);
    }
    Ok(q)
}

/// Columns of a row-major matrix reordered: out[:, c] = w[:, perm[c]].
fn permute_cols(w: &[f64], rows: usize, cols: usize, perm: &[usize]) -> Vec<f64> {
    let mut out = vec![0.0; w.len()];
    for r in 0..rows {
        for (c, &p) in perm.iter().enumerate() {
            out[r * cols + c] = w[r * cols + p];
        }
    }
    out
}

/// A symmetric matrix with rows and columns reordered by `perm`.
fn permute_sym(h: &[f64], n: usize, perm: &[usize]) -> Vec<f64> {
    let mut out = vec![0.0; h.len()];
    for (i, &pi) in perm.iter().enumerate() {
        for (j, &pj) in perm.iter().enumerate() {
            out[i * n + j] = h[pi * n + pj];
        }
    }
    out
}

/// Mean squared output error `‖(W − Ŵ)Xᵀ‖² / (rows·n)` of a quantized weight over the
/// calibration inputs whose statistics are `stats`: `tr(ΔW H ΔWᵀ)/rows`.
pub fn output_error(w: &[f32], q: &QWeight, stats: &InputStats) -> Result<f64> {
    let h = stats.hessian()?;
    let (rows, cols) = (q.rows, q.cols);
    let dq = q.dequantize();
    let mut total = 0.0;
    let mut d = vec![0.0f64; cols];
    for r in 0..rows {
        for c in 0..cols {
            d[c] = (w[r * cols + c] - dq[r * cols + c]) as f64;
        }
        for i in 0..cols {
            let hi = &h[i * cols..(i + 1) * cols];
            total += d[i] * hi.iter().zip(&d).map(|(a, b)| a * b).sum::<f64>();
        }
    }
    Ok(total / rows as f64)
}

//! Integer and int4 kernels of the quantized linear layer, each with a plain reference.
//!
//! - [`gemm_i8`]: `acc[i, j] = Σ_k a[i, k]·w[j, k]` in exact i32 for int8 activations `a`
//!   `[m, k]` and int8 weights `w` `[n, k]` (the stored rows: no packing at load). The AVX2
//!   path multiplies 32 bytes at a time with `vpsignb` + `vpmaddubsw` + `vpmaddwd`: the
//!   weight takes the sign of the activation, the activation's magnitude (≤ 127) is the
//!   unsigned operand, so each pair sum is at most 2·127·127 < 2¹⁵ and nothing saturates —
//!   the result equals the reference exactly. Tiles of 2 weight rows × 4 tokens.
//! - [`gemm_q4`]: weight-only int4 with f32 activations: per block,
//!   `s·(Σ_k x_k·n_k − z·Σ_k x_k)`, nibbles widened to f32 in registers (AVX2: one mask, one
//!   shift, `vpmovzxbd`, `vcvtdq2ps` per 8 codes); float sums, so tested with a tolerance.
//!
//! Both return the transposed product `[n, m]` (row j = weight row j against every token)
//! and split the weight rows over threads when the product is large. CPUs with AVX-512
//! run the AVX2 paths (an AVX-512 VNNI kernel is not written yet).

#[cfg(target_arch = "x86_64")]
mod avx2;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::isa::{self, Isa};
use crate::quant::layout::code_at;
pub use crate::quant::QView;

/// Multiply-accumulates below which a kernel stays on the calling thread.
const PAR_MACS: usize = 1 << 18;
/// Weight rows per parallel task.
const ROWS_PER_TASK: usize = 16;

/// Reference: `acc` `[n, m]` with `acc[j, i] = Σ_k a[i, k]·w[j, k]`.
pub fn gemm_i8_reference(a: &[i8], w: &[u8], m: usize, n: usize, k: usize) -> Vec<i32> {
    let mut out = vec![0i32; n * m];
    for j in 0..n {
        for i in 0..m {
            out[j * m + i] = (0..k)
                .map(|c| a[i * k + c] as i32 * w[j * k + c] as i8 as i32)
                .sum();
        }
    }
    out
}

/// [`gemm_i8_reference`] on path `isa`; `abs` holds `|a|` (see [`crate::quant::act`]).
pub fn gemm_i8(
    isa: Isa,
    a: &[i8],
    abs: &[u8],
    w: &[u8],
    (m, n, k): (usize, usize, usize),
) -> Result<Vec<i32>> {
    let isa = isa::require(isa)?;
    if a.len() != m * k || abs.len() != m * k || w.len() != n * k {
        return Err(Error::Data(format!(
            "int8 product [{m}, {k}]·[{n}, {k}]ᵀ: operands of {}, {} and {} bytes",
            a.len(),
            abs.len(),
            w.len()
        )));
    }
    let mut out = vec![0i32; n * m];
    let task = |(t, o): (usize, &mut [i32])| {
        let j0 = t * ROWS_PER_TASK;
        let rows = o.len() / m.max(1);
        let wt = &w[j0 * k..(j0 + rows) * k];
        #[cfg(target_arch = "x86_64")]
        if isa != Isa::Scalar {
            // SAFETY: `isa` passed isa::require and every path above scalar implies AVX2;
            // the kernel asserts its slices' lengths before any load.
            return unsafe { avx2::i8_rows(a, abs, wt, m, k, rows, o) };
        }
        let _ = isa;
        o.copy_from_slice(&gemm_i8_reference(a, wt, m, rows, k));
    };
    split(&mut out, m, n, k, task);
    Ok(out)
}

/// Runs `task` over blocks of [`ROWS_PER_TASK`] weight rows of `out` `[n, m]`, in
/// parallel when the product is large.
fn split<T: Send>(
    out: &mut [T],
    m: usize,
    n: usize,
    k: usize,
    task: impl Fn((usize, &mut [T])) + Sync + Send,
) {
    let chunk = (ROWS_PER_TASK * m).max(1);
    if m * n * k >= PAR_MACS {
        out.par_chunks_mut(chunk).enumerate().for_each(task);
    } else {
        out.chunks_mut(chunk).enumerate().for_each(task);
    }
}

/// Per-block sums of each token's activations, `[m, blocks]` (for the zero-point term).
fn block_sums(x: &[f32], m: usize, k: usize, bl: usize) -> Vec<f32> {
    let nb = k / bl;
    let mut s = vec![0f32; m * nb];
    for i in 0..m {
        for b in 0..nb {
            s[i * nb + b] = x[i * k + b * bl..i * k + (b + 1) * bl].iter().sum();
        }
    }
    s
}

/// Reference weight-only int4 product: `[n, m]`, row j = Σ_blocks s·(Σ x·n − z·Σ x).
pub fn gemm_q4_reference(x: &[f32], w: &QView, m: usize) -> Vec<f32> {
    let (l, k) = (&w.layout, w.cols);
    let (rb, bl) = (l.row_bytes(k), l.block_len(k));
    let mut out = vec![0f32; w.rows * m];
    for j in 0..w.rows {
        let row = &w.codes[j * rb..(j + 1) * rb];
        for i in 0..m {
            let xi = &x[i * k..(i + 1) * k];
            let mut y = 0f32;
            for b in 0..k / bl {
                let si = l.scale_index(j, b, k);
                let (mut dot, mut sum) = (0f32, 0f32);
                for c in b * bl..(b + 1) * bl {
                    dot += xi[c] * code_at(l, row, c) as f32;
                    sum += xi[c];
                }
                y += w.scales[si] * (dot - w.zero(si) * sum);
            }
            out[j * m + i] = y;
        }
    }
    out
}

/// [`gemm_q4_reference`] on path `isa`.
pub fn gemm_q4(isa: Isa, x: &[f32], w: &QView, m: usize) -> Result<Vec<f32>> {
    let isa = isa::require(isa)?;
    w.check()?;
    let k = w.cols;
    if w.layout.bits != 4 || x.len() != m * k {
        return Err(Error::Data(format!(
            "int4 product: {} activations for [{m}, {k}] and a {} weight",
            x.len(),
            w.layout.label()
        )));
    }
    let bl = w.layout.block_len(k);
    let sums = block_sums(x, m, k, bl);
    let mut out = vec![0f32; w.rows * m];
    let rb = w.layout.row_bytes(k);
    let task = |(t, o): (usize, &mut [f32])| {
        let j0 = t * ROWS_PER_TASK;
        for (r, yr) in o.chunks_mut(m.max(1)).enumerate() {
            let j = j0 + r;
            let row = &w.codes[j * rb..(j + 1) * rb];
            let nb = k / bl;
            let (s, z): (Vec<f32>, Vec<f32>) = (0..nb)
                .map(|b| {
                    let si = w.layout.scale_index(j, b, k);
                    (w.scales[si], w.zero(si))
                })
                .unzip();
            #[cfg(target_arch = "x86_64")]
            if isa != Isa::Scalar {
                // SAFETY: as in gemm_i8; the kernel asserts its slices' lengths.
                unsafe { avx2::q4_row(x, row, &s, &z, &sums, m, k, bl, yr) };
                continue;
            }
            for (i, y) in yr.iter_mut().enumerate() {
                let xi = &x[i * k..(i + 1) * k];
                *y = (0..nb)
                    .map(|b| {
                        let dot: f32 = (b * bl..(b + 1) * bl)
                            .map(|c| xi[c] * code_at(&w.layout, row, c) as f32)
                            .sum();
                        s[b] * (dot - z[b] * sums[i * nb + b])
                    })
                    .sum();
            }
        }
    };
    let _ = isa;
    split(&mut out, m, w.rows, k, task);
    Ok(out)
}

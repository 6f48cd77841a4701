//! The small-batch Linear kernel and the vector helpers the encoder kernels share
//! ([`super::layer_norm`], [`super::gelu`], [`super::attention`]). Used by the interpreter
//! only when no tensor involved tracks gradients; candle's matmul is the reference, and
//! `ops/tests/isa_paths.rs` holds every path to it.
//!
//! At a dozen tokens, candle's general path spends its time in per-op dispatch and thread
//! wake-ups (about 50 tensor ops per encoder layer) and in a GEMM tuned for large
//! products. This linear layer streams each weight row once from memory, computing every
//! token's dot product with it while the row sits in L1 (AVX-512 when the CPU has it).
//! It serves callers without a pack cache (e.g. batch-1 CNN latency); text encoders keep
//! packed weights ([`super::packed`]), about 25% faster again.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;

use super::with_cpu;
use crate::error::{Error, Result};
use crate::isa::{self, Isa};

/// Token rows up to which [`linear`] beats the general GEMM (measured on the MiniLM shapes).
pub const SMALL_M: usize = 64;

/// MACs below which a kernel runs on the calling thread only.
pub(crate) const PAR_MACS: usize = 1 << 18;

/// How many weight blocks ahead the linear kernel prefetches.
const PREFETCH_BLOCKS: usize = 2;

pub(crate) fn f32_data(t: &Tensor) -> Result<Vec<f32>> {
    if t.dtype() != DType::F32 {
        return Err(Error::Graph("fast kernels take f32 tensors".into()));
    }
    with_cpu::<f32, _>(t, |s| s.to_vec())
}

/// `x Wᵀ + b` for x `[M, K]`, W `[N, K]` (as stored), b `[N]` → `[M, N]`, on the active path.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    linear_with(isa::active()?, x, w, b)
}

/// [`linear`] on path `isa` (refused if the CPU lacks it).
pub fn linear_with(isa: Isa, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let isa = isa::require(isa)?;
    let (m, k) = x.dims2()?;
    let n = w.dim(0)?;
    let xs = f32_data(x)?;
    let bias = b.map(f32_data).transpose()?;
    let yt = with_cpu::<f32, _>(w, |ws| linear_t(isa, &xs, ws, m, k, n))?; // [N, M]
    let mut y = vec![0f32; m * n];
    for (j, col) in yt.chunks_exact(m.max(1)).enumerate() {
        let bj = bias.as_ref().map_or(0.0, |b| b[j]);
        for (i, v) in col.iter().enumerate() {
            y[i * n + j] = v + bj;
        }
    }
    Ok(Tensor::from_vec(y, (m, n), &Device::Cpu)?)
}

/// Transposed product yᵀ [N, M]: row j holds W[j]·x[i] for every token i.
fn linear_t(isa: Isa, x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    const NB: usize = 4;
    let mut yt = vec![0f32; n * m];
    let block = |(jb, out): (usize, &mut [f32])| {
        let j0 = jb * NB;
        let rows = out.len() / m.max(1);
        // the next block's weights, for the AVX-512 kernel to prefetch meanwhile
        let ahead = j0 + rows + NB * (PREFETCH_BLOCKS - 1);
        let next = &w[(ahead * k).min(w.len())..((ahead + NB) * k).min(w.len())];
        dot_block(isa, x, &w[j0 * k..(j0 + rows) * k], next, m, k, rows, out);
    };
    if m * n * k >= PAR_MACS {
        yt.par_chunks_mut(NB * m).enumerate().for_each(block);
    } else {
        yt.chunks_mut(NB * m).enumerate().for_each(block);
    }
    yt
}

/// out[r·m + i] = w[r]·x[i] for `rows` ≤ 4 weight rows and all m tokens (`next`: the
/// weights needed after these, a prefetch hint).
#[allow(clippy::too_many_arguments)]
fn dot_block(
    isa: Isa,
    x: &[f32],
    w: &[f32],
    next: &[f32],
    m: usize,
    k: usize,
    rows: usize,
    out: &mut [f32],
) {
    // SAFETY (both arms): `isa` passed isa::require, so the CPU has the features; the
    // kernels assert that every load stays within x and w, and prefetches (which never
    // fault) stay within next.
    #[cfg(target_arch = "x86_64")]
    match isa {
        Isa::Avx512 | Isa::Avx512Vnni | Isa::Amx => {
            return unsafe { avx512::dot_block(x, w, next, m, k, rows, out) }
        }
        Isa::Avx2 | Isa::AvxVnni => return unsafe { avx2::dot_block(x, w, next, m, k, rows, out) },
        Isa::Scalar => {}
    }
    let _ = (isa, next);
    dot_tokens(x, w, m, k, rows, 0..m, out);
}

/// out[r·m + i] = w[r]·x[i] for `rows` weight rows and tokens `tokens`, one portable dot
/// product each: the scalar path, and the vector paths' leftover tiles.
#[inline(always)]
fn dot_tokens(
    x: &[f32],
    w: &[f32],
    m: usize,
    k: usize,
    rows: usize,
    tokens: std::ops::Range<usize>,
    out: &mut [f32],
) {
    for r in 0..rows {
        let wr = &w[r * k..(r + 1) * k];
        for i in tokens.clone() {
            out[r * m + i] = dot(&x[i * k..(i + 1) * k], wr);
        }
    }
}

/// Portable dot product in 8 independent lanes (vectorizes without target features).
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The range [`exp`] clamps its argument to.
pub(crate) const EXP_MIN: f32 = -87.3;
pub(crate) const EXP_MAX: f32 = 88.3;
/// ln 2 in two parts (high bits exact in f32, then the rest) for the range reduction.
pub(crate) const EXP_LN2: (f32, f32) = (0.693_359_4, -2.121_944_4e-4);
/// [`exp`]'s polynomial in the reduced argument (Cephes' `expf`), highest power first:
/// e^r ≈ 1 + r + r²·P(r).
pub(crate) const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    5.0e-1, // Cephes: 5.0000001201e-1, which rounds to 0.5 in f32
];

/// e^x for x ≤ 88.3 by Cody–Waite range reduction and a degree-6 polynomial (Cephes'
/// `expf` coefficients): within 2 ulp of libm on [−87.3, 88.3], flushed towards 0 below
/// (e^−87.3 ≈ 1.2e−38). Branch-free, so loops over it vectorize on every path.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(EXP_MIN, EXP_MAX);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * EXP_LN2.0 - n * EXP_LN2.1;
    let poly = EXP_POLY.iter().fold(0.0, |acc, c| acc * r + c);
    let e = poly * r * r + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Sum in 8 independent lanes (vectorizes; a plain `sum` is a sequential chain).
#[inline(always)]
pub(crate) fn lane_sum(a: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let c = a.chunks_exact(8);
    let tail: f32 = c.remainder().iter().map(|v| f(*v)).sum();
    for x in c {
        for l in 0..8 {
            acc[l] += f(x[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// a + b element-wise into a new buffer, one pass, split over the team.
fn pair_sum(a: &[f32], b: &[f32]) -> Vec<f32> {
    let mut y = super::output_buffer(a.len());
    let out = super::team::Ptr(y.as_mut_ptr());
    // whole "rows" of 1 value: ranges split anywhere
    super::team::rows_of(a, 1, &|at, part| {
        // SAFETY: each part writes only the outputs of its own inputs
        let dst = unsafe { out.slice(at, part.len()) };
        for ((d, x), y) in dst.iter_mut().zip(part).zip(&b[at..]) {
            *d = x + y;
        }
    });
    // SAFETY: the parts cover every value
    unsafe { super::written(&mut y, a.len()) };
    y
}

/// Element-wise sum of tensors of one shape (f32), one pass over the output.
pub fn sum(ts: &[&Tensor]) -> Result<Tensor> {
    let first = ts
        .first()
        .ok_or_else(|| Error::Graph("sum of no tensors".into()))?;
    if let Some(t) = ts.iter().find(|t| t.dims() != first.dims()) {
        return Err(Error::Graph(format!(
            "sum: shapes {:?} and {:?} differ",
            first.dims(),
            t.dims()
        )));
    }
    let mut y = match ts {
        [a, b, ..] => with_cpu::<f32, _>(a, |a| with_cpu::<f32, _>(b, |b| pair_sum(a, b)))??,
        _ => f32_data(first)?,
    };
    for t in ts.iter().skip(2) {
        with_cpu::<f32, _>(t, |s| {
            // whole "rows" of 1 value: ranges split anywhere
            super::team::rows_mut(&mut y, 1, &|at, part| {
                for (a, b) in part.iter_mut().zip(&s[at..]) {
                    *a += b;
                }
            })
        })?;
    }
    Ok(Tensor::from_vec(y, first.shape(), &Device::Cpu)?)
}

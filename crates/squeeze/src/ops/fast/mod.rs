//! Inference kernels for small batches of tokens (batch-1 sentence embedding), used by the
//! interpreter only when no tensor involved tracks gradients; the differentiable
//! compositions in [`super::text`] and candle's matmul are their references, and
//! `ops/tests/gradcheck.rs` holds each kernel to them.
//!
//! At a dozen tokens, candle's general path spends its time in per-op dispatch and thread
//! wake-ups (about 50 tensor ops per encoder layer) and in a GEMM tuned for large
//! products. Here: one pass per row for LayerNorm and GELU (erf by a rational
//! approximation, so it vectorizes), one fused loop nest per (sample, head) for attention,
//! and a linear layer that streams each weight row once from memory, computing every
//! token's dot product with it while the row sits in L1 (AVX-512 when the CPU has it).
//! That linear kernel serves callers without a pack cache (e.g. batch-1 CNN latency);
//! text encoders keep packed weights ([`super::packed`]), about 25% faster again.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

use super::with_cpu;
use crate::error::{Error, Result};
use crate::isa::{self, Isa};

/// Token rows up to which [`linear`] beats the general GEMM (measured on the MiniLM shapes).
pub const SMALL_M: usize = 64;

/// MACs below which a kernel runs on the calling thread only.
const PAR_MACS: usize = 1 << 18;

/// How many weight blocks ahead the linear kernel prefetches.
const PREFETCH_BLOCKS: usize = 2;

fn f32_data(t: &Tensor) -> Result<Vec<f32>> {
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
        Isa::Avx512 => return unsafe { avx512::dot_block(x, w, next, m, k, rows, out) },
        Isa::Avx2 => return unsafe { avx2::dot_block(x, w, next, m, k, rows, out) },
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
fn dot(a: &[f32], b: &[f32]) -> f32 {
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

/// Defines `$name(isa, args…)`: the portable body `$body` compiled three times — for
/// AVX-512F, for AVX2 + FMA and for baseline x86-64 — and run on path `isa` (which the
/// caller checked with [`isa::require`]). The compiler vectorizes the same Rust loops with
/// each path's registers, so the scalar build is the reference of the other two.
macro_rules! isa_variants {
    ($name:ident, $body:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        #[allow(clippy::too_many_arguments)]
        fn $name(isa: Isa, $($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                // SAFETY: `isa` passed isa::require, so the CPU has these features.
                match isa {
                    Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    Isa::Scalar => {}
                }
            }
            let _ = isa;
            $body($($arg),*)
        }
    };
}

pub mod grad;

/// Sum in 8 independent lanes (vectorizes; a plain `sum` is a sequential chain).
#[inline(always)]
fn lane_sum(a: &[f32], f: impl Fn(f32) -> f32) -> f32 {
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

/// One LayerNorm row in place.
#[inline(always)]
fn norm_row(row: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let d = row.len() as f32;
    let mean = lane_sum(row, |v| v) / d;
    let var = lane_sum(row, |v| (v - mean) * (v - mean)) / d;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, g), bb) in row.iter_mut().zip(w).zip(b) {
        *v = (*v - mean) * inv * g + bb;
    }
}

/// LayerNorm of every row of `y` ([rows, d] flattened) in place.
#[inline(always)]
fn norm_rows(y: &mut [f32], d: usize, w: &[f32], b: &[f32], eps: f32) {
    for row in y.chunks_exact_mut(d) {
        norm_row(row, w, b, eps);
    }
}

isa_variants!(norm_rows_on, norm_rows, (y: &mut [f32], d: usize, w: &[f32], b: &[f32], eps: f32) -> ());

/// Layer normalization of every row of x [..., D] in one pass per row, on the active path.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    layer_norm_with(isa::active()?, x, w, b, eps)
}

/// [`layer_norm`] on path `isa`.
pub fn layer_norm_with(isa: Isa, x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let isa = isa::require(isa)?;
    let d = x.dim(candle_core::D::Minus1)?;
    if d == 0 || w.dims1()? != d || b.dims1()? != d {
        return Err(Error::Graph(format!(
            "layer_norm: rows of {d} need weight and bias of {d} (got {:?}, {:?})",
            w.dims(),
            b.dims()
        )));
    }
    let (w, b) = (f32_data(w)?, f32_data(b)?);
    let y = with_cpu::<f32, _>(x, |xs| layer_norm_rows(isa, xs, d, &w, &b, eps as f32))?;
    Ok(Tensor::from_vec(y, x.shape(), &Device::Cpu)?)
}

/// LayerNorm of the rows of `x` ([rows, d] flattened) into a new buffer.
fn layer_norm_rows(isa: Isa, x: &[f32], d: usize, w: &[f32], b: &[f32], eps: f32) -> Vec<f32> {
    let mut y = x.to_vec();
    let rows_per = (PAR_MACS / d).max(1);
    if y.len() >= PAR_MACS {
        y.par_chunks_mut(rows_per * d)
            .for_each(|c| norm_rows_on(isa, c, d, w, b, eps));
    } else {
        norm_rows_on(isa, &mut y, d, w, b, eps);
    }
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
    let mut y = f32_data(first)?;
    for t in &ts[1..] {
        with_cpu::<f32, _>(t, |s| {
            for (a, b) in y.iter_mut().zip(s) {
                *a += b;
            }
        })?;
    }
    Ok(Tensor::from_vec(y, first.shape(), &Device::Cpu)?)
}

/// erf by a rational approximation on [-4, 4] (erf(±4) = ±1 in f32); absolute error
/// below 1e-6, see the test against libm.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const A: [f32; 7] = [
        -2.726_142_3e-10,
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_600_1e-3,
        -1.609_603_3e-2,
    ];
    const B: [f32; 5] = [
        -1.456_607_2e-5,
        -2.133_740_6e-4,
        -1.682_827e-3,
        -7.373_329_2e-3,
        -1.426_474e-2,
    ];
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = A.iter().fold(0.0, |acc, a| acc * x2 + a);
    let q = B.iter().fold(0.0, |acc, b| acc * x2 + b);
    x * p / q
}

/// GELU of every element of a chunk in place.
#[inline(always)]
fn gelu_chunk(c: &mut [f32]) {
    let r = std::f32::consts::FRAC_1_SQRT_2;
    for v in c.iter_mut() {
        *v = 0.5 * *v * (1.0 + erf(*v * r));
    }
}

isa_variants!(gelu_on, gelu_chunk, (c: &mut [f32]) -> ());

/// GELU (erf form) of every element, on the active path.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    gelu_with(isa::active()?, x)
}

/// [`gelu`] on path `isa`.
pub fn gelu_with(isa: Isa, x: &Tensor) -> Result<Tensor> {
    let isa = isa::require(isa)?;
    Ok(Tensor::from_vec(
        gelu_all(isa, f32_data(x)?),
        x.shape(),
        &Device::Cpu,
    )?)
}

/// GELU of every element of `y` in place.
fn gelu_all(isa: Isa, mut y: Vec<f32>) -> Vec<f32> {
    if y.len() >= PAR_MACS {
        y.par_chunks_mut(1 << 14).for_each(|c| gelu_on(isa, c));
    } else {
        gelu_on(isa, &mut y);
    }
    y
}

/// The attention core on q, k, v [N, L, H·Dh] and mask [N, L] → [N, L, H·Dh], one fused
/// loop nest per (sample, head), reading the heads in place (no transposes).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    heads: usize,
    head_dim: usize,
) -> Result<Tensor> {
    attention_with(isa::active()?, q, k, v, mask, heads, head_dim)
}

/// Geometry of one attention call: L tokens, rows of width `w` = heads·head_dim.
#[derive(Clone, Copy)]
struct Geo {
    l: usize,
    w: usize,
    heads: usize,
    head_dim: usize,
}

/// The context vectors [L, head_dim] of sample·head `nh`, attending over the sample's
/// real (unmasked) keys only: a masked key's weight, exp(−10⁹·(1 − mask) + …), is 0 in f32
/// anyway, so skipping padding changes nothing but the work. A sample without any real
/// key attends over all of them, as the reference does.
#[inline(always)]
fn head_ctx(q: &[f32], k: &[f32], v: &[f32], m: &[f32], g: Geo, nh: usize) -> Vec<f32> {
    let (l, hd) = (g.l, g.head_dim);
    let scale = 1.0 / (hd as f32).sqrt();
    let (s, h) = (nh / g.heads, nh % g.heads);
    let off = |i: usize| (s * l + i) * g.w + h * hd;
    let mut keys: Vec<usize> = (0..l).filter(|&j| m[s * l + j] > 0.5).collect();
    if keys.is_empty() {
        keys = (0..l).collect();
    }
    let mut ctx = vec![0f32; l * hd];
    let mut p = vec![0f32; keys.len()];
    for i in 0..l {
        let qi = &q[off(i)..off(i) + hd];
        for (pj, &j) in p.iter_mut().zip(&keys) {
            let dot = dot(qi, &k[off(j)..off(j) + hd]);
            let bias = (1.0 - m[s * l + j]) * super::text::MASK_BIAS as f32;
            *pj = dot * scale + bias;
        }
        let max = p.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let mut z = 0.0;
        for pj in p.iter_mut() {
            *pj = (*pj - max).exp();
            z += *pj;
        }
        let ci = &mut ctx[i * hd..(i + 1) * hd];
        for (pj, &j) in p.iter().zip(&keys) {
            let a = pj / z;
            for (c, vv) in ci.iter_mut().zip(&v[off(j)..off(j) + hd]) {
                *c += a * vv;
            }
        }
    }
    ctx
}

isa_variants!(head_ctx_on, head_ctx, (q: &[f32], k: &[f32], v: &[f32], m: &[f32], g: Geo, nh: usize) -> Vec<f32>);

/// (N, L, H·Dh) of an attention core's q, k, v, checked against each other, the heads and
/// the mask [N, L].
fn attention_dims(
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    mask: &Tensor,
    heads: usize,
    head_dim: usize,
) -> Result<(usize, usize, usize)> {
    let (n, l, w) = q.dims3()?;
    if w != heads * head_dim
        || k.dims() != q.dims()
        || v.dims() != q.dims()
        || mask.dims() != [n, l]
    {
        return Err(Error::Graph(format!(
            "attention: q {:?}, k {:?}, v {:?} must be [N, L, {heads}·{head_dim}] and the mask [N, L] (got {:?})",
            q.dims(), k.dims(), v.dims(), mask.dims()
        )));
    }
    Ok((n, l, w))
}

/// [`attention`] on path `isa`.
pub fn attention_with(
    isa: Isa,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    heads: usize,
    head_dim: usize,
) -> Result<Tensor> {
    let isa = isa::require(isa)?;
    let (n, l, w) = attention_dims((q, k, v), mask, heads, head_dim)?;
    let (q, k, v, m) = (f32_data(q)?, f32_data(k)?, f32_data(v)?, f32_data(mask)?);
    let g = Geo {
        l,
        w,
        heads,
        head_dim,
    };
    let out = attention_rows(isa, (&q, &k, &v), &m, g, n);
    Ok(Tensor::from_vec(out, (n, l, w), &Device::Cpu)?)
}

/// The attention core over `n` samples of q, k, v ([N, L, w] flattened) → [N, L, w].
fn attention_rows(
    isa: Isa,
    (q, k, v): (&[f32], &[f32], &[f32]),
    m: &[f32],
    g: Geo,
    n: usize,
) -> Vec<f32> {
    let (l, w, heads, head_dim) = (g.l, g.w, g.heads, g.head_dim);
    let per_head = |nh: usize| head_ctx_on(isa, q, k, v, m, g, nh);
    let parts: Vec<Vec<f32>> = if n * heads * l * l * head_dim >= PAR_MACS {
        (0..n * heads).into_par_iter().map(per_head).collect()
    } else {
        (0..n * heads).map(per_head).collect()
    };
    let mut out = vec![0f32; n * l * w];
    for (nh, ctx) in parts.iter().enumerate() {
        let (s, h) = (nh / heads, nh % heads);
        for i in 0..l {
            out[(s * l + i) * w + h * head_dim..][..head_dim]
                .copy_from_slice(&ctx[i * head_dim..(i + 1) * head_dim]);
        }
    }
    out
}

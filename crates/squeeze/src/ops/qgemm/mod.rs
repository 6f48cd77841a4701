//! Integer and int4 kernels of the quantized linear layer, each with a plain reference.
//!
//! - [`gemm_i8`]: `acc[i, j] = Σ_k a[i, k]·w[j, k]` in exact i32 for int8 activations `a`
//!   `[m, k]` and int8 weights `w` `[n, k]` (the stored rows: no packing at load). The AVX2
//!   path multiplies 32 bytes at a time with `vpsignb` + `vpmaddubsw` + `vpmaddwd`: the
//!   weight takes the sign of the activation, the activation's magnitude (≤ 127) is the
//!   unsigned operand, so each pair sum is at most 2·127·127 < 2¹⁵ and nothing saturates —
//!   the result equals the reference exactly. Tiles of 2 weight rows × 4 tokens.
//! - [`gemm_i8_blocked`]: the same products for activations with one scale per 32 inputs
//!   (dynamic int8): each 32-byte step's exact i32 sums are converted and scaled in f32
//!   (`vcvtdq2ps` + FMA), so it matches its reference within float rounding.
//!   [`linear_i8`] runs either form for one layer or a q/k/v group, scales and bias fused.
//! - [`gemm_q4`]: weight-only int4 with f32 activations: per block,
//!   `s·(Σ_k x_k·n_k − z·Σ_k x_k)`, nibbles widened to f32 in registers (AVX2: one mask, one
//!   shift, `vpmovzxbd`, `vcvtdq2ps` per 8 codes); float sums, so tested with a tolerance.
//!
//! - [`panel::PackedI8`]: int8 weights packed once into 16-channel panels, multiplied
//!   with exact i32 accumulation into channels-last `[m, n]` results (the convolution's
//!   kernel; see that module).
//!
//! The raw products are `[n, m]` (row j = weight row j against every token); the layer
//! forms write `[m, n]`. All split the weight rows over threads when the product is large.
//! CPUs with AVX-512 run the AVX2 paths (an AVX-512 VNNI kernel is not written yet).

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_panel;
pub mod panel;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::isa::{self, Isa};
use crate::quant::layout::{code_at, Layout};
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

/// Reference of the block-scaled product: `[n, m]`, element (j, i) =
/// Σ_b sa[i, b]·(Σ_{k ∈ block b} a[i, k]·w[j, k]) — exact integer block sums, scaled and
/// summed in f32 in block order.
pub fn gemm_i8_blocked_reference(
    a: &crate::quant::act::QRows,
    w: &[u8],
    m: usize,
    n: usize,
    k: usize,
) -> Vec<f32> {
    let (bl, nb) = (a.block.max(1), a.blocks(k));
    let mut out = vec![0f32; n * m];
    for j in 0..n {
        for i in 0..m {
            out[j * m + i] = (0..nb)
                .map(|b| {
                    let d: i32 = (b * bl..((b + 1) * bl).min(k))
                        .map(|c| a.codes[i * k + c] as i32 * w[j * k + c] as i8 as i32)
                        .sum();
                    d as f32 * a.scales[i * nb + b]
                })
                .sum();
        }
    }
    out
}

/// [`gemm_i8_blocked_reference`] on path `isa` (the AVX2 kernel takes blocks of 32).
pub fn gemm_i8_blocked(
    isa: Isa,
    a: &crate::quant::act::QRows,
    w: &[u8],
    (m, n, k): (usize, usize, usize),
) -> Result<Vec<f32>> {
    let isa = isa::require(isa)?;
    check_i8(&a.codes, &a.abs, w, (m, n, k))?;
    let mut out = vec![0f32; n * m];
    let o = Ptr(out.as_mut_ptr());
    let finish = |_: usize, j0: usize, block: &[f32]| {
        // SAFETY: rows j0.. of `out` [n, m] belong to this task; `out` outlives it.
        unsafe { std::ptr::copy_nonoverlapping(block.as_ptr(), o.at(j0 * m), block.len()) };
    };
    blocked_split(isa, a, &[(w, n)], (m, k), &finish);
    Ok(out)
}

/// [`i8_rows_split`] for block-scaled activations: each block's f32 results `[rows, m]`
/// (already scaled by the activations' block scales) go to `finish`.
fn blocked_split(
    isa: Isa,
    a: &crate::quant::act::QRows,
    ws: &[(&[u8], usize)],
    (m, k): (usize, usize),
    finish: &(impl Fn(usize, usize, &[f32]) + Sync),
) {
    let signed = a.codes.iter().fold(0i8, |lo, &v| lo.min(v)) < 0;
    let task = |p: usize, j0: usize, rows: usize| {
        let wt = &ws[p].0[j0 * k..(j0 + rows) * k];
        #[cfg(target_arch = "x86_64")]
        if isa != Isa::Scalar && a.block == 32 {
            let mut block = vec![0f32; rows * m];
            // SAFETY: `isa` passed isa::require and every path above scalar implies AVX2
            // and FMA; the kernel asserts its slices' lengths before any load.
            unsafe {
                avx2::i8_rows_blocked(
                    &a.codes,
                    &a.abs,
                    &a.scales,
                    wt,
                    (m, k, rows),
                    signed,
                    &mut block,
                )
            };
            return finish(p, j0, &block);
        }
        let _ = (isa, signed);
        finish(p, j0, &gemm_i8_blocked_reference(a, wt, m, rows, k));
    };
    let ns: Vec<usize> = ws.iter().map(|w| w.1).collect();
    split((m, k), &ns, task);
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
    check_i8(a, abs, w, (m, n, k))?;
    let mut out = vec![0i32; n * m];
    let o = Ptr(out.as_mut_ptr());
    let finish = |_: usize, j0: usize, block: &[i32]| {
        // SAFETY: rows j0.. of `out` [n, m] belong to this task; `out` outlives it.
        unsafe { std::ptr::copy_nonoverlapping(block.as_ptr(), o.at(j0 * m), block.len()) };
    };
    i8_rows_split(isa, a, abs, &[(w, n)], (m, k), &finish);
    Ok(out)
}

/// One int8 layer's weight for [`linear_i8`]: codes `[n, k]`, one scale per row (or one
/// for all), optional bias.
#[derive(Debug, Clone, Copy)]
pub struct I8Part<'a> {
    pub w: &'a [u8],
    pub scales: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub n: usize,
}

/// Int8 layers reading the same quantized rows `a` (`[m, k]`; one layer, or an attention
/// block's q/k/v in one parallel call): for each part, `y[i, j] = acc[i, j]·sa[i]·sw[j] +
/// b[j]` as `[m, n]`.
pub fn linear_i8(
    isa: Isa,
    a: &crate::quant::act::QRows,
    parts: &[I8Part],
    (m, k): (usize, usize),
) -> Result<Vec<Vec<f32>>> {
    let isa = isa::require(isa)?;
    for p in parts {
        check_i8(&a.codes, &a.abs, p.w, (m, p.n, k))?;
        if !(p.scales.len() == p.n || p.scales.len() == 1)
            || p.bias.is_some_and(|b| b.len() != p.n)
            || a.scales.len() != m * a.blocks(k)
        {
            return Err(Error::Data(format!(
                "int8 layer [{m}, {k}]·[{}, {k}]ᵀ: {} weight scales, {} row scales",
                p.n,
                p.scales.len(),
                a.scales.len()
            )));
        }
    }
    let mut outs: Vec<Vec<f32>> = parts.iter().map(|p| vec![0f32; m * p.n]).collect();
    let ptrs: Vec<Ptr<f32>> = outs.iter_mut().map(|o| Ptr(o.as_mut_ptr())).collect();
    let per_row = a.block >= k;
    // block [rows, m] of part `part` from row j0 → out[i, j0..j0 + rows], one cache line
    // per token; `acc(r, i)` is the product already scaled by the activations
    // block [rows, m] of part `part` from row j0, already scaled by the activations →
    // out[i, j0..j0 + rows], one cache line per token
    let write = |part: usize, j0: usize, block: &[f32]| {
        let p = &parts[part];
        let rows = block.len() / m.max(1);
        let sw: Vec<f32> = (j0..j0 + rows)
            .map(|j| p.scales[if p.scales.len() == 1 { 0 } else { j }])
            .collect();
        let zero = vec![0f32; rows];
        let b = p.bias.map_or(&zero[..], |b| &b[j0..j0 + rows]);
        let mut line = vec![0f32; rows];
        for i in 0..m {
            for (r, v) in line.iter_mut().enumerate() {
                *v = block[r * m + i] * sw[r] + b[r];
            }
            // SAFETY: columns j0..j0 + rows of part `part` belong to this task; the
            // buffers outlive the call.
            unsafe {
                std::ptr::copy_nonoverlapping(line.as_ptr(), ptrs[part].at(i * p.n + j0), rows)
            };
        }
    };
    let ws: Vec<(&[u8], usize)> = parts.iter().map(|p| (p.w, p.n)).collect();
    if per_row {
        let finish = |part: usize, j0: usize, block: &[i32]| {
            let f: Vec<f32> = block
                .iter()
                .enumerate()
                .map(|(at, v)| *v as f32 * a.scales[at % m])
                .collect();
            write(part, j0, &f);
        };
        i8_rows_split(isa, &a.codes, &a.abs, &ws, (m, k), &finish);
    } else {
        blocked_split(isa, a, &ws, (m, k), &write);
    }
    Ok(outs)
}

/// Quantizes one row: codes = round(x·inv) half away from zero, clamped to ±127, and
/// their magnitudes when `abs` is given (the AVX2 path equals the scalar
/// [`crate::quant::act::round_code`]).
pub fn quantize_row(x: &[f32], inv: f32, codes: &mut [i8], mut abs: Option<&mut [u8]>) {
    #[cfg(target_arch = "x86_64")]
    if isa::active().is_ok_and(|i| i != Isa::Scalar) {
        // SAFETY: a path above scalar implies AVX2; the kernel asserts the lengths.
        return unsafe { avx2::quantize_row(x, inv, codes, abs) };
    }
    for (j, (c, v)) in codes.iter_mut().zip(x).enumerate() {
        *c = crate::quant::act::round_code(v * inv);
        if let Some(a) = abs.as_deref_mut() {
            a[j] = c.unsigned_abs();
        }
    }
}

fn check_i8(a: &[i8], abs: &[u8], w: &[u8], (m, n, k): (usize, usize, usize)) -> Result<()> {
    if a.len() != m * k || abs.len() != m * k || w.len() != n * k {
        return Err(Error::Data(format!(
            "int8 product [{m}, {k}]·[{n}, {k}]ᵀ: operands of {}, {} and {} bytes",
            a.len(),
            abs.len(),
            w.len()
        )));
    }
    Ok(())
}

/// A raw output pointer shared by the tasks of one kernel call, each writing its own
/// disjoint elements.
#[derive(Clone, Copy)]
struct Ptr<T>(*mut T);
// SAFETY: tasks write disjoint elements and the call joins them before the buffer is read.
unsafe impl<T> Send for Ptr<T> {}
unsafe impl<T> Sync for Ptr<T> {}
impl<T> Ptr<T> {
    /// # Safety
    /// `i` is within the buffer and no other task writes it.
    unsafe fn at(self, i: usize) -> *mut T {
        self.0.add(i)
    }
}

/// Every row j of every weight `ws[p]` (`[n_p, k]`) against every token i,
/// Σ_k a[i, k]·w[j, k], over blocks of weight rows (in parallel when the products are
/// large); each block's i32 results `[rows, m]` go to `finish(p, first_row, block)`.
fn i8_rows_split(
    isa: Isa,
    a: &[i8],
    abs: &[u8],
    ws: &[(&[u8], usize)],
    (m, k): (usize, usize),
    finish: &(impl Fn(usize, usize, &[i32]) + Sync),
) {
    // non-negative activations (after a ReLU) take the kernel without sign transfer
    let signed = a.iter().fold(0i8, |lo, &v| lo.min(v)) < 0;
    let task = |p: usize, j0: usize, rows: usize| {
        let wt = &ws[p].0[j0 * k..(j0 + rows) * k];
        #[cfg(target_arch = "x86_64")]
        if isa != Isa::Scalar {
            let mut block = vec![0i32; rows * m];
            // SAFETY: `isa` passed isa::require and every path above scalar implies AVX2;
            // the kernel asserts its slices' lengths before any load.
            unsafe { avx2::i8_rows(a, abs, wt, m, k, rows, signed, &mut block) };
            return finish(p, j0, &block);
        }
        let _ = (isa, abs, signed);
        finish(p, j0, &gemm_i8_reference(a, wt, m, rows, k));
    };
    let ns: Vec<usize> = ws.iter().map(|w| w.1).collect();
    split((m, k), &ns, task);
}

/// Runs `task(part, first_row, rows)` over blocks of [`ROWS_PER_TASK`] rows of each part
/// (`ns[p]` rows), all parts' blocks in one parallel call when the products are large.
fn split((m, k): (usize, usize), ns: &[usize], task: impl Fn(usize, usize, usize) + Sync + Send) {
    let blocks: Vec<(usize, usize)> = ns
        .iter()
        .enumerate()
        .flat_map(|(p, &n)| (0..n.div_ceil(ROWS_PER_TASK)).map(move |b| (p, b * ROWS_PER_TASK)))
        .collect();
    let one = |&(p, j0): &(usize, usize)| task(p, j0, ROWS_PER_TASK.min(ns[p] - j0));
    if m * ns.iter().sum::<usize>() * k >= PAR_MACS {
        blocks.par_iter().for_each(one);
    } else {
        blocks.iter().for_each(one);
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
                for (c, xv) in xi.iter().enumerate().take((b + 1) * bl).skip(b * bl) {
                    dot += xv * code_at(l, row, c) as f32;
                    sum += xv;
                }
                y += w.scales[si] * (dot - w.zero(si) * sum);
            }
            out[j * m + i] = y;
        }
    }
    out
}

/// [`gemm_q4_reference`] on path `isa`, as `[m, n]` with the bias added.
pub fn gemm_q4(isa: Isa, x: &[f32], w: &QView, bias: Option<&[f32]>, m: usize) -> Result<Vec<f32>> {
    let isa = isa::require(isa)?;
    w.check()?;
    let (n, k) = (w.rows, w.cols);
    if w.layout.bits != 4 || x.len() != m * k || bias.is_some_and(|b| b.len() != n) {
        return Err(Error::Data(format!(
            "int4 product: {} activations for [{m}, {k}] and a {} weight",
            x.len(),
            w.layout.label()
        )));
    }
    let bl = w.layout.block_len(k);
    let nb = k / bl;
    let sums = block_sums(x, m, k, bl);
    // every row's block scales and zero points, in row order
    let (s, z): (Vec<f32>, Vec<f32>) = (0..n * nb)
        .map(|idx| {
            let si = w.layout.scale_index(idx / nb, idx % nb, k);
            (w.scales[si], w.zero(si))
        })
        .unzip();
    let mut out = vec![0f32; m * n];
    let o = Ptr(out.as_mut_ptr());
    let rb = w.layout.row_bytes(k);
    let task = |_: usize, j0: usize, rows: usize| {
        let mut y = vec![0f32; m];
        for j in j0..j0 + rows {
            let row = &w.codes[j * rb..(j + 1) * rb];
            let (sj, zj) = (&s[j * nb..(j + 1) * nb], &z[j * nb..(j + 1) * nb]);
            q4_row(isa, x, row, (sj, zj), &sums, (m, k, bl), &mut y);
            let b = bias.map_or(0.0, |b| b[j]);
            for (i, v) in y.iter().enumerate() {
                // SAFETY: element (i, j) belongs to this task's rows; `out` outlives it.
                unsafe { *o.at(i * n + j) = v + b };
            }
        }
    };
    split((m, k), &[n], task);
    Ok(out)
}

/// One int4 weight row against every token: `y[i] = Σ_b s_b·(Σ x·n − z_b·Σ x)`.
fn q4_row(
    isa: Isa,
    x: &[f32],
    row: &[u8],
    (s, z): (&[f32], &[f32]),
    sums: &[f32],
    (m, k, bl): (usize, usize, usize),
    y: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: as in gemm_i8; the kernel asserts its slices' lengths.
        return unsafe { avx2::q4_row(x, row, s, z, sums, m, k, bl, y) };
    }
    let _ = isa;
    let nb = k / bl;
    let l = Layout {
        bits: 4,
        scales: crate::quant::layout::Scales::Group(bl),
        zero_point: false,
    };
    for (i, yi) in y.iter_mut().enumerate() {
        let xi = &x[i * k..(i + 1) * k];
        *yi = (0..nb)
            .map(|b| {
                let dot: f32 = (b * bl..(b + 1) * bl)
                    .map(|c| xi[c] * code_at(&l, row, c) as f32)
                    .sum();
                s[b] * (dot - z[b] * sums[i * nb + b])
            })
            .sum();
    }
}

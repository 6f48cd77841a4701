//! Layer normalization over the last axis (Ba et al. 2016), its three paths side by side:
//! the reference composed from candle operations that have a backward pass (any float
//! dtype; candle's fused `layer_norm` has none), the inference kernel (one pass per row,
//! vectorized on each instruction-set path), and the training op (one autograd node whose
//! backward is one pass per row: dx = σ⁻¹·(g − mean g − x̂·mean(g·x̂)), g = dy·γ).

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::fast::{lane_sum, PAR_MACS};
use super::team::Ptr;
use super::{cpu_tensor, grad_isa, op_f32s, slice_of, with_cpu};
use crate::error::{Error, Result};
use crate::isa::{self, Isa};

/// Rows per parallel task of the LayerNorm backward.
const LN_ROWS: usize = 32;

/// Layer normalization over the last axis: (x − mean) / √(var + eps) · w + b.
pub fn layer_norm_reference(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(xn.broadcast_mul(w)?.broadcast_add(b)?)
}

/// One LayerNorm row of `x` into `y`.
#[inline(always)]
fn norm_row(x: &[f32], y: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let d = x.len() as f32;
    let mean = lane_sum(x, |v| v) / d;
    let var = lane_sum(x, |v| (v - mean) * (v - mean)) / d;
    let inv = 1.0 / (var + eps).sqrt();
    for (((o, v), g), bb) in y.iter_mut().zip(x).zip(w).zip(b) {
        *o = (v - mean) * inv * g + bb;
    }
}

/// LayerNorm of every row of `x` ([rows, d] flattened) into `y`.
#[inline(always)]
fn norm_rows(x: &[f32], y: &mut [f32], d: usize, w: &[f32], b: &[f32], eps: f32) {
    for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
        norm_row(xr, yr, w, b, eps);
    }
}

isa_variants!(norm_rows_any, norm_rows, (x: &[f32], y: &mut [f32], d: usize, w: &[f32], b: &[f32], eps: f32) -> ());

/// [`norm_rows`] on path `isa`: the AVX-512 kernel below where the path has it, else the
/// portable loop compiled for the path.
fn norm_rows_on(isa: Isa, x: &[f32], y: &mut [f32], d: usize, w: &[f32], b: &[f32], eps: f32) {
    #[cfg(target_arch = "x86_64")]
    if isa.avx512() {
        // SAFETY: `isa` passed isa::require, so the CPU has AVX-512F
        return unsafe { avx512::norm_rows(x, y, d, (w, b), eps) };
    }
    norm_rows_any(isa, x, y, d, w, b, eps)
}

/// LayerNorm rows on 16-lane registers: the mean and the variance each summed in four
/// independent accumulators (a row's sums are short chains, not one add after another),
/// tails masked.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use crate::ops::fast::avx512::first_lanes as tail;

    /// Σ f(x) over `x` in 4 × 16 lanes.
    #[inline(always)]
    unsafe fn sum(x: &[f32], f: impl Fn(__m512) -> __m512) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 4];
        let (n, p) = (x.len(), x.as_ptr());
        let mut i = 0;
        while i + 64 <= n {
            for (a, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_add_ps(*acc, f(_mm512_loadu_ps(p.add(i + 16 * a))));
            }
            i += 64;
        }
        while i < n {
            let m = tail(n - i);
            acc[0] = _mm512_mask_add_ps(acc[0], m, acc[0], f(_mm512_maskz_loadu_ps(m, p.add(i))));
            i += 16;
        }
        let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        _mm512_reduce_add_ps(s)
    }

    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn norm_rows(
        x: &[f32],
        y: &mut [f32],
        d: usize,
        (w, b): (&[f32], &[f32]),
        eps: f32,
    ) {
        assert!(d > 0 && w.len() >= d && b.len() >= d && y.len() >= x.len() / d * d);
        for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
            let mean = sum(xr, |v| v) / d as f32;
            let m = _mm512_set1_ps(mean);
            let var = sum(xr, |v| {
                let c = _mm512_sub_ps(v, m);
                _mm512_mul_ps(c, c)
            }) / d as f32;
            let inv = _mm512_set1_ps(1.0 / (var + eps).sqrt());
            let mut i = 0;
            while i < d {
                let k = tail(d - i);
                let v = _mm512_maskz_loadu_ps(k, xr.as_ptr().add(i));
                let g = _mm512_maskz_loadu_ps(k, w.as_ptr().add(i));
                let bb = _mm512_maskz_loadu_ps(k, b.as_ptr().add(i));
                let o = _mm512_add_ps(
                    _mm512_mul_ps(_mm512_mul_ps(_mm512_sub_ps(v, m), inv), g),
                    bb,
                );
                _mm512_mask_storeu_ps(yr.as_mut_ptr().add(i), k, o);
                i += 16;
            }
        }
    }
}

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
    if w.dtype() != DType::F32 || b.dtype() != DType::F32 {
        return Err(Error::Graph(
            "layer_norm: the weight and bias must be f32".into(),
        ));
    }
    // γ and β read where they are stored (no copies per call)
    let y = with_cpu::<f32, _>(w, |w| {
        with_cpu::<f32, _>(b, |b| {
            with_cpu::<f32, _>(x, |xs| layer_norm_rows(isa, xs, d, w, b, eps as f32))
        })
    })???;
    Ok(Tensor::from_vec(y, x.shape(), &Device::Cpu)?)
}

/// LayerNorm of the rows of `x` ([rows, d] flattened) into a new buffer.
fn layer_norm_rows(isa: Isa, x: &[f32], d: usize, w: &[f32], b: &[f32], eps: f32) -> Vec<f32> {
    let mut y = super::output_buffer(x.len());
    let out = Ptr(y.as_mut_ptr());
    super::team::rows_of(x, d, &|r0, rows| {
        // SAFETY: each part writes only the output rows of its own input rows
        let dst = unsafe { out.slice(r0 * d, rows.len()) };
        norm_rows_on(isa, rows, dst, d, w, b, eps)
    });
    // SAFETY: the parts cover every row
    unsafe { super::written(&mut y, x.len()) };
    y
}

/// [`layer_norm_rows`] split over rayon (the training forward: the team's spinning
/// helpers would compete with rayon's workers there).
fn layer_norm_rows_rayon(
    isa: Isa,
    x: &[f32],
    d: usize,
    (w, b): (&[f32], &[f32]),
    eps: f32,
) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    let rows_per = (PAR_MACS / d).max(1);
    if y.len() >= PAR_MACS {
        y.par_chunks_mut(rows_per * d)
            .zip(x.par_chunks(rows_per * d))
            .for_each(|(c, xc)| norm_rows_on(isa, xc, c, d, w, b, eps));
    } else {
        norm_rows_on(isa, x, &mut y, d, w, b, eps);
    }
    y
}

struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "squeeze-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = *l1.dims().last().unwrap_or(&1);
        let (x, w, b) = (slice_of(s1, l1)?, slice_of(s2, l2)?, slice_of(s3, l3)?);
        let y = layer_norm_rows_rayon(grad_isa()?, x, d, (w, b), self.eps);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = w.dim(0)?;
        let (xs, ws, dys) = (op_f32s(x)?, op_f32s(w)?, op_f32s(dy)?);
        let (dx, dw, db) = layer_norm_backward(&xs, &ws, &dys, d, self.eps);
        Ok((
            Some(cpu_tensor(dx, x.shape())?),
            Some(cpu_tensor(dw, w.shape())?),
            Some(cpu_tensor(db, w.shape())?),
        ))
    }
}

/// One row's dx (into `dx`), accumulating dγ and dβ.
fn layer_norm_row_grad(
    (x, dy, dx): (&[f32], &[f32], &mut [f32]),
    w: &[f32],
    eps: f32,
    (dw, db): (&mut [f32], &mut [f32]),
) {
    let d = x.len() as f32;
    let mean = x.iter().sum::<f32>() / d;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d;
    let rstd = 1.0 / (var + eps).sqrt();
    let (mut mg, mut mgx) = (0f32, 0f32);
    for i in 0..x.len() {
        let xh = (x[i] - mean) * rstd;
        let g = dy[i] * w[i];
        mg += g;
        mgx += g * xh;
        dw[i] += dy[i] * xh;
        db[i] += dy[i];
    }
    let (mg, mgx) = (mg / d, mgx / d);
    for i in 0..x.len() {
        let xh = (x[i] - mean) * rstd;
        dx[i] = rstd * (dy[i] * w[i] - mg - xh * mgx);
    }
}

/// LayerNorm's backward over rows of width `d`: (dx, dγ, dβ).
pub fn layer_norm_backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    d: usize,
    eps: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut dx = vec![0f32; x.len()];
    let step = LN_ROWS * d;
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(step)
        .zip(x.par_chunks(step).zip(dy.par_chunks(step)))
        .map(|(dxc, (xc, dyc))| {
            let (mut dw, mut db) = (vec![0f32; d], vec![0f32; d]);
            for ((xr, dyr), dxr) in xc
                .chunks_exact(d)
                .zip(dyc.chunks_exact(d))
                .zip(dxc.chunks_exact_mut(d))
            {
                layer_norm_row_grad((xr, dyr, dxr), w, eps, (&mut dw, &mut db));
            }
            (dw, db)
        })
        .collect();
    let (mut dw, mut db) = (vec![0f32; d], vec![0f32; d]);
    for (pw, pb) in partials {
        dw.iter_mut().zip(&pw).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(&pb).for_each(|(a, b)| *a += b);
    }
    (dx, dw, db)
}

/// Layer normalization over the last axis as one differentiable node (f32).
pub fn layer_norm_train(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &b.contiguous()?,
        LayerNormOp { eps: eps as f32 },
    )?)
}

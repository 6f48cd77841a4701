//! Linear weights packed once into 32-column panels for small-batch inference (the panel
//! layout of GEMM micro-kernels, Goto & van de Geijn 2008): panel p holds, for every input
//! index k, the 32 weights `W[32p..32p+32][k]` contiguously, so a kernel multiplies a tile of
//! up to 12 tokens by a panel with broadcast-FMA into 24 vector accumulators — no
//! horizontal sums, every weight loaded once per tile, one sequential stream per panel.
//! [`super::pack_cache::PackCache`] keeps the packed copy of each weight (keyed by
//! parameter name and checked against the tensor's identity). The reference is
//! candle's matmul; `ops/tests/gradcheck.rs` compares them.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::with_cpu;
use crate::error::{Error, Result};
use crate::isa::{self, Isa};

/// Output columns per panel.
const COLS: usize = 32;
/// Tokens per micro-tile (24 accumulators + 2 weight vectors + 1 broadcast registers).
const TILE: usize = 12;

/// A weight [N, K] in panel layout, N padded to a multiple of 32 with zero columns.
#[derive(Debug)]
pub struct PackedLinear {
    pub n: usize,
    pub k: usize,
    panels: Vec<f32>,
}

impl PackedLinear {
    /// Packs a weight [N, K] (out, in) as stored by Linear nodes.
    pub fn pack(w: &Tensor) -> Result<Self> {
        let (n, k) = w.dims2()?;
        if w.dtype() != DType::F32 {
            return Err(Error::Graph("packed weights must be f32".into()));
        }
        let np = n.div_ceil(COLS);
        let mut panels = vec![0f32; np * k * COLS];
        with_cpu::<f32, _>(w, |ws| {
            for (j, row) in ws.chunks_exact(k).enumerate() {
                let (p, c) = (j / COLS, j % COLS);
                for (kk, v) in row.iter().enumerate() {
                    panels[(p * k + kk) * COLS + c] = *v;
                }
            }
        })?;
        Ok(PackedLinear { n, k, panels })
    }

    /// `x Wᵀ + b` for x [M, K] → [M, N], on the active path.
    pub fn matmul(&self, x: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        self.matmul_with(isa::active()?, x, b)
    }

    /// [`Self::matmul`] on path `isa` (refused if the CPU lacks it).
    pub fn matmul_with(&self, isa: Isa, x: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let isa = isa::require(isa)?;
        let (m, k) = x.dims2()?;
        if k != self.k {
            return Err(Error::Graph(format!(
                "packed linear expects {} inputs, got {k}",
                self.k
            )));
        }
        let xs = with_cpu::<f32, _>(x, |s| s.to_vec())?;
        let bias = match b {
            Some(b) => with_cpu::<f32, _>(b, |s| s.to_vec())?,
            None => vec![0.0; self.n],
        };
        let np = self.n.div_ceil(COLS);
        let panel = |p: usize| -> Vec<f32> {
            let w = &self.panels[p * k * COLS..(p + 1) * k * COLS];
            let mut out = vec![0f32; m * COLS];
            panel_product(isa, &xs, w, m, k, &mut out);
            out
        };
        let parts: Vec<Vec<f32>> = if m * self.n * k >= 1 << 18 {
            (0..np).into_par_iter().map(panel).collect()
        } else {
            (0..np).map(panel).collect()
        };
        let mut y = vec![0f32; m * self.n];
        for (p, part) in parts.iter().enumerate() {
            let cols = COLS.min(self.n - p * COLS);
            for i in 0..m {
                let dst = &mut y[i * self.n + p * COLS..][..cols];
                for ((d, v), bb) in dst.iter_mut().zip(&part[i * COLS..]).zip(&bias[p * COLS..]) {
                    *d = v + bb;
                }
            }
        }
        Ok(Tensor::from_vec(y, (m, self.n), &Device::Cpu)?)
    }
}

/// out[i·32 + c] = Σ_k x[i][k] · panel[k][c] for all m tokens.
fn panel_product(isa: Isa, x: &[f32], w: &[f32], m: usize, k: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // AVX-512 covers the 32 columns in one sweep; AVX2 in two halves of 16 (its 16
        // registers hold 6 tokens × 2 accumulators + 2 weight vectors + a broadcast)
        let (tile, halves) = if isa.avx512() { (TILE, 1) } else { (6, 2) };
        for half in 0..halves {
            let mut t0 = 0;
            while t0 < m {
                let t = (m - t0).min(tile);
                let (xs, os) = (
                    &x[t0 * k..(t0 + t) * k],
                    &mut out[t0 * COLS..(t0 + t) * COLS],
                );
                // SAFETY: `isa` passed isa::require; the kernels assert their slice bounds.
                unsafe {
                    if isa.avx512() {
                        avx512::tile_any(t, xs, w, k, os)
                    } else {
                        avx2::tile_any(t, xs, w, k, half, os)
                    }
                };
                t0 += t;
            }
        }
        return;
    }
    for i in 0..m {
        let o = &mut out[i * COLS..(i + 1) * COLS];
        for (kk, xv) in x[i * k..(i + 1) * k].iter().enumerate() {
            for (oc, wc) in o.iter_mut().zip(&w[kk * COLS..(kk + 1) * COLS]) {
                *oc += xv * wc;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::COLS;
    use std::arch::x86_64::*;

    /// Dispatches a tile of `t` ≤ 12 tokens to its monomorphized kernel.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile_any(t: usize, x: &[f32], w: &[f32], k: usize, out: &mut [f32]) {
        match t {
            1 => tile::<1>(x, w, k, out),
            2 => tile::<2>(x, w, k, out),
            3 => tile::<3>(x, w, k, out),
            4 => tile::<4>(x, w, k, out),
            5 => tile::<5>(x, w, k, out),
            6 => tile::<6>(x, w, k, out),
            7 => tile::<7>(x, w, k, out),
            8 => tile::<8>(x, w, k, out),
            9 => tile::<9>(x, w, k, out),
            10 => tile::<10>(x, w, k, out),
            11 => tile::<11>(x, w, k, out),
            _ => tile::<12>(x, w, k, out),
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const T: usize>(x: &[f32], w: &[f32], k: usize, out: &mut [f32]) {
        assert!(x.len() >= T * k && w.len() >= k * COLS && out.len() >= T * COLS);
        let mut lo = [_mm512_setzero_ps(); T];
        let mut hi = [_mm512_setzero_ps(); T];
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        for kk in 0..k {
            let row = wp.add(kk * COLS);
            if kk + 16 < k {
                _mm_prefetch::<_MM_HINT_T0>(row.add(16 * COLS) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(row.add(16 * COLS + 16) as *const i8);
            }
            let (w0, w1) = (_mm512_loadu_ps(row), _mm512_loadu_ps(row.add(16)));
            for t in 0..T {
                let xb = _mm512_set1_ps(*xp.add(t * k + kk));
                lo[t] = _mm512_fmadd_ps(xb, w0, lo[t]);
                hi[t] = _mm512_fmadd_ps(xb, w1, hi[t]);
            }
        }
        let op = out.as_mut_ptr();
        for t in 0..T {
            _mm512_storeu_ps(op.add(t * COLS), lo[t]);
            _mm512_storeu_ps(op.add(t * COLS + 16), hi[t]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::COLS;
    use std::arch::x86_64::*;

    /// Dispatches a tile of `t` ≤ 6 tokens × columns 16·half..16·half+16 of the panel.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile_any(t: usize, x: &[f32], w: &[f32], k: usize, half: usize, out: &mut [f32]) {
        match t {
            1 => tile::<1>(x, w, k, half, out),
            2 => tile::<2>(x, w, k, half, out),
            3 => tile::<3>(x, w, k, half, out),
            4 => tile::<4>(x, w, k, half, out),
            5 => tile::<5>(x, w, k, half, out),
            _ => tile::<6>(x, w, k, half, out),
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const T: usize>(x: &[f32], w: &[f32], k: usize, half: usize, out: &mut [f32]) {
        assert!(half < 2 && x.len() >= T * k && w.len() >= k * COLS && out.len() >= T * COLS);
        let mut lo = [_mm256_setzero_ps(); T];
        let mut hi = [_mm256_setzero_ps(); T];
        let (xp, wp) = (x.as_ptr(), w.as_ptr().add(16 * half));
        for kk in 0..k {
            let row = wp.add(kk * COLS);
            if kk + 16 < k {
                _mm_prefetch::<_MM_HINT_T0>(row.add(16 * COLS) as *const i8);
            }
            let (w0, w1) = (_mm256_loadu_ps(row), _mm256_loadu_ps(row.add(8)));
            for t in 0..T {
                let xb = _mm256_set1_ps(*xp.add(t * k + kk));
                lo[t] = _mm256_fmadd_ps(xb, w0, lo[t]);
                hi[t] = _mm256_fmadd_ps(xb, w1, hi[t]);
            }
        }
        let op = out.as_mut_ptr().add(16 * half);
        for t in 0..T {
            _mm256_storeu_ps(op.add(t * COLS), lo[t]);
            _mm256_storeu_ps(op.add(t * COLS + 8), hi[t]);
        }
    }
}

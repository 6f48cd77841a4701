//! Sparse × dense products for materialized unstructured sparsity (compressed sparse
//! rows, CSR). A pruned Linear `y = x Wᵀ` with W in CSR: at one row of `x` (batch 1) each
//! output is a gathered dot product over the row's non-zeros; at many rows `x` is
//! transposed once so each non-zero becomes a contiguous AXPY over the batch. The plain
//! loops of [`reference()`] are what every path is tested against; the AVX2/AVX-512 paths
//! are the same loops compiled with those features enabled (run-time dispatch through
//! [`crate::isa`]). Whether CSR beats the dense kernels depends on sparsity and batch:
//! `squeeze bench sparse` measures the crossover.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::isa::{self, Isa};
pub use crate::math::csr::{Csr, CsrOwned};

/// `y = x Aᵀ` for `x` `[m, cols]` → `[m, rows]`, plain loops (the reference).
#[cfg(test)]
pub fn reference(a: &Csr, x: &[f32], m: usize) -> Vec<f32> {
    let mut y = vec![0.0; m * a.rows];
    for i in 0..m {
        for r in 0..a.rows {
            let mut s = 0.0f32;
            for j in a.indptr[r] as usize..a.indptr[r + 1] as usize {
                s += a.values[j] * x[i * a.cols + a.indices[j] as usize];
            }
            y[i * a.rows + r] = s;
        }
    }
    y
}

/// Non-zero × batch products below which a product runs on the calling thread.
const PAR_WORK: usize = 1 << 17;

/// `y = x Aᵀ` on the active path (the structure is checked first).
pub fn spmm(a: &Csr, x: &[f32], m: usize) -> Result<Vec<f32>> {
    spmm_with(isa::active()?, a, x, m)
}

/// [`spmm`] on path `isa` (refused if the CPU lacks it).
pub fn spmm_with(isa: Isa, a: &Csr, x: &[f32], m: usize) -> Result<Vec<f32>> {
    let isa = isa::require(isa)?;
    a.check()?;
    if x.len() != m * a.cols {
        return Err(Error::Graph(format!(
            "sparse product: input has {} values, expected {m}×{}",
            x.len(),
            a.cols
        )));
    }
    let par = a.values.len() * m >= PAR_WORK;
    if m == 1 {
        let mut y = vec![0.0; a.rows];
        let row = |(r, out): (usize, &mut f32)| *out = row_dot(isa, a, r, x);
        if par {
            y.par_iter_mut().enumerate().for_each(row);
        } else {
            y.iter_mut().enumerate().for_each(row);
        }
        return Ok(y);
    }
    // xᵀ [cols, m]: each non-zero reads one contiguous row of it
    let mut xt = vec![0.0; a.cols * m];
    for i in 0..m {
        for c in 0..a.cols {
            xt[c * m + i] = x[i * a.cols + c];
        }
    }
    let mut yt = vec![0.0; a.rows * m];
    let row = |(r, out): (usize, &mut [f32])| row_axpy(isa, a, r, &xt, m, out);
    if par {
        yt.par_chunks_mut(m).enumerate().for_each(row);
    } else {
        yt.chunks_mut(m).enumerate().for_each(row);
    }
    let mut y = vec![0.0; m * a.rows];
    for r in 0..a.rows {
        for i in 0..m {
            y[i * a.rows + r] = yt[r * m + i];
        }
    }
    Ok(y)
}

fn row_dot(isa: Isa, a: &Csr, r: usize, x: &[f32]) -> f32 {
    let (s, e) = (a.indptr[r] as usize, a.indptr[r + 1] as usize);
    let (v, c) = (&a.values[s..e], &a.indices[s..e]);
    // SAFETY: `isa` passed isa::require, so the CPU has the features; spmm_with checked
    // the CSR (every column < cols) and that x holds cols values per row, which is what
    // dot_gather's unchecked gathers need.
    #[cfg(target_arch = "x86_64")]
    match isa {
        Isa::Avx512 | Isa::Avx512Vnni | Isa::Amx => return unsafe { dot_avx512(v, c, x) },
        Isa::Avx2 | Isa::AvxVnni => return unsafe { dot_avx2(v, c, x) },
        Isa::Scalar => {}
    }
    let _ = isa;
    // SAFETY: spmm_with checked the CSR (columns < cols) and that x holds cols values.
    unsafe { dot_gather(v, c, x) }
}

fn row_axpy(isa: Isa, a: &Csr, r: usize, xt: &[f32], m: usize, out: &mut [f32]) {
    let (s, e) = (a.indptr[r] as usize, a.indptr[r + 1] as usize);
    let (v, c) = (&a.values[s..e], &a.indices[s..e]);
    // SAFETY: as in row_dot.
    #[cfg(target_arch = "x86_64")]
    match isa {
        Isa::Avx512 | Isa::Avx512Vnni | Isa::Amx => {
            return unsafe { axpy_avx512(v, c, xt, m, out) }
        }
        Isa::Avx2 | Isa::AvxVnni => return unsafe { axpy_avx2(v, c, xt, m, out) },
        Isa::Scalar => {}
    }
    let _ = isa;
    axpy_rows(v, c, xt, m, out)
}

/// Σ v[j]·x[c[j]] with eight independent accumulators.
///
/// # Safety
/// Every `c[j]` must be `< x.len()` (what [`Csr::check`] and [`spmm_with`]'s length
/// check establish): the gathers skip bounds checks, which halves their cost.
#[inline(always)]
unsafe fn dot_gather(v: &[f32], c: &[u32], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (vc, cc) = (v.chunks_exact(8), c.chunks_exact(8));
    let (vr, cr) = (vc.remainder(), cc.remainder());
    for (vs, cs) in vc.zip(cc) {
        for k in 0..8 {
            acc[k] += vs[k] * *x.get_unchecked(cs[k] as usize);
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (vv, cv) in vr.iter().zip(cr) {
        s += vv * *x.get_unchecked(*cv as usize);
    }
    s
}

/// out += Σ_j v[j]·xt[c[j]] (rows of length m).
#[inline(always)]
fn axpy_rows(v: &[f32], c: &[u32], xt: &[f32], m: usize, out: &mut [f32]) {
    for (vv, cv) in v.iter().zip(c) {
        let row = &xt[*cv as usize * m..(*cv as usize + 1) * m];
        for (o, xv) in out.iter_mut().zip(row) {
            *o += vv * xv;
        }
    }
}

/// The gathered dot product compiled for AVX2. Explicit `vgatherdps` was tried and is
/// slower on AMD Zen 3 (its gathers are microcoded): scalar loads with independent
/// accumulators win, so this is the portable loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(v: &[f32], c: &[u32], x: &[f32]) -> f32 {
    dot_gather(v, c, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_avx512(v: &[f32], c: &[u32], x: &[f32]) -> f32 {
    dot_gather(v, c, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_avx2(v: &[f32], c: &[u32], xt: &[f32], m: usize, out: &mut [f32]) {
    axpy_rows(v, c, xt, m, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn axpy_avx512(v: &[f32], c: &[u32], xt: &[f32], m: usize, out: &mut [f32]) {
    axpy_rows(v, c, xt, m, out)
}

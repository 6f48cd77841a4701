//! Linear weights packed once into 32-column panels for inference (the panel layout of
//! GEMM micro-kernels, Goto & van de Geijn 2008): panel p holds, for every input index k,
//! the 32 weights `W[32p..32p+32][k]` contiguously, so a kernel multiplies a tile of up to
//! 12 tokens by a panel with broadcast-FMA into 24 vector accumulators — no horizontal
//! sums, every weight loaded once per tile, one sequential stream per panel. Each thread
//! takes one contiguous range of (panel, tile) units and writes its tiles straight into
//! the output's columns, bias added; the tiles of a batch are as even as the tile height
//! allows.
//! [`super::pack_cache::PackCache`] keeps the packed copy of each weight (keyed by
//! parameter name and checked against the tensor's identity). The reference is
//! candle's matmul; `ops/tests/gradcheck.rs` compares them.

use candle_core::{DType, Device, Tensor};

pub mod chain;

use super::team::Ptr;
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
    /// The order the products visit the panels in (and so which thread computes which
    /// columns): panel order, or siblings' panels interleaved ([`Self::interleaved`]).
    order: Vec<usize>,
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
        Ok(PackedLinear {
            n,
            k,
            order: (0..np).collect(),
            panels,
        })
    }

    /// The row-concatenation of `siblings` equal weights packed as one, its panels visited
    /// sibling by sibling for each panel index (q₀ k₀ v₀ q₁ k₁ v₁ … for a query/key/value
    /// group) when every sibling fills whole panels: each thread's contiguous share of the
    /// product then holds all three projections of the same heads (head widths that are
    /// multiples of 32), and the attention core reads them where they were written. The
    /// output is the same, value for value.
    pub fn interleaved(mut self, siblings: usize) -> Self {
        let np = self.order.len();
        let each = np / siblings.max(1);
        if siblings > 1 && each * siblings == np && self.n == np * COLS {
            self.order = (0..each)
                .flat_map(|j| (0..siblings).map(move |s| s * each + j))
                .collect();
        }
        self
    }

    /// `x Wᵀ + b` for x [M, K] → [M, N], on the active path.
    pub fn matmul(&self, x: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        self.matmul_with(isa::active()?, x, b)
    }

    /// [`Self::matmul`] on path `isa` (refused if the CPU lacks it).
    pub fn matmul_with(&self, isa: Isa, x: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        self.matmul_then(isa, x, b, Then::Nothing)
    }

    /// [`Self::matmul_with`], then `then` on every output value, each tile's values while
    /// they are in registers' reach (a GELU after the Linear costs no pass of its own).
    pub fn matmul_then(
        &self,
        isa: Isa,
        x: &Tensor,
        b: Option<&Tensor>,
        then: Then,
    ) -> Result<Tensor> {
        let isa = isa::require(isa)?;
        let (m, k) = x.dims2()?;
        if let Then::Add(r) = then {
            if r.len() != m * self.n {
                return Err(Error::Graph(format!(
                    "packed linear: the residual holds {} values, the output {m}×{}",
                    r.len(),
                    self.n
                )));
            }
        }
        if k != self.k {
            return Err(Error::Graph(format!(
                "packed linear expects {} inputs, got {k}",
                self.k
            )));
        }
        if let Some(b) = b {
            if b.dims1()? != self.n {
                return Err(Error::Graph(format!(
                    "packed linear has {} outputs, its bias {}",
                    self.n,
                    b.dims1()?
                )));
            }
        }
        let y = with_cpu::<f32, _>(x, |xs| match b {
            Some(b) => with_cpu::<f32, _>(b, |bs| self.product(isa, xs, Some(bs), m, then)),
            None => Ok(self.product(isa, xs, None, m, then)),
        })??;
        Ok(Tensor::from_vec(y, (m, self.n), &Device::Cpu)?)
    }

    /// `b + x Wᵀ` for the m rows of `xs`, row-major [m, n]. The work is (panel, tile)
    /// units in panel order, split into one contiguous, equal range per thread (a large
    /// enough product) — 33 panels of 2 tiles are 33 units each, not 17 and 16 panels —
    /// and each tile's result goes into its columns of the output, bias added and `then`
    /// applied: straight from the registers on AVX-512, through a stack buffer elsewhere.
    fn product(
        &self,
        isa: Isa,
        xs: &[f32],
        bias: Option<&[f32]>,
        m: usize,
        then: Then,
    ) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        let mut y = super::output_buffer(m * n);
        let out = Ptr(y.as_mut_ptr());
        let tiles = tiles(isa, m);
        let units = self.order.len() * tiles.len();
        let run = |range: std::ops::Range<usize>| {
            let mut buf = [0f32; TILE * COLS];
            for u in range {
                let (p, tile) = (self.order[u / tiles.len()], tiles[u % tiles.len()]);
                let at = Place {
                    out,
                    n,
                    c0: p * COLS,
                    cols: COLS.min(n - p * COLS),
                    bias: bias.map(|b| &b[p * COLS..]),
                    then,
                };
                let w = &self.panels[p * k * COLS..(p + 1) * k * COLS];
                // SAFETY: the units are disjoint (panel, tile) pairs, each in one range
                unsafe {
                    unit(
                        isa,
                        &xs[tile.0 * k..(tile.0 + tile.1) * k],
                        w,
                        tile,
                        &at,
                        &mut buf,
                    )
                }
            }
        };
        let parts = if m * n * k >= PAR_MACS {
            super::team::team().size().min(units)
        } else {
            1
        };
        if parts <= 1 {
            run(0..units);
        } else {
            super::team::team().run(parts, &|t| run(t * units / parts..(t + 1) * units / parts));
        }
        // SAFETY: the (panel, tile) units cover every row and column of y once
        unsafe { super::written(&mut y, m * n) };
        y
    }
}

/// One (panel, tile) unit of a product: the tile's `t` rows of `x` (from row t0) times
/// panel `w`, into its place `at`.
///
/// # Safety
/// `isa` passed `isa::require`; rows t0..t0+t, columns at.c0..at.c0+at.cols of the output
/// lie inside it ([·, at.n]) and no other unit writes them.
unsafe fn unit(
    isa: Isa,
    x: &[f32],
    w: &[f32],
    (t0, t): (usize, usize),
    at: &Place,
    buf: &mut [f32; TILE * COLS],
) {
    let k = x.len() / t;
    #[cfg(target_arch = "x86_64")]
    if isa.avx512() {
        avx512::tile_into(t, x, w, k, t0, at);
        if at.then == Then::Gelu {
            super::gelu::gelu_block(isa, at.out, t0..t0 + t, (at.n, at.c0, at.cols));
        }
        return;
    }
    let tile_out = &mut buf[..t * COLS];
    panel_tile(isa, x, w, t, k, tile_out);
    for (i, row) in tile_out.chunks_exact(COLS).enumerate() {
        let dst = at.out.slice(at.n * (t0 + i) + at.c0, at.cols);
        match at.bias {
            Some(b) => {
                for ((d, v), bb) in dst.iter_mut().zip(row).zip(b) {
                    *d = v + bb;
                }
            }
            None => dst.copy_from_slice(&row[..at.cols]),
        }
        match at.then {
            Then::Nothing => {}
            Then::Gelu => super::gelu::gelu_slice(isa, dst),
            Then::Add(r) => {
                for (d, v) in dst.iter_mut().zip(&r[at.n * (t0 + i) + at.c0..]) {
                    *d += v;
                }
            }
        }
    }
}

/// What a packed product applies to its output values after the bias.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Then<'a> {
    Nothing,
    /// GELU (erf form), as [`super::gelu::gelu`] computes it.
    Gelu,
    /// Adds these values, laid out as the output ([M, N]): a residual sum.
    Add(&'a [f32]),
}

/// Where a unit's values go: rows of the output `out` ([M, n]), its columns c0..c0+cols,
/// with the bias from column c0 on, then `then`.
struct Place<'a> {
    out: Ptr<f32>,
    n: usize,
    c0: usize,
    cols: usize,
    bias: Option<&'a [f32]>,
    then: Then<'a>,
}

/// Multiply-adds from which a product is split over the threads.
const PAR_MACS: usize = 1 << 18;

/// The token tiles (first row, rows) of m rows: as few as the path's tile height allows,
/// their heights as even as possible — 13 rows are 6 + 7, not 12 + 1, since a tile of a
/// row or two waits on its few accumulators' latency while streaming the whole panel.
fn tiles(isa: Isa, m: usize) -> Vec<(usize, usize)> {
    let height = if isa.avx512() { TILE } else { AVX2_TILE };
    let count = m.div_ceil(height).max(1);
    (0..count)
        .map(|i| (i * m / count, (i + 1) * m / count - i * m / count))
        .filter(|&(_, t)| t > 0)
        .collect()
}

/// Tokens per micro-tile on the AVX2 path (its 16 registers hold 6 tokens × 2
/// accumulators + 2 weight vectors + a broadcast).
const AVX2_TILE: usize = 6;

/// out[i·32 + c] = Σ_k x[i][k] · panel[k][c] for the t tokens of one tile.
fn panel_tile(isa: Isa, x: &[f32], w: &[f32], t: usize, k: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: `isa` passed isa::require; the kernels assert their slice bounds.
        // (the AVX-512 path writes its tiles in place: `avx512::tile_into`)
        unsafe {
            // AVX2 covers the 32 columns in two halves of 16
            avx2::tile_any(t, x, w, k, 0, out);
            avx2::tile_any(t, x, w, k, 1, out);
        }
        return;
    }
    out.fill(0.0);
    for i in 0..t {
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

    /// The tile's sums: token t's columns 0..16 in `lo[t]`, 16..32 in `hi[t]`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn sums<const T: usize>(x: &[f32], w: &[f32], k: usize) -> ([__m512; T], [__m512; T]) {
        assert!(x.len() >= T * k && w.len() >= k * COLS);
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
        (lo, hi)
    }

    /// A tile of `t` ≤ 12 tokens (rows t0.. of the output) written straight into its
    /// place in `e.out`, bias and a residual (`Then::Add`) added in registers — the same
    /// sums in the same order as the buffered tile and its epilogue — and columns past
    /// `e.cols` masked.
    ///
    /// # Safety
    /// AVX-512F; rows t0..t0+t and columns e.c0..e.c0+e.cols of `e.out` (and of a
    /// `Then::Add` residual) lie inside the [·, e.n] buffers and belong to this call alone.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile_into(
        t: usize,
        x: &[f32],
        w: &[f32],
        k: usize,
        t0: usize,
        e: &super::Place,
    ) {
        match t {
            1 => into::<1>(x, w, k, t0, e),
            2 => into::<2>(x, w, k, t0, e),
            3 => into::<3>(x, w, k, t0, e),
            4 => into::<4>(x, w, k, t0, e),
            5 => into::<5>(x, w, k, t0, e),
            6 => into::<6>(x, w, k, t0, e),
            7 => into::<7>(x, w, k, t0, e),
            8 => into::<8>(x, w, k, t0, e),
            9 => into::<9>(x, w, k, t0, e),
            10 => into::<10>(x, w, k, t0, e),
            11 => into::<11>(x, w, k, t0, e),
            _ => into::<12>(x, w, k, t0, e),
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn into<const T: usize>(x: &[f32], w: &[f32], k: usize, t0: usize, e: &super::Place) {
        use crate::ops::fast::avx512::first_lanes;
        let (mut lo, mut hi) = sums::<T>(x, w, k);
        let (m0, m1) = (first_lanes(e.cols), first_lanes(e.cols.saturating_sub(16)));
        assert!(e.bias.is_none_or(|b| b.len() >= e.cols));
        if let Some(b) = e.bias {
            let b0 = _mm512_maskz_loadu_ps(m0, b.as_ptr());
            let b1 = _mm512_maskz_loadu_ps(m1, b.as_ptr().add(16));
            for t in 0..T {
                lo[t] = _mm512_add_ps(lo[t], b0);
                hi[t] = _mm512_add_ps(hi[t], b1);
            }
        }
        let add = match e.then {
            super::Then::Add(r) => Some(r),
            _ => None,
        };
        assert!(add.is_none_or(|r| r.len() >= e.n * (t0 + T)));
        for t in 0..T {
            let at = e.n * (t0 + t) + e.c0;
            if let Some(r) = add {
                let r = r.as_ptr().add(at);
                lo[t] = _mm512_add_ps(lo[t], _mm512_maskz_loadu_ps(m0, r));
                hi[t] = _mm512_add_ps(hi[t], _mm512_maskz_loadu_ps(m1, r.add(16)));
            }
            let o = e.out.at(at);
            _mm512_mask_storeu_ps(o, m0, lo[t]);
            _mm512_mask_storeu_ps(o.add(16), m1, hi[t]);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The tiles cover every row once, in order, each at most the path's height, their
    /// heights differing by at most one.
    #[test]
    fn tiles_cover_the_rows_evenly() {
        for isa in [Isa::Avx512, Isa::Avx2] {
            let height = if isa.avx512() { TILE } else { AVX2_TILE };
            for m in 1..100 {
                let t = tiles(isa, m);
                assert_eq!(t.len(), m.div_ceil(height), "m={m}");
                let mut next = 0;
                for &(t0, h) in &t {
                    assert_eq!(t0, next, "m={m}");
                    assert!(h > 0 && h <= height, "m={m}: {h}");
                    next += h;
                }
                assert_eq!(next, m);
                let (lo, hi) = (t.iter().map(|x| x.1).min(), t.iter().map(|x| x.1).max());
                assert!(hi.unwrap() - lo.unwrap() <= 1, "m={m}: {t:?}");
            }
        }
        assert_eq!(tiles(Isa::Avx512, 13), vec![(0, 6), (6, 7)]);
    }
}

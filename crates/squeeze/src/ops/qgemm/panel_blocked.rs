//! Dynamic int8 on packed panels: activations quantized with one scale per block of
//! consecutive inputs ([`crate::quant::act`], llama.cpp's Q8_0 choice) against int8
//! weights packed once into panels of 16 output channels × 2 inputs. The kernel
//! broadcasts a token's pair of codes (as two i16) to every lane and multiplies it with a
//! panel's 16 channels widened to i16 in registers (`vpmovsxbw` + `vpmaddwd`): one
//! multiply instruction per 16 multiply-accumulates, exact in i32, with no sign transfer.
//! (The `vpmaddubsw` form of [`super::panel`] needs a `vpsignb` per product for signed
//! inputs, and on Zen 3 all three instructions share the same two pipes: a transformer's
//! signed activations cost it a third more than this form.) Each block's exact sums
//! (16 channels of a token in two registers, no horizontal sums) are converted and
//! accumulated in f32 with the block's scale; the weight scale and bias are applied as
//! the tile is stored, so results come out channels-last — `[tokens, out]`, the layer's
//! own layout.
//!
//! [`PackedPairs::product`] equals its plain loops within float rounding (the integer
//! block sums are exact; only the f32 accumulation uses fused multiply-adds);
//! [`linear_packed`] runs one layer or a q/k/v group over token and channel tiles in
//! parallel.

use std::sync::Arc;

use candle_core::TensorId;
use rayon::prelude::*;

use super::panel::{Cache, NR};
use super::Ptr;
use crate::error::{Error, Result};
use crate::isa::{self, Isa};

/// Inputs per group (one broadcast pair of i16).
const KG: usize = 2;
/// Tokens per parallel task (their codes stay in L2 while the task's panels pass).
const TOKENS_PER_TASK: usize = 64;
/// Panels (of [`NR`] channels) per parallel task.
const PANELS_PER_TASK: usize = 4;

/// An int8 weight `[n, k]` in panels of [`NR`] channels × 2 inputs, `n` padded to a
/// multiple of [`NR`] and `k` to an even count with zero codes.
#[derive(Debug)]
pub struct PackedPairs {
    pub n: usize,
    pub k: usize,
    data: Vec<i8>,
}

/// Activation rows for [`PackedPairs::product`]: `[m, k]` codes widened to i16, each row
/// zero-padded to [`PackedPairs::stride`], and one scale per `block` inputs of each row
/// (`[m, k.div_ceil(block)]`).
#[derive(Debug, Clone, Copy)]
pub struct WideRows<'a> {
    pub codes: &'a [i16],
    pub scales: &'a [f32],
    pub block: usize,
}

/// Activations quantized for [`PackedPairs`]: i16 codes in rows of the weight's
/// [`PackedPairs::stride`] and their scales; [`quantize_wide`] makes them.
#[derive(Debug, Clone, Default)]
pub struct WideQuant {
    pub codes: Vec<i16>,
    pub scales: Vec<f32>,
    pub block: usize,
}

impl WideQuant {
    pub fn rows(&self) -> WideRows<'_> {
        WideRows {
            codes: &self.codes,
            scales: &self.scales,
            block: self.block,
        }
    }
}

/// Rows of activations quantized per task of the quantizer.
const QUANT_ROWS: usize = 32;

/// Quantizes `x` `[m, k]` as [`crate::quant::act::quantize_rows`] does — the same codes
/// and scales (dynamic: `max|block| / 127` per `block` inputs of a row; `fixed`: that
/// scale for whole rows) — straight into i16 rows of stride `kp ≥ k` (zero-padded), rows
/// in parallel when there are many.
pub fn quantize_wide(
    isa: Isa,
    x: &[f32],
    (k, kp): (usize, usize),
    fixed: Option<f32>,
    block: usize,
) -> Result<WideQuant> {
    let isa = isa::require(isa)?;
    if k == 0 || kp < k || !x.len().is_multiple_of(k) {
        return Err(Error::Data(format!(
            "quantizing {} activations in rows of {k} (stride {kp})",
            x.len()
        )));
    }
    let m = x.len() / k;
    let block = if fixed.is_some() {
        k
    } else {
        block.clamp(1, k)
    };
    let nb = k.div_ceil(block);
    let mut q = WideQuant {
        codes: vec![0; m * kp],
        scales: vec![0.0; m * nb],
        block,
    };
    let one_row = |(row, (codes, scales)): (&[f32], (&mut [i16], &mut [f32]))| {
        for ((part, s), at) in row.chunks(block).zip(scales).zip((0..k).step_by(block)) {
            *s = fixed.unwrap_or_else(|| max_abs(isa, part) / 127.0);
            let inv = if *s > 0.0 { 1.0 / *s } else { 0.0 };
            wide_codes(isa, part, inv, &mut codes[at..at + part.len()]);
        }
    };
    let rows = x.chunks_exact(k).zip(
        q.codes
            .chunks_exact_mut(kp)
            .zip(q.scales.chunks_exact_mut(nb)),
    );
    if m >= 2 * QUANT_ROWS {
        rows.par_bridge().for_each(one_row);
    } else {
        rows.for_each(one_row);
    }
    Ok(q)
}

/// Largest |v| of `x` (NaN ignored).
fn max_abs(isa: Isa, x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: every path above scalar implies AVX2.
        return unsafe { super::avx2_pairs::max_abs(x) };
    }
    let _ = isa;
    x.iter().fold(0f32, |a, v| a.max(v.abs()))
}

/// `codes = round_code(x·inv)` widened to i16.
fn wide_codes(isa: Isa, x: &[f32], inv: f32, codes: &mut [i16]) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: every path above scalar implies AVX2; the kernel asserts the length.
        return unsafe { super::avx2_pairs::codes_wide(x, inv, codes) };
    }
    let _ = isa;
    for (c, v) in codes.iter_mut().zip(x) {
        *c = crate::quant::act::round_code(v * inv) as i16;
    }
}

impl PackedPairs {
    /// Packs codes given by `code(j, c)` for output channel `j < n` and input `c < k`.
    pub fn pack(n: usize, k: usize, code: impl Fn(usize, usize) -> i8) -> Self {
        let nq = k.div_ceil(KG);
        let mut data = vec![0i8; n.div_ceil(NR) * nq * NR * KG];
        for j in 0..n {
            let (p, ch) = (j / NR, j % NR);
            for c in 0..k {
                data[((p * nq + c / KG) * NR + ch) * KG + c % KG] = code(j, c);
            }
        }
        PackedPairs { n, k, data }
    }

    /// Codes per activation row the kernel reads: `k` rounded up to even.
    pub fn stride(&self) -> usize {
        self.k.div_ceil(KG) * KG
    }

    /// Panels of [`NR`] channels.
    pub fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// For the tokens `i` of `rows` (written from `out` row 0, stride `ldo`) and the
    /// channels `j < n` of `panels` (column `j − NR·panels.start`):
    /// `out = (Σ_b sa[i, b]·Σ_{c ∈ block b} a[i, c]·w[j, c])·scale[j] + bias[j]`, on the
    /// calling thread. The block is even or covers the row; `scale`/`bias` have one
    /// value per channel of the weight. Columns of channels past `n` are left as they are.
    #[allow(clippy::too_many_arguments)]
    pub fn product(
        &self,
        isa: Isa,
        a: WideRows,
        rows: std::ops::Range<usize>,
        panels: std::ops::Range<usize>,
        (scale, bias): (&[f32], &[f32]),
        out: &mut [f32],
        ldo: usize,
    ) -> Result<()> {
        let isa = isa::require(isa)?;
        let (k, kp, m, bl) = (self.k, self.stride(), rows.len(), a.block);
        let nb = k.div_ceil(bl.max(1));
        let cols = (panels.len() * NR).min(self.n.saturating_sub(panels.start * NR));
        let fits = bl > 0
            && (bl % KG == 0 || bl >= k)
            && rows.start <= rows.end
            && a.codes.len() >= rows.end * kp
            && a.scales.len() >= rows.end * nb
            && scale.len() == self.n
            && bias.len() == self.n
            && ldo >= cols
            && out.len() >= m.saturating_sub(1) * ldo + cols;
        if panels.start > panels.end || panels.end > self.panels() || !fits {
            return Err(Error::Data(format!(
                "block-scaled int8 product of rows {rows:?} (blocks of {bl}) with panels \
                 {panels:?} of a [{}, {k}] weight: {} codes, {} scales, {} channel scales, \
                 {} biases, output of {} (stride {ldo})",
                self.n,
                a.codes.len(),
                a.scales.len(),
                scale.len(),
                bias.len(),
                out.len()
            )));
        }
        let psize = kp * NR;
        let data = &self.data[panels.start * psize..panels.end * psize];
        let j0 = panels.start * NR;
        let (at, sat) = (rows.start * kp, rows.start * nb);
        #[cfg(target_arch = "x86_64")]
        if isa != Isa::Scalar {
            // the kernel stores whole panels: give it the range's scales zero-padded
            let pad = |v: &[f32]| {
                let mut p = vec![0f32; panels.len() * NR];
                p[..cols].copy_from_slice(&v[j0..j0 + cols]);
                p
            };
            let (sc, bi) = (pad(scale), pad(bias));
            // SAFETY: every path above scalar implies AVX2 and FMA; the lengths were
            // checked above (rows of `k` codes and `nb` scales, whole padded panels,
            // `cols` columns written per row).
            unsafe {
                super::avx2_pairs::product(
                    (&a.codes[at..], &a.scales[sat..]),
                    (m, kp, if bl >= k { kp } else { bl }),
                    (data, cols),
                    (&sc, &bi),
                    out,
                    ldo,
                )
            };
            return Ok(());
        }
        let _ = isa;
        let w = |j: usize, c: usize| {
            let (p, ch) = (j / NR, j % NR);
            data[((p * (kp / KG) + c / KG) * NR + ch) * KG + c % KG] as i32
        };
        let (codes, sa) = (&a.codes[at..], &a.scales[sat..]);
        for r in 0..m {
            for j in 0..cols {
                let mut s = 0f32;
                for b in 0..nb {
                    let d: i32 = (b * bl..((b + 1) * bl).min(k))
                        .map(|c| codes[r * kp + c] as i32 * w(j, c))
                        .sum();
                    s += d as f32 * sa[r * nb + b];
                }
                out[r * ldo + j] = s * scale[j0 + j] + bias[j0 + j];
            }
        }
        Ok(())
    }
}

static CACHE: Cache<PackedPairs> = Cache::new();

/// The paired packing of the stored codes tensor `id`, made by `make` on first use.
pub fn packed(
    id: TensorId,
    make: impl FnOnce() -> Result<PackedPairs>,
) -> Result<Arc<PackedPairs>> {
    CACHE.get(id, make)
}

/// One packed int8 layer of a [`linear_packed`] call: one weight scale per output
/// channel (or one for all), optional bias.
#[derive(Debug, Clone, Copy)]
pub struct PackedPart<'a> {
    pub w: &'a PackedPairs,
    pub scales: &'a [f32],
    pub bias: Option<&'a [f32]>,
}

/// Packed int8 layers reading the same quantized rows `a` (`m` rows of the weights'
/// [`PackedPairs::stride`]): for each part, `[m, n]` with `y[i, j] = Σ_b sa[i, b]·acc_b[i, j]·sw[j] + b[j]`.
/// All parts' tiles of [`TOKENS_PER_TASK`] tokens × [`PANELS_PER_TASK`] panels run in
/// one parallel call when the product is large.
pub fn linear_packed(
    isa: Isa,
    rows: WideRows,
    parts: &[PackedPart],
    m: usize,
) -> Result<Vec<Vec<f32>>> {
    let isa = isa::require(isa)?;
    let (k, kp) = parts.first().map_or((0, 0), |p| (p.w.k, p.w.stride()));
    let mut full = Vec::with_capacity(parts.len());
    for p in parts {
        let n = p.w.n;
        if p.w.k != k
            || !(p.scales.len() == n || p.scales.len() == 1)
            || p.bias.is_some_and(|b| b.len() != n)
            || rows.codes.len() != m * kp
        {
            return Err(Error::Data(format!(
                "packed int8 layer [{n}, {}] of a group with {k} inputs: {} weight scales, \
                 {} biases, {} activation codes for {m} rows",
                p.w.k,
                p.scales.len(),
                p.bias.map_or(0, |b| b.len()),
                rows.codes.len()
            )));
        }
        let sc = match p.scales.len() {
            1 => vec![p.scales[0]; n],
            _ => p.scales.to_vec(),
        };
        full.push((sc, p.bias.map_or_else(|| vec![0f32; n], <[f32]>::to_vec)));
    }
    let mut outs: Vec<Vec<f32>> = parts.iter().map(|p| vec![0f32; m * p.w.n]).collect();
    let ptrs: Vec<Ptr<f32>> = outs.iter_mut().map(|o| Ptr(o.as_mut_ptr())).collect();
    let tasks: Vec<(usize, usize, usize)> = parts
        .iter()
        .enumerate()
        .flat_map(|(p, part)| {
            let np = part.w.panels();
            // a task's tokens stay in L2 while the chunks of panels pass
            (0..m.div_ceil(TOKENS_PER_TASK)).flat_map(move |t| {
                (0..np.div_ceil(PANELS_PER_TASK)).map(move |c| (p, c * PANELS_PER_TASK, t))
            })
        })
        .collect();
    let task = |&(p, p0, t): &(usize, usize, usize)| -> Result<()> {
        let part = &parts[p];
        let (n, panels) = (part.w.n, p0..(p0 + PANELS_PER_TASK).min(part.w.panels()));
        let tokens = t * TOKENS_PER_TASK..((t + 1) * TOKENS_PER_TASK).min(m);
        let (j0, cols) = (p0 * NR, (panels.len() * NR).min(n - p0 * NR));
        let mut tile = vec![0f32; tokens.len() * cols];
        let sb = (&full[p].0[..], &full[p].1[..]);
        part.w
            .product(isa, rows, tokens.clone(), panels, sb, &mut tile, cols)?;
        for (r, line) in tokens.zip(tile.chunks_exact(cols)) {
            // SAFETY: columns j0..j0 + cols of row r of part p belong to this task alone;
            // the outputs outlive the call.
            unsafe { std::ptr::copy_nonoverlapping(line.as_ptr(), ptrs[p].at(r * n + j0), cols) };
        }
        Ok(())
    };
    let macs: usize = parts.iter().map(|p| m * p.w.n * p.w.k).sum();
    if macs >= super::PAR_MACS {
        tasks.par_iter().try_for_each(task)?;
    } else {
        tasks.iter().try_for_each(task)?;
    }
    Ok(outs)
}

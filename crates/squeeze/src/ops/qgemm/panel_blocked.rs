//! Dynamic int8 on packed panels: activations quantized with one scale per block of
//! consecutive inputs ([`super::quantize`], llama.cpp's Q8_0 choice) against int8
//! weights packed once into the panels of [`super::panel`] (16 output channels × 4
//! inputs). Activation codes are in [−64, 64] ([`LINEAR_ACT_MAX`]) and stored offset as
//! unsigned bytes `u = code + 64 ∈ [0, 128]`, so `vpmaddubsw` (unsigned × signed bytes,
//! pairs summed in saturating i16) is exact: a pair reaches at most 2·128·128 = 2¹⁵ in
//! magnitude. The kernel broadcasts a token's 4 offset codes, multiplies them with the
//! panel's two registers, widens the pair sums with `vpmaddwd` against ones and adds them
//! in i32: three instructions per 32 multiply-accumulates, where widening i16 codes for
//! `vpmaddwd` alone takes two per 16 (on Zen 3 both forms are bound by the same three
//! vector pipes; measured, this form runs 1.45× as many multiply-accumulates per cycle).
//! Each block's accumulators start at `−64·Σ_block w` (packed beside the panels), which
//! takes the offset back exactly; the block's sums are then converted and accumulated in
//! f32 with its scale, and the weight scale and bias are applied as the tile is stored,
//! so results come out channels-last — `[tokens, out]`, the layer's own layout.
//!
//! On CPUs with AVX-512 VNNI the same panels and codes run `vpdpbusd` instead
//! (`avx512_blocked.rs`): one instruction per 64 multiply-accumulates.
//!
//! [`PackedBlocked::product`] equals its plain loops within float rounding (the integer
//! block sums are exact; only the f32 accumulation uses fused multiply-adds);
//! [`linear_packed`] runs one layer or a q/k/v group over token and channel tiles in
//! parallel.

use rayon::prelude::*;

use super::panel::{panel_bytes, KG, NR};
use super::quantize::{round_code_to, LINEAR_ACT_MAX};
use super::Ptr;
use crate::error::{Error, Result};
use crate::isa::{self, Isa};

/// The offset that makes activation codes unsigned.
pub const OFFSET: u8 = LINEAR_ACT_MAX as u8;
/// Tokens per parallel task (their codes stay in L2 while the task's panels pass).
const TOKENS_PER_TASK: usize = 64;
/// Panels (of [`NR`] channels) per parallel task.
const PANELS_PER_TASK: usize = 4;

/// An int8 weight `[n, k]` in panels of [`NR`] channels × 4 inputs (`n` padded to a
/// multiple of [`NR`], `k` to a multiple of 4, with zero codes) for activations in blocks
/// of `block` inputs, with each panel's per-block offset corrections
/// `sums[p, b, ch] = −64·Σ_{c ∈ block b} w[16p + ch, c]`.
#[derive(Debug)]
pub struct PackedBlocked {
    pub n: usize,
    pub k: usize,
    pub block: usize,
    data: Vec<u8>,
    sums: Vec<i32>,
}

/// Activation rows for [`PackedBlocked::product`]: `[m, stride]` offset codes
/// (`code + 64`, the row padding 64) and one scale per `block` inputs of each row
/// (`[m, k.div_ceil(block)]`).
#[derive(Debug, Clone, Copy)]
pub struct OffsetRows<'a> {
    pub codes: &'a [u8],
    pub scales: &'a [f32],
    pub block: usize,
}

/// Activations quantized for [`PackedBlocked`]; [`quantize_offset`] makes them.
#[derive(Debug, Clone, Default)]
pub struct OffsetQuant {
    pub codes: Vec<u8>,
    pub scales: Vec<f32>,
    pub block: usize,
}

impl OffsetQuant {
    pub fn rows(&self) -> OffsetRows<'_> {
        OffsetRows {
            codes: &self.codes,
            scales: &self.scales,
            block: self.block,
        }
    }
}

/// Rows of activations quantized per task of the quantizer.
const QUANT_ROWS: usize = 32;

/// Quantizes `x` `[m, k]` as [`super::quantize::quantize_rows`] does with
/// `lim` = [`LINEAR_ACT_MAX`] — the same codes and scales (dynamic: `max|block| / 64` per
/// `block` inputs of a row; `fixed`: that step for whole rows) — offset by 64 into rows of
/// stride `kp ≥ k` (padding 64, standing for 0), rows in parallel when there are many.
pub fn quantize_offset(
    isa: Isa,
    x: &[f32],
    (k, kp): (usize, usize),
    fixed: Option<f32>,
    block: usize,
) -> Result<OffsetQuant> {
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
    let mut q = OffsetQuant {
        codes: vec![OFFSET; m * kp],
        scales: vec![0.0; m * nb],
        block,
    };
    let lim = f32::from(LINEAR_ACT_MAX);
    let one_row = |(row, (codes, scales)): (&[f32], (&mut [u8], &mut [f32]))| {
        #[cfg(target_arch = "x86_64")]
        if isa.avx512() {
            // SAFETY: the AVX-512 path implies AVX-512F; codes hold kp ≥ k values, scales
            // one per block.
            let how = (block, LINEAR_ACT_MAX, fixed);
            return unsafe { super::avx512_quant::offset_row(row, how, codes, scales) };
        }
        for ((part, s), at) in row.chunks(block).zip(scales).zip((0..k).step_by(block)) {
            *s = fixed.unwrap_or_else(|| max_abs(isa, part) / lim);
            let inv = if *s > 0.0 { 1.0 / *s } else { 0.0 };
            offset_codes(isa, part, inv, &mut codes[at..at + part.len()]);
        }
    };
    if m >= 2 * QUANT_ROWS {
        x.par_chunks_exact(k)
            .zip(q.codes.par_chunks_exact_mut(kp))
            .zip(q.scales.par_chunks_exact_mut(nb))
            .with_min_len(QUANT_ROWS)
            .for_each(|((row, codes), scales)| one_row((row, (codes, scales))));
    } else {
        let rows = x.chunks_exact(k).zip(
            q.codes
                .chunks_exact_mut(kp)
                .zip(q.scales.chunks_exact_mut(nb)),
        );
        rows.for_each(one_row);
    }
    Ok(q)
}

/// Largest |v| of `x` (NaN ignored).
pub(super) fn max_abs(isa: Isa, x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa.avx512() {
        // SAFETY: the AVX-512 path implies AVX-512F.
        return unsafe { super::avx512_quant::max_abs(x) };
    }
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: every path above scalar implies AVX2.
        return unsafe { super::avx2_blocked::max_abs(x) };
    }
    let _ = isa;
    x.iter().fold(0f32, |a, v| a.max(v.abs()))
}

/// `codes = round_code_to(x·inv, 64) + 64`.
fn offset_codes(isa: Isa, x: &[f32], inv: f32, codes: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if isa.avx512() {
        // SAFETY: the AVX-512 path implies AVX-512F; the kernel asserts the length.
        return unsafe { super::avx512_quant::offset_codes(x, inv, LINEAR_ACT_MAX, codes) };
    }
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: every path above scalar implies AVX2; the kernel asserts the length.
        return unsafe { super::avx2_blocked::offset_codes(x, inv, codes) };
    }
    let _ = isa;
    for (c, v) in codes.iter_mut().zip(x) {
        *c = (round_code_to(v * inv, LINEAR_ACT_MAX) + LINEAR_ACT_MAX) as u8;
    }
}

impl PackedBlocked {
    /// Packs codes given by `code(j, c)` for output channel `j < n` and input `c < k`,
    /// for activations in blocks of `block` inputs (a multiple of 4, or `≥ k`: one block
    /// per row).
    pub fn pack(
        n: usize,
        k: usize,
        block: usize,
        code: impl Fn(usize, usize) -> i8,
    ) -> Result<Self> {
        if k == 0 || block == 0 || (block < k && !block.is_multiple_of(KG)) {
            return Err(Error::Data(format!(
                "int8 panels of [{n}, {k}] for activation blocks of {block} inputs (a \
                 multiple of {KG}, or the whole row)"
            )));
        }
        let block = block.min(k);
        let nb = k.div_ceil(block);
        let mut sums = vec![0i32; n.div_ceil(NR) * nb * NR];
        for j in 0..n {
            let (p, ch) = (j / NR, j % NR);
            for c in 0..k {
                sums[(p * nb + c / block) * NR + ch] -= i32::from(OFFSET) * i32::from(code(j, c));
            }
        }
        let data = panel_bytes(n, k, |j, c| code(j, c) as u8);
        Ok(PackedBlocked {
            n,
            k,
            block,
            data,
            sums,
        })
    }

    /// Codes per activation row the kernel reads: `k` rounded up to a multiple of 4.
    pub fn stride(&self) -> usize {
        self.k.div_ceil(KG) * KG
    }

    /// Panels of [`NR`] channels.
    pub fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// Scales per activation row.
    fn blocks(&self) -> usize {
        self.k.div_ceil(self.block)
    }

    /// For the tokens `i` of `rows` (written from `out` row 0, stride `ldo`) and the
    /// channels `j < n` of `panels` (column `j − NR·panels.start`):
    /// `out = (Σ_b sa[i, b]·Σ_{c ∈ block b} (u[i, c] − 64)·w[j, c])·scale[j] + bias[j]`,
    /// on the calling thread. The rows' block is the weight's; `scale`/`bias` have one
    /// value per channel of the weight. Columns of channels past `n` are left as they are.
    #[allow(clippy::too_many_arguments)]
    pub fn product(
        &self,
        isa: Isa,
        a: OffsetRows,
        rows: std::ops::Range<usize>,
        panels: std::ops::Range<usize>,
        (scale, bias): (&[f32], &[f32]),
        out: &mut [f32],
        ldo: usize,
    ) -> Result<()> {
        let isa = isa::require(isa)?;
        let sb = (scale, bias);
        let cols = self.check(a, (&rows, &panels), sb, Some((out.len(), ldo)))?;
        let j0 = panels.start * NR;
        // the kernel stores whole panels: give it the range's scales zero-padded
        let pad = |v: &[f32]| {
            let mut p = vec![0f32; panels.len() * NR];
            p[..cols].copy_from_slice(&v[j0..j0 + cols]);
            p
        };
        let (sc, bi) = (pad(scale), pad(bias));
        // SAFETY: `check` found the operands and `out` large enough for these ranges.
        unsafe {
            self.product_unchecked(isa, a, (rows, panels), (&sc, &bi), out.as_mut_ptr(), ldo)
        };
        Ok(())
    }

    /// Checks the operands of a product over `rows` × `panels` (and the output's length
    /// and stride, when given); returns the columns it writes per row.
    fn check(
        &self,
        a: OffsetRows,
        (rows, panels): (&std::ops::Range<usize>, &std::ops::Range<usize>),
        (scale, bias): (&[f32], &[f32]),
        out: Option<(usize, usize)>,
    ) -> Result<usize> {
        let (k, kp, m, nb) = (self.k, self.stride(), rows.len(), self.blocks());
        let cols = (panels.len() * NR).min(self.n.saturating_sub(panels.start * NR));
        let fits = a.block.min(k) == self.block
            && rows.start <= rows.end
            && a.codes.len() >= rows.end * kp
            && a.scales.len() >= rows.end * nb
            && scale.len() == self.n
            && bias.len() == self.n
            && out.is_none_or(|(len, ldo)| ldo >= cols && len >= m.saturating_sub(1) * ldo + cols);
        if panels.start > panels.end || panels.end > self.panels() || !fits {
            let (len, ldo) = out.unwrap_or_default();
            return Err(Error::Data(format!(
                "block-scaled int8 product of rows {rows:?} (blocks of {}) with panels \
                 {panels:?} of a [{}, {k}] weight (blocks of {}): {} codes, {} scales, {} \
                 channel scales, {} biases, output of {len} (stride {ldo})",
                a.block,
                self.n,
                self.block,
                a.codes.len(),
                a.scales.len(),
                scale.len(),
                bias.len(),
            )));
        }
        Ok(cols)
    }

    /// [`Self::product`] without checks, into `out` (stride `ldo`), with `scale`/`bias`
    /// already taken from the range's first channel and zero-padded to whole panels.
    ///
    /// # Safety
    /// [`Self::check`] passed for these operands and ranges, and `out` has room for
    /// `rows.len()` rows of stride `ldo` with the columns `check` returned, which no
    /// other thread touches during the call.
    unsafe fn product_unchecked(
        &self,
        isa: Isa,
        a: OffsetRows,
        (rows, panels): (std::ops::Range<usize>, std::ops::Range<usize>),
        (scale, bias): (&[f32], &[f32]),
        out: *mut f32,
        ldo: usize,
    ) {
        let (k, kp, m, nb) = (self.k, self.stride(), rows.len(), self.blocks());
        let cols = (panels.len() * NR).min(self.n - panels.start * NR);
        let data = &self.data[panels.start * kp * NR..panels.end * kp * NR];
        let sums = &self.sums[panels.start * nb * NR..panels.end * nb * NR];
        let (codes, sa) = (&a.codes[rows.start * kp..], &a.scales[rows.start * nb..]);
        #[cfg(target_arch = "x86_64")]
        if isa != Isa::Scalar {
            let block = if self.block >= k { kp } else { self.block };
            let (a, geo, w, sb) = (
                (codes, sa),
                (m, kp, block),
                (data, sums, cols),
                (scale, bias),
            );
            // SAFETY: every path above scalar implies AVX2 and FMA, and the VNNI kernels
            // are chosen only where AVX-512F/BW/VNNI or AVX-VNNI were detected; the caller
            // checked the lengths (rows of `kp` codes and `nb` scales, whole padded panels
            // with `nb·16` sums each, `cols` columns written per row).
            return unsafe {
                match isa::avx512_vnni(isa) {
                    true => super::avx512_blocked::product(a, geo, w, sb, out, ldo),
                    false => {
                        let vnni = isa::avx_vnni(isa);
                        super::avx2_blocked::product(a, geo, w, sb, (out, ldo), vnni)
                    }
                }
            };
        }
        let _ = isa;
        let w = |j: usize, c: usize| {
            let (p, ch) = (j / NR, j % NR);
            i32::from(data[((p * (kp / KG) + c / KG) * NR + ch) * KG + c % KG] as i8)
        };
        for r in 0..m {
            for j in 0..cols {
                let mut s = 0f32;
                for b in 0..nb {
                    let d: i32 = (b * self.block..((b + 1) * self.block).min(k))
                        .map(|c| (i32::from(codes[r * kp + c]) - i32::from(OFFSET)) * w(j, c))
                        .sum();
                    s += d as f32 * sa[r * nb + b];
                }
                // SAFETY: row r, column j < cols of the caller's output.
                unsafe { *out.add(r * ldo + j) = s * scale[j] + bias[j] };
            }
        }
    }
}

/// One packed int8 layer of a [`linear_packed`] call: one weight scale per output
/// channel (or one for all), optional bias.
#[derive(Debug, Clone, Copy)]
pub struct PackedPart<'a> {
    pub w: &'a PackedBlocked,
    pub scales: &'a [f32],
    pub bias: Option<&'a [f32]>,
}

/// Packed int8 layers reading the same quantized rows `a` (`m` rows of the weights'
/// [`PackedBlocked::stride`]): for each part, `[m, n]` with
/// `y[i, j] = Σ_b sa[i, b]·acc_b[i, j]·sw[j] + b[j]`. All parts' tiles of
/// `TOKENS_PER_TASK` tokens × `PANELS_PER_TASK` panels run in one parallel call when
/// the product is large.
pub fn linear_packed(
    isa: Isa,
    rows: OffsetRows,
    parts: &[PackedPart],
    m: usize,
) -> Result<Vec<Vec<f32>>> {
    linear_packed_then(isa, rows, parts, m, false)
}

/// [`linear_packed`], then GELU (erf form) on each task's block of the outputs where
/// `gelu`, while it is in cache: the value for value of GELU after the product.
pub fn linear_packed_then(
    isa: Isa,
    rows: OffsetRows,
    parts: &[PackedPart],
    m: usize,
    gelu: bool,
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
        // scales and biases zero-padded to whole panels (the kernel stores 16 columns)
        let mut sc = vec![0f32; p.w.panels() * NR];
        let mut bi = vec![0f32; p.w.panels() * NR];
        match p.scales.len() {
            1 => sc[..n].fill(p.scales[0]),
            _ => sc[..n].copy_from_slice(p.scales),
        }
        if let Some(b) = p.bias {
            bi[..n].copy_from_slice(b);
        }
        full.push((sc, bi));
    }
    let mut outs: Vec<Vec<f32>> = parts
        .iter()
        .map(|p| crate::ops::output_buffer(m * p.w.n))
        .collect();
    let ptrs: Vec<Ptr<f32>> = outs.iter_mut().map(|o| Ptr(o.as_mut_ptr())).collect();
    // (a task's tokens stay in L2 while the chunks of panels pass)
    let chunks: Vec<usize> = parts
        .iter()
        .map(|p| p.w.panels().div_ceil(PANELS_PER_TASK))
        .collect();
    let tasks: Vec<(usize, usize, usize)> =
        super::sibling_tasks(m.div_ceil(TOKENS_PER_TASK), &chunks)
            .into_iter()
            .map(|(p, t, c)| (p, c * PANELS_PER_TASK, t))
            .collect();
    let task = |&(p, p0, t): &(usize, usize, usize)| -> Result<()> {
        let part = &parts[p];
        let (n, panels) = (part.w.n, p0..(p0 + PANELS_PER_TASK).min(part.w.panels()));
        let tokens = t * TOKENS_PER_TASK..((t + 1) * TOKENS_PER_TASK).min(m);
        let j0 = p0 * NR;
        let (sc, bi) = (&full[p].0, &full[p].1);
        part.w
            .check(rows, (&tokens, &panels), (&sc[..n], &bi[..n]), None)?;
        let sb = (&sc[j0..], &bi[j0..]);
        // SAFETY: the operands were checked; rows `tokens` × columns j0..j0 + cols of part
        // p's `[m, n]` output belong to this task alone, and the outputs outlive the call.
        unsafe {
            let out = ptrs[p].at(tokens.start * n + j0);
            let cols = (panels.len() * NR).min(n - j0);
            part.w
                .product_unchecked(isa, rows, (tokens.clone(), panels), sb, out, n);
            if gelu {
                crate::ops::gelu::gelu_block(isa, ptrs[p], tokens, (n, j0, cols));
            }
        }
        Ok(())
    };
    let macs: usize = parts.iter().map(|p| m * p.w.n * p.w.k).sum();
    if macs >= super::PAR_MACS {
        // over the spinning team (rayon forks cost microseconds, as long as a batch-1
        // task), one contiguous share of the tasks per member
        crate::ops::team::try_shares(tasks.len(), &|i| task(&tasks[i]))?;
    } else {
        tasks.iter().try_for_each(task)?;
    }
    for (o, p) in outs.iter_mut().zip(parts) {
        // SAFETY: the tasks cover every token and every panel of each part, and each
        // writes all `cols` columns of its rows (checked above, or the call failed)
        unsafe { crate::ops::written(o, m * p.w.n) };
    }
    Ok(outs)
}

//! Int4 weights × int8 activations with an integer dot product (llama.cpp's Q4_0 × Q8_0
//! scheme on the int8 kernels' panels). The weight's nibbles stay packed — panels of
//! [`NR`] channels × 8 inputs in 64 bytes, the low nibble of byte `ch·4 + c` standing for
//! input `c` of the octet and the high nibble for input `c + 4` — so one AND and one shift
//! unpack two registers in the int8 panels' order (16 channels × 4 inputs). Activations
//! are quantized per token in blocks of [`Q8_BLOCK`] inputs to codes in [−127, 127]
//! ([`quantize_q8`]), with each block's scale and code sum. Nibbles are unsigned and at
//! most 15, so `vpdpbusd` (AVX-512 VNNI) multiplies them with the signed codes directly,
//! and on AVX2 `vpmaddubsw` pairs (≤ 2·15·127) summed over a whole block stay below 2¹⁵.
//! Per block: `y += s_a·s_w·(Σ a·n − z·Σ a)`, the zero point `z` (8 for symmetric codes)
//! taken back with the block's code sum, so no offset is applied per tile. Sibling
//! weights that read the same rows (an attention block's q, k and v) run as one job
//! ([`products`]), the rows quantized once, each team member taking one contiguous share
//! of the tasks.
//!
//! [`PackedQ4::product`] equals [`PackedQ4::product_reference`] — plain integer loops
//! and the same f32 steps — within float rounding: the block dot products are exact
//! integers on every path, only the f32 accumulation order of fused multiply-adds differs.

use super::{Ptr, NR, OCTET_BYTES};
use crate::error::{Error, Result};
use crate::isa::{self, Isa};
use crate::math::qlayout::code_at;
use crate::math::qweight::QView;

pub use super::round::Q8_MAX;
pub use super::Q8_BLOCK;
/// Tokens per parallel task.
const TOKENS_PER_TASK: usize = 64;
/// Panels per parallel task.
const PANELS_PER_TASK: usize = 4;

/// Activation rows quantized for [`PackedQ4`]: `[m, k]` codes, and per row and block of
/// [`Q8_BLOCK`] inputs the scale and the sum of the codes.
#[derive(Debug, Clone, Default)]
pub struct Q8Rows {
    pub codes: Vec<i8>,
    pub scales: Vec<f32>,
    pub sums: Vec<i32>,
    pub k: usize,
}

/// Quantizes `x` `[m, k]` (k a multiple of [`Q8_BLOCK`]): per block, `s = max|v| / 127`
/// and codes `round(v / s)` half away from zero (the scalar `round_code_to`).
pub fn quantize_q8(isa: Isa, x: &[f32], k: usize) -> Result<Q8Rows> {
    let isa = isa::require(isa)?;
    if k == 0 || !k.is_multiple_of(Q8_BLOCK) || !x.len().is_multiple_of(k) {
        return Err(Error::Data(format!(
            "int8 activations for an int4 product: {} values in rows of {k} (a multiple of \
             {Q8_BLOCK})",
            x.len()
        )));
    }
    let m = x.len() / k;
    let nb = k / Q8_BLOCK;
    let mut q = Q8Rows {
        codes: vec![0; m * k],
        scales: vec![0.0; m * nb],
        sums: vec![0; m * nb],
        k,
    };
    #[cfg(target_arch = "x86_64")]
    if isa.avx512() {
        // SAFETY: the AVX-512 paths imply AVX-512F; k (so the length) is a multiple of 32
        unsafe { super::avx512_quant::q8_blocks(x, &mut q.codes, &mut q.scales, &mut q.sums) };
        return Ok(q);
    }
    let blocks = x
        .chunks_exact(Q8_BLOCK)
        .zip(q.codes.chunks_exact_mut(Q8_BLOCK))
        .zip(q.scales.iter_mut().zip(q.sums.iter_mut()));
    for ((v, c), (s, sum)) in blocks {
        *s = super::panel_blocked::max_abs(isa, v) / f32::from(Q8_MAX);
        let inv = if *s > 0.0 { 1.0 / *s } else { 0.0 };
        super::quantize_row(isa, v, (inv, Q8_MAX), c, None);
        *sum = c.iter().map(|&c| i32::from(c)).sum();
    }
    Ok(q)
}

/// An int4 `[n, k]` weight in nibble panels with its block scales and zero points
/// rearranged per panel: `scales[p, g, ch]`, `zeros[p, g, ch]` for weight block `g` of
/// `group` inputs (padding channels: scale 0, zero 0, codes 0).
#[derive(Debug)]
pub struct PackedQ4 {
    pub n: usize,
    pub k: usize,
    pub group: usize,
    data: Vec<u8>,
    scales: Vec<f32>,
    zeros: Vec<i32>,
}

impl PackedQ4 {
    /// Packs an int4 weight.
    pub fn pack(w: &QView) -> Result<Self> {
        w.check()?;
        let bl = w.layout.block_len(w.cols);
        if w.layout.bits != 4 || !w.cols.is_multiple_of(Q8_BLOCK) || !bl.is_multiple_of(Q8_BLOCK) {
            return Err(Error::Data(format!(
                "int4 × int8 panels of a {} weight with {} inputs: int4 codes in rows and \
                 blocks that are multiples of {Q8_BLOCK}",
                w.layout.label(),
                w.cols
            )));
        }
        let (n, k, l) = (w.rows, w.cols, &w.layout);
        let (group, rb) = (l.block_len(k), l.row_bytes(k));
        let (np, ng, no) = (n.div_ceil(NR), k / group, k / 8);
        let mut data = vec![0u8; np * no * OCTET_BYTES];
        let mut scales = vec![0f32; np * ng * NR];
        let mut zeros = vec![0i32; np * ng * NR];
        for j in 0..n {
            let (p, ch) = (j / NR, j % NR);
            let row = &w.codes[j * rb..(j + 1) * rb];
            for c in 0..k {
                let (o, e) = (c / 8, c % 8);
                let byte = &mut data[(p * no + o) * OCTET_BYTES + ch * 4 + e % 4];
                *byte |= code_at(l, row, c) << if e >= 4 { 4 } else { 0 };
            }
            for g in 0..ng {
                let si = l.scale_index(j, g, k);
                scales[(p * ng + g) * NR + ch] = w.scales[si];
                zeros[(p * ng + g) * NR + ch] = w.zero(si) as i32;
            }
        }
        Ok(PackedQ4 {
            n,
            k,
            group,
            data,
            scales,
            zeros,
        })
    }

    pub fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    fn check(&self, a: &Q8Rows, rows: &std::ops::Range<usize>) -> Result<()> {
        let nb = self.k / Q8_BLOCK;
        if a.k != self.k || a.codes.len() < rows.end * self.k || a.scales.len() < rows.end * nb {
            return Err(Error::Data(format!(
                "int4 × int8 product of rows {rows:?} with a [{}, {}] weight: {} codes in \
                 rows of {}",
                self.n,
                self.k,
                a.codes.len(),
                a.k
            )));
        }
        Ok(())
    }

    /// The plain form: for rows `rows` of `a` and every channel, into `out` `[rows, n]`
    /// (bias added).
    pub fn product_reference(
        &self,
        a: &Q8Rows,
        rows: std::ops::Range<usize>,
        bias: Option<&[f32]>,
    ) -> Result<Vec<f32>> {
        self.check(a, &rows)?;
        let (n, k, no, ng) = (self.n, self.k, self.k / 8, self.k / self.group);
        let nb = k / Q8_BLOCK;
        let code = |j: usize, c: usize| {
            let (p, ch, o, e) = (j / NR, j % NR, c / 8, c % 8);
            let byte = self.data[(p * no + o) * OCTET_BYTES + ch * 4 + e % 4];
            i32::from(if e >= 4 { byte >> 4 } else { byte & 15 })
        };
        let mut out = vec![0f32; rows.len() * n];
        for (r, i) in rows.enumerate() {
            for j in 0..n {
                let (p, ch) = (j / NR, j % NR);
                let mut y = 0f32;
                for b in 0..nb {
                    let g = b * Q8_BLOCK / self.group;
                    let at = (p * ng + g) * NR + ch;
                    let d: i32 = (b * Q8_BLOCK..(b + 1) * Q8_BLOCK)
                        .map(|c| i32::from(a.codes[i * k + c]) * code(j, c))
                        .sum();
                    let d = d - self.zeros[at] * a.sums[i * nb + b];
                    y += d as f32 * (self.scales[at] * a.scales[i * nb + b]);
                }
                out[r * n + j] = y + bias.map_or(0.0, |b| b[j]);
            }
        }
        Ok(out)
    }

    /// Rows `rows` × panels `panels` into `out` (row stride `ldo`, first column
    /// `NR·panels.start`), bias `bi` padded to whole panels.
    ///
    /// # Safety
    /// `check` passed for `rows`; `out` has room for the rows' columns of these panels and
    /// no other thread writes them during the call.
    unsafe fn product_unchecked(
        &self,
        isa: Isa,
        a: &Q8Rows,
        (rows, panels): (std::ops::Range<usize>, std::ops::Range<usize>),
        bi: &[f32],
        out: *mut f32,
        ldo: usize,
    ) {
        let (k, no, ng) = (self.k, self.k / 8, self.k / self.group);
        let nb = k / Q8_BLOCK;
        let m = rows.len();
        let cols = (panels.len() * NR).min(self.n - panels.start * NR);
        let w = (
            &self.data[panels.start * no * OCTET_BYTES..panels.end * no * OCTET_BYTES],
            &self.scales[panels.start * ng * NR..panels.end * ng * NR],
            &self.zeros[panels.start * ng * NR..panels.end * ng * NR],
        );
        let x = (
            &a.codes[rows.start * k..rows.end * k],
            &a.scales[rows.start * nb..rows.end * nb],
            &a.sums[rows.start * nb..rows.end * nb],
        );
        let bias = &bi[panels.start * NR..panels.end * NR];
        let geo = (m, k, self.group / Q8_BLOCK, cols);
        #[cfg(target_arch = "x86_64")]
        if isa != Isa::Scalar {
            // SAFETY: above scalar implies AVX2 and FMA; the VNNI forms only where
            // AVX-512F/BW/VNNI or AVX-VNNI were detected. Slices hold exactly these rows and
            // panels.
            return unsafe {
                match isa::avx512_vnni(isa) {
                    true => super::avx512_q4::product(x, w, bias, geo, out, ldo),
                    false => {
                        let vnni = isa::avx_vnni(isa);
                        super::avx2_q4::product(x, w, bias, geo, (out, ldo), vnni)
                    }
                }
            };
        }
        let _ = isa;
        let code = |p: usize, ch: usize, c: usize| {
            let byte = w.0[(p * no + c / 8) * OCTET_BYTES + ch * 4 + c % 4];
            i32::from(if c % 8 >= 4 { byte >> 4 } else { byte & 15 })
        };
        for r in 0..m {
            for (jj, &bj) in bias[..cols].iter().enumerate() {
                let (p, ch) = (jj / NR, jj % NR);
                let mut y = 0f32;
                for b in 0..nb {
                    let at = (p * ng + b * Q8_BLOCK / self.group) * NR + ch;
                    let d: i32 = (b * Q8_BLOCK..(b + 1) * Q8_BLOCK)
                        .map(|c| i32::from(x.0[r * k + c]) * code(p, ch, c))
                        .sum();
                    let d = d - w.2[at] * x.2[r * nb + b];
                    y = (d as f32).mul_add(w.1[at] * x.1[r * nb + b], y);
                }
                // SAFETY: row r, column jj < cols of the caller's output.
                unsafe { *out.add(r * ldo + jj) = y + bj };
            }
        }
    }

    /// Every row of `a` against every channel: `[m, n]` with the bias added, tiles of
    /// tokens × panels in parallel when the product is large.
    pub fn product(&self, isa: Isa, a: &Q8Rows, bias: Option<&[f32]>) -> Result<Vec<f32>> {
        self.product_then(isa, a, bias, false)
    }

    /// [`Self::product`], then GELU (erf form) on each task's block of the output while
    /// it is in cache, with `gelu` (the value for value of GELU after the product).
    pub fn product_then(
        &self,
        isa: Isa,
        a: &Q8Rows,
        bias: Option<&[f32]>,
        gelu: bool,
    ) -> Result<Vec<f32>> {
        let mut ys = products(isa, a, &[Q4Part { w: self, bias }], gelu)?;
        Ok(ys.remove(0))
    }
}

/// One weight of a joined int4 × int8 product ([`products`]) and its bias.
#[derive(Clone, Copy)]
pub struct Q4Part<'a> {
    pub w: &'a PackedQ4,
    pub bias: Option<&'a [f32]>,
}

/// The same quantized rows `a` against several weights (an attention block's q, k and
/// v): one `[m, n]` output per part with its bias added, then GELU where `gelu`, in one
/// parallel job whose tasks (tokens × panels of every part) are split into one
/// contiguous share per team member.
pub fn products(isa: Isa, a: &Q8Rows, parts: &[Q4Part], gelu: bool) -> Result<Vec<Vec<f32>>> {
    let isa = isa::require(isa)?;
    let m = a.codes.len() / a.k.max(1);
    let mut outs = Vec::with_capacity(parts.len());
    let mut biases = Vec::with_capacity(parts.len());
    let mut macs = 0;
    for part in parts {
        let w = part.w;
        w.check(a, &(0..m))?;
        if part.bias.is_some_and(|b| b.len() != w.n) {
            return Err(Error::Data(format!(
                "int4 × int8 product: {} biases for {} channels",
                part.bias.map_or(0, |b| b.len()),
                w.n
            )));
        }
        let mut bi = vec![0f32; w.panels() * NR];
        if let Some(b) = part.bias {
            bi[..w.n].copy_from_slice(b);
        }
        biases.push(bi);
        // every (row, channel) is written by exactly one task (NaN-filled under test)
        outs.push(crate::ops::output_buffer(m * w.n));
        macs += m * w.n * w.k;
    }
    let chunks: Vec<usize> = parts
        .iter()
        .map(|p| p.w.panels().div_ceil(PANELS_PER_TASK))
        .collect();
    let tasks = super::sibling_tasks(m.div_ceil(TOKENS_PER_TASK), &chunks);
    let ptrs: Vec<Ptr<f32>> = outs.iter_mut().map(|o| Ptr(o.as_mut_ptr())).collect();
    let task = |&(i, t, c): &(usize, usize, usize)| {
        let (w, n, o) = (parts[i].w, parts[i].w.n, ptrs[i]);
        let rows = t * TOKENS_PER_TASK..((t + 1) * TOKENS_PER_TASK).min(m);
        let p0 = c * PANELS_PER_TASK;
        let panels = p0..(p0 + PANELS_PER_TASK).min(w.panels());
        // SAFETY: `check` passed for all rows; this task alone writes rows `rows` × the
        // columns of `panels` of part i's output, and the outputs outlive the call.
        unsafe {
            let at = o.at(rows.start * n + p0 * NR);
            let (c0, c1) = (p0 * NR, (panels.end * NR).min(n));
            w.product_unchecked(isa, a, (rows.clone(), panels), &biases[i], at, n);
            if gelu {
                crate::ops::gelu::gelu_block(isa, o, rows, (n, c0, c1 - c0));
            }
        }
    };
    if macs >= super::PAR_MACS {
        // one contiguous share of the tasks per member, as the f32 panels are split
        crate::ops::team::shares(tasks.len(), &|i| task(&tasks[i]));
    } else {
        tasks.iter().for_each(task);
    }
    for (out, part) in outs.iter_mut().zip(parts) {
        // SAFETY: the tasks cover every row and channel of each part once
        unsafe { crate::ops::written(out, m * part.w.n) };
    }
    Ok(outs)
}

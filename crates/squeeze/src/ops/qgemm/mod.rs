//! Integer and int4 kernels of the quantized linear layer, each with a plain reference.
//!
//! - [`gemm_q4`]: weight-only int4 with f32 activations: per block,
//!   `s·(Σ_k x_k·n_k − z·Σ_k x_k)`, nibbles widened to f32 in registers (AVX2: one mask, one
//!   shift, `vpmovzxbd`, `vcvtdq2ps` per 8 codes); float sums, so tested with a tolerance.
//!
//! - [`panel::PackedI8`]: int8 weights packed once into panels of 16 channels × 4 inputs,
//!   multiplied with exact i32 accumulation into channels-last `[m, n]` results (the
//!   convolution's kernel, `vpmaddubsw` on unsigned post-ReLU codes; see that module).
//! - [`panel_blocked::PackedBlocked`]: the same panels against dynamic int8 activations
//!   with one scale per 32 inputs, codes in [−64, 64] offset to unsigned bytes (the
//!   quantized Linear's kernel, `vpmaddubsw` with the offset taken back per block; see
//!   that module).
//! - [`panel_q4::PackedQ4`]: int4 weights kept as nibbles in panels of 16 channels × 8
//!   inputs against int8 activations (±127 per 32 inputs): an integer product, block
//!   scales applied per 32 inputs (llama.cpp's Q4_0 × Q8_0; see that module).
//! - [`gemm_i8_reference`]: the plain integer product both packed int8 kernels are tested
//!   against, exactly.
//!
//! All split their work over threads when the product is large. On the `avx512vnni` path
//! the packed kernels use `vpdpbusd` in tiles of several panels with codes broadcast from
//! memory. On it and on `avx2` the convolution's product reads non-negative codes in
//! place from a padded channels-last image ([`panel::PackedI8::product_implicit`]); on
//! the `amx` path (Intel's AMX-INT8 tiles)
//! the convolution's product runs on the tile unit (see `amx`), signed first-layer codes
//! included; the weight-only int4 kernel runs its AVX2 form on every path above scalar.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_blocked;
#[cfg(target_arch = "x86_64")]
mod avx2_panel;
#[cfg(target_arch = "x86_64")]
mod avx2_q4;
#[cfg(target_arch = "x86_64")]
mod avx512_blocked;
#[cfg(target_arch = "x86_64")]
mod avx512_panel;
#[cfg(target_arch = "x86_64")]
mod avx512_q4;
#[cfg(target_arch = "x86_64")]
mod avx512_quant;
pub mod bits;
#[cfg(target_arch = "x86_64")]
mod bits_avx2;
#[cfg(target_arch = "x86_64")]
mod bits_avx512;
pub mod epilogue;
pub mod panel;
pub mod panel_blocked;
pub mod panel_q4;
pub mod quantize;
mod round;

pub use quantize::quantize_row;

use rayon::prelude::*;

use super::team::Ptr;
use crate::error::{Error, Result};
use crate::isa::{self, Isa};
use crate::math::qlayout::{code_at, Layout};
pub use crate::math::qweight::QView;

/// Output channels per panel.
pub const NR: usize = 16;
/// Inputs per activation scale of the int4 × int8 product (and per integer block sum).
pub const Q8_BLOCK: usize = 32;
/// A convolution's output window over its zero-padded channels-last input, for the
/// implicit-GEMM product ([`panel::PackedI8::product_implicit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvWindow {
    /// Channels, kernel side, stride, padded input width.
    pub c: usize,
    pub k: usize,
    pub stride: usize,
    pub wp: usize,
    /// Output height and width.
    pub ho: usize,
    pub wo: usize,
}

impl ConvWindow {
    /// Readable bytes an image should have after its `(ho − 1)·stride + k` rows for the
    /// fastest implicit product (the AMX form reads whole tiles of flat positions past
    /// the last output; those bytes are never used).
    pub fn slack(&self) -> usize {
        #[cfg(target_arch = "x86_64")]
        {
            let rows = (self.ho.max(1) - 1) * self.stride + self.k;
            amx::direct_len(self).saturating_sub(rows * self.wp * self.c)
        }
        #[cfg(not(target_arch = "x86_64"))]
        0
    }

    /// Rows of output the fastest implicit product may write (at least `ho·wo`; the AMX
    /// form writes whole blocks of the padded image's flat positions).
    pub fn out_rows(&self) -> usize {
        #[cfg(target_arch = "x86_64")]
        let rows = amx::direct_rows(self);
        #[cfg(not(target_arch = "x86_64"))]
        let rows = 0;
        (self.ho * self.wo).max(rows)
    }
}

/// Where a convolution micro-kernel's tile reads its tokens' codes: token `i` = (oh, ow)
/// = (i / `wrap`, i % `wrap`) starts at `oh·row + ow·tok` from the operand's start, and
/// its inputs are `nseg` segments of `nqs` groups of 4 bytes, segment `g` at `g·seg`
/// from there. im2col rows are one segment per token, all in one "row"; the implicit
/// GEMM reads one segment per kernel row of the padded channels-last image, and a tile
/// runs on from one output row into the next.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy)]
struct Reads {
    tok: usize,
    nqs: usize,
    nseg: usize,
    seg: usize,
    wrap: usize,
    row: usize,
}

#[cfg(target_arch = "x86_64")]
impl Reads {
    /// Rows of `nq` groups at stride `lda`.
    fn rows(lda: usize, nq: usize) -> Self {
        Reads {
            tok: lda,
            nqs: nq,
            nseg: 1,
            seg: 0,
            wrap: usize::MAX,
            row: 0,
        }
    }

    /// The `ho·wo` tokens of `win` (`k·c` a multiple of 4) in the padded image.
    fn window(win: &ConvWindow) -> Self {
        Reads {
            tok: win.stride * win.c,
            nqs: win.k * win.c / 4,
            nseg: win.k,
            seg: win.wp * win.c,
            wrap: win.wo.max(1),
            row: win.stride * win.wp * win.c,
        }
    }

    /// The byte offsets of tokens `i..i + T` (one division for the tile, then steps).
    #[inline(always)]
    fn tokens<const T: usize>(&self, i: usize) -> [usize; T] {
        let (mut oh, mut ow) = (i / self.wrap, i % self.wrap);
        std::array::from_fn(|_| {
            let at = oh * self.row + ow * self.tok;
            ow += 1;
            if ow == self.wrap {
                (oh, ow) = (oh + 1, 0);
            }
            at
        })
    }
}

/// Bytes of one octet of an int4 nibble panel: 16 channels × 8 nibbles.
const OCTET_BYTES: usize = 64;

/// Multiply-accumulates below which a kernel stays on the calling thread.
const PAR_MACS: usize = 1 << 18;

/// The tasks of sibling products over the same rows, as (part, block of tokens, chunk of
/// the part's panels) for `token_blocks` blocks and each part's count of `chunks`: tokens,
/// then chunks, then parts — with q, k and v of one width, a member's contiguous share of
/// the tasks holds the same heads of all three, which the attention core then reads
/// there.
fn sibling_tasks(token_blocks: usize, chunks: &[usize]) -> Vec<(usize, usize, usize)> {
    let widest = chunks.iter().copied().max().unwrap_or(0);
    let mut tasks = Vec::with_capacity(token_blocks * chunks.iter().sum::<usize>());
    for t in 0..token_blocks {
        for c in 0..widest {
            let live = chunks.iter().enumerate().filter(|&(_, &n)| c < n);
            tasks.extend(live.map(|(p, _)| (p, t, c)));
        }
    }
    tasks
}
/// Weight rows per parallel task of the int4 kernel.
const ROWS_PER_TASK: usize = 16;

/// Reference: `acc` `[n, m]` with `acc[j, i] = Σ_k a[i, k]·w[j, k]`.
#[cfg(test)]
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
#[cfg(test)]
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
    let task = |&j0: &usize| {
        let rows = ROWS_PER_TASK.min(n - j0);
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
    let blocks: Vec<usize> = (0..n).step_by(ROWS_PER_TASK).collect();
    if m * n * k >= PAR_MACS {
        blocks.par_iter().for_each(task);
    } else {
        blocks.iter().for_each(task);
    }
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
        // SAFETY: `isa` passed isa::require and every path above scalar implies AVX2
        // and FMA; the kernel asserts its slices' lengths.
        return unsafe { avx2::q4_row(x, row, s, z, sums, m, k, bl, y) };
    }
    let _ = isa;
    let nb = k / bl;
    let l = Layout {
        bits: 4,
        scales: crate::math::qlayout::Scales::Group(bl),
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

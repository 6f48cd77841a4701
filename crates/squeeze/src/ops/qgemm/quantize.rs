//! Activation quantization for the int8 kernels. Dynamic int8 (the scheme of
//! `quantize_dynamic` in ONNX Runtime and PyTorch, here per row: one scale per token or
//! example, chosen at run time from the row's largest magnitude, in blocks of
//! [`ACT_BLOCK`]) and static int8 (one scale per layer input, chosen from calibration
//! batches by the `quantize` pass). Codes are symmetric, in [−127, 127] for the
//! convolution (whose AVX2 kernel moves signs onto the weights) and in [−64, 64] for the
//! Linear layer ([`LINEAR_ACT_MAX`]), whose kernel offsets them to unsigned bytes so that
//! `vpmaddubsw` pair sums cannot saturate. The row quantizer of the kernels is
//! [`quantize_row`], on an instruction-set path its caller names; [`round_code_to`] is its
//! scalar reference, and [`quantize_rows`], the reference form the simulated layers and
//! the tests compare with, uses only that.

pub use super::round::{round_code_to, LINEAR_ACT_MAX};
use crate::isa::Isa;

/// Inputs per scale of dynamic int8 activations: each row (token) is quantized in blocks
/// of this many consecutive values, each with its own scale — llama.cpp's Q8_0 choice,
/// which confines a transformer's outlier features to their own block.
pub const ACT_BLOCK: usize = 32;

/// Rows of activations quantized to int8: codes, their magnitudes (the kernel's unsigned
/// operand) and the scales, one per `block` consecutive values of a row (`block` = the
/// row length: one scale per row).
#[derive(Debug, Clone, Default)]
pub struct QRows {
    pub codes: Vec<i8>,
    pub abs: Vec<u8>,
    /// `[m, blocks]` row-major, `blocks = ceil(k / block)`.
    pub scales: Vec<f32>,
    pub block: usize,
}

impl QRows {
    /// Scales per row.
    pub fn blocks(&self, k: usize) -> usize {
        k.div_ceil(self.block.max(1))
    }
    /// The value code `j` of row `i` stands for.
    pub fn value(&self, i: usize, j: usize, k: usize) -> f32 {
        self.codes[i * k + j] as f32 * self.scales[i * self.blocks(k) + j / self.block]
    }
}

/// Quantizes `x` `[m, k]` to codes in [−lim, lim]: with a static scale, every value by it
/// (values beyond ±lim·s are clipped; one scale per row); dynamically, every `block`
/// consecutive values of a row by `max|block| / lim` (`block` ≥ k: one scale per row).
/// The reference form: scalar [`round_code_to`] only, whatever the CPU.
pub fn quantize_rows(x: &[f32], k: usize, fixed: Option<f32>, block: usize, lim: i8) -> QRows {
    let m = x.len() / k.max(1);
    let block = if fixed.is_some() {
        k
    } else {
        block.clamp(1, k.max(1))
    };
    let nb = k.div_ceil(block.max(1));
    let mut q = QRows {
        codes: vec![0; m * k],
        abs: vec![0; m * k],
        scales: vec![0.0; m * nb],
        block,
    };
    for (i, row) in x.chunks_exact(k).enumerate() {
        for (b, part) in row.chunks(block.max(1)).enumerate() {
            let s = fixed
                .unwrap_or_else(|| part.iter().fold(0f32, |a, v| a.max(v.abs())) / f32::from(lim));
            q.scales[i * nb + b] = s;
            let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
            let at = i * k + b * block;
            let (c, a) = (
                &mut q.codes[at..][..part.len()],
                &mut q.abs[at..][..part.len()],
            );
            for ((c, a), v) in c.iter_mut().zip(a.iter_mut()).zip(part) {
                *c = round_code_to(v * inv, lim);
                *a = c.unsigned_abs();
            }
        }
    }
    q
}

/// Quantizes one row on path `isa`: codes = round(x·inv) half away from zero, clamped to
/// ±lim, and their magnitudes when `abs` is given (the AVX2 and AVX-512 kernels equal the
/// scalar [`round_code_to`] exactly).
pub fn quantize_row(
    isa: Isa,
    x: &[f32],
    (inv, lim): (f32, i8),
    codes: &mut [i8],
    mut abs: Option<&mut [u8]>,
) {
    #[cfg(target_arch = "x86_64")]
    if isa.avx512() && isa.is_supported() {
        // SAFETY: the path's AVX-512F was detected; the kernel asserts the lengths.
        return unsafe { super::avx512_quant::quantize_row(x, (inv, lim), codes, abs) };
    }
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar && isa.is_supported() {
        // SAFETY: a supported path above scalar implies AVX2; the kernel asserts the
        // lengths.
        return unsafe { super::avx2::quantize_row(x, (inv, lim), codes, abs) };
    }
    let _ = isa;
    for (j, (c, v)) in codes.iter_mut().zip(x).enumerate() {
        *c = round_code_to(v * inv, lim);
        if let Some(a) = abs.as_deref_mut() {
            a[j] = c.unsigned_abs();
        }
    }
}

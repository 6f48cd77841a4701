//! AVX-512 forms of the activation quantizers and of the convolution's requantizing
//! epilogue, 16 values per step where the AVX2 forms (`avx2.rs`, `avx2_blocked.rs`) take
//! 8: the same arithmetic in the same order — `round(x·inv)` half away from zero as
//! `trunc(v + ±0.5)` after clamping to ±lim (NaN → lim, as the scalar min/max give), the
//! rescale as a product then a sum — so every path gives the scalar codes exactly.

use std::arch::x86_64::*;

use super::round::{round_code_to, Q8_MAX};

/// Sixteen codes `round(x·inv)` clamped to ±lim, as i32.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn codes16(x: __m512, iv: __m512, lim: __m512) -> __m512i {
    let v = _mm512_mul_ps(x, iv);
    let v = _mm512_max_ps(
        _mm512_min_ps(v, lim),
        _mm512_sub_ps(_mm512_setzero_ps(), lim),
    );
    // ±0.5 with v's sign (integer AND/OR: AVX-512F has no float forms without DQ)
    let sign = _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(i32::MIN));
    let h = _mm512_castsi512_ps(_mm512_or_si512(
        sign,
        _mm512_castps_si512(_mm512_set1_ps(0.5)),
    ));
    _mm512_cvttps_epi32(_mm512_add_ps(v, h))
}

/// `super::avx2::quantize_row` on 16 values per step.
///
/// # Safety
/// AVX-512F is available; `codes` (and `abs`) hold at least `x.len()` values.
#[target_feature(enable = "avx512f")]
pub unsafe fn quantize_row(
    x: &[f32],
    (inv, lim): (f32, i8),
    codes: &mut [i8],
    mut abs: Option<&mut [u8]>,
) {
    assert!(codes.len() >= x.len() && abs.as_ref().is_none_or(|a| a.len() >= x.len()));
    let full = x.len() / 16 * 16;
    let (iv, lv) = (_mm512_set1_ps(inv), _mm512_set1_ps(f32::from(lim)));
    for c in (0..full).step_by(16) {
        let q = codes16(_mm512_loadu_ps(x.as_ptr().add(c)), iv, lv);
        _mm_storeu_si128(
            codes.as_mut_ptr().add(c) as *mut __m128i,
            _mm512_cvtepi32_epi8(q),
        );
        if let Some(a) = abs.as_deref_mut() {
            let m = _mm512_cvtepi32_epi8(_mm512_abs_epi32(q));
            _mm_storeu_si128(a.as_mut_ptr().add(c) as *mut __m128i, m);
        }
    }
    for j in full..x.len() {
        let q = round_code_to(x[j] * inv, lim);
        codes[j] = q;
        if let Some(a) = abs.as_deref_mut() {
            a[j] = q.unsigned_abs();
        }
    }
}

/// `super::avx2_blocked::offset_codes` on 16 values per step, for codes in ±`lim`
/// offset by `lim` (the Linear's ±64).
///
/// # Safety
/// AVX-512F is available; `codes` holds at least `x.len()` values.
#[target_feature(enable = "avx512f")]
pub unsafe fn offset_codes(x: &[f32], inv: f32, lim: i8, codes: &mut [u8]) {
    assert!(codes.len() >= x.len());
    let full = x.len() / 16 * 16;
    let iv = _mm512_set1_ps(inv);
    let (lv, off) = (
        _mm512_set1_ps(f32::from(lim)),
        _mm512_set1_epi32(i32::from(lim)),
    );
    for c in (0..full).step_by(16) {
        let q = _mm512_add_epi32(codes16(_mm512_loadu_ps(x.as_ptr().add(c)), iv, lv), off);
        _mm_storeu_si128(
            codes.as_mut_ptr().add(c) as *mut __m128i,
            _mm512_cvtepi32_epi8(q),
        );
    }
    for j in full..x.len() {
        codes[j] = (round_code_to(x[j] * inv, lim) + lim) as u8;
    }
}

/// One row of the quantized Linear's activations in a single call: per block of `block`
/// inputs the scale `fixed` or `max|block| / lim` (into `scales`) and the codes offset by
/// `lim` (into `codes`) — [`max_abs`] then [`offset_codes`] block by block, with the same
/// values, but whole blocks of a multiple of 16 inputs take the range as a register max
/// and a tree reduction (a max is exact in any order, and a NaN input never enters it),
/// instead of two calls and a 16-lane scalar fold per block.
///
/// # Safety
/// AVX-512F is available; `codes` holds `x.len()` values and `scales` one per block.
#[target_feature(enable = "avx512f")]
pub unsafe fn offset_row(
    x: &[f32],
    (block, lim, fixed): (usize, i8, Option<f32>),
    codes: &mut [u8],
    scales: &mut [f32],
) {
    assert!(block > 0 && codes.len() >= x.len() && scales.len() >= x.len().div_ceil(block));
    let limf = f32::from(lim);
    let (lv, off) = (_mm512_set1_ps(limf), _mm512_set1_epi32(i32::from(lim)));
    for (b, at) in (0..x.len()).step_by(block).enumerate() {
        let part = &x[at..(at + block).min(x.len())];
        if !part.len().is_multiple_of(16) {
            let s = fixed.unwrap_or_else(|| max_abs(part) / limf);
            scales[b] = s;
            offset_codes(
                part,
                if s > 0.0 { 1.0 / s } else { 0.0 },
                lim,
                &mut codes[at..],
            );
            continue;
        }
        let s = fixed.unwrap_or_else(|| {
            let mut acc = _mm512_setzero_ps();
            for c in (0..part.len()).step_by(16) {
                let v = _mm512_abs_ps(_mm512_loadu_ps(part.as_ptr().add(c)));
                acc = _mm512_max_ps(v, acc); // a NaN `v` yields `acc`
            }
            _mm512_reduce_max_ps(acc) / limf
        });
        scales[b] = s;
        let iv = _mm512_set1_ps(if s > 0.0 { 1.0 / s } else { 0.0 });
        for c in (0..part.len()).step_by(16) {
            let q = _mm512_add_epi32(codes16(_mm512_loadu_ps(part.as_ptr().add(c)), iv, lv), off);
            _mm_storeu_si128(
                codes.as_mut_ptr().add(at + c) as *mut __m128i,
                _mm512_cvtepi32_epi8(q),
            );
        }
    }
}

const _: () = assert!(super::Q8_BLOCK == 32, "q8_blocks reads blocks of 32 values");

/// Int8 activations for the int4 product in one pass (`super::panel_q4::quantize_q8`'s
/// codes, scales and code sums, bit for bit): per block of 32 values the range in
/// registers, `s = max|v| / 127`, the codes rounded half away from zero, and their sum —
/// instead of two dispatched calls and a scalar sum per block.
///
/// # Safety
/// AVX-512F is available; `x.len()` is a multiple of 32, `codes` holds as many values and
/// `scales` and `sums` one per block.
#[target_feature(enable = "avx512f")]
pub unsafe fn q8_blocks(x: &[f32], codes: &mut [i8], scales: &mut [f32], sums: &mut [i32]) {
    let blocks = x.len() / 32;
    assert!(x.len() == blocks * 32 && codes.len() >= x.len());
    assert!(scales.len() >= blocks && sums.len() >= blocks);
    let lim = f32::from(Q8_MAX);
    let lv = _mm512_set1_ps(lim);
    for b in 0..blocks {
        let (v0, v1) = (
            _mm512_loadu_ps(x.as_ptr().add(32 * b)),
            _mm512_loadu_ps(x.as_ptr().add(32 * b + 16)),
        );
        // as `max_abs`: a NaN lane yields the running maximum
        let acc = _mm512_max_ps(_mm512_abs_ps(v0), _mm512_setzero_ps());
        let acc = _mm512_max_ps(_mm512_abs_ps(v1), acc);
        let s = _mm512_reduce_max_ps(acc) / lim;
        scales[b] = s;
        let iv = _mm512_set1_ps(if s > 0.0 { 1.0 / s } else { 0.0 });
        let (q0, q1) = (codes16(v0, iv, lv), codes16(v1, iv, lv));
        let at = codes.as_mut_ptr().add(32 * b) as *mut __m128i;
        _mm_storeu_si128(at, _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128(at.add(1), _mm512_cvtepi32_epi8(q1));
        sums[b] = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    }
}

/// `super::avx2_blocked::max_abs` on 16 values per step (NaN ignored).
///
/// # Safety
/// AVX-512F is available.
#[target_feature(enable = "avx512f")]
pub unsafe fn max_abs(x: &[f32]) -> f32 {
    let full = x.len() / 16 * 16;
    let mut acc = _mm512_setzero_ps();
    for c in (0..full).step_by(16) {
        let v = _mm512_abs_ps(_mm512_loadu_ps(x.as_ptr().add(c)));
        acc = _mm512_max_ps(v, acc); // a NaN `v` yields `acc`
    }
    let mut lanes = [0f32; 16];
    _mm512_storeu_ps(lanes.as_mut_ptr(), acc);
    lanes
        .iter()
        .chain(&x[full..])
        .fold(0f32, |a, v| a.max(v.abs()))
}

/// Where a requantizing call reads its products (see [`requantize_rows`]).
#[derive(Clone, Copy)]
pub struct Source<'a> {
    pub acc: &'a [i32],
    /// Output pixels (pooled ones with a pool).
    pub n: usize,
    /// The output's width (pooled), the products' row pitch and row stride.
    pub geo: (usize, usize, usize),
    /// A max-pool before the rescale: window, stride, and per channel 0 or `!0` (an order
    /// reversed by a negative factor, as `epilogue::pool_rows` takes it).
    pub pool: Option<(usize, usize, &'a [i32])>,
}

/// `super::avx2::requantize` on 16 channels per step, over `src.n` output pixels, each
/// `scale.len()` channels wide, the last ones under a mask, to `out[r·ldout]`. Pixel `r`
/// reads row `(r / wo)·pitch + r % wo` of `acc` (stride `ldo`); with a pool, the max of
/// the `k × k` window whose first row is `(r / wo)·s·pitch + (r % wo)·s`, taken in
/// registers (so pooled products are never stored). Channel block by channel block, its
/// factors held in registers for every pixel.
///
/// # Safety
/// AVX-512F is available; every pixel's `scale.len()` products (its whole window with a
/// pool) and codes are in bounds; a pool's flips are `scale.len()` long.
#[target_feature(enable = "avx512f")]
pub unsafe fn requantize_rows(
    src: Source,
    sb: (&[f32], &[f32]),
    relu: bool,
    q: (f32, i8, i8, i8),
    o: (&mut [u8], usize),
) {
    match src.pool.is_some() {
        true => rows_loop::<true>(src, sb, relu, q, o),
        false => rows_loop::<false>(src, sb, relu, q, o),
    }
}

/// [`requantize_rows`]' loops, with a pool or without.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn rows_loop<const POOL: bool>(
    src: Source,
    (scale, bias): (&[f32], &[f32]),
    relu: bool,
    (inv, lim, lo, hi): (f32, i8, i8, i8),
    (out, ldout): (&mut [u8], usize),
) {
    let w = scale.len();
    let (wo, pitch, ldo) = src.geo;
    let (k, s, flip) = src.pool.unwrap_or((1, 1, &[]));
    // the code range is ±lim unless the reader's is narrower: then a second clamp
    let narrow = i32::from(lo) != -i32::from(lim) || hi != lim;
    let (iv, l) = (_mm512_set1_ps(inv), _mm512_set1_ps(f32::from(lim)));
    let (lo, hi) = (
        _mm512_set1_epi32(i32::from(lo)),
        _mm512_set1_epi32(i32::from(hi)),
    );
    let zero = _mm512_setzero_ps();
    let (sp, bp, op) = (scale.as_ptr(), bias.as_ptr(), out.as_mut_ptr());
    for j in (0..w).step_by(16) {
        let m: __mmask16 = if w - j >= 16 {
            !0
        } else {
            (1u16 << (w - j)) - 1
        };
        let (sc, bi) = (
            _mm512_maskz_loadu_ps(m, sp.add(j)),
            _mm512_maskz_loadu_ps(m, bp.add(j)),
        );
        let f = match POOL {
            true => _mm512_maskz_loadu_epi32(m, flip.as_ptr().add(j)),
            false => _mm512_setzero_si512(),
        };
        let (mut row, mut x) = (0, 0); // pixel r's (first) row in acc, and its column
        for r in 0..src.n {
            let a = src.acc.as_ptr().add(row * ldo + j);
            (row, x) = match (x + 1 == wo, POOL) {
                (true, false) => (row + 1 + pitch - wo, 0),
                (true, true) => (row - x * s + s * pitch, 0),
                (false, _) => (row + s, x + 1),
            };
            let acc = match POOL {
                true => window_max(a, m, (k, pitch * ldo, ldo), f),
                false => _mm512_maskz_loadu_epi32(m, a),
            };
            let v = _mm512_cvtepi32_ps(acc);
            // a product, then a sum: the rescale's rounding
            let v = _mm512_add_ps(_mm512_mul_ps(v, sc), bi);
            let v = if relu { _mm512_max_ps(v, zero) } else { v };
            let c = codes16(v, iv, l);
            let c = match narrow {
                true => _mm512_min_epi32(_mm512_max_epi32(c, lo), hi),
                false => c,
            };
            _mm512_mask_cvtepi32_storeu_epi8(op.add(r * ldout + j) as *mut i8, m, c);
        }
    }
}

/// The max over a `k × k` window (rows `row` apart, columns `col`) of the 16 channels at
/// `a`, each channel's order reversed where its flip in `f` is `!0` (the max of the
/// bitwise NOTs, NOT-ed back: the min).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn window_max(
    a: *const i32,
    m: __mmask16,
    (k, row, col): (usize, usize, usize),
    f: __m512i,
) -> __m512i {
    let mut best = _mm512_xor_si512(_mm512_maskz_loadu_epi32(m, a), f);
    for dy in 0..k {
        for dx in 0..k {
            if dy + dx > 0 {
                let v = _mm512_maskz_loadu_epi32(m, a.add(dy * row + dx * col));
                best = _mm512_max_epi32(best, _mm512_xor_si512(v, f));
            }
        }
    }
    _mm512_xor_si512(best, f)
}

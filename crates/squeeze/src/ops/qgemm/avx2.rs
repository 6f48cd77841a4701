//! AVX2 kernels of the row quantizer [`super::quantize::quantize_row`], of the
//! convolution's requantizing epilogue [`super::epilogue::requantize_row`] and of
//! [`super::gemm_q4`].

use std::arch::x86_64::*;

/// Sum of 8 f32 lanes.
#[target_feature(enable = "avx2")]
unsafe fn hsum_f32(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
    _mm_cvtss_f32(s)
}

/// Eight codes `round(x·inv)` half away from zero, clamped to ±lim (≤ 127), as i16 — the
/// scalar `round_code_to` exactly (NaN → lim, as its min/max give).
#[target_feature(enable = "avx2")]
pub(super) unsafe fn codes8(x: __m256, iv: __m256, lim: __m256) -> __m128i {
    let v = _mm256_mul_ps(x, iv);
    let v = _mm256_max_ps(
        _mm256_min_ps(v, lim),
        _mm256_sub_ps(_mm256_setzero_ps(), lim),
    );
    let h = _mm256_or_ps(_mm256_set1_ps(0.5), _mm256_and_ps(v, _mm256_set1_ps(-0.0))); // ±0.5 with v's sign
    let q = _mm256_cvttps_epi32(_mm256_add_ps(v, h)); // 8 × i32 in [−lim, lim]
    _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q))
}

/// Row quantization (see [`super::quantize::quantize_rows`]): codes = round(x·inv)
/// half away from zero, clamped to ±lim, and their magnitudes when `abs` is given; 8
/// values per step.
#[target_feature(enable = "avx2")]
pub unsafe fn quantize_row(
    x: &[f32],
    (inv, lim): (f32, i8),
    codes: &mut [i8],
    mut abs: Option<&mut [u8]>,
) {
    assert!(codes.len() >= x.len() && abs.as_ref().is_none_or(|a| a.len() >= x.len()));
    let full = x.len() / 8 * 8;
    let (iv, lv) = (_mm256_set1_ps(inv), _mm256_set1_ps(f32::from(lim)));
    let mut c = 0;
    while c < full {
        let q16 = codes8(_mm256_loadu_ps(x.as_ptr().add(c)), iv, lv);
        let q8 = _mm_packs_epi16(q16, q16); // low 8 bytes
        _mm_storel_epi64(codes.as_mut_ptr().add(c) as *mut __m128i, q8);
        if let Some(a) = abs.as_deref_mut() {
            _mm_storel_epi64(a.as_mut_ptr().add(c) as *mut __m128i, _mm_abs_epi8(q8));
        }
        c += 8;
    }
    for j in full..x.len() {
        let q = super::round::round_code_to(x[j] * inv, lim);
        codes[j] = q;
        if let Some(a) = abs.as_deref_mut() {
            a[j] = q.unsigned_abs();
        }
    }
}

/// One int4 weight row against `m` tokens: `y[i] = Σ_b s_b·(Σ x·n − z_b·sums[i, b])`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn q4_row(
    x: &[f32],
    row: &[u8],
    s: &[f32],
    z: &[f32],
    sums: &[f32],
    m: usize,
    k: usize,
    bl: usize,
    y: &mut [f32],
) {
    let nb = k / bl;
    assert!(x.len() >= m * k && row.len() * 2 >= k && s.len() >= nb && z.len() >= nb);
    assert!(sums.len() >= m * nb && y.len() >= m && bl.is_multiple_of(32));
    let mut i = 0;
    while i < m {
        let t = (m - i).min(4);
        match t {
            4 => q4_tile::<4>(x, row, s, z, sums, k, bl, i, y),
            _ => q4_tile::<1>(x, row, s, z, sums, k, bl, i, y),
        }
        i += if t == 4 { 4 } else { 1 };
    }
}

/// The 32 codes of a 16-byte chunk widened to f32, in element order.
#[target_feature(enable = "avx2")]
unsafe fn unpack32(p: *const u8) -> [__m256; 4] {
    let b = _mm_loadu_si128(p as *const __m128i);
    let mask = _mm_set1_epi8(15);
    let lo = _mm_and_si128(b, mask);
    let hi = _mm_and_si128(_mm_srli_epi16::<4>(b), mask);
    let f = |v: __m128i| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
    [
        f(lo),
        f(_mm_srli_si128::<8>(lo)),
        f(hi),
        f(_mm_srli_si128::<8>(hi)),
    ]
}

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn q4_tile<const T: usize>(
    x: &[f32],
    row: &[u8],
    s: &[f32],
    z: &[f32],
    sums: &[f32],
    k: usize,
    bl: usize,
    i0: usize,
    y: &mut [f32],
) {
    let nb = k / bl;
    let mut tot = [_mm256_setzero_ps(); T];
    let mut zterm = [0f32; T];
    let xp = x.as_ptr().add(i0 * k);
    for b in 0..nb {
        let mut acc = [_mm256_setzero_ps(); T];
        for c in (b * bl..(b + 1) * bl).step_by(32) {
            let wv = unpack32(row.as_ptr().add(c / 2));
            for (t, a) in acc.iter_mut().enumerate() {
                let xt = xp.add(t * k + c);
                for (q, v) in wv.iter().enumerate() {
                    *a = _mm256_fmadd_ps(*v, _mm256_loadu_ps(xt.add(8 * q)), *a);
                }
            }
        }
        let sv = _mm256_set1_ps(s[b]);
        for t in 0..T {
            tot[t] = _mm256_fmadd_ps(acc[t], sv, tot[t]);
            zterm[t] += s[b] * z[b] * sums[(i0 + t) * nb + b];
        }
    }
    for t in 0..T {
        y[i0 + t] = hsum_f32(tot[t]) - zterm[t];
    }
}

/// [`super::epilogue::requantize_row`] on whole groups of 8 channels (`out.len()` of them).
///
/// # Safety
/// AVX2 is available; `acc`, `scale` and `bias` hold at least `out.len()` values, a
/// multiple of 8.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn requantize(
    acc: &[i32],
    (scale, bias): (&[f32], &[f32]),
    relu: bool,
    (inv, lim, lo, hi): (f32, i8, i8, i8),
    out: &mut [u8],
) {
    let n = out.len();
    assert!(n.is_multiple_of(8) && acc.len() >= n && scale.len() >= n && bias.len() >= n);
    let (iv, l) = (_mm256_set1_ps(inv), _mm256_set1_ps(f32::from(lim)));
    let (lo, hi) = (_mm_set1_epi16(i16::from(lo)), _mm_set1_epi16(i16::from(hi)));
    let zero = _mm256_setzero_ps();
    for j in (0..n).step_by(8) {
        let a = _mm256_cvtepi32_ps(_mm256_loadu_si256(acc.as_ptr().add(j) as *const __m256i));
        // a product, then a sum: the rescale's rounding
        let v = _mm256_add_ps(
            _mm256_mul_ps(a, _mm256_loadu_ps(scale.as_ptr().add(j))),
            _mm256_loadu_ps(bias.as_ptr().add(j)),
        );
        let v = if relu { _mm256_max_ps(v, zero) } else { v };
        let c = _mm_min_epi16(_mm_max_epi16(codes8(v, iv, l), lo), hi);
        _mm_storel_epi64(
            out.as_mut_ptr().add(j) as *mut __m128i,
            _mm_packs_epi16(c, c),
        );
    }
}

//! The AVX2 + FMA micro-kernels of the weight-streaming linear ([`super::linear`]): up to
//! 4 weight rows × 2 tokens per tile (AVX2 has 16 vector registers), scalar tails.

use std::arch::x86_64::*;

/// Up to 4 weight rows × tokens in pairs: 8 accumulators of 8 lanes (AVX2 has 16
/// vector registers; 4 weight and 1 token vector live beside them).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_block(
    x: &[f32],
    w: &[f32],
    next: &[f32],
    m: usize,
    k: usize,
    rows: usize,
    out: &mut [f32],
) {
    let mut i0 = 0;
    while i0 < m {
        let toks = (m - i0).min(2);
        let pf = if i0 == 0 { next } else { &[] };
        match (rows, toks) {
            (4, 2) => tile::<4, 2>(x, w, pf, m, k, i0, out),
            (4, 1) => tile::<4, 1>(x, w, pf, m, k, i0, out),
            (r, t) => super::dot_tokens(x, w, m, k, r, i0..i0 + t, out),
        }
        i0 += toks;
    }
}

/// Sum of the 8 lanes.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
    _mm_cvtss_f32(s)
}

#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const R: usize, const T: usize>(
    x: &[f32],
    w: &[f32],
    next: &[f32],
    m: usize,
    k: usize,
    i0: usize,
    out: &mut [f32],
) {
    assert!(w.len() >= R * k && x.len() >= (i0 + T) * k && out.len() >= R * m);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let full = k / 8 * 8;
    let (wp, xp) = (w.as_ptr(), x.as_ptr().add(i0 * k));
    let mut c = 0;
    while c < full {
        if c % 16 == 0 {
            for r in 0..R {
                let at = r * k + c;
                if at < next.len() {
                    _mm_prefetch::<_MM_HINT_T0>(next.as_ptr().add(at) as *const i8);
                }
            }
        }
        let mut wv = [_mm256_setzero_ps(); R];
        for (r, v) in wv.iter_mut().enumerate() {
            *v = _mm256_loadu_ps(wp.add(r * k + c));
        }
        for t in 0..T {
            let xv = _mm256_loadu_ps(xp.add(t * k + c));
            for (row, wr) in acc.iter_mut().zip(&wv) {
                row[t] = _mm256_fmadd_ps(*wr, xv, row[t]);
            }
        }
        c += 8;
    }
    for r in 0..R {
        for t in 0..T {
            let mut s = hsum(acc[r][t]);
            for cc in full..k {
                s += *wp.add(r * k + cc) * *xp.add(t * k + cc);
            }
            out[r * m + i0 + t] = s;
        }
    }
}

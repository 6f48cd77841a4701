//! AVX2 micro-kernels of [`super::gemm_i8`] and [`super::gemm_q4`].

use std::arch::x86_64::*;

/// Sum of 8 i32 lanes.
#[target_feature(enable = "avx2")]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s));
    _mm_cvtsi128_si32(s)
}

/// Sum of 8 f32 lanes.
#[target_feature(enable = "avx2")]
unsafe fn hsum_f32(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
    _mm_cvtss_f32(s)
}

/// out[r·m + i] = Σ_k a[i, k]·w[r, k] for all `rows` weight rows and `m` tokens;
/// `signed`: whether any activation is negative.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
pub unsafe fn i8_rows(
    a: &[i8],
    abs: &[u8],
    w: &[u8],
    m: usize,
    k: usize,
    rows: usize,
    signed: bool,
    out: &mut [i32],
) {
    assert!(a.len() >= m * k && abs.len() >= m * k && w.len() >= rows * k);
    assert!(out.len() >= rows * m);
    // token tiles outer, the block's weight rows (a few KB, L1-resident) inner: the
    // activations stream once per block. Non-negative activations (after a ReLU) are
    // their own magnitudes: no sign transfer needed.
    if !signed {
        return i8_rows_as::<false>(a, abs, w, m, k, rows, out);
    }
    i8_rows_as::<true>(a, abs, w, m, k, rows, out)
}

#[target_feature(enable = "avx2")]
unsafe fn i8_rows_as<const SIGNED: bool>(
    a: &[i8],
    abs: &[u8],
    w: &[u8],
    m: usize,
    k: usize,
    rows: usize,
    out: &mut [i32],
) {
    let mut i = 0;
    while i < m {
        let t = (m - i).min(4);
        let mut r = 0;
        while r < rows {
            let rr = (rows - r).min(2);
            match (rr, t) {
                (2, 4) => i8_tile::<2, 4, SIGNED>(a, abs, w, m, k, r, i, out),
                (2, _) => i8_tile::<2, 1, SIGNED>(a, abs, w, m, k, r, i, out),
                (_, 4) => i8_tile::<1, 4, SIGNED>(a, abs, w, m, k, r, i, out),
                _ => i8_tile::<1, 1, SIGNED>(a, abs, w, m, k, r, i, out),
            }
            r += rr;
        }
        i += if t == 4 { 4 } else { 1 };
    }
}

/// R weight rows (from row `r0`) × T tokens (from token `i0`).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
unsafe fn i8_tile<const R: usize, const T: usize, const SIGNED: bool>(
    a: &[i8],
    abs: &[u8],
    w: &[u8],
    m: usize,
    k: usize,
    r0: usize,
    i0: usize,
    out: &mut [i32],
) {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_si256(); T]; R];
    let full = k / 32 * 32;
    let (wp, ap, bp) = (
        w.as_ptr().add(r0 * k),
        a.as_ptr().add(i0 * k),
        abs.as_ptr().add(i0 * k),
    );
    let mut c = 0;
    while c < full {
        let mut wv = [_mm256_setzero_si256(); R];
        for (r, v) in wv.iter_mut().enumerate() {
            *v = _mm256_loadu_si256(wp.add(r * k + c) as *const __m256i);
        }
        for t in 0..T {
            let bv = _mm256_loadu_si256(bp.add(t * k + c) as *const __m256i);
            if SIGNED {
                let av = _mm256_loadu_si256(ap.add(t * k + c) as *const __m256i);
                for (row, wr) in acc.iter_mut().zip(&wv) {
                    // |a| (unsigned, ≤ 127) × sign(a)·w (signed): pair sums stay in i16
                    let p = _mm256_maddubs_epi16(bv, _mm256_sign_epi8(*wr, av));
                    row[t] = _mm256_add_epi32(row[t], _mm256_madd_epi16(p, ones));
                }
            } else {
                for (row, wr) in acc.iter_mut().zip(&wv) {
                    // a = |a| ≤ 127 times w: pair sums stay in i16
                    let p = _mm256_maddubs_epi16(bv, *wr);
                    row[t] = _mm256_add_epi32(row[t], _mm256_madd_epi16(p, ones));
                }
            }
        }
        c += 32;
    }
    for r in 0..R {
        for t in 0..T {
            let mut s = hsum_i32(acc[r][t]);
            for cc in full..k {
                s += *ap.add(t * k + cc) as i32 * *wp.add(r * k + cc) as i8 as i32;
            }
            out[(r0 + r) * m + i0 + t] = s;
        }
    }
}

/// out[r·m + i] = Σ_b sa[i, b]·Σ_{k ∈ block b} a[i, k]·w[r, k] for activations scaled per
/// block of 32 (`sa` `[m, ceil(k/32)]`); the block sums are exact, their scaled sum f32.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn i8_rows_blocked(
    a: &[i8],
    abs: &[u8],
    sa: &[f32],
    w: &[u8],
    (m, k, rows): (usize, usize, usize),
    signed: bool,
    out: &mut [f32],
) {
    let nb = k.div_ceil(32);
    assert!(a.len() >= m * k && abs.len() >= m * k && w.len() >= rows * k);
    assert!(sa.len() >= m * nb && out.len() >= rows * m);
    let mut i = 0;
    while i < m {
        let t = (m - i).min(4);
        let mut r = 0;
        while r < rows {
            let rr = (rows - r).min(2);
            let at = (r, i);
            match (rr, t, signed) {
                (2, 4, true) => blocked_tile::<2, 4, true>(a, abs, sa, w, (m, k), at, out),
                (2, 4, false) => blocked_tile::<2, 4, false>(a, abs, sa, w, (m, k), at, out),
                (2, _, _) => blocked_tile::<2, 1, true>(a, abs, sa, w, (m, k), at, out),
                (_, 4, _) => blocked_tile::<1, 4, true>(a, abs, sa, w, (m, k), at, out),
                _ => blocked_tile::<1, 1, true>(a, abs, sa, w, (m, k), at, out),
            }
            r += rr;
        }
        i += if t == 4 { 4 } else { 1 };
    }
}

/// R weight rows × T tokens of [`i8_rows_blocked`], from (row r0, token i0).
#[target_feature(enable = "avx2,fma")]
unsafe fn blocked_tile<const R: usize, const T: usize, const SIGNED: bool>(
    a: &[i8],
    abs: &[u8],
    sa: &[f32],
    w: &[u8],
    (m, k): (usize, usize),
    (r0, i0): (usize, usize),
    out: &mut [f32],
) {
    let nb = k.div_ceil(32);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let full = k / 32 * 32;
    let (wp, ap, bp) = (
        w.as_ptr().add(r0 * k),
        a.as_ptr().add(i0 * k),
        abs.as_ptr().add(i0 * k),
    );
    let sp = sa.as_ptr().add(i0 * nb);
    let mut c = 0;
    while c < full {
        let blk = c / 32;
        let mut wv = [_mm256_setzero_si256(); R];
        for (r, v) in wv.iter_mut().enumerate() {
            *v = _mm256_loadu_si256(wp.add(r * k + c) as *const __m256i);
        }
        for t in 0..T {
            let bv = _mm256_loadu_si256(bp.add(t * k + c) as *const __m256i);
            let st = _mm256_set1_ps(*sp.add(t * nb + blk));
            if SIGNED {
                let av = _mm256_loadu_si256(ap.add(t * k + c) as *const __m256i);
                for (row, wr) in acc.iter_mut().zip(&wv) {
                    let p = _mm256_maddubs_epi16(bv, _mm256_sign_epi8(*wr, av));
                    let d = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
                    row[t] = _mm256_fmadd_ps(d, st, row[t]);
                }
            } else {
                for (row, wr) in acc.iter_mut().zip(&wv) {
                    let p = _mm256_maddubs_epi16(bv, *wr);
                    let d = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
                    row[t] = _mm256_fmadd_ps(d, st, row[t]);
                }
            }
        }
        c += 32;
    }
    for r in 0..R {
        for t in 0..T {
            let mut s = hsum_f32(acc[r][t]);
            if full < k {
                let mut d = 0i32;
                for cc in full..k {
                    d += *ap.add(t * k + cc) as i32 * *wp.add(r * k + cc) as i8 as i32;
                }
                s += d as f32 * *sp.add(t * nb + nb - 1);
            }
            out[(r0 + r) * m + i0 + t] = s;
        }
    }
}

/// Row quantization (see [`crate::quant::act::quantize_rows`]): codes = round(x·inv)
/// half away from zero, clamped to ±127, and their magnitudes when `abs` is given; 8
/// values per step.
#[target_feature(enable = "avx2")]
pub unsafe fn quantize_row(x: &[f32], inv: f32, codes: &mut [i8], mut abs: Option<&mut [u8]>) {
    assert!(codes.len() >= x.len() && abs.as_ref().is_none_or(|a| a.len() >= x.len()));
    let full = x.len() / 8 * 8;
    let (iv, lim) = (_mm256_set1_ps(inv), _mm256_set1_ps(127.0));
    let (half, sign) = (_mm256_set1_ps(0.5), _mm256_set1_ps(-0.0));
    let mut c = 0;
    while c < full {
        let v = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(c)), iv);
        let v = _mm256_max_ps(
            _mm256_min_ps(v, lim),
            _mm256_sub_ps(_mm256_setzero_ps(), lim),
        );
        let h = _mm256_or_ps(half, _mm256_and_ps(v, sign)); // ±0.5 with v's sign
        let q = _mm256_cvttps_epi32(_mm256_add_ps(v, h)); // 8 × i32 in [−127, 127]
        let q16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q));
        let q8 = _mm_packs_epi16(q16, q16); // low 8 bytes
        _mm_storel_epi64(codes.as_mut_ptr().add(c) as *mut __m128i, q8);
        if let Some(a) = abs.as_deref_mut() {
            _mm_storel_epi64(a.as_mut_ptr().add(c) as *mut __m128i, _mm_abs_epi8(q8));
        }
        c += 8;
    }
    for j in full..x.len() {
        let q = crate::quant::act::round_code(x[j] * inv);
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

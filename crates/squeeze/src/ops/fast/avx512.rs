//! The AVX-512F micro-kernels of the weight-streaming linear ([`super::linear`]): up to 4
//! weight rows × 4 tokens per tile, 16 accumulators of 16 lanes, masked tails.

use std::arch::x86_64::*;

/// The mask of the first `n` of 16 lanes (all of them from 16 on): a vector loop's tail.
#[inline(always)]
pub(crate) fn first_lanes(n: usize) -> __mmask16 {
    ((1u32 << n.min(16)) - 1) as __mmask16
}

/// Up to 4 weight rows × tokens in blocks of 4: 16 accumulators of 16 lanes.
#[target_feature(enable = "avx512f")]
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
        let toks = (m - i0).min(4);
        // prefetch the next block once, during the first pass over these rows
        let pf = if i0 == 0 { next } else { &[] };
        match (rows, toks) {
            (4, 4) => tile::<4, 4>(x, w, pf, m, k, i0, out),
            (4, 3) => tile::<4, 3>(x, w, pf, m, k, i0, out),
            (4, 2) => tile::<4, 2>(x, w, pf, m, k, i0, out),
            (4, 1) => tile::<4, 1>(x, w, pf, m, k, i0, out),
            (r, t) => {
                for rr in 0..r {
                    for ii in i0..i0 + t {
                        out[rr * m + ii] =
                            tile1(&x[ii * k..(ii + 1) * k], &w[rr * k..(rr + 1) * k]);
                    }
                }
            }
        }
        i0 += toks;
    }
}

#[target_feature(enable = "avx512f")]
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
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    let full = k / 16 * 16;
    let tail = first_lanes(k - full);
    let (wp, xp) = (w.as_ptr(), x.as_ptr().add(i0 * k));
    let mut c = 0;
    while c <= k {
        let (mask, last) = if c < full {
            (0xffff, false)
        } else {
            (tail, true)
        };
        for r in 0..R {
            let at = r * k + c;
            if at < next.len() {
                _mm_prefetch::<_MM_HINT_T0>(next.as_ptr().add(at) as *const i8);
            }
        }
        if mask != 0 {
            let mut wv = [_mm512_setzero_ps(); R];
            for (r, v) in wv.iter_mut().enumerate() {
                *v = _mm512_maskz_loadu_ps(mask, wp.add(r * k + c));
            }
            for t in 0..T {
                let xv = _mm512_maskz_loadu_ps(mask, xp.add(t * k + c));
                for (row, wr) in acc.iter_mut().zip(&wv) {
                    row[t] = _mm512_fmadd_ps(*wr, xv, row[t]);
                }
            }
        }
        if last {
            break;
        }
        c += 16;
    }
    for r in 0..R {
        for t in 0..T {
            out[r * m + i0 + t] = _mm512_reduce_add_ps(acc[r][t]);
        }
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn tile1(x: &[f32], w: &[f32]) -> f32 {
    let k = x.len().min(w.len());
    let mut acc = _mm512_setzero_ps();
    let mut c = 0;
    while c < k {
        let left = k - c;
        let mask = first_lanes(left);
        let a = _mm512_maskz_loadu_ps(mask, x.as_ptr().add(c));
        let b = _mm512_maskz_loadu_ps(mask, w.as_ptr().add(c));
        acc = _mm512_fmadd_ps(a, b, acc);
        c += 16;
    }
    _mm512_reduce_add_ps(acc)
}

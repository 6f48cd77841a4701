//! AVX2 micro-kernel of [`super::panel_blocked::PackedPairs::product`]: tiles of up to
//! 6 tokens × one 16-channel panel, 12 i32 accumulators per block of inputs. Per pair of
//! inputs: the panel's 32 codes widened to i16 (`vpmovsxbw`, two registers), one
//! broadcast of the token's two i16 codes, one `vpmaddwd` + `vpaddd` per 8 channels.
//! At each block's end the sums are converted and accumulated in f32 with the token's
//! block scale. A last panel with at most 8 real channels multiplies only its first half.

use std::arch::x86_64::*;

use super::panel::NR;

/// Every panel against every token; see `PackedPairs::product` for the contract
/// (`sa`: `k.div_ceil(block)` scales per token; `scale`/`bias`: zero-padded to whole
/// panels from the range's first channel; `cols` columns stored per row).
///
/// # Safety
/// AVX2 and FMA are available; `a` holds `m` rows of `k` codes (`k` even; `block` even or
/// `k`),
/// `sa` `m` rows of scales, `panels` whole panels of `k·16` bytes, `scale`/`bias` 16
/// values per panel and `out` `m` rows of stride `ldo ≥ cols`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn product(
    (a, sa): (&[i16], &[f32]),
    (m, k, block): (usize, usize, usize),
    (panels, cols): (&[i8], usize),
    (scale, bias): (&[f32], &[f32]),
    out: &mut [f32],
    ldo: usize,
) {
    let psize = k * NR;
    let np = panels.len() / psize.max(1);
    let geo = Geo {
        k,
        nb: k.div_ceil(block),
        gb: block / 2,
    };
    let mut tmp = [0f32; 6 * NR];
    for p in 0..np {
        let w = panels.as_ptr().add(p * psize);
        let sb = (scale.as_ptr().add(p * NR), bias.as_ptr().add(p * NR));
        let c = (cols - p * NR).min(NR);
        let mut i = 0;
        while i < m {
            let at = (a.as_ptr().add(i * k), sa.as_ptr().add(i * geo.nb));
            // a partial last panel goes through `tmp`, then its real columns to `out`
            let (o, lo) = match c {
                NR => (out.as_mut_ptr().add(i * ldo + p * NR), ldo),
                _ => (tmp.as_mut_ptr(), NR),
            };
            let t = match c <= NR / 2 {
                false => tiles::<2>(m - i, at, &geo, w, sb, o, lo),
                true => tiles::<1>(m - i, at, &geo, w, sb, o, lo),
            };
            if c < NR {
                for r in 0..t {
                    let dst = out.as_mut_ptr().add((i + r) * ldo + p * NR);
                    std::ptr::copy_nonoverlapping(tmp.as_ptr().add(r * NR), dst, c);
                }
            }
            i += t;
        }
    }
}

/// Inputs per row, blocks per row and input pairs per block.
struct Geo {
    k: usize,
    nb: usize,
    gb: usize,
}

/// The next tile of up to 6 tokens; returns its tokens.
#[target_feature(enable = "avx2,fma")]
unsafe fn tiles<const V: usize>(
    left: usize,
    at: (*const i16, *const f32),
    geo: &Geo,
    w: *const i8,
    sb: (*const f32, *const f32),
    o: *mut f32,
    ldo: usize,
) -> usize {
    match left {
        6.. => tile::<6, V>(at, geo, w, sb, o, ldo),
        5 => tile::<5, V>(at, geo, w, sb, o, ldo),
        4 => tile::<4, V>(at, geo, w, sb, o, ldo),
        3 => tile::<3, V>(at, geo, w, sb, o, ldo),
        2 => tile::<2, V>(at, geo, w, sb, o, ldo),
        _ => tile::<1, V>(at, geo, w, sb, o, ldo),
    }
}

/// T tokens × the first `V` (1 or 2) 8-channel halves of panel `w`, block by block;
/// stored as `f·scale + bias` (an unused second half as zeros). Returns T.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const T: usize, const V: usize>(
    (a, sa): (*const i16, *const f32),
    geo: &Geo,
    w: *const i8,
    (scale, bias): (*const f32, *const f32),
    out: *mut f32,
    ldo: usize,
) -> usize {
    let nq = geo.k / 2;
    let mut f = [[_mm256_setzero_ps(); V]; T];
    for b in 0..geo.nb {
        let q0 = b * geo.gb;
        let mut acc = [[_mm256_setzero_si256(); V]; T];
        for q in q0..(q0 + geo.gb).min(nq) {
            let mut wv = [_mm256_setzero_si256(); V];
            for (v, r) in wv.iter_mut().enumerate() {
                let bytes = _mm_loadu_si128(w.add(q * 32 + v * 16) as *const __m128i);
                *r = _mm256_cvtepi8_epi16(bytes);
            }
            for (t, acc) in acc.iter_mut().enumerate() {
                let x =
                    _mm256_set1_epi32((a.add(t * geo.k + 2 * q) as *const i32).read_unaligned());
                for (acc, wr) in acc.iter_mut().zip(&wv) {
                    // two products of |codes| ≤ 127 (weights ≥ −128) summed in i32: exact
                    *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(*wr, x));
                }
            }
        }
        for (t, (f, acc)) in f.iter_mut().zip(&acc).enumerate() {
            let s = _mm256_set1_ps(*sa.add(t * geo.nb + b));
            for (f, acc) in f.iter_mut().zip(acc) {
                *f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(*acc), s, *f);
            }
        }
    }
    for (t, f) in f.iter().enumerate() {
        for v in 0..2 {
            let y = match v < V {
                true => _mm256_fmadd_ps(
                    f[v.min(V - 1)],
                    _mm256_loadu_ps(scale.add(8 * v)),
                    _mm256_loadu_ps(bias.add(8 * v)),
                ),
                false => _mm256_setzero_ps(),
            };
            _mm256_storeu_ps(out.add(t * ldo + 8 * v), y);
        }
    }
    T
}

/// Largest |x| of a block, NaN ignored (as `f32::max` does).
///
/// # Safety
/// AVX2 is available.
#[target_feature(enable = "avx2")]
pub unsafe fn max_abs(x: &[f32]) -> f32 {
    let mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let full = x.len() / 8 * 8;
    let mut acc = _mm256_setzero_ps();
    for c in (0..full).step_by(8) {
        let v = _mm256_and_ps(_mm256_loadu_ps(x.as_ptr().add(c)), mask);
        acc = _mm256_max_ps(v, acc); // a NaN `v` yields `acc`
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
    lanes
        .iter()
        .chain(&x[full..])
        .fold(0f32, |a, v| a.max(v.abs()))
}

/// `codes[j] = round(x[j]·inv)` half away from zero, clamped to ±127, as i16 — the
/// scalar `round_code` exactly; 8 values per step.
///
/// # Safety
/// AVX2 is available; `codes` holds at least `x.len()` values.
#[target_feature(enable = "avx2")]
pub unsafe fn codes_wide(x: &[f32], inv: f32, codes: &mut [i16]) {
    assert!(codes.len() >= x.len());
    let full = x.len() / 8 * 8;
    let iv = _mm256_set1_ps(inv);
    for c in (0..full).step_by(8) {
        let q16 = super::avx2::codes8(_mm256_loadu_ps(x.as_ptr().add(c)), iv);
        _mm_storeu_si128(codes.as_mut_ptr().add(c) as *mut __m128i, q16);
    }
    for j in full..x.len() {
        codes[j] = crate::quant::act::round_code(x[j] * inv) as i16;
    }
}

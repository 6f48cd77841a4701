//! AVX2 micro-kernel of [`super::panel_blocked::PackedBlocked::product`]: tiles of up to
//! 5 tokens × one 16-channel panel, 10 i32 accumulators per block of inputs (with the
//! panel's two registers, the broadcast, a product and the ones, 15 of the 16 registers:
//! a sixth token spills an accumulator every step and measured slower). Per group of
//! 4 inputs: one broadcast of the token's 4 offset codes, then per 8 channels one
//! `vpmaddubsw` (exact: codes ≤ 128, weights ≥ −128), one `vpmaddwd` against ones and one
//! `vpaddd` — on AVX-VNNI one `vpdpbusd` ([`panels_vnni`]). Each block's accumulators
//! start at the panel's offset corrections; at the block's end they are converted and
//! accumulated in f32 with the token's block scale. A last panel with at most 8 real
//! channels multiplies only its first half.

use std::arch::x86_64::*;

use super::avx2_panel::{Dot, Madd, Vnni};
use super::NR;

/// Every panel against every token; see `PackedBlocked::product` for the contract
/// (`sa`: `k.div_ceil(block)` scales per token; `sums`: that many groups of 16 offset
/// corrections per panel; `scale`/`bias`: zero-padded to whole panels from the range's
/// first channel; `cols` columns stored per row). `vnni`: the AVX-VNNI form.
///
/// # Safety
/// AVX2 and FMA (and with `vnni`, AVX-VNNI) are available; `a` holds `m` rows of `k`
/// offset codes (`k` and `block` multiples of 4), `sa` `m` rows of scales, `panels` whole
/// panels of `k·16` bytes, `sums` their `k/block·16` corrections each, `scale`/`bias` 16
/// values per panel and `out` `m` rows of stride `ldo ≥ cols` that no other thread
/// touches during the call.
pub unsafe fn product(
    a: (&[u8], &[f32]),
    geo: (usize, usize, usize),
    w: (&[u8], &[i32], usize),
    sb: (&[f32], &[f32]),
    (out, ldo): (*mut f32, usize),
    vnni: bool,
) {
    let job = (a, geo, w, sb, out, ldo);
    match vnni {
        true => panels_vnni(job),
        false => panels_madd(job),
    }
}

/// [`product`]'s operands.
type Job<'a> = (
    (&'a [u8], &'a [f32]),
    (usize, usize, usize),
    (&'a [u8], &'a [i32], usize),
    (&'a [f32], &'a [f32]),
    *mut f32,
    usize,
);

/// [`panels`] with `vpmaddubsw` + `vpmaddwd`.
#[target_feature(enable = "avx2,fma")]
unsafe fn panels_madd(job: Job<'_>) {
    panels::<Madd>(job)
}

/// [`panels`] with AVX-VNNI's `vpdpbusd`.
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn panels_vnni(job: Job<'_>) {
    panels::<Vnni>(job)
}

/// Every panel against every token, in the entry's form `D`.
#[inline(always)]
unsafe fn panels<D: Dot>(
    ((a, sa), (m, k, block), (panels, sums, cols), (scale, bias), out, ldo): Job<'_>,
) {
    let psize = k * NR;
    let np = panels.len() / psize.max(1);
    let geo = Geo {
        k,
        nb: k.div_ceil(block),
        gb: block / 4,
    };
    let mut tmp = [0f32; 5 * NR];
    for p in 0..np {
        let w = (
            panels.as_ptr().add(p * psize),
            sums.as_ptr().add(p * geo.nb * NR),
        );
        let sb = (scale.as_ptr().add(p * NR), bias.as_ptr().add(p * NR));
        let c = (cols - p * NR).min(NR);
        let mut i = 0;
        while i < m {
            let at = (a.as_ptr().add(i * k), sa.as_ptr().add(i * geo.nb));
            // a partial last panel goes through `tmp`, then its real columns to `out`
            let (o, lo) = match c {
                NR => (out.add(i * ldo + p * NR), ldo),
                _ => (tmp.as_mut_ptr(), NR),
            };
            let t = match c <= NR / 2 {
                false => tiles::<D, 2>(m - i, at, &geo, w, sb, o, lo),
                true => tiles::<D, 1>(m - i, at, &geo, w, sb, o, lo),
            };
            if c < NR {
                for r in 0..t {
                    let dst = out.add((i + r) * ldo + p * NR);
                    std::ptr::copy_nonoverlapping(tmp.as_ptr().add(r * NR), dst, c);
                }
            }
            i += t;
        }
    }
}

/// Codes per row, blocks per row and groups of 4 inputs per block.
struct Geo {
    k: usize,
    nb: usize,
    gb: usize,
}

/// A panel's codes and its offset corrections.
type Panel = (*const u8, *const i32);

/// The next tile of up to 5 tokens; returns its tokens.
#[inline(always)]
unsafe fn tiles<D: Dot, const V: usize>(
    left: usize,
    at: (*const u8, *const f32),
    geo: &Geo,
    w: Panel,
    sb: (*const f32, *const f32),
    o: *mut f32,
    ldo: usize,
) -> usize {
    match left {
        5.. => tile::<D, 5, V>(at, geo, w, sb, o, ldo),
        4 => tile::<D, 4, V>(at, geo, w, sb, o, ldo),
        3 => tile::<D, 3, V>(at, geo, w, sb, o, ldo),
        2 => tile::<D, 2, V>(at, geo, w, sb, o, ldo),
        _ => tile::<D, 1, V>(at, geo, w, sb, o, ldo),
    }
}

/// T tokens × the first `V` (1 or 2) 8-channel halves of panel `w`, block by block;
/// stored as `f·scale + bias` (an unused second half as zeros). Returns T.
#[inline(always)]
unsafe fn tile<D: Dot, const T: usize, const V: usize>(
    (a, sa): (*const u8, *const f32),
    geo: &Geo,
    (w, sums): Panel,
    (scale, bias): (*const f32, *const f32),
    out: *mut f32,
    ldo: usize,
) -> usize {
    let nq = geo.k / 4;
    let ones = _mm256_set1_epi16(1);
    let mut f = [[_mm256_setzero_ps(); V]; T];
    for b in 0..geo.nb {
        let q0 = b * geo.gb;
        let mut start = [_mm256_setzero_si256(); V];
        for (v, s) in start.iter_mut().enumerate() {
            *s = _mm256_loadu_si256(sums.add(b * NR + 8 * v) as *const __m256i);
        }
        let mut acc = [start; T];
        for q in q0..(q0 + geo.gb).min(nq) {
            let wq = w.add(q * 64);
            for (t, acc) in acc.iter_mut().enumerate() {
                let x =
                    _mm256_set1_epi32((a.add(t * geo.k + 4 * q) as *const i32).read_unaligned());
                for (v, acc) in acc.iter_mut().enumerate() {
                    let wv = _mm256_loadu_si256(wq.add(32 * v) as *const __m256i);
                    // unsigned codes ≤ 128 × weights ≥ −128: pair sums fit i16 exactly
                    *acc = D::dot::<false>(*acc, (x, ones), wv, ones);
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

/// `codes[j] = round(x[j]·inv) + 64`, the code rounded half away from zero and clamped
/// to ±64 — the scalar `round_code_to` exactly; 8 values per step.
///
/// # Safety
/// AVX2 is available; `codes` holds at least `x.len()` values.
#[target_feature(enable = "avx2")]
pub unsafe fn offset_codes(x: &[f32], inv: f32, codes: &mut [u8]) {
    use super::round::{round_code_to, LINEAR_ACT_MAX};
    assert!(codes.len() >= x.len());
    let full = x.len() / 8 * 8;
    let iv = _mm256_set1_ps(inv);
    let lim = _mm256_set1_ps(f32::from(LINEAR_ACT_MAX));
    let off = _mm_set1_epi16(i16::from(LINEAR_ACT_MAX));
    for c in (0..full).step_by(8) {
        let q16 = super::avx2::codes8(_mm256_loadu_ps(x.as_ptr().add(c)), iv, lim);
        let u = _mm_add_epi16(q16, off); // in [0, 128]
        let u8s = _mm_packus_epi16(u, u); // low 8 bytes
        _mm_storel_epi64(codes.as_mut_ptr().add(c) as *mut __m128i, u8s);
    }
    for j in full..x.len() {
        codes[j] = (round_code_to(x[j] * inv, LINEAR_ACT_MAX) + LINEAR_ACT_MAX) as u8;
    }
}

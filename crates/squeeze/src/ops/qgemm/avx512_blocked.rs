//! AVX-512 VNNI micro-kernel of [`super::panel_blocked::PackedBlocked::product`]: a
//! panel's 16 channels × 4 inputs are exactly one 512-bit register, and `vpdpbusd`
//! multiplies a broadcast of a token's 4 offset codes (unsigned) with it and adds the 4
//! products of each channel into its i32 lane — one instruction per 64 multiply-adds, with
//! no intermediate i16 step (so no saturation to avoid; the codes are the AVX2 kernel's).
//! Tiles of up to 8 tokens × one panel: 8 i32 accumulators and 8 f32 sums stay in
//! registers. Each block's accumulators start at the panel's offset corrections; at the
//! block's end they are converted and accumulated in f32 with the token's block scale.
//!
//! Pairs of panels take the wider tiles of [`wide`]: 2 panels × up to 6 tokens, 12 i32
//! and 12 f32 accumulators, each token's 4 codes broadcast from memory once for both
//! panels (a last odd panel runs the one-panel tile).

use std::arch::x86_64::*;

use super::NR;

/// Tokens per tile.
const TILE: usize = 8;

/// Every panel against every token; the contract of `avx2_blocked::product`.
///
/// # Safety
/// AVX-512F, AVX-512BW and AVX-512 VNNI are available; otherwise as
/// `avx2_blocked::product`: `a` holds `m` rows of `k` offset codes (`k` and `block`
/// multiples of 4), `sa` `m` rows of scales, `panels` whole panels of `k·16` bytes,
/// `sums` their `k/block·16` corrections each, `scale`/`bias` 16 values per panel and
/// `out` `m` rows of stride `ldo ≥ cols` that no other thread touches during the call.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn product(
    (a, sa): (&[u8], &[f32]),
    (m, k, block): (usize, usize, usize),
    (panels, sums, cols): (&[u8], &[i32], usize),
    (scale, bias): (&[f32], &[f32]),
    out: *mut f32,
    ldo: usize,
) {
    let psize = k * NR;
    let np = panels.len() / psize.max(1);
    let nb = k.div_ceil(block);
    if np >= 2 {
        // whole pairs of panels in the wide tiles, a last odd one below
        let pairs = np / 2;
        let geo = (m, k, nb, block / 4);
        wide::product(
            (a, sa),
            geo,
            (panels, sums, cols),
            (scale, bias),
            pairs,
            out,
            ldo,
        );
        if np.is_multiple_of(2) {
            return;
        }
    }
    let first = if np >= 2 { np - 1 } else { 0 };
    for p in first..np {
        let w = (
            panels.as_ptr().add(p * psize),
            sums.as_ptr().add(p * nb * NR),
        );
        let sb = (scale.as_ptr().add(p * NR), bias.as_ptr().add(p * NR));
        // the columns this panel stores: all 16, or the real ones of a last partial panel
        let c = (cols - p * NR).min(NR);
        let mask: __mmask16 = if c == NR { 0xffff } else { (1u16 << c) - 1 };
        let mut i = 0;
        while i < m {
            let at = (a.as_ptr().add(i * k), sa.as_ptr().add(i * nb));
            let o = out.add(i * ldo + p * NR);
            let geo = (k, nb, block / 4);
            i += match m - i {
                8.. => tile::<8>(at, geo, w, sb, (o, ldo, mask)),
                7 => tile::<7>(at, geo, w, sb, (o, ldo, mask)),
                6 => tile::<6>(at, geo, w, sb, (o, ldo, mask)),
                5 => tile::<5>(at, geo, w, sb, (o, ldo, mask)),
                4 => tile::<4>(at, geo, w, sb, (o, ldo, mask)),
                3 => tile::<3>(at, geo, w, sb, (o, ldo, mask)),
                2 => tile::<2>(at, geo, w, sb, (o, ldo, mask)),
                _ => tile::<1>(at, geo, w, sb, (o, ldo, mask)),
            };
        }
    }
}

/// T (≤ [`TILE`]) tokens × panel `w`, block by block (`geo`: codes per row, blocks per
/// row, groups of 4 inputs per block); stores `f·scale + bias` in the `mask`ed columns of
/// `T` rows of `out`. Returns T.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile<const T: usize>(
    (a, sa): (*const u8, *const f32),
    (k, nb, gb): (usize, usize, usize),
    (w, sums): (*const u8, *const i32),
    (scale, bias): (*const f32, *const f32),
    (out, ldo, mask): (*mut f32, usize, __mmask16),
) -> usize {
    const { assert!(T <= TILE) };
    let nq = k / 4;
    let mut f = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        let q0 = b * gb;
        let start = _mm512_loadu_si512(sums.add(b * NR) as *const __m512i);
        let mut acc = [start; T];
        for q in q0..(q0 + gb).min(nq) {
            let wv = _mm512_loadu_si512(w.add(q * 64) as *const __m512i);
            for (t, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_epi32((a.add(t * k + 4 * q) as *const i32).read_unaligned());
                // 4 products (unsigned codes × signed weights) per channel, added in i32
                *acc = _mm512_dpbusd_epi32(*acc, x, wv);
            }
        }
        for (t, (f, acc)) in f.iter_mut().zip(&acc).enumerate() {
            let s = _mm512_set1_ps(*sa.add(t * nb + b));
            *f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(*acc), s, *f);
        }
    }
    let (sv, bv) = (_mm512_loadu_ps(scale), _mm512_loadu_ps(bias));
    for (t, f) in f.iter().enumerate() {
        _mm512_mask_storeu_ps(out.add(t * ldo), mask, _mm512_fmadd_ps(*f, sv, bv));
    }
    T
}

/// Tiles of 2 panels × up to 6 tokens (see the module notes).
mod wide {
    use std::arch::x86_64::*;

    use super::NR;

    /// Panel pairs `0..pairs` against every token; the contract of [`super::product`]
    /// for those panels (`geo`: tokens, codes per row, blocks per row, groups per block).
    ///
    /// # Safety
    /// As [`super::product`], with at least `2·pairs` panels.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn product(
        (a, sa): (&[u8], &[f32]),
        (m, k, nb, gb): (usize, usize, usize, usize),
        (panels, sums, cols): (&[u8], &[i32], usize),
        (scale, bias): (&[f32], &[f32]),
        pairs: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        let psize = k * NR;
        for pp in 0..pairs {
            let p = 2 * pp;
            let w = (
                panels.as_ptr().add(p * psize),
                sums.as_ptr().add(p * nb * NR),
            );
            let sb = (scale.as_ptr().add(p * NR), bias.as_ptr().add(p * NR));
            // the second panel's real columns: all 16, or fewer in a last partial panel
            let c = (cols - p * NR - NR).min(NR);
            let mask: __mmask16 = if c == NR { 0xffff } else { (1u16 << c) - 1 };
            let g = (k, nb, gb, psize);
            let mut i = 0;
            while i < m {
                let at = (a.as_ptr().add(i * k), sa.as_ptr().add(i * nb));
                let o = (out.add(i * ldo + p * NR), ldo, mask);
                i += match m - i {
                    6.. => tile::<6>(at, g, w, sb, o),
                    5 => tile::<5>(at, g, w, sb, o),
                    4 => tile::<4>(at, g, w, sb, o),
                    3 => tile::<3>(at, g, w, sb, o),
                    2 => tile::<2>(at, g, w, sb, o),
                    _ => tile::<1>(at, g, w, sb, o),
                };
            }
        }
    }

    /// T tokens × panels `w` and `w + psize`, block by block; stores `f·scale + bias` in
    /// T rows of 32 columns (the second panel's `mask`ed). Returns T.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile<const T: usize>(
        (a, sa): (*const u8, *const f32),
        (k, nb, gb, psize): (usize, usize, usize, usize),
        (w, sums): (*const u8, *const i32),
        (scale, bias): (*const f32, *const f32),
        (out, ldo, mask): (*mut f32, usize, __mmask16),
    ) -> usize {
        let nq = k / 4;
        let mut f = [[_mm512_setzero_ps(); 2]; T];
        for b in 0..nb {
            let q0 = b * gb;
            let s0 = _mm512_loadu_si512(sums.add(b * NR) as *const __m512i);
            let s1 = _mm512_loadu_si512(sums.add((nb + b) * NR) as *const __m512i);
            let mut acc = [[s0, s1]; T];
            for q in q0..(q0 + gb).min(nq) {
                let w0 = _mm512_loadu_si512(w.add(q * 64) as *const __m512i);
                let w1 = _mm512_loadu_si512(w.add(psize + q * 64) as *const __m512i);
                for (t, acc) in acc.iter_mut().enumerate() {
                    let x =
                        _mm512_set1_epi32((a.add(t * k + 4 * q) as *const i32).read_unaligned());
                    acc[0] = _mm512_dpbusd_epi32(acc[0], x, w0);
                    acc[1] = _mm512_dpbusd_epi32(acc[1], x, w1);
                }
            }
            for (t, (f, acc)) in f.iter_mut().zip(&acc).enumerate() {
                let s = _mm512_set1_ps(*sa.add(t * nb + b));
                f[0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[0]), s, f[0]);
                f[1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[1]), s, f[1]);
            }
        }
        let (s0, b0) = (_mm512_loadu_ps(scale), _mm512_loadu_ps(bias));
        let (s1, b1) = (
            _mm512_loadu_ps(scale.add(NR)),
            _mm512_loadu_ps(bias.add(NR)),
        );
        for (t, f) in f.iter().enumerate() {
            let o = out.add(t * ldo);
            _mm512_storeu_ps(o, _mm512_fmadd_ps(f[0], s0, b0));
            _mm512_mask_storeu_ps(o.add(NR), mask, _mm512_fmadd_ps(f[1], s1, b1));
        }
        T
    }
}

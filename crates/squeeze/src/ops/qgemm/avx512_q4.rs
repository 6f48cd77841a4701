//! AVX-512 VNNI micro-kernel of [`super::panel_q4::PackedQ4`]: one 64-byte octet of a
//! nibble panel unpacks (one AND, one shift and AND) into two registers of 16 channels × 4
//! inputs, and `vpdpbusd` multiplies each with a token's 4 int8 codes broadcast straight
//! from memory, adding into one i32 lane per channel. Tiles of up to 8 tokens × one panel
//! keep 8 integer and 8 f32 accumulators in registers; each 32-input block's integer sums
//! start at `−z·Σa` and end in one conversion and fused multiply-add with
//! `s_w[ch]·s_a[token]`.

use std::arch::x86_64::*;

use super::{NR, OCTET_BYTES, Q8_BLOCK};

/// Tokens per tile.
const TILE: usize = 8;

/// Activations: codes `[m, k]`, scales and code sums `[m, k/32]`.
type Acts<'a> = (&'a [i8], &'a [f32], &'a [i32]);
/// Weight panels: nibble octets, and per panel, block and channel the scales and zeros.
type Panels<'a> = (&'a [u8], &'a [f32], &'a [i32]);

/// Every token of `x` against every panel of `w`, `f·… + bias` stored in the first
/// `cols` columns of `m` rows of `out` (stride `ldo`). `geo`: tokens, inputs, activation
/// blocks per weight block, columns.
///
/// # Safety
/// AVX-512F/BW/VNNI are available; `x` holds `m` rows (`k` codes, `k/32` scales and sums
/// each), `w` whole panels (`k/8` octets, `k/32/gb` blocks of 16 scales and zeros each),
/// `bias` 16 per panel; `out` has room for `m` rows of stride `ldo ≥ cols` that no other
/// thread touches during the call.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn product(
    x: Acts,
    w: Panels,
    bias: &[f32],
    (m, k, gb, cols): (usize, usize, usize, usize),
    out: *mut f32,
    ldo: usize,
) {
    let (nb, no) = (k / Q8_BLOCK, k / 8);
    let ng = nb / gb;
    let np = bias.len() / NR;
    assert!(x.0.len() >= m * k && x.1.len() >= m * nb && x.2.len() >= m * nb);
    assert!(w.0.len() >= np * no * OCTET_BYTES && w.1.len() >= np * ng * NR);
    assert!(w.2.len() >= np * ng * NR && cols <= np * NR);
    for p in 0..np {
        let c = (cols - p * NR).min(NR);
        let mask: __mmask16 = if c == NR { 0xffff } else { (1u16 << c) - 1 };
        let pw = (
            w.0.as_ptr().add(p * no * OCTET_BYTES),
            w.1.as_ptr().add(p * ng * NR),
            w.2.as_ptr().add(p * ng * NR),
        );
        let bv = _mm512_loadu_ps(bias.as_ptr().add(p * NR));
        let mut i = 0;
        while i < m {
            let xt = (
                x.0.as_ptr().add(i * k),
                x.1.as_ptr().add(i * nb),
                x.2.as_ptr().add(i * nb),
            );
            let o = (out.add(i * ldo + p * NR), ldo, mask, bv);
            i += match m - i {
                8.. => tile::<8>(xt, pw, (k, gb), o),
                7 => tile::<7>(xt, pw, (k, gb), o),
                6 => tile::<6>(xt, pw, (k, gb), o),
                5 => tile::<5>(xt, pw, (k, gb), o),
                4 => tile::<4>(xt, pw, (k, gb), o),
                3 => tile::<3>(xt, pw, (k, gb), o),
                2 => tile::<2>(xt, pw, (k, gb), o),
                _ => tile::<1>(xt, pw, (k, gb), o),
            };
        }
    }
}

/// T tokens × one panel; returns T.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile<const T: usize>(
    (codes, sa, asum): (*const i8, *const f32, *const i32),
    (data, sw, zw): (*const u8, *const f32, *const i32),
    (k, gb): (usize, usize),
    (out, ldo, mask, bv): (*mut f32, usize, __mmask16, __m512),
) -> usize {
    const { assert!(T <= TILE) };
    let nb = k / Q8_BLOCK;
    let nib = _mm512_set1_epi8(15);
    let mut f = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        let g = b / gb;
        let (s, z) = (
            _mm512_loadu_ps(sw.add(g * NR)),
            _mm512_loadu_si512(zw.add(g * NR) as *const __m512i),
        );
        let mut acc = [_mm512_setzero_si512(); T];
        for (t, a) in acc.iter_mut().enumerate() {
            *a = _mm512_mullo_epi32(z, _mm512_set1_epi32(-*asum.add(t * nb + b)));
        }
        for o in 4 * b..4 * b + 4 {
            let wv = _mm512_loadu_si512(data.add(o * OCTET_BYTES) as *const __m512i);
            let lo = _mm512_and_si512(wv, nib);
            let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(wv), nib);
            for (t, a) in acc.iter_mut().enumerate() {
                let xp = codes.add(t * k + 8 * o) as *const i32;
                let xl = _mm512_set1_epi32(xp.read_unaligned());
                let xh = _mm512_set1_epi32(xp.add(1).read_unaligned());
                *a = _mm512_dpbusd_epi32(*a, lo, xl);
                *a = _mm512_dpbusd_epi32(*a, hi, xh);
            }
        }
        for (t, (f, a)) in f.iter_mut().zip(&acc).enumerate() {
            let st = _mm512_mul_ps(s, _mm512_set1_ps(*sa.add(t * nb + b)));
            *f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(*a), st, *f);
        }
    }
    for (t, f) in f.iter().enumerate() {
        _mm512_mask_storeu_ps(out.add(t * ldo), mask, _mm512_add_ps(*f, bv));
    }
    T
}

//! AVX-512 VNNI micro-kernel of [`super::bits::PackedBits::product`]: the int8 panel
//! kernel's tiles (`avx512_panel`: up to 8 tokens × one 16-channel panel, `vpdpbusd`,
//! signed codes offset by 128 and taken back with the channel sums), with each group's
//! 64 weights made in a register from their sign word (`vpmovm2b`, OR 1: −1 or +1) and,
//! for ternary weights, zeroed where the non-zero word is clear (`vmovdqu8` with a zero
//! mask).

use std::arch::x86_64::*;

use super::NR;

/// Tokens per tile.
const TILE: usize = 8;

/// Every panel against every token; the contract of `bits_avx2::product`.
///
/// # Safety
/// AVX-512F, AVX-512BW and AVX-512 VNNI are available; `a`/`abs` hold `m` rows of stride
/// `lda` with at least `nq·4` bytes each; `signs` (and `nonzero`, unless empty) hold `nq`
/// words per panel, `sums` 16 channel sums per panel, and `out` `m` rows of stride `ldo`
/// with room for every panel's 16 columns.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn product(
    (a, abs): (&[i8], &[u8]),
    (m, lda): (usize, usize),
    (signs, nonzero): (&[u64], &[u64]),
    sums: &[i32],
    nq: usize,
    signed: bool,
    out: &mut [i32],
    ldo: usize,
) {
    let np = signs.len() / nq.max(1);
    let (src, xor) = match signed {
        true => (a.as_ptr() as *const u8, 0x8080_8080),
        false => (abs.as_ptr(), 0),
    };
    let g = (lda, nq, xor);
    let op = out.as_mut_ptr();
    for p in 0..np {
        let s = signs.as_ptr().add(p * nq);
        let nz = (!nonzero.is_empty()).then(|| nonzero.as_ptr().add(p * nq));
        let start = match signed {
            true => _mm512_mullo_epi32(
                _mm512_loadu_si512(sums.as_ptr().add(p * NR) as *const __m512i),
                _mm512_set1_epi32(-128),
            ),
            false => _mm512_setzero_si512(),
        };
        let mut i = 0;
        while i < m {
            let at = src.add(i * lda);
            let o = op.add(i * ldo + p * NR);
            let w = (s, nz);
            i += match m - i {
                8.. => tile::<8>(at, g, w, start, (o, ldo)),
                7 => tile::<7>(at, g, w, start, (o, ldo)),
                6 => tile::<6>(at, g, w, start, (o, ldo)),
                5 => tile::<5>(at, g, w, start, (o, ldo)),
                4 => tile::<4>(at, g, w, start, (o, ldo)),
                3 => tile::<3>(at, g, w, start, (o, ldo)),
                2 => tile::<2>(at, g, w, start, (o, ldo)),
                _ => tile::<1>(at, g, w, start, (o, ldo)),
            };
        }
    }
}

/// T (≤ [`TILE`]) tokens × one panel of `nq` groups given by its sign (and non-zero)
/// words; stores T rows of 16 i32. Returns T.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile<const T: usize>(
    a: *const u8,
    (lda, nq, xor): (usize, usize, u32),
    (signs, nonzero): (*const u64, Option<*const u64>),
    start: __m512i,
    (out, ldo): (*mut i32, usize),
) -> usize {
    const { assert!(T <= TILE) };
    let one = _mm512_set1_epi8(1);
    let mut acc = [start; T];
    for q in 0..nq {
        // −1 where the sign bit is set, +1 elsewhere; 0 where a ternary weight is
        let mut wv = _mm512_or_si512(_mm512_movm_epi8(*signs.add(q)), one);
        if let Some(nz) = nonzero {
            wv = _mm512_maskz_mov_epi8(*nz.add(q), wv);
        }
        for (t, acc) in acc.iter_mut().enumerate() {
            let x = (a.add(t * lda + 4 * q) as *const u32).read_unaligned() ^ xor;
            *acc = _mm512_dpbusd_epi32(*acc, _mm512_set1_epi32(x as i32), wv);
        }
    }
    for (t, acc) in acc.iter().enumerate() {
        _mm512_storeu_si512(out.add(t * ldo) as *mut __m512i, *acc);
    }
    T
}

//! AVX2 micro-kernel of [`super::bits::PackedBits::product`]: the int8 panel kernel's
//! tiles (`avx2_panel`: up to 6 tokens, 4 with sign transfer, × one 16-channel panel,
//! `vpmaddubsw` + `vpmaddwd`), with each group's 64 weights made in two registers from
//! their sign word — each byte picks its word byte (`vpshufb`), tests its bit (AND, compare)
//! and becomes −1 or +1 (OR 1) — and, for ternary weights, ANDed with the same expansion
//! of the non-zero word. On AVX-VNNI the tiles' dot products are `vpdpbusd` (the panel
//! kernel's [`Dot`] forms).

use std::arch::x86_64::*;

use super::avx2_panel::{token_codes, Dot, Madd, Vnni};
use super::NR;

/// Every panel against every token.
///
/// # Safety
/// AVX2 is available; `a`/`abs` hold `m` rows of stride `lda` with at least `nq·4` bytes
/// each; `signs` (and `nonzero`, unless empty) hold `nq` words per panel; `out` has `m`
/// rows of stride `ldo` with room for every panel's 16 columns; with `vnni`, AVX-VNNI is
/// available.
#[allow(clippy::too_many_arguments)]
pub unsafe fn product(
    a: (&[i8], &[u8]),
    rows: (usize, usize),
    planes: (&[u64], &[u64]),
    nq: usize,
    signed: bool,
    out: &mut [i32],
    ldo: usize,
    vnni: bool,
) {
    let job = (a, rows, planes, nq, signed, out, ldo);
    match vnni {
        true => panels_vnni(job),
        false => panels_madd(job),
    }
}

/// [`product`]'s operands.
type Job<'a> = (
    (&'a [i8], &'a [u8]),
    (usize, usize),
    (&'a [u64], &'a [u64]),
    usize,
    bool,
    &'a mut [i32],
    usize,
);

/// [`panels`] with `vpmaddubsw` + `vpmaddwd`.
#[target_feature(enable = "avx2")]
unsafe fn panels_madd(job: Job<'_>) {
    panels::<Madd>(job)
}

/// [`panels`] with AVX-VNNI's `vpdpbusd`.
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn panels_vnni(job: Job<'_>) {
    panels::<Vnni>(job)
}

/// Every panel against every token, in the entry's form `D`.
#[inline(always)]
unsafe fn panels<D: Dot>(((a, abs), (m, lda), (signs, nonzero), nq, signed, out, ldo): Job<'_>) {
    let np = signs.len() / nq.max(1);
    let (ap, bp, op) = (a.as_ptr(), abs.as_ptr(), out.as_mut_ptr());
    for p in 0..np {
        let s = signs.as_ptr().add(p * nq);
        let nz = (!nonzero.is_empty()).then(|| nonzero.as_ptr().add(p * nq));
        let mut i = 0;
        while i < m {
            let at = (ap.add(i * lda), bp.add(i * lda));
            let o = op.add(i * ldo + p * NR);
            let w = (s, nz);
            let left = m - i;
            i += match (signed, left) {
                (false, 6..) => tile::<D, 6, false>(at, lda, w, nq, o, ldo),
                (false, 5) => tile::<D, 5, false>(at, lda, w, nq, o, ldo),
                (false, 4..) => tile::<D, 4, false>(at, lda, w, nq, o, ldo),
                (false, 3) => tile::<D, 3, false>(at, lda, w, nq, o, ldo),
                (false, 2) => tile::<D, 2, false>(at, lda, w, nq, o, ldo),
                (false, _) => tile::<D, 1, false>(at, lda, w, nq, o, ldo),
                (true, 4..) => tile::<D, 4, true>(at, lda, w, nq, o, ldo),
                (true, 3) => tile::<D, 3, true>(at, lda, w, nq, o, ldo),
                (true, 2) => tile::<D, 2, true>(at, lda, w, nq, o, ldo),
                (true, _) => tile::<D, 1, true>(at, lda, w, nq, o, ldo),
            };
        }
    }
}

/// 32 bytes from 32 bits: 0xFF where bit `i` of `bits` is set, 0 elsewhere.
#[inline(always)]
unsafe fn expand(bits: u32) -> __m256i {
    let v = _mm256_set1_epi32(bits as i32);
    // byte i takes byte i / 8 of the word (each 128-bit lane holds the whole word)
    let pick = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3,
        3, 3,
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let b = _mm256_and_si256(_mm256_shuffle_epi8(v, pick), bit);
    _mm256_cmpeq_epi8(b, bit)
}

/// The panel's 64 weights of group `q` as two registers of ±1/0 bytes (channels 0–7,
/// then 8–15).
#[inline(always)]
unsafe fn weights(sign: u64, nonzero: Option<u64>) -> [__m256i; 2] {
    let one = _mm256_set1_epi8(1);
    let mut w = [
        _mm256_or_si256(expand(sign as u32), one),
        _mm256_or_si256(expand((sign >> 32) as u32), one),
    ];
    if let Some(nz) = nonzero {
        w[0] = _mm256_and_si256(w[0], expand(nz as u32));
        w[1] = _mm256_and_si256(w[1], expand((nz >> 32) as u32));
    }
    w
}

/// T tokens (codes and magnitudes) × one panel → `out` rows of 16 i32; returns T.
#[inline(always)]
unsafe fn tile<D: Dot, const T: usize, const SIGNED: bool>(
    (a, abs): (*const i8, *const u8),
    lda: usize,
    (signs, nonzero): (*const u64, Option<*const u64>),
    nq: usize,
    out: *mut i32,
    ldo: usize,
) -> usize {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_si256(); 2]; T];
    for q in 0..nq {
        let wv = weights(*signs.add(q), nonzero.map(|p| *p.add(q)));
        for (t, acc) in acc.iter_mut().enumerate() {
            let x = token_codes::<SIGNED>((a, abs), t * lda + 4 * q, ones);
            for (acc, wr) in acc.iter_mut().zip(&wv) {
                // |a| ≤ 127 times a level in {−1, 0, 1}: pair sums fit i16 exactly
                *acc = D::dot::<SIGNED>(*acc, x, *wr, ones);
            }
        }
    }
    for (t, acc) in acc.iter().enumerate() {
        for (v, r) in acc.iter().enumerate() {
            _mm256_storeu_si256(out.add(t * ldo + 8 * v) as *mut __m256i, *r);
        }
    }
    T
}

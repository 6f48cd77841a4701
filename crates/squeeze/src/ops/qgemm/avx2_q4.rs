//! AVX2 micro-kernel of [`super::panel_q4::PackedQ4`], on half panels (8 channels × 4
//! inputs, 32 bytes): a half octet unpacks into two such registers, `vpmaddubsw` multiplies
//! each with a token's 4 broadcast int8 codes (unsigned nibbles × signed codes, pairs
//! summed in i16), and the i16 sums of a whole 32-input block accumulate without widening
//! — 8 pair sums of at most 2·15·127 stay below 2¹⁵ — before one `vpmaddwd` against ones
//! turns them into one i32 per channel. Each block ends as in the VNNI kernel:
//! `−z·Σa` added, converted, multiplied by `s_w·s_a` into f32 accumulators. Tiles of up
//! to 4 tokens keep 4 i16 and 4 f32 accumulators in the 16 registers. On AVX-VNNI
//! ([`halves_vnni`]) each register of nibbles is one `vpdpbusd` into i32 accumulators
//! instead ([`Step`]).

use std::arch::x86_64::*;

use super::{NR, OCTET_BYTES, Q8_BLOCK};

/// Tokens per tile.
const TILE: usize = 4;
/// Channels per half panel.
const HALF: usize = NR / 2;

type Acts<'a> = (&'a [i8], &'a [f32], &'a [i32]);
type Panels<'a> = (&'a [u8], &'a [f32], &'a [i32]);

/// How a tile accumulates a block's nibbles × codes: in i16 pair sums (`vpmaddubsw`),
/// widened once per block (`vpmaddwd`), or in i32 by AVX-VNNI's `vpdpbusd`.
trait Step {
    /// `acc` plus the low nibbles × the first 4 codes and the high ones × the next 4.
    ///
    /// # Safety
    /// The calling entry point enables the form's instructions.
    unsafe fn step(acc: __m256i, low: (__m256i, __m256i), high: (__m256i, __m256i)) -> __m256i;
    /// A block's accumulator as one i32 per channel.
    ///
    /// # Safety
    /// As [`Step::step`].
    unsafe fn widen(acc: __m256i) -> __m256i;
}

/// AVX2: i16 pair sums, widened at the block's end.
struct Madd;

/// AVX-VNNI: i32 sums from the start.
struct Vnni;

impl Step for Madd {
    #[inline(always)]
    unsafe fn step(
        acc: __m256i,
        (lo, xl): (__m256i, __m256i),
        (hi, xh): (__m256i, __m256i),
    ) -> __m256i {
        let d = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xl), _mm256_maddubs_epi16(hi, xh));
        _mm256_add_epi16(acc, d)
    }

    #[inline(always)]
    unsafe fn widen(acc: __m256i) -> __m256i {
        _mm256_madd_epi16(acc, _mm256_set1_epi16(1))
    }
}

impl Step for Vnni {
    #[inline(always)]
    unsafe fn step(
        acc: __m256i,
        (lo, xl): (__m256i, __m256i),
        (hi, xh): (__m256i, __m256i),
    ) -> __m256i {
        _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(acc, lo, xl), hi, xh)
    }

    #[inline(always)]
    unsafe fn widen(acc: __m256i) -> __m256i {
        acc
    }
}

/// The contract of `avx512_q4::product`; `vnni`: the AVX-VNNI form.
///
/// # Safety
/// AVX2 and FMA (and with `vnni`, AVX-VNNI) are available; otherwise as
/// `avx512_q4::product`.
pub unsafe fn product(
    x: Acts,
    w: Panels,
    bias: &[f32],
    geo: (usize, usize, usize, usize),
    (out, ldo): (*mut f32, usize),
    vnni: bool,
) {
    let job = (x, w, bias, geo, out, ldo);
    match vnni {
        true => halves_vnni(job),
        false => halves_madd(job),
    }
}

/// [`product`]'s operands.
type Job<'a> = (
    Acts<'a>,
    Panels<'a>,
    &'a [f32],
    (usize, usize, usize, usize),
    *mut f32,
    usize,
);

/// [`halves`] with `vpmaddubsw` + `vpmaddwd`.
#[target_feature(enable = "avx2,fma")]
unsafe fn halves_madd(job: Job<'_>) {
    halves::<Madd>(job)
}

/// [`halves`] with AVX-VNNI's `vpdpbusd`.
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn halves_vnni(job: Job<'_>) {
    halves::<Vnni>(job)
}

/// Every half panel against every token, in the entry's form `S`.
#[inline(always)]
unsafe fn halves<S: Step>((x, w, bias, (m, k, gb, cols), out, ldo): Job<'_>) {
    let (nb, no) = (k / Q8_BLOCK, k / 8);
    let ng = nb / gb;
    let np = bias.len() / NR;
    assert!(x.0.len() >= m * k && x.1.len() >= m * nb && x.2.len() >= m * nb);
    assert!(w.0.len() >= np * no * OCTET_BYTES && w.1.len() >= np * ng * NR);
    assert!(w.2.len() >= np * ng * NR && cols <= np * NR);
    for p in 0..np {
        for h in 0..2 {
            let j0 = p * NR + h * HALF;
            if j0 >= cols {
                break;
            }
            let c = (cols - j0).min(HALF);
            let pw = (
                w.0.as_ptr().add(p * no * OCTET_BYTES + h * 32),
                w.1.as_ptr().add(p * ng * NR + h * HALF),
                w.2.as_ptr().add(p * ng * NR + h * HALF),
            );
            let bv = _mm256_loadu_ps(bias.as_ptr().add(j0));
            let mut i = 0;
            while i < m {
                let xt = (
                    x.0.as_ptr().add(i * k),
                    x.1.as_ptr().add(i * nb),
                    x.2.as_ptr().add(i * nb),
                );
                let o = (out.add(i * ldo + j0), ldo, c, bv);
                i += match m - i {
                    4.. => tile::<S, 4>(xt, pw, (k, gb), o),
                    3 => tile::<S, 3>(xt, pw, (k, gb), o),
                    2 => tile::<S, 2>(xt, pw, (k, gb), o),
                    _ => tile::<S, 1>(xt, pw, (k, gb), o),
                };
            }
        }
    }
}

/// T tokens × one half panel; stores the first `c` of its 8 columns. Returns T.
#[inline(always)]
unsafe fn tile<S: Step, const T: usize>(
    (codes, sa, asum): (*const i8, *const f32, *const i32),
    (data, sw, zw): (*const u8, *const f32, *const i32),
    (k, gb): (usize, usize),
    (out, ldo, c, bv): (*mut f32, usize, usize, __m256),
) -> usize {
    const { assert!(T <= TILE) };
    let nb = k / Q8_BLOCK;
    let nib = _mm256_set1_epi8(15);
    let mut f = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let g = b / gb;
        let mut acc = [_mm256_setzero_si256(); T];
        for o in 4 * b..4 * b + 4 {
            let wv = _mm256_loadu_si256(data.add(o * OCTET_BYTES) as *const __m256i);
            let lo = _mm256_and_si256(wv, nib);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(wv), nib);
            for (t, a) in acc.iter_mut().enumerate() {
                let xp = codes.add(t * k + 8 * o) as *const i32;
                let xl = _mm256_set1_epi32(xp.read_unaligned());
                let xh = _mm256_set1_epi32(xp.add(1).read_unaligned());
                *a = S::step(*a, (lo, xl), (hi, xh));
            }
        }
        let s = _mm256_loadu_ps(sw.add(g * NR));
        let z = _mm256_loadu_si256(zw.add(g * NR) as *const __m256i);
        for (t, (f, a)) in f.iter_mut().zip(&acc).enumerate() {
            let zt = _mm256_mullo_epi32(z, _mm256_set1_epi32(-*asum.add(t * nb + b)));
            let d = _mm256_add_epi32(S::widen(*a), zt);
            let st = _mm256_mul_ps(s, _mm256_set1_ps(*sa.add(t * nb + b)));
            *f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), st, *f);
        }
    }
    for (t, f) in f.iter().enumerate() {
        let y = _mm256_add_ps(*f, bv);
        if c == HALF {
            _mm256_storeu_ps(out.add(t * ldo), y);
        } else {
            let mut tmp = [0f32; HALF];
            _mm256_storeu_ps(tmp.as_mut_ptr(), y);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), out.add(t * ldo), c);
        }
    }
    T
}

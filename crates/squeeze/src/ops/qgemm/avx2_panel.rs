//! AVX2 micro-kernel of [`super::panel::PackedI8::product`]: tiles of up to 6 tokens
//! (4 with sign transfer, which needs two more registers) × one 16-channel panel, 12 i32
//! accumulators, one broadcast of 4 activation bytes per token and input group. A last
//! panel with at most 8 real channels multiplies only its first half. The same tiles run
//! the implicit GEMM of [`super::panel::PackedI8::product_implicit`] on non-negative
//! codes: each token reads its kernel rows in place from the padded channels-last image.
//! On AVX-VNNI (the VEX-encoded 256-bit `vpdpbusd`) the same tiles add each group of 4
//! codes with one instruction where AVX2 takes `vpmaddubsw`, `vpmaddwd` and `vpaddd`
//! ([`Dot`]).

use std::arch::x86_64::*;

use super::{ConvWindow, Reads, NR};

/// How a tile adds 4 codes × 4 weights per channel into its i32 accumulators: AVX2's
/// `vpmaddubsw` + `vpmaddwd` against ones, or one AVX-VNNI `vpdpbusd`. The tiles are
/// written once over this and compiled into one entry point per form, each with its
/// target features (the tiles are `#[inline(always)]`, so they take the entry's).
pub(super) trait Dot {
    /// `acc` plus, per channel of 8, the dot product of 4 codes (magnitudes `u`, signs `s`
    /// from [`token_codes`]) with that channel's 4 weight bytes in `w`; the code's sign
    /// moves onto the weight (`vpsignb`) when `SIGNED`.
    ///
    /// # Safety
    /// The calling entry point enables the form's instructions.
    unsafe fn dot<const SIGNED: bool>(
        acc: __m256i,
        us: (__m256i, __m256i),
        w: __m256i,
        ones: __m256i,
    ) -> __m256i;
}

/// AVX2: the code's sign moved onto the weight ([`signed_weights`]), magnitude × weight
/// pairs by `vpmaddubsw` (exact while each pair sum fits i16: |a| ≤ 127 times a code in
/// [−127, 127]), widened against `ones` (`vpmaddwd`) and added (`vpaddd`).
pub(super) struct Madd;

/// AVX-VNNI: the sign moved onto the weight as for [`Madd`], then `vpdpbusd` (no i16
/// intermediate: exact for any unsigned code and signed weight).
pub(super) struct Vnni;

impl Dot for Madd {
    #[inline(always)]
    unsafe fn dot<const SIGNED: bool>(
        acc: __m256i,
        (u, s): (__m256i, __m256i),
        w: __m256i,
        ones: __m256i,
    ) -> __m256i {
        let x = signed_weights::<SIGNED>(w, s);
        _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), ones))
    }
}

impl Dot for Vnni {
    #[inline(always)]
    unsafe fn dot<const SIGNED: bool>(
        acc: __m256i,
        (u, s): (__m256i, __m256i),
        w: __m256i,
        _: __m256i,
    ) -> __m256i {
        _mm256_dpbusd_avx_epi32(acc, u, signed_weights::<SIGNED>(w, s))
    }
}

/// Every panel against every token; see `PackedI8::product` for the contract. `vnni`:
/// the AVX-VNNI form.
///
/// # Safety
/// AVX2 (and with `vnni`, AVX-VNNI) is available; `a`/`abs` hold `m` rows of stride `lda`
/// with at least `nq·4` bytes each, `panels` holds whole panels of `nq·64` bytes, `out`
/// has `m` rows of stride `ldo` with room for every panel's 16 columns.
#[allow(clippy::too_many_arguments)]
pub unsafe fn product(
    a: &[i8],
    abs: &[u8],
    (m, lda): (usize, usize),
    (panels, valid): (&[u8], usize),
    nq: usize,
    signed: bool,
    out: &mut [i32],
    ldo: usize,
    vnni: bool,
) {
    let r = Reads::rows(lda, nq);
    let src = (a.as_ptr(), abs.as_ptr());
    let job = ((panels, valid), nq, m, r, signed, out.as_mut_ptr(), ldo);
    match vnni {
        true => panels_vnni(src, job),
        false => panels_madd(src, job),
    }
}

/// [`product`] as an implicit GEMM over non-negative codes: token (oh, ow)'s kernel row
/// `ki` is the `k·c` bytes at `((oh·stride + ki)·wp + ow·stride)·c` of `img` — the im2col
/// row's `ki`-th run, uncopied. The output's rows are packed (`ho·wo` rows of stride
/// `ldo`).
///
/// # Safety
/// AVX2 (and with `vnni`, AVX-VNNI) is available; `img` holds `((ho − 1)·stride + k)` rows
/// of `wp·c` bytes, `k·c` is a multiple of 4 and `nq = k·k·c / 4`; `panels` and `valid` as
/// in [`product`]; `out` has `ho·wo` rows of stride `ldo` with room for every panel's 16
/// columns.
pub unsafe fn product_implicit(
    img: *const u8,
    win: ConvWindow,
    (panels, valid): (&[u8], usize),
    nq: usize,
    out: *mut i32,
    ldo: usize,
    vnni: bool,
) {
    let r = Reads::window(&win);
    // the tiles run on across output rows, so a narrow image (7 or 14 wide) takes one
    // short tile per panel rather than one per row; unsigned codes: the signed pointer is
    // never read
    let m = win.ho * win.wo;
    let job = ((panels, valid), nq, m, r, false, out, ldo);
    match vnni {
        true => panels_vnni((img as *const i8, img), job),
        false => panels_madd((img as *const i8, img), job),
    }
}

/// What [`each_panel`] runs: the panels (and the real channels from the first), groups of
/// 4 inputs, tokens, where they are read, whether signed, the output and its stride.
type Job<'a> = (
    (&'a [u8], usize),
    usize,
    usize,
    Reads,
    bool,
    *mut i32,
    usize,
);

/// [`each_panel`] with `vpmaddubsw` + `vpmaddwd`.
#[target_feature(enable = "avx2")]
unsafe fn panels_madd(src: (*const i8, *const u8), job: Job<'_>) {
    each_panel::<Madd>(src, job)
}

/// [`each_panel`] with AVX-VNNI's `vpdpbusd`.
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn panels_vnni(src: (*const i8, *const u8), job: Job<'_>) {
    each_panel::<Vnni>(src, job)
}

/// Every panel against the `m` tokens; one panel (≤ a few KB) stays in L1 while every
/// token tile streams past it. A last panel with at most 8 real channels multiplies only
/// its first half.
#[inline(always)]
unsafe fn each_panel<D: Dot>(
    (ap, bp): (*const i8, *const u8),
    ((panels, valid), nq, m, r, signed, out, ldo): Job<'_>,
) {
    let psize = nq * NR * 4;
    let np = panels.len() / psize.max(1);
    for p in 0..np {
        let w = (panels.as_ptr().add(p * psize), valid <= p * NR + NR / 2);
        token_rows::<D>((ap, bp), m, r, w, signed, out.add(p * NR), ldo);
    }
}

/// One panel against `m` tokens (read from the code and magnitude pointers as `r`
/// says), in tiles, into `out`'s rows of stride `ldo`.
#[inline(always)]
unsafe fn token_rows<D: Dot>(
    (ap, bp): (*const i8, *const u8),
    m: usize,
    r: Reads,
    (w, half): (*const u8, bool),
    signed: bool,
    out: *mut i32,
    ldo: usize,
) {
    let mut i = 0;
    while i < m {
        let src = (ap, bp, i);
        let o = out.add(i * ldo);
        i += match (half, signed) {
            (false, false) => tiles::<D, 2, false>(m - i, src, r, w, o, ldo),
            (false, true) => tiles::<D, 2, true>(m - i, src, r, w, o, ldo),
            (true, false) => tiles::<D, 1, false>(m - i, src, r, w, o, ldo),
            (true, true) => tiles::<D, 1, true>(m - i, src, r, w, o, ldo),
        };
    }
}

/// Where a tile's tokens are: the code and magnitude pointers, and the tile's first token.
type Src = (*const i8, *const u8, usize);

/// The next tile of up to 6 tokens (4 with sign transfer) × the panel's `V` registers of
/// 8 channels; returns its token count.
#[inline(always)]
unsafe fn tiles<D: Dot, const V: usize, const SIGNED: bool>(
    left: usize,
    src: Src,
    r: Reads,
    w: *const u8,
    o: *mut i32,
    ldo: usize,
) -> usize {
    match (SIGNED, left) {
        (false, 6..) => tile::<D, 6, V, SIGNED>(tokens(src, r), r, w, o, ldo),
        (false, 5) => tile::<D, 5, V, SIGNED>(tokens(src, r), r, w, o, ldo),
        (_, 4..) => tile::<D, 4, V, SIGNED>(tokens(src, r), r, w, o, ldo),
        (_, 3) => tile::<D, 3, V, SIGNED>(tokens(src, r), r, w, o, ldo),
        (_, 2) => tile::<D, 2, V, SIGNED>(tokens(src, r), r, w, o, ldo),
        _ => tile::<D, 1, V, SIGNED>(tokens(src, r), r, w, o, ldo),
    }
}

/// The code and magnitude pointers of a tile's T tokens.
#[inline(always)]
fn tokens<const T: usize>((a, abs, i): Src, r: Reads) -> [(*const i8, *const u8); T] {
    r.tokens::<T>(i)
        .map(|at| (a.wrapping_add(at), abs.wrapping_add(at)))
}

/// T tokens (token t's codes and magnitudes from `a[t]`, their segments as `r` says) ×
/// the first `V` (1 or 2) 8-channel halves of panel `w` → `out` rows of 16 i32 (an unused
/// second half stored as zeros); returns T.
#[inline(always)]
unsafe fn tile<D: Dot, const T: usize, const V: usize, const SIGNED: bool>(
    a: [(*const i8, *const u8); T],
    r: Reads,
    w: *const u8,
    out: *mut i32,
    ldo: usize,
) -> usize {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_si256(); V]; T];
    for g in 0..r.nseg {
        let ag = a.map(|(a, b)| (a.add(g * r.seg), b.add(g * r.seg)));
        let wg = w.add(g * r.nqs * 64);
        for q in 0..r.nqs {
            let mut wv = [_mm256_setzero_si256(); V];
            for (v, reg) in wv.iter_mut().enumerate() {
                *reg = _mm256_loadu_si256(wg.add(q * 64 + v * 32) as *const __m256i);
            }
            for (t, acc) in acc.iter_mut().enumerate() {
                let x = token_codes::<SIGNED>(ag[t], 4 * q, ones);
                for (acc, wr) in acc.iter_mut().zip(&wv) {
                    *acc = D::dot::<SIGNED>(*acc, x, *wr, ones);
                }
            }
        }
    }
    for (t, acc) in acc.iter().enumerate() {
        let mut halves = [_mm256_setzero_si256(); 2];
        halves[..V].copy_from_slice(acc);
        for (v, r) in halves.iter().enumerate() {
            _mm256_storeu_si256(out.add(t * ldo + 8 * v) as *mut __m256i, *r);
        }
    }
    T
}

/// The 4 codes at byte `at` of a token's rows `(a, abs)`, broadcast: their magnitudes and,
/// when `SIGNED`, the codes themselves for their signs (else `ones`, unused).
#[inline(always)]
pub(super) unsafe fn token_codes<const SIGNED: bool>(
    (a, abs): (*const i8, *const u8),
    at: usize,
    ones: __m256i,
) -> (__m256i, __m256i) {
    let u = _mm256_set1_epi32((abs.add(at) as *const i32).read_unaligned());
    let s = match SIGNED {
        true => _mm256_set1_epi32((a.add(at) as *const i32).read_unaligned()),
        false => ones,
    };
    (u, s)
}

/// The weights `w` with each code's sign from `s` moved onto them (`vpsignb`: negated
/// where the code is negative, zeroed where it is 0) when `SIGNED`, else as they are.
#[inline(always)]
unsafe fn signed_weights<const SIGNED: bool>(w: __m256i, s: __m256i) -> __m256i {
    if SIGNED {
        _mm256_sign_epi8(w, s)
    } else {
        w
    }
}

/// `t[j·ldt + i] = acc[i·ldo + j]·scale[j] + bias[j]` (ReLU'd when `relu`) for the
/// channels `j < nb` and tokens `i < mb` (both multiples of 8), 8×8 blocks transposed in
/// registers.
///
/// # Safety
/// AVX2 is available; `acc` holds `mb` rows of stride `ldo ≥ nb`, `scale`/`bias` at least
/// `nb` values and `t` `nb` rows of stride `ldt ≥ mb`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
pub unsafe fn rescale_blocks(
    acc: &[i32],
    (mb, ldo): (usize, usize),
    (scale, bias): (&[f32], &[f32]),
    nb: usize,
    relu: bool,
    t: &mut [f32],
    ldt: usize,
) {
    let zero = _mm256_setzero_ps();
    for j0 in (0..nb).step_by(8) {
        let s = _mm256_loadu_ps(scale.as_ptr().add(j0));
        let b = _mm256_loadu_ps(bias.as_ptr().add(j0));
        for i0 in (0..mb).step_by(8) {
            // row r: token i0 + r, channels j0..j0 + 8
            let mut r = [zero; 8];
            for (k, v) in r.iter_mut().enumerate() {
                let a = _mm256_loadu_si256(acc.as_ptr().add((i0 + k) * ldo + j0) as *const __m256i);
                // a product, then a sum: the scalar path's rounding
                let y = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(a), s), b);
                *v = if relu { _mm256_max_ps(y, zero) } else { y };
            }
            let c = transpose8(r);
            for (k, v) in c.iter().enumerate() {
                _mm256_storeu_ps(t.as_mut_ptr().add((j0 + k) * ldt + i0), *v);
            }
        }
    }
}

/// The 8×8 transpose of eight rows of 8 floats.
#[target_feature(enable = "avx2")]
unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

/// `dst[px·c + ci] = src[ci·hw + px]` for the channels `ci < cb` and pixels `px < pb`
/// (multiples of 8), one 8×8 block of bytes at a time.
///
/// # Safety
/// SSE2 is available; `src` and `dst` hold `c·hw` bytes, `cb ≤ c`, `pb ≤ hw`.
#[target_feature(enable = "avx2")]
pub unsafe fn transpose_bytes(
    src: &[i8],
    (c, hw): (usize, usize),
    (cb, pb): (usize, usize),
    dst: &mut [i8],
) {
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    for c0 in (0..cb).step_by(8) {
        for p0 in (0..pb).step_by(8) {
            let row = |r: usize| _mm_loadl_epi64(s.add((c0 + r) * hw + p0) as *const __m128i);
            // bytes of rows (0,1), (2,3), … interleaved, then 16-bit pairs, then 32-bit
            let a0 = _mm_unpacklo_epi8(row(0), row(1));
            let a1 = _mm_unpacklo_epi8(row(2), row(3));
            let a2 = _mm_unpacklo_epi8(row(4), row(5));
            let a3 = _mm_unpacklo_epi8(row(6), row(7));
            let b0 = _mm_unpacklo_epi16(a0, a1);
            let b1 = _mm_unpackhi_epi16(a0, a1);
            let b2 = _mm_unpacklo_epi16(a2, a3);
            let b3 = _mm_unpackhi_epi16(a2, a3);
            // each 64-bit half: one pixel's 8 channels
            let cols = [
                _mm_unpacklo_epi32(b0, b2),
                _mm_unpackhi_epi32(b0, b2),
                _mm_unpacklo_epi32(b1, b3),
                _mm_unpackhi_epi32(b1, b3),
            ];
            for (q, v) in cols.iter().enumerate() {
                let px = p0 + 2 * q;
                _mm_storel_epi64(d.add(px * c + c0) as *mut __m128i, *v);
                _mm_storel_epi64(
                    d.add((px + 1) * c + c0) as *mut __m128i,
                    _mm_unpackhi_epi64(*v, *v),
                );
            }
        }
    }
}

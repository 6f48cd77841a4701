//! AVX-512 VNNI micro-kernel of [`super::panel::PackedI8::product`] (the static int8
//! convolution's product): a panel's 16 channels × 4 inputs are one 512-bit register and
//! `vpdpbusd` multiplies a broadcast of a token's 4 activation bytes (unsigned) with it,
//! adding each channel's 4 products into its i32 lane. Codes after a ReLU are non-negative
//! and go in as they are. Signed codes (a first layer's) go in offset by 128 (`c ⊕ 0x80`
//! = c + 128, in [1, 255]), once, before the product, and each accumulator starts at
//! −128·Σ_c w — the channel sums packed beside the panels — so the sum is exact either
//! way (AVX-512BW has no `vpsignb` for the AVX2 kernel's sign transfer).
//!
//! The tiles ([`wide`]) hold up to 4 panels × 6 tokens, 24 accumulators, each token's 4
//! codes broadcast straight from memory once for all the tile's panels — per group of 4
//! inputs, 4 + 6 loads feed 24 `vpdpbusd`.

use super::NR;

thread_local! {
    /// Each thread's signed codes offset by 128, reused across calls.
    static OFFSET: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::default();
}

/// Every panel against every token; the contract of `avx2_panel::product`. Non-negative
/// codes go to the wide tiles as they are (from `abs`); signed ones are offset once, into
/// a per-thread buffer, and the wide tiles start from −128·Σw.
///
/// # Safety
/// AVX-512F, AVX-512BW and AVX-512 VNNI are available; `a`/`abs` hold `m` rows of stride
/// `lda` with at least `nq·4` bytes each, `panels` whole panels of `nq·64` bytes, `sums`
/// 16 channel sums per panel, and `out` `m` rows of stride `ldo` with room for every
/// panel's 16 columns.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn product(
    (a, abs): (&[i8], &[u8]),
    (m, lda): (usize, usize),
    (panels, sums): (&[u8], &[i32]),
    nq: usize,
    signed: bool,
    out: &mut [i32],
    ldo: usize,
) {
    let np = panels.len() / (nq * NR * 4).max(1);
    let op = out.as_mut_ptr();
    if !signed {
        let w = (panels.as_ptr(), std::ptr::null());
        return wide::product(abs.as_ptr(), (m, lda), w, (np, nq), op, ldo);
    }
    // the codes offset once (c ⊕ 0x80 = c + 128, in [1, 255])
    OFFSET.with(|buf| {
        let mut buf = buf.borrow_mut();
        buf.clear();
        buf.extend(a.iter().map(|&v| v as u8 ^ 0x80));
        let w = (panels.as_ptr(), sums.as_ptr());
        wide::product(buf.as_ptr(), (m, lda), w, (np, nq), op, ldo)
    })
}

/// The wide tiles (see the module notes), over im2col rows (signed ones offset by 128)
/// or, as an implicit GEMM, straight over a zero-padded channels-last image.
pub(super) mod wide {
    use std::arch::x86_64::*;

    use super::super::{ConvWindow as Window, Reads};
    use super::NR;

    /// Every panel against every token: `out[i, 16p + ch] = start + Σ_c a[i, c]·w[16p +
    /// ch, c]`, where `start` is 0, or −128 times the channel's sum in `sums` when that is
    /// not null (codes offset by 128).
    ///
    /// # Safety
    /// As [`super::product`] with unsigned codes in `a` (rows of stride `lda`), `np`
    /// panels of `nq` groups at `w`, and `sums` null or 16 sums per panel.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn product(
        a: *const u8,
        (m, lda): (usize, usize),
        (w, sums): (*const u8, *const i32),
        (np, nq): (usize, usize),
        out: *mut i32,
        ldo: usize,
    ) {
        let r = Reads::rows(lda, nq);
        panel_groups((w, sums), (np, nq), out, &mut |step, wp, o| match step {
            4 => rows::<4, 6>(a, m, r, wp, nq, o, ldo),
            3 => rows::<3, 8>(a, m, r, wp, nq, o, ldo),
            2 => rows::<2, 8>(a, m, r, wp, nq, o, ldo),
            _ => rows::<1, 8>(a, m, r, wp, nq, o, ldo),
        });
    }

    /// The same product with token (oh, ow)'s inputs read in place from the padded
    /// channels-last image `img`: kernel row `ki` is the `k·c` bytes at
    /// `((oh·stride + ki)·wp + ow·stride)·c` — the im2col row's `ki`-th run, uncopied.
    ///
    /// # Safety
    /// As [`product`], with `img` holding `((ho − 1)·stride + k)` rows of `wp·c` bytes
    /// and `out` `ho·wo` rows; `k·c` a multiple of 4 and `nq = k·k·c / 4`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn product_implicit(
        img: *const u8,
        win: Window,
        w: *const u8,
        (np, nq): (usize, usize),
        out: *mut i32,
        ldo: usize,
    ) {
        let r = Reads::window(&win);
        // the tiles run on across output rows, so a narrow image (7 or 14 wide) takes
        // one short tile per panel group rather than one per row
        let m = win.ho * win.wo;
        let w = (w, std::ptr::null());
        panel_groups(w, (np, nq), out, &mut |step, wp, o| match step {
            4 => rows::<4, 6>(img, m, r, wp, nq, o, ldo),
            3 => rows::<3, 8>(img, m, r, wp, nq, o, ldo),
            2 => rows::<2, 8>(img, m, r, wp, nq, o, ldo),
            _ => rows::<1, 8>(img, m, r, wp, nq, o, ldo),
        });
    }

    /// Runs `each(panels in the group, first panel, its output columns)` over groups of
    /// up to 4 panels.
    unsafe fn panel_groups(
        (w, sums): (*const u8, *const i32),
        (np, nq): (usize, usize),
        out: *mut i32,
        each: &mut dyn FnMut(usize, (*const u8, *const i32), *mut i32) -> usize,
    ) {
        let psize = nq * NR * 4;
        let mut p = 0;
        while p < np {
            let s = if sums.is_null() {
                sums
            } else {
                sums.add(p * NR)
            };
            p += each((np - p).min(4), (w.add(p * psize), s), out.add(p * NR));
        }
    }

    /// P panels against `m` tokens (read from `a` as `r` says), in tiles of up to T
    /// tokens; returns P.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn rows<const P: usize, const T: usize>(
        a: *const u8,
        m: usize,
        r: Reads,
        (w, sums): (*const u8, *const i32),
        nq: usize,
        out: *mut i32,
        ldo: usize,
    ) -> usize {
        let psize = nq * NR * 4;
        let mut i = 0;
        while i < m {
            let o = out.add(i * ldo);
            let wp = (w, psize, sums);
            i += match m - i {
                t if t >= T => tile::<P, T>(tokens(a, r, i), r, wp, o, ldo),
                7 => tile::<P, 7>(tokens(a, r, i), r, wp, o, ldo),
                6 => tile::<P, 6>(tokens(a, r, i), r, wp, o, ldo),
                5 => tile::<P, 5>(tokens(a, r, i), r, wp, o, ldo),
                4 => tile::<P, 4>(tokens(a, r, i), r, wp, o, ldo),
                3 => tile::<P, 3>(tokens(a, r, i), r, wp, o, ldo),
                2 => tile::<P, 2>(tokens(a, r, i), r, wp, o, ldo),
                _ => tile::<P, 1>(tokens(a, r, i), r, wp, o, ldo),
            };
        }
        P
    }

    /// Where tokens `i..i + T` start.
    #[inline(always)]
    fn tokens<const T: usize>(a: *const u8, r: Reads, i: usize) -> [*const u8; T] {
        r.tokens::<T>(i).map(|at| a.wrapping_add(at))
    }

    /// T tokens (token t's segments from `a[t]`) × P panels (at stride `psize`), every
    /// group of every segment; stores T rows of 16·P i32.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile<const P: usize, const T: usize>(
        a: [*const u8; T],
        r: Reads,
        (w, psize, sums): (*const u8, usize, *const i32),
        out: *mut i32,
        ldo: usize,
    ) -> usize {
        // codes offset by 128 start from −128·Σw per channel (the sums beside the panels)
        let mut start = [_mm512_setzero_si512(); P];
        if !sums.is_null() {
            for (p, s) in start.iter_mut().enumerate() {
                let v = _mm512_loadu_si512(sums.add(p * NR) as *const __m512i);
                *s = _mm512_slli_epi32(_mm512_sub_epi32(_mm512_setzero_si512(), v), 7);
            }
        }
        let mut acc = [start; T];
        for g in 0..r.nseg {
            let (ag, wg) = (a.map(|a| a.add(g * r.seg)), w.add(g * r.nqs * 64));
            for q in 0..r.nqs {
                let mut wv = [_mm512_setzero_si512(); P];
                for (p, v) in wv.iter_mut().enumerate() {
                    *v = _mm512_loadu_si512(wg.add(p * psize + q * 64) as *const __m512i);
                }
                for (t, acc) in acc.iter_mut().enumerate() {
                    // one broadcast from memory serves the tile's P panels
                    let x = (ag[t].add(4 * q) as *const i32).read_unaligned();
                    let x = _mm512_set1_epi32(x);
                    for (acc, v) in acc.iter_mut().zip(&wv) {
                        *acc = _mm512_dpbusd_epi32(*acc, x, *v);
                    }
                }
            }
        }
        for (t, acc) in acc.iter().enumerate() {
            for (p, v) in acc.iter().enumerate() {
                _mm512_storeu_si512(out.add(t * ldo + p * NR) as *mut __m512i, *v);
            }
        }
        T
    }
}

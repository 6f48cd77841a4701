//! One image's operand of the int8 convolution: its int8 codes (quantized from f32 at
//! the static scale, channels-last), the zero-padded image the implicit GEMM reads in
//! place, or the im2col rows the other products read (Chellapilla et al. 2006's
//! unfolding of a convolution into a matrix product).

use crate::error::Result;
use crate::ops::qgemm::{self, panel, ConvWindow};

/// Non-negative codes are their own magnitudes.
pub(super) fn cast_u8(v: &[i8]) -> &[u8] {
    // SAFETY: i8 and u8 have the same size and alignment; every bit pattern is valid.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len()) }
}

/// Codes stored as bytes.
pub(super) fn cast_i8(v: &[u8]) -> &[i8] {
    // SAFETY: i8 and u8 have the same size and alignment; every bit pattern is valid.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const i8, v.len()) }
}

/// One image's int8 codes from its f32 values `[C, H, W]` at the static scale (clipped to
/// the code range), reordered channels-last into `hwc`.
pub(super) fn image_codes(
    isa: crate::isa::Isa,
    x: &[f32],
    (inv, [lo, hi]): (f32, [i8; 2]),
    (c, h, w): (usize, usize, usize),
    codes: &mut Vec<i8>,
    hwc: &mut Vec<i8>,
) -> Result<()> {
    let chw = c * h * w;
    codes.resize(chw, 0);
    // the magnitudes that matter are the im2col rows' (the caller's)
    let lim = hi.max(lo.saturating_neg());
    qgemm::quantize_row(isa, x, (inv, lim), codes, None);
    if lo > -lim || hi < lim {
        // a narrower code range (low-bit inputs): clipping the rounded codes equals
        // rounding the clipped values, the bounds being integers
        codes.iter_mut().for_each(|v| *v = (*v).clamp(lo, hi));
    }
    hwc.resize(chw, 0);
    panel::to_channels_last(isa, codes, (c, h * w), hwc)
}

/// The channels-last image `x` `[H, W, C]` with `pad` zero rows and columns around it,
/// then `slack` zero bytes, into `out`, starting on a 64-byte boundary (for aligned tile
/// loads); returns where in `out` (`[H + 2·pad, W + 2·pad, C]` and the slack), and
/// whether any code is negative. That is the sign bit of an OR over the bytes, taken as
/// they are copied (it vectorizes even in baseline x86-64's SSE2, where an early-exit
/// search does not and a signed byte minimum takes five instructions a vector).
pub(super) fn pad_image(
    x: &[i8],
    (c, h, w): (usize, usize, usize),
    pad: usize,
    slack: usize,
    out: &mut Vec<i8>,
) -> (std::ops::Range<usize>, bool) {
    let (wp, hp) = (w + 2 * pad, h + 2 * pad);
    let len = hp * wp * c + slack;
    // every byte of the range is written below: no clearing pass over the image
    if out.len() < len + 64 {
        out.resize(len + 64, 0);
    }
    let at = out.as_ptr().align_offset(64).min(64);
    let img = &mut out[at..at + len];
    let (row, side) = (wp * c, pad * c);
    img[..pad * row].fill(0);
    let mut any = 0i8;
    for (r, src) in x.chunks_exact(w * c).enumerate() {
        let dst = &mut img[(r + pad) * row..][..row];
        dst[..side].fill(0);
        for (d, &v) in dst[side..side + w * c].iter_mut().zip(src) {
            *d = v;
            any |= v;
        }
        dst[side + w * c..].fill(0);
    }
    img[(h + pad) * row..].fill(0);
    (at..at + len, any < 0)
}

/// Bytes a short run of [`im2col`] copies at once: runs of up to this many codes are
/// copied whole (one vector move), past their end — into bytes written after them.
pub(super) const OVERCOPY: usize = 16;

/// One image's int8 im2col rows `[Ho·Wo, lda]` into `cols` (the rows returned), from its
/// zero-padded channels-last image `img` (`[H + 2·pad, W + 2·pad, C]`, then at least
/// [`OVERCOPY`] readable bytes): row (oh, ow) holds, kernel row by kernel row, the C·k
/// codes under the kernel as one contiguous run of a padded input row, then zeros to
/// `lda`. A first layer's runs are a few bytes (C = 1, k = 3: three), so they are
/// copied [`OVERCOPY`] bytes at a time, in order, each over-copy overwritten by what
/// follows it.
pub(super) fn im2col<'a>(
    img: &[i8],
    win: &ConvWindow,
    lda: usize,
    cols: &'a mut Vec<i8>,
) -> &'a [i8] {
    let (kc, m) = (win.k * win.c, win.ho * win.wo);
    let (row, tok) = (win.wp * win.c, win.stride * win.c);
    // every byte of the rows is written below (zeros included): no clearing pass; the
    // slack takes the last run's over-copy
    if cols.len() < m * lda + OVERCOPY {
        cols.resize(m * lda + OVERCOPY, 0);
    }
    // token t's first input, stepped along its output row, then to the next row
    let starts =
        (0..win.ho).flat_map(|oh| (0..win.wo).map(move |ow| oh * win.stride * row + ow * tok));
    if kc <= OVERCOPY && m > 0 {
        // the furthest read (the last token's last kernel row) and write, checked once
        let last = (win.ho - 1) * win.stride * row + (win.wo - 1) * tok + (win.k - 1) * row;
        assert!(
            last + OVERCOPY <= img.len()
                && (m - 1) * lda + (win.k - 1) * kc + OVERCOPY <= cols.len()
        );
        assert!(win.k * kc <= lda);
        let (ip, cp) = (img.as_ptr(), cols.as_mut_ptr());
        for (src, at) in starts.zip((0..m).map(|t| t * lda)) {
            // SAFETY: every read is within `last + OVERCOPY` and every write within the
            // bound checked above (tokens and kernel rows in order, so the last is the
            // furthest); the zero tail ends at the row's `lda`.
            unsafe {
                for ki in 0..win.k {
                    let v = (ip.add(src + ki * row) as *const [i8; OVERCOPY]).read_unaligned();
                    (cp.add(at + ki * kc) as *mut [i8; OVERCOPY]).write_unaligned(v);
                }
                std::ptr::write_bytes(cp.add(at + win.k * kc), 0, lda - win.k * kc);
            }
        }
        return &cols[..m * lda];
    }
    for (src, at) in starts.zip((0..m).map(|t| t * lda)) {
        for ki in 0..win.k {
            let (s, d) = (src + ki * row, at + ki * kc);
            cols[d..d + kc].copy_from_slice(&img[s..s + kc]);
        }
        cols[at + win.k * kc..at + lda].fill(0);
    }
    &cols[..m * lda]
}

//! The convolution's epilogues over the panel products' channels-last i32 rows: the
//! rescale to channels-first f32 outputs, the requantize into the reading layer's int8
//! codes (the same rounding as its quantizer, so int8 stays int8 between layers), and the
//! max-pool over the products before their rescale, alone or fused into the requantize
//! (one pass on AVX-512). Every path gives the scalar form's values exactly; the pool is
//! exact because the rescale is monotone per channel (a negative factor reverses it).

use crate::error::{Error, Result};
use crate::isa::{self, Isa};
/// Channels-last i32 products to channels-first f32 outputs: for `m` tokens and every
/// channel `j < scale.len()`, `t[j·m + i] = acc[i·ldo + j]·scale[j] + bias[j]` (then
/// `max(0, ·)` when `relu`). The AVX2 path transposes 8×8 blocks in registers; both paths
/// round the same (a product, then a sum), so they agree exactly.
#[allow(clippy::too_many_arguments)]
pub fn rescale_transposed(
    isa: Isa,
    acc: &[i32],
    (m, ldo): (usize, usize),
    scale: &[f32],
    bias: &[f32],
    relu: bool,
    t: &mut [f32],
) -> Result<()> {
    let isa = isa::require(isa)?;
    let n = scale.len();
    if bias.len() != n || ldo < n || t.len() != n * m || acc.len() < m.saturating_sub(1) * ldo + n {
        return Err(Error::Data(format!(
            "rescaling {m} rows of {n} channels (stride {ldo}): {} products, {} biases, {} outputs",
            acc.len(),
            bias.len(),
            t.len()
        )));
    }
    let one = |j: usize, i: usize| {
        let y = acc[i * ldo + j] as f32 * scale[j] + bias[j];
        if relu {
            y.max(0.0)
        } else {
            y
        }
    };
    let (mut nb, mut mb) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        (nb, mb) = (n / 8 * 8, m / 8 * 8);
        // SAFETY: AVX2 is implied by any path above scalar; the sizes were checked above
        // and the kernel touches only whole 8×8 blocks inside them.
        unsafe { super::avx2_panel::rescale_blocks(acc, (mb, ldo), (scale, bias), nb, relu, t, m) };
    }
    let _ = isa;
    // what the blocks did not cover: the last channels, then the last tokens
    for j in 0..n {
        let from = if j < nb { mb } else { 0 };
        for i in from..m {
            t[j * m + i] = one(j, i);
        }
    }
    Ok(())
}

/// One output pixel's i32 products of a convolution rescaled as [`rescale_transposed`]
/// does (`acc·scale + bias`, a product then a sum, then the ReLU) and written as the
/// reading layer's int8 codes: `round(v·inv)` half away from zero at that layer's limit,
/// then clamped to its range `[lo, hi]` — exactly what its quantizer makes of the f32
/// value, on every path (8 channels per step on AVX2; on AVX-512 one row of
/// [`requantize_rows`]' kernel).
pub fn requantize_row(
    isa: Isa,
    acc: &[i32],
    (scale, bias): (&[f32], &[f32]),
    relu: bool,
    (inv, [lo, hi]): (f32, [i8; 2]),
    out: &mut [u8],
) {
    let n = out.len();
    assert!(acc.len() >= n && scale.len() >= n && bias.len() >= n);
    let lim = hi.max(lo.saturating_neg());
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if isa.avx512() && isa.is_supported() {
        // one row of the rows kernel (its last channels under a mask)
        let (a, s, b) = (&acc[..n], &scale[..n], &bias[..n]);
        // SAFETY: the path's AVX-512F was detected; the slices are `n` long.
        unsafe {
            super::avx512_quant::requantize_rows(
                super::avx512_quant::Source {
                    acc: a,
                    n: 1,
                    geo: (1, 1, n),
                    pool: None,
                },
                (s, b),
                relu,
                (inv, lim, lo, hi),
                (out, n),
            )
        };
        return;
    } else if isa != Isa::Scalar && isa.is_supported() {
        done = n / 8 * 8;
        let (a, s, b) = (&acc[..done], &scale[..done], &bias[..done]);
        // SAFETY: every supported path above scalar implies AVX2; the slices are `done` long.
        unsafe { super::avx2::requantize(a, (s, b), relu, (inv, lim, lo, hi), &mut out[..done]) };
    }
    for j in done..n {
        let v = acc[j] as f32 * scale[j] + bias[j];
        let v = if relu { v.max(0.0) } else { v };
        out[j] = super::quantize::round_code_to(v * inv, lim).clamp(lo, hi) as u8;
    }
}

/// [`requantize_row`] over `n` output pixels whose products are rows of `acc` (stride
/// `ldo`): pixel `r` at row `(r / wo)·pitch + r % wo` (`pitch == wo`: packed rows), its
/// `scale.len()` codes at `out[r·ldout]`. On AVX-512 one call runs every row, the last
/// channels under a mask (no scalar tail); the other paths run row by row. The same codes
/// on every path.
#[allow(clippy::too_many_arguments)]
pub fn requantize_rows(
    isa: Isa,
    (acc, n, (wo, pitch, ldo)): (&[i32], usize, (usize, usize, usize)),
    (scale, bias): (&[f32], &[f32]),
    relu: bool,
    (inv, [lo, hi]): (f32, [i8; 2]),
    (out, ldout): (&mut [u8], usize),
) -> Result<()> {
    let w = scale.len();
    let last = |n: usize| ((n - 1) / wo * pitch + (n - 1) % wo) * ldo + w;
    let fits = bias.len() == w
        && ldout >= w
        && ldo >= w
        && wo > 0
        && pitch >= wo
        && (n == 0 || (out.len() >= (n - 1) * ldout + w && acc.len() >= last(n)));
    if !fits {
        return Err(Error::Data(format!(
            "requantizing {n} rows of {w} channels (width {wo}, pitch {pitch}, stride {ldo}; \
             {} biases, {} products) into {} codes (stride {ldout})",
            bias.len(),
            acc.len(),
            out.len()
        )));
    }
    #[cfg(target_arch = "x86_64")]
    if isa.avx512() && isa.is_supported() {
        let lim = hi.max(lo.saturating_neg());
        // SAFETY: the path's AVX-512F was detected; the last row (the furthest, rows
        // being in order) and the last codes were checked above.
        unsafe {
            super::avx512_quant::requantize_rows(
                super::avx512_quant::Source {
                    acc,
                    n,
                    geo: (wo, pitch, ldo),
                    pool: None,
                },
                (scale, bias),
                relu,
                (inv, lim, lo, hi),
                (out, ldout),
            )
        };
        return Ok(());
    }
    for r in 0..n {
        let a = &acc[((r / wo) * pitch + r % wo) * ldo..][..w];
        requantize_row(
            isa,
            a,
            (scale, bias),
            relu,
            (inv, [lo, hi]),
            &mut out[r * ldout..][..w],
        );
    }
    Ok(())
}

/// [`pool_rows`] then [`requantize_rows`] of the pooled products, in one pass on
/// AVX-512 (each window's max is taken in registers and rescaled there, so the pooled
/// products are never stored); the other paths pool into `scratch` first. The same codes
/// on every path: the pool of `ho × wo` products (pitch, stride `ldo`; window `k`,
/// stride `s`, order flips `flip`) of `scale.len()` channels, its `ph × pw` pixels' codes
/// at `out[r·ldout]`. Returns `(ph, pw)`.
#[allow(clippy::too_many_arguments)]
pub fn requantize_pooled(
    isa: Isa,
    (acc, (ho, wo, pitch, ldo)): (&[i32], (usize, usize, usize, usize)),
    (k, s, flip): (usize, usize, &[i32]),
    (scale, bias): (&[f32], &[f32]),
    relu: bool,
    (inv, [lo, hi]): (f32, [i8; 2]),
    (out, ldout): (&mut [u8], usize),
    scratch: &mut Vec<i32>,
) -> Result<(usize, usize)> {
    let w = scale.len();
    #[cfg(target_arch = "x86_64")]
    if isa.avx512() && isa.is_supported() {
        // the checks of pool_rows, then those of requantize_rows
        let pooled = pool_dims(acc.len(), (ho, wo, pitch, ldo), (k, s), flip);
        let fits = flip.len() == w && bias.len() == w && ldout >= w;
        if let (Some((ph, pw)), true) = (pooled, fits) {
            if out.len() >= (ph * pw - 1) * ldout + w {
                let lim = hi.max(lo.saturating_neg());
                let src = super::avx512_quant::Source {
                    acc,
                    n: ph * pw,
                    geo: (pw, pitch, ldo),
                    pool: Some((k, s, flip)),
                };
                // SAFETY: the path's AVX-512F was detected; every window
                // lies inside the `ho × wo` products checked above (the last pooled
                // pixel's window ends at row ((ph−1)·s + k − 1)·pitch + (pw−1)·s + k − 1,
                // within (ho − 1)·pitch + wo − 1), and the last codes in `out`.
                unsafe {
                    super::avx512_quant::requantize_rows(
                        src,
                        (scale, bias),
                        relu,
                        (inv, lim, lo, hi),
                        (out, ldout),
                    )
                };
                return Ok((ph, pw));
            }
        }
        // otherwise the steps below name what does not fit
    }
    let (ph, pw) = pool_rows(isa, acc, (ho, wo, pitch, ldo), (k, s), flip, scratch)?;
    let src = (&scratch[..], ph * pw, (pw, pw, w));
    requantize_rows(isa, src, (scale, bias), relu, (inv, [lo, hi]), (out, ldout))?;
    Ok((ph, pw))
}

/// A max-pool window over channels-last i32 products, before their rescale: for an image
/// whose `ho × wo` output pixels are rows of `acc` (stride `ldo`, `cols` channels; pixel
/// (y, x) at row `y·pitch + x`), `pooled[(py·pw + px)·cols + j]` = the max over the
/// `k × k` window at (py·s, px·s) — or the min where `flip[j]` is `!0` rather than 0 (a
/// negative rescale factor reverses the order). `y = acc·s + b` rounded in f32 is
/// monotone in `acc` for a fixed factor, and so is the ReLU after it, so rescaling the
/// pooled products gives exactly the pool of the rescaled outputs. Returns the pooled
/// height and width (floor mode, as `max_pool2d`). The same loops compiled per path.
pub fn pool_rows(
    isa: Isa,
    acc: &[i32],
    (ho, wo, pitch, ldo): (usize, usize, usize, usize),
    (k, s): (usize, usize),
    flip: &[i32],
    pooled: &mut Vec<i32>,
) -> Result<(usize, usize)> {
    let isa = isa::require(isa)?;
    let cols = flip.len();
    let Some((ph, pw)) = pool_dims(acc.len(), (ho, wo, pitch, ldo), (k, s), flip) else {
        return Err(Error::Data(format!(
            "pooling {ho}×{wo} rows of {cols} channels (pitch {pitch}, stride {ldo}, {} \
             products) with kernel {k}, stride {s}, order flips of 0 or !0",
            acc.len()
        )));
    };
    pooled.clear();
    pooled.resize(ph * pw * cols, 0);
    pool_on(isa, acc, (pitch, ldo), (k, s, pw), flip, pooled);
    Ok((ph, pw))
}

/// The pooled height and width of [`pool_rows`]' operands, or `None` where they do not
/// fit: `len` products holding `ho × wo` pixels (pitch, stride `ldo`) of `flip.len()`
/// channels, a window and stride that fit the image, flips of 0 or `!0`.
fn pool_dims(
    len: usize,
    (ho, wo, pitch, ldo): (usize, usize, usize, usize),
    (k, s): (usize, usize),
    flip: &[i32],
) -> Option<(usize, usize)> {
    let fits = ldo >= flip.len() && pitch >= wo && len >= ((ho.max(1) - 1) * pitch + wo) * ldo;
    let flips = flip.iter().all(|f| *f == 0 || *f == !0);
    match k > 0 && s > 0 && ho >= k && wo >= k && fits && flips {
        true => Some(((ho - k) / s + 1, (wo - k) / s + 1)),
        false => None,
    }
}

isa_variants!(pool_on, pool_body, (acc: &[i32], rows: (usize, usize), win: (usize, usize, usize), flip: &[i32], pooled: &mut [i32]) -> ());

/// The loops of [`pool_rows`] over checked sizes. A channel whose order is reversed is
/// pooled as its bitwise NOT (`!v = −v − 1`, strictly decreasing in `v`): the max of the
/// NOTs is the NOT of the min, so every channel takes one XOR and a max per value, with
/// no select between a max and a min.
#[inline(always)]
fn pool_body(
    acc: &[i32],
    (pitch, ldo): (usize, usize),
    (k, s, pw): (usize, usize, usize),
    flip: &[i32],
    pooled: &mut [i32],
) {
    let cols = flip.len();
    for (o, out) in pooled.chunks_exact_mut(cols).enumerate() {
        let (py, px) = (o / pw, o % pw);
        let row = |dy: usize, dx: usize| {
            let at = ((py * s + dy) * pitch + px * s + dx) * ldo;
            &acc[at..at + cols]
        };
        for ((o, &v), &f) in out.iter_mut().zip(row(0, 0)).zip(flip) {
            *o = v ^ f;
        }
        for (dy, dx) in (0..k).flat_map(|dy| (0..k).map(move |dx| (dy, dx))).skip(1) {
            for ((o, &v), &f) in out.iter_mut().zip(row(dy, dx)).zip(flip) {
                *o = (*o).max(v ^ f);
            }
        }
        for (o, &f) in out.iter_mut().zip(flip) {
            *o ^= f;
        }
    }
}

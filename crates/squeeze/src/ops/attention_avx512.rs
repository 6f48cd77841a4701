//! The inference attention core's AVX-512 kernel for one (sample, head) whose head width
//! is a multiple of 16 (MiniLM's 32, BERT's 64): scaled dot-product attention (Vaswani et
//! al. 2017) with every step on 16-lane vectors. The head's real keys are transposed once
//! into a zero-padded block so that the scores of 16 keys are one register per query (a
//! broadcast of each query element times a row of the block, no horizontal sums); the
//! softmax runs over those registers with a polynomial exponential (the same reduction and
//! coefficients as `fast::exp`), padded lanes masked to exactly 0; the weighted values
//! accumulate in head_width/16 registers and are written, scaled by 1/Σ, straight into the
//! head's columns of the output. `attention.rs` keeps the portable reference path and
//! dispatches here; the isa-path tests hold the two together.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// One head's view: sample `sample`'s `l` rows of q, k and v (`pitch` apart) and of the
/// output (`w` apart: all heads), the head's columns `col..col + head_dim` in each, and the
/// keys that take part with their additive biases.
pub(crate) struct Head<'a> {
    pub l: usize,
    pub pitch: usize,
    pub w: usize,
    pub sample: usize,
    pub col: usize,
    pub keys: &'a [usize],
    pub bias: &'a [f32],
    pub scale: f32,
}

/// e^x on 16 lanes, x ≤ 88.3 (see `fast::exp`: Cody–Waite reduction, Cephes' degree-6
/// polynomial; clamped at −87.3).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp16(x: __m512) -> __m512 {
    use super::fast::{EXP_LN2, EXP_MAX, EXP_MIN, EXP_POLY};
    let x = _mm512_max_ps(
        _mm512_min_ps(x, _mm512_set1_ps(EXP_MAX)),
        _mm512_set1_ps(EXP_MIN),
    );
    let t = _mm512_fmadd_ps(
        x,
        _mm512_set1_ps(std::f32::consts::LOG2_E),
        _mm512_set1_ps(0.5),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(t);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2.0), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2.1), r);
    let mut p = _mm512_set1_ps(EXP_POLY[0]);
    for &c in &EXP_POLY[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let e = _mm512_add_ps(
        _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r),
        _mm512_set1_ps(1.0),
    );
    let pow2 = _mm512_slli_epi32::<23>(_mm512_add_epi32(
        _mm512_cvttps_epi32(n),
        _mm512_set1_epi32(127),
    ));
    _mm512_mul_ps(e, _mm512_castsi512_ps(pow2))
}

/// The lanes of the key block starting at key `j0` of `nk` that hold keys.
#[cfg(target_arch = "x86_64")]
fn lanes(j0: usize, nk: usize) -> __mmask16 {
    super::fast::avx512::first_lanes(nk - j0)
}

/// The context of every query row of the head (C·16 wide) into `out` at the head's
/// columns of the same rows.
///
/// # Safety
/// The CPU has AVX-512F; `out` holds the sample's rows (`w` apart), and no other writer
/// touches these columns of these rows while this runs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn head_ctx<const C: usize>(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    h: &Head,
    out: *mut f32,
) {
    let hd = C * 16;
    let nk = h.keys.len();
    if h.l == 0 {
        return;
    }
    let blocks = nk.div_ceil(16);
    let pitch = blocks * 16;
    let row = |i: usize| (h.sample * h.l + i) * h.pitch + h.col;
    assert!(h.bias.len() == nk && h.col + hd <= h.w.min(h.pitch));
    assert!(row(h.l - 1) + hd <= q.len().min(k.len()).min(v.len()));
    assert!(h.keys.iter().all(|&j| j < h.l));
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        s.clear();
        s.resize((hd + 2) * pitch, 0.0);
        let (kt, rest) = s.split_at_mut(hd * pitch);
        let (bias, p) = rest.split_at_mut(pitch);
        // the keys transposed: element d of key j at kt[d·pitch + j], padding lanes zero
        for (j, &key) in h.keys.iter().enumerate() {
            for (d, &x) in k[row(key)..row(key) + hd].iter().enumerate() {
                kt[d * pitch + j] = x;
            }
        }
        bias[..nk].copy_from_slice(h.bias);
        // SAFETY: as this function's (AVX-512F, and the caller's columns of `out`)
        unsafe { queries::<C>((q, v), h, (kt, bias, p), out) };
    })
}

thread_local! {
    /// Each thread's transposed keys, padded biases and weights, reused across heads.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`head_ctx`]'s loop over the query rows, given the transposed key block `kt`, the
/// padded key biases and room `p` for one row's weights.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn queries<const C: usize>(
    (q, v): (&[f32], &[f32]),
    h: &Head,
    (kt, bias, p): (&[f32], &[f32], &mut [f32]),
    out: *mut f32,
) {
    let nk = h.keys.len();
    let blocks = nk.div_ceil(16);
    let pitch = blocks * 16;
    let hd = C * 16;
    let row = |i: usize| (h.sample * h.l + i) * h.pitch + h.col;
    let out_row = |i: usize| (h.sample * h.l + i) * h.w + h.col;
    assert!(kt.len() >= hd * pitch && bias.len() >= pitch && p.len() >= pitch);
    let scale = _mm512_set1_ps(h.scale);
    for i in 0..h.l {
        let qi = q.as_ptr().add(row(i));
        let mut top = _mm512_set1_ps(f32::NEG_INFINITY);
        for b in 0..blocks {
            let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let col = kt.as_ptr().add(b * 16);
            for d in (0..hd).step_by(2) {
                a0 = _mm512_fmadd_ps(
                    _mm512_set1_ps(*qi.add(d)),
                    _mm512_loadu_ps(col.add(d * pitch)),
                    a0,
                );
                a1 = _mm512_fmadd_ps(
                    _mm512_set1_ps(*qi.add(d + 1)),
                    _mm512_loadu_ps(col.add((d + 1) * pitch)),
                    a1,
                );
            }
            let s = _mm512_add_ps(
                _mm512_mul_ps(_mm512_add_ps(a0, a1), scale),
                _mm512_loadu_ps(bias.as_ptr().add(b * 16)),
            );
            _mm512_storeu_ps(p.as_mut_ptr().add(b * 16), s);
            top = _mm512_mask_max_ps(top, lanes(b * 16, nk), top, s);
        }
        let max = _mm512_set1_ps(_mm512_reduce_max_ps(top));
        let mut sum = _mm512_setzero_ps();
        for b in 0..blocks {
            let at = p.as_mut_ptr().add(b * 16);
            let e = _mm512_maskz_mov_ps(
                lanes(b * 16, nk),
                exp16(_mm512_sub_ps(_mm512_loadu_ps(at), max)),
            );
            _mm512_storeu_ps(at, e);
            sum = _mm512_add_ps(sum, e);
        }
        let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
        let mut acc = [_mm512_setzero_ps(); C];
        for (j, &key) in h.keys.iter().enumerate() {
            let a = _mm512_set1_ps(p[j]);
            let vj = v.as_ptr().add(row(key));
            for (c, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(a, _mm512_loadu_ps(vj.add(c * 16)), *acc);
            }
        }
        let o = out.add(out_row(i));
        for (c, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(o.add(c * 16), _mm512_mul_ps(*acc, inv));
        }
    }
}

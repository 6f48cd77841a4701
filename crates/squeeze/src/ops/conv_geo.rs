//! The geometry shared by the convolution kernels ([`super::conv`]: im2col + GEMM, and
//! [`super::depthwise`]: direct): output sizes, the runs of valid input pixels under each
//! filter tap, and the typed dispatch of a hand-written backward to f32 (training) or f64
//! (gradient checks).

use candle_core::{DType, Tensor};

use super::with_cpu;
use crate::error::Result;

/// Element types the kernel runs on (f32 for training, f64 for gradient checks).
pub trait Elem:
    candle_core::WithDType + Copy + Send + Sync + Default + 'static + std::ops::AddAssign
{
}
impl Elem for f32 {}
impl Elem for f64 {}

/// Geometry of one convolution.
#[derive(Debug, Clone, Copy)]
pub(super) struct Geo {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub co: usize,
    /// Filter groups: input channels c/groups and output channels co/groups each.
    pub groups: usize,
    /// Kernel height and width.
    pub k: usize,
    pub kw: usize,
    /// Vertical and horizontal stride.
    pub stride: usize,
    pub sw: usize,
    /// Vertical and horizontal zero padding.
    pub pad: usize,
    pub pw: usize,
    pub ho: usize,
    pub wo: usize,
}

impl Geo {
    /// The geometry of input `x` [N, C, H, W] under kernel `w` [Co, C/groups, kh, kw] with
    /// (vertical, horizontal) `stride` and `pad`.
    pub fn new(
        x: &[usize],
        w: &[usize],
        (stride, sw): (usize, usize),
        (pad, pw): (usize, usize),
        groups: usize,
    ) -> candle_core::Result<Geo> {
        let (&[n, c, h, wd], &[co, ci, k, kw]) = (x, w) else {
            candle_core::bail!("conv2d: expected 4-D input and kernel, got {x:?} and {w:?}")
        };
        if groups == 0 || ci * groups != c || co % groups != 0 {
            candle_core::bail!("conv2d: input {x:?} and kernel {w:?} do not make {groups} groups")
        }
        if stride == 0 || sw == 0 || h + 2 * pad < k || wd + 2 * pw < kw {
            candle_core::bail!("conv2d: input {x:?} does not fit kernel {w:?}")
        }
        let (ho, wo) = ((h + 2 * pad - k) / stride + 1, (wd + 2 * pw - kw) / sw + 1);
        Ok(Geo {
            n,
            c,
            h,
            w: wd,
            co,
            groups,
            k,
            kw,
            stride,
            sw,
            pad,
            pw,
            ho,
            wo,
        })
    }
    /// Rows of a whole image's im2col.
    pub(super) fn kk(&self) -> usize {
        self.c * self.k * self.kw
    }
    /// A 1×1 convolution with stride 1 and no padding: its im2col is the image itself.
    pub(super) fn pointwise(&self) -> bool {
        self.k == 1
            && self.kw == 1
            && self.stride == 1
            && self.sw == 1
            && self.pad == 0
            && self.pw == 0
    }
    /// im2col rows (= weight columns) and output channels of one group.
    pub(super) fn per_group(&self) -> (usize, usize) {
        (self.kk() / self.groups, self.co / self.groups)
    }
    pub fn p(&self) -> usize {
        self.ho * self.wo
    }
}

/// Visits, for every column row r = (c, ki, kj) and output row oh, the run of output
/// columns whose input pixels are inside the image: `f(row offset in cols, input offset,
/// run length)`, the run's input pixels `g.sw` apart; positions outside get no call (they
/// are zero in im2col).
#[inline]
pub(super) fn for_each_run(g: &Geo, mut f: impl FnMut(usize, usize, usize)) {
    let (p, sh, ph) = (g.p(), g.stride, g.pad as isize);
    let (sw, pw) = (g.sw, g.pw as isize);
    for c in 0..g.c {
        for ki in 0..g.k {
            for kj in 0..g.kw {
                let r = (c * g.k + ki) * g.kw + kj;
                // ow valid when 0 <= ow·sw + kj − pw < w
                let lo = ((pw - kj as isize).max(0) as usize).div_ceil(sw);
                let hi = (((g.w as isize + pw - kj as isize - 1) / sw as isize + 1).max(0)
                    as usize)
                    .min(g.wo);
                for oh in 0..g.ho {
                    let ih = (oh * sh + ki) as isize - ph;
                    if ih < 0 || ih as usize >= g.h || lo >= hi {
                        continue;
                    }
                    let iw0 = (lo * sw + kj) as isize - pw;
                    let src = (c * g.h + ih as usize) * g.w + iw0 as usize;
                    f(r * p + oh * g.wo + lo, src, hi - lo);
                }
            }
        }
    }
}

/// A convolution's backward kernel: (x, w, dY, whether dX is needed) → (dX, dW).
pub(super) type Backward<T> = fn(&Geo, &[T], &[T], &[T], bool) -> (Vec<T>, Vec<T>);

/// The gradients of x and w through the kernel of `x`'s dtype (f32, or f64 for gradient
/// checks); dX is skipped (None) when x is not tracked (e.g. the data batch).
pub(super) fn grads(
    g: &Geo,
    (x, w, dy): (&Tensor, &Tensor, &Tensor),
    b32: Backward<f32>,
    b64: Backward<f64>,
) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
    let (dx, dw) = match x.dtype() {
        DType::F32 => bwd_typed(g, x, w, dy, b32).map_err(super::op_err)?,
        _ => bwd_typed(g, x, w, dy, b64).map_err(super::op_err)?,
    };
    Ok((dx, Some(dw)))
}

fn bwd_typed<T: Elem>(
    g: &Geo,
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    backward: Backward<T>,
) -> Result<(Option<Tensor>, Tensor)> {
    let need_dx = x.track_op();
    let (dx, dw) = with_cpu::<T, _>(x, |xs| {
        with_cpu::<T, _>(w, |ws| {
            with_cpu::<T, _>(dy, |dys| backward(g, xs, ws, dys, need_dx))
        })
    })???;
    let dx = if need_dx {
        Some(Tensor::from_vec(dx, x.shape(), x.device())?)
    } else {
        None
    };
    Ok((dx, Tensor::from_vec(dw, w.shape(), w.device())?))
}

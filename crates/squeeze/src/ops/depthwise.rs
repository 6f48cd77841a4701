//! Depthwise 2-D convolution (one k×k filter per channel, groups = C; the first half of
//! MobileNet's depthwise-separable pair, Howard et al. 2017) computed directly, one image
//! plane at a time, with a hand-written backward: dX scatters dY through each filter, dW
//! sums each channel's dY against its input. Candle 0.11 runs groups > 1 as one
//! convolution per group plus a concatenation, forward and backward, which makes a
//! depthwise layer slower than the dense one it replaces; candle's grouped `conv2d` stays
//! the reference this kernel is tested against (and f64 central differences).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::conv_geo::{for_each_run, grads, Elem, Geo};
use super::slice_of;
use crate::error::Result;

/// The geometry of one channel plane (C = Co = 1) of a depthwise convolution.
fn plane_geo(x: &[usize], w: &[usize], stride: usize, pad: usize) -> candle_core::Result<Geo> {
    let (&[n, c, h, wd], &[co, one, k, k2]) = (x, w) else {
        candle_core::bail!("depthwise conv: expected 4-D input and kernel, got {x:?} and {w:?}")
    };
    if co != c || one != 1 || k != k2 {
        candle_core::bail!("depthwise conv: kernel {w:?} must be [C, 1, k, k] for input {x:?}")
    }
    let g = Geo::new(
        &[n, 1, h, wd],
        &[1, 1, k, k],
        (stride, stride),
        (pad, pad),
        1,
    )?;
    Ok(Geo { c, co: c, ..g })
}

/// Visits every (tap r = ki·k + kj, output offset, input offset, run length) of one plane;
/// `g1` is a one-channel geometry.
#[inline]
fn runs(g1: &Geo, mut f: impl FnMut(usize, usize, usize, usize)) {
    let p = g1.p();
    for_each_run(g1, |dst, src, len| f(dst / p, dst % p, src, len));
}

fn one_channel(g: &Geo) -> Geo {
    Geo { c: 1, co: 1, ..*g }
}

fn forward<T: Elem>(g: &Geo, x: &[T], w: &[T]) -> Vec<T> {
    let (g1, kk, p, hw) = (one_channel(g), g.k * g.k, g.p(), g.h * g.w);
    let mut y = vec![T::default(); g.n * g.c * p];
    y.par_chunks_mut(p).enumerate().for_each(|(plane, yp)| {
        let (xp, wc) = (
            &x[plane * hw..(plane + 1) * hw],
            &w[(plane % g.c) * kk..][..kk],
        );
        runs(&g1, |r, out, src, len| {
            let (dst, from) = (&mut yp[out..out + len], &xp[src..]);
            if g.stride == 1 {
                dst.iter_mut().zip(from).for_each(|(d, x)| *d += wc[r] * *x);
            } else {
                let from = from.iter().step_by(g.stride);
                dst.iter_mut().zip(from).for_each(|(d, x)| *d += wc[r] * *x);
            }
        });
    });
    y
}

fn backward<T: Elem>(g: &Geo, x: &[T], w: &[T], dy: &[T], need_dx: bool) -> (Vec<T>, Vec<T>) {
    let (g1, kk, p, hw) = (one_channel(g), g.k * g.k, g.p(), g.h * g.w);
    let mut dx = vec![T::default(); if need_dx { g.n * g.c * hw } else { 0 }];
    dx.par_chunks_mut(hw).enumerate().for_each(|(plane, dxp)| {
        let (dyp, wc) = (
            &dy[plane * p..(plane + 1) * p],
            &w[(plane % g.c) * kk..][..kk],
        );
        runs(&g1, |r, out, src, len| {
            let from = &dyp[out..out + len];
            let dst = dxp[src..].iter_mut().step_by(g.stride);
            dst.zip(from).for_each(|(d, v)| *d += wc[r] * *v);
        });
    });
    let mut dw = vec![T::default(); g.c * kk];
    dw.par_chunks_mut(kk).enumerate().for_each(|(c, dwc)| {
        for n in 0..g.n {
            let plane = n * g.c + c;
            let (xp, dyp) = (
                &x[plane * hw..(plane + 1) * hw],
                &dy[plane * p..(plane + 1) * p],
            );
            runs(&g1, |r, out, src, len| {
                let from = xp[src..].iter().step_by(g.stride);
                let mut s = T::default();
                dyp[out..out + len]
                    .iter()
                    .zip(from)
                    .for_each(|(v, x)| s += *v * *x);
                dwc[r] += s;
            });
        }
    });
    (dx, dw)
}

struct Depthwise {
    stride: usize,
    pad: usize,
}

impl CustomOp2 for Depthwise {
    fn name(&self) -> &'static str {
        "squeeze-depthwise"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = plane_geo(l1.dims(), l2.dims(), self.stride, self.pad)?;
        let out = match s1.dtype() {
            DType::F32 => CpuStorage::F32(forward::<f32>(&g, slice_of(s1, l1)?, slice_of(s2, l2)?)),
            DType::F64 => CpuStorage::F64(forward::<f64>(&g, slice_of(s1, l1)?, slice_of(s2, l2)?)),
            dt => candle_core::bail!("depthwise conv: unsupported dtype {dt:?}"),
        };
        Ok((out, Shape::from((g.n, g.c, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = plane_geo(x.dims(), w.dims(), self.stride, self.pad)?;
        grads(&g, (x, w, dy), backward::<f32>, backward::<f64>)
    }
}

/// Depthwise convolution of x [N, C, H, W] with w [C, 1, k, k] (no bias).
pub fn depthwise(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    Ok(x.contiguous()?
        .apply_op2(&w.contiguous()?, Depthwise { stride, pad })?)
}

//! Single-pass ReLU and window=stride max pooling with hand-written backwards. Candle's
//! autograd builds the ReLU gradient from three element-wise ops and the max-pool gradient
//! from a broadcast comparison and products over the whole activation; these do one pass
//! each. The references they are tested against are candle's `relu` and the
//! reshape-and-max pooling of [`super::pool`].

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::conv::Elem;
use super::{slice_of, with_cpu};

fn msg(e: crate::Error) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

struct Relu;

fn relu_bwd<T: Elem + PartialOrd>(res: &Tensor, dy: &Tensor) -> crate::Result<Tensor> {
    let zero = T::default();
    let v = with_cpu::<T, _>(res, |r| {
        with_cpu::<T, _>(dy, |d| r.par_iter().zip(d).map(|(r, d)| if *r > zero { *d } else { zero }).collect::<Vec<T>>())
    })??;
    Ok(Tensor::from_vec(v, res.shape(), res.device())?)
}

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "squeeze-relu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match s.dtype() {
            DType::F32 => CpuStorage::F32(slice_of::<f32>(s, l)?.par_iter().map(|v| v.max(0.0)).collect()),
            DType::F64 => CpuStorage::F64(slice_of::<f64>(s, l)?.par_iter().map(|v| v.max(0.0)).collect()),
            dt => candle_core::bail!("relu: unsupported dtype {dt:?}"),
        };
        Ok((out, l.shape().clone()))
    }
    fn bwd(&self, _arg: &Tensor, res: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(relu_grad(res, dy).map_err(msg)?))
    }
}

/// `dy` where the ReLU output `res` is positive, else 0 (one pass).
pub(crate) fn relu_grad(res: &Tensor, dy: &Tensor) -> crate::Result<Tensor> {
    match res.dtype() {
        DType::F32 => relu_bwd::<f32>(res, dy),
        _ => relu_bwd::<f64>(res, dy),
    }
}

/// ReLU with a one-pass backward.
pub fn relu(x: &Tensor) -> crate::Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(Relu)?)
}

/// Max pooling, window = stride = k, floor mode.
struct MaxPool {
    k: usize,
}

/// Flat input index of the maximum of every output position of one [H, W] plane
/// (first maximum in row-major window order wins ties).
fn plane_argmax<T: Elem + PartialOrd>(x: &[T], w: usize, k: usize, out: &mut [usize]) {
    let wo = w / k;
    if k == 2 {
        return plane_argmax2(x, w, out);
    }
    for (oh, orow) in out.chunks_mut(wo).enumerate() {
        for (ow, slot) in orow.iter_mut().enumerate() {
            let base = oh * k * w + ow * k;
            let (mut best, mut bv) = (base, x[base]);
            for i in 0..k {
                let row = &x[base + i * w..base + i * w + k];
                for (j, v) in row.iter().enumerate() {
                    if *v > bv {
                        (best, bv) = (base + i * w + j, *v);
                    }
                }
            }
            *slot = best;
        }
    }
}

/// The 2×2 case with select-style comparisons (the common pooling; no inner loops).
fn plane_argmax2<T: Elem + PartialOrd>(x: &[T], w: usize, out: &mut [usize]) {
    let wo = w / 2;
    for (oh, orow) in out.chunks_mut(wo).enumerate() {
        let r0 = 2 * oh * w;
        for (ow, slot) in orow.iter_mut().enumerate() {
            let a = r0 + 2 * ow;
            let mut best = a;
            for cand in [a + 1, a + w, a + w + 1] {
                best = if x[cand] > x[best] { cand } else { best };
            }
            *slot = best;
        }
    }
}

/// Max of each 2×2 window of one [H, W] plane (values only; the forward needs no indices).
fn plane_max2<T: Elem + PartialOrd>(x: &[T], w: usize, out: &mut [T]) {
    let wo = w / 2;
    let mx = |a: T, b: T| if a > b { a } else { b };
    for (oh, orow) in out.chunks_mut(wo).enumerate() {
        let (r0, r1) = (&x[2 * oh * w..2 * oh * w + 2 * wo], &x[(2 * oh + 1) * w..(2 * oh + 1) * w + 2 * wo]);
        for ((o, p0), p1) in orow.iter_mut().zip(r0.chunks_exact(2)).zip(r1.chunks_exact(2)) {
            *o = mx(mx(p0[0], p0[1]), mx(p1[0], p1[1]));
        }
    }
}

fn dims4(s: &Shape, k: usize) -> candle_core::Result<(usize, usize, usize, usize)> {
    let (n, c, h, w) = s.dims4()?;
    if h < k || w < k {
        candle_core::bail!("max_pool2d: input {h}×{w} smaller than window {k}")
    }
    Ok((n * c, h, w, (h / k) * (w / k)))
}

fn pool_fwd<T: Elem + PartialOrd>(x: &[T], planes: usize, h: usize, w: usize, po: usize, k: usize) -> Vec<T> {
    let mut y = vec![T::default(); planes * po];
    y.par_chunks_mut(po).enumerate().for_each(|(p, yp)| {
        let xp = &x[p * h * w..(p + 1) * h * w];
        if k == 2 {
            return plane_max2(xp, w, yp);
        }
        let mut arg = vec![0; po];
        plane_argmax(xp, w, k, &mut arg);
        yp.iter_mut().zip(&arg).for_each(|(o, &a)| *o = xp[a]);
    });
    y
}

fn pool_bwd<T: Elem + PartialOrd>(k: usize, x: &Tensor, dy: &Tensor) -> crate::Result<Tensor> {
    let (planes, h, w, po) = dims4(x.shape(), k)?;
    let dx = with_cpu::<T, _>(x, |xs| {
        with_cpu::<T, _>(dy, |dys| {
            let mut dx = vec![T::default(); planes * h * w];
            dx.par_chunks_mut(h * w).enumerate().for_each(|(p, dxp)| {
                let mut arg = vec![0; po];
                plane_argmax(&xs[p * h * w..(p + 1) * h * w], w, k, &mut arg);
                for (o, &a) in arg.iter().enumerate() {
                    dxp[a] += dys[p * po + o];
                }
            });
            dx
        })
    })??;
    Ok(Tensor::from_vec(dx, x.shape(), x.device())?)
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "squeeze-max-pool2d"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (planes, h, w, po) = dims4(l.shape(), self.k)?;
        let out = match s.dtype() {
            DType::F32 => CpuStorage::F32(pool_fwd::<f32>(slice_of(s, l)?, planes, h, w, po, self.k)),
            DType::F64 => CpuStorage::F64(pool_fwd::<f64>(slice_of(s, l)?, planes, h, w, po, self.k)),
            dt => candle_core::bail!("max_pool2d: unsupported dtype {dt:?}"),
        };
        let (n, c, _, _) = l.shape().dims4()?;
        Ok((out, Shape::from((n, c, h / self.k, w / self.k))))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = match arg.dtype() {
            DType::F32 => pool_bwd::<f32>(self.k, arg, dy),
            _ => pool_bwd::<f64>(self.k, arg, dy),
        };
        Ok(Some(g.map_err(msg)?))
    }
}

/// Floor-mode max pooling with window = stride = `k` and a one-pass backward.
pub fn max_pool2d(x: &Tensor, k: usize) -> crate::Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(MaxPool { k })?)
}

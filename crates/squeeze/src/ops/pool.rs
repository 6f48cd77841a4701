//! Pooling. [`max_pool2d`] is the fast max pooling with a hand-written single-pass
//! backward (candle's autograd builds it from a broadcast comparison and products over
//! the whole activation); its plain reference, [`max_pool2d_reference`], is built from
//! candle ops — with window = stride a reshape and two `max` reductions (exact autograd,
//! unlike candle 0.11's `max_pool2d`, whose backward is scaled wrong). Average and global
//! average pooling are candle compositions.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::conv_geo::Elem;
use super::{op_err, slice_of, with_cpu};
use crate::error::Result;

/// Floor-mode max pooling of [N, C, H, W] (reference; window = stride, else candle's
/// forward-only-trusted kernel).
#[cfg(test)]
pub fn max_pool2d_reference(x: &Tensor, kernel: usize, stride: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if kernel != stride {
        return Ok(x.max_pool2d_with_stride(kernel, stride)?);
    }
    let (ho, wo) = (h / kernel, w / kernel);
    // drop trailing rows/cols (floor mode), then [N,C,Ho,k,Wo,k] → max over the k axes
    let x = if ho * kernel != h || wo * kernel != w {
        x.narrow(2, 0, ho * kernel)?.narrow(3, 0, wo * kernel)?
    } else {
        x.clone()
    };
    let x = x.reshape((n, c, ho, kernel, wo, kernel))?; // [N,C,Ho,k,Wo,k]
    Ok(x.max(D::Minus1)?.max(3)?) // [N,C,Ho,Wo]
}

/// Floor-mode average pooling of [N, C, H, W].
pub fn avg_pool2d(x: &Tensor, kernel: usize, stride: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if kernel != stride {
        return Ok(x.avg_pool2d_with_stride(kernel, stride)?);
    }
    let (ho, wo) = (h / kernel, w / kernel);
    let x = x.narrow(2, 0, ho * kernel)?.narrow(3, 0, wo * kernel)?;
    let x = x.reshape((n, c, ho, kernel, wo, kernel))?; // [N,C,Ho,k,Wo,k]
    Ok(x.mean(D::Minus1)?.mean(3)?) // [N,C,Ho,Wo]
}

/// Mean over the spatial axes: [N, C, H, W] → [N, C].
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    Ok(x.reshape((n, c, h * w))?.mean(D::Minus1)?) // [N,C]
}

/// Max pooling geometry: square window `k`, stride `s`, floor mode, no padding.
#[derive(Debug, Clone, Copy)]
struct MaxPool {
    k: usize,
    s: usize,
}

/// Plane geometry: (planes N·C, H, W, Ho, Wo).
type PlaneDims = (usize, usize, usize, usize, usize);

impl MaxPool {
    fn dims(&self, shape: &Shape) -> candle_core::Result<PlaneDims> {
        let (n, c, h, w) = shape.dims4()?;
        if h < self.k || w < self.k || self.k == 0 || self.s == 0 {
            candle_core::bail!(
                "max_pool2d: input {h}×{w} does not fit window {} stride {}",
                self.k,
                self.s
            )
        }
        Ok((
            n * c,
            h,
            w,
            (h - self.k) / self.s + 1,
            (w - self.k) / self.s + 1,
        ))
    }

    /// Flat input index of the maximum of every output position of one [H, W] plane
    /// (first maximum in row-major window order wins ties).
    fn argmax<T: Elem + PartialOrd>(&self, x: &[T], w: usize, wo: usize, out: &mut [usize]) {
        let (k, s) = (self.k, self.s);
        for (oh, orow) in out.chunks_mut(wo).enumerate() {
            for (ow, slot) in orow.iter_mut().enumerate() {
                let base = oh * s * w + ow * s;
                let mut best = base;
                for i in 0..k {
                    for j in 0..k {
                        let idx = base + i * w + j;
                        best = if x[idx] > x[best] { idx } else { best };
                    }
                }
                *slot = best;
            }
        }
    }

    fn fwd<T: Elem + PartialOrd>(&self, x: &[T], (planes, h, w, ho, wo): PlaneDims) -> Vec<T> {
        let po = ho * wo;
        let mut y = vec![T::default(); planes * po];
        y.par_chunks_mut(po).enumerate().for_each_init(
            || vec![0; po],
            |arg, (p, yp)| {
                let xp = &x[p * h * w..(p + 1) * h * w];
                if self.k == 2 && self.s == 2 {
                    return plane_max2(xp, w, yp);
                }
                self.argmax(xp, w, wo, arg);
                yp.iter_mut().zip(arg.iter()).for_each(|(o, &a)| *o = xp[a]);
            },
        );
        y
    }

    fn bwd<T: Elem + PartialOrd>(&self, x: &Tensor, dy: &Tensor) -> crate::error::Result<Tensor> {
        let (planes, h, w, ho, wo) = self.dims(x.shape())?;
        let po = ho * wo;
        let dx = with_cpu::<T, _>(x, |xs| {
            with_cpu::<T, _>(dy, |dys| {
                let mut dx = vec![T::default(); planes * h * w];
                dx.par_chunks_mut(h * w).enumerate().for_each_init(
                    || vec![0; po],
                    |arg, (p, dxp)| {
                        self.argmax(&xs[p * h * w..(p + 1) * h * w], w, wo, arg);
                        for (o, &a) in arg.iter().enumerate() {
                            dxp[a] += dys[p * po + o];
                        }
                    },
                );
                dx
            })
        })??;
        Ok(Tensor::from_vec(dx, x.shape(), x.device())?)
    }
}

/// Max of each 2×2 window (stride 2) of one [H, W] plane; values only.
fn plane_max2<T: Elem + PartialOrd>(x: &[T], w: usize, out: &mut [T]) {
    let wo = w / 2;
    let mx = |a: T, b: T| if a > b { a } else { b };
    for (oh, orow) in out.chunks_mut(wo).enumerate() {
        let (r0, r1) = (
            &x[2 * oh * w..2 * oh * w + 2 * wo],
            &x[(2 * oh + 1) * w..(2 * oh + 1) * w + 2 * wo],
        );
        for ((o, p0), p1) in orow
            .iter_mut()
            .zip(r0.chunks_exact(2))
            .zip(r1.chunks_exact(2))
        {
            *o = mx(mx(p0[0], p0[1]), mx(p1[0], p1[1]));
        }
    }
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "squeeze-max-pool2d"
    }
    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = self.dims(l.shape())?;
        let out = match st.dtype() {
            DType::F32 => CpuStorage::F32(self.fwd::<f32>(slice_of(st, l)?, d)),
            DType::F64 => CpuStorage::F64(self.fwd::<f64>(slice_of(st, l)?, d)),
            dt => candle_core::bail!("max_pool2d: unsupported dtype {dt:?}"),
        };
        let (n, c, _, _) = l.shape().dims4()?;
        Ok((out, Shape::from((n, c, d.3, d.4))))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = match arg.dtype() {
            DType::F32 => self.bwd::<f32>(arg, dy),
            _ => self.bwd::<f64>(arg, dy),
        };
        Ok(Some(g.map_err(op_err)?))
    }
}

/// Floor-mode max pooling (window `k`, stride `stride`) with a one-pass backward that
/// gives each output's gradient to its arg-max.
pub fn max_pool2d(x: &Tensor, k: usize, stride: usize) -> crate::error::Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(MaxPool { k, s: stride })?)
}

//! Single-pass ReLU and max pooling with hand-written backwards. Candle's
//! autograd builds the ReLU gradient from three element-wise ops and the max-pool gradient
//! from a broadcast comparison and products over the whole activation; these do one pass
//! each. The references they are tested against are candle's `relu` and the
//! reshape-and-max pooling of [`super::pool`].

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::conv_geo::Elem;
use super::{op_err, slice_of, with_cpu};

struct Relu;

fn relu_bwd<T: Elem + PartialOrd>(res: &Tensor, dy: &Tensor) -> crate::error::Result<Tensor> {
    let zero = T::default();
    let v = with_cpu::<T, _>(res, |r| {
        with_cpu::<T, _>(dy, |d| {
            r.par_iter()
                .zip(d)
                .map(|(r, d)| if *r > zero { *d } else { zero })
                .collect::<Vec<T>>()
        })
    })??;
    Ok(Tensor::from_vec(v, res.shape(), res.device())?)
}

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "squeeze-relu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match s.dtype() {
            DType::F32 => CpuStorage::F32(
                slice_of::<f32>(s, l)?
                    .par_iter()
                    .map(|v| v.max(0.0))
                    .collect(),
            ),
            DType::F64 => CpuStorage::F64(
                slice_of::<f64>(s, l)?
                    .par_iter()
                    .map(|v| v.max(0.0))
                    .collect(),
            ),
            dt => candle_core::bail!("relu: unsupported dtype {dt:?}"),
        };
        Ok((out, l.shape().clone()))
    }
    fn bwd(&self, _arg: &Tensor, res: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(relu_grad(res, dy).map_err(op_err)?))
    }
}

/// `dy` where the ReLU output `res` is positive, else 0 (one pass).
pub(crate) fn relu_grad(res: &Tensor, dy: &Tensor) -> crate::error::Result<Tensor> {
    match res.dtype() {
        DType::F32 => relu_bwd::<f32>(res, dy),
        _ => relu_bwd::<f64>(res, dy),
    }
}

/// ReLU with a one-pass backward.
pub fn relu(x: &Tensor) -> crate::error::Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(Relu)?)
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

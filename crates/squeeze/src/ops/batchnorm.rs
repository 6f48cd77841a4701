//! Fused training-mode BatchNorm (Ioffe & Szegedy 2015): one pass computes the batch
//! statistics and the normalized output, and a hand-written backward computes dx, dγ, dβ
//! in two passes instead of candle's chain of broadcast ops (the measured hot spot of CNN
//! training). [`reference_train`] is the plain composition of candle ops it is tested
//! against; eval mode is a per-channel affine map and needs no kernel.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{slice_of, with_cpu};
use crate::error::{Error, Result};

/// Per-channel batch statistics from a training forward: mean and biased variance.
#[derive(Debug, Clone)]
pub struct BatchStats {
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
    /// Elements per channel (N·H·W), for the unbiased running-variance update.
    pub count: usize,
}

trait Real: candle_core::WithDType + Copy + Send + Sync {
    fn f(self) -> f64;
    fn r(v: f64) -> Self;
}
impl Real for f32 {
    fn f(self) -> f64 {
        self as f64
    }
    fn r(v: f64) -> Self {
        v as f32
    }
}
impl Real for f64 {
    fn f(self) -> f64 {
        self
    }
    fn r(v: f64) -> Self {
        v
    }
}

/// The op: args (x [N, C, …], γ [C], β [C]) → y.
struct BnTrain {
    eps: f64,
    /// Apply ReLU to the output (fused BN+ReLU; the backward masks dy by y > 0).
    relu: bool,
    stats: Arc<Mutex<Option<BatchStats>>>,
}

fn dims(shape: &Shape) -> candle_core::Result<(usize, usize, usize)> {
    let d = shape.dims();
    if d.len() < 2 {
        candle_core::bail!("batch_norm input must be [N, C, ...], got {d:?}")
    }
    Ok((d[0], d[1], d[2..].iter().product()))
}

/// Per-channel mean and biased variance (two-pass, f64 accumulation).
fn channel_stats<T: Real>(x: &[T], n: usize, c: usize, s: usize) -> (Vec<f64>, Vec<f64>) {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let rows = (0..n).map(|i| &x[(i * c + ch) * s..(i * c + ch + 1) * s]);
            let sum: f64 = rows.clone().flat_map(|r| r.iter()).map(|v| v.f()).sum();
            let mean = sum / (n * s) as f64;
            let ss: f64 = rows
                .flat_map(|r| r.iter())
                .map(|v| (v.f() - mean).powi(2))
                .sum();
            (mean, ss / (n * s) as f64)
        })
        .unzip()
}

fn fwd<T: Real>(
    op: &BnTrain,
    x: &[T],
    g: &[T],
    b: &[T],
    (n, c, s): (usize, usize, usize),
) -> Vec<T> {
    let (mean, var) = channel_stats(x, n, c, s);
    let scale: Vec<f64> = (0..c)
        .map(|ch| g[ch].f() / (var[ch] + op.eps).sqrt())
        .collect();
    let shift: Vec<f64> = (0..c).map(|ch| b[ch].f() - mean[ch] * scale[ch]).collect();
    let mut y = vec![T::r(0.0); x.len()];
    y.par_chunks_mut(c * s)
        .zip(x.par_chunks(c * s))
        .for_each(|(yr, xr)| {
            for ch in 0..c {
                let (a, bb) = (scale[ch], shift[ch]);
                for (o, i) in yr[ch * s..(ch + 1) * s]
                    .iter_mut()
                    .zip(&xr[ch * s..(ch + 1) * s])
                {
                    *o = T::r(i.f() * a + bb);
                }
                if op.relu {
                    yr[ch * s..(ch + 1) * s]
                        .iter_mut()
                        .for_each(|v| *v = T::r(v.f().max(0.0)));
                }
            }
        });
    *op.stats.lock().expect("bn stats lock") = Some(BatchStats {
        mean,
        var,
        count: n * s,
    });
    y
}

impl CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        "squeeze-batchnorm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = dims(l1.shape())?;
        let out = match s1.dtype() {
            DType::F32 => CpuStorage::F32(fwd::<f32>(
                self,
                slice_of(s1, l1)?,
                slice_of(s2, l2)?,
                slice_of(s3, l3)?,
                d,
            )),
            DType::F64 => CpuStorage::F64(fwd::<f64>(
                self,
                slice_of(s1, l1)?,
                slice_of(s2, l2)?,
                slice_of(s3, l3)?,
                d,
            )),
            dt => candle_core::bail!("batch_norm: unsupported dtype {dt:?}"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let masked;
        let dy = if self.relu {
            masked = super::relu::relu_grad(res, dy).map_err(super::op_err)?;
            &masked
        } else {
            dy
        };
        let stats = self.stats.lock().expect("bn stats lock").clone();
        let stats =
            stats.ok_or_else(|| candle_core::Error::Msg("batch_norm: no forward stats".into()))?;
        let r = match x.dtype() {
            DType::F32 => backward::<f32>(self.eps, x, gamma, dy, &stats),
            _ => backward::<f64>(self.eps, x, gamma, dy, &stats),
        };
        let (dx, dg, db) = r.map_err(super::op_err)?;
        Ok((Some(dx), Some(dg), Some(db)))
    }
}

fn backward<T: Real>(
    eps: f64,
    x: &Tensor,
    gamma: &Tensor,
    dy: &Tensor,
    st: &BatchStats,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (n, c, s) = dims(x.shape())?;
    let m = (n * s) as f64;
    let invstd: Vec<f64> = st.var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let g: Vec<f64> = with_cpu::<T, _>(gamma, |g| g.iter().map(|v| v.f()).collect())?;
    let dx = with_cpu::<T, _>(x, |xs| {
        with_cpu::<T, _>(dy, |dys| {
            // pass 1: Σdy and Σdy·x̂ per channel
            let (sdy, sdyx): (Vec<f64>, Vec<f64>) = (0..c)
                .into_par_iter()
                .map(|ch| {
                    let (mut a, mut b) = (0.0, 0.0);
                    for i in 0..n {
                        let o = (i * c + ch) * s;
                        for (dv, xv) in dys[o..o + s].iter().zip(&xs[o..o + s]) {
                            a += dv.f();
                            b += dv.f() * (xv.f() - st.mean[ch]) * invstd[ch];
                        }
                    }
                    (a, b)
                })
                .unzip();
            // pass 2: dx = γ·σ⁻¹·(dy − Σdy/M − x̂·Σdy·x̂/M)
            let mut dx = vec![T::r(0.0); xs.len()];
            dx.par_chunks_mut(c * s)
                .zip(xs.par_chunks(c * s).zip(dys.par_chunks(c * s)))
                .for_each(|(dr, (xr, dyr))| {
                    for ch in 0..c {
                        let k = g[ch] * invstd[ch];
                        let (mdy, mdyx) = (sdy[ch] / m, sdyx[ch] / m);
                        let r = ch * s..(ch + 1) * s;
                        for ((o, xv), dv) in
                            dr[r.clone()].iter_mut().zip(&xr[r.clone()]).zip(&dyr[r])
                        {
                            let xh = (xv.f() - st.mean[ch]) * invstd[ch];
                            *o = T::r(k * (dv.f() - mdy - xh * mdyx));
                        }
                    }
                });
            (dx, sdy, sdyx)
        })
    })??;
    let (dx, sdy, sdyx) = dx;
    let dev = x.device();
    let to_t = |v: Vec<f64>| -> Result<Tensor> {
        Ok(Tensor::from_vec(
            v.into_iter().map(T::r).collect::<Vec<T>>(),
            c,
            dev,
        )?)
    };
    Ok((
        Tensor::from_vec(dx, x.shape(), dev)?,
        to_t(sdyx)?,
        to_t(sdy)?,
    ))
}

/// Training-mode BatchNorm over axis 1 with the fused kernel. Returns the output and the
/// batch statistics (for the running-average update).
/// With `relu`, the output is `max(0, BN(x))` in the same pass.
pub fn train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, BatchStats)> {
    let stats = Arc::new(Mutex::new(None));
    let op = BnTrain {
        eps,
        relu,
        stats: stats.clone(),
    };
    let y = x
        .contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    let st = stats.lock().expect("bn stats lock").clone();
    let st = st.ok_or_else(|| Error::Graph("batch_norm forward produced no statistics".into()))?;
    Ok((y, st))
}

/// Broadcast shape of a per-channel vector against an input of rank `rank`.
fn chan_shape(c: usize, rank: usize) -> Vec<usize> {
    let mut s = vec![1; rank];
    s[1] = c;
    s
}

/// Eval-mode BatchNorm: `(x − μ)/√(σ²+ε)·γ + β` with the running statistics, followed by
/// a ReLU when `relu`. Untracked f32 values take one pass per element (the per-channel
/// scale and shift, the ReLU, a single output buffer); anything that carries gradients
/// takes the candle composition, which is also the reference the pass is tested against.
pub fn eval(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    (mean, var): (&Tensor, &Tensor),
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    let c = gamma.dim(0)?;
    let scale = (gamma / (var + eps)?.sqrt()?)?;
    let shift = (beta - (mean * &scale)?)?;
    let tracked = x.track_op() || gamma.track_op() || beta.track_op();
    if !tracked && x.dtype() == DType::F32 && x.rank() >= 2 && x.dim(1)? == c {
        return eval_f32(x, &scale, &shift, relu);
    }
    eval_reference(x, &scale, &shift, relu)
}

/// `x·scale + shift` per channel (+ ReLU) composed of candle ops.
pub fn eval_reference(x: &Tensor, scale: &Tensor, shift: &Tensor, relu: bool) -> Result<Tensor> {
    let shp = chan_shape(scale.dim(0)?, x.rank());
    let y = x
        .broadcast_mul(&scale.reshape(shp.clone())?.to_dtype(x.dtype())?)?
        .broadcast_add(&shift.reshape(shp)?.to_dtype(x.dtype())?)?;
    match relu {
        true => Ok(y.relu()?),
        false => Ok(y),
    }
}

/// The one-pass kernel of [`eval`], planes (image, channel) in parallel.
fn eval_f32(x: &Tensor, scale: &Tensor, shift: &Tensor, relu: bool) -> Result<Tensor> {
    let (s, t): (Vec<f32>, Vec<f32>) = (
        scale.to_dtype(DType::F32)?.to_vec1()?,
        shift.to_dtype(DType::F32)?.to_vec1()?,
    );
    let c = s.len();
    let plane: usize = x.dims()[2..].iter().product();
    let floor = if relu { 0.0 } else { f32::NEG_INFINITY };
    let y = super::with_cpu::<f32, _>(x, |xs| {
        let mut y = vec![0f32; xs.len()];
        y.par_chunks_mut(plane.max(1))
            .zip(xs.par_chunks(plane.max(1)))
            .enumerate()
            .for_each(|(i, (yp, xp))| {
                let (a, b) = (s[i % c], t[i % c]);
                for (o, v) in yp.iter_mut().zip(xp) {
                    *o = (v * a + b).max(floor);
                }
            });
        y
    })?;
    Ok(Tensor::from_vec(y, x.shape(), x.device())?)
}

/// Plain reference for training-mode BatchNorm, composed of candle ops (autograd through
/// every step). Used only in tests of the fused kernel.
#[cfg(test)]
pub fn reference_train(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    let c = gamma.dim(0)?;
    let shp = chan_shape(c, x.rank());
    let axes: Vec<usize> = (0..x.rank()).filter(|a| *a != 1).collect();
    let mean = x.mean_keepdim(axes.clone())?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(axes)?;
    let xh = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(xh
        .broadcast_mul(&gamma.reshape(shp.clone())?)?
        .broadcast_add(&beta.reshape(shp)?)?)
}

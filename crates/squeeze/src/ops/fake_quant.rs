//! Fake quantization for training, as differentiable candle expressions: a value is
//! divided by its step, clipped to the code range, rounded and multiplied back, and the
//! rounding passes gradients straight through (the straight-through estimator, Bengio et
//! al. 2013; Courbariaux et al. 2015), so gradients reach the value only inside the clipping
//! range. With a learned step (LSQ, Esser et al. 2020) the same expression differentiates
//! to LSQ's step gradient — `round(v/s) − v/s` inside the range, `−Q_N` or `Q_P` outside —
//! scaled by `g = 1/√(N·Q_P)` ([`grad_scale`]). Binary weights (BinaryConnect, with
//! XNOR-Net's per-channel scale α = mean|W|, Rastegari et al. 2016) and ternary weights
//! (TWN's threshold 0.7·mean|W| and the mean magnitude above it, Li et al. 2016) pass
//! their gradient straight through to the latent float weight.
//!
//! The rounding is the integer kernels' (half away from zero, after multiplying by the
//! reciprocal of the step), so a materialized layer computes the same codes.

use candle_core::{Tensor, D};

use crate::math::bits::TWN_THRESHOLD;

use crate::error::Result;

/// `x` in value, `x·g` in gradient: LSQ's step-gradient scale.
pub fn grad_scale(x: &Tensor, g: f64) -> Result<Tensor> {
    let scaled = (x * g)?;
    Ok(((x - &scaled)?.detach() + scaled)?)
}

/// `round(x)` in value (half away from zero), identity in gradient.
pub fn round_ste(x: &Tensor) -> Result<Tensor> {
    Ok(((x.round()? - x)?.detach() + x)?)
}

/// Fake-quantizes `x` with step `step` (broadcast against `x`): `round(clip(x/s, −qn, qp))·s`,
/// differentiable in `x` (straight through inside the range) and in `step` (LSQ). `g`:
/// the step's gradient scale.
pub fn lsq(x: &Tensor, step: &Tensor, (qn, qp): (f64, f64), g: f64) -> Result<Tensor> {
    let s = grad_scale(step, g)?;
    let v = x.broadcast_mul(&s.recip()?)?;
    let v = v.clamp(-qn, qp)?;
    Ok(round_ste(&v)?.broadcast_mul(&s)?)
}

/// LSQ's gradient scale for a step shared by `n` values with largest code `qp`.
pub fn lsq_grad_scale(n: usize, qp: f64) -> f64 {
    1.0 / ((n.max(1) as f64) * qp.max(1.0)).sqrt()
}

/// The codes of `x` under `step` as the kernels compute them: `round(clip(x·(1/s)))`.
pub fn codes(x: &[f32], step: f32, (qn, qp): (f32, f32)) -> Vec<i8> {
    let inv = if step > 0.0 { 1.0 / step } else { 0.0 };
    x.iter()
        .map(|v| {
            let c = (v * inv).clamp(-qn, qp);
            (c + 0.5f32.copysign(c)) as i32 as i8
        })
        .collect()
}

/// Mean |w| over all but the first axis, keeping dims: one value per output channel.
fn channel_mean_abs(w: &Tensor) -> Result<Tensor> {
    let rows = w.dim(0)?;
    let flat = w.reshape((rows, ()))?;
    Ok(flat.abs()?.mean_keepdim(D::Minus1)?)
}

/// Binary weights `sign(w)·α` per output channel (α = mean|w|; XNOR-Net), gradient
/// straight through to `w`. `sign(0)` is +1.
pub fn binary(w: &Tensor) -> Result<Tensor> {
    let rows = w.dim(0)?;
    let flat = w.reshape((rows, ()))?;
    let alpha = channel_mean_abs(w)?.detach();
    let sign = (flat.ge(0f64)?.to_dtype(w.dtype())? * 2.0)?.affine(1.0, -1.0)?;
    let b = sign.broadcast_mul(&alpha)?.reshape(w.shape())?;
    Ok(((b - w)?.detach() + w)?)
}

/// Ternary weights per output channel (TWN): `Δ = 0.7·mean|w|`, `α` = mean |w| over the
/// weights above Δ, values `α·sign(w)` where `|w| > Δ` and 0 elsewhere; gradient straight
/// through to `w`.
pub fn ternary(w: &Tensor) -> Result<Tensor> {
    let rows = w.dim(0)?;
    let flat = w.reshape((rows, ()))?.detach();
    let delta = (channel_mean_abs(&flat)? * f64::from(TWN_THRESHOLD))?;
    let abs = flat.abs()?;
    let keep = abs.broadcast_gt(&delta)?.to_dtype(flat.dtype())?;
    let count = keep.sum_keepdim(D::Minus1)?.clamp(1f64, f64::MAX)?;
    let alpha = (abs * &keep)?.sum_keepdim(D::Minus1)?.div(&count)?;
    let sign = (flat.ge(0f64)?.to_dtype(flat.dtype())? * 2.0)?.affine(1.0, -1.0)?;
    let t = (sign * keep)?.broadcast_mul(&alpha)?.reshape(w.shape())?;
    Ok(((t - w)?.detach() + w)?)
}

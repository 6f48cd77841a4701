//! The simulated quantization a Linear or Conv2d node carries while it trains (the `qat`
//! pass sets it; `crate::quant::qat` materializes it): how its weight is fake-quantized —
//! `bits`-bit codes with a learned per-output-channel step (LSQ, Esser et al. 2020), fixed
//! steps with the straight-through estimator, binary (XNOR-Net scaling) or ternary (TWN)
//! — and, optionally, its input with one learned step. Its tensors `weight_step` `[out]`
//! and `input_step` `[1]` are trainable and not weight-decayed; the maths is
//! `crate::ops::fake_quant`.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{NodeRun, TensorSpec};
use crate::error::Result;
use crate::ops::fake_quant as fq;

/// How the weight is simulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightQuant {
    /// `bits`-bit symmetric codes, per-channel steps learned with LSQ's gradient.
    Lsq,
    /// `bits`-bit symmetric codes, per-channel steps fixed at their calibrated values
    /// (plain straight-through estimator).
    Ste,
    /// sign(w)·mean|w| per channel (BinaryConnect + XNOR-Net scaling).
    Binary,
    /// TWN: 0 below 0.7·mean|w|, else ±(mean magnitude above it), per channel.
    Ternary,
}

impl WeightQuant {
    /// Whether the weight keeps a step tensor (integer codes).
    pub fn has_step(self) -> bool {
        matches!(self, WeightQuant::Lsq | WeightQuant::Ste)
    }
}

/// A node's simulated quantization.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeQuant {
    pub weights: WeightQuant,
    /// Weight code width (2–8 for `lsq`/`ste`; 1 binary, 2 ternary).
    pub bits: u8,
    /// Input code width (None: float input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act_bits: Option<u8>,
    /// Largest input code: `2^act_bits − 1` for an input that is never negative (after a
    /// ReLU), `2^(act_bits−1) − 1` otherwise, capped by the integer kernel's range.
    #[serde(default)]
    pub act_max: u8,
    /// Whether input codes go below zero (symmetric) or start at zero.
    #[serde(default)]
    pub act_signed: bool,
    /// Multiplier of the steps' gradients: the steps' learning rate over the weights'.
    #[serde(default = "one")]
    pub step_lr: f32,
}

fn one() -> f32 {
    1.0
}

impl FakeQuant {
    /// Largest weight code of an integer layout (`2^(bits−1) − 1`: codes are symmetric).
    pub fn weight_max(&self) -> u8 {
        ((1u32 << (self.bits.clamp(2, 8) - 1)) - 1) as u8
    }

    /// The attributes are consistent; the error says which is not.
    pub fn check(&self) -> std::result::Result<(), String> {
        let b = self.bits;
        match self.weights {
            WeightQuant::Lsq | WeightQuant::Ste if !(2..=8).contains(&b) => {
                return Err(format!(
                    "fake_quant.bits must be 2–8 for integer codes, not {b}"
                ))
            }
            WeightQuant::Binary if b != 1 => {
                return Err(format!("fake_quant.bits is 1 for binary weights, not {b}"))
            }
            WeightQuant::Ternary if b != 2 => {
                return Err(format!("fake_quant.bits is 2 for ternary weights, not {b}"))
            }
            _ => {}
        }
        if let Some(a) = self.act_bits {
            if !(2..=8).contains(&a) || self.act_max == 0 {
                return Err(format!(
                    "fake_quant.act_bits must be 2–8 with a positive act_max, not {a} / {}",
                    self.act_max
                ));
            }
        }
        if !(self.step_lr > 0.0 && self.step_lr.is_finite()) {
            return Err(format!(
                "fake_quant.step_lr must be > 0, not {}",
                self.step_lr
            ));
        }
        Ok(())
    }

    /// The step tensors it adds to a node with `out` output channels.
    pub fn tensors(&self, out: usize) -> Vec<TensorSpec> {
        let mut t = Vec::new();
        if self.weights.has_step() {
            t.push(TensorSpec::param("weight_step", vec![out]));
        }
        if self.act_bits.is_some() {
            t.push(TensorSpec::param("input_step", vec![1]));
        }
        t
    }

    /// The input's code range `(−Q_N, Q_P)`.
    pub fn act_range(&self) -> (f64, f64) {
        let qp = f64::from(self.act_max);
        (if self.act_signed { qp } else { 0.0 }, qp)
    }

    /// The node's fake-quantized weight.
    pub fn weight(&self, cx: &NodeRun, w: &Tensor) -> Result<Tensor> {
        match self.weights {
            WeightQuant::Binary => fq::binary(w),
            WeightQuant::Ternary => fq::ternary(w),
            WeightQuant::Lsq | WeightQuant::Ste => {
                let rows = w.dim(0)?;
                let mut shape = vec![1usize; w.rank()];
                shape[0] = rows;
                let step = cx.param("weight_step")?.reshape(shape)?;
                let step = match self.weights {
                    WeightQuant::Ste => step.detach(),
                    _ => step,
                };
                let qp = f64::from(self.weight_max());
                let g = fq::lsq_grad_scale(w.elem_count() / rows.max(1), qp) * self.step_lr as f64;
                fq::lsq(w, &step.to_dtype(w.dtype())?, (qp, qp), g)
            }
        }
    }

    /// The node's fake-quantized input (itself without `act_bits`).
    pub fn input(&self, cx: &NodeRun, x: &Tensor) -> Result<Tensor> {
        if self.act_bits.is_none() {
            return Ok(x.clone());
        }
        let step = cx.param("input_step")?.to_dtype(x.dtype())?;
        let (qn, qp) = self.act_range();
        let n = x.elem_count() / x.dim(0).unwrap_or(1).max(1);
        let g = fq::lsq_grad_scale(n, qp) * self.step_lr as f64;
        fq::lsq(x, &step, (qn, qp), g)
    }
}

/// The refusal of a layer still under simulated quantization: its integer form is fixed
/// only when the `qat` pass materializes it.
pub(crate) fn not_exportable() -> crate::error::Error {
    crate::onnx::refuse(
        "the layer is still under simulated quantization (`quant`): export the model after \
         the `qat` pass has materialized it (its integer or binary layers export)",
    )
}

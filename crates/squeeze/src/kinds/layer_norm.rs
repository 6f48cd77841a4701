//! Layer normalization (Ba et al. 2016) over the last axis; tensors `weight`, `bias`
//! `[dim]`. Coupling: pins its input's channels (the statistics run across them). Forward:
//! one pass per row at inference (`crate::ops::fast`), the differentiable composition of
//! `crate::ops::text` otherwise (candle's fused layer_norm has no backward).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::couple::{Coupler, Seg};
use super::{arity, positive, Inputs, LayerKind, NodeRun, TensorSpec};
use super::{Node, Op};
use crate::error::Result;
use crate::onnx::{int, Lower};
use crate::ops::layer_norm as kernel;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerNorm {
    pub dim: usize,
    pub eps: f64,
}

impl LayerKind for LayerNorm {
    fn onnx(&self, cx: &mut Lower) -> Result<String> {
        let (w, b) = (cx.constant("weight")?, cx.constant("bias")?);
        let attrs = vec![int("axis", -1), crate::onnx::blocks::epsilon(self.eps)];
        Ok(cx
            .emit
            .op("LayerNormalization", &[&cx.x(), &w, &b], &cx.out(), attrs))
    }
    fn name(&self) -> &'static str {
        "layer_norm"
    }
    fn inputs(&self) -> Inputs {
        Inputs::Values
    }
    fn out_shape(&self, ins: &[&[usize]]) -> std::result::Result<Vec<usize>, String> {
        positive("dim", self.dim)?;
        if !(self.eps > 0.0 && self.eps <= 1.0) {
            return Err(format!(
                "`eps` must be in (0, 1] (a stabilizer, typically 1e-5), got {}",
                self.eps
            ));
        }
        let s = arity(ins, 1)?;
        if s.last() != Some(&self.dim) {
            return Err(format!("input {s:?}, expected [..., {}]", self.dim));
        }
        Ok(s.to_vec())
    }
    fn tensors(&self) -> Vec<TensorSpec> {
        vec![
            TensorSpec::param("weight", vec![self.dim]),
            TensorSpec::param("bias", vec![self.dim]),
        ]
    }
    fn macs(&self, _: &[&[usize]], _: &[usize]) -> u64 {
        0
    }
    fn couple(&self, cx: &mut Coupler, _: &Node, ins: &[Vec<Seg>], _: &[&[usize]]) -> Vec<Seg> {
        cx.pin_all(&ins[0], "normalization across the channel axis");
        ins[0].clone()
    }
    fn forward(&self, cx: &mut NodeRun) -> Result<Tensor> {
        let (w, b) = (cx.param("weight")?, cx.param("bias")?);
        if super::inference(&[cx.x(), w, b]) {
            kernel::layer_norm(cx.x(), w, b, self.eps)
        } else if super::all_f32(&[cx.x(), w, b]) {
            kernel::layer_norm_train(cx.x(), w, b, self.eps)
        } else {
            kernel::layer_norm_reference(cx.x(), w, b, self.eps)
        }
    }
    fn refreshed(&self, dims: &dyn Fn(&str) -> Option<Vec<usize>>, _: &[&[usize]]) -> Option<Op> {
        let d = dims("weight")?;
        Some(Op::LayerNorm(LayerNorm {
            dim: d[0],
            ..self.clone()
        }))
    }
}

pub(crate) fn example() -> super::Example {
    super::Example {
        op: Op::LayerNorm(LayerNorm { dim: 6, eps: 1e-5 }),
        inputs: vec![vec![3, 6]],
        tensors: vec![],
    }
}

//! Inverted dropout (Srivastava et al. 2014) with drop probability `p`, active in train
//! mode only; masks come from the forward's seeded generator, so a resumed run draws the
//! same ones. No tensors; channels pass through unchanged.

use candle_core::Tensor;
use rand::{rngs::StdRng, Rng};
use serde::{Deserialize, Serialize};

use super::couple::{Coupler, Seg};
use super::{arity, pass_through, Absorb, Inputs, LayerKind, NodeRun};
use super::{Node, Op};
use crate::error::Result;
use crate::onnx::Lower;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dropout {
    pub p: f64,
}

impl LayerKind for Dropout {
    /// Inference only: the identity.
    fn onnx(&self, cx: &mut Lower) -> Result<String> {
        Ok(cx.x())
    }
    fn name(&self) -> &'static str {
        "dropout"
    }
    fn as_absorbed(&self) -> Option<Absorb> {
        Some(Absorb::Identity)
    }
    fn inputs(&self) -> Inputs {
        Inputs::Values
    }
    fn out_shape(&self, ins: &[&[usize]]) -> std::result::Result<Vec<usize>, String> {
        if !(0.0..1.0).contains(&self.p) {
            return Err(format!("`p` must be in [0, 1), got {}", self.p));
        }
        Ok(arity(ins, 1)?.to_vec())
    }
    no_tensors!();
    fn couple(&self, _: &mut Coupler, _: &Node, ins: &[Vec<Seg>], _: &[&[usize]]) -> Vec<Seg> {
        pass_through(ins)
    }
    fn forward(&self, cx: &mut NodeRun) -> Result<Tensor> {
        if cx.opts.train && self.p > 0.0 {
            dropout(&cx.ins[0], self.p, cx.rng)
        } else {
            Ok(cx.x().clone())
        }
    }
}

/// Inverted dropout with a seeded mask.
fn dropout(x: &Tensor, prob: f64, rng: &mut StdRng) -> Result<Tensor> {
    let keep = 1.0 - prob;
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| {
            if rng.random::<f64>() < keep {
                (1.0 / keep) as f32
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    Ok((x * mask)?)
}

pub(crate) fn example() -> super::Example {
    super::Example {
        op: Op::Dropout(Dropout { p: 0.25 }),
        inputs: vec![vec![4, 3]],
        tensors: vec![],
    }
}

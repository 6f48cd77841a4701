//! `[C, H, W]` → `[C·H·W]`. No tensors. Coupling: one channel of the input becomes H·W
//! consecutive features, so a following Linear's columns are cut in blocks of H·W.

use candle_core::Tensor;

use super::couple::{Coupler, Seg};
use super::{arity, Inputs, LayerKind, NodeRun};
use super::{Node, Op};
use crate::error::Result;
use crate::onnx::{int, Lower};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flatten;

impl LayerKind for Flatten {
    fn onnx(&self, cx: &mut Lower) -> Result<String> {
        Ok(cx
            .emit
            .op("Flatten", &[&cx.x()], &cx.out(), vec![int("axis", 1)]))
    }
    fn name(&self) -> &'static str {
        "flatten"
    }
    fn inputs(&self) -> Inputs {
        Inputs::Values
    }
    fn out_shape(&self, ins: &[&[usize]]) -> std::result::Result<Vec<usize>, String> {
        let s = arity(ins, 1)?;
        if s.is_empty() {
            return Err("input has no axes to flatten".into());
        }
        let n = s.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        Ok(vec![n.ok_or_else(|| {
            format!("input {s:?} is too large to flatten")
        })?])
    }
    no_tensors!();
    fn couple(&self, _: &mut Coupler, _: &Node, ins: &[Vec<Seg>], shapes: &[&[usize]]) -> Vec<Seg> {
        let hw: usize = shapes[0][1..].iter().product();
        ins[0]
            .iter()
            .map(|seg| Seg {
                per: seg.per * hw,
                ..seg.clone()
            })
            .collect()
    }
    fn forward(&self, cx: &mut NodeRun) -> Result<Tensor> {
        Ok(cx.x().flatten_from(1)?)
    }
}

pub(crate) fn example() -> super::Example {
    super::Example {
        op: Op::Flatten,
        inputs: vec![vec![2, 3, 4]],
        tensors: vec![],
    }
}

//! Multi-input joins: residual `Add` (element-wise sum of ≥ 2 inputs of one shape; the
//! branches' channel spaces are united, so a residual stage is cut as one group) and
//! `Concat` along the channel axis (each input's channels keep their own space, at an
//! offset in the output). No tensors, no MACs. At inference the sum is one pass of
//! `fast::sum` rather than a chain of candle additions.

use candle_core::Tensor;

use super::couple::{Coupler, Seg};
use super::{Absorb, Inputs, LayerKind, NodeRun};
use super::{Node, Op};
use crate::error::Result;
use crate::onnx::{int, Lower};
use crate::ops::fast;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Add;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concat;

impl LayerKind for Add {
    fn onnx(&self, cx: &mut Lower) -> Result<String> {
        let ins = cx.ins.clone();
        let refs: Vec<&str> = ins.iter().map(String::as_str).collect();
        let op = if refs.len() == 2 { "Add" } else { "Sum" };
        Ok(cx.emit.op(op, &refs, &cx.out(), vec![]))
    }
    fn name(&self) -> &'static str {
        "add"
    }
    fn as_absorbed(&self) -> Option<Absorb> {
        Some(Absorb::Residual)
    }
    fn inputs(&self) -> Inputs {
        Inputs::Values
    }
    fn out_shape(&self, ins: &[&[usize]]) -> std::result::Result<Vec<usize>, String> {
        if ins.len() < 2 || ins.iter().any(|s| *s != ins[0]) {
            return Err(format!("inputs must be ≥2 of one shape, got {ins:?}"));
        }
        Ok(ins[0].to_vec())
    }
    no_tensors!();
    fn couple(&self, cx: &mut Coupler, _: &Node, ins: &[Vec<Seg>], _: &[&[usize]]) -> Vec<Seg> {
        cx.add_union(ins);
        ins[0].clone()
    }
    fn forward(&self, cx: &mut NodeRun) -> Result<Tensor> {
        let ins: Vec<&Tensor> = cx.ins.iter().collect();
        if super::inference(&ins) {
            return fast::sum(&ins);
        }
        let mut acc = cx.x().clone();
        for t in &cx.ins[1..] {
            acc = (acc + t)?;
        }
        Ok(acc)
    }
}

impl LayerKind for Concat {
    fn onnx(&self, cx: &mut Lower) -> Result<String> {
        let ins = cx.ins.clone();
        let refs: Vec<&str> = ins.iter().map(String::as_str).collect();
        Ok(cx.emit.op("Concat", &refs, &cx.out(), vec![int("axis", 1)]))
    }
    fn name(&self) -> &'static str {
        "concat"
    }
    fn inputs(&self) -> Inputs {
        Inputs::Values
    }
    fn out_shape(&self, ins: &[&[usize]]) -> std::result::Result<Vec<usize>, String> {
        let ok = ins.len() >= 2
            && !ins[0].is_empty()
            && ins
                .iter()
                .all(|s| s.len() == ins[0].len() && s[1..] == ins[0][1..]);
        if !ok {
            return Err(format!("inputs must agree except in channels: {ins:?}"));
        }
        let mut out = ins[0].to_vec();
        out[0] = ins.iter().map(|s| s[0]).sum();
        Ok(out)
    }
    no_tensors!();
    fn couple(&self, _: &mut Coupler, _: &Node, ins: &[Vec<Seg>], _: &[&[usize]]) -> Vec<Seg> {
        ins.concat()
    }
    fn forward(&self, cx: &mut NodeRun) -> Result<Tensor> {
        Ok(Tensor::cat(cx.ins, 1)?)
    }
}

pub(crate) fn add_example() -> super::Example {
    super::Example {
        op: Op::Add,
        inputs: vec![vec![3, 2], vec![3, 2]],
        tensors: vec![],
    }
}

pub(crate) fn concat_example() -> super::Example {
    super::Example {
        op: Op::Concat,
        inputs: vec![vec![2, 3, 3], vec![1, 3, 3]],
        tensors: vec![],
    }
}

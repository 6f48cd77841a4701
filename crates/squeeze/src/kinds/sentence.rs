//! Sentence-embedding heads (Reimers & Gurevych 2019): pooling of the hidden states `[L, d]`
//! into `[d]` — the mean over the real tokens, the first (CLS) token's state, or the
//! maximum over the real tokens — and division by the L2 norm of the last axis. No tensors,
//! no MACs. Pooling passes channels through; L2 normalization pins them (the norm runs
//! across channels).

use candle_core::Tensor;

use super::couple::{Coupler, Seg};
use super::{arity, pass_through, Inputs, LayerKind, NodeRun};
use super::{Node, Op};
use crate::error::Result;
use crate::onnx::{blocks, int, ints, Lower};
use crate::ops::sentence;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeanPool;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L2Normalize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClsPool;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPoolTokens;

/// The methods every pooling kind shares: it reads the hidden states and the mask, gives
/// `[d]`, owns no tensors and passes channels through.
macro_rules! pooling_kind {
    ($name:literal) => {
        fn name(&self) -> &'static str {
            $name
        }
        fn inputs(&self) -> Inputs {
            Inputs::MaskLast
        }
        fn out_shape(&self, ins: &[&[usize]]) -> std::result::Result<Vec<usize>, String> {
            pooled_shape(ins)
        }
        no_tensors!();
        fn couple(&self, _: &mut Coupler, _: &Node, ins: &[Vec<Seg>], _: &[&[usize]]) -> Vec<Seg> {
            pass_through(ins)
        }
    };
}

/// Hidden states `[L, d]` and the mask `[L]`, or an error saying so.
fn pooled_shape(ins: &[&[usize]]) -> std::result::Result<Vec<usize>, String> {
    if ins.len() != 2 || ins[0].len() != 2 || ins[1] != [ins[0][0]] {
        return Err(format!("expects hidden [L, d] and mask [L], got {ins:?}"));
    }
    Ok(vec![ins[0][1]])
}

impl LayerKind for ClsPool {
    pooling_kind!("cls_pool");
    fn forward(&self, cx: &mut NodeRun) -> Result<Tensor> {
        sentence::cls_pool(cx.x())
    }
    /// `Gather` of token 0 along the sequence axis.
    fn onnx(&self, cx: &mut Lower) -> Result<String> {
        let zero = cx.emit.i64s(&cx.tmp("first"), &[], &[0]);
        Ok(cx
            .emit
            .op("Gather", &[&cx.x(), &zero], &cx.out(), vec![int("axis", 1)]))
    }
}

/// The ONNX mask `[N, L, 1]` of a pooling node and its hidden states times it.
fn masked_states(cx: &mut Lower) -> (String, String) {
    let (h, mask) = (cx.x(), cx.ins[1].clone());
    let ax2 = cx.emit.axes(&cx.tmp("feature_axis"), &[2]);
    let m = cx
        .emit
        .op("Unsqueeze", &[&mask, &ax2], &cx.tmp("mask"), vec![]); // [N, L, 1]
    let hm = cx.emit.op("Mul", &[&h, &m], &cx.tmp("masked"), vec![]);
    (m, hm)
}

impl LayerKind for MaxPoolTokens {
    pooling_kind!("max_pool_tokens");
    fn forward(&self, cx: &mut NodeRun) -> Result<Tensor> {
        sentence::max_pool(cx.x(), &cx.ins[1])
    }
    /// h·m + (1 − m)·fill, then `ReduceMax` over the sequence axis.
    fn onnx(&self, cx: &mut Lower) -> Result<String> {
        let (m, hm) = masked_states(cx);
        let one = cx.emit.scalar(&cx.tmp("one"), 1.0);
        let pad = cx.emit.op("Sub", &[&one, &m], &cx.tmp("padding"), vec![]);
        let fill = blocks::scale(cx, &pad, sentence::MAX_POOL_FILL as f32, "fill");
        let x = cx.emit.op("Add", &[&hm, &fill], &cx.tmp("filled"), vec![]);
        let attrs = vec![ints("axes", &[1]), int("keepdims", 0)];
        Ok(cx.emit.op("ReduceMax", &[&x], &cx.out(), attrs))
    }
}

impl LayerKind for MeanPool {
    /// Σ h·mask / max(Σ mask, 10⁻⁹) over the sequence axis.
    fn onnx(&self, cx: &mut Lower) -> Result<String> {
        let (m, hm) = masked_states(cx);
        let ax1 = cx.emit.axes(&cx.tmp("seq_axis"), &[1]);
        let keep = vec![int("keepdims", 0)];
        let sum = cx
            .emit
            .op("ReduceSum", &[&hm, &ax1], &cx.tmp("sum"), keep.clone()); // [N, d]
        let count = cx.emit.op("ReduceSum", &[&m, &ax1], &cx.tmp("count"), keep); // [N, 1]
        let count = blocks::clip_below(cx, &count, 1e-9, "count_clipped");
        Ok(cx.emit.op("Div", &[&sum, &count], &cx.out(), vec![]))
    }
    pooling_kind!("mean_pool");
    fn forward(&self, cx: &mut NodeRun) -> Result<Tensor> {
        if super::inference(&[cx.x()]) && cx.x().rank() == 3 {
            return sentence::mean_pool_inference(cx.x(), &cx.ins[1]);
        }
        sentence::mean_pool(cx.x(), &cx.ins[1])
    }
}

impl LayerKind for L2Normalize {
    /// x / max(‖x‖₂, 10⁻¹²) over the last axis.
    fn onnx(&self, cx: &mut Lower) -> Result<String> {
        let attrs = vec![ints("axes", &[-1]), int("keepdims", 1)];
        let norm = cx.emit.op("ReduceL2", &[&cx.x()], &cx.tmp("norm"), attrs);
        let norm = blocks::clip_below(cx, &norm, 1e-12, "norm_clipped");
        Ok(cx.emit.op("Div", &[&cx.x(), &norm], &cx.out(), vec![]))
    }
    fn name(&self) -> &'static str {
        "l2_normalize"
    }
    fn inputs(&self) -> Inputs {
        Inputs::Values
    }
    fn out_shape(&self, ins: &[&[usize]]) -> std::result::Result<Vec<usize>, String> {
        let s = arity(ins, 1)?;
        if s.is_empty() {
            return Err("input has no axis to normalize".into());
        }
        Ok(s.to_vec())
    }
    no_tensors!();
    fn couple(&self, cx: &mut Coupler, _: &Node, ins: &[Vec<Seg>], _: &[&[usize]]) -> Vec<Seg> {
        cx.pin_all(&ins[0], "normalization across the channel axis");
        ins[0].clone()
    }
    fn forward(&self, cx: &mut NodeRun) -> Result<Tensor> {
        if super::inference(&[cx.x()]) {
            return sentence::l2_normalize_inference(cx.x());
        }
        sentence::l2_normalize(cx.x())
    }
}

pub(crate) fn mean_pool_example() -> super::Example {
    super::Example {
        op: Op::MeanPool,
        inputs: vec![vec![5, 4], vec![5]],
        tensors: vec![],
    }
}

pub(crate) fn cls_pool_example() -> super::Example {
    super::Example {
        op: Op::ClsPool,
        inputs: vec![vec![5, 4], vec![5]],
        tensors: vec![],
    }
}

pub(crate) fn max_pool_tokens_example() -> super::Example {
    super::Example {
        op: Op::MaxPoolTokens,
        inputs: vec![vec![5, 4], vec![5]],
        tensors: vec![],
    }
}

pub(crate) fn l2_example() -> super::Example {
    super::Example {
        op: Op::L2Normalize,
        inputs: vec![vec![4]],
        tensors: vec![],
    }
}

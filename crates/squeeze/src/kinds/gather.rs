//! Channel gather: `y[:, j] = x[:, index[j]]` along the channel axis of `[C, ...]` values —
//! the index (permutation / selection) node that CondenseNet's materialized learned group
//! convolutions put before a standard group convolution (Huang et al. 2018). Tensor
//! `index` `[channels]` (u32, role index). Coupling: the output is the input's channel space
//! seen through the index map, so cutting a producer channel removes every position that
//! reads it from the consumers and renumbers the index (when the index is not known — a
//! graph without its tensors — both sides are pinned).

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::couple::{Coupler, Seg};
use super::Dtype;
use super::{arity, positive, Inputs, LayerKind, NodeRun, TensorRole, TensorSpec};
use super::{Node, Op};
use crate::error::{Error, Result};
use crate::onnx::{int, Lower};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelGather {
    /// Output channels (entries of `index`).
    pub channels: usize,
}

impl LayerKind for ChannelGather {
    fn onnx(&self, cx: &mut Lower) -> Result<String> {
        let (dims, idx) = cx.values("index")?;
        let idx: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
        let i = cx.emit.i64s(&format!("{}.index", cx.node), &dims, &idx);
        Ok(cx
            .emit
            .op("Gather", &[&cx.x(), &i], &cx.out(), vec![int("axis", 1)]))
    }
    fn name(&self) -> &'static str {
        "channel_gather"
    }
    fn inputs(&self) -> Inputs {
        Inputs::Values
    }
    fn out_shape(&self, ins: &[&[usize]]) -> std::result::Result<Vec<usize>, String> {
        positive("channels", self.channels)?;
        let s = arity(ins, 1)?;
        if s.is_empty() {
            return Err("input has no channel axis".into());
        }
        let mut out = s.to_vec();
        out[0] = self.channels;
        Ok(out)
    }
    fn tensors(&self) -> Vec<TensorSpec> {
        vec![TensorSpec {
            dtype: Dtype::U32,
            ..TensorSpec::f32("index", vec![self.channels], TensorRole::Index)
        }]
    }
    fn macs(&self, _: &[&[usize]], _: &[usize]) -> u64 {
        0
    }
    fn couple(&self, cx: &mut Coupler, node: &Node, ins: &[Vec<Seg>], _: &[&[usize]]) -> Vec<Seg> {
        cx.gather(&node.name, &ins[0], self.channels)
    }
    fn forward(&self, cx: &mut NodeRun) -> Result<Tensor> {
        let idx = cx.param("index")?;
        let c = cx.x().dim(1)?;
        let max = idx.to_dtype(DType::U32)?.max(0)?.to_scalar::<u32>()? as usize;
        if max >= c {
            return Err(Error::Graph(format!(
                "index entry {max} is outside the input's {c} channels"
            )));
        }
        Ok(cx.x().index_select(idx, 1)?)
    }
    fn refreshed(&self, dims: &dyn Fn(&str) -> Option<Vec<usize>>, _: &[&[usize]]) -> Option<Op> {
        let d = dims("index")?;
        Some(Op::ChannelGather(ChannelGather { channels: d[0] }))
    }
}

pub(crate) fn example() -> super::Example {
    super::Example {
        op: Op::ChannelGather(ChannelGather { channels: 5 }),
        inputs: vec![vec![3, 2, 2]],
        tensors: vec![],
    }
}

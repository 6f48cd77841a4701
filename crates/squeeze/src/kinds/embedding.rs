//! Table lookup for token graphs: rows of `weight` `[num, dim]` picked by the token ids,
//! by the positions 0..L (absolute position embeddings) or by segment id 0 (single-sentence
//! encoders). Reads exactly the token ids. Coupling: creates the hidden-width space, pinned
//! (the table's width is the width of every residual in the encoder).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::couple::{Coupler, Seg};
use super::{arity, positive, Inputs, LayerKind, NodeRun, TensorSpec};
use super::{Node, Op};
use crate::error::Result;
use crate::onnx::Lower;
use crate::ops::embedding as kernel;

/// Which index an [`Embedding`] looks its rows up by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lookup {
    /// The token ids of the input.
    Tokens,
    /// The positions 0..L (absolute position embeddings).
    Positions,
    /// Segment (token-type) id 0 for every token: single-sentence encoders.
    Segments,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Embedding {
    pub num: usize,
    pub dim: usize,
    pub lookup: Lookup,
    /// Positions only: the row of position 0 (RoBERTa's tables start after the padding
    /// index: `padding_idx + 1`); 0 elsewhere.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: usize,
}

pub(crate) fn is_zero(v: &usize) -> bool {
    *v == 0
}

/// `offset` is a positions table's first row, inside its `num` rows.
pub(crate) fn check_offset(
    lookup: Lookup,
    offset: usize,
    num: usize,
) -> std::result::Result<(), String> {
    match lookup {
        Lookup::Positions if offset >= num => {
            Err(format!("`offset` {offset} leaves none of the {num} rows"))
        }
        Lookup::Positions => Ok(()),
        _ if offset > 0 => Err("`offset` applies to a positions table only".into()),
        _ => Ok(()),
    }
}

/// The rows a lookup can reach: a positions table's rows from its offset on.
pub(crate) fn reachable(lookup: Lookup, offset: usize, num: usize) -> usize {
    match lookup {
        Lookup::Positions => num.saturating_sub(offset),
        _ => num,
    }
}

impl LayerKind for Embedding {
    fn onnx(&self, cx: &mut Lower) -> Result<String> {
        let t = cx.constant("weight")?;
        lookup_onnx(cx, (self.lookup, self.offset), &t)
    }
    fn name(&self) -> &'static str {
        "embedding"
    }
    fn lookup_table(&self) -> Option<(Lookup, usize)> {
        Some((self.lookup, reachable(self.lookup, self.offset, self.num)))
    }
    fn inputs(&self) -> Inputs {
        Inputs::TokenIds
    }
    fn out_shape(&self, ins: &[&[usize]]) -> std::result::Result<Vec<usize>, String> {
        positive("num", self.num)?;
        positive("dim", self.dim)?;
        check_offset(self.lookup, self.offset, self.num)?;
        let s = arity(ins, 1)?;
        if s.len() != 1 {
            return Err(format!("input {s:?}, expected token ids [L]"));
        }
        Ok(vec![s[0], self.dim])
    }
    fn tensors(&self) -> Vec<TensorSpec> {
        vec![TensorSpec::param("weight", vec![self.num, self.dim])]
    }
    fn macs(&self, _: &[&[usize]], _: &[usize]) -> u64 {
        0
    }
    fn couple(&self, cx: &mut Coupler, node: &Node, _: &[Vec<Seg>], _: &[&[usize]]) -> Vec<Seg> {
        let o = cx.new_space(&node.name, self.dim, false);
        cx.pin_all(&o, "embedding table (hidden width)");
        o
    }
    fn forward(&self, cx: &mut NodeRun) -> Result<Tensor> {
        let table = cx.param("weight")?;
        let (n, l) = cx.x().dims2()?;
        Ok(match self.lookup {
            Lookup::Tokens if table.dtype() == candle_core::DType::F32 => {
                kernel::lookup_train(table, cx.x())?
            }
            Lookup::Tokens => kernel::lookup_reference(table, cx.x())?,
            Lookup::Positions => {
                let rows = self.num - self.offset;
                kernel::positions(&table.narrow(0, self.offset, rows)?, n, l)?
            }
            Lookup::Segments => kernel::positions(&table.narrow(0, 0, 1)?, n, 1)?
                .broadcast_as((n, l, table.dim(1)?))?,
        })
    }
    fn refreshed(&self, dims: &dyn Fn(&str) -> Option<Vec<usize>>, _: &[&[usize]]) -> Option<Op> {
        let d = dims("weight")?;
        Some(Op::Embedding(Embedding {
            num: d[0],
            dim: d[1],
            ..self.clone()
        }))
    }
}

pub(crate) fn example() -> super::Example {
    super::Example {
        op: Op::Embedding(Embedding {
            num: 9,
            dim: 4,
            lookup: Lookup::Tokens,
            offset: 0,
        }),
        inputs: vec![vec![5]],
        tensors: vec![],
    }
}

/// Rows of ONNX value `table` (`[num, …]`) looked up by `lookup` in a token graph: by the
/// `input_ids`, by the `token_type_ids`, or by the positions `offset..offset + L` (then
/// `[1, L, …]`; right-padded batches, as squeeze and sentence-transformers pad them).
pub(crate) fn lookup_onnx(
    cx: &mut Lower,
    (lookup, offset): (Lookup, usize),
    table: &str,
) -> Result<String> {
    let tokens = cx
        .tokens
        .cloned()
        .ok_or_else(|| crate::onnx::refuse("a table lookup outside a token graph"))?;
    let idx = match lookup {
        Lookup::Tokens => tokens.ids,
        Lookup::Segments => tokens
            .types
            .ok_or_else(|| crate::onnx::refuse("the graph has no `token_type_ids` input"))?,
        Lookup::Positions => {
            let shape = cx
                .emit
                .op("Shape", &[&tokens.ids], &cx.tmp("shape"), vec![]);
            let one = cx.emit.i64s(&cx.tmp("seq_axis"), &[], &[1]);
            let l = cx
                .emit
                .op("Gather", &[&shape, &one], &cx.tmp("seq_len"), vec![]);
            let start = cx.emit.i64s(&cx.tmp("start"), &[], &[offset as i64]);
            let end = cx.emit.op("Add", &[&l, &start], &cx.tmp("end"), vec![]);
            let step = cx.emit.i64s(&cx.tmp("step"), &[], &[1]);
            let pos = cx.emit.op(
                "Range",
                &[&start, &end, &step],
                &cx.tmp("positions"),
                vec![],
            );
            let rows = cx
                .emit
                .op("Gather", &[table, &pos], &cx.tmp("rows"), vec![]);
            let ax = cx.emit.axes(&cx.tmp("batch_axis"), &[0]);
            return Ok(cx.emit.op("Unsqueeze", &[&rows, &ax], &cx.out(), vec![]));
        }
    };
    Ok(cx.emit.op("Gather", &[table, &idx], &cx.out(), vec![]))
}

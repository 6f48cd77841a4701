//! A quantized lookup table: the [`super::embedding`] kind with its `[num, dim]` table
//! stored as codes (`weight_q`), scales (`weight_scale`) and optional zero points
//! (`weight_zero`) in a [`Layout`] — int8 with one scale per row for the `quantize` pass.
//! Only the looked-up rows are dequantized, so the table stays quantized in memory
//! (a text encoder's token table is half of its parameters). Not trainable.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::couple::{Coupler, Seg};
use super::embedding::Lookup;
use super::with_node_view;
use super::{arity, positive, Inputs, LayerKind, NodeRun, TensorSpec};
use super::{Node, Op};
use crate::error::{Error, Result};
use crate::math::qlayout::Layout;
use crate::onnx::quant::Decoded;
use crate::onnx::{int, Lower};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QEmbedding {
    pub num: usize,
    pub dim: usize,
    pub lookup: Lookup,
    pub layout: Layout,
    /// Positions only: the row of position 0 (see [`Embedding`](super::embedding::Embedding)).
    #[serde(default, skip_serializing_if = "super::embedding::is_zero")]
    pub offset: usize,
}

impl LayerKind for QEmbedding {
    /// The int8 codes (int4 ones as int8 values) and per-block scales stay in the file;
    /// `Cast` · `Mul` rebuild the f32 table (a constant expression runtimes fold once), then
    /// the rows are looked up as for [`Embedding`](super::embedding::Embedding).
    fn onnx(&self, cx: &mut Lower) -> Result<String> {
        let d = Decoded::read(cx, self.layout, (self.num, self.dim))?;
        let nb = d.cols / d.block;
        let n = cx.node.to_string();
        let codes = cx
            .emit
            .i8s(&format!("{n}.weight_q"), &[d.rows, nb, d.block], &d.codes);
        let scales = cx
            .emit
            .f32s(&format!("{n}.weight_scale"), &[d.rows, nb, 1], &d.scales);
        let f = cx
            .emit
            .op("Cast", &[&codes], &cx.tmp("codes_f32"), vec![int("to", 1)]);
        let t = cx.emit.op("Mul", &[&f, &scales], &cx.tmp("blocks"), vec![]);
        let shape = cx
            .emit
            .axes(&cx.tmp("table_shape"), &[d.rows as i64, d.cols as i64]);
        let t = cx
            .emit
            .op("Reshape", &[&t, &shape], &cx.tmp("table"), vec![]);
        super::embedding::lookup_onnx(cx, (self.lookup, self.offset), &t)
    }
    fn name(&self) -> &'static str {
        "qembedding"
    }
    fn lookup_table(&self) -> Option<(Lookup, usize)> {
        Some((
            self.lookup,
            super::embedding::reachable(self.lookup, self.offset, self.num),
        ))
    }
    fn quantized_weight(&self) -> Option<(Layout, (usize, usize))> {
        Some((self.layout, (self.num, self.dim)))
    }
    fn inputs(&self) -> Inputs {
        Inputs::TokenIds
    }
    fn out_shape(&self, ins: &[&[usize]]) -> std::result::Result<Vec<usize>, String> {
        positive("num", self.num)?;
        positive("dim", self.dim)?;
        self.layout.check(self.dim)?;
        super::embedding::check_offset(self.lookup, self.offset, self.num)?;
        let s = arity(ins, 1)?;
        if s.len() != 1 {
            return Err(format!("input {s:?}, expected token ids [L]"));
        }
        Ok(vec![s[0], self.dim])
    }
    fn tensors(&self) -> Vec<TensorSpec> {
        let (n, d) = (self.num, self.dim);
        super::quantized_specs(&self.layout, (n, d), vec![n, d])
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
        let (n, l) = cx.x().dims2()?;
        let rows: Vec<u32> = match self.lookup {
            Lookup::Tokens => cx.x().to_dtype(DType::U32)?.flatten_all()?.to_vec1()?,
            Lookup::Positions => {
                let off = self.offset as u32;
                (0..n).flat_map(|_| off..off + l as u32).collect()
            }
            Lookup::Segments => vec![0; n * l],
        };
        if let Some(bad) = rows.iter().find(|&&r| r as usize >= self.num) {
            return Err(Error::Data(format!(
                "index {bad} is outside the table of {} rows",
                self.num
            )));
        }
        let dims = (self.num, self.dim);
        let out = with_node_view(cx.params, &cx.node.name, self.layout, dims, |view| {
            let mut out = vec![0f32; rows.len() * self.dim];
            for (o, &r) in out.chunks_exact_mut(self.dim).zip(&rows) {
                view.dequantize_row(r as usize, o);
            }
            Ok(out)
        })?;
        Ok(Tensor::from_vec(out, (n, l, self.dim), cx.x().device())?)
    }
    fn refreshed(&self, dims: &dyn Fn(&str) -> Option<Vec<usize>>, _: &[&[usize]]) -> Option<Op> {
        let d = dims("weight_q")?;
        Some(Op::QEmbedding(QEmbedding {
            num: d[0],
            ..self.clone()
        }))
    }
}

pub(crate) fn example() -> super::Example {
    let (num, dim) = (9, 4);
    let w: Vec<f32> = (0..num * dim).map(|i| (i as f32 - 17.0) / 10.0).collect();
    let q = crate::math::qweight::QWeight::quantize(&w, num, dim, Layout::INT8_CHANNEL)
        .expect("a valid layout");
    let (codes, scales, _) = q.tensors().expect("sizes match");
    super::Example {
        op: Op::QEmbedding(QEmbedding {
            num,
            dim,
            lookup: Lookup::Tokens,
            layout: Layout::INT8_CHANNEL,
            offset: 0,
        }),
        inputs: vec![vec![5]],
        tensors: vec![("weight_q", codes), ("weight_scale", scales)],
    }
}

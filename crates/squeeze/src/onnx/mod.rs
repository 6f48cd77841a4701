//! Building an ONNX graph (the Open Neural Network Exchange format, opset 17 plus the
//! `com.microsoft` domain for `MatMulNBits`): [`Emit`] collects operator nodes and
//! constant tensors under unique value names, and [`Lower`] is what one layer kind sees
//! while it writes its own ONNX form (`LayerKind::onnx`): the ONNX names of its inputs,
//! its per-sample input shapes, its tensors and the shared
//! building blocks of [`blocks`] (a matrix product with bias, a convolution, the
//! quantize–dequantize pairs of a static int8 layer). The protobuf messages are in
//! [`proto`]; `crate::formats::onnx` walks a graph and writes the file.

pub mod blocks;
pub mod proto;
pub mod quant;

use std::collections::BTreeMap;

use prost::Message;

use crate::error::{Error, Result};
use crate::params::{f32_values, ParamStore};
use proto::{attr_type, data_type, AttributeProto, NodeProto, TensorProto};

/// The standard operator-set version the exporter writes.
pub const OPSET: i64 = 17;

/// The domain of ONNX Runtime's contributed operators (`MatMulNBits`).
pub const MS_DOMAIN: &str = "com.microsoft";

/// Nodes and constants of a graph being written, with the notes (fidelity warnings)
/// collected on the way.
#[derive(Debug, Default)]
pub struct Emit {
    pub nodes: Vec<NodeProto>,
    pub inits: Vec<TensorProto>,
    /// Whether any node is in [`MS_DOMAIN`].
    pub uses_ms: bool,
    /// Where the file is not exactly our model: (layer, what).
    pub notes: Vec<(String, String)>,
    taken: BTreeMap<String, usize>,
    /// Outputs of operators that several nodes share, by operator and input.
    shared: BTreeMap<String, Vec<String>>,
}

impl Emit {
    /// A value name not used before, built from `base`.
    pub fn fresh(&mut self, base: &str) -> String {
        let n = self.taken.entry(base.to_string()).or_insert(0);
        *n += 1;
        match *n {
            1 => base.to_string(),
            k => format!("{base}_{k}"),
        }
    }

    /// Appends operator `op` (standard domain) reading `ins` and writing a fresh value
    /// named after `out`; returns that name. An empty input name is an omitted optional.
    pub fn op(&mut self, op: &str, ins: &[&str], out: &str, attrs: Vec<AttributeProto>) -> String {
        self.op_in("", op, ins, &[out], attrs).remove(0)
    }

    /// Appends an operator of `domain` with several outputs; returns their fresh names.
    pub fn op_in(
        &mut self,
        domain: &str,
        op: &str,
        ins: &[&str],
        outs: &[&str],
        attribute: Vec<AttributeProto>,
    ) -> Vec<String> {
        let output: Vec<String> = outs.iter().map(|o| self.fresh(o)).collect();
        if domain == MS_DOMAIN {
            self.uses_ms = true;
        }
        self.nodes.push(NodeProto {
            input: ins.iter().map(|s| s.to_string()).collect(),
            output: output.clone(),
            name: output[0].clone(),
            op_type: op.to_string(),
            attribute,
            domain: domain.to_string(),
        });
        output
    }

    /// Operator `op` on `input` once per graph: the outputs of an earlier identical call
    /// (q, k and v quantize the same input once), or a new node named after `outs`.
    pub fn op_shared(&mut self, op: &str, input: &str, outs: &[&str]) -> Vec<String> {
        let key = format!("{op}({input})");
        if let Some(o) = self.shared.get(&key) {
            return o.clone();
        }
        let o = self.op_in("", op, &[input], outs, vec![]);
        self.shared.insert(key, o.clone());
        o
    }

    fn constant(&mut self, name: &str, dims: &[usize], ty: i32, raw_data: Vec<u8>) -> String {
        let name = self.fresh(name);
        self.inits.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: ty,
            name: name.clone(),
            raw_data,
        });
        name
    }

    /// A constant f32 tensor; returns its name.
    pub fn f32s(&mut self, name: &str, dims: &[usize], v: &[f32]) -> String {
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.constant(name, dims, data_type::FLOAT, raw)
    }

    /// A constant i64 tensor (shapes, axes, indices).
    pub fn i64s(&mut self, name: &str, dims: &[usize], v: &[i64]) -> String {
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.constant(name, dims, data_type::INT64, raw)
    }

    /// A constant int8 tensor.
    pub fn i8s(&mut self, name: &str, dims: &[usize], v: &[i8]) -> String {
        let raw = v.iter().map(|&x| x as u8).collect();
        self.constant(name, dims, data_type::INT8, raw)
    }

    /// A constant uint8 tensor.
    pub fn u8s(&mut self, name: &str, dims: &[usize], v: Vec<u8>) -> String {
        self.constant(name, dims, data_type::UINT8, v)
    }

    /// A 1-D i64 constant (axes of Unsqueeze/ReduceSum, a Reshape's target).
    pub fn axes(&mut self, name: &str, v: &[i64]) -> String {
        self.i64s(name, &[v.len()], v)
    }

    /// A scalar f32 constant.
    pub fn scalar(&mut self, name: &str, v: f32) -> String {
        self.f32s(name, &[], &[v])
    }
}

/// An integer attribute.
pub fn int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::INT,
        i,
        ..Default::default()
    }
}

/// A list-of-integers attribute.
pub fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::INTS,
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// A float attribute.
pub fn float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::FLOAT,
        f,
        ..Default::default()
    }
}

/// A string attribute.
pub fn string(name: &str, s: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::STRING,
        s: s.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// The ONNX values a token graph's nodes read besides each other's outputs.
#[derive(Debug, Clone)]
pub struct TokenInputs {
    /// `input_ids`, int64 `[batch, sequence]`.
    pub ids: String,
    /// `token_type_ids`, int64, where the model has a segment table.
    pub types: Option<String>,
}

/// One node being lowered: where its inputs are, what shapes they have, its tensors.
pub struct Lower<'a> {
    pub emit: &'a mut Emit,
    /// The node's name (its tensors are `<node>.<suffix>`; its output is named after it).
    pub node: &'a str,
    /// ONNX value names of the node's inputs, in order (a token graph's mask is f32).
    pub ins: Vec<String>,
    /// Per-sample shapes of those inputs (token graphs at a nominal length).
    pub shapes: Vec<Vec<usize>>,
    /// The graph's token inputs (text encoders only).
    pub tokens: Option<&'a TokenInputs>,
    params: &'a ParamStore,
}

impl<'a> Lower<'a> {
    pub fn new(
        emit: &'a mut Emit,
        node: &'a str,
        (ins, shapes): (Vec<String>, Vec<Vec<usize>>),
        tokens: Option<&'a TokenInputs>,
        params: &'a ParamStore,
    ) -> Self {
        Lower {
            emit,
            node,
            ins,
            shapes,
            tokens,
            params,
        }
    }

    /// The first input's value name.
    pub fn x(&self) -> String {
        self.ins[0].clone()
    }

    /// The name for the node's (final) output.
    pub fn out(&self) -> String {
        self.node.to_string()
    }

    /// The name for one of the node's intermediate values.
    pub fn tmp(&self, what: &str) -> String {
        format!("{}/{what}", self.node)
    }

    /// Whether the node has tensor `suffix`.
    pub fn has(&self, suffix: &str) -> bool {
        self.params.contains(&format!("{}.{suffix}", self.node))
    }

    /// Tensor `suffix` as f32 values with its dims. A pruned weight is written as it is
    /// stored, its zeros included (pruning keeps the masked entries at zero; the masks
    /// themselves only constrain training and are not written).
    pub fn values(&self, suffix: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = self.params.get(&format!("{}.{suffix}", self.node))?;
        Ok((t.dims().to_vec(), f32_values(t)?))
    }

    /// Tensor `suffix`'s bytes (packed codes, zero points) with its dims.
    pub fn bytes(&self, suffix: &str) -> Result<(Vec<usize>, Vec<u8>)> {
        let t = self.params.get(&format!("{}.{suffix}", self.node))?;
        let v = t
            .flatten_all()?
            .to_dtype(candle_core::DType::U8)?
            .to_vec1()?;
        Ok((t.dims().to_vec(), v))
    }

    /// Tensor `suffix` written as an f32 constant; returns its name.
    pub fn constant(&mut self, suffix: &str) -> Result<String> {
        let (dims, v) = self.values(suffix)?;
        Ok(self
            .emit
            .f32s(&format!("{}.{suffix}", self.node), &dims, &v))
    }

    /// The `bias` constant when `bias` is set.
    pub fn bias(&mut self, bias: bool) -> Result<Option<String>> {
        bias.then(|| self.constant("bias")).transpose()
    }

    /// Records that the file is not exactly this layer (the export report lists it).
    pub fn note(&mut self, what: impl std::fmt::Display) {
        let n = (self.node.to_string(), what.to_string());
        self.emit.notes.push(n);
    }
}

/// The error of a layer kind ONNX (as this writer uses it) cannot express.
pub fn refuse(why: impl Into<String>) -> Error {
    Error::Kind(why.into())
}

/// Notes grouped by what they say: "what: N layers (`first` … `last`)".
pub fn grouped(notes: &[(String, String)]) -> Vec<String> {
    let mut by: Vec<(&str, Vec<&str>)> = Vec::new();
    for (layer, what) in notes {
        match by.iter_mut().find(|(w, _)| w == what) {
            Some((_, layers)) => layers.push(layer),
            None => by.push((what, vec![layer])),
        }
    }
    by.into_iter()
        .map(|(what, l)| match l.as_slice() {
            [one] => format!("`{one}`: {what}"),
            [first, .., last] => format!("{} layers (`{first}` … `{last}`): {what}", l.len()),
            [] => what.to_string(),
        })
        .collect()
}

/// Serializes a model message.
pub fn encode(m: &proto::ModelProto) -> Vec<u8> {
    m.encode_to_vec()
}

//! Shape inference over a [`Graph`]: per-sample output shape of every node, and the shape
//! every parameter must have. Used by the consistency check after each pass, by checkpoint
//! loading (every tensor's shape is asserted) and by the cost model. Token graphs have a
//! variable sequence length L; their shapes are inferred at a given L.

use std::collections::{BTreeMap, HashMap};

use super::{Graph, Node, Op, INPUT, MASK};
use crate::error::{Error, Result};

fn err(node: &Node, msg: String) -> Error {
    Error::Graph(format!("node `{}` ({}): {msg}", node.name, node.op.kind()))
}

fn pooled(node: &Node, s: &[usize], kernel: usize, stride: usize) -> Result<Vec<usize>> {
    if s.len() != 3 || kernel == 0 || stride == 0 || s[1] < kernel || s[2] < kernel {
        return Err(err(node, format!("cannot pool {s:?} with kernel {kernel}")));
    }
    Ok(vec![
        s[0],
        (s[1] - kernel) / stride + 1,
        (s[2] - kernel) / stride + 1,
    ])
}

fn node_shape(node: &Node, ins: &[&Vec<usize>]) -> Result<Vec<usize>> {
    let one = |k: usize| -> Result<&Vec<usize>> {
        if ins.len() != k {
            return Err(err(
                node,
                format!("expects {k} input(s), has {}", ins.len()),
            ));
        }
        Ok(ins[0])
    };
    match &node.op {
        Op::Linear {
            in_features,
            out_features,
            ..
        } => {
            let s = one(1)?;
            if s.last() != Some(in_features) {
                return Err(err(
                    node,
                    format!("input {s:?}, expected [..., {in_features}]"),
                ));
            }
            Ok(with_last(s, *out_features))
        }
        Op::Conv2d {
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            groups,
            ..
        } => {
            let s = one(1)?;
            if s.len() != 3 || s[0] != *in_channels {
                return Err(err(
                    node,
                    format!("input {s:?}, expected [{in_channels}, H, W]"),
                ));
            }
            if *groups == 0 || in_channels % groups != 0 || out_channels % groups != 0 {
                return Err(err(
                    node,
                    format!("groups {groups} must divide in/out channels"),
                ));
            }
            let (h, w) = (s[1] + 2 * padding, s[2] + 2 * padding);
            if h < *kernel || w < *kernel || *stride == 0 {
                return Err(err(
                    node,
                    format!("kernel {kernel} larger than padded input"),
                ));
            }
            Ok(vec![
                *out_channels,
                (h - kernel) / stride + 1,
                (w - kernel) / stride + 1,
            ])
        }
        Op::BatchNorm { channels, .. } => {
            let s = one(1)?;
            if s.is_empty() || s[0] != *channels {
                return Err(err(
                    node,
                    format!("input {s:?}, expected {channels} channels"),
                ));
            }
            Ok(s.clone())
        }
        Op::Relu | Op::Dropout { .. } => Ok(one(1)?.clone()),
        Op::MaxPool2d { kernel, stride } | Op::AvgPool2d { kernel, stride } => {
            pooled(node, one(1)?, *kernel, *stride)
        }
        Op::GlobalAvgPool => {
            let s = one(1)?;
            if s.len() != 3 {
                return Err(err(node, format!("input {s:?}, expected [C, H, W]")));
            }
            Ok(vec![s[0]])
        }
        Op::Flatten => Ok(vec![one(1)?.iter().product()]),
        Op::Add => {
            if ins.len() < 2 || ins.iter().any(|s| *s != ins[0]) {
                return Err(err(
                    node,
                    format!("inputs must be ≥2 of one shape, got {ins:?}"),
                ));
            }
            Ok(ins[0].clone())
        }
        Op::Concat => {
            if ins.len() < 2
                || ins
                    .iter()
                    .any(|s| s.len() != ins[0].len() || s[1..] != ins[0][1..])
            {
                return Err(err(
                    node,
                    format!("inputs must agree except in channels: {ins:?}"),
                ));
            }
            let mut out = ins[0].clone();
            out[0] = ins.iter().map(|s| s[0]).sum();
            Ok(out)
        }
        Op::Embedding { dim, .. } => {
            let s = one(1)?;
            if s.len() != 1 {
                return Err(err(node, format!("input {s:?}, expected token ids [L]")));
            }
            Ok(vec![s[0], *dim])
        }
        Op::LayerNorm { dim, .. } => {
            let s = one(1)?;
            if s.last() != Some(dim) {
                return Err(err(node, format!("input {s:?}, expected [..., {dim}]")));
            }
            Ok(s.clone())
        }
        Op::Gelu | Op::L2Normalize => Ok(one(1)?.clone()),
        Op::Attention { heads, head_dim } => attention_shape(node, ins, heads * head_dim),
        Op::MeanPool => {
            if ins.len() != 2 || ins[0].len() != 2 || ins[1].as_slice() != [ins[0][0]] {
                return Err(err(
                    node,
                    format!("expects hidden [L, d] and mask [L], got {ins:?}"),
                ));
            }
            Ok(vec![ins[0][1]])
        }
    }
}

fn with_last(s: &[usize], last: usize) -> Vec<usize> {
    let mut out = s.to_vec();
    *out.last_mut().expect("checked non-empty") = last;
    out
}

/// Attention reads q, k, v ([L, width] each) and the mask [L].
fn attention_shape(node: &Node, ins: &[&Vec<usize>], width: usize) -> Result<Vec<usize>> {
    let ok = ins.len() == 4
        && ins[..3].iter().all(|s| s.len() == 2 && s[1] == width)
        && ins[0][0] == ins[1][0]
        && ins[1][0] == ins[2][0]
        && ins[3].as_slice() == [ins[1][0]];
    if !ok {
        return Err(err(
            node,
            format!("expects q, k, v [L, {width}] and mask [L], got {ins:?}"),
        ));
    }
    Ok(ins[0].clone())
}

/// Sequence length at which token graphs are checked when no length is given.
pub const NOMINAL_SEQ: usize = 7;

/// Per-sample output shape of every node, keyed by node name (plus [`INPUT`]); token graphs
/// at [`NOMINAL_SEQ`].
pub fn infer_shapes(g: &Graph) -> Result<HashMap<String, Vec<usize>>> {
    infer_shapes_at(g, NOMINAL_SEQ)
}

/// Per-sample shapes with a token graph's sequence length set to `seq`.
pub fn infer_shapes_at(g: &Graph, seq: usize) -> Result<HashMap<String, Vec<usize>>> {
    let mut shapes = HashMap::new();
    if g.is_text() {
        shapes.insert(INPUT.to_string(), vec![seq]);
        shapes.insert(MASK.to_string(), vec![seq]);
    } else {
        shapes.insert(INPUT.to_string(), g.input_shape.clone());
    }
    for node in &g.nodes {
        let ins = node
            .inputs
            .iter()
            .map(|i| {
                shapes
                    .get(i)
                    .ok_or_else(|| err(node, format!("unknown input `{i}`")))
            })
            .collect::<Result<Vec<_>>>()?;
        let s = node_shape(node, &ins)?;
        shapes.insert(node.name.clone(), s);
    }
    Ok(shapes)
}

/// The shape every parameter and buffer of the graph must have, keyed by full name.
pub fn param_shapes(g: &Graph) -> BTreeMap<String, Vec<usize>> {
    let mut out = BTreeMap::new();
    for n in &g.nodes {
        let p = |s: &str| format!("{}.{s}", n.name);
        match &n.op {
            Op::Linear {
                in_features,
                out_features,
                bias,
            } => {
                out.insert(p("weight"), vec![*out_features, *in_features]);
                if *bias {
                    out.insert(p("bias"), vec![*out_features]);
                }
            }
            Op::Conv2d {
                in_channels,
                out_channels,
                kernel,
                groups,
                bias,
                ..
            } => {
                let w = vec![*out_channels, in_channels / groups, *kernel, *kernel];
                out.insert(p("weight"), w);
                if *bias {
                    out.insert(p("bias"), vec![*out_channels]);
                }
            }
            Op::BatchNorm { channels, .. } => {
                for s in ["weight", "bias", "running_mean", "running_var"] {
                    out.insert(p(s), vec![*channels]);
                }
            }
            Op::LayerNorm { dim, .. } => {
                out.insert(p("weight"), vec![*dim]);
                out.insert(p("bias"), vec![*dim]);
            }
            Op::Embedding { num, dim, .. } => {
                out.insert(p("weight"), vec![*num, *dim]);
            }
            _ => {}
        }
    }
    out
}

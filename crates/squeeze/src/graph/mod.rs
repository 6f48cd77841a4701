//! The model view: a [`Graph`] of typed layer nodes in topological order, whose parameters
//! live by name in a [`crate::params::ParamStore`]. Nodes are at the granularity that
//! compression works on (a whole convolution, a whole BatchNorm), so passes can read and
//! rewrite them without knowing which model they came from. The JSON form of this type is
//! the `model.json` of a native checkpoint.

mod shape;

pub use shape::{infer_shapes, infer_shapes_at, param_shapes, NOMINAL_SEQ};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Version written into `model.json`; loading refuses other versions.
pub const FORMAT_VERSION: u32 = 1;

/// Name by which nodes refer to the graph's input tensor (token ids in a token graph).
pub const INPUT: &str = "input";

/// Name by which nodes of a token graph refer to the attention mask ([N, L], 1 = token,
/// 0 = padding).
pub const MASK: &str = "mask";

/// What a graph reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    /// A float tensor [N, ...input_shape] (images).
    #[default]
    Dense,
    /// Token ids [N, L] (u32) plus the attention mask [N, L]; L varies per batch.
    Tokens,
}

impl InputKind {
    fn is_dense(&self) -> bool {
        *self == InputKind::Dense
    }
}

/// Which index an [`Op::Embedding`] looks its rows up by.
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

/// One layer. `inputs` name earlier nodes (or [`INPUT`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub name: String,
    pub inputs: Vec<String>,
    pub op: Op,
}

/// The typed layer kinds. Parameters are named `<node>.<param>` in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// `y = x Wᵀ + b`; params `weight` [out, in], `bias` [out].
    Linear {
        in_features: usize,
        out_features: usize,
        bias: bool,
    },
    /// 2-D convolution; params `weight` [out, in/groups, k, k], `bias` [out].
    Conv2d {
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        groups: usize,
        bias: bool,
    },
    /// Batch normalization over axis 1 of a [N, C] or [N, C, H, W] tensor; params `weight`,
    /// `bias` and buffers `running_mean`, `running_var`, all [C].
    BatchNorm {
        channels: usize,
        eps: f64,
        momentum: f64,
    },
    Relu,
    /// Max pooling with a square window (floor mode: trailing rows/columns are dropped).
    MaxPool2d {
        kernel: usize,
        stride: usize,
    },
    /// Average pooling with a square window (floor mode, no padding).
    AvgPool2d {
        kernel: usize,
        stride: usize,
    },
    /// Mean over the spatial axes: [N, C, H, W] → [N, C].
    GlobalAvgPool,
    /// [N, C, H, W] → [N, C·H·W].
    Flatten,
    /// Element-wise sum of all inputs (residual connection).
    Add,
    /// Concatenation of all inputs along the channel axis.
    Concat,
    /// Inverted dropout with drop probability `p` (training only).
    Dropout {
        p: f64,
    },
    /// Table lookup [L] → [L, dim]; param `weight` [num, dim].
    Embedding {
        num: usize,
        dim: usize,
        lookup: Lookup,
    },
    /// Layer normalization over the last axis; params `weight`, `bias` [dim].
    LayerNorm {
        dim: usize,
        eps: f64,
    },
    /// GELU, erf form (as BERT uses).
    Gelu,
    /// Scaled dot-product attention core over `heads` heads of `head_dim`: inputs q, k, v
    /// ([L, heads·head_dim] each, from ordinary Linear nodes) and the mask;
    /// softmax(q·kᵀ/√head_dim + mask)·v.
    Attention {
        heads: usize,
        head_dim: usize,
    },
    /// Mean of the hidden states over the unmasked tokens: inputs [L, d] and the mask → [d].
    MeanPool,
    /// Division by the L2 norm of the last axis.
    L2Normalize,
}

impl Op {
    /// Names of the trainable parameters of this op (without the node prefix).
    pub fn trainable(&self) -> Vec<&'static str> {
        match self {
            Op::Linear { bias, .. } | Op::Conv2d { bias, .. } => {
                if *bias {
                    vec!["weight", "bias"]
                } else {
                    vec!["weight"]
                }
            }
            Op::BatchNorm { .. } | Op::LayerNorm { .. } => vec!["weight", "bias"],
            Op::Embedding { .. } => vec!["weight"],
            _ => vec![],
        }
    }

    /// Names of the non-trainable state tensors (BatchNorm running statistics).
    pub fn buffers(&self) -> Vec<&'static str> {
        match self {
            Op::BatchNorm { .. } => vec!["running_mean", "running_var"],
            _ => vec![],
        }
    }

    /// Short lower-case kind name used in reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Linear { .. } => "linear",
            Op::Conv2d { .. } => "conv2d",
            Op::BatchNorm { .. } => "batch_norm",
            Op::Relu => "relu",
            Op::MaxPool2d { .. } => "max_pool2d",
            Op::AvgPool2d { .. } => "avg_pool2d",
            Op::GlobalAvgPool => "global_avg_pool",
            Op::Flatten => "flatten",
            Op::Add => "add",
            Op::Concat => "concat",
            Op::Dropout { .. } => "dropout",
            Op::Embedding { .. } => "embedding",
            Op::LayerNorm { .. } => "layer_norm",
            Op::Gelu => "gelu",
            Op::Attention { .. } => "attention",
            Op::MeanPool => "mean_pool",
            Op::L2Normalize => "l2_normalize",
        }
    }
}

/// A whole model: input shape (without batch axis), nodes in topological order, and the
/// node whose value is the output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Graph {
    pub format_version: u32,
    /// Architecture label, e.g. `vgg`; informational.
    pub arch: String,
    /// Per-sample input shape, e.g. `[1, 28, 28]`; empty for a token graph.
    pub input_shape: Vec<usize>,
    /// Dense (default) or token input.
    #[serde(default, skip_serializing_if = "InputKind::is_dense")]
    pub input_kind: InputKind,
    pub nodes: Vec<Node>,
    pub output: String,
}

impl Graph {
    /// An empty graph for a given input shape.
    pub fn new(arch: &str, input_shape: &[usize]) -> Self {
        Graph {
            format_version: FORMAT_VERSION,
            arch: arch.to_string(),
            input_shape: input_shape.to_vec(),
            input_kind: InputKind::Dense,
            nodes: Vec::new(),
            output: INPUT.to_string(),
        }
    }

    /// An empty graph that reads token ids and an attention mask.
    pub fn new_tokens(arch: &str) -> Self {
        Graph {
            input_kind: InputKind::Tokens,
            ..Graph::new(arch, &[])
        }
    }

    /// Whether the graph reads token ids (a text encoder).
    pub fn is_text(&self) -> bool {
        self.input_kind == InputKind::Tokens
    }

    /// Appends a node fed by `inputs` and makes it the output; returns its name.
    pub fn push(&mut self, name: &str, op: Op, inputs: &[&str]) -> String {
        self.nodes.push(Node {
            name: name.to_string(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            op,
        });
        self.output = name.to_string();
        name.to_string()
    }

    /// Index of the node called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Names of the nodes that read `name`'s output.
    pub fn consumers(&self, name: &str) -> Vec<&Node> {
        self.nodes
            .iter()
            .filter(|n| n.inputs.iter().any(|i| i == name))
            .collect()
    }

    /// Groups of two or more Linear nodes reading the same value, e.g. an attention layer's
    /// query, key and value projections: node indices in graph order, each node in at most
    /// one group. Inference may run a group as one matrix product.
    pub fn sibling_linears(&self) -> Vec<Vec<usize>> {
        let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if !matches!(n.op, Op::Linear { .. }) || n.inputs.len() != 1 {
                continue;
            }
            match groups.iter_mut().find(|(src, _)| *src == n.inputs[0]) {
                Some((_, members)) => members.push(i),
                None => groups.push((&n.inputs[0], vec![i])),
            }
        }
        groups
            .into_iter()
            .map(|(_, m)| m)
            .filter(|m| m.len() > 1)
            .collect()
    }

    /// Structural checks: unique names, inputs defined before use, output exists, format
    /// version, and shape inference succeeds.
    pub fn validate(&self) -> Result<()> {
        if self.format_version != FORMAT_VERSION {
            return Err(Error::Graph(format!(
                "format_version {} is not supported (expected {FORMAT_VERSION})",
                self.format_version
            )));
        }
        let mut seen = std::collections::HashSet::new();
        seen.insert(INPUT.to_string());
        if self.is_text() {
            seen.insert(MASK.to_string());
        }
        for n in &self.nodes {
            for i in &n.inputs {
                if !seen.contains(i) {
                    return Err(Error::Graph(format!(
                        "node `{}` reads `{i}`, which is not defined before it",
                        n.name
                    )));
                }
            }
            check_reserved_inputs(self, n)?;
            if !seen.insert(n.name.clone()) {
                return Err(Error::Graph(format!(
                    "node name `{}` is used twice",
                    n.name
                )));
            }
        }
        if !seen.contains(&self.output) {
            return Err(Error::Graph(format!(
                "output `{}` is not a node",
                self.output
            )));
        }
        infer_shapes(self).map(|_| ())
    }

    /// Replace every reference to node `old` (as an input or the output) with `new`.
    pub fn rewire(&mut self, old: &str, new: &str) {
        for n in &mut self.nodes {
            for i in &mut n.inputs {
                if i == old {
                    *i = new.to_string();
                }
            }
        }
        if self.output == old {
            self.output = new.to_string();
        }
    }
}

/// Token ids and the mask are graph inputs with fixed roles: embeddings read the ids, the
/// attention core and mean pooling read the mask as their last input, and nothing else
/// reads either.
fn check_reserved_inputs(g: &Graph, n: &Node) -> Result<()> {
    let bad = |what: &str| {
        Err(Error::Graph(format!(
            "node `{}` ({}): {what}",
            n.name,
            n.op.kind()
        )))
    };
    let reads_mask_last = n.inputs.last().map(String::as_str) == Some(MASK);
    let mask_elsewhere = n.inputs[..n.inputs.len().saturating_sub(1)]
        .iter()
        .any(|i| i == MASK);
    match n.op {
        Op::Embedding { .. } => {
            if !g.is_text() || n.inputs != [INPUT] {
                return bad("an embedding reads exactly the token ids (`input`) of a token graph");
            }
        }
        Op::Attention { .. } | Op::MeanPool => {
            if !reads_mask_last || mask_elsewhere {
                return bad("the last input must be the attention `mask`");
            }
        }
        _ => {
            if g.is_text() && n.inputs.iter().any(|i| i == INPUT || i == MASK) {
                return bad(
                    "only embeddings read `input` and only attention/mean pooling read `mask`",
                );
            }
        }
    }
    Ok(())
}

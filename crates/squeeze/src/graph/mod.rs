//! The model view: a [`Graph`] of typed layer nodes in topological order, whose parameters
//! live by name in a [`crate::params::ParamStore`]. Nodes are at the granularity that
//! compression works on (a whole convolution, a whole BatchNorm), so passes can read and
//! rewrite them without knowing which model they came from. The JSON form of this type is
//! the `model.json` of a native checkpoint.

mod shape;

pub use shape::{infer_shapes, param_shapes};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Version written into `model.json`; loading refuses other versions.
pub const FORMAT_VERSION: u32 = 1;

/// Name by which nodes refer to the graph's input tensor.
pub const INPUT: &str = "input";

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
            Op::BatchNorm { .. } => vec!["weight", "bias"],
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
    /// Per-sample input shape, e.g. `[1, 28, 28]`.
    pub input_shape: Vec<usize>,
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
            nodes: Vec::new(),
            output: INPUT.to_string(),
        }
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
        for n in &self.nodes {
            for i in &n.inputs {
                if !seen.contains(i) {
                    return Err(Error::Graph(format!(
                        "node `{}` reads `{i}`, which is not defined before it",
                        n.name
                    )));
                }
            }
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

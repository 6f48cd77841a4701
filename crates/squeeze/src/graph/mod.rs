//! The model view: a [`Graph`] of typed layer nodes in topological order, whose parameters
//! live by name in a [`crate::params::ParamStore`]. Nodes are at the granularity that
//! compression works on (a whole convolution, a whole BatchNorm), so passes can read and
//! rewrite them without knowing which model they came from. The JSON form of this type is
//! the `model.json` of a native checkpoint.

mod shape;
mod slot;
mod store;

pub use crate::kinds::embedding::Lookup;
pub use crate::kinds::{Node, Op};
pub use shape::{
    infer_shapes, infer_shapes_at, input_shapes, inputs_of, param_shapes, tensor_specs, NOMINAL_SEQ,
};
pub use slot::CacheSlot;
pub use store::{buffer_names, decay_names, trainable_names};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kinds::Inputs;
use crate::tensor::TensorInfo;

/// Version written into `model.json`. Version 2 adds the per-tensor table (dtype, role,
/// shape) and pruning masks; version-1 files (no table, no masks) still load.
pub const FORMAT_VERSION: u32 = 2;

/// The oldest `model.json` version that loads.
pub const OLDEST_FORMAT: u32 = 1;

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
    /// Parameters (full names) that carry a pruning mask `<name>.mask` (u8, 1 = kept):
    /// a simulated, not yet materialized, sparse model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masks: Vec<String>,
    /// Tensors stored with a codec (shared weights: codebook + Huffman-coded indices), by
    /// full name; in memory they are plain f32, the file holds the encoded bytes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub codecs: BTreeMap<String, crate::math::codec::Codec>,
    /// On disk only: every tensor's dtype, role and shape as the file holds it, written on
    /// save and checked on load (empty in memory).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tensors: BTreeMap<String, TensorInfo>,
    /// What the interpreter compiled for this graph (its run plans), checked against
    /// [`Graph::fingerprint`] on use; never saved, empty in a clone.
    #[serde(skip)]
    pub cache: CacheSlot,
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
            masks: Vec::new(),
            codecs: BTreeMap::new(),
            tensors: BTreeMap::new(),
            cache: CacheSlot::default(),
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

    /// A hash of what a run plan depends on: every node's name, inputs and kind, the
    /// output and the input kind (not attribute values, which the plan does not read).
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{BuildHasher, Hash, Hasher};
        // fixed seed: the same graph has the same fingerprint in every process
        let mut h = foldhash::fast::FixedState::with_seed(0x5145_455a_4531).build_hasher();
        (self.is_text(), &self.output, self.nodes.len()).hash(&mut h);
        for n in &self.nodes {
            (&n.name, &n.inputs, n.op.kind()).hash(&mut h);
        }
        h.finish()
    }

    /// Groups of two or more nodes of one kind that joins siblings (Linear, qlinear)
    /// reading the same value, e.g. an attention layer's query, key and value projections:
    /// node indices in graph order, each node in at most one group. Inference may run a
    /// group as one product.
    pub fn sibling_groups(&self) -> Vec<Vec<usize>> {
        let mut groups: Vec<(&str, &str, Vec<usize>)> = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.op.def().joins_siblings() || n.inputs.len() != 1 {
                continue;
            }
            let kind = n.op.kind();
            match groups
                .iter_mut()
                .find(|(src, k, _)| *src == n.inputs[0] && *k == kind)
            {
                Some((_, _, members)) => members.push(i),
                None => groups.push((&n.inputs[0], kind, vec![i])),
            }
        }
        groups
            .into_iter()
            .map(|(_, _, m)| m)
            .filter(|m| m.len() > 1)
            .collect()
    }

    /// Structural checks: unique names, inputs defined before use, output exists, format
    /// version, and shape inference succeeds.
    pub fn validate(&self) -> Result<()> {
        if !(OLDEST_FORMAT..=FORMAT_VERSION).contains(&self.format_version) {
            return Err(Error::Graph(format!(
                "format_version {} is not supported (expected {OLDEST_FORMAT} to {FORMAT_VERSION})",
                self.format_version
            )));
        }
        if !self.is_text() && (self.input_shape.is_empty() || self.input_shape.contains(&0)) {
            return Err(Error::Graph(format!(
                "input_shape {:?}: a dense model needs a non-empty input shape without zeros",
                self.input_shape
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
        self.check_output_is_last()?;
        infer_shapes(self)?;
        self.check_masks()?;
        self.check_codecs()
    }

    /// The output is where the graph ends: no node reads it. A graph whose `output` names
    /// an inner node (its last layers computed and dropped) is refused, naming a reader.
    /// Side branches that end elsewhere (FitNets regressors read by the loss) are fine.
    fn check_output_is_last(&self) -> Result<()> {
        match self.nodes.iter().find(|n| n.inputs.contains(&self.output)) {
            Some(reader) => Err(Error::Graph(format!(
                "output is `{}`, but node `{}` reads it: the output must be the node the \
                 graph ends in, not an inner one",
                self.output, reader.name
            ))),
            None => Ok(()),
        }
    }

    /// Every codec names an f32 parameter of the graph and has valid options.
    fn check_codecs(&self) -> Result<()> {
        let specs = tensor_specs(self);
        for (name, c) in &self.codecs {
            let ok = specs.get(name).is_some_and(|s| {
                s.role == crate::tensor::TensorRole::Param && s.dtype == crate::tensor::Dtype::F32
            });
            if !ok {
                return Err(Error::Graph(format!(
                    "codec on `{name}`: codecs apply to f32 parameters of the graph"
                )));
            }
            c.validate()
                .map_err(|m| Error::Graph(format!("codec on `{name}`: {m}")))?;
        }
        Ok(())
    }

    /// Every mask names a distinct tensor of the graph that is not itself a mask.
    fn check_masks(&self) -> Result<()> {
        let specs = tensor_specs(self);
        let mut seen = std::collections::HashSet::new();
        for m in &self.masks {
            let ok = specs
                .get(m)
                .is_some_and(|s| s.role == crate::tensor::TensorRole::Param);
            if !ok || !seen.insert(m) {
                return Err(Error::Graph(format!(
                    "mask on `{m}`: masks must name distinct trainable tensors of the graph"
                )));
            }
        }
        Ok(())
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
    match n.op.def().inputs() {
        Inputs::TokenIds => {
            if !g.is_text() || n.inputs != [INPUT] {
                return bad("an embedding reads exactly the token ids (`input`) of a token graph");
            }
        }
        Inputs::MaskLast => {
            if !g.is_text() || !reads_mask_last || mask_elsewhere {
                return bad("the last input must be the attention `mask` of a token graph");
            }
        }
        Inputs::Values => {
            if g.is_text() && n.inputs.iter().any(|i| i == INPUT || i == MASK) {
                return bad(
                    "only embeddings read `input` and only attention/mean pooling read `mask`",
                );
            }
        }
    }
    Ok(())
}

/// An error from a kind's own checks (`msg`), attributed to `node`.
pub fn node_err(node: &Node, msg: impl std::fmt::Display) -> Error {
    Error::at_node(&node.name, node.op.kind(), Error::Kind(msg.to_string()))
}

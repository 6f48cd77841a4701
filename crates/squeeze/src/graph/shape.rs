//! Shape inference over a [`Graph`]: per-sample output shape of every node (each kind's
//! [`crate::kinds::LayerKind::out_shape`]), and the spec every tensor must meet. Used by
//! the consistency check after each pass, by checkpoint loading (every tensor's shape and
//! dtype is asserted) and by the cost model. Token graphs have a variable sequence length
//! L; their shapes are inferred at a given L.

use std::collections::{BTreeMap, HashMap};

use super::node_err;
use super::{Graph, Node, INPUT, MASK};
use crate::error::Result;
use crate::tensor::TensorSpec;

/// Elements per sample above which a value is refused (a corrupt description, not a model).
const MAX_ELEMS: usize = 1 << 36;

/// Elements of a shape, `None` on overflow.
fn elems(s: &[usize]) -> Option<usize> {
    s.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// Sequence length at which token graphs are checked when no length is given.
pub const NOMINAL_SEQ: usize = 7;

/// Per-sample output shape of every node, keyed by node name (plus [`INPUT`]); token graphs
/// at [`NOMINAL_SEQ`].
pub fn infer_shapes(g: &Graph) -> Result<HashMap<String, Vec<usize>>> {
    infer_shapes_at(g, NOMINAL_SEQ)
}

/// The per-sample shapes of the graph's inputs (`input`, and `mask` for a token graph at
/// sequence length `seq`).
pub fn input_shapes(g: &Graph, seq: usize) -> HashMap<String, Vec<usize>> {
    let mut shapes = HashMap::new();
    if g.is_text() {
        shapes.insert(INPUT.to_string(), vec![seq]);
        shapes.insert(MASK.to_string(), vec![seq]);
    } else {
        shapes.insert(INPUT.to_string(), g.input_shape.clone());
    }
    shapes
}

/// Per-sample shapes with a token graph's sequence length set to `seq`.
pub fn infer_shapes_at(g: &Graph, seq: usize) -> Result<HashMap<String, Vec<usize>>> {
    if !g.is_text() && elems(&g.input_shape).is_none_or(|n| n > MAX_ELEMS) {
        return Err(crate::error::Error::Graph(format!(
            "input_shape {:?} is too large",
            g.input_shape
        )));
    }
    let mut shapes = input_shapes(g, seq);
    for node in &g.nodes {
        let ins = inputs_of(node, &shapes)?;
        let s = node
            .op
            .def()
            .out_shape(&ins)
            .map_err(|m| node_err(node, m))?;
        if s.contains(&0) {
            return Err(node_err(node, format!("output shape {s:?} is empty")));
        }
        if elems(&s).is_none_or(|n| n > MAX_ELEMS) {
            return Err(node_err(node, format!("output shape {s:?} is too large")));
        }
        shapes.insert(node.name.clone(), s);
    }
    Ok(shapes)
}

/// The shapes of `node`'s inputs, looked up in `shapes`.
pub fn inputs_of<'s>(
    node: &Node,
    shapes: &'s HashMap<String, Vec<usize>>,
) -> Result<Vec<&'s [usize]>> {
    node.inputs
        .iter()
        .map(|i| {
            shapes
                .get(i)
                .map(Vec::as_slice)
                .ok_or_else(|| node_err(node, format!("unknown input `{i}`")))
        })
        .collect()
}

/// The spec of every tensor of the graph (node tensors and pruning masks), by full name.
pub fn tensor_specs(g: &Graph) -> BTreeMap<String, TensorSpec> {
    let mut out = BTreeMap::new();
    for n in &g.nodes {
        for s in n.op.def().tensors() {
            out.insert(format!("{}.{}", n.name, s.suffix), s);
        }
    }
    let masks: Vec<(String, TensorSpec)> = g
        .masks
        .iter()
        .filter_map(|m| {
            let p = out.get(m)?;
            let spec = TensorSpec::mask_of(&p.suffix, p.logical.clone());
            Some((format!("{m}.mask"), spec))
        })
        .collect();
    out.extend(masks);
    out
}

/// The stored shape every tensor of the graph must have, keyed by full name.
pub fn param_shapes(g: &Graph) -> BTreeMap<String, Vec<usize>> {
    tensor_specs(g)
        .into_iter()
        .map(|(k, s)| (k, s.stored))
        .collect()
}

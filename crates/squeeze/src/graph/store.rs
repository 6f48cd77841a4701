//! What a graph asks of its parameter store: the names of its trainable parameters,
//! buffers and decayed weights (from each kind's tensor specs), and the exact check that a
//! [`ParamStore`] holds the tensors the graph needs (no missing, no dangling, right stored
//! shapes and dtypes, finite values).

use super::{tensor_specs, Graph};
use crate::error::{Error, Result};
use crate::params::ParamStore;
use crate::tensor::{Dtype, TensorRole, TensorSpec};

impl Graph {
    /// Checks that store `p` holds exactly the tensors this graph needs, each with its spec's
    /// stored shape and dtype, and floats only finite values.
    pub fn check_params(&self, p: &ParamStore) -> Result<()> {
        let expected = tensor_specs(self);
        for (name, spec) in &expected {
            let t = p.get(name)?;
            if t.dims() != spec.stored.as_slice() {
                return Err(Error::Shape {
                    name: name.clone(),
                    expected: spec.stored.clone(),
                    found: t.dims().to_vec(),
                });
            }
            if Dtype::of(t.dtype()) != Some(spec.dtype) {
                return Err(Error::Graph(format!(
                    "tensor `{name}` is {:?}, expected {:?}",
                    t.dtype(),
                    spec.dtype
                )));
            }
        }
        if let Some(extra) = p.map().keys().find(|k| !expected.contains_key(*k)) {
            return Err(Error::Graph(format!(
                "tensor `{extra}` belongs to no node (dangling)"
            )));
        }
        p.check_finite()?;
        for n in &self.nodes {
            n.op.def()
                .check_values(&n.name, p)
                .map_err(|m| Error::Graph(format!("node `{}`: {m}", n.name)))?;
        }
        Ok(())
    }
}

/// Full names of the tensors of `g` whose role satisfies `pick`, in node order.
fn names_where(g: &Graph, pick: impl Fn(&TensorSpec) -> bool) -> Vec<String> {
    g.nodes
        .iter()
        .flat_map(|n| {
            n.op.def()
                .tensors()
                .into_iter()
                .filter(|s| pick(s))
                .map(move |s| format!("{}.{}", n.name, s.suffix))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Full names of the trainable parameters of `g`, in node order.
pub fn trainable_names(g: &Graph) -> Vec<String> {
    names_where(g, |s| s.role.trainable())
}

/// Full names of the buffers (running statistics) of `g`.
pub fn buffer_names(g: &Graph) -> Vec<String> {
    names_where(g, |s| s.role == TensorRole::Buffer)
}

/// Full names of the weights that take weight decay (conv/linear weights).
pub fn decay_names(g: &Graph) -> Vec<String> {
    names_where(g, |s| s.decay)
}

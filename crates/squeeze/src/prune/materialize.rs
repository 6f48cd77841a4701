//! Materialization of a simulated sparse model: masks are folded into the weights and
//! disappear, and a masked Linear whose sparsity is at least `min_sparsity` becomes a
//! `sparse_linear` node (CSR), which is smaller on disk and faster at batch 1 beyond the
//! crossover that `squeeze bench sparse` measures. Weights stored with a codec (shared
//! weights) stay dense in memory: their codec already stores only the non-zeros.

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::graph::Op;
use crate::kinds::linear::Linear;
use crate::kinds::sparse_linear::SparseLinear;
use crate::model::Model;
use crate::ops::sparse::CsrOwned;

/// What happened to one masked weight.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Folded {
    pub weight: String,
    pub sparsity: f64,
    /// Became a `sparse_linear` node.
    pub csr: bool,
}

/// Folds every mask of `model` into its weight; Linear weights at least `min_sparsity`
/// sparse (and without a codec) become CSR.
pub fn materialize(model: &mut Model, min_sparsity: f64) -> Result<Vec<Folded>> {
    let mut out = Vec::new();
    for name in std::mem::take(&mut model.graph.masks) {
        let mask = model
            .params
            .remove(&format!("{name}.mask"))
            .ok_or_else(|| Error::MissingParam(format!("{name}.mask")))?;
        let w = model.params.get(&name)?;
        let kept = mask.to_dtype(w.dtype())?;
        let w = (w * kept)?;
        let values = crate::params::f32_values(&w)?;
        let sparsity =
            values.iter().filter(|v| **v == 0.0).count() as f64 / values.len().max(1) as f64;
        model.params.insert(name.clone(), w);
        let node = name.strip_suffix(".weight").unwrap_or(&name).to_string();
        let csr = sparsity >= min_sparsity
            && !model.graph.codecs.contains_key(&name)
            && to_csr(model, &node, &values)?;
        out.push(Folded {
            weight: name,
            sparsity,
            csr,
        });
    }
    Ok(out)
}

/// Replaces Linear node `node` by its CSR form; false if it is not a Linear.
fn to_csr(model: &mut Model, node: &str, w: &[f32]) -> Result<bool> {
    let Some(idx) = model.graph.index_of(node) else {
        return Ok(false);
    };
    let Op::Linear(Linear {
        in_features,
        out_features,
        bias,
        quant: None,
    }) = model.graph.nodes[idx].op
    else {
        return Ok(false);
    };
    let CsrOwned {
        indptr,
        indices,
        values,
        ..
    } = CsrOwned::from_dense(w, out_features, in_features);
    let nnz = values.len();
    let dev = Device::Cpu;
    model.params.remove(&format!("{node}.weight"));
    model.params.insert(
        format!("{node}.values"),
        Tensor::from_vec(values, nnz, &dev)?,
    );
    model.params.insert(
        format!("{node}.indices"),
        Tensor::from_vec(indices, nnz, &dev)?,
    );
    model.params.insert(
        format!("{node}.indptr"),
        Tensor::from_vec(indptr, out_features + 1, &dev)?,
    );
    model.graph.nodes[idx].op = Op::SparseLinear(SparseLinear {
        in_features,
        out_features,
        nnz,
        bias,
    });
    Ok(true)
}

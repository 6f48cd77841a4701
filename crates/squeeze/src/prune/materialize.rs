//! Materialization of a simulated sparse model: masks are folded into the weights and
//! disappear, and a masked Linear becomes a `sparse_linear` node (CSR) where that is
//! faster — either by a fixed rule (sparsity at least `min_sparsity`) or measured on this
//! CPU ([`super::csr_choice`]); otherwise it stays dense with its zeros. Weights stored
//! with a codec (shared weights) stay dense in memory: their codec already stores only
//! the non-zeros.

use candle_core::{Device, Tensor};

use super::csr_choice::{Choice, CsrCache};
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
    /// The measurement behind the decision ([`CsrRule::Measured`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measured: Option<Choice>,
}

/// Which sparse Linear layers become CSR.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CsrRule {
    /// Those at least this sparse.
    AtLeast(f64),
    /// Those that time faster as CSR on this CPU at batch 1 and 256.
    Measured,
}

/// Folds every mask of `model` into its weight; Linear weights at least `min_sparsity`
/// sparse (and without a codec) become CSR.
pub fn materialize(model: &mut Model, min_sparsity: f64) -> Result<Vec<Folded>> {
    materialize_by(model, CsrRule::AtLeast(min_sparsity))
}

/// Folds every mask of `model` into its weight; Linear weights (without a codec) become
/// CSR where `rule` says.
pub fn materialize_by(model: &mut Model, rule: CsrRule) -> Result<Vec<Folded>> {
    let mut cache = match rule {
        CsrRule::Measured => CsrCache::load(),
        CsrRule::AtLeast(_) => CsrCache::default(),
    };
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
        // a codec already stores only the non-zeros; only plain Linear layers have a CSR form
        let shape = linear_shape(model, &node).filter(|_| !model.graph.codecs.contains_key(&name));
        let (wanted, measured) = match (rule, shape) {
            (_, None) => (false, None),
            (CsrRule::AtLeast(min), Some(_)) => (sparsity >= min, None),
            (CsrRule::Measured, Some((rows, cols))) => {
                let c = cache.choose(&values, rows, cols, sparsity)?;
                (c.csr, Some(c))
            }
        };
        let csr = wanted && to_csr(model, &node, &values)?;
        out.push(Folded {
            weight: name,
            sparsity,
            csr,
            measured,
        });
    }
    cache.save();
    Ok(out)
}

/// (out, in) of node `node` if it is a plain (not fake-quantized) Linear.
fn linear_shape(model: &Model, node: &str) -> Option<(usize, usize)> {
    let idx = model.graph.index_of(node)?;
    match &model.graph.nodes[idx].op {
        Op::Linear(Linear {
            in_features,
            out_features,
            quant: None,
            ..
        }) => Some((*out_features, *in_features)),
        _ => None,
    }
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

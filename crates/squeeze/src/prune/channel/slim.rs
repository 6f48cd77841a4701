//! Network Slimming's sparsity training (Liu et al. 2017): the loss gains λ·Σ|γ| over the
//! scale γ of every BatchNorm, so training drives the scales of unneeded channels toward
//! zero (the sub-gradient λ·sign(γ) reaches BatchNorm scales and nothing else); a global
//! threshold on |γ| ([`super::Criterion::BnGamma`] with global allocation) then picks the
//! channels to cut.

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::graph::Op;
use crate::model::Model;
use crate::params::ParamStore;
use crate::train::Hooks;

/// The trainer hook adding λ·Σ|γ|.
pub struct Slimming {
    pub lambda: f64,
    scales: Vec<String>,
}

impl Slimming {
    /// The hook for every BatchNorm scale of `model`; an error if it has none.
    pub fn new(model: &Model, lambda: f64) -> Result<Self> {
        let scales = bn_scales(model);
        if scales.is_empty() {
            return Err(Error::Graph(
                "Network Slimming trains BatchNorm scales, and the model has no BatchNorm".into(),
            ));
        }
        Ok(Slimming { lambda, scales })
    }
}

/// The names of every BatchNorm scale γ of `model`, in graph order.
pub fn bn_scales(model: &Model) -> Vec<String> {
    model
        .graph
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::BatchNorm(_)))
        .map(|n| format!("{}.weight", n.name))
        .collect()
}

impl Hooks for Slimming {
    fn regularizer(&self, params: &ParamStore) -> Result<Option<Tensor>> {
        let terms = self
            .scales
            .iter()
            .map(|name| Ok(params.get(name)?.abs()?.sum_all()?));
        crate::train::weighted_sum(terms, self.lambda)
    }
}

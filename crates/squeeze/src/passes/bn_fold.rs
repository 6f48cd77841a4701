//! BatchNorm folding (Jacob et al. 2018, §3.2): at inference a BatchNorm after a conv or
//! linear layer is an affine map per channel, so it merges into that layer's weights and
//! bias — `W' = W·γ/σ`, `b' = (b − μ)·γ/σ + β` with `σ = √(var + ε)` — removing a node,
//! its parameters and a pass over the activations. BatchNorms that do not directly follow
//! a conv/linear whose output only they read (DenseNet's pre-activation ones) are kept.

use candle_core::Tensor;

use serde::{Deserialize, Serialize};

use super::{Declared, Pass, PassCtx, PassRecord};
use crate::error::Result;
use crate::graph::{Graph, Op};
use crate::kinds::{batch_norm::BatchNorm, conv2d::Conv2d, linear::Linear};
use crate::model::Model;

/// The pass (no options).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FoldBatchNorm {}

impl Declared for FoldBatchNorm {
    const HELP: &'static str =
        "fold each BatchNorm into the convolution or linear layer that feeds it";
    const EXAMPLE: &'static str = "";
    fn build(&self) -> Result<Box<dyn Pass>> {
        Ok(Box::new(self.clone()))
    }
}

/// (bn index, producer index) pairs that can be folded.
fn foldable(g: &Graph) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        if !matches!(n.op, Op::BatchNorm(_)) || n.inputs.len() != 1 {
            continue;
        }
        let Some(j) = g.index_of(&n.inputs[0]) else {
            continue;
        };
        let prod = &g.nodes[j];
        let ok = matches!(prod.op, Op::Conv2d(_) | Op::Linear(_));
        if ok && g.consumers(&prod.name).len() == 1 && g.output != prod.name {
            out.push((i, j));
        }
    }
    out
}

fn fold_one(model: &mut Model, bn_i: usize, prod_i: usize) -> Result<()> {
    let bn = model.graph.nodes[bn_i].clone();
    let prod = model.graph.nodes[prod_i].name.clone();
    let Op::BatchNorm(BatchNorm { eps, channels, .. }) = bn.op else {
        unreachable!("checked by foldable")
    };
    let p = |s: &str| model.params.get(&format!("{}.{s}", bn.name)).cloned();
    let (gamma, beta, mean, var) = (
        p("weight")?,
        p("bias")?,
        p("running_mean")?,
        p("running_var")?,
    );
    let scale = (gamma / (var + eps)?.sqrt()?)?; // [C]
    let w = model.params.get(&format!("{prod}.weight"))?;
    let mut bshape = vec![1; w.rank()];
    bshape[0] = channels;
    let w2 = w.broadcast_mul(&scale.reshape(bshape)?)?;
    let bias_name = format!("{prod}.bias");
    let b = match model.params.get(&bias_name) {
        Ok(b) => b.clone(),
        Err(_) => Tensor::zeros(channels, w.dtype(), w.device())?,
    };
    let b2 = ((b - mean)? * &scale)?.add(&beta)?;
    model.params.insert(format!("{prod}.weight"), w2);
    // a fake-quantized weight's steps scale with it: the codes stay the same
    let step = format!("{prod}.weight_step");
    if let Ok(s) = model.params.get(&step) {
        let s2 = (s * &scale)?;
        model.params.insert(step, s2);
    }
    model.params.insert(bias_name, b2);
    for s in ["weight", "bias", "running_mean", "running_var"] {
        model.params.remove(&format!("{}.{s}", bn.name));
    }
    match &mut model.graph.nodes[prod_i].op {
        Op::Conv2d(Conv2d { bias, .. }) | Op::Linear(Linear { bias, .. }) => *bias = true,
        _ => unreachable!("checked by foldable"),
    }
    model.graph.nodes.remove(bn_i);
    model.graph.rewire(&bn.name, &prod);
    Ok(())
}

/// Folds every foldable BatchNorm; returns "bn → producer" for each.
pub(crate) fn fold_all(model: &mut Model) -> Result<Vec<String>> {
    let mut folded = Vec::new();
    // fold one at a time: indices shift after each removal
    while let Some(&(bn, prod)) = foldable(&model.graph).first() {
        folded.push(format!(
            "{} → {}",
            model.graph.nodes[bn].name, model.graph.nodes[prod].name
        ));
        fold_one(model, bn, prod)?;
    }
    Ok(folded)
}

impl Pass for FoldBatchNorm {
    fn name(&self) -> &'static str {
        "fold_batch_norm"
    }

    fn apply(&self, mut model: Model, _ctx: &mut PassCtx) -> Result<(Model, PassRecord)> {
        let total = model
            .graph
            .nodes
            .iter()
            .filter(|n| matches!(n.op, Op::BatchNorm(_)))
            .count();
        let folded = fold_all(&mut model)?;
        let label = format!("folded {} of {total} BatchNorm layers", folded.len());
        let details = serde_json::json!({ "folded": folded, "kept": total - folded.len() });
        super::done(model, self.name(), label, details)
    }
}

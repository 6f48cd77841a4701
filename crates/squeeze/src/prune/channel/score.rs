//! Importance of every channel of a coupled group — one function shape for every
//! criterion (Torch-Pruning's `importance(group)`): the L1 or L2 norm of the group's
//! weights (Li et al. 2017), the BatchNorm scale |γ| that Network Slimming trains sparse
//! (Liu et al. 2017), the activation norm of the channel times its consumers' weight norm
//! (a structured Wanda), and the Taylor criterion of [`super::taylor`] (Molchanov et al.
//! 2019; Michel et al. 2019 for heads and FFN units).

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::coupling::{channel_sums, ChannelGroup, Member, MemberRole};
use crate::error::{Error, Result};
use crate::graph::{decay_names, Op};
use crate::interp::ForwardOpts;
use crate::model::Model;
use crate::train::{forward_batch, Batch};

/// How a channel's importance is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Criterion {
    /// Σ|w| over the group's weights (producer rows, consumer columns).
    L1,
    /// √Σw² over the group's weights.
    L2,
    /// Σ over calibration batches of (Σ w·∂L/∂w over the group)².
    Taylor,
    /// Σ|γ| of the BatchNorm scales of the group.
    BnGamma,
    /// ‖x_c‖₂ over calibration examples times ‖W[:, c]‖₂ of every consumer.
    Activation,
}

impl Criterion {
    /// Whether scores of different groups measure the same thing (an estimated loss
    /// change, a BatchNorm scale) and so can be ranked globally as they are; other scores
    /// are divided by their group's mean first.
    pub fn comparable(self) -> bool {
        matches!(self, Criterion::Taylor | Criterion::BnGamma)
    }

    /// Whether the criterion reads calibration batches.
    pub fn needs_data(self) -> bool {
        matches!(self, Criterion::Taylor | Criterion::Activation)
    }
}

/// One score per channel for each group of `groups`; `batches` (calibration) and `seed`
/// serve the data-driven criteria.
pub fn scores(
    model: &Model,
    groups: &[ChannelGroup],
    criterion: Criterion,
    batches: &[Batch],
    seed: u64,
) -> Result<Vec<Vec<f64>>> {
    if criterion.needs_data() && batches.is_empty() {
        return Err(Error::Data(format!(
            "criterion {criterion:?} needs calibration batches"
        )));
    }
    match criterion {
        Criterion::L1 => groups.iter().map(|g| norm(model, g, 1)).collect(),
        Criterion::L2 => groups.iter().map(|g| norm(model, g, 2)).collect(),
        Criterion::BnGamma => groups.iter().map(|g| bn_gamma(model, g)).collect(),
        Criterion::Activation => activation(model, groups, batches),
        Criterion::Taylor => super::taylor::scores(model, groups, batches, seed),
    }
}

/// The members of `g` holding weights (conv/linear kernels, not biases or buffers).
fn weight_members<'a>(model: &Model, g: &'a ChannelGroup) -> Vec<&'a Member> {
    let decayed = decay_names(&model.graph);
    g.members
        .iter()
        .filter(|m| m.role != MemberRole::Gather && decayed.contains(&m.param))
        .collect()
}

fn norm(model: &Model, g: &ChannelGroup, p: u8) -> Result<Vec<f64>> {
    let mut s = vec![0.0; g.channels];
    for m in weight_members(model, g) {
        let t = model.params.get(&m.param)?;
        let v = if p == 1 { t.abs()? } else { t.sqr()? };
        for (a, b) in s.iter_mut().zip(channel_sums(m, &v, g.channels)?) {
            *a += b;
        }
    }
    if p == 2 {
        s.iter_mut().for_each(|v| *v = v.sqrt());
    }
    Ok(s)
}

fn bn_gamma(model: &Model, g: &ChannelGroup) -> Result<Vec<f64>> {
    let mut s = vec![0.0; g.channels];
    let mut found = false;
    for m in &g.members {
        let is_bn = matches!(
            model.graph.node(&m.node).map(|n| &n.op),
            Some(Op::BatchNorm(_))
        );
        if !(is_bn && m.param.ends_with(".weight")) {
            continue;
        }
        found = true;
        let t = model.params.get(&m.param)?.abs()?;
        for (a, b) in s.iter_mut().zip(channel_sums(m, &t, g.channels)?) {
            *a += b;
        }
    }
    if !found {
        return Err(Error::Graph(format!(
            "criterion bn_gamma needs a BatchNorm on the channels of {:?}, which have none",
            g.sources
        )));
    }
    Ok(s)
}

/// The channel axis of an activation: 1 for image maps `[N, C, H, W]`, the last otherwise.
fn feature_axis(t: &Tensor) -> usize {
    if t.rank() == 4 {
        1
    } else {
        t.rank() - 1
    }
}

/// Squared activations summed over everything but the feature axis; padding tokens
/// (mask 0) excluded.
fn squared_features(x: &Tensor, batch: &Batch) -> Result<Tensor> {
    let mut sq = x.to_dtype(DType::F32)?.sqr()?;
    if let (Batch::Tokens { mask, .. }, 3) = (batch, sq.rank()) {
        let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        sq = sq.broadcast_mul(&m)?;
    }
    let ax = feature_axis(&sq);
    let moved = if ax == 0 {
        sq
    } else {
        sq.transpose(0, ax)?.contiguous()?
    };
    Ok(moved.flatten_from(1)?.sum(1)?)
}

fn activation(model: &Model, groups: &[ChannelGroup], batches: &[Batch]) -> Result<Vec<Vec<f64>>> {
    let consumers: Vec<Vec<&Member>> = groups
        .iter()
        .map(|g| {
            weight_members(model, g)
                .into_iter()
                .filter(|m| m.role == MemberRole::Consumer)
                .collect()
        })
        .collect();
    let nodes: std::collections::BTreeSet<String> =
        consumers.iter().flatten().map(|m| m.node.clone()).collect();
    let opts = ForwardOpts {
        taps: nodes.iter().cloned().collect(),
        ..ForwardOpts::eval()
    };
    let mut energy: std::collections::HashMap<String, Tensor> = Default::default();
    for b in batches {
        let out = forward_batch(&model.graph, &model.params, b, &opts)?;
        for n in &nodes {
            let x = &out.taps[n].inputs[0];
            let e = squared_features(x, b)?;
            let acc = match energy.remove(n) {
                Some(a) => (a + e)?,
                None => e,
            };
            energy.insert(n.clone(), acc);
        }
    }
    let mut out = Vec::new();
    for (g, ms) in groups.iter().zip(&consumers) {
        if ms.is_empty() {
            return Err(Error::Graph(format!(
                "criterion activation needs a layer reading the channels of {:?}",
                g.sources
            )));
        }
        let mut s = vec![0.0; g.channels];
        for m in ms {
            // ‖x_c‖₂·‖W[:, c]‖₂, index by index along the consumer's input axis
            let w = model.params.get(&m.param)?.to_dtype(DType::F32)?.sqr()?;
            let w = w
                .transpose(0, 1)?
                .contiguous()?
                .flatten_from(1)?
                .sum(1)?
                .sqrt()?;
            let x = energy[&m.node].sqrt()?;
            let unit = Member {
                axis: 0,
                ..(*m).clone()
            };
            let prod = (w * x)?;
            for (a, b) in s.iter_mut().zip(channel_sums(&unit, &prod, g.channels)?) {
                *a += b;
            }
        }
        out.push(s);
    }
    Ok(out)
}

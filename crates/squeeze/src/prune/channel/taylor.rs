//! The Taylor criterion: the first-order estimate of the loss change when a channel is
//! removed, Σ w·∂L/∂w over every trainable tensor slice of the channel's group
//! (Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning"); removing
//! the channel moves those weights by −w, so the loss moves by about −Σ w·g. The same sum
//! over an attention head's output-projection columns (or an FFN unit's down-projection
//! column) is the gradient of a mask on that head or unit (Michel et al. 2019, "Are Sixteen
//! Heads Really Better than One?"). Scores accumulate (Σ w·g)² over calibration batches.
//!
//! The loss of a classifier is cross-entropy on the calibration labels. A sentence
//! encoder pruned toward its own embeddings sits at that loss's minimum, where every
//! first-order term vanishes; its loss is therefore a random projection Σₙ rₙ·eₙ of the
//! embeddings (rₙ standard normal, drawn per batch from the seed), whose squared gradient
//! is in expectation the Gauss–Newton (Fisher) term Σₙ ‖∂eₙ/∂ξ‖² — the second-order
//! change of the embedding-preserving loss when the mask ξ of a head or unit goes to 0.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use rand::SeedableRng;

use crate::coupling::{channel_sums, ChannelGroup};
use crate::error::Result;
use crate::graph::trainable_names;
use crate::interp::ForwardOpts;
use crate::model::Model;
use crate::params::ParamStore;
use crate::train::{forward_batch, Batch, CrossEntropy, Objective};

/// Σ over calibration batches of (Σ w·g)² per channel, for every group.
pub fn scores(
    model: &Model,
    groups: &[ChannelGroup],
    batches: &[Batch],
    seed: u64,
) -> Result<Vec<Vec<f64>>> {
    let mut acc: Vec<Vec<f64>> = groups.iter().map(|g| vec![0.0; g.channels]).collect();
    // one set of variables serves every batch: a backward pass leaves them unchanged
    let vars = Variables::of(model)?;
    for (i, b) in batches.iter().enumerate() {
        let c = vars.first_order(model, groups, b, seed.wrapping_add(i as u64))?;
        for (a, c) in acc.iter_mut().zip(c) {
            for (x, y) in a.iter_mut().zip(c) {
                *x += y * y;
            }
        }
    }
    Ok(acc)
}

/// Σ w·∂L/∂w per channel of every group on one batch (signed): the first-order estimate
/// of how much the calibration loss drops when the channel is removed.
pub fn first_order(
    model: &Model,
    groups: &[ChannelGroup],
    batch: &Batch,
    seed: u64,
) -> Result<Vec<Vec<f64>>> {
    Variables::of(model)?.first_order(model, groups, batch, seed)
}

/// The model's parameters with its trainable tensors as variables.
struct Variables {
    params: ParamStore,
    vars: Vec<(String, candle_core::Var)>,
}

impl Variables {
    fn of(model: &Model) -> Result<Self> {
        let names = trainable_names(&model.graph);
        let (params, vars) = model.params.with_vars(&names)?;
        Ok(Variables { params, vars })
    }

    fn first_order(
        &self,
        model: &Model,
        groups: &[ChannelGroup],
        batch: &Batch,
        seed: u64,
    ) -> Result<Vec<Vec<f64>>> {
        let loss = calibration_loss(model, &self.params, batch, seed)?;
        let grads = loss.backward()?;
        let by_name: HashMap<&str, &Tensor> = self
            .vars
            .iter()
            .filter_map(|(n, v)| Some((n.as_str(), grads.get(v.as_tensor())?)))
            .collect();
        groups
            .iter()
            .map(|g| group_sums(model, g, &by_name))
            .collect()
    }
}

fn group_sums(model: &Model, g: &ChannelGroup, grads: &HashMap<&str, &Tensor>) -> Result<Vec<f64>> {
    let mut s = vec![0.0; g.channels];
    for m in &g.members {
        let Some(grad) = grads.get(m.param.as_str()) else {
            continue;
        };
        let w = model.params.get(&m.param)?.to_dtype(DType::F32)?;
        let wg = (w * grad.to_dtype(DType::F32)?)?;
        for (a, b) in s.iter_mut().zip(channel_sums(m, &wg, g.channels)?) {
            *a += b;
        }
    }
    Ok(s)
}

/// The loss the criterion differentiates: cross-entropy for labelled images, a seeded
/// random projection of the embeddings for sentences (see the module note).
pub fn calibration_loss(
    model: &Model,
    params: &ParamStore,
    batch: &Batch,
    seed: u64,
) -> Result<Tensor> {
    let out = forward_batch(&model.graph, params, batch, &ForwardOpts::train(seed))?;
    match batch {
        Batch::Images { .. } => Ok(CrossEntropy.loss(&out, batch)?.loss),
        Batch::Tokens { .. } => {
            let e = out.output.to_dtype(DType::F32)?;
            let (n, d) = e.dims2()?;
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let r = crate::zoo::normal(&mut rng, n * d, 1.0);
            let r = Tensor::from_vec(r, (n, d), e.device())?;
            Ok((e * r)?.sum_all()?)
        }
    }
}

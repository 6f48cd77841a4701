//! Coupled-channel analysis (the dependency-graph idea of Torch-Pruning's DepGraph, Fang
//! et al. 2023): from the graph alone, derive the groups of (parameter, axis, index range)
//! that must be cut together when one channel is removed — conv → BN → next layer's inputs,
//! through activations/pools, through Flatten (one channel = H·W features), across every
//! branch of a residual Add, and at offsets through a Concat. Every structured method
//! (channel pruning, Network Slimming, head pruning later) scores and cuts these groups;
//! attention heads are groups of head_dim-wide channels, and a channel gather maps
//! channels through its index tensor. [`prune_group`] (in `prune.rs`) is the materializer
//! that physically removes channels.

mod prune;

pub use prune::{prune_group, refresh_dims};

use std::collections::BTreeMap;

pub use crate::kinds::couple::{ChannelGroup, Coupler, Member, MemberRole, Seg};

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::graph::{infer_shapes, Graph, INPUT, MASK};
use crate::model::Model;
use crate::params::ParamStore;

/// Derives the coupled-channel groups of `g` from the graph alone (channel gathers pin
/// what they touch, their index being unknown).
pub fn channel_groups(g: &Graph) -> Result<Vec<ChannelGroup>> {
    groups_of(g, None)
}

/// The coupled-channel groups of a model: as [`channel_groups`], with channel gathers
/// mapped through their index tensors.
pub fn model_groups(model: &Model) -> Result<Vec<ChannelGroup>> {
    groups_of(&model.graph, Some(&model.params))
}

fn groups_of(g: &Graph, params: Option<&ParamStore>) -> Result<Vec<ChannelGroup>> {
    let shapes = infer_shapes(g)?;
    let mut sp = Coupler::new(params);
    for n in &g.nodes {
        for i in &n.inputs {
            *sp.readers.entry(i.clone()).or_default() += 1;
        }
    }
    *sp.readers.entry(g.output.clone()).or_default() += 1;
    let mut desc: BTreeMap<String, Vec<Seg>> = BTreeMap::new();
    let width = if g.is_text() { 1 } else { g.input_shape[0] };
    let inp = sp.add(width, None);
    sp.pin(inp, "model input");
    desc.insert(INPUT.into(), vec![Seg::plain(inp, 1)]);
    if g.is_text() {
        desc.insert(MASK.into(), vec![Seg::plain(inp, 1)]);
    }
    for n in &g.nodes {
        let ins: Vec<Vec<Seg>> = n.inputs.iter().map(|i| desc[i].clone()).collect();
        let in_shapes: Vec<&[usize]> = n.inputs.iter().map(|i| shapes[i].as_slice()).collect();
        let out = n.op.def().couple(&mut sp, n, &ins, &in_shapes);
        desc.insert(n.name.clone(), out);
    }
    for s in desc[&g.output].clone() {
        sp.pin(s.space, "feeds the model output");
    }
    Ok(sp.into_groups())
}

/// Sums of `t`'s entries per group channel, read along member `m`'s axis (its offset,
/// width per channel and index map).
pub fn channel_sums(m: &Member, t: &Tensor, channels: usize) -> Result<Vec<f64>> {
    let t = t.to_dtype(DType::F32)?;
    let t = if m.axis == 0 {
        t
    } else {
        t.transpose(0, m.axis)?.contiguous()?
    };
    let per_index: Vec<f32> = if t.rank() == 1 {
        t.to_vec1()?
    } else {
        t.flatten_from(1)?.sum(1)?.to_vec1()?
    };
    let mut s = vec![0.0; channels];
    let positions: Vec<usize> = m.map.clone().unwrap_or_else(|| (0..channels).collect());
    for (j, &c) in positions.iter().enumerate() {
        let a = m.offset + j * m.per_channel;
        let run = per_index.get(a..a + m.per_channel).ok_or_else(|| {
            Error::Graph(format!("`{}` is narrower than its group says", m.param))
        })?;
        s[c] += run.iter().map(|v| *v as f64).sum::<f64>();
    }
    Ok(s)
}

//! Structured pruning: whole channels, attention heads and FFN units removed so that the
//! result is an ordinary dense model, smaller and faster on any runtime. The shape is
//! Torch-Pruning's group → importance → policy: the coupled-channel groups come from the
//! graph ([`crate::coupling`]), [`score`] gives every channel of a group one score under a
//! criterion (L1/L2 norm, Taylor, BatchNorm γ, activation), [`allocate`] turns scores into
//! the channels each group keeps (uniform per layer, or one global ranking with a minimum
//! width) for a target in channels, parameters or FLOPs, and [`cut_all`] materializes the
//! cut. [`slim`] is Network Slimming's sparsity training (Liu et al. 2017, "Learning
//! Efficient Convolutional Networks through Network Slimming"): an L1 penalty on every
//! BatchNorm scale, after which a global threshold on |γ| picks the channels.

pub mod allocate;
pub mod score;
pub mod slim;
pub mod taylor;

pub use allocate::{plan, Allocation, Amount, Plan, Target, Unit};
pub use score::{scores, Criterion};

use crate::coupling::{model_groups, prune_group, ChannelGroup, MemberRole};
use crate::error::{Error, Result};
use crate::graph::Op;
use crate::model::Model;

/// What a group's channels are, for reports.
pub fn group_kind(model: &Model, g: &ChannelGroup) -> &'static str {
    let read_by = |op: fn(&Op) -> bool| {
        g.sources
            .iter()
            .any(|s| model.graph.consumers(s).iter().any(|n| op(&n.op)))
    };
    if read_by(|o| matches!(o, Op::Attention(_))) {
        "heads"
    } else if model.graph.is_text() && read_by(|o| matches!(o, Op::Gelu | Op::Relu)) {
        "ffn"
    } else {
        "channels"
    }
}

/// The groups structured pruning may cut: prunable groups made by a layer (conv/linear
/// output channels, attention heads, FFN units) — of the layers named in `layers` if given
/// (each must exist and make a prunable group, else an error naming it and why).
pub fn candidates(model: &Model, layers: Option<&[String]>) -> Result<Vec<ChannelGroup>> {
    let groups = model_groups(model)?;
    let made = |g: &ChannelGroup| g.members.iter().any(|m| m.role == MemberRole::Producer);
    let usable = |g: &ChannelGroup| {
        g.prunable && made(g) && (!model.graph.is_text() || group_kind(model, g) != "channels")
    };
    let Some(names) = layers else {
        return Ok(groups.into_iter().filter(usable).collect());
    };
    for name in names {
        if model.graph.node(name).is_none() {
            return Err(Error::Graph(format!(
                "`layers`: the model has no layer `{name}`"
            )));
        }
        let Some(g) = groups.iter().find(|g| g.sources.contains(name)) else {
            return Err(Error::Graph(format!(
                "`layers`: `{name}` makes no channels that could be pruned"
            )));
        };
        if !usable(g) {
            let why = g
                .pinned_because
                .as_deref()
                .unwrap_or("not a structured-pruning group");
            return Err(Error::Graph(format!(
                "`layers`: `{name}` is not prunable: {why}"
            )));
        }
    }
    Ok(groups
        .into_iter()
        .filter(|g| usable(g) && g.sources.iter().any(|s| names.contains(s)))
        .collect())
}

/// Cuts every group named by its sources to the channels it keeps (indices of the group
/// as it was before any cut). Groups are re-derived before each cut, since a cut moves the
/// offsets of the others.
pub fn cut_all(model: &mut Model, plan: &[(Vec<String>, Vec<usize>)]) -> Result<()> {
    for (sources, keep) in plan {
        let groups = model_groups(model)?;
        let g = groups
            .iter()
            .find(|g| &g.sources == sources)
            .ok_or_else(|| Error::Graph(format!("no channel group made by {sources:?}")))?;
        if keep.len() < g.channels {
            let g = g.clone();
            prune_group(model, &g, keep)?;
        }
    }
    Ok(())
}

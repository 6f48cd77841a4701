//! The materializer of coupled-channel groups: physically removes channels from every
//! member tensor (through index maps where a channel gather sits between producer and
//! consumers, renumbering the gather's entries) and re-reads the layer widths.

use candle_core::{DType, Tensor};

use super::{ChannelGroup, Member, MemberRole};
use crate::error::{Error, Result};
use crate::graph::{input_shapes, inputs_of, node_err, NOMINAL_SEQ};
use crate::model::Model;

/// Indices kept along a member's axis when the group keeps channels `keep`.
fn kept_indices(m: &Member, dim: usize, channels: usize, keep: &[usize]) -> Vec<u32> {
    let per = m.per_channel;
    // the member's range holds, position by position, these group channels
    let positions: Vec<usize> = match &m.map {
        Some(map) => map.clone(),
        None => (0..channels).collect(),
    };
    let end = m.offset + positions.len() * per;
    let mut idx: Vec<u32> = (0..m.offset as u32).collect();
    for (j, c) in positions.iter().enumerate() {
        if keep.binary_search(c).is_ok() {
            let a = m.offset + j * per;
            idx.extend((a..a + per).map(|i| i as u32));
        }
    }
    idx.extend((end as u32)..(dim as u32));
    idx
}

/// A gather's index entries after the cut: the kept entries, renumbered to the kept
/// channels' new positions.
fn renumbered(t: &Tensor, keep: &[usize]) -> Result<Tensor> {
    let v: Vec<u32> = t.to_dtype(DType::U32)?.to_vec1()?;
    let out: Vec<u32> = v
        .iter()
        .filter_map(|&c| keep.binary_search(&(c as usize)).ok().map(|p| p as u32))
        .collect();
    Ok(Tensor::from_vec(out.clone(), out.len(), t.device())?)
}

/// Physically removes every channel of `group` not in `keep` (sorted, unique) from the
/// model's tensors and updates the node attributes. Offsets of other groups change:
/// re-derive groups with [`super::channel_groups`] before cutting another one.
pub fn prune_group(model: &mut Model, group: &ChannelGroup, keep: &[usize]) -> Result<()> {
    if !group.prunable {
        return Err(Error::Graph(format!(
            "group of {:?} cannot be pruned: {}",
            group.sources,
            group.pinned_because.as_deref().unwrap_or("pinned")
        )));
    }
    if keep.is_empty()
        || keep.windows(2).any(|w| w[0] >= w[1])
        || keep.iter().any(|&c| c >= group.channels)
    {
        return Err(Error::Graph(format!(
            "keep list must be sorted, unique, non-empty and < {}",
            group.channels
        )));
    }
    // every cut is computed before any is stored, so a refused cut leaves the model as it was
    let mut cuts = Vec::with_capacity(group.members.len());
    for m in &group.members {
        let t = model.params.get(&m.param)?;
        let cut = if m.role == MemberRole::Gather {
            renumbered(t, keep)?
        } else {
            let idx = kept_indices(m, t.dim(m.axis)?, group.channels, keep);
            let ids = Tensor::from_vec(idx.clone(), idx.len(), t.device())?;
            t.index_select(&ids, m.axis)?
        };
        if cut.elem_count() == 0 {
            return Err(Error::Graph(format!(
                "the cut leaves `{}` empty (every position it reads is removed)",
                m.param
            )));
        }
        cuts.push((m.param.clone(), cut));
    }
    for (name, cut) in cuts {
        model.params.insert(name, cut);
    }
    refresh_dims(model)?;
    model.check()
}

/// Re-reads layer widths from parameter shapes (and from the refreshed shapes of each
/// node's inputs) after tensors were cut, in graph order.
pub fn refresh_dims(model: &mut Model) -> Result<()> {
    let g = &mut model.graph;
    let mut shapes = input_shapes(g, NOMINAL_SEQ);
    for n in &mut g.nodes {
        let p = &model.params;
        let name = n.name.clone();
        let dims = |s: &str| {
            p.get(&format!("{name}.{s}"))
                .ok()
                .map(|t| t.dims().to_vec())
        };
        let ins = inputs_of(n, &shapes)?;
        if let Some(op) = n.op.def().refreshed(&dims, &ins) {
            n.op = op;
        }
        let out = n.op.def().out_shape(&ins).map_err(|m| node_err(n, m))?;
        shapes.insert(n.name.clone(), out);
    }
    Ok(())
}

//! Coupled-channel analysis (the dependency-graph idea of Torch-Pruning's DepGraph, Fang
//! et al. 2023): from the graph alone, derive the groups of (parameter, axis, index range)
//! that must be cut together when one channel is removed — conv → BN → next layer's inputs,
//! through activations/pools, through Flatten (one channel = H·W features), across every
//! branch of a residual Add, and at offsets through a Concat. Every structured method
//! (channel pruning, Network Slimming, head pruning later) scores and cuts these groups;
//! [`prune_group`] is the materializer that physically removes channels.

use std::collections::BTreeMap;

use candle_core::Tensor;
use serde::Serialize;

use crate::checkpoint::Model;
use crate::error::{Error, Result};
use crate::graph::{infer_shapes, Graph, Op, INPUT, MASK};

/// What a member tensor does with the group's channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Creates the channels (conv/linear output rows and bias).
    Producer,
    /// Per-channel parameters on the way (BatchNorm, depthwise conv).
    Norm,
    /// Reads the channels (next conv/linear input columns).
    Consumer,
}

/// One tensor slice coupled to a group: channel `i` of the group is the index range
/// `offset + i·per_channel .. offset + (i+1)·per_channel` along `axis` of `param`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Member {
    pub node: String,
    pub param: String,
    pub axis: usize,
    pub offset: usize,
    pub per_channel: usize,
    pub role: Role,
}

/// Channels that must be cut together.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelGroup {
    pub channels: usize,
    /// Nodes that create these channels.
    pub sources: Vec<String>,
    pub members: Vec<Member>,
    /// False when the channels feed the model output, come from its input, or cross an op
    /// that cannot be cut (a grouped, non-depthwise convolution).
    pub prunable: bool,
    pub pinned_because: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct Seg {
    space: usize,
    per: usize,
}

#[derive(Default)]
struct Spaces {
    parent: Vec<usize>,
    channels: Vec<usize>,
    members: Vec<Vec<Member>>,
    sources: Vec<Vec<String>>,
    pinned: Vec<Option<String>>,
}

impl Spaces {
    fn add(&mut self, channels: usize, source: Option<&str>) -> usize {
        let id = self.parent.len();
        self.parent.push(id);
        self.channels.push(channels);
        self.members.push(Vec::new());
        self.sources
            .push(source.map(|s| vec![s.to_string()]).unwrap_or_default());
        self.pinned.push(None);
        id
    }
    fn root(&mut self, mut a: usize) -> usize {
        while self.parent[a] != a {
            self.parent[a] = self.parent[self.parent[a]];
            a = self.parent[a];
        }
        a
    }
    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.root(a), self.root(b));
        if ra != rb {
            self.parent[rb] = ra;
        }
    }
    fn pin(&mut self, s: usize, why: &str) {
        let r = self.root(s);
        self.pinned[r].get_or_insert_with(|| why.to_string());
    }
    /// Records that channel space `s` reaches `node.param` at `(axis, offset, per_channel)`.
    fn member(
        &mut self,
        s: usize,
        node: &str,
        param: &str,
        (axis, offset, per): (usize, usize, usize),
        role: Role,
    ) {
        let m = Member {
            node: node.into(),
            param: format!("{node}.{param}"),
            axis,
            offset,
            per_channel: per,
            role,
        };
        self.members[s].push(m);
    }
}

/// Consumer members for every segment of `segs` along axis 1 of `node.weight`.
fn consume(sp: &mut Spaces, segs: &[Seg], node: &str) {
    let mut off = 0;
    for s in segs {
        sp.member(s.space, node, "weight", (1, off, s.per), Role::Consumer);
        off += sp.channels[s.space] * s.per;
    }
}

/// Per-channel members (offset by channel position) for every segment.
fn per_channel(sp: &mut Spaces, segs: &[Seg], node: &str, params: &[&str], role: Role) {
    let mut off = 0;
    for s in segs {
        for p in params {
            sp.member(s.space, node, p, (0, off, 1), role);
        }
        off += sp.channels[s.space];
    }
}

/// Derives the coupled-channel groups of `g`.
pub fn channel_groups(g: &Graph) -> Result<Vec<ChannelGroup>> {
    let shapes = infer_shapes(g)?;
    let mut sp = Spaces::default();
    let mut desc: BTreeMap<String, Vec<Seg>> = BTreeMap::new();
    let width = if g.is_text() { 1 } else { g.input_shape[0] };
    let inp = sp.add(width, None);
    sp.pin(inp, "model input");
    desc.insert(INPUT.into(), vec![Seg { space: inp, per: 1 }]);
    if g.is_text() {
        desc.insert(MASK.into(), vec![Seg { space: inp, per: 1 }]);
    }
    for n in &g.nodes {
        let ins: Vec<Vec<Seg>> = n.inputs.iter().map(|i| desc[i].clone()).collect();
        let x = ins[0].clone();
        let out = match &n.op {
            Op::Linear {
                out_features, bias, ..
            } => {
                consume(&mut sp, &x, &n.name);
                new_space(&mut sp, &n.name, *out_features, *bias)
            }
            Op::Conv2d {
                in_channels,
                out_channels,
                groups,
                bias,
                ..
            } => {
                if *groups == 1 {
                    consume(&mut sp, &x, &n.name);
                    new_space(&mut sp, &n.name, *out_channels, *bias)
                } else if groups == in_channels && groups == out_channels {
                    let ps: &[&str] = if *bias {
                        &["weight", "bias"]
                    } else {
                        &["weight"]
                    };
                    per_channel(&mut sp, &x, &n.name, ps, Role::Norm);
                    x
                } else {
                    x.iter()
                        .for_each(|s| sp.pin(s.space, "grouped convolution input"));
                    let o = new_space(&mut sp, &n.name, *out_channels, *bias);
                    sp.pin(o[0].space, "grouped convolution output");
                    o
                }
            }
            Op::BatchNorm { .. } => {
                let ps = ["weight", "bias", "running_mean", "running_var"];
                per_channel(&mut sp, &x, &n.name, &ps, Role::Norm);
                x
            }
            Op::Relu
            | Op::Dropout { .. }
            | Op::MaxPool2d { .. }
            | Op::AvgPool2d { .. }
            | Op::GlobalAvgPool => x,
            Op::Flatten => {
                let s = &shapes[&n.inputs[0]];
                let hw: usize = s[1..].iter().product();
                x.iter()
                    .map(|seg| Seg {
                        space: seg.space,
                        per: seg.per * hw,
                    })
                    .collect()
            }
            Op::Add => {
                add_union(&mut sp, &ins);
                x
            }
            Op::Concat => ins.concat(),
            Op::Gelu | Op::MeanPool => x,
            Op::Embedding { dim, .. } => {
                let o = new_space(&mut sp, &n.name, *dim, false);
                sp.pin(o[0].space, "embedding table (hidden width)");
                o
            }
            Op::LayerNorm { .. } | Op::L2Normalize => {
                x.iter()
                    .for_each(|s| sp.pin(s.space, "normalization across the channel axis"));
                x
            }
            Op::Attention { .. } => {
                for s in ins[..3].concat() {
                    sp.pin(s.space, "attention core (prune whole heads instead)");
                }
                ins[2].clone()
            }
        };
        desc.insert(n.name.clone(), out);
    }
    for s in desc[&g.output].clone() {
        sp.pin(s.space, "feeds the model output");
    }
    Ok(collect(sp))
}

fn new_space(sp: &mut Spaces, node: &str, channels: usize, bias: bool) -> Vec<Seg> {
    let s = sp.add(channels, Some(node));
    sp.member(s, node, "weight", (0, 0, 1), Role::Producer);
    if bias {
        sp.member(s, node, "bias", (0, 0, 1), Role::Producer);
    }
    vec![Seg { space: s, per: 1 }]
}

/// Unites the spaces of the branches of an Add segment by segment; pins them if the
/// branches are laid out differently.
fn add_union(sp: &mut Spaces, ins: &[Vec<Seg>]) {
    let same = ins.iter().all(|b| {
        b.len() == ins[0].len()
            && b.iter()
                .zip(&ins[0])
                .all(|(x, y)| sp.channels[x.space] == sp.channels[y.space] && x.per == y.per)
    });
    for b in &ins[1..] {
        for (x, y) in b.iter().zip(&ins[0]) {
            if same {
                sp.union(x.space, y.space);
            } else {
                sp.pin(x.space, "residual branches with different channel layouts");
                sp.pin(y.space, "residual branches with different channel layouts");
            }
        }
    }
}

fn collect(mut sp: Spaces) -> Vec<ChannelGroup> {
    let mut groups: BTreeMap<usize, ChannelGroup> = BTreeMap::new();
    for s in 0..sp.parent.len() {
        let r = sp.root(s);
        let pinned = sp.pinned[r].clone();
        let g = groups.entry(r).or_insert_with(|| ChannelGroup {
            channels: sp.channels[r],
            sources: Vec::new(),
            members: Vec::new(),
            prunable: pinned.is_none(),
            pinned_because: pinned,
        });
        g.members.append(&mut sp.members[s]);
        g.sources.append(&mut sp.sources[s]);
    }
    groups
        .into_values()
        .filter(|g| !g.members.is_empty())
        .collect()
}

/// Indices kept along a member's axis when the group keeps channels `keep`.
fn kept_indices(m: &Member, dim: usize, channels: usize, keep: &[usize]) -> Vec<u32> {
    let end = m.offset + channels * m.per_channel;
    let mut idx: Vec<u32> = (0..m.offset as u32).collect();
    for &c in keep {
        let a = m.offset + c * m.per_channel;
        idx.extend((a..a + m.per_channel).map(|i| i as u32));
    }
    idx.extend((end as u32)..(dim as u32));
    idx
}

/// Physically removes every channel of `group` not in `keep` (sorted, unique) from the
/// model's tensors and updates the node attributes. Offsets of other groups change:
/// re-derive groups with [`channel_groups`] before cutting another one.
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
    for m in &group.members {
        let t = model.params.get(&m.param)?;
        let idx = kept_indices(m, t.dim(m.axis)?, group.channels, keep);
        let ids = Tensor::from_vec(idx.clone(), idx.len(), t.device())?;
        let cut = t.index_select(&ids, m.axis)?;
        model.params.insert(m.param.clone(), cut);
    }
    refresh_dims(model)?;
    model.check()
}

/// Re-reads layer widths from parameter shapes after tensors were cut.
fn refresh_dims(model: &mut Model) -> Result<()> {
    for n in &mut model.graph.nodes {
        let w = |p: &crate::params::ParamStore| -> Result<Vec<usize>> {
            Ok(p.get(&format!("{}.weight", n.name))?.dims().to_vec())
        };
        match &mut n.op {
            Op::Linear {
                in_features,
                out_features,
                ..
            } => {
                let d = w(&model.params)?;
                (*out_features, *in_features) = (d[0], d[1]);
            }
            Op::Conv2d {
                in_channels,
                out_channels,
                groups,
                ..
            } => {
                let d = w(&model.params)?;
                let depthwise = *groups > 1 && *groups == *in_channels && *groups == *out_channels;
                *out_channels = d[0];
                if depthwise {
                    (*groups, *in_channels) = (d[0], d[0]);
                } else {
                    *in_channels = d[1] * *groups;
                }
            }
            Op::BatchNorm { channels, .. } => *channels = w(&model.params)?[0],
            _ => {}
        }
    }
    Ok(())
}

//! Coupled-channel analysis (the dependency-graph idea of Torch-Pruning's DepGraph, Fang
//! et al. 2023): from the graph alone, derive the groups of (parameter, axis, index range)
//! that must be cut together when one channel is removed — conv → BN → next layer's inputs,
//! through activations/pools, through Flatten (one channel = H·W features), across every
//! branch of a residual Add, and at offsets through a Concat. Every structured method
//! (channel pruning, Network Slimming, head pruning later) scores and cuts these groups;
//! [`prune_group`] is the materializer that physically removes channels.

use std::collections::{BTreeMap, HashMap};

use candle_core::Tensor;
use serde::Serialize;

use crate::checkpoint::Model;
use crate::error::{Error, Result};
use crate::graph::{infer_shapes, Graph, Node, INPUT, MASK, NOMINAL_SEQ};
use crate::kinds::node_err;

/// What a member tensor does with the group's channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
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
    pub role: MemberRole,
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

/// A run of a value's channel axis: the channels of space `space`, each `per` consecutive
/// indices wide (a Flatten makes one channel H·W features).
#[derive(Debug, Clone, Copy)]
pub struct Seg {
    pub space: usize,
    pub per: usize,
}

/// The channel spaces under construction while the kinds' coupling rules run over the
/// graph (union–find over spaces, with members, sources and pin reasons).
#[derive(Default)]
pub struct Coupler {
    /// How many nodes read each value (the graph output counts as a reader).
    readers: HashMap<String, usize>,
    parent: Vec<usize>,
    channels: Vec<usize>,
    members: Vec<Vec<Member>>,
    sources: Vec<Vec<String>>,
    pinned: Vec<Option<String>>,
}

impl Coupler {
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
    /// Pins every space of `segs`: their channels cannot be cut, for reason `why`.
    pub fn pin_all(&mut self, segs: &[Seg], why: &str) {
        for s in segs {
            self.pin(s.space, why);
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
        role: MemberRole,
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

impl Coupler {
    /// Consumer members for every segment of `segs` along axis 1 of `node.weight`.
    pub fn consume(&mut self, segs: &[Seg], node: &str) {
        let mut off = 0;
        for s in segs {
            self.member(
                s.space,
                node,
                "weight",
                (1, off, s.per),
                MemberRole::Consumer,
            );
            off += self.channels[s.space] * s.per;
        }
    }

    /// Per-channel members (offset by channel position) of `params` for every segment.
    pub fn per_channel(&mut self, segs: &[Seg], node: &str, params: &[&str], role: MemberRole) {
        let mut off = 0;
        for s in segs {
            for p in params {
                self.member(s.space, node, p, (0, off, 1), role);
            }
            off += self.channels[s.space];
        }
    }

    /// A new space of `channels` created by `node` (weight rows, and bias if any).
    pub fn new_space(&mut self, node: &str, channels: usize, bias: bool) -> Vec<Seg> {
        let s = self.add(channels, Some(node));
        self.member(s, node, "weight", (0, 0, 1), MemberRole::Producer);
        if bias {
            self.member(s, node, "bias", (0, 0, 1), MemberRole::Producer);
        }
        vec![Seg { space: s, per: 1 }]
    }

    /// Turns the spaces of an attention core's q, k, v inputs into one space of `heads`
    /// channels, each `head_dim` indices wide in every member; `None` (nothing changed)
    /// unless each input is a whole space of its own (heads·head_dim channels, one
    /// segment, not united with another space) read by this node alone.
    pub fn head_space(
        &mut self,
        node: &Node,
        qkv: &[Vec<Seg>],
        heads: usize,
        head_dim: usize,
    ) -> Option<usize> {
        let mut spaces = Vec::new();
        for (segs, name) in qkv.iter().zip(&node.inputs) {
            let [s] = segs.as_slice() else { return None };
            let root = self.root(s.space);
            let alone = (0..self.parent.len()).all(|o| o == s.space || self.root(o) != root);
            let ok = s.per == 1
                && self.channels[s.space] == heads * head_dim
                && alone
                && self.readers.get(name) == Some(&1)
                && !spaces.contains(&s.space);
            if !ok {
                return None;
            }
            spaces.push(s.space);
        }
        for &s in &spaces {
            self.channels[s] = heads;
            for m in &mut self.members[s] {
                m.per_channel *= head_dim;
            }
        }
        for &s in &spaces[1..] {
            self.union(spaces[0], s);
        }
        Some(self.root(spaces[0]))
    }

    /// Unites the spaces of the branches of an Add segment by segment; pins them if the
    /// branches are laid out differently.
    pub fn add_union(&mut self, ins: &[Vec<Seg>]) {
        let same = ins.iter().all(|b| {
            b.len() == ins[0].len()
                && b.iter().zip(&ins[0]).all(|(x, y)| {
                    self.channels[x.space] == self.channels[y.space] && x.per == y.per
                })
        });
        let why = "residual branches with different channel layouts";
        for b in &ins[1..] {
            for (x, y) in b.iter().zip(&ins[0]) {
                if same {
                    self.union(x.space, y.space);
                } else {
                    self.pin(x.space, why);
                    self.pin(y.space, why);
                }
            }
        }
    }
}

/// Derives the coupled-channel groups of `g`.
pub fn channel_groups(g: &Graph) -> Result<Vec<ChannelGroup>> {
    let shapes = infer_shapes(g)?;
    let mut sp = Coupler::default();
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
    desc.insert(INPUT.into(), vec![Seg { space: inp, per: 1 }]);
    if g.is_text() {
        desc.insert(MASK.into(), vec![Seg { space: inp, per: 1 }]);
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
    Ok(collect(sp))
}

fn collect(mut sp: Coupler) -> Vec<ChannelGroup> {
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

/// Re-reads layer widths from parameter shapes (and from the refreshed shapes of each
/// node's inputs) after tensors were cut, in graph order.
pub fn refresh_dims(model: &mut Model) -> Result<()> {
    let g = &mut model.graph;
    let mut shapes: HashMap<String, Vec<usize>> = HashMap::new();
    if g.is_text() {
        shapes.insert(INPUT.into(), vec![NOMINAL_SEQ]);
        shapes.insert(MASK.into(), vec![NOMINAL_SEQ]);
    } else {
        shapes.insert(INPUT.into(), g.input_shape.clone());
    }
    for n in &mut g.nodes {
        let p = &model.params;
        let name = n.name.clone();
        let dims = |s: &str| {
            p.get(&format!("{name}.{s}"))
                .ok()
                .map(|t| t.dims().to_vec())
        };
        let ins = n
            .inputs
            .iter()
            .map(|i| {
                shapes
                    .get(i)
                    .map(Vec::as_slice)
                    .ok_or_else(|| node_err(n, format!("unknown input `{i}`")))
            })
            .collect::<Result<Vec<_>>>()?;
        if let Some(op) = n.op.def().refreshed(&dims, &ins) {
            n.op = op;
        }
        let out = n.op.def().out_shape(&ins).map_err(|m| node_err(n, m))?;
        shapes.insert(n.name.clone(), out);
    }
    Ok(())
}

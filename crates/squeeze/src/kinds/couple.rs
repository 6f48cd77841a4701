//! The interface through which a layer kind states its channel-coupling rule
//! ([`super::LayerKind::couple`]): channel spaces under construction (union–find with
//! members, sources and pin reasons) that each kind extends with the tensors it reads and
//! makes. The analysis that walks a graph with it is [`crate::coupling`] (the
//! dependency-graph idea of Torch-Pruning's DepGraph, Fang et al. 2023).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;

use super::Node;
use crate::params::ParamStore;

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
    /// The index tensor of a channel gather: its entries name channels, so a cut both
    /// selects entries and renumbers them.
    Gather,
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
    /// Index map (through a channel gather): position `j` of the member's range holds
    /// group channel `map[j]`, so channel `i` is every position whose entry is `i`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub map: Option<Vec<usize>>,
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
#[derive(Debug, Clone)]
pub struct Seg {
    pub space: usize,
    pub per: usize,
    /// After a channel gather: position `j` of this run holds channel `map[j]`.
    pub map: Option<Arc<Vec<usize>>>,
}

impl Seg {
    /// A plain run of `space`'s channels, `per` indices each.
    pub fn plain(space: usize, per: usize) -> Self {
        Seg {
            space,
            per,
            map: None,
        }
    }
}

/// The channel spaces under construction while the kinds' coupling rules run over the
/// graph (union–find over spaces, with members, sources and pin reasons).
#[derive(Default)]
pub struct Coupler<'p> {
    /// The model's tensors, when known: a gather's index tensor maps channels through it.
    params: Option<&'p ParamStore>,
    /// How many nodes read each value (the graph output counts as a reader).
    pub(crate) readers: HashMap<String, usize>,
    parent: Vec<usize>,
    channels: Vec<usize>,
    members: Vec<Vec<Member>>,
    sources: Vec<Vec<String>>,
    pinned: Vec<Option<String>>,
}

impl<'p> Coupler<'p> {
    /// An empty builder; `params`, when known, maps channel gathers through their index.
    pub(crate) fn new(params: Option<&'p ParamStore>) -> Self {
        Coupler {
            params,
            ..Coupler::default()
        }
    }

    pub(crate) fn add(&mut self, channels: usize, source: Option<&str>) -> usize {
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
    pub(crate) fn pin(&mut self, s: usize, why: &str) {
        let r = self.root(s);
        self.pinned[r].get_or_insert_with(|| why.to_string());
    }
    /// Records that segment `seg`'s channels reach `node.param` along `axis` from
    /// `offset` (each `seg.per` indices wide, through `seg.map` if it has one).
    fn member(
        &mut self,
        seg: &Seg,
        node: &str,
        param: &str,
        (axis, offset): (usize, usize),
        role: MemberRole,
    ) {
        let m = Member {
            node: node.into(),
            param: format!("{node}.{param}"),
            axis,
            offset,
            per_channel: seg.per,
            role,
            map: seg.map.as_deref().cloned(),
        };
        self.members[seg.space].push(m);
    }

    /// Indices a segment covers along the channel axis.
    fn width(&self, seg: &Seg) -> usize {
        seg.map
            .as_ref()
            .map_or(self.channels[seg.space], |m| m.len())
            * seg.per
    }
}

impl Coupler<'_> {
    /// Consumer members for every segment of `segs` along axis 1 of `node.weight`.
    pub fn consume(&mut self, segs: &[Seg], node: &str) {
        let mut off = 0;
        for s in segs {
            self.member(s, node, "weight", (1, off), MemberRole::Consumer);
            off += self.width(s);
        }
    }

    /// Per-channel members (offset by channel position) of `params` for every segment.
    pub fn per_channel(&mut self, segs: &[Seg], node: &str, params: &[&str], role: MemberRole) {
        let mut off = 0;
        for s in segs {
            let unit = Seg {
                per: 1,
                ..s.clone()
            };
            for p in params {
                self.member(&unit, node, p, (0, off), role);
            }
            off += self.width(&unit);
        }
    }

    /// A new space of `channels` created by `node` (weight rows, and bias if any).
    pub fn new_space(&mut self, node: &str, channels: usize, bias: bool) -> Vec<Seg> {
        let seg = Seg::plain(self.add(channels, Some(node)), 1);
        self.member(&seg, node, "weight", (0, 0), MemberRole::Producer);
        if bias {
            self.member(&seg, node, "bias", (0, 0), MemberRole::Producer);
        }
        vec![seg]
    }

    /// The output of channel gather `node` over input `x`: the input's space seen through
    /// the gather's index tensor, or — when the input is not one plain space, or the index
    /// is unknown (no tensors given) or out of range — a new space of `channels`, pinned
    /// together with the input.
    pub fn gather(&mut self, node: &str, x: &[Seg], channels: usize) -> Vec<Seg> {
        let idx = self.index_values(&format!("{node}.index"));
        if let ([s], Some(idx)) = (x, idx) {
            if s.per == 1 && s.map.is_none() && idx.iter().all(|&i| i < self.channels[s.space]) {
                let out = Seg {
                    map: Some(Arc::new(idx)),
                    ..s.clone()
                };
                self.member(&out, node, "index", (0, 0), MemberRole::Gather);
                return vec![out];
            }
        }
        self.pin_all(x, "read by a channel gather whose index is not known here");
        let o = Seg::plain(self.add(channels, Some(node)), 1);
        self.pin(
            o.space,
            "output of a channel gather whose index is not known here",
        );
        vec![o]
    }

    /// The values of tensor `name` as channel indices, if the model's tensors are known.
    fn index_values(&self, name: &str) -> Option<Vec<usize>> {
        let t = self.params?.get(name).ok()?;
        let v: Vec<u32> = t.flatten_all().ok()?.to_vec1().ok()?;
        Some(v.into_iter().map(|i| i as usize).collect())
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
                && s.map.is_none()
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
                    self.channels[x.space] == self.channels[y.space]
                        && x.per == y.per
                        && x.map.is_none()
                        && y.map.is_none()
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

impl Coupler<'_> {
    /// The groups built so far: every space's members under its root, empty ones dropped.
    pub(crate) fn into_groups(mut self) -> Vec<ChannelGroup> {
        let sp = &mut self;
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
}

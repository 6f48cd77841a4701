//! The interpreter: runs a [`Graph`] on candle tensors, for inference (eval mode) and for
//! training (train mode: batch statistics in BatchNorm, dropout active, parameters may be
//! `Var`s so candle's autograd sees them). Taps capture the inputs and output of any
//! named node during a forward — calibration, OBS/GPTQ Hessians and FitNets hints read
//! activations this way. Intermediate values are dropped after their last use.

mod plan;

pub use plan::{plan_for, Plan, Step};

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Tensor};
use rand::{rngs::StdRng, SeedableRng};

use crate::error::{Error, Result};
use crate::graph::{Graph, Node, INPUT, MASK};
pub use crate::kinds::ForwardOpts;
use crate::kinds::{Absorb, NodeRun};
use crate::ops::batchnorm;
/// The caller-owned cache of packed weights that [`ForwardOpts::packed`] takes.
pub use crate::ops::pack_cache::PackCache;
use crate::params::ParamStore;

/// A captured node: its inputs and its output.
#[derive(Debug, Clone)]
pub struct Tap {
    pub inputs: Vec<Tensor>,
    pub output: Tensor,
}

/// Everything a forward produced.
#[derive(Debug)]
pub struct ForwardOut {
    pub output: Tensor,
    pub taps: HashMap<String, Tap>,
    /// Batch statistics of each BatchNorm node (train mode only).
    pub bn_stats: Vec<(String, batchnorm::BatchStats)>,
}

/// Runs a dense-input graph `g` on a batch `x` of shape [N, ...input_shape].
pub fn forward(g: &Graph, p: &ParamStore, x: &Tensor, opts: &ForwardOpts) -> Result<ForwardOut> {
    if g.is_text() {
        return Err(Error::Graph(
            "this model reads token ids and a mask; use forward_tokens".into(),
        ));
    }
    if x.dims().len() != g.input_shape.len() + 1 || x.dims()[1..] != g.input_shape[..] {
        return Err(Error::Graph(format!(
            "input batch has shape {:?}, the model expects [N, {:?}]",
            x.dims(),
            g.input_shape
        )));
    }
    run_graph(g, p, vec![(INPUT, x.clone())], opts)
}

/// Runs a token graph on token ids `ids` [N, L] (u32) and `mask` [N, L] (1 = token).
pub fn forward_tokens(
    g: &Graph,
    p: &ParamStore,
    ids: &Tensor,
    mask: &Tensor,
    opts: &ForwardOpts,
) -> Result<ForwardOut> {
    if !g.is_text() {
        return Err(Error::Graph("this model does not read token ids".into()));
    }
    if ids.rank() != 2 || ids.dims() != mask.dims() || ids.dtype() != DType::U32 {
        return Err(Error::Graph(format!(
            "token ids must be u32 [N, L] and the mask the same shape; got {:?} {:?} and {:?}",
            ids.dtype(),
            ids.dims(),
            mask.dims()
        )));
    }
    run_graph(g, p, vec![(INPUT, ids.clone()), (MASK, mask.clone())], opts)
}

/// Runs the graph's plan for `opts` (compiled on first use, see [`plan`]).
fn run_graph(
    g: &Graph,
    p: &ParamStore,
    inputs: Vec<(&str, Tensor)>,
    opts: &ForwardOpts,
) -> Result<ForwardOut> {
    let plan = plan::plan_for(g, opts)?;
    let packs = packs_for(g, opts)?;
    let x = inputs[0].1.clone();
    // every value in its slot (see `Plan`): the caller's, then one per node
    let base = plan.externals.len();
    let mut vals: Vec<Option<Tensor>> = vec![None; base + g.nodes.len()];
    for (name, t) in inputs {
        if let Some(k) = plan.externals.iter().position(|e| e == name) {
            vals[k] = Some(t);
        }
    }
    let name_of = |v: usize| match v.checked_sub(base) {
        Some(i) => g.nodes[i].name.as_str(),
        None => plan.externals[v].as_str(),
    };
    let mut out = ForwardOut {
        output: x,
        taps: HashMap::new(),
        bn_stats: Vec::new(),
    };
    let mut rng = StdRng::seed_from_u64(opts.seed);
    // outputs of sibling nodes computed ahead, by node
    let mut ahead: Vec<Option<Tensor>> = vec![None; g.nodes.len()];
    // nodes run inside a chain with their reader (`Plan::chain`): no value of their own
    let mut unmade = vec![false; g.nodes.len()];
    for (i, (node, step)) in g.nodes.iter().zip(&plan.steps).enumerate() {
        if let Step::Absorbed { by } = *step {
            if unmade[by] {
                plan.drops[i].iter().for_each(|&v| vals[v] = None);
                continue;
            }
            // the node that reads into this one already applied it: its value moves on
            // (from the input that is not the residual `by` added)
            let from = plan.inputs[i]
                .iter()
                .copied()
                .find(|&v| Some(v) != plan.residual[by])
                .unwrap_or(plan.inputs[i][0]);
            vals[base + i] = Some(vals[from].take().ok_or_else(|| missing(name_of(from)))?);
            for &v in &plan.drops[i] {
                vals[v] = None;
            }
            continue;
        }
        if !plan.tapped[i] {
            if let Some(y) = ahead[i].take() {
                // computed with an earlier node (a chain or a sibling group), and no tap
                // asks for its inputs
                plan.drops[i].iter().for_each(|&v| vals[v] = None);
                vals[base + i] = Some(y);
                continue;
            }
        }
        let ins = plan.inputs[i]
            .iter()
            .map(|&v| vals[v].clone().ok_or_else(|| missing(name_of(v))))
            .collect::<Result<Vec<_>>>()?;
        if let (Some(j), Step::Run { absorbs }) = (plan.chain[i], step) {
            let residual = match plan.residual[j] {
                Some(v) => Some(vals[v].clone().ok_or_else(|| missing(name_of(v)))?),
                None => None,
            };
            let gelu = absorbs.contains(&Absorb::Gelu);
            let pair = [node, &g.nodes[j]];
            let y = node
                .op
                .def()
                .forward_chain(pair, p, &ins[0], (gelu, residual.as_ref()), opts)
                .map_err(|e| Error::at_node(&node.name, node.op.kind(), e))?;
            if let Some(y) = y {
                ahead[j] = Some(y);
                unmade[i] = true;
                plan.drops[i].iter().for_each(|&v| vals[v] = None);
                continue;
            }
        }
        let y = match (ahead[i].take(), step) {
            (Some(v), _) => v,
            (None, Step::Siblings { group }) => {
                match run_siblings(g, group, p, &ins[0], opts, &packs)? {
                    Some(mut ys) => {
                        for (&j, v) in group[1..].iter().zip(ys.drain(1..)) {
                            ahead[j] = Some(v);
                        }
                        ys.remove(0)
                    }
                    None => {
                        let fused = Fused::default();
                        run_node(node, p, (&ins, &packs), opts, fused, &mut rng, &mut out)?
                    }
                }
            }
            (None, Step::Run { absorbs }) => {
                let hand = plan.hands[i].map(|j| &g.nodes[j]);
                let residual = match plan.residual[i] {
                    Some(v) => Some(vals[v].clone().ok_or_else(|| missing(name_of(v)))?),
                    None => None,
                };
                let fused = Fused {
                    absorbs,
                    hand,
                    residual: residual.as_ref(),
                };
                run_node(node, p, (&ins, &packs), opts, fused, &mut rng, &mut out)?
            }
            (None, Step::Absorbed { .. }) => unreachable!("handled above"),
        };
        if plan.tapped[i] {
            out.taps.insert(
                node.name.clone(),
                Tap {
                    inputs: ins.clone(),
                    output: y.clone(),
                },
            );
        }
        for &v in &plan.drops[i] {
            vals[v] = None;
        }
        vals[base + i] = Some(y);
    }
    out.output = plan
        .output
        .and_then(|v| vals[v].take())
        .ok_or_else(|| Error::Graph(format!("output `{}` was not computed", g.output)))?;
    Ok(out)
}

fn missing(name: &str) -> Error {
    Error::Graph(format!("value `{name}` missing"))
}

/// Where the kernels keep packed weights: the caller's cache, else one kept with the graph
/// (so a model's int8 panels are packed once, and go with the model).
fn packs_for(g: &Graph, opts: &ForwardOpts) -> Result<Arc<PackCache>> {
    /// The slot key of the graph's pack cache (plans take hashes of fingerprints).
    const PACKS: u64 = 0x5041_434b_5300_0001;
    match &opts.packed {
        Some(c) => Ok(c.clone()),
        None => g.cache.get_or(PACKS, || Ok(PackCache::default())),
    }
}

/// Makes `p` an inference-only store for runs given `packs` (as [`ForwardOpts::packed`]):
/// each node — or sibling group, as the eval plan groups them — whose kind has a packed
/// form gets its weights packed into `packs` for good, and the stored originals are
/// dropped from `p` one node at a time, so the process never holds both forms of the
/// whole model. Returns the bytes dropped. Afterwards the store saves, trains and
/// exports no more (the dropped tensors are missing); eval-mode forwards with `packs` run
/// as before.
pub fn keep_packed_only(g: &Graph, p: &mut ParamStore, packs: &Arc<PackCache>) -> Result<usize> {
    let opts = ForwardOpts {
        packed: Some(packs.clone()),
        ..ForwardOpts::eval()
    };
    let plan = plan::plan_for(g, &opts)?;
    let mut grouped = vec![false; g.nodes.len()];
    let mut dropped = 0;
    for (i, step) in plan.steps.iter().enumerate() {
        let group = match step {
            Step::Siblings { group } => group.clone(),
            Step::Run { .. } if !grouped[i] => vec![i],
            _ => continue,
        };
        group.iter().for_each(|&j| grouped[j] = true);
        let nodes: Vec<&Node> = group.iter().map(|&j| &g.nodes[j]).collect();
        let first = nodes[0];
        let names = first
            .op
            .def()
            .release_packed(&nodes, p, packs)
            .map_err(|e| Error::at_node(&first.name, first.op.kind(), e))?;
        for name in names {
            if let Some(t) = p.remove(&name) {
                dropped += t.elem_count() * t.dtype().size_in_bytes();
            }
        }
    }
    Ok(dropped)
}

/// A sibling group (its first node's kind decides) run as one product, or `None`.
fn run_siblings(
    g: &Graph,
    group: &[usize],
    p: &ParamStore,
    x: &Tensor,
    opts: &ForwardOpts,
    packs: &PackCache,
) -> Result<Option<Vec<Tensor>>> {
    let nodes: Vec<&Node> = group.iter().map(|&j| &g.nodes[j]).collect();
    let first = nodes[0];
    first
        .op
        .def()
        .forward_siblings(&nodes, p, x, opts, packs)
        .map_err(|e| Error::at_node(&first.name, first.op.kind(), e))
}

/// Eval-mode forward returning only the output, run by [`on_pool`].
pub fn predict(g: &Graph, p: &ParamStore, x: &Tensor) -> Result<Tensor> {
    Ok(on_pool(|| forward(g, p, x, &ForwardOpts::eval()))?.output)
}

/// Runs `f` (an inference forward) on a rayon worker, so the kernels' parallel calls split
/// work with the other workers directly instead of parking the caller and waking them for
/// every call (most of a small batch's time otherwise).
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// What a node applies besides its own op (the run plan's fusions).
#[derive(Default)]
struct Fused<'a> {
    absorbs: &'a [Absorb],
    /// The int8 convolution it hands its codes to.
    hand: Option<&'a Node>,
    /// The residual it adds ([`Absorb::Residual`]).
    residual: Option<&'a Tensor>,
}

/// Runs one node through its kind's definition.
fn run_node(
    node: &Node,
    p: &ParamStore,
    (ins, packs): (&[Tensor], &PackCache),
    opts: &ForwardOpts,
    fused: Fused,
    rng: &mut StdRng,
    out: &mut ForwardOut,
) -> Result<Tensor> {
    let absorbs = fused.absorbs;
    let mut cx = NodeRun {
        hand_to: fused.hand,
        node,
        params: p,
        ins,
        opts,
        packs,
        fuse_relu: absorbs.contains(&Absorb::Relu),
        fuse_gelu: absorbs.contains(&Absorb::Gelu),
        residual: fused.residual,
        fuse_pool: absorbs.iter().find_map(|a| match *a {
            Absorb::MaxPool { kernel, stride } => Some((kernel, stride)),
            Absorb::Relu | Absorb::Gelu | Absorb::Residual | Absorb::Identity => None,
        }),
        rng,
        bn_stats: &mut out.bn_stats,
    };
    node.op
        .def()
        .forward(&mut cx)
        .map_err(|e| Error::at_node(&node.name, node.op.kind(), e))
}

/// Converts every floating-point tensor of a store to `dtype` (f64 for gradient checks);
/// integer tensors (masks, indices) stay as they are.
pub fn store_to_dtype(p: &ParamStore, dtype: DType) -> Result<ParamStore> {
    let mut out = ParamStore::new();
    for (k, t) in p.iter() {
        let float = crate::tensor::Dtype::of(t.dtype()).is_some_and(|d| d.is_float());
        out.insert(
            k.clone(),
            if float { t.to_dtype(dtype)? } else { t.clone() },
        );
    }
    Ok(out)
}

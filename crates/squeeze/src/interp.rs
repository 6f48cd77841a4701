//! The interpreter: runs a [`Graph`] on candle tensors, for inference (eval mode) and for
//! training (train mode: batch statistics in BatchNorm, dropout active, parameters may be
//! `Var`s so candle's autograd sees them). Taps capture the inputs and output of any
//! named node during a forward — calibration, OBS/GPTQ Hessians and FitNets hints read
//! activations this way. Intermediate values are dropped after their last use.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use candle_core::{DType, Tensor};
use rand::{rngs::StdRng, SeedableRng};

use crate::error::{Error, Result};
use crate::graph::{Graph, Node, Op, INPUT, MASK};
use crate::kinds::linear::packed_linears;
use crate::kinds::qlinear::qlinear_group;
use crate::kinds::{node_err, NodeRun};
use crate::ops::batchnorm;
use crate::ops::packed::PackCache;
use crate::params::ParamStore;

/// Options of one forward pass.
#[derive(Debug, Clone, Default)]
pub struct ForwardOpts {
    /// Train mode: batch statistics, dropout on.
    pub train: bool,
    /// Seed of the dropout masks of this pass.
    pub seed: u64,
    /// Nodes whose inputs and output to capture.
    pub taps: HashSet<String>,
    /// Packed Linear weights for small-batch inference (kept by a long-lived caller such
    /// as a text encoder); without it small batches use the unpacked kernel.
    pub packed: Option<Arc<PackCache>>,
}

impl ForwardOpts {
    pub fn eval() -> Self {
        Self::default()
    }
    pub fn train(seed: u64) -> Self {
        ForwardOpts {
            train: true,
            seed,
            ..Self::default()
        }
    }
}

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

/// Index of the last node that reads each value (the output counts as read at the end).
fn last_uses(g: &Graph) -> HashMap<&str, usize> {
    let mut last = HashMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        for inp in &n.inputs {
            last.insert(inp.as_str(), i);
        }
    }
    last.insert(g.output.as_str(), usize::MAX);
    last
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

fn run_graph(
    g: &Graph,
    p: &ParamStore,
    inputs: Vec<(&str, Tensor)>,
    opts: &ForwardOpts,
) -> Result<ForwardOut> {
    let last = last_uses(g);
    let x = inputs[0].1.clone();
    let mut vals: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in inputs {
        vals.insert(name.to_string(), t);
    }
    let mut out = ForwardOut {
        output: x.clone(),
        taps: HashMap::new(),
        bn_stats: Vec::new(),
    };
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let fused = fusable_relu(g, opts);
    let fused_relu: HashMap<usize, usize> = fused.iter().map(|(b, r)| (*r, *b)).collect();
    let pools = fusable_pool(g, opts, &fused);
    let fused_pool: HashMap<usize, usize> = pools.iter().map(|(c, q)| (*q, *c)).collect();
    let siblings = sibling_groups(g, opts);
    // outputs of group members computed ahead, together with their group's first node
    let mut ahead: HashMap<String, Tensor> = HashMap::new();
    for (i, node) in g.nodes.iter().enumerate() {
        if let Some(&bn) = fused_relu.get(&i) {
            // this ReLU was computed together with node `bn` (BatchNorm or int8 convolution)
            let v = vals
                .remove(&g.nodes[bn].name)
                .ok_or_else(|| Error::Graph("fused value missing".into()))?;
            vals.insert(node.name.clone(), v);
            continue;
        }
        if fused_pool.contains_key(&i) {
            // this max-pool was applied by the int8 convolution its input comes from
            let v = vals
                .remove(&node.inputs[0])
                .ok_or_else(|| Error::Graph("fused value missing".into()))?;
            vals.insert(node.name.clone(), v);
            continue;
        }
        let ins = node
            .inputs
            .iter()
            .map(|n| {
                vals.get(n)
                    .cloned()
                    .ok_or_else(|| Error::Graph(format!("value `{n}` missing")))
            })
            .collect::<Result<Vec<_>>>()?;
        let group = match (siblings.get(&i), opts.packed.as_deref()) {
            (Some(grp), cache) => {
                let nodes: Vec<&Node> = grp.iter().map(|&j| &g.nodes[j]).collect();
                match (&node.op, cache) {
                    (Op::QLinear(_), _) => qlinear_group(&nodes, p, &ins[0])?,
                    (_, Some(cache)) => packed_linears(&nodes, p, &ins[0], cache)?,
                    _ => None,
                }
            }
            _ => None,
        };
        let y = if let Some(v) = ahead.remove(&node.name) {
            v
        } else if let Some(mut ys) = group {
            for (&j, v) in siblings[&i][1..].iter().zip(ys.drain(1..)) {
                ahead.insert(g.nodes[j].name.clone(), v);
            }
            ys.remove(0)
        } else {
            // a fused node also applies the ReLU that reads it (skipped above)
            let fuse = (
                fused.contains_key(&i),
                pools.get(&i).and_then(|&q| pool_of(g, q)),
            );
            run_node(node, p, &ins, opts, fuse, &mut rng, &mut out)?
        };
        if opts.taps.contains(&node.name) {
            out.taps.insert(
                node.name.clone(),
                Tap {
                    inputs: ins.clone(),
                    output: y.clone(),
                },
            );
        }
        for inp in &node.inputs {
            if last.get(inp.as_str()) == Some(&i) {
                vals.remove(inp);
            }
        }
        vals.insert(node.name.clone(), y);
    }
    out.output = vals
        .remove(&g.output)
        .ok_or_else(|| Error::Graph(format!("output `{}` was not computed", g.output)))?;
    Ok(out)
}

/// ReLU fusion (training and inference): index of a BatchNorm or int8 convolution node →
/// index of the ReLU that is its only reader (neither tapped nor the output); the node
/// applies it (`NodeRun::fuse_relu`).
fn fusable_relu(g: &Graph, opts: &ForwardOpts) -> HashMap<usize, usize> {
    let mut out = HashMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        let fuses = matches!(n.op, Op::BatchNorm(_) | Op::QConv2d(_));
        if !fuses || opts.taps.contains(&n.name) || g.output == n.name {
            continue;
        }
        let readers: Vec<usize> = (0..g.nodes.len())
            .filter(|&j| g.nodes[j].inputs.contains(&n.name))
            .collect();
        if let [j] = readers[..] {
            if matches!(g.nodes[j].op, Op::Relu)
                && g.nodes[j].inputs.len() == 1
                && !opts.taps.contains(&g.nodes[j].name)
            {
                out.insert(i, j);
            }
        }
    }
    out
}

/// Max-pool fusion (inference): index of an int8 convolution → index of the max-pool
/// that is the only reader of its output, or of the ReLU fused into it (neither the
/// convolution, the ReLU nor the pool tapped or the graph's output); the convolution
/// pools its products before rescaling them (`NodeRun::fuse_pool`).
fn fusable_pool(
    g: &Graph,
    opts: &ForwardOpts,
    relus: &HashMap<usize, usize>,
) -> HashMap<usize, usize> {
    let mut out = HashMap::new();
    if opts.train {
        return out;
    }
    let free = |j: usize| !opts.taps.contains(&g.nodes[j].name) && g.output != g.nodes[j].name;
    for (i, n) in g.nodes.iter().enumerate() {
        let tail = relus.get(&i).copied().unwrap_or(i);
        if !matches!(n.op, Op::QConv2d(_)) || !free(i) || !free(tail) {
            continue;
        }
        let readers: Vec<usize> = (0..g.nodes.len())
            .filter(|&j| g.nodes[j].inputs.contains(&g.nodes[tail].name))
            .collect();
        if let [j] = readers[..] {
            if pool_of(g, j).is_some() && g.nodes[j].inputs.len() == 1 && free(j) {
                out.insert(i, j);
            }
        }
    }
    out
}

/// Window and stride of node `j` when it is a max-pool.
fn pool_of(g: &Graph, j: usize) -> Option<(usize, usize)> {
    match &g.nodes[j].op {
        Op::MaxPool2d(m) => Some((m.kernel, m.stride)),
        _ => None,
    }
}

/// Grouped inference: sibling Linear (packed) or qlinear nodes (none tapped), keyed by the
/// index of each group's first node.
fn sibling_groups(g: &Graph, opts: &ForwardOpts) -> HashMap<usize, Vec<usize>> {
    if opts.train {
        return HashMap::new();
    }
    g.sibling_linears()
        .into_iter()
        .filter(|grp| grp.iter().all(|&j| !opts.taps.contains(&g.nodes[j].name)))
        .map(|grp| (grp[0], grp))
        .collect()
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

/// Runs one node through its kind's definition.
fn run_node(
    node: &Node,
    p: &ParamStore,
    ins: &[Tensor],
    opts: &ForwardOpts,
    (fuse_relu, fuse_pool): (bool, Option<(usize, usize)>),
    rng: &mut StdRng,
    out: &mut ForwardOut,
) -> Result<Tensor> {
    let mut cx = NodeRun {
        node,
        params: p,
        ins,
        opts,
        fuse_relu,
        fuse_pool,
        rng,
        bn_stats: &mut out.bn_stats,
    };
    node.op.def().forward(&mut cx).map_err(|e| match e {
        Error::Graph(m) if !m.starts_with("node `") => node_err(node, m),
        e => e,
    })
}

/// Converts every floating-point tensor of a store to `dtype` (f64 for gradient checks);
/// integer tensors (masks, indices) stay as they are.
pub fn store_to_dtype(p: &ParamStore, dtype: DType) -> Result<ParamStore> {
    let mut out = ParamStore::new();
    for (k, t) in p.iter() {
        let float = crate::kinds::Dtype::of(t.dtype()).is_some_and(|d| d.is_float());
        out.insert(
            k.clone(),
            if float { t.to_dtype(dtype)? } else { t.clone() },
        );
    }
    Ok(out)
}

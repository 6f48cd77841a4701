//! The interpreter: runs a [`Graph`] on candle tensors, for inference (eval mode) and for
//! training (train mode: batch statistics in BatchNorm, dropout active, parameters may be
//! `Var`s so candle's autograd sees them). Taps capture the inputs and output of any
//! named node during a forward — calibration, OBS/GPTQ Hessians and FitNets hints read
//! activations this way. Intermediate values are dropped after their last use.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use candle_core::{DType, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::graph::{Graph, Lookup, Node, Op, INPUT, MASK};
use crate::ops::packed::PackCache;
use crate::ops::{act, batchnorm, conv, fast, pool, text};
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
    let fused = if opts.train {
        fusable_bn_relu(g, opts)
    } else {
        HashMap::new()
    };
    let fused_relu: HashMap<usize, usize> = fused.iter().map(|(b, r)| (*r, *b)).collect();
    let siblings = sibling_groups(g, opts);
    // outputs of group members computed ahead, together with their group's first node
    let mut ahead: HashMap<String, Tensor> = HashMap::new();
    for (i, node) in g.nodes.iter().enumerate() {
        if let Some(&bn) = fused_relu.get(&i) {
            // this ReLU was computed together with BatchNorm node `bn`
            let v = vals
                .remove(&g.nodes[bn].name)
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
            (Some(grp), Some(cache)) => {
                let nodes: Vec<&Node> = grp.iter().map(|&j| &g.nodes[j]).collect();
                packed_linears(&nodes, p, &ins[0], cache)?
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
            // a fused BatchNorm also applies the ReLU that reads it (skipped above)
            let fuse_relu = fused.contains_key(&i);
            run_node(node, p, &ins, opts, fuse_relu, &mut rng, &mut out)?
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

/// Train-mode fusion: BatchNorm index → index of the ReLU that is its only reader (and
/// neither is tapped nor the output).
fn fusable_bn_relu(g: &Graph, opts: &ForwardOpts) -> HashMap<usize, usize> {
    let mut out = HashMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        if !matches!(n.op, Op::BatchNorm { .. })
            || opts.taps.contains(&n.name)
            || g.output == n.name
        {
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

/// Packed inference: groups of sibling Linear nodes (none tapped), keyed by the index of
/// each group's first node.
fn sibling_groups(g: &Graph, opts: &ForwardOpts) -> HashMap<usize, Vec<usize>> {
    if opts.train || opts.packed.is_none() {
        return HashMap::new();
    }
    g.sibling_linears()
        .into_iter()
        .filter(|grp| grp.iter().all(|&j| !opts.taps.contains(&g.nodes[j].name)))
        .map(|grp| (grp[0], grp))
        .collect()
}

/// Small-batch inference of Linear nodes that all read `x` — one node, or siblings such as
/// an attention layer's q/k/v — as one packed product over their concatenated weights,
/// split back into each node's output; `None` where the packed path does not apply (a
/// large batch, or tensors that track gradients).
fn packed_linears(
    nodes: &[&Node],
    p: &ParamStore,
    x: &Tensor,
    cache: &PackCache,
) -> Result<Option<Vec<Tensor>>> {
    let dims = x.dims().to_vec();
    let x2 = x.flatten_to(dims.len().saturating_sub(2))?; // [M, in]
    let (mut names, mut ws, mut bs) = (Vec::new(), Vec::new(), Vec::new());
    for node in nodes {
        let w = param(p, node, "weight")?;
        if let Op::Linear { bias: true, .. } = node.op {
            bs.push(param(p, node, "bias")?.clone());
        } else if nodes.len() > 1 {
            bs.push(Tensor::zeros(w.dim(0)?, DType::F32, w.device())?);
        }
        names.push(format!("{}.weight", node.name));
        ws.push(w);
    }
    let mut all: Vec<&Tensor> = vec![&x2];
    all.extend(ws.iter().copied().chain(&bs));
    if !small_inference(&x2, &all)? {
        return Ok(None);
    }
    let bias = match &bs[..] {
        [] => None,
        [b] => Some(b.clone()),
        _ => Some(Tensor::cat(&bs, 0)?),
    };
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let y = cache.get_many(&names, &ws)?.matmul(&x2, bias.as_ref())?;
    let mut outs = Vec::with_capacity(ws.len());
    let mut at = 0;
    for w in &ws {
        let n = w.dim(0)?;
        let part = if ws.len() == 1 {
            y.clone()
        } else {
            y.narrow(1, at, n)?.contiguous()?
        };
        outs.push(part.reshape(with_last(&dims, n))?);
        at += n;
    }
    Ok(Some(outs))
}

/// Eval-mode forward returning only the output.
pub fn predict(g: &Graph, p: &ParamStore, x: &Tensor) -> Result<Tensor> {
    Ok(forward(g, p, x, &ForwardOpts::eval())?.output)
}

fn param<'a>(p: &'a ParamStore, node: &Node, name: &str) -> Result<&'a Tensor> {
    p.get(&format!("{}.{name}", node.name))
}

fn run_node(
    node: &Node,
    p: &ParamStore,
    ins: &[Tensor],
    opts: &ForwardOpts,
    fuse_relu: bool,
    rng: &mut StdRng,
    out: &mut ForwardOut,
) -> Result<Tensor> {
    let x = &ins[0];
    Ok(match &node.op {
        Op::Linear { bias, .. } => {
            let b = if *bias {
                Some(param(p, node, "bias")?)
            } else {
                None
            };
            let packed = match opts.packed.as_deref() {
                Some(cache) => packed_linears(&[node], p, x, cache)?,
                None => None,
            };
            match packed {
                Some(mut y) => y.remove(0),
                None => linear(x, param(p, node, "weight")?, b)?,
            }
        }
        Op::Conv2d {
            stride,
            padding,
            groups,
            bias,
            out_channels,
            ..
        } => {
            let w = param(p, node, "weight")?;
            let y = conv::conv2d(x, w, *stride, *padding, *groups)?;
            if *bias {
                let b = param(p, node, "bias")?.reshape((1, *out_channels, 1, 1))?;
                y.broadcast_add(&b)?
            } else {
                y
            }
        }
        Op::BatchNorm { eps, .. } => {
            let (g, b) = (param(p, node, "weight")?, param(p, node, "bias")?);
            if opts.train {
                let (y, st) = batchnorm::train(x, g, b, *eps, fuse_relu)?;
                out.bn_stats.push((node.name.clone(), st));
                y
            } else {
                let (m, v) = (
                    param(p, node, "running_mean")?,
                    param(p, node, "running_var")?,
                );
                batchnorm::eval(x, g, b, m, v, *eps)?
            }
        }
        Op::Relu => act::relu(x)?,
        Op::MaxPool2d { kernel, stride } => act::max_pool2d(x, *kernel, *stride)?,
        Op::AvgPool2d { kernel, stride } => pool::avg_pool2d(x, *kernel, *stride)?,
        Op::GlobalAvgPool => pool::global_avg_pool(x)?,
        Op::Flatten => x.flatten_from(1)?,
        Op::Add => {
            let mut acc = x.clone();
            for t in &ins[1..] {
                acc = (acc + t)?;
            }
            acc
        }
        Op::Concat => Tensor::cat(ins, 1)?,
        Op::Dropout { p: prob } => {
            if opts.train && *prob > 0.0 {
                dropout(x, *prob, rng)?
            } else {
                x.clone()
            }
        }
        Op::Embedding { lookup, .. } => {
            let table = param(p, node, "weight")?;
            let (n, l) = x.dims2()?;
            match lookup {
                Lookup::Tokens => text::lookup(table, x)?,
                Lookup::Positions => text::positions(table, n, l)?,
                Lookup::Segments => text::positions(&table.narrow(0, 0, 1)?, n, 1)?
                    .broadcast_as((n, l, table.dim(1)?))?,
            }
        }
        Op::LayerNorm { eps, .. } => {
            let (w, b) = (param(p, node, "weight")?, param(p, node, "bias")?);
            if inference(&[x, w, b]) {
                fast::layer_norm(x, w, b, *eps)?
            } else {
                text::layer_norm(x, w, b, *eps)?
            }
        }
        Op::Gelu if inference(&[x]) => fast::gelu(x)?,
        Op::Gelu => text::gelu(x)?,
        Op::Attention { heads, head_dim } => {
            let (k, v, m) = (&ins[1], &ins[2], &ins[3]);
            if inference(&[x, k, v]) {
                fast::attention(x, k, v, m, *heads, *head_dim)?
            } else {
                text::attention(x, k, v, m, *heads, *head_dim)?
            }
        }
        Op::MeanPool => text::mean_pool(x, &ins[1])?,
        Op::L2Normalize => text::l2_normalize(x)?,
    })
}

/// Whether the fast inference kernels may run: f32 tensors none of which tracks gradients.
fn inference(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| !t.track_op() && t.dtype() == DType::F32)
}

/// Whether a product over rows `x2` [M, in] takes the small-batch inference kernels: few
/// rows, and f32 tensors none of which tracks gradients.
fn small_inference(x2: &Tensor, ts: &[&Tensor]) -> Result<bool> {
    Ok(x2.dim(0)? <= fast::SMALL_M && inference(ts))
}

/// `dims` with its last axis replaced by `n`.
fn with_last(dims: &[usize], n: usize) -> Vec<usize> {
    let mut out = dims.to_vec();
    *out.last_mut().expect("rank ≥ 1") = n;
    out
}

/// `x Wᵀ + b` over the last axis of `x` [..., in] → [..., out].
fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let x2 = x.flatten_to(dims.len().saturating_sub(2))?; // [M, in]
    let mut all = vec![&x2, w];
    all.extend(b);
    let y = if small_inference(&x2, &all)? {
        fast::linear(&x2, w, b)?
    } else {
        let y = x2.matmul(&w.t()?)?; // [M, in]·[in, out] → [M, out]
        match b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        }
    };
    Ok(y.reshape(with_last(&dims, w.dim(0)?))?)
}

/// Inverted dropout with a seeded mask (so a resumed run draws the same masks).
fn dropout(x: &Tensor, prob: f64, rng: &mut StdRng) -> Result<Tensor> {
    let keep = 1.0 - prob;
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| {
            if rng.random::<f64>() < keep {
                (1.0 / keep) as f32
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    Ok((x * mask)?)
}

/// Converts every tensor of a store to `dtype` (f64 for gradient checks).
pub fn store_to_dtype(p: &ParamStore, dtype: DType) -> Result<ParamStore> {
    let mut out = ParamStore::new();
    for (k, t) in p.iter() {
        out.insert(k.clone(), t.to_dtype(dtype)?);
    }
    Ok(out)
}

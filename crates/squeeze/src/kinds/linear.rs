//! Fully connected layer `y = x Wᵀ + b` over the last axis. Tensors `weight` `[out, in]`
//! (weight-decayed) and `bias` `[out]`. Coupling: consumes its input's channels as weight
//! columns and creates a new channel space (weight rows, bias). Forward: candle's matmul
//! (differentiable, large batches); at inference packed panels (`crate::ops::packed`, any
//! batch) when the caller keeps a pack cache, else for a few rows the weight-streaming
//! kernel of `crate::ops::fast` — both tested against the matmul. An inference-only
//! model may keep only the packed panels (`crate::interp::keep_packed_only`), and at
//! inference the layer applies the GELU or the residual sum that is its only reader
//! inside the packed product's tiles.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::couple::{Coupler, Seg};
use super::fake_quant::FakeQuant;
use super::{inference, with_last, Absorb, ForwardOpts, Inputs, LayerKind, NodeRun, TensorSpec};
use super::{Node, Op};
use crate::error::Result;
use crate::onnx::{blocks, Lower};
use crate::ops::fast;
use crate::ops::pack_cache::{LinearGroup, PackCache};
use crate::ops::packed::{chain, Then};
use crate::params::ParamStore;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Linear {
    pub in_features: usize,
    pub out_features: usize,
    pub bias: bool,
    /// Simulated quantization while it trains (quantization-aware training).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quant: Option<FakeQuant>,
}

impl LayerKind for Linear {
    fn onnx(&self, cx: &mut Lower) -> Result<String> {
        if self.quant.is_some() {
            return Err(super::fake_quant::not_exportable());
        }
        let (_, w) = cx.values("weight")?;
        blocks::linear_f32(cx, &w, (self.out_features, self.in_features), self.bias)
    }
    fn name(&self) -> &'static str {
        "linear"
    }
    fn joins_siblings(&self) -> bool {
        self.quant.is_none()
    }
    fn absorbs(&self, reader: Absorb, so_far: &[Absorb], train: bool) -> bool {
        !train && matches!(reader, Absorb::Gelu | Absorb::Residual) && so_far.is_empty()
    }
    /// With a pack cache (a long-lived text encoder), siblings run as one packed product.
    fn forward_siblings(
        &self,
        nodes: &[&Node],
        params: &ParamStore,
        x: &Tensor,
        opts: &ForwardOpts,
        _: &PackCache,
    ) -> Result<Option<Vec<Tensor>>> {
        match opts.packed.as_deref() {
            Some(cache) => packed_linears(nodes, params, x, cache, Then::Nothing),
            None => Ok(None),
        }
    }
    fn release_packed(
        &self,
        nodes: &[&Node],
        params: &ParamStore,
        packs: &PackCache,
    ) -> Result<Vec<String>> {
        release_packed(nodes, params, packs)
    }
    fn chains(&self) -> bool {
        self.quant.is_none()
    }
    /// With a pack cache, a wide hidden layer between two products (an FFN: 1,536 units
    /// into 384 outputs) runs as one column-then-row job.
    fn forward_chain(
        &self,
        nodes: [&Node; 2],
        params: &ParamStore,
        x: &Tensor,
        (gelu, residual): (bool, Option<&Tensor>),
        opts: &ForwardOpts,
    ) -> Result<Option<Tensor>> {
        let Some(cache) = opts.packed.as_deref() else {
            return Ok(None);
        };
        packed_chain(nodes, params, x, cache, (gelu, residual))
    }
    fn inputs(&self) -> Inputs {
        Inputs::Values
    }
    fn out_shape(&self, ins: &[&[usize]]) -> std::result::Result<Vec<usize>, String> {
        if let Some(q) = &self.quant {
            q.check()?;
        }
        super::rows_shape(ins, self.in_features, self.out_features)
    }
    fn tensors(&self) -> Vec<TensorSpec> {
        let mut t = vec![TensorSpec::weight(
            "weight",
            vec![self.out_features, self.in_features],
        )];
        if self.bias {
            t.push(TensorSpec::param("bias", vec![self.out_features]));
        }
        if let Some(q) = &self.quant {
            t.extend(q.tensors(self.out_features));
        }
        t
    }
    fn macs(&self, _ins: &[&[usize]], out: &[usize]) -> u64 {
        super::numel(out) * self.in_features as u64
    }
    fn couple(&self, cx: &mut Coupler, node: &Node, ins: &[Vec<Seg>], _: &[&[usize]]) -> Vec<Seg> {
        cx.consume(&ins[0], &node.name);
        cx.new_space(&node.name, self.out_features, self.bias)
    }
    fn forward(&self, cx: &mut NodeRun) -> Result<Tensor> {
        let (y, fused) = self.product(cx)?;
        // the residual sum as the Add node would have computed it
        let y = match cx.residual {
            Some(r) if !fused && inference(&[&y, r]) => fast::sum(&[&y, r])?,
            Some(r) if !fused => (y + r)?,
            _ => y,
        };
        super::act::absorbed_gelu(y, cx.fuse_gelu && !fused)
    }
    fn refreshed(&self, dims: &dyn Fn(&str) -> Option<Vec<usize>>, _: &[&[usize]]) -> Option<Op> {
        let d = dims("weight")?;
        Some(Op::Linear(Linear {
            out_features: d[0],
            in_features: d[1],
            ..self.clone()
        }))
    }
}

impl Linear {
    /// `x Wᵀ + b` on the path the tensors and the caller's pack cache allow, and whether
    /// the absorbed GELU or residual ([`NodeRun::fuse_gelu`], [`NodeRun::residual`]) was
    /// applied inside it (the packed path applies them tile by tile).
    fn product(&self, cx: &NodeRun) -> Result<(Tensor, bool)> {
        if let Some(q) = &self.quant {
            let w = q.weight(cx, cx.param("weight")?)?;
            let x = q.input(cx, cx.x())?;
            let b = if self.bias {
                Some(cx.param("bias")?)
            } else {
                None
            };
            return Ok((linear(&x, &w, b)?, false));
        }
        if let Some(cache) = cx.opts.packed.as_deref() {
            let fused = cx.fuse_gelu || cx.residual.is_some();
            let (node, p, x) = (&[cx.node][..], cx.params, cx.x());
            let y = match (cx.fuse_gelu, cx.residual) {
                (_, Some(r)) if super::inference(&[r]) => {
                    crate::ops::with_cpu::<f32, _>(r, |rs| {
                        packed_linears(node, p, x, cache, Then::Add(rs))
                    })??
                }
                (_, Some(_)) => None,
                (true, None) => packed_linears(node, p, x, cache, Then::Gelu)?,
                (false, None) => packed_linears(node, p, x, cache, Then::Nothing)?,
            };
            if let Some(mut y) = y {
                return Ok((y.remove(0), fused));
            }
        }
        let b = if self.bias {
            Some(cx.param("bias")?)
        } else {
            None
        };
        Ok((linear(cx.x(), cx.param("weight")?, b)?, false))
    }
}

/// Whether a product over rows `x2` `[M, in]` takes the small-batch inference kernels: few
/// rows, and f32 tensors none of which tracks gradients.
fn small_inference(x2: &Tensor, ts: &[&Tensor]) -> Result<bool> {
    Ok(x2.dim(0)? <= fast::SMALL_M && inference(ts))
}

/// `x Wᵀ + b` over the last axis of `x` `[..., in]` → `[..., out]`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let x2 = x.flatten_to(dims.len().saturating_sub(2))?; // [M, in]
    let mut all = vec![&x2, w];
    all.extend(b);
    let y = if small_inference(&x2, &all)? {
        fast::linear(&x2, w, b)?
    } else if super::all_f32(&all) {
        crate::ops::linear::linear(&x2, w, b)?
    } else {
        crate::ops::linear::reference(&x2, w, b)?
    };
    Ok(y.reshape(with_last(&dims, w.dim(0)?))?)
}

fn param<'a>(p: &'a ParamStore, node: &Node, name: &str) -> Result<&'a Tensor> {
    p.get(&format!("{}.{name}", node.name))
}

/// The stored weight names of `nodes`, in order.
fn weight_names(nodes: &[&Node]) -> Vec<String> {
    nodes.iter().map(|n| format!("{}.weight", n.name)).collect()
}

/// Packs the f32 weights of Linear `nodes` (one node, or siblings run as one product) for
/// good into `cache` and returns their names, which the caller drops from the store;
/// nothing when a node is fake-quantized or a weight is not a plain f32 tensor.
pub(crate) fn release_packed(
    nodes: &[&Node],
    p: &ParamStore,
    cache: &PackCache,
) -> Result<Vec<String>> {
    let plain = |n: &&Node| matches!(&n.op, Op::Linear(Linear { quant: None, .. }));
    if !nodes.iter().all(plain) {
        return Ok(Vec::new());
    }
    let names = weight_names(nodes);
    let ws = names.iter().map(|n| p.get(n)).collect::<Result<Vec<_>>>()?;
    if !inference(&ws) {
        return Ok(Vec::new());
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    cache.release_many(&refs, &ws)?;
    Ok(names)
}

/// Inference of Linear nodes that all read `x` — one node, or siblings such as an attention
/// layer's q/k/v — as one packed product over their concatenated weights, split back into
/// each node's output; `None` where the packed path does not apply (tensors that track
/// gradients, or are not f32). Weights released to the cache ([`release_packed`]) run
/// from their packed form alone.
pub(crate) fn packed_linears(
    nodes: &[&Node],
    p: &ParamStore,
    x: &Tensor,
    cache: &PackCache,
    then: Then,
) -> Result<Option<Vec<Tensor>>> {
    let Some(group) = group_of(nodes, p, x, cache)? else {
        return Ok(None);
    };
    let dims = x.dims().to_vec();
    let x2 = x.flatten_to(dims.len().saturating_sub(2))?; // [M, in]
    let y = group
        .packed
        .matmul_then(crate::isa::active()?, &x2, group.bias.as_ref(), then)?;
    let total = group.rows.iter().sum();
    let y = y.reshape(with_last(&dims, total))?;
    if group.rows.len() == 1 {
        return Ok(Some(vec![y]));
    }
    // siblings' outputs stay column ranges of the joined product (the attention core
    // reads them in place; kernels that need dense rows copy)
    let last = dims.len().saturating_sub(1);
    let mut outs = Vec::with_capacity(group.rows.len());
    let mut at = 0;
    for &n in &group.rows {
        outs.push(y.narrow(last, at, n)?);
        at += n;
    }
    Ok(Some(outs))
}

/// The packed group of Linear `nodes` reading `x`: the one kept in `cache` while the
/// store's stamp holds, else resolved anew and kept; `None` where the packed path does
/// not apply.
fn group_of(
    nodes: &[&Node],
    p: &ParamStore,
    x: &Tensor,
    cache: &PackCache,
) -> Result<Option<Arc<LinearGroup>>> {
    let same = |g: &LinearGroup| {
        g.stamp == p.stamp()
            && g.nodes.len() == nodes.len()
            && g.nodes.iter().zip(nodes).all(|(a, n)| *a == n.name)
    };
    Ok(match cache.group(&nodes[0].name)? {
        Some(g) if same(&g) && inference(&[x]) => Some(g),
        _ => match resolve(nodes, p, x, cache)? {
            Some(g) => Some(cache.keep_group(g)?),
            None => None,
        },
    })
}

/// Linear `first`, GELU where `gelu`, then Linear `second` (adding `residual`) over the
/// last axis of `x`, as one job ([`chain::chain`]) — `None` where the packed path does not
/// apply or the hidden layer is narrower than the output (then the partial outputs that
/// cross between the cores would outweigh the hidden values they replace).
fn packed_chain(
    [first, second]: [&Node; 2],
    p: &ParamStore,
    x: &Tensor,
    cache: &PackCache,
    (gelu, residual): (bool, Option<&Tensor>),
) -> Result<Option<Tensor>> {
    let Some(a) = group_of(&[first], p, x, cache)? else {
        return Ok(None);
    };
    let dims = x.dims().to_vec();
    // (x stands for the second's input too: only its dtype, device and gradients count)
    let Some(b) = group_of(&[second], p, x, cache)? else {
        return Ok(None);
    };
    let (n1, n2) = (a.packed.n, b.packed.n);
    if n1 < n2 || b.packed.k != n1 || residual.is_some_and(|r| !inference(&[r])) {
        return Ok(None);
    }
    let x2 = x.flatten_to(dims.len().saturating_sub(2))?; // [M, in]
    let m = x2.dim(0)?;
    let bias = |g: &LinearGroup| g.bias.as_ref().map(crate::params::f32_values).transpose();
    let (ba, bb) = (bias(&a)?, bias(&b)?);
    let isa = crate::isa::active()?;
    let then1 = if gelu { Then::Gelu } else { Then::Nothing };
    let run = |xs: &[f32], r: Option<&[f32]>| {
        let one = chain::Link {
            w: &a.packed,
            bias: ba.as_deref(),
        };
        let two = chain::Link {
            w: &b.packed,
            bias: bb.as_deref(),
        };
        let then2 = r.map_or(Then::Nothing, Then::Add);
        chain::chain(isa, xs, m, (one, then1), (two, then2))
    };
    let y = crate::ops::with_cpu::<f32, _>(&x2, |xs| match residual {
        Some(r) => crate::ops::with_cpu::<f32, _>(r, |rs| run(xs, Some(rs))),
        None => Ok(run(xs, None)),
    })???;
    let y = Tensor::from_vec(y, (m, n2), x.device())?;
    Ok(Some(y.reshape(with_last(&dims, n2))?))
}

/// The packed group of Linear `nodes` reading `x`, resolved from the store (or from the
/// weights released to the cache); `None` where the packed path does not apply.
fn resolve(
    nodes: &[&Node],
    p: &ParamStore,
    x: &Tensor,
    cache: &PackCache,
) -> Result<Option<LinearGroup>> {
    let names = weight_names(nodes);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    // the cache is asked only for weights the store no longer holds
    let released = match p.contains(names[0]) {
        true => None,
        false => cache.released(&names)?,
    };
    let stored = match &released {
        Some(_) => Vec::new(),
        None => names.iter().map(|n| p.get(n)).collect::<Result<Vec<_>>>()?,
    };
    let rows = match &released {
        Some((rows, _)) => rows.clone(),
        None => stored
            .iter()
            .map(|w| w.dim(0))
            .collect::<candle_core::Result<_>>()?,
    };
    let mut bs = Vec::new();
    for (node, &n) in nodes.iter().zip(&rows) {
        if let Op::Linear(Linear { bias: true, .. }) = node.op {
            bs.push(param(p, node, "bias")?.clone());
        } else if nodes.len() > 1 {
            bs.push(Tensor::zeros(n, DType::F32, x.device())?);
        }
    }
    let mut all: Vec<&Tensor> = vec![x];
    all.extend(stored.iter().copied().chain(&bs));
    // every batch size: the packed panels beat the general GEMM at 384 rows too (1.1–1.4×
    // on the MiniLM shapes, docs/profiling.md)
    if !inference(&all) {
        return match released {
            Some(_) => Err(crate::error::Error::Graph(format!(
                "`{}` was packed for inference only and runs on f32 inputs without gradients",
                names.join("`, `")
            ))),
            None => Ok(None),
        };
    }
    let bias = match &bs[..] {
        [] => None,
        [b] => Some(b.clone()),
        _ => Some(Tensor::cat(&bs, 0)?),
    };
    let packed = match released {
        Some((_, packed)) => packed,
        None => cache.get_many(&names, &stored)?,
    };
    Ok(Some(LinearGroup {
        stamp: p.stamp(),
        nodes: nodes.iter().map(|n| n.name.clone()).collect(),
        rows,
        bias,
        packed,
    }))
}

pub(crate) fn example() -> super::Example {
    super::Example {
        op: Op::Linear(Linear {
            in_features: 6,
            out_features: 5,
            bias: true,
            quant: None,
        }),
        inputs: vec![vec![6]],
        tensors: vec![],
    }
}

//! Sibling qlinear nodes that read the same rows (an attention block's q/k/v) run as one
//! kernel call at inference: dynamic int8 through the int8 panels' joined product, int4
//! weights with int8 activation blocks through the nibble panels' joined job
//! (`crate::ops::qgemm::panel_q4::products`); the rows are quantized once for all.

use candle_core::{DType, Tensor};

use super::{panels, released, ActQuant, QLinear};
use crate::error::Result;
use crate::kinds::{with_last, with_node_view, Node, Op};
use crate::ops::pack_cache::PackCache;
use crate::ops::qgemm::panel_blocked::{linear_packed, quantize_offset, PackedPart};
use crate::ops::qgemm::panel_q4::{self, quantize_q8, PackedQ4, Q4Part};
use crate::ops::qgemm::quantize::ACT_BLOCK;
use crate::ops::with_cpu;
use crate::params::ParamStore;

/// Inference of sibling dynamic-int8 qlinear nodes reading the same `x` (an attention
/// block's q/k/v): the rows quantized once and every node's weight rows in one parallel
/// kernel call; `None` where that does not apply (other schemes, gradients, f64).
pub(crate) fn qlinear_group(
    nodes: &[&Node],
    p: &ParamStore,
    x: &Tensor,
    packs: &PackCache,
) -> Result<Option<Vec<Tensor>>> {
    let ops: Option<Vec<&QLinear>> = nodes
        .iter()
        .map(|n| match &n.op {
            Op::QLinear(q) if q.act == ActQuant::Dynamic => Some(q),
            _ => None,
        })
        .collect();
    let Some(ops) = ops else { return Ok(None) };
    let k = ops[0].in_features;
    let bits = |b: u8| ops.iter().all(|o| o.layout.bits == b);
    let (int4, int8) = (bits(4), bits(8));
    if !(int4 || int8) || x.track_op() || x.dtype() != DType::F32 {
        return Ok(None);
    }
    if ops.iter().any(|o| o.in_features != k) {
        return Ok(None);
    }
    let dims = x.dims().to_vec();
    let x2 = x.flatten_to(dims.len().saturating_sub(2))?; // [M, in]
    let m = x2.dim(0)?;
    let ys = with_cpu::<f32, _>(&x2, |xs| match int4 {
        true => q4_products(nodes, &ops, p, xs, packs),
        false => int8_products(nodes, &ops, p, xs, packs),
    })??;
    ys.into_iter()
        .zip(&ops)
        .map(|(y, o)| {
            let t = Tensor::from_vec(y, (m, o.out_features), x.device())?;
            Ok(t.reshape(with_last(&dims, o.out_features))?)
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// [`qlinear_group`] for dynamic int8 siblings: rows `xs` quantized once, every node's
/// int8 panels in one [`linear_packed`] call.
fn int8_products(
    nodes: &[&Node],
    ops: &[&QLinear],
    p: &ParamStore,
    xs: &[f32],
    packs: &PackCache,
) -> Result<Vec<Vec<f32>>> {
    let k = ops[0].in_features;
    let get = |n: &Node, s: &str| p.get(&format!("{}.{s}", n.name));
    let mut held = Vec::with_capacity(nodes.len());
    for (n, o) in nodes.iter().zip(ops) {
        let dims = (o.out_features, o.in_features);
        let scales = crate::params::f32_values(get(n, "weight_scale")?)?;
        let w = match released(p, packs, &n.name)? {
            Some(w) => w,
            None => with_node_view(p, &n.name, o.layout, dims, |v| {
                panels(packs, get(n, "weight_q")?.id(), v, ACT_BLOCK)
            })?,
        };
        held.push((w, scales, bias(p, n, o)?));
    }
    let isa = crate::isa::active()?;
    let kp = held.first().map_or(k, |h| h.0.stride());
    let q = quantize_offset(isa, xs, (k, kp), None, ACT_BLOCK)?;
    let parts: Vec<PackedPart> = held
        .iter()
        .map(|(w, scales, bias)| PackedPart {
            w,
            scales,
            bias: bias.as_deref(),
        })
        .collect();
    linear_packed(isa, q.rows(), &parts, xs.len() / k.max(1))
}

/// [`qlinear_group`] for int4 × int8 siblings: rows `xs` quantized to int8 blocks once,
/// every node's nibble panels in one parallel job ([`panel_q4::products`]).
fn q4_products(
    nodes: &[&Node],
    ops: &[&QLinear],
    p: &ParamStore,
    xs: &[f32],
    packs: &PackCache,
) -> Result<Vec<Vec<f32>>> {
    let mut held = Vec::with_capacity(nodes.len());
    for (n, o) in nodes.iter().zip(ops) {
        let dims = (o.out_features, o.in_features);
        let codes = p.get(&format!("{}.weight_q", n.name))?.id();
        let w = with_node_view(p, &n.name, o.layout, dims, |v| {
            packs.int4(codes, || PackedQ4::pack(v))
        })?;
        held.push((w, bias(p, n, o)?));
    }
    let isa = crate::isa::active()?;
    let parts: Vec<Q4Part> = held
        .iter()
        .map(|(w, bias)| Q4Part {
            w,
            bias: bias.as_deref(),
        })
        .collect();
    panel_q4::products(
        isa,
        &quantize_q8(isa, xs, ops[0].in_features)?,
        &parts,
        false,
    )
}

/// Node `n`'s bias values, if its layer `o` has one.
fn bias(p: &ParamStore, n: &Node, o: &QLinear) -> Result<Option<Vec<f32>>> {
    o.bias
        .then(|| p.get(&format!("{}.bias", n.name)))
        .transpose()?
        .map(crate::params::f32_values)
        .transpose()
}

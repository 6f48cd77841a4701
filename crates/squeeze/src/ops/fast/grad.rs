//! The encoder kernels with hand-written backward passes, for training (distillation of
//! sentence-encoder students). LayerNorm, erf-GELU and the attention core are each one
//! autograd node here: the forward is the inference kernel of [`super`], the backward one
//! pass per row (LayerNorm: Ba et al. 2016's dx = σ⁻¹·(g − mean g − x̂·mean(g·x̂)), g = dy·γ),
//! per element (GELU: Φ(x) + x·φ(x)) or per (sample, head) (attention: softmax's Jacobian
//! dS = P ⊙ (dP − rowsum(dP ⊙ P)), with P recomputed from q and k). The compositions of
//! candle ops in [`crate::ops::text`] — about 9 nodes per LayerNorm and 15 per attention
//! core, each of whose gradients candle allocates, zero-fills and adds — remain the
//! reference these are tested against, and serve every dtype other than f32.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{attention_rows, dot, erf, gelu_all, layer_norm_rows, Geo, PAR_MACS};
use crate::error::Result;
use crate::isa::{self, Isa};
use crate::ops::{op_err, op_f32s, slice_of, with_cpu};

/// Rows per parallel task of the LayerNorm backward.
const LN_ROWS: usize = 32;

fn active() -> candle_core::Result<Isa> {
    isa::active().map_err(op_err)
}

fn tensor(v: Vec<f32>, shape: &Shape) -> candle_core::Result<Tensor> {
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu)
}

struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "squeeze-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = *l1.dims().last().unwrap_or(&1);
        let (x, w, b) = (slice_of(s1, l1)?, slice_of(s2, l2)?, slice_of(s3, l3)?);
        let y = layer_norm_rows(active()?, x, d, w, b, self.eps);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = w.dim(0)?;
        let (xs, ws, dys) = (op_f32s(x)?, op_f32s(w)?, op_f32s(dy)?);
        let (dx, dw, db) = layer_norm_backward(&xs, &ws, &dys, d, self.eps);
        Ok((
            Some(tensor(dx, x.shape())?),
            Some(tensor(dw, w.shape())?),
            Some(tensor(db, w.shape())?),
        ))
    }
}

/// One row's dx (into `dx`), accumulating dγ and dβ.
fn layer_norm_row_grad(
    (x, dy, dx): (&[f32], &[f32], &mut [f32]),
    w: &[f32],
    eps: f32,
    (dw, db): (&mut [f32], &mut [f32]),
) {
    let d = x.len() as f32;
    let mean = x.iter().sum::<f32>() / d;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d;
    let rstd = 1.0 / (var + eps).sqrt();
    let (mut mg, mut mgx) = (0f32, 0f32);
    for i in 0..x.len() {
        let xh = (x[i] - mean) * rstd;
        let g = dy[i] * w[i];
        mg += g;
        mgx += g * xh;
        dw[i] += dy[i] * xh;
        db[i] += dy[i];
    }
    let (mg, mgx) = (mg / d, mgx / d);
    for i in 0..x.len() {
        let xh = (x[i] - mean) * rstd;
        dx[i] = rstd * (dy[i] * w[i] - mg - xh * mgx);
    }
}

/// LayerNorm's backward over rows of width `d`: (dx, dγ, dβ).
pub fn layer_norm_backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    d: usize,
    eps: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut dx = vec![0f32; x.len()];
    let step = LN_ROWS * d;
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(step)
        .zip(x.par_chunks(step).zip(dy.par_chunks(step)))
        .map(|(dxc, (xc, dyc))| {
            let (mut dw, mut db) = (vec![0f32; d], vec![0f32; d]);
            for ((xr, dyr), dxr) in xc
                .chunks_exact(d)
                .zip(dyc.chunks_exact(d))
                .zip(dxc.chunks_exact_mut(d))
            {
                layer_norm_row_grad((xr, dyr, dxr), w, eps, (&mut dw, &mut db));
            }
            (dw, db)
        })
        .collect();
    let (mut dw, mut db) = (vec![0f32; d], vec![0f32; d]);
    for (pw, pb) in partials {
        dw.iter_mut().zip(&pw).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(&pb).for_each(|(a, b)| *a += b);
    }
    (dx, dw, db)
}

/// Layer normalization over the last axis as one differentiable node (f32).
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &b.contiguous()?,
        LayerNormOp { eps: eps as f32 },
    )?)
}

struct GeluOp;

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "squeeze-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = gelu_all(active()?, slice_of::<f32>(s, l)?.to_vec());
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (xs, dys) = (op_f32s(x)?, op_f32s(dy)?);
        Ok(Some(tensor(gelu_backward(&xs, &dys), x.shape())?))
    }
}

/// d GELU(x)/dx · dy = (Φ(x) + x·φ(x))·dy, erf by the same approximation as the forward.
pub fn gelu_backward(x: &[f32], dy: &[f32]) -> Vec<f32> {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let r = std::f32::consts::FRAC_1_SQRT_2;
    let mut dx = vec![0f32; x.len()];
    dx.par_chunks_mut(1 << 14)
        .zip(x.par_chunks(1 << 14).zip(dy.par_chunks(1 << 14)))
        .for_each(|(o, (xc, dc))| {
            for ((o, &x), &g) in o.iter_mut().zip(xc).zip(dc) {
                let cdf = 0.5 * (1.0 + erf(x * r));
                let pdf = INV_SQRT_2PI * (-0.5 * x * x).exp();
                *o = g * (cdf + x * pdf);
            }
        });
    dx
}

/// GELU (erf form) as one differentiable node (f32).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(GeluOp)?)
}

/// The attention core over q, k, v; the key mask is a constant of the op.
struct AttentionOp {
    mask: Vec<f32>,
    g: Geo,
    n: usize,
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "squeeze-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let qkv = (slice_of(s1, l1)?, slice_of(s2, l2)?, slice_of(s3, l3)?);
        let out = attention_rows(active()?, qkv, &self.mask, self.g, self.n);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        dctx: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (qs, ks, vs, ds) = (op_f32s(q)?, op_f32s(k)?, op_f32s(v)?, op_f32s(dctx)?);
        let (dq, dk, dv) = attention_backward((&qs, &ks, &vs), &ds, &self.mask, self.g, self.n);
        let s = q.shape();
        Ok((
            Some(tensor(dq, s)?),
            Some(tensor(dk, s)?),
            Some(tensor(dv, s)?),
        ))
    }
}

/// The keys sample `s` attends over: its real tokens (all of them when it has none, as
/// the forward does).
fn real_keys(m: &[f32], s: usize, l: usize) -> Vec<usize> {
    let keys: Vec<usize> = (0..l).filter(|&j| m[s * l + j] > 0.5).collect();
    if keys.is_empty() {
        (0..l).collect()
    } else {
        keys
    }
}

/// dq, dk, dv of sample·head `nh`, each [L, head_dim].
fn head_grad(
    (q, k, v): (&[f32], &[f32], &[f32]),
    dctx: &[f32],
    m: &[f32],
    g: Geo,
    nh: usize,
) -> [Vec<f32>; 3] {
    let (l, hd) = (g.l, g.head_dim);
    let scale = 1.0 / (hd as f32).sqrt();
    let (s, h) = (nh / g.heads, nh % g.heads);
    let off = |i: usize| (s * l + i) * g.w + h * hd;
    let keys = real_keys(m, s, l);
    let (mut dq, mut dk, mut dv) = (vec![0f32; l * hd], vec![0f32; l * hd], vec![0f32; l * hd]);
    let mut p = vec![0f32; keys.len()];
    let mut dp = vec![0f32; keys.len()];
    for i in 0..l {
        let qi = &q[off(i)..off(i) + hd];
        let di = &dctx[off(i)..off(i) + hd];
        for (pj, &j) in p.iter_mut().zip(&keys) {
            let bias = (1.0 - m[s * l + j]) * crate::ops::text::MASK_BIAS as f32;
            *pj = dot(qi, &k[off(j)..off(j) + hd]) * scale + bias;
        }
        let max = p.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let z: f32 = p
            .iter_mut()
            .map(|pj| {
                *pj = (*pj - max).exp();
                *pj
            })
            .sum();
        p.iter_mut().for_each(|pj| *pj /= z);
        for ((dpj, &pj), &j) in dp.iter_mut().zip(&p).zip(&keys) {
            *dpj = dot(di, &v[off(j)..off(j) + hd]);
            for (a, b) in dv[j * hd..(j + 1) * hd].iter_mut().zip(di) {
                *a += pj * b;
            }
        }
        let sum: f32 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
        let dqi = &mut dq[i * hd..(i + 1) * hd];
        for ((&pj, &dpj), &j) in p.iter().zip(&dp).zip(&keys) {
            let ds = pj * (dpj - sum) * scale;
            for (a, b) in dqi.iter_mut().zip(&k[off(j)..off(j) + hd]) {
                *a += ds * b;
            }
            for (a, b) in dk[j * hd..(j + 1) * hd].iter_mut().zip(qi) {
                *a += ds * b;
            }
        }
    }
    [dq, dk, dv]
}

/// The attention core's backward: (dq, dk, dv), each [N, L, w] flattened.
fn attention_backward(
    qkv: (&[f32], &[f32], &[f32]),
    dctx: &[f32],
    m: &[f32],
    g: Geo,
    n: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let heads = g.heads;
    let per_head = |nh: usize| head_grad(qkv, dctx, m, g, nh);
    let parts: Vec<[Vec<f32>; 3]> = if n * heads * g.l * g.l * g.head_dim >= PAR_MACS {
        (0..n * heads).into_par_iter().map(per_head).collect()
    } else {
        (0..n * heads).map(per_head).collect()
    };
    let mut out = [
        vec![0f32; n * g.l * g.w],
        vec![0f32; n * g.l * g.w],
        vec![0f32; n * g.l * g.w],
    ];
    for (nh, grads) in parts.iter().enumerate() {
        let (s, h) = (nh / heads, nh % heads);
        for (o, gr) in out.iter_mut().zip(grads) {
            for i in 0..g.l {
                o[(s * g.l + i) * g.w + h * g.head_dim..][..g.head_dim]
                    .copy_from_slice(&gr[i * g.head_dim..(i + 1) * g.head_dim]);
            }
        }
    }
    let [dq, dk, dv] = out;
    (dq, dk, dv)
}

/// The attention core on q, k, v [N, L, H·Dh] and mask [N, L] as one differentiable node
/// (f32; the mask takes no gradient).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    heads: usize,
    head_dim: usize,
) -> Result<Tensor> {
    let (n, l, w) = super::attention_dims((q, k, v), mask, heads, head_dim)?;
    let mask = with_cpu::<f32, _>(&mask.to_dtype(candle_core::DType::F32)?, |s| s.to_vec())?;
    let op = AttentionOp {
        mask,
        g: Geo {
            l,
            w,
            heads,
            head_dim,
        },
        n,
    };
    Ok(q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)?)
}

/// Rows of an embedding table picked by token ids (a constant of the op).
struct LookupOp {
    ids: Vec<u32>,
}

impl CustomOp1 for LookupOp {
    fn name(&self) -> &'static str {
        "squeeze-lookup"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (num, dim) = l.shape().dims2()?;
        let table = slice_of::<f32>(s, l)?;
        let mut out = Vec::with_capacity(self.ids.len() * dim);
        for &id in &self.ids {
            let r = id as usize;
            if r >= num {
                candle_core::bail!("token id {r} is outside the embedding table of {num} rows")
            }
            out.extend_from_slice(&table[r * dim..(r + 1) * dim]);
        }
        Ok((CpuStorage::F32(out), Shape::from((self.ids.len(), dim))))
    }

    /// The table's gradient: each looked-up row's dY added into its row, zeros elsewhere
    /// (one buffer; candle's index_select backward copies a zeroed table once more).
    fn bwd(
        &self,
        table: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (num, dim) = table.dims2()?;
        let dys = op_f32s(dy)?;
        let mut g = vec![0f32; num * dim];
        for (&id, row) in self.ids.iter().zip(dys.chunks_exact(dim)) {
            let r = id as usize;
            g[r * dim..(r + 1) * dim]
                .iter_mut()
                .zip(row)
                .for_each(|(a, b)| *a += b);
        }
        Ok(Some(tensor(g, table.shape())?))
    }
}

/// Rows of `table` [num, dim] (f32) picked by `ids` [N, L] → [N, L, dim], differentiable
/// in the table.
pub fn lookup(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (n, l) = ids.dims2()?;
    let dim = table.dim(1)?;
    let ids: Vec<u32> = ids
        .flatten_all()?
        .to_dtype(candle_core::DType::U32)?
        .to_vec1()?;
    let rows = table.contiguous()?.apply_op1(LookupOp { ids })?;
    Ok(rows.reshape((n, l, dim))?)
}

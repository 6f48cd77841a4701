//! The scaled dot-product attention core (Vaswani et al. 2017) over `heads` heads of
//! `head_dim`, with the padding mask, its three paths side by side: the reference composed
//! from candle operations (softmax max-subtracted, masked keys biased by −10⁹), the
//! inference kernel (one fused loop nest per sample and head — on AVX-512 the kernel of
//! `attention_avx512` for head widths that are multiples of 16 — reading q, k and v where
//! they lie, column ranges of one joined product included, skipping masked keys, the
//! heads split over the inference team and each writing its own columns of the output)
//! and the training op (one autograd node per call; backward per
//! sample and head through softmax's Jacobian dS = P ⊙ (dP − rowsum(dP ⊙ P)), with P
//! recomputed from q and k).

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::fast::{dot, exp, lane_sum, PAR_MACS};
use super::team::{team, Ptr};
use super::{cpu_tensor, grad_isa, op_f32s, slice_of, with_cpu, with_rows};
use crate::error::{Error, Result};
use crate::isa::{self, Isa};

/// Additive attention bias for padded key positions (large enough that exp() is 0 in f32).
pub const MASK_BIAS: f64 = -1e9;

/// Softmax over the last axis, max-subtracted.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let e = x.broadcast_sub(&x.max_keepdim(D::Minus1)?)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// The attention core: q, k, v [N, L, H·Dh], mask [N, L] → [N, L, H·Dh].
pub fn attention_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    heads: usize,
    head_dim: usize,
) -> Result<Tensor> {
    let (n, l, _) = q.dims3()?;
    // [N, L, H·Dh] → [N, H, L, Dh]
    let split = |t: &Tensor| -> Result<Tensor> {
        Ok(t.reshape((n, l, heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()?)
    };
    let (q, k, v) = (split(q)?, split(k)?, split(v)?);
    let scale = 1.0 / (head_dim as f64).sqrt();
    let scores = (q.matmul(&k.t()?)? * scale)?; // [N, H, L, L]
    let bias = key_bias(mask, q.dtype())?; // [N, 1, 1, L]
    let probs = softmax(&scores.broadcast_add(&bias)?)?;
    let ctx = probs.matmul(&v)?; // [N, H, L, Dh]
    Ok(ctx.transpose(1, 2)?.reshape((n, l, heads * head_dim))?)
}

/// (1 − mask) · MASK_BIAS as [N, 1, 1, L].
fn key_bias(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (n, l) = mask.dims2()?;
    let m = mask.to_dtype(dtype)?;
    let bias = ((m.ones_like()? - m)? * MASK_BIAS)?;
    Ok(bias.reshape((n, 1, 1, l))?)
}

/// The attention core on q, k, v [N, L, H·Dh] and mask [N, L] → [N, L, H·Dh], one fused
/// loop nest per (sample, head), reading the heads in place (no transposes).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    heads: usize,
    head_dim: usize,
) -> Result<Tensor> {
    attention_with(isa::active()?, q, k, v, mask, heads, head_dim)
}

/// Geometry of one attention call: L tokens, rows of width `w` = heads·head_dim.
#[derive(Clone, Copy)]
struct Geo {
    l: usize,
    /// The row width of the output: heads·head_dim.
    w: usize,
    /// The distance between consecutive rows of q, k and v (w, or more for column ranges
    /// of one joined q/k/v product).
    pitch: usize,
    heads: usize,
    head_dim: usize,
}

/// The keys of sample `s` that take part in its attention, with their additive biases:
/// its real (unmasked) keys only — a masked key's weight, exp(−10⁹·(1 − mask) + …), is 0 in
/// f32 anyway, so skipping padding changes nothing but the work. A sample without any
/// real key attends over all of them, as the reference does.
fn sample_keys(m: &[f32], l: usize, s: usize) -> (Vec<usize>, Vec<f32>) {
    let m = &m[s * l..(s + 1) * l];
    let mut keys: Vec<usize> = (0..l).filter(|&j| m[j] > 0.5).collect();
    if keys.is_empty() {
        keys = (0..l).collect();
    }
    let bias = keys
        .iter()
        .map(|&j| (1.0 - m[j]) * MASK_BIAS as f32)
        .collect();
    (keys, bias)
}

/// The context vectors [L, head_dim] of sample·head `nh` over the sample's `keys` (with
/// their `bias`, from [`sample_keys`]).
#[inline(always)]
fn head_ctx(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    g: Geo,
    nh: usize,
    (keys, bias): (&[usize], &[f32]),
) -> Vec<f32> {
    let (l, hd) = (g.l, g.head_dim);
    let scale = 1.0 / (hd as f32).sqrt();
    let (s, h) = (nh / g.heads, nh % g.heads);
    let off = |i: usize| (s * l + i) * g.pitch + h * hd;
    let mut ctx = vec![0f32; l * hd];
    let mut p = vec![0f32; keys.len()];
    for i in 0..l {
        let qi = &q[off(i)..off(i) + hd];
        for ((pj, &j), b) in p.iter_mut().zip(keys).zip(bias) {
            *pj = dot(qi, &k[off(j)..off(j) + hd]) * scale + b;
        }
        let max = p.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        // one vector pass: the weights' exponentials (polynomial, so it vectorizes) and sum
        for pj in p.iter_mut() {
            *pj = exp(*pj - max);
        }
        let inv = 1.0 / lane_sum(&p, |x| x);
        let ci = &mut ctx[i * hd..(i + 1) * hd];
        for (pj, &j) in p.iter().zip(keys) {
            let a = pj * inv;
            for (c, vv) in ci.iter_mut().zip(&v[off(j)..off(j) + hd]) {
                *c += a * vv;
            }
        }
    }
    ctx
}

isa_variants!(head_ctx_on, head_ctx, (q: &[f32], k: &[f32], v: &[f32], g: Geo, nh: usize, keys: (&[usize], &[f32])) -> Vec<f32>);

/// (N, L, H·Dh) of an attention core's q, k, v, checked against each other, the heads and
/// the mask [N, L].
fn attention_dims(
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    mask: &Tensor,
    heads: usize,
    head_dim: usize,
) -> Result<(usize, usize, usize)> {
    let (n, l, w) = q.dims3()?;
    if w != heads * head_dim
        || k.dims() != q.dims()
        || v.dims() != q.dims()
        || mask.dims() != [n, l]
    {
        return Err(Error::Graph(format!(
            "attention: q {:?}, k {:?}, v {:?} must be [N, L, {heads}·{head_dim}] and the mask [N, L] (got {:?})",
            q.dims(), k.dims(), v.dims(), mask.dims()
        )));
    }
    Ok((n, l, w))
}

/// [`attention`] on path `isa`.
pub fn attention_with(
    isa: Isa,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    heads: usize,
    head_dim: usize,
) -> Result<Tensor> {
    let isa = isa::require(isa)?;
    let (n, l, w) = attention_dims((q, k, v), mask, heads, head_dim)?;
    // q, k, v are read where they lie — column ranges of one joined product included —
    // unless their row pitches differ
    let same = |t: &Tensor| super::pitch_of(t) == super::pitch_of(q);
    if !(same(k) && same(v)) {
        let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
        return attention_with(isa, &q, &k, &v, mask, heads, head_dim);
    }
    let mut out = super::output_buffer(n * l * w);
    // each head's context written straight into its columns
    with_rows(q, |q, pitch| {
        with_rows(k, |k, _| {
            with_rows(v, |v, _| {
                with_cpu::<f32, _>(&mask.to_dtype(DType::F32)?, |m| {
                    let g = Geo {
                        l,
                        w,
                        pitch,
                        heads,
                        head_dim,
                    };
                    let at = Ptr(out.as_mut_ptr());
                    let samples: Vec<_> = (0..n).map(|s| sample_keys(m, l, s)).collect();
                    let head = |nh: usize| {
                        let (keys, bias) = &samples[nh / heads];
                        // SAFETY: head nh writes only its own columns of its sample's rows
                        if !unsafe { fast_head(isa, (q, k, v), g, nh, (keys, bias), at) } {
                            let ctx = head_ctx_on(isa, q, k, v, g, nh, (keys, bias));
                            unsafe { put_head(at, &ctx, g, nh) }
                        }
                    };
                    let parts = team().size();
                    if n * heads * l * l * head_dim < TEAM_MACS {
                        (0..n * heads).for_each(head);
                    } else if heads >= parts {
                        // one contiguous range of heads (of every sample) per member: the
                        // range a joined q/k/v product computed on that member
                        // (`PackedLinear::interleaved`), so the heads are read where they
                        // were written
                        team().run(parts, &|p| {
                            for hh in p * heads / parts..(p + 1) * heads / parts {
                                (0..n).for_each(|s| head(s * heads + hh));
                            }
                        });
                    } else {
                        // fewer heads than members: every (sample, head) claimed in turn
                        team().run(n * heads, &head);
                    }
                })
            })
        })
    })????;
    // SAFETY: the heads of every sample wrote all their columns of all its rows
    unsafe { super::written(&mut out, n * l * w) };
    Ok(Tensor::from_vec(out, (n, l, w), &Device::Cpu)?)
}

/// The multiply-adds of an inference call from which its heads split over the team (a
/// batch-1 sentence of 12 heads × 32 at 12 tokens is 55k).
const TEAM_MACS: usize = 1 << 14;

/// Head `nh`'s context written straight into its columns at `at` by the AVX-512 kernel,
/// where the path has it and the head width is 16, 32, …, 128; false (nothing written)
/// otherwise.
///
/// # Safety
/// `at` holds N·L·w values, and no other writer touches these columns of these rows.
#[allow(unused_variables)]
unsafe fn fast_head(
    isa: Isa,
    (q, k, v): (&[f32], &[f32], &[f32]),
    g: Geo,
    nh: usize,
    (keys, bias): (&[usize], &[f32]),
    at: Ptr<f32>,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx512 | Isa::Avx512Vnni | Isa::Amx) && g.head_dim.is_multiple_of(16) {
        use super::attention_avx512::{head_ctx as kernel, Head};
        let h = Head {
            l: g.l,
            pitch: g.pitch,
            w: g.w,
            sample: nh / g.heads,
            col: (nh % g.heads) * g.head_dim,
            keys,
            bias,
            scale: 1.0 / (g.head_dim as f32).sqrt(),
        };
        // SAFETY: isa::require granted AVX-512F; the caller owns these columns
        match g.head_dim / 16 {
            1 => kernel::<1>(q, k, v, &h, at.0),
            2 => kernel::<2>(q, k, v, &h, at.0),
            3 => kernel::<3>(q, k, v, &h, at.0),
            4 => kernel::<4>(q, k, v, &h, at.0),
            5 => kernel::<5>(q, k, v, &h, at.0),
            6 => kernel::<6>(q, k, v, &h, at.0),
            7 => kernel::<7>(q, k, v, &h, at.0),
            8 => kernel::<8>(q, k, v, &h, at.0),
            _ => return false,
        }
        return true;
    }
    false
}

/// Writes head `nh`'s context `ctx` ([L, head_dim]) into its columns of the output rows
/// ([N, L, w] at `at`).
///
/// # Safety
/// `at` holds N·L·w values, and no other writer touches these columns of these rows.
unsafe fn put_head(at: Ptr<f32>, ctx: &[f32], g: Geo, nh: usize) {
    let (s, h) = (nh / g.heads, nh % g.heads);
    for (i, c) in ctx.chunks_exact(g.head_dim).enumerate() {
        let row = at.slice((s * g.l + i) * g.w + h * g.head_dim, g.head_dim);
        row.copy_from_slice(c);
    }
}

/// The attention core over `n` samples of q, k, v ([N, L, w] flattened) → [N, L, w]
/// (training: heads split over rayon's pool).
fn attention_rows(
    isa: Isa,
    (q, k, v): (&[f32], &[f32], &[f32]),
    m: &[f32],
    g: Geo,
    n: usize,
) -> Vec<f32> {
    let (l, w, heads, head_dim) = (g.l, g.w, g.heads, g.head_dim);
    let samples: Vec<_> = (0..n).map(|s| sample_keys(m, l, s)).collect();
    let per_head = |nh: usize| {
        let (keys, bias) = &samples[nh / heads];
        head_ctx_on(isa, q, k, v, g, nh, (keys, bias))
    };
    let parts: Vec<Vec<f32>> = if n * heads * l * l * head_dim >= PAR_MACS {
        (0..n * heads).into_par_iter().map(per_head).collect()
    } else {
        (0..n * heads).map(per_head).collect()
    };
    let mut out = vec![0f32; n * l * w];
    let at = Ptr(out.as_mut_ptr());
    for (nh, ctx) in parts.iter().enumerate() {
        // SAFETY: one head at a time, each within the buffer
        unsafe { put_head(at, ctx, g, nh) }
    }
    out
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
        let out = attention_rows(grad_isa()?, qkv, &self.mask, self.g, self.n);
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
            Some(cpu_tensor(dq, s)?),
            Some(cpu_tensor(dk, s)?),
            Some(cpu_tensor(dv, s)?),
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
            let bias = (1.0 - m[s * l + j]) * MASK_BIAS as f32;
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
pub fn attention_train(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    heads: usize,
    head_dim: usize,
) -> Result<Tensor> {
    let (n, l, w) = attention_dims((q, k, v), mask, heads, head_dim)?;
    let mask = with_cpu::<f32, _>(&mask.to_dtype(candle_core::DType::F32)?, |s| s.to_vec())?;
    let op = AttentionOp {
        mask,
        g: Geo {
            l,
            w,
            pitch: w,
            heads,
            head_dim,
        },
        n,
    };
    Ok(q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)?)
}

//! Transformer-encoder operations (BERT, Devlin et al. 2019; sentence embeddings by mean
//! pooling, Reimers & Gurevych 2019): embedding lookup, layer normalization, erf-GELU, the
//! scaled dot-product attention core (Vaswani et al. 2017) and masked mean pooling.
//!
//! Every function here is composed from candle operations that have a backward pass
//! (candle's fused `layer_norm`/`softmax_last_dim` have none, which silently leaves
//! parameters without gradients). They run in any float dtype, which the f64 gradient
//! checks use, and are the reference for the f32 kernels training actually runs
//! ([`super::fast::grad`]: one autograd node each, hand-written backward).

use candle_core::{DType, Tensor, D};

use crate::error::{Error, Result};

/// Additive attention bias for padded key positions (large enough that exp() is 0 in f32).
pub const MASK_BIAS: f64 = -1e9;

/// Rows of `table` [num, dim] picked by `ids` [N, L] → [N, L, dim].
pub fn lookup(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (n, l) = ids.dims2()?;
    let num = table.dim(0)?;
    let max = ids
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::U32)?
        .to_scalar::<u32>()?;
    if max as usize >= num {
        return Err(Error::Data(format!(
            "token id {max} is outside the embedding table of {num} rows"
        )));
    }
    let rows = table.index_select(&ids.flatten_all()?, 0)?; // [N·L, dim]
    Ok(rows.reshape((n, l, table.dim(1)?))?)
}

/// Rows 0..L of `table`, the same for every sample: [N, L, dim].
pub fn positions(table: &Tensor, n: usize, l: usize) -> Result<Tensor> {
    let num = table.dim(0)?;
    if l > num {
        return Err(Error::Data(format!(
            "a sequence of {l} tokens is longer than the model's {num} positions"
        )));
    }
    let rows = table.narrow(0, 0, l)?.unsqueeze(0)?; // [1, L, dim]
    Ok(rows.broadcast_as((n, l, table.dim(1)?))?)
}

/// Layer normalization over the last axis: (x − mean) / √(var + eps) · w + b.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(xn.broadcast_mul(w)?.broadcast_add(b)?)
}

/// GELU, erf form: x · Φ(x).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    Ok(x.gelu_erf()?)
}

/// Softmax over the last axis, max-subtracted.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let e = x.broadcast_sub(&x.max_keepdim(D::Minus1)?)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// The attention core: q, k, v [N, L, H·Dh], mask [N, L] → [N, L, H·Dh].
pub fn attention(
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

/// Mean of `h` [N, L, d] over the tokens where `mask` [N, L] is 1 → [N, d].
pub fn mean_pool(h: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask.to_dtype(h.dtype())?.unsqueeze(2)?; // [N, L, 1]
    let sum = h.broadcast_mul(&m)?.sum(1)?; // [N, d]
    let count = m.sum(1)?.clamp(1e-9, f64::INFINITY)?; // [N, 1]
    Ok(sum.broadcast_div(&count)?)
}

/// x / max(‖x‖₂, 1e-12) over the last axis.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::INFINITY)?;
    Ok(x.broadcast_div(&norm)?)
}

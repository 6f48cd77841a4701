//! Sentence-embedding pooling (Reimers & Gurevych 2019): the mean of the hidden states
//! over the unmasked tokens, the first token's state (CLS pooling), the maximum over the
//! unmasked tokens, and the L2 normalization, composed from candle operations that have a
//! backward pass.

use candle_core::{Tensor, D};

use crate::error::Result;

/// Mean of `h` [N, L, d] over the tokens where `mask` [N, L] is 1 → [N, d].
pub fn mean_pool(h: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask.to_dtype(h.dtype())?.unsqueeze(2)?; // [N, L, 1]
    let sum = h.broadcast_mul(&m)?.sum(1)?; // [N, d]
    let count = m.sum(1)?.clamp(1e-9, f64::INFINITY)?; // [N, 1]
    Ok(sum.broadcast_div(&count)?)
}

/// The first token's hidden state: `h` [N, L, d] → [N, d].
pub fn cls_pool(h: &Tensor) -> Result<Tensor> {
    Ok(h.narrow(1, 0, 1)?.squeeze(1)?)
}

/// The value padded tokens take before the maximum (sentence-transformers' choice).
pub const MAX_POOL_FILL: f64 = -1e9;

/// Maximum of `h` [N, L, d] over the tokens where `mask` [N, L] is 1 → [N, d]: padded
/// tokens are first set to [`MAX_POOL_FILL`] (h·m + (1 − m)·fill, exact for real tokens).
pub fn max_pool(h: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask.to_dtype(h.dtype())?.unsqueeze(2)?; // [N, L, 1]
    let fill = ((1.0 - &m)? * MAX_POOL_FILL)?;
    Ok(h.broadcast_mul(&m)?.broadcast_add(&fill)?.max(1)?)
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

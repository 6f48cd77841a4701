//! Sentence-embedding pooling (Reimers & Gurevych 2019): the mean of the hidden states
//! over the unmasked tokens, the first token's state (CLS pooling), the maximum over the
//! unmasked tokens, and the L2 normalization, composed from candle operations that have a
//! backward pass; at inference the mean is one pass over the unmasked tokens instead.

use candle_core::{DType, Device, Tensor, D};

use super::with_cpu;
use crate::error::{Error, Result};

/// Mean of `h` [N, L, d] over the tokens where `mask` [N, L] is 1 → [N, d].
pub fn mean_pool(h: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask.to_dtype(h.dtype())?.unsqueeze(2)?; // [N, L, 1]
    let sum = h.broadcast_mul(&m)?.sum(1)?; // [N, d]
    let count = m.sum(1)?.clamp(1e-9, f64::INFINITY)?; // [N, 1]
    Ok(sum.broadcast_div(&count)?)
}

/// [`mean_pool`] without a backward pass (f32 `h`): one pass over the unmasked tokens,
/// summed in the same order, so it equals the composition (up to the sign of zero).
pub fn mean_pool_inference(h: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (n, l, d) = h.dims3()?;
    if mask.dims() != [n, l] {
        return Err(Error::Graph(format!(
            "mean_pool: hidden states {:?} need a mask of [{n}, {l}], got {:?}",
            h.dims(),
            mask.dims()
        )));
    }
    let m = mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let y = with_cpu::<f32, _>(h, |hs| {
        let mut y = vec![0f32; n * d];
        for (s, ys) in y.chunks_exact_mut(d.max(1)).enumerate() {
            let mut count = 0f32;
            for (t, &w) in m[s * l..(s + 1) * l].iter().enumerate() {
                count += w;
                if w != 0.0 {
                    let row = &hs[(s * l + t) * d..(s * l + t + 1) * d];
                    for (a, v) in ys.iter_mut().zip(row) {
                        *a += v * w;
                    }
                }
            }
            let count = count.max(1e-9);
            for a in ys.iter_mut() {
                *a /= count;
            }
        }
        y
    })?;
    Ok(Tensor::from_vec(y, (n, d), &Device::Cpu)?)
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

/// [`l2_normalize`] without a backward pass (f32 `x`): each row in one pass into a new
/// buffer instead of five candle operations, their allocations and broadcasts (a
/// batch-1 sentence's last step). The norm's sum runs in another order than candle's, so
/// it equals the composition within a rounding of the norm.
pub fn l2_normalize_inference(x: &Tensor) -> Result<Tensor> {
    let d = x.dims().last().copied().unwrap_or(1).max(1);
    let y = with_cpu::<f32, _>(x, |xs| {
        let mut y = vec![0f32; xs.len()];
        for (row, out) in xs.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            for (o, v) in out.iter_mut().zip(row) {
                *o = v / norm;
            }
        }
        y
    })?;
    Ok(Tensor::from_vec(y, x.shape(), &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Within a rounding of the norm of the candle composition: rows of 7 and of 384
    /// values, and an all-zero row (divided by the floor, so it stays zero).
    #[test]
    fn l2_normalize_inference_equals_the_composition() {
        for (n, d) in [(3, 7), (2, 384)] {
            let mut v: Vec<f32> = (0..n * d)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 9.0)
                .collect();
            v[..d].fill(0.0);
            let x = Tensor::from_vec(v, (n, d), &Device::Cpu).unwrap();
            let want = l2_normalize(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let got = l2_normalize_inference(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() <= L2_TOL * b.abs().max(1e-6), "{a} vs {b}");
            }
            assert!(got[..d].iter().all(|&z| z == 0.0));
        }
    }

    /// Relative difference allowed between the one-pass and the composed normalization.
    const L2_TOL: f32 = 1e-6;

    /// The one-pass mean equals the composition: padding at the end, holes, a sample
    /// without tokens.
    #[test]
    fn mean_pool_inference_equals_the_composition() {
        let (n, l, d) = (3, 5, 7);
        let h: Vec<f32> = (0..n * l * d)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 9.0)
            .collect();
        let h = Tensor::from_vec(h, (n, l, d), &Device::Cpu).unwrap();
        let m = [1u32, 1, 1, 0, 0, 0, 1, 0, 1, 1, 0, 0, 0, 0, 0];
        let mask = Tensor::from_vec(m.to_vec(), (n, l), &Device::Cpu).unwrap();
        let want = mean_pool(&h, &mask).unwrap().to_vec2::<f32>().unwrap();
        let got = mean_pool_inference(&h, &mask)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(got, want);
        assert!(mean_pool_inference(&h, &mask.narrow(1, 0, 4).unwrap()).is_err());
    }
}

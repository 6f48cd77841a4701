//! Pooling built from candle ops. Max pooling with window = stride as a reshape and two
//! `max` reductions (exact autograd, unlike candle 0.11's `max_pool2d` whose backward is
//! scaled wrong) is the plain reference of the fast kernel in [`super::act`]; average and
//! global average pooling are used by the interpreter directly.

use candle_core::{Tensor, D};

use crate::error::Result;

/// Floor-mode max pooling of [N, C, H, W] (reference; window = stride, else candle's
/// forward-only-trusted kernel).
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if kernel != stride {
        return Ok(x.max_pool2d_with_stride(kernel, stride)?);
    }
    let (ho, wo) = (h / kernel, w / kernel);
    // drop trailing rows/cols (floor mode), then [N,C,Ho,k,Wo,k] → max over the k axes
    let x = if ho * kernel != h || wo * kernel != w {
        x.narrow(2, 0, ho * kernel)?.narrow(3, 0, wo * kernel)?
    } else {
        x.clone()
    };
    let x = x.reshape((n, c, ho, kernel, wo, kernel))?; // [N,C,Ho,k,Wo,k]
    Ok(x.max(D::Minus1)?.max(3)?) // [N,C,Ho,Wo]
}

/// Floor-mode average pooling of [N, C, H, W].
pub fn avg_pool2d(x: &Tensor, kernel: usize, stride: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if kernel != stride {
        return Ok(x.avg_pool2d_with_stride(kernel, stride)?);
    }
    let (ho, wo) = (h / kernel, w / kernel);
    let x = x.narrow(2, 0, ho * kernel)?.narrow(3, 0, wo * kernel)?;
    let x = x.reshape((n, c, ho, kernel, wo, kernel))?; // [N,C,Ho,k,Wo,k]
    Ok(x.mean(D::Minus1)?.mean(3)?) // [N,C,Ho,Wo]
}

/// Mean over the spatial axes: [N, C, H, W] → [N, C].
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    Ok(x.reshape((n, c, h * w))?.mean(D::Minus1)?) // [N,C]
}

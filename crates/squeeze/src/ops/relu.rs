//! ReLU with a hand-written single-pass backward (candle's autograd builds its gradient
//! from three element-wise ops). The reference it is tested against is candle's `relu`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::conv_geo::Elem;
use super::{op_err, slice_of, with_cpu};

struct Relu;

fn relu_bwd<T: Elem + PartialOrd>(res: &Tensor, dy: &Tensor) -> crate::error::Result<Tensor> {
    let zero = T::default();
    let v = with_cpu::<T, _>(res, |r| {
        with_cpu::<T, _>(dy, |d| {
            r.par_iter()
                .zip(d)
                .map(|(r, d)| if *r > zero { *d } else { zero })
                .collect::<Vec<T>>()
        })
    })??;
    Ok(Tensor::from_vec(v, res.shape(), res.device())?)
}

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "squeeze-relu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match s.dtype() {
            DType::F32 => CpuStorage::F32(
                slice_of::<f32>(s, l)?
                    .par_iter()
                    .map(|v| v.max(0.0))
                    .collect(),
            ),
            DType::F64 => CpuStorage::F64(
                slice_of::<f64>(s, l)?
                    .par_iter()
                    .map(|v| v.max(0.0))
                    .collect(),
            ),
            dt => candle_core::bail!("relu: unsupported dtype {dt:?}"),
        };
        Ok((out, l.shape().clone()))
    }
    fn bwd(&self, _arg: &Tensor, res: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(relu_grad(res, dy).map_err(op_err)?))
    }
}

/// `dy` where the ReLU output `res` is positive, else 0 (one pass).
pub(crate) fn relu_grad(res: &Tensor, dy: &Tensor) -> crate::error::Result<Tensor> {
    match res.dtype() {
        DType::F32 => relu_bwd::<f32>(res, dy),
        _ => relu_bwd::<f64>(res, dy),
    }
}

/// ReLU with a one-pass backward.
pub fn relu(x: &Tensor) -> crate::error::Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(Relu)?)
}

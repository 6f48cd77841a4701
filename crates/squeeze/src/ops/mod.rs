//! Kernels the interpreter needs beyond candle's built-ins, each beside the plain
//! reference it is tested against: a fused training-mode BatchNorm (Ioffe & Szegedy 2015)
//! with a hand-written backward, and max pooling whose backward is correct (candle 0.11's
//! `max_pool2d` backward scales gradients by 1/(k·k)); and the transformer-encoder
//! operations, composed from differentiable candle primitives (the reference), with fused
//! f32 kernels for inference and for training ([`fast`], [`fast::grad`]).

pub mod batchnorm;
pub mod conv;
mod conv_geo;
pub mod depthwise;
pub mod fast;
pub mod linear;
pub mod pack_cache;
pub mod packed;
pub mod pool;
pub mod qconv;
pub mod qgemm;
pub mod relu;
pub mod sparse;
pub mod text;

#[cfg(test)]
mod tests;

use candle_core::{CpuStorage, Layout, Storage, Tensor, WithDType};

use crate::error::{Error, Result};

/// Borrow the contiguous CPU slice of a layout within a storage.
pub(crate) fn slice_of<'a, T: WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
) -> candle_core::Result<&'a [T]> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("kernel input must be contiguous".into()))?;
    Ok(&s.as_slice::<T>()?[a..b])
}

/// Runs `f` on the contiguous CPU data of `t` (made contiguous first if needed).
pub(crate) fn with_cpu<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => Ok(f(slice_of::<T>(cpu, layout)?)),
        _ => Err(Error::Graph("only CPU tensors are supported".into())),
    }
}

/// A library error raised inside a candle custom op, as candle's error type.
pub(crate) fn op_err(e: Error) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// A copy of the f32 data of `t`, inside a candle custom op (a backward pass).
pub(crate) fn op_f32s(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    with_cpu::<f32, _>(t, |s| s.to_vec()).map_err(op_err)
}

/// In-place access to a tensor's storage: candle's `InplaceOp1` carrying a closure.
struct InPlace<F>(std::sync::Mutex<Option<F>>);

impl<F: FnOnce(&mut [f32]) -> candle_core::Result<()>> candle_core::InplaceOp1 for InPlace<F> {
    fn name(&self) -> &'static str {
        "squeeze-in-place"
    }
    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let (a, b) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("in-place target must be contiguous".into()))?;
        let CpuStorage::F32(v) = s else {
            candle_core::bail!(
                "in-place target must be f32, got {:?}",
                candle_core::backend::BackendStorage::dtype(&*s)
            )
        };
        let f = self.0.lock().expect("in-place op lock").take();
        match f {
            Some(f) => f(&mut v[a..b]),
            None => candle_core::bail!("in-place op applied twice"),
        }
    }
}

/// Runs `f` on the f32 data of the contiguous CPU tensor `t`, writing into it in place
/// (every tensor sharing its storage sees the change).
pub(crate) fn with_cpu_mut(
    t: &Tensor,
    f: impl FnOnce(&mut [f32]) -> candle_core::Result<()>,
) -> Result<()> {
    Ok(t.inplace_op1(&InPlace(std::sync::Mutex::new(Some(f))))?)
}

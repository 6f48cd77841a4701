//! Kernels the interpreter needs beyond candle's built-ins, one file per op with its plain
//! reference, its inference kernel and its training path side by side: a fused
//! training-mode BatchNorm (Ioffe & Szegedy 2015) with a hand-written backward, max
//! pooling whose backward is correct (candle 0.11's `max_pool2d` backward scales gradients
//! by 1/(k·k)), convolutions, and the transformer-encoder operations ([`layer_norm`],
//! [`gelu`], [`attention`], [`embedding`], [`sentence`]), whose references are composed
//! from differentiable candle primitives. [`fast`] holds the weight-streaming Linear kernel
//! and the vector helpers the encoder kernels share.

/// Defines `$name(isa, args…)`: the portable body `$body` compiled three times — for
/// AVX-512F, for AVX2 + FMA and for baseline x86-64 — and run on path `isa` (which the
/// caller checked with [`isa::require`]). The compiler vectorizes the same Rust loops with
/// each path's registers, so the scalar build is the reference of the other two.
macro_rules! isa_variants {
    ($name:ident, $body:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        #[allow(clippy::too_many_arguments)]
        fn $name(isa: Isa, $($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                // SAFETY: `isa` passed isa::require, so the CPU has these features.
                match isa {
                    Isa::Avx512 | Isa::Avx512Vnni | Isa::Amx => return unsafe { avx512($($arg),*) },
                    Isa::Avx2 | Isa::AvxVnni => return unsafe { avx2($($arg),*) },
                    Isa::Scalar => {}
                }
            }
            let _ = isa;
            $body($($arg),*)
        }
    };
}

pub mod attention;
mod attention_avx512;
pub mod batchnorm;
pub mod conv;
mod conv_geo;
pub mod depthwise;
pub mod embedding;
pub mod fake_quant;
pub mod fast;
pub mod gelu;
pub mod layer_norm;
pub mod linear;
pub mod pack_cache;
pub mod packed;
pub mod pool;
pub mod qconv;
pub mod qgemm;
pub mod relu;
pub mod sentence;
pub mod sparse;
pub mod team;

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

/// The distance between consecutive rows of `l` (rows: its last axis) when each row is
/// dense and the rows lie evenly apart, as in a contiguous tensor (the row length) or in a
/// column range of a wider one (`narrow` on the last axis: that one's row length).
fn row_pitch(l: &Layout) -> Option<usize> {
    let (dims, st) = (l.dims(), l.stride());
    let r = dims.len();
    let w = *dims.last()?;
    if w > 1 && st[r - 1] != 1 {
        return None;
    }
    if r == 1 {
        return Some(w);
    }
    let pitch = st[r - 2];
    let nested = (0..r - 2).all(|i| dims[i] <= 1 || st[i] == st[i + 1] * dims[i + 1]);
    (nested && pitch >= w).then_some(pitch)
}

/// The pitch [`with_rows`] would give `t`'s rows.
pub(crate) fn pitch_of(t: &Tensor) -> usize {
    let w = t.dims().last().copied().unwrap_or(1);
    row_pitch(t.layout()).unwrap_or(w)
}

/// Runs `f` on the f32 rows of `t` where they lie, without a copy: the values from its
/// first one, and the pitch between its rows (see [`row_pitch`]); a tensor laid out
/// otherwise is made contiguous first (pitch = the row length).
pub(crate) fn with_rows<R>(t: &Tensor, f: impl FnOnce(&[f32], usize) -> R) -> Result<R> {
    let w = t.dims().last().copied().unwrap_or(1);
    let rows = t.elem_count().checked_div(w).unwrap_or(0);
    {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(cpu), Some(pitch)) = (&*storage, row_pitch(layout)) {
            let a = layout.start_offset();
            let len = rows.checked_sub(1).map_or(0, |r| r * pitch + w);
            return Ok(f(&cpu.as_slice::<f32>()?[a..a + len], pitch));
        }
    }
    with_cpu::<f32, _>(t, |v| f(v, w))
}

/// An output buffer with room for `len` values, every one of which the caller's kernel
/// writes before anything reads it: not cleared first (a pass over the memory the kernel
/// then overwrites), but filled with [`Unwritten::MARK`] in the crate's unit tests, so a
/// value the kernel misses shows in their exactness checks. [`written`] gives it its
/// length once full.
pub(crate) fn output_buffer<T: Unwritten>(len: usize) -> Vec<T> {
    if cfg!(test) {
        vec![T::MARK; len]
    } else {
        Vec::with_capacity(len)
    }
}

/// What an unwritten output value holds in the unit tests: f32 NaN, and for bytes (int8
/// codes) a pattern a missed code differs from.
pub(crate) trait Unwritten: Copy {
    const MARK: Self;
}

impl Unwritten for f32 {
    const MARK: f32 = f32::NAN;
}

impl Unwritten for u8 {
    const MARK: u8 = 0xA5;
}

/// Sets the length of a buffer from [`output_buffer`] to `len`.
///
/// # Safety
/// The buffer has room for `len` values and each of them was written.
pub(crate) unsafe fn written<T>(v: &mut Vec<T>, len: usize) {
    v.set_len(len)
}

/// A library error raised inside a candle custom op, as candle's error type.
pub(crate) fn op_err(e: Error) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// The active kernel path, inside a candle custom op.
pub(crate) fn grad_isa() -> candle_core::Result<crate::isa::Isa> {
    crate::isa::active().map_err(op_err)
}

/// A CPU tensor of `shape` from `v`, inside a candle custom op.
pub(crate) fn cpu_tensor(v: Vec<f32>, shape: &candle_core::Shape) -> candle_core::Result<Tensor> {
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu)
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

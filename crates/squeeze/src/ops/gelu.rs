//! GELU, erf form (x·Φ(x), as BERT uses), its three paths side by side: the reference
//! (candle's `gelu_erf`), the inference kernel (erf by a rational approximation, so it
//! vectorizes on each instruction-set path) and the training op (one autograd node,
//! backward Φ(x) + x·φ(x) per element).

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::fast::{f32_data, PAR_MACS};
use super::{cpu_tensor, grad_isa, op_f32s, slice_of};
use crate::error::Result;
use crate::isa::{self, Isa};

/// GELU, erf form: x · Φ(x).
pub fn gelu_reference(x: &Tensor) -> Result<Tensor> {
    Ok(x.gelu_erf()?)
}

/// erf by a rational approximation on [-4, 4] (erf(±4) = ±1 in f32); absolute error
/// below 1e-6, see the test against libm.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const A: [f32; 7] = [
        -2.726_142_3e-10,
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_600_1e-3,
        -1.609_603_3e-2,
    ];
    const B: [f32; 5] = [
        -1.456_607_2e-5,
        -2.133_740_6e-4,
        -1.682_827e-3,
        -7.373_329_2e-3,
        -1.426_474e-2,
    ];
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = A.iter().fold(0.0, |acc, a| acc * x2 + a);
    let q = B.iter().fold(0.0, |acc, b| acc * x2 + b);
    x * p / q
}

/// GELU of every element of a chunk in place.
#[inline(always)]
fn gelu_chunk(c: &mut [f32]) {
    let r = std::f32::consts::FRAC_1_SQRT_2;
    for v in c.iter_mut() {
        *v = 0.5 * *v * (1.0 + erf(*v * r));
    }
}

isa_variants!(gelu_on, gelu_chunk, (c: &mut [f32]) -> ());

/// GELU of every element of `c` in place on path `isa` (which passed `isa::require`),
/// on the calling thread: the epilogue of a product's tile.
pub(crate) fn gelu_slice(isa: Isa, c: &mut [f32]) {
    gelu_on(isa, c)
}

/// GELU in place over rows `rows` × columns `c0..c0 + cols` of the row-major buffer
/// at `out` (row stride `ld`), on path `isa`: a product task's block of its output, while
/// it is in cache.
///
/// # Safety
/// The block lies inside the buffer, and no other thread touches it during the call.
pub(crate) unsafe fn gelu_block(
    isa: Isa,
    out: crate::ops::team::Ptr<f32>,
    rows: std::ops::Range<usize>,
    (ld, c0, cols): (usize, usize, usize),
) {
    for r in rows {
        gelu_on(isa, out.slice(r * ld + c0, cols));
    }
}

/// GELU (erf form) of every element, on the active path.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    gelu_with(isa::active()?, x)
}

/// [`gelu`] on path `isa`.
pub fn gelu_with(isa: Isa, x: &Tensor) -> Result<Tensor> {
    let isa = isa::require(isa)?;
    let mut y = f32_data(x)?;
    gelu_rows(isa, &mut y, last_dim(x));
    Ok(Tensor::from_vec(y, x.shape(), &Device::Cpu)?)
}

/// GELU of every element of the contiguous f32 tensor `y`, in place (every tensor sharing
/// its storage sees the change), split over the inference team.
pub fn gelu_in_place(y: &Tensor) -> Result<()> {
    let isa = isa::active()?;
    super::with_cpu_mut(y, |v| {
        gelu_rows(isa, v, last_dim(y));
        Ok(())
    })
}

/// The length of `t`'s rows (its last axis; 1 for a scalar).
fn last_dim(t: &Tensor) -> usize {
    t.dims().last().copied().unwrap_or(1).max(1)
}

/// GELU of rows of `width` values in place, whole rows split over the inference team.
fn gelu_rows(isa: Isa, v: &mut [f32], width: usize) {
    super::team::rows_mut(v, width, &|_, rows| gelu_on(isa, rows));
}

/// GELU of every element of `y` in place (training: split over rayon's pool).
fn gelu_all(isa: Isa, mut y: Vec<f32>) -> Vec<f32> {
    if y.len() >= PAR_MACS {
        y.par_chunks_mut(1 << 14).for_each(|c| gelu_on(isa, c));
    } else {
        gelu_on(isa, &mut y);
    }
    y
}

struct GeluOp;

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "squeeze-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = gelu_all(grad_isa()?, slice_of::<f32>(s, l)?.to_vec());
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (xs, dys) = (op_f32s(x)?, op_f32s(dy)?);
        Ok(Some(cpu_tensor(gelu_backward(&xs, &dys), x.shape())?))
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
pub fn gelu_train(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(GeluOp)?)
}

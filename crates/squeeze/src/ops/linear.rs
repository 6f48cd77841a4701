//! A fully connected layer `y = x Wᵀ + b` over rows as one autograd node (f32): the forward
//! writes the bias into the output and accumulates the product onto it in one GEMM call;
//! the backward is dX = dY·W and dW = dYᵀ·X (two GEMMs reading the operands in place
//! through strides, no transposed copies) and db = the column sums of dY. candle's form —
//! a transpose node, a matmul node and a broadcast add whose backward reduces dY over rows
//! with its general strided reduction, each gradient then zero-filled and summed by its
//! backprop — is the reference ([`reference()`]) it is tested against.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::conv::gemm_on;
use super::{op_f32s, slice_of};
use crate::error::{Error, Result};

/// Multiply-adds below which the products run on the calling thread.
const PAR_MACS: usize = 1 << 18;

fn threads(macs: usize) -> usize {
    if macs < PAR_MACS {
        1
    } else {
        rayon::current_num_threads()
    }
}

/// y[m×n] = b + x[m×k]·w[n×k]ᵀ.
fn forward(x: &[f32], w: &[f32], b: Option<&[f32]>, (m, k, n): (usize, usize, usize)) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    if let Some(b) = b {
        y.par_chunks_mut(n.max(1))
            .for_each(|r| r.copy_from_slice(b));
    }
    gemm_on(
        threads(m * k * n),
        (m, n, k),
        &mut y,
        (n, 1),
        b.is_some(),
        x,
        (k, 1),
        w,
        (1, k),
    );
    y
}

/// (dX, dW, db) of y = x Wᵀ + b from dY.
fn backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    (m, k, n): (usize, usize, usize),
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let t = threads(m * k * n);
    let mut dx = vec![0f32; m * k];
    // dX[m×k] = dY[m×n]·W[n×k]
    gemm_on(t, (m, k, n), &mut dx, (k, 1), false, dy, (n, 1), w, (k, 1));
    let mut dw = vec![0f32; n * k];
    // dW[n×k] = dYᵀ[n×m]·X[m×k]
    gemm_on(t, (n, k, m), &mut dw, (k, 1), false, dy, (1, n), x, (k, 1));
    let mut db = vec![0f32; n];
    for row in dy.chunks_exact(n.max(1)) {
        db.iter_mut().zip(row).for_each(|(a, b)| *a += b);
    }
    (dx, dw, db)
}

fn dims(lx: &Layout, lw: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    let ((m, k), (n, k2)) = (lx.shape().dims2()?, lw.shape().dims2()?);
    if k != k2 {
        candle_core::bail!(
            "linear: x [{m}, {k}] and weight [{n}, {k2}] disagree on the input width"
        )
    }
    Ok((m, k, n))
}

fn grads(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
) -> candle_core::Result<(Tensor, Tensor, Vec<f32>, usize)> {
    let (m, k) = x.dims2()?;
    let n = w.dim(0)?;
    let (dx, dw, db) = backward(&op_f32s(x)?, &op_f32s(w)?, &op_f32s(dy)?, (m, k, n));
    let dev = x.device();
    Ok((
        Tensor::from_vec(dx, (m, k), dev)?,
        Tensor::from_vec(dw, (n, k), dev)?,
        db,
        n,
    ))
}

struct LinearBias;

impl CustomOp3 for LinearBias {
    fn name(&self) -> &'static str {
        "squeeze-linear"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k, n) = dims(lx, lw)?;
        let y = forward(
            slice_of(sx, lx)?,
            slice_of(sw, lw)?,
            Some(slice_of(sb, lb)?),
            (m, k, n),
        );
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db, n) = grads(x, w, dy)?;
        let db = Tensor::from_vec(db, n, x.device())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

struct LinearNoBias;

impl CustomOp2 for LinearNoBias {
    fn name(&self) -> &'static str {
        "squeeze-linear-nobias"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k, n) = dims(lx, lw)?;
        let y = forward(slice_of(sx, lx)?, slice_of(sw, lw)?, None, (m, k, n));
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _, _) = grads(x, w, dy)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `x Wᵀ + b` for x `[M, in]`, W `[out, in]`, b `[out]` (all f32) as one differentiable node.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    if x.rank() != 2 || w.rank() != 2 {
        return Err(Error::Graph(format!(
            "linear: x {:?} and weight {:?} must both be matrices",
            x.dims(),
            w.dims()
        )));
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    Ok(match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, LinearBias)?,
        None => x.apply_op2(&w, LinearNoBias)?,
    })
}

/// candle's composition: `x · Wᵀ (+ b)`.
pub fn reference(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = x.matmul(&w.t()?)?;
    Ok(match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

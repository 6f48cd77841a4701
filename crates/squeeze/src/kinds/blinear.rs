//! A materialized binary or ternary fully connected layer `y = x Ŵᵀ + b`, `Ŵ = α·T`: what
//! the `qat` pass makes of a Linear trained with `weights = "binary"` or `"ternary"`
//! (BinaryConnect / XNOR-Net scaling, TWN). Tensors: `weight_bits` (packed levels
//! `[out, row_bytes]` u8, `crate::math::bits`), `weight_scale` `[out]`, `input_scale`
//! `[1]` and `bias`. Inference quantizes each input row with the static step (clipped
//! to `input_codes`) and runs the bit-plane product of `crate::ops::qgemm::bits` —
//! activations added or subtracted by bit — then rescales by `α·step`. Gradients and f64
//! get the simulated layer (the same codes times the dequantized levels). Coupling:
//! pinned on both sides.

use candle_core::{DType, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::couple::{Coupler, Seg};
use super::{with_last, Inputs, LayerKind, NodeRun, TensorRole, TensorSpec};
use super::{Node, Op};
use crate::error::Result;
use crate::math::bits::BitWeight;
use crate::onnx::quant::{self as onnx_quant, Decoded};
use crate::onnx::Lower;
use crate::ops::qgemm::bits::PackedBits;
use crate::ops::qgemm::panel::PackedI8;
use crate::ops::qgemm::quantize::{quantize_row, quantize_rows};
use crate::ops::qgemm::NR;
use crate::params::f32_values;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BLinear {
    pub in_features: usize,
    pub out_features: usize,
    pub bias: bool,
    /// Levels {−1, 0, +1} (ternary) or {−1, +1} (binary).
    pub ternary: bool,
    /// The input's code range `[lowest, highest]` (within ±127).
    pub input_codes: [i8; 2],
}

impl LayerKind for BLinear {
    /// The QDQ form of a static int8 Linear, the levels as int8 codes.
    fn onnx(&self, cx: &mut Lower) -> Result<String> {
        let dims = (self.out_features, self.in_features);
        let d = Decoded::read_levels(cx, dims, self.ternary)?;
        let step = cx.values("input_scale")?.1[0];
        onnx_quant::static_linear(cx, &d, (step, self.input_codes), self.bias)
    }
    fn name(&self) -> &'static str {
        "blinear"
    }
    fn inputs(&self) -> Inputs {
        Inputs::Values
    }
    fn out_shape(&self, ins: &[&[usize]]) -> std::result::Result<Vec<usize>, String> {
        super::check_input_codes(Some(self.input_codes), 127)?;
        super::rows_shape(ins, self.in_features, self.out_features)
    }
    fn tensors(&self) -> Vec<TensorSpec> {
        let (n, k) = (self.out_features, self.in_features);
        let mut t = vec![
            super::bits_spec(n, k, self.ternary, vec![n, k]),
            TensorSpec::f32("weight_scale", vec![n], TensorRole::Scale),
            TensorSpec::f32("input_scale", vec![1], TensorRole::Scale),
        ];
        if self.bias {
            t.push(TensorSpec::param("bias", vec![n]));
        }
        t
    }
    fn macs(&self, _: &[&[usize]], out: &[usize]) -> u64 {
        super::numel(out) * self.in_features as u64
    }
    fn couple(&self, cx: &mut Coupler, node: &Node, ins: &[Vec<Seg>], _: &[&[usize]]) -> Vec<Seg> {
        let why = "a blinear (binary/ternary) layer is not channel-pruned";
        super::pinned_rows(cx, node, ins, (self.out_features, self.bias), why)
    }
    fn forward(&self, cx: &mut NodeRun) -> Result<Tensor> {
        let (n, k) = (self.out_features, self.in_features);
        let sa = f32_values(cx.param("input_scale")?)?[0];
        let x = super::clip_input(cx.x(), Some(self.input_codes), sa)?;
        let dims = x.dims().to_vec();
        let x2 = x.flatten_to(dims.len().saturating_sub(2))?; // [M, in]
        let scales = f32_values(cx.param("weight_scale")?)?;
        let bias = match self.bias {
            true => f32_values(cx.param("bias")?)?,
            false => vec![0.0; n],
        };
        let bits = cx.param("weight_bits")?;
        let what = format!("{}.weight_bits", cx.node.name);
        let xs: Vec<f32> = x2.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let m = xs.len() / k.max(1);
        if x2.track_op() || x2.dtype() != DType::F32 {
            let rows: Vec<u8> = bits.flatten_all()?.to_vec1()?;
            crate::math::bits::check_rows(&rows, self.ternary, &what)?;
            let w = BitWeight {
                rows: n,
                cols: k,
                ternary: self.ternary,
                data: rows,
                scales,
            };
            let q = quantize_rows(&xs, k, Some(sa), k, 127);
            let deq: Vec<f32> = q.codes.iter().map(|c| *c as f32 * sa).collect();
            let xq = Tensor::from_vec(deq, (m, k), x2.device())?.to_dtype(x2.dtype())?;
            let xin = (&x2 + (xq - &x2)?.detach())?;
            let wt = Tensor::from_vec(w.dequantize(), (n, k), x2.device())?.to_dtype(x2.dtype())?;
            let b = Tensor::from_vec(bias, n, x2.device())?.to_dtype(x2.dtype())?;
            let y = xin.matmul(&wt.t()?)?.broadcast_add(&b)?;
            return Ok(y.reshape(with_last(&dims, n))?);
        }
        let packed = cx.packs.bits(bits.id(), || {
            let rows: Vec<u8> = bits.flatten_all()?.to_vec1()?;
            PackedBits::pack(&what, n, k, self.ternary, &rows)
        })?;
        let y = product(&packed, &xs, (m, k), sa, (&scales, &bias))?;
        Ok(Tensor::from_vec(y, (m, n), x2.device())?.reshape(with_last(&dims, n))?)
    }
    fn refreshed(&self, _: &dyn Fn(&str) -> Option<Vec<usize>>, _: &[&[usize]]) -> Option<Op> {
        None
    }
}

/// Input rows per parallel task of the product.
const ROWS_PER_TASK: usize = 32;

/// `[m, n]` outputs of rows `xs` (`[m, k]`): codes at step `sa`, the bit-plane product,
/// `acc·α_j·sa + b_j`.
fn product(
    w: &PackedBits,
    xs: &[f32],
    (m, k): (usize, usize),
    sa: f32,
    (scales, bias): (&[f32], &[f32]),
) -> Result<Vec<f32>> {
    let isa = crate::isa::active()?;
    let (n, lda) = (w.n, PackedI8::row_len(k));
    let inv = if sa > 0.0 { 1.0 / sa } else { 0.0 };
    let (mut codes, mut abs) = (vec![0i8; m * lda], vec![0u8; m * lda]);
    for ((x, c), a) in xs
        .chunks_exact(k)
        .zip(codes.chunks_exact_mut(lda))
        .zip(abs.chunks_exact_mut(lda))
    {
        quantize_row(isa, x, (inv, 127), &mut c[..k], Some(&mut a[..k]));
    }
    let signed = codes.iter().any(|c| *c < 0);
    let ldo = w.panels() * NR;
    let mut acc = vec![0i32; m * ldo];
    // blocks of rows in parallel, each against every panel
    acc.par_chunks_mut(ROWS_PER_TASK * ldo)
        .zip(codes.par_chunks(ROWS_PER_TASK * lda))
        .zip(abs.par_chunks(ROWS_PER_TASK * lda))
        .try_for_each(|((acc, a), b)| {
            let rows = a.len() / lda;
            w.product(isa, (a, b), (rows, lda), signed, 0..w.panels(), acc, ldo)
        })?;
    let mut y = vec![0f32; m * n];
    for (yr, ar) in y.chunks_exact_mut(n).zip(acc.chunks_exact(ldo)) {
        for (j, o) in yr.iter_mut().enumerate() {
            *o = ar[j] as f32 * (scales[j] * sa) + bias[j];
        }
    }
    Ok(y)
}

pub(crate) fn example() -> super::Example {
    let (n, k) = (5, 21);
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * 0.3)
        .collect();
    let b = BitWeight::from_rows(&w, n, k, false);
    let mut tensors: Vec<(&'static str, Tensor)> = b.tensors().expect("sizes match");
    tensors.push((
        "input_scale",
        Tensor::from_vec(vec![0.02f32], 1, &candle_core::Device::Cpu).expect("one value"),
    ));
    super::Example {
        op: Op::BLinear(BLinear {
            in_features: k,
            out_features: n,
            bias: false,
            ternary: false,
            input_codes: [-127, 127],
        }),
        inputs: vec![vec![k]],
        tensors,
    }
}

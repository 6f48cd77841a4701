//! A materialized binary or ternary 2-D convolution (groups = 1, square kernel): what
//! the `qat` pass makes of a Conv2d trained with `weights = "binary"` (BinaryConnect signs
//! with XNOR-Net's per-channel scale, Courbariaux et al. 2015, Rastegari et al. 2016) or
//! `"ternary"` (TWN, Li et al. 2016). Tensors: `weight_bits` (the packed levels,
//! `[out, row_bytes]` u8 — 8 signs or 5 base-3 digits per byte, `crate::math::bits`),
//! `weight_scale` `[out]`, `input_scale` `[1]` (the learned input step) and `bias`.
//! Inference quantizes the input with its step (clipped to `input_codes`) and runs the
//! static-int8 convolution of `crate::ops::qconv` with the levels packed as bit-planes —
//! each activation code added or subtracted by its weight's bit, never widened to f32 —
//! with the ReLU and max-pool after it fused as for `qconv2d`. Gradients and f64 get the
//! simulated layer (the same codes through candle's convolution), the kernel's reference.
//! Coupling: pinned on both sides.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::couple::{Coupler, Seg};
use super::{Absorb, Inputs, LayerKind, NodeRun, TensorRole, TensorSpec};
use super::{Node, Op};
use crate::error::Result;
use crate::math::bits::BitWeight;
use crate::onnx::blocks::square_conv;
use crate::onnx::quant::{self as onnx_quant, Decoded};
use crate::onnx::Lower;
use crate::ops::qconv::{self, Geometry};
use crate::params::f32_values;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BConv2d {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub bias: bool,
    /// Levels {−1, 0, +1} (ternary) or {−1, +1} (binary).
    pub ternary: bool,
    /// The input's code range `[lowest, highest]` (within ±127).
    pub input_codes: [i8; 2],
}

impl LayerKind for BConv2d {
    /// The QDQ form of [`QConv2d`](super::qconv2d::QConv2d), the levels as int8 codes.
    fn onnx(&self, cx: &mut Lower) -> Result<String> {
        let dims = (self.out_channels, self.cols());
        let d = Decoded::read_levels(cx, dims, self.ternary)?;
        let step = cx.values("input_scale")?.1[0];
        let (o, i, k) = (self.out_channels, self.in_channels, self.kernel);
        let a = square_conv(k, self.stride, self.padding);
        let q = (&d.codes[..], [o, i, k, k], &d.scales[..]);
        onnx_quant::static_conv(cx, q, (step, self.input_codes), self.bias, a)
    }
    fn name(&self) -> &'static str {
        "bconv2d"
    }
    fn absorbs(&self, reader: Absorb, so_far: &[Absorb], train: bool) -> bool {
        match reader {
            Absorb::Relu => so_far.is_empty(),
            Absorb::MaxPool { .. } => !train && so_far.iter().all(|a| *a == Absorb::Relu),
            Absorb::Gelu | Absorb::Residual | Absorb::Identity => false,
        }
    }
    fn inputs(&self) -> Inputs {
        Inputs::Values
    }
    fn out_shape(&self, ins: &[&[usize]]) -> std::result::Result<Vec<usize>, String> {
        super::check_input_codes(Some(self.input_codes), 127)?;
        super::integer_conv_shape(&self.geometry(), ins)
    }
    fn tensors(&self) -> Vec<TensorSpec> {
        let co = self.out_channels;
        let mut t = vec![
            super::bits_spec(
                co,
                self.cols(),
                self.ternary,
                vec![co, self.in_channels, self.kernel, self.kernel],
            ),
            TensorSpec::f32("weight_scale", vec![co], TensorRole::Scale),
            TensorSpec::f32("input_scale", vec![1], TensorRole::Scale),
        ];
        if self.bias {
            t.push(TensorSpec::param("bias", vec![co]));
        }
        t
    }
    fn macs(&self, _: &[&[usize]], out: &[usize]) -> u64 {
        super::numel(out) * self.cols() as u64
    }
    fn couple(&self, cx: &mut Coupler, node: &Node, ins: &[Vec<Seg>], _: &[&[usize]]) -> Vec<Seg> {
        let why = "a bconv2d (binary/ternary) layer is not channel-pruned";
        super::pinned_rows(cx, node, ins, (self.out_channels, self.bias), why)
    }
    fn forward(&self, cx: &mut NodeRun) -> Result<Tensor> {
        let sa = f32_values(cx.param("input_scale")?)?[0];
        let x = cx.x();
        let scales = f32_values(cx.param("weight_scale")?)?;
        let bias = match self.bias {
            true => Some(f32_values(cx.param("bias")?)?),
            false => None,
        };
        let bits = cx.param("weight_bits")?;
        let g = self.geometry();
        let (relu, pool) = (cx.fuse_relu, cx.fuse_pool);
        if x.track_op() || x.dtype() != DType::F32 {
            let rows: Vec<u8> = bits.flatten_all()?.to_vec1()?;
            let w = BitWeight {
                rows: self.out_channels,
                cols: self.cols(),
                ternary: self.ternary,
                data: rows,
                scales,
            };
            crate::math::bits::check_rows(&w.data, self.ternary, &self.what(cx))?;
            let x = &super::clip_input(x, Some(self.input_codes), sa)?;
            let y = qconv::simulated_dense(&g, x, w.dequantize(), sa, bias.as_deref(), relu)?;
            return match pool {
                Some((k, s)) => crate::ops::pool::max_pool2d(&y, k, s),
                None => Ok(y),
            };
        }
        let what = self.what(cx);
        let packed = qconv::pack_bits(cx.packs, &g, (self.ternary, bits), &what, &scales)?;
        qconv::forward(
            &g,
            x,
            &packed,
            sa,
            bias.as_deref(),
            (relu, pool),
            Some(self.input_codes),
            None,
        )
    }
    fn refreshed(&self, _: &dyn Fn(&str) -> Option<Vec<usize>>, _: &[&[usize]]) -> Option<Op> {
        None
    }
}

impl BConv2d {
    /// Weights of one output channel's filter (`in·k·k`).
    pub fn cols(&self) -> usize {
        self.in_channels * self.kernel * self.kernel
    }

    fn geometry(&self) -> Geometry {
        Geometry {
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
        }
    }

    fn what(&self, cx: &NodeRun) -> String {
        format!("{}.weight_bits", cx.node.name)
    }
}

pub(crate) fn example() -> super::Example {
    use candle_core::Device;
    let (co, ci, k) = (5, 3, 3);
    let w: Vec<f32> = (0..co * ci * k * k)
        .map(|i| ((i * 37 % 29) as f32 / 14.0 - 1.0) * 0.4)
        .collect();
    let b = BitWeight::from_rows(&w, co, ci * k * k, true);
    let mut tensors: Vec<(&'static str, Tensor)> = b.tensors().expect("sizes match");
    tensors.push((
        "input_scale",
        Tensor::from_vec(vec![0.05f32], 1, &Device::Cpu).expect("one value"),
    ));
    super::Example {
        op: Op::BConv2d(BConv2d {
            in_channels: ci,
            out_channels: co,
            kernel: k,
            stride: 1,
            padding: 1,
            bias: false,
            ternary: true,
            input_codes: [-127, 127],
        }),
        inputs: vec![vec![ci, 5, 6]],
        tensors,
    }
}

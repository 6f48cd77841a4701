//! A materialized static-int8 2-D convolution (groups = 1): what the `quantize` pass
//! makes of a Conv2d node under `activations = "static"`. Tensors: `weight_q` (int8 codes
//! `[out, in·k·k]`, standing for `[out, in, k, k]`), `weight_scale` (per output channel
//! or one), `input_scale` (`[1]`, calibrated) and `bias`. Inference quantizes the input
//! with its static scale and runs the int8 kernel of `crate::ops::qconv` (packed
//! panels, exact i32 sums, rescale with bias), applying the ReLU it absorbs and, at
//! inference, the max-pool after it on the i32 products. Any other caller (gradients,
//! f64) gets the simulated layer of the same module, the kernel's reference. Coupling:
//! pinned on both sides.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::couple::{Coupler, Seg};
use super::with_node_view;
use super::{Absorb, Inputs, LayerKind, NodeRun, TensorRole, TensorSpec};
use super::{Node, Op};
use crate::error::Result;
use crate::math::qlayout::{Layout, Scales};
use crate::onnx::blocks::square_conv;
use crate::onnx::quant::{self as onnx_quant, Decoded};
use crate::onnx::Lower;
use crate::ops::qconv::{self, Geometry, Handoff};
use crate::params::f32_values;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QConv2d {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub bias: bool,
    /// int8 (per-channel or per-tensor scales) or symmetric int4 (per channel).
    pub layout: Layout,
    /// The input's code range `[lowest, highest]` when narrower than ±127 (a layer
    /// trained with low-bit activations): the kernel clips the input codes to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_codes: Option<[i8; 2]>,
}

impl LayerKind for QConv2d {
    /// The QDQ form: the input quantized with `input_scale`, the int8 codes (int4 ones
    /// too, as int8 values) dequantized per output channel, an ordinary `Conv`.
    fn onnx(&self, cx: &mut Lower) -> Result<String> {
        let d = Decoded::read(cx, self.layout, (self.out_channels, self.cols()))?;
        let scales = d.row_scales().map(<[f32]>::to_vec).ok_or_else(|| {
            crate::onnx::refuse("grouped scales on a convolution have no ONNX form here")
        })?;
        let step = cx.values("input_scale")?.1[0];
        let range = self.input_codes.unwrap_or([-127, 127]);
        let (o, i, k) = (self.out_channels, self.in_channels, self.kernel);
        let a = square_conv(k, self.stride, self.padding);
        onnx_quant::static_conv(
            cx,
            (&d.codes, [o, i, k, k], &scales),
            (step, range),
            self.bias,
            a,
        )
    }
    fn name(&self) -> &'static str {
        "qconv2d"
    }
    /// The ReLU after it, then (inference) the max-pool after that: the window max is
    /// taken over the i32 products before they are rescaled.
    fn absorbs(&self, reader: Absorb, so_far: &[Absorb], train: bool) -> bool {
        match reader {
            Absorb::Relu => so_far.is_empty(),
            Absorb::MaxPool { .. } => !train && so_far.iter().all(|a| *a == Absorb::Relu),
            Absorb::Gelu | Absorb::Residual | Absorb::Identity => false,
        }
    }
    fn quantized_weight(&self) -> Option<(Layout, (usize, usize))> {
        Some((self.layout, (self.out_channels, self.cols())))
    }
    /// Its codes go straight into a reading int8 convolution at that one's input step:
    /// no f32 output, no quantization or transposition there.
    fn hands_codes(&self) -> bool {
        true
    }
    fn takes_codes(&self) -> bool {
        true
    }
    fn inputs(&self) -> Inputs {
        Inputs::Values
    }
    fn out_shape(&self, ins: &[&[usize]]) -> std::result::Result<Vec<usize>, String> {
        let int4 = self.layout.bits == 4 && self.layout.scales == Scales::Channel;
        if !(self.layout.bits == 8 || int4)
            || self.layout.zero_point
            || matches!(self.layout.scales, Scales::Group(_))
        {
            return Err(
                "qconv2d holds int8 weights with per-channel or per-tensor scales, \
                        or symmetric int4 weights with per-channel scales"
                    .into(),
            );
        }
        super::check_input_codes(self.input_codes, 127)?;
        self.layout.check(self.cols())?;
        super::integer_conv_shape(&self.geometry(), ins)
    }
    fn tensors(&self) -> Vec<TensorSpec> {
        let (co, k) = (self.out_channels, self.kernel);
        let logical = vec![co, self.in_channels, k, k];
        let mut t = super::quantized_specs(&self.layout, (co, self.cols()), logical);
        t.push(TensorSpec::f32("input_scale", vec![1], TensorRole::Scale));
        if self.bias {
            t.push(TensorSpec::param("bias", vec![co]));
        }
        t
    }
    fn macs(&self, _: &[&[usize]], out: &[usize]) -> u64 {
        super::numel(out) * self.cols() as u64
    }
    fn couple(&self, cx: &mut Coupler, node: &Node, ins: &[Vec<Seg>], _: &[&[usize]]) -> Vec<Seg> {
        let why = "a qconv2d (quantized) layer is not channel-pruned";
        super::pinned_rows(cx, node, ins, (self.out_channels, self.bias), why)
    }
    fn forward(&self, cx: &mut NodeRun) -> Result<Tensor> {
        let sa = f32_values(cx.param("input_scale")?)?[0];
        let x = cx.x();
        let bias = match self.bias {
            true => Some(f32_values(cx.param("bias")?)?),
            false => None,
        };
        let (dims, relu, pool) = ((self.out_channels, self.cols()), cx.fuse_relu, cx.fuse_pool);
        let codes_id = cx.param("weight_q")?.id();
        let hand = cx
            .hand_to
            .map(|r| handoff(r, cx.params))
            .transpose()?
            .flatten();
        with_node_view(cx.params, &cx.node.name, self.layout, dims, |w| {
            let g = self.geometry();
            let codes_in = x.dtype() == DType::U8;
            if !codes_in && (x.track_op() || x.dtype() != DType::F32) {
                let x = &super::clip_input(x, self.input_codes, sa)?;
                let y = qconv::simulated(&g, x, w, sa, bias.as_deref(), relu)?;
                return match pool {
                    Some((k, s)) => crate::ops::pool::max_pool2d(&y, k, s),
                    None => Ok(y),
                };
            }
            let what = format!("{}.weight_q", cx.node.name);
            let packed = qconv::pack(cx.packs, &g, &self.layout, &what, codes_id, w)?;
            qconv::forward(
                &g,
                x,
                &packed,
                sa,
                bias.as_deref(),
                (relu, pool),
                self.input_codes,
                hand,
            )
        })
    }
    fn refreshed(&self, dims: &dyn Fn(&str) -> Option<Vec<usize>>, _: &[&[usize]]) -> Option<Op> {
        let d = dims("weight_q")?;
        Some(Op::QConv2d(QConv2d {
            out_channels: d[0],
            ..self.clone()
        }))
    }
}

impl QConv2d {
    /// Elements of one output channel's filter (`in·k·k`).
    pub fn cols(&self) -> usize {
        self.in_channels * self.kernel * self.kernel
    }

    /// The attributes the kernel reads.
    fn geometry(&self) -> Geometry {
        Geometry {
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
        }
    }
}

pub(crate) fn example() -> super::Example {
    use candle_core::Device;
    let (co, ci, k) = (4, 2, 3);
    let w: Vec<f32> = (0..co * ci * k * k)
        .map(|i| ((i * 37 % 29) as f32 / 14.0 - 1.0) * 0.4)
        .collect();
    let q = crate::math::qweight::QWeight::quantize(&w, co, ci * k * k, Layout::INT8_CHANNEL)
        .expect("a valid layout");
    let (codes, scales, _) = q.tensors().expect("sizes match");
    super::Example {
        op: Op::QConv2d(QConv2d {
            in_channels: ci,
            out_channels: co,
            kernel: k,
            stride: 2,
            padding: 1,
            bias: true,
            layout: Layout::INT8_CHANNEL,
            input_codes: None,
        }),
        inputs: vec![vec![ci, 5, 6]],
        tensors: vec![
            ("weight_q", codes),
            ("weight_scale", scales),
            (
                "input_scale",
                Tensor::from_vec(vec![1.0f32 / 127.0], 1, &Device::Cpu).expect("one value"),
            ),
        ],
    }
}

/// What `reader` (an int8 convolution) makes of its input: its step inverse and code
/// range; `None` for another kind.
fn handoff(reader: &Node, params: &crate::params::ParamStore) -> Result<Option<Handoff>> {
    let Op::QConv2d(q) = &reader.op else {
        return Ok(None);
    };
    let sa = f32_values(params.get(&format!("{}.input_scale", reader.name))?)?[0];
    Ok(Some(Handoff {
        inv: if sa > 0.0 { 1.0 / sa } else { 0.0 },
        codes: q.input_codes.unwrap_or([-127, 127]),
    }))
}

//! 2-D convolution over `[C, H, W]` with a kernel, stride, zero padding and groups, square
//! unless `width` gives the horizontal axis its own (the k×1 and 1×k halves of a spatially
//! factorized convolution, Jaderberg et al. 2014). Tensors `weight` `[out, in/groups, kh,
//! kw]` (weight-decayed) and `bias` `[out]`. Coupling: a
//! dense convolution consumes its input channels and creates a new space; a depthwise one
//! (groups = in = out) carries each channel through as a per-channel member; other grouped
//! convolutions pin both sides. Forward: im2col + GEMM with a hand-written backward
//! (`crate::ops::conv`, gradient-checked), candle's grouped kernel for groups > 1.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::couple::{Coupler, MemberRole, Seg};
use super::fake_quant::FakeQuant;
use super::{arity, positive, Inputs, LayerKind, NodeRun, TensorSpec};
use super::{Node, Op};
use crate::error::Result;
use crate::onnx::{blocks, Lower};
use crate::ops::conv;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv2d {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
    pub bias: bool,
    /// The horizontal axis's kernel, stride and padding where they differ from the
    /// vertical ones (`kernel`, `stride`, `padding`); absent for a square convolution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<Axis>,
    /// Simulated quantization while it trains (quantization-aware training).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quant: Option<FakeQuant>,
}

/// One axis of a convolution: kernel extent, stride and zero padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Axis {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Conv2d {
    /// The vertical axis.
    pub fn height_axis(&self) -> Axis {
        Axis {
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
        }
    }
    /// The horizontal axis.
    pub fn width_axis(&self) -> Axis {
        self.width.unwrap_or(self.height_axis())
    }
    /// Same kernel, stride and padding on both axes.
    pub fn is_square(&self) -> bool {
        self.width_axis() == self.height_axis()
    }
    /// The geometry as ONNX's `Conv` attributes.
    pub fn onnx_attrs(&self) -> blocks::ConvAttrs {
        let (h, w) = (self.height_axis(), self.width_axis());
        blocks::ConvAttrs {
            kernel: [h.kernel, w.kernel],
            stride: [h.stride, w.stride],
            padding: [h.padding, w.padding],
            groups: self.groups,
        }
    }
    /// One filter per channel (groups = in = out > 1).
    pub fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.in_channels && self.groups == self.out_channels
    }
}

impl LayerKind for Conv2d {
    fn onnx(&self, cx: &mut Lower) -> Result<String> {
        if self.quant.is_some() {
            return Err(super::fake_quant::not_exportable());
        }
        let w = cx.constant("weight")?;
        let b = cx.bias(self.bias)?;
        Ok(blocks::conv(cx, &cx.x(), &w, b, self.onnx_attrs()))
    }
    fn name(&self) -> &'static str {
        "conv2d"
    }
    fn inputs(&self) -> Inputs {
        Inputs::Values
    }
    fn out_shape(&self, ins: &[&[usize]]) -> std::result::Result<Vec<usize>, String> {
        for (what, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("kernel", self.kernel),
            ("stride", self.stride),
            ("groups", self.groups),
        ] {
            positive(what, v)?;
        }
        let s = arity(ins, 1)?;
        if s.len() != 3 || s[0] != self.in_channels {
            return Err(format!(
                "input {s:?}, expected [{}, H, W]",
                self.in_channels
            ));
        }
        let g = self.groups;
        if !self.in_channels.is_multiple_of(g) || !self.out_channels.is_multiple_of(g) {
            return Err(format!("groups {g} must divide in/out channels"));
        }
        if let Some(q) = &self.quant {
            q.check()?;
        }
        let (ah, aw) = (self.height_axis(), self.width_axis());
        positive("width.kernel", aw.kernel)?;
        positive("width.stride", aw.stride)?;
        Ok(vec![self.out_channels, along(s[1], ah)?, along(s[2], aw)?])
    }
    fn tensors(&self) -> Vec<TensorSpec> {
        let w = vec![
            self.out_channels,
            self.in_channels / self.groups.max(1),
            self.kernel,
            self.width_axis().kernel,
        ];
        let mut t = vec![TensorSpec::weight("weight", w)];
        if self.bias {
            t.push(TensorSpec::param("bias", vec![self.out_channels]));
        }
        if let Some(q) = &self.quant {
            t.extend(q.tensors(self.out_channels));
        }
        t
    }
    fn macs(&self, _ins: &[&[usize]], out: &[usize]) -> u64 {
        let taps = self.kernel * self.width_axis().kernel;
        let per_out = (self.in_channels / self.groups.max(1)) * taps;
        super::numel(out) * per_out as u64
    }
    fn couple(&self, cx: &mut Coupler, node: &Node, ins: &[Vec<Seg>], _: &[&[usize]]) -> Vec<Seg> {
        let x = &ins[0];
        if self.groups == 1 {
            cx.consume(x, &node.name);
            return cx.new_space(&node.name, self.out_channels, self.bias);
        }
        if self.is_depthwise() {
            let ps: &[&str] = if self.bias {
                &["weight", "bias"]
            } else {
                &["weight"]
            };
            cx.per_channel(x, &node.name, ps, MemberRole::Norm);
            return x.clone();
        }
        cx.pin_all(x, "grouped convolution input");
        let o = cx.new_space(&node.name, self.out_channels, self.bias);
        cx.pin_all(&o, "grouped convolution output");
        o
    }
    fn forward(&self, cx: &mut NodeRun) -> Result<Tensor> {
        let (w, x) = match &self.quant {
            Some(q) => (q.weight(cx, cx.param("weight")?)?, q.input(cx, cx.x())?),
            None => (cx.param("weight")?.clone(), cx.x().clone()),
        };
        let (ah, aw) = (self.height_axis(), self.width_axis());
        let y = conv::conv2d(
            &x,
            &w,
            (ah.stride, aw.stride),
            (ah.padding, aw.padding),
            self.groups,
        )?;
        if !self.bias {
            return Ok(y);
        }
        let b = cx.param("bias")?.reshape((1, self.out_channels, 1, 1))?;
        Ok(y.broadcast_add(&b)?)
    }
    fn refreshed(&self, dims: &dyn Fn(&str) -> Option<Vec<usize>>, _: &[&[usize]]) -> Option<Op> {
        let d = dims("weight")?;
        let mut c = self.clone();
        c.out_channels = d[0];
        if self.is_depthwise() {
            (c.groups, c.in_channels) = (d[0], d[0]);
        } else {
            c.in_channels = d[1] * self.groups;
        }
        Some(Op::Conv2d(c))
    }
}

/// Output extent of an input extent `n` along axis `a`.
fn along(n: usize, a: Axis) -> std::result::Result<usize, String> {
    let padded = n.saturating_add(a.padding.saturating_mul(2));
    if padded < a.kernel {
        return Err(format!("kernel {} larger than padded input", a.kernel));
    }
    Ok((padded - a.kernel) / a.stride + 1)
}

pub(crate) fn example() -> super::Example {
    super::Example {
        op: Op::Conv2d(Conv2d {
            in_channels: 2,
            out_channels: 4,
            kernel: 3,
            stride: 2,
            padding: 1,
            groups: 2,
            bias: true,
            width: None,
            quant: None,
        }),
        inputs: vec![vec![2, 5, 6]],
        tensors: vec![],
    }
}

//! ONNX building blocks shared by several layer kinds: a matrix product with bias (Linear
//! and its sparse, binary and quantized forms), a 2-D convolution (dense, int8, binary),
//! the quantize–dequantize pair of a static int8 input (ONNX's QDQ form, the one ONNX
//! Runtime's own static quantizer writes) and a dequantized int8 weight.

use super::{float, int, ints, Lower};
use crate::error::Result;

/// `x · W + b` with `w` already `[in, out]` (an ONNX value name).
pub fn matmul_bias(cx: &mut Lower, x: &str, w: &str, bias: Option<String>) -> String {
    match bias {
        None => cx.emit.op("MatMul", &[x, w], &cx.out(), vec![]),
        Some(b) => {
            let y = cx.emit.op("MatMul", &[x, w], &cx.tmp("matmul"), vec![]);
            cx.emit.op("Add", &[&y, &b], &cx.out(), vec![])
        }
    }
}

/// `[rows, cols]` row-major → `[cols, rows]`.
pub fn transpose<T: Copy>(v: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut t = Vec::with_capacity(v.len());
    for c in 0..cols {
        t.extend((0..rows).map(|r| v[r * cols + c]));
    }
    t
}

/// A float Linear `y = x Wᵀ + b` from `w` `[out, in]` row-major.
pub fn linear_f32(
    cx: &mut Lower,
    w: &[f32],
    (out, inp): (usize, usize),
    bias: bool,
) -> Result<String> {
    let wt = transpose(w, out, inp);
    let name = format!("{}.weight", cx.node);
    let w = cx.emit.f32s(&name, &[inp, out], &wt);
    let b = cx.bias(bias)?;
    let x = cx.x();
    Ok(matmul_bias(cx, &x, &w, b))
}

/// Geometry of a 2-D convolution: (kernel, stride, padding) per axis (height, width)
/// and the group count.
#[derive(Debug, Clone, Copy)]
pub struct ConvAttrs {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub groups: usize,
}

/// A square convolution's attributes (one group).
pub fn square_conv(kernel: usize, stride: usize, padding: usize) -> ConvAttrs {
    ConvAttrs {
        kernel: [kernel; 2],
        stride: [stride; 2],
        padding: [padding; 2],
        groups: 1,
    }
}

/// `Conv(x, w) + b`, `w` an ONNX value `[out, in/groups, kh, kw]`.
pub fn conv(cx: &mut Lower, x: &str, w: &str, bias: Option<String>, a: ConvAttrs) -> String {
    let i = |v: [usize; 2]| [v[0] as i64, v[1] as i64];
    let [ph, pw] = i(a.padding);
    let attrs = vec![
        ints("kernel_shape", &i(a.kernel)),
        ints("strides", &i(a.stride)),
        ints("pads", &[ph, pw, ph, pw]),
        int("group", a.groups as i64),
    ];
    let mut ins = vec![x, w];
    if let Some(b) = &bias {
        ins.push(b);
    }
    cx.emit.op("Conv", &ins, &cx.out(), attrs)
}

/// The static int8 input of a quantized layer: clipped to `[lo, hi]·step`, quantized with
/// `step` (zero point 0) and dequantized — the values the integer kernel multiplies. ONNX
/// rounds halves to even where our kernels round them away from zero; only inputs that
/// land exactly halfway between two codes differ, by one code.
pub fn static_input(cx: &mut Lower, x: &str, step: f32, [lo, hi]: [i8; 2]) -> String {
    let lo_v = cx.emit.scalar(&cx.tmp("clip_lo"), f32::from(lo) * step);
    let hi_v = cx.emit.scalar(&cx.tmp("clip_hi"), f32::from(hi) * step);
    let c = cx
        .emit
        .op("Clip", &[x, &lo_v, &hi_v], &cx.tmp("clip"), vec![]);
    let s = cx.emit.scalar(&cx.tmp("input_scale"), step);
    let z = cx.emit.i8s(&cx.tmp("input_zero"), &[], &[0]);
    let q = cx
        .emit
        .op("QuantizeLinear", &[&c, &s, &z], &cx.tmp("input_q"), vec![]);
    cx.emit.op(
        "DequantizeLinear",
        &[&q, &s, &z],
        &cx.tmp("input_dq"),
        vec![],
    )
}

/// An int8 weight `codes` (dims `dims`) times its scales along `axis` (one scale:
/// per tensor), as a constant and a `DequantizeLinear`: the file keeps the int8 codes.
pub fn dequantized(
    cx: &mut Lower,
    dims: &[usize],
    codes: &[i8],
    scales: &[f32],
    axis: usize,
) -> String {
    let w = cx.emit.i8s(&format!("{}.weight_q", cx.node), dims, codes);
    let (sdims, attrs) = match scales.len() {
        1 => (vec![], vec![]),
        n => (vec![n], vec![int("axis", axis as i64)]),
    };
    let s = cx
        .emit
        .f32s(&format!("{}.weight_scale", cx.node), &sdims, scales);
    cx.emit
        .op("DequantizeLinear", &[&w, &s], &cx.tmp("weight"), attrs)
}

/// `Clip(x, min)` with no upper bound.
pub fn clip_below(cx: &mut Lower, x: &str, min: f32, what: &str) -> String {
    let m = cx.emit.scalar(&cx.tmp(&format!("{what}_min")), min);
    cx.emit.op("Clip", &[x, &m], &cx.tmp(what), vec![])
}

/// `x · s` for a scalar `s`.
pub fn scale(cx: &mut Lower, x: &str, s: f32, what: &str) -> String {
    let c = cx.emit.scalar(&cx.tmp(&format!("{what}_factor")), s);
    cx.emit.op("Mul", &[x, &c], &cx.tmp(what), vec![])
}

/// The epsilon attribute of a normalization.
pub fn epsilon(eps: f64) -> super::proto::AttributeProto {
    float("epsilon", eps as f32)
}

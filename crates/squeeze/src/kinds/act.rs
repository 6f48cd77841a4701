//! Element-wise activations: ReLU (one-pass forward and backward, `crate::ops::relu`) and
//! GELU in BERT's erf form (Hendrycks & Gimpel 2016; inference by a rational erf in one
//! pass, `crate::ops::fast`, tested against the differentiable composition of
//! `crate::ops::text`). No tensors; channels pass through unchanged. At inference a GELU
//! that is a Linear's only reader is absorbed by it ([`absorbed_gelu`]): applied in place
//! to the product's fresh output, which saves a buffer and a copy per FFN.

use candle_core::Tensor;

use super::couple::{Coupler, Seg};
use super::{arity, pass_through, Absorb, Inputs, LayerKind, NodeRun};
use super::{Node, Op};
use crate::error::Result;
use crate::onnx::Lower;
use crate::ops::{gelu, relu};

/// `max(0, x)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relu;

/// `x·Φ(x)`, erf form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gelu;

/// The trait methods the element-wise activations share: one input of any shape, the
/// same output shape, no tensors, channels passed through.
macro_rules! elementwise {
    () => {
        fn inputs(&self) -> Inputs {
            Inputs::Values
        }
        fn out_shape(&self, ins: &[&[usize]]) -> std::result::Result<Vec<usize>, String> {
            Ok(arity(ins, 1)?.to_vec())
        }
        no_tensors!();
        fn couple(&self, _: &mut Coupler, _: &Node, ins: &[Vec<Seg>], _: &[&[usize]]) -> Vec<Seg> {
            pass_through(ins)
        }
    };
}

impl LayerKind for Relu {
    fn onnx(&self, cx: &mut Lower) -> Result<String> {
        Ok(cx.emit.op("Relu", &[&cx.x()], &cx.out(), vec![]))
    }
    fn name(&self) -> &'static str {
        "relu"
    }
    fn as_absorbed(&self) -> Option<Absorb> {
        Some(Absorb::Relu)
    }
    elementwise!();
    fn forward(&self, cx: &mut NodeRun) -> Result<Tensor> {
        relu::relu(cx.x())
    }
}

impl LayerKind for Gelu {
    /// The erf form in the shape ONNX Runtime's fusion recognizes: x · (1 + erf(x/√2)) · ½.
    fn onnx(&self, cx: &mut Lower) -> Result<String> {
        let x = cx.x();
        let r2 = cx.emit.scalar(&cx.tmp("sqrt2"), std::f32::consts::SQRT_2);
        let d = cx.emit.op("Div", &[&x, &r2], &cx.tmp("div"), vec![]);
        let e = cx.emit.op("Erf", &[&d], &cx.tmp("erf"), vec![]);
        let one = cx.emit.scalar(&cx.tmp("one"), 1.0);
        let a = cx.emit.op("Add", &[&e, &one], &cx.tmp("add"), vec![]);
        let m = cx.emit.op("Mul", &[&x, &a], &cx.tmp("mul"), vec![]);
        let half = cx.emit.scalar(&cx.tmp("half"), 0.5);
        Ok(cx.emit.op("Mul", &[&m, &half], &cx.out(), vec![]))
    }
    fn name(&self) -> &'static str {
        "gelu"
    }
    fn as_absorbed(&self) -> Option<Absorb> {
        Some(Absorb::Gelu)
    }
    elementwise!();
    fn forward(&self, cx: &mut NodeRun) -> Result<Tensor> {
        gelu_of(cx.x())
    }
}

/// GELU of `x` on the path its tensors allow: the inference kernel, the one-node training
/// op, or the reference composition (f64).
fn gelu_of(x: &Tensor) -> Result<Tensor> {
    if super::inference(&[x]) {
        gelu::gelu(x)
    } else if super::all_f32(&[x]) {
        gelu::gelu_train(x)
    } else {
        gelu::gelu_reference(x)
    }
}

/// The GELU a Linear absorbed ([`Absorb::Gelu`]), applied to its output `y`: in place
/// when `y` is an inference value (the product's fresh buffer, read by no one else — the
/// run plan absorbs only a node's sole reader), else as the GELU node would.
pub(crate) fn absorbed_gelu(y: Tensor, fuse: bool) -> Result<Tensor> {
    if !fuse {
        return Ok(y);
    }
    if super::inference(&[&y]) && y.is_contiguous() {
        gelu::gelu_in_place(&y)?;
        return Ok(y);
    }
    gelu_of(&y)
}

pub(crate) fn relu_example() -> super::Example {
    super::Example {
        op: Op::Relu,
        inputs: vec![vec![3, 4]],
        tensors: vec![],
    }
}

pub(crate) fn gelu_example() -> super::Example {
    super::Example {
        op: Op::Gelu,
        inputs: vec![vec![5, 6]],
        tensors: vec![],
    }
}

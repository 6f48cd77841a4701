//! Spatial pooling over `[C, H, W]`: max and average pooling with a square window (floor
//! mode, no padding; max pooling by the one-pass kernel of `crate::ops::pool`, whose
//! backward is right where candle 0.11's is not) and global average pooling to `[C]`. No
//! tensors; channels pass through unchanged.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::couple::{Coupler, Seg};
use super::{arity, pass_through, positive, Absorb, Inputs, LayerKind, NodeRun};
use super::{Node, Op};
use crate::error::Result;
use crate::onnx::{int, ints, Lower};
use crate::ops::pool;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaxPool2d {
    pub kernel: usize,
    pub stride: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AvgPool2d {
    pub kernel: usize,
    pub stride: usize,
}

/// Mean over the spatial axes: `[C, H, W]` → `[C]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalAvgPool;

fn pooled(
    ins: &[&[usize]],
    kernel: usize,
    stride: usize,
) -> std::result::Result<Vec<usize>, String> {
    positive("kernel", kernel)?;
    positive("stride", stride)?;
    let s = arity(ins, 1)?;
    if s.len() != 3 || s[1] < kernel || s[2] < kernel {
        return Err(format!("cannot pool {s:?} with kernel {kernel}"));
    }
    Ok(vec![
        s[0],
        (s[1] - kernel) / stride + 1,
        (s[2] - kernel) / stride + 1,
    ])
}

/// The trait methods every pooling kind shares (no tensors, channels unchanged).
macro_rules! pooling_common {
    () => {
        fn inputs(&self) -> Inputs {
            Inputs::Values
        }
        no_tensors!();
        fn couple(&self, _: &mut Coupler, _: &Node, ins: &[Vec<Seg>], _: &[&[usize]]) -> Vec<Seg> {
            pass_through(ins)
        }
    };
}

/// A square window `kernel`, `stride` of ONNX pooling operator `op` (floor mode, no padding).
fn window(op: &str, cx: &mut Lower, kernel: usize, stride: usize) -> String {
    let (k, s) = (kernel as i64, stride as i64);
    let attrs = vec![ints("kernel_shape", &[k, k]), ints("strides", &[s, s])];
    cx.emit.op(op, &[&cx.x()], &cx.out(), attrs)
}

impl LayerKind for MaxPool2d {
    fn onnx(&self, cx: &mut Lower) -> Result<String> {
        Ok(window("MaxPool", cx, self.kernel, self.stride))
    }
    pooling_common!();
    fn name(&self) -> &'static str {
        "max_pool2d"
    }
    fn as_absorbed(&self) -> Option<Absorb> {
        Some(Absorb::MaxPool {
            kernel: self.kernel,
            stride: self.stride,
        })
    }
    fn out_shape(&self, ins: &[&[usize]]) -> std::result::Result<Vec<usize>, String> {
        pooled(ins, self.kernel, self.stride)
    }
    fn forward(&self, cx: &mut NodeRun) -> Result<Tensor> {
        pool::max_pool2d(cx.x(), self.kernel, self.stride)
    }
}

impl LayerKind for AvgPool2d {
    fn onnx(&self, cx: &mut Lower) -> Result<String> {
        Ok(window("AveragePool", cx, self.kernel, self.stride))
    }
    pooling_common!();
    fn name(&self) -> &'static str {
        "avg_pool2d"
    }
    fn out_shape(&self, ins: &[&[usize]]) -> std::result::Result<Vec<usize>, String> {
        pooled(ins, self.kernel, self.stride)
    }
    fn forward(&self, cx: &mut NodeRun) -> Result<Tensor> {
        pool::avg_pool2d(cx.x(), self.kernel, self.stride)
    }
}

impl LayerKind for GlobalAvgPool {
    /// `GlobalAveragePool` keeps `[N, C, 1, 1]`; a `Flatten` makes it `[N, C]`.
    fn onnx(&self, cx: &mut Lower) -> Result<String> {
        let p = cx
            .emit
            .op("GlobalAveragePool", &[&cx.x()], &cx.tmp("pool"), vec![]);
        Ok(cx
            .emit
            .op("Flatten", &[&p], &cx.out(), vec![int("axis", 1)]))
    }
    pooling_common!();
    fn name(&self) -> &'static str {
        "global_avg_pool"
    }
    fn out_shape(&self, ins: &[&[usize]]) -> std::result::Result<Vec<usize>, String> {
        let s = arity(ins, 1)?;
        if s.len() != 3 || s[1] == 0 || s[2] == 0 {
            return Err(format!("input {s:?}, expected [C, H, W]"));
        }
        Ok(vec![s[0]])
    }
    fn forward(&self, cx: &mut NodeRun) -> Result<Tensor> {
        pool::global_avg_pool(cx.x())
    }
}

pub(crate) fn max_example() -> super::Example {
    super::Example {
        op: Op::MaxPool2d(MaxPool2d {
            kernel: 3,
            stride: 2,
        }),
        inputs: vec![vec![2, 7, 6]],
        tensors: vec![],
    }
}

pub(crate) fn avg_example() -> super::Example {
    super::Example {
        op: Op::AvgPool2d(AvgPool2d {
            kernel: 2,
            stride: 2,
        }),
        inputs: vec![vec![2, 5, 4]],
        tensors: vec![],
    }
}

pub(crate) fn global_example() -> super::Example {
    super::Example {
        op: Op::GlobalAvgPool,
        inputs: vec![vec![3, 4, 5]],
        tensors: vec![],
    }
}

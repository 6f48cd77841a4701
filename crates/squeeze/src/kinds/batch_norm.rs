//! Batch normalization (Ioffe & Szegedy 2015) over axis 1 of `[N, C]` or `[N, C, H, W]`.
//! Tensors `weight`, `bias` (γ, β; trained) and buffers `running_mean`, `running_var`, all
//! `[C]`. Coupling: every tensor is a per-channel member of its input's space. Forward:
//! train mode uses the fused one-pass kernel of `crate::ops::batchnorm` (optionally with
//! the following ReLU) and reports batch statistics; eval mode the running statistics.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::couple::{Coupler, MemberRole, Seg};
use super::{arity, positive, Absorb, Inputs, LayerKind, NodeRun, TensorRole, TensorSpec};
use super::{Node, Op};
use crate::error::Result;
use crate::onnx::Lower;
use crate::ops::batchnorm;
use crate::params::ParamStore;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchNorm {
    pub channels: usize,
    pub eps: f64,
    pub momentum: f64,
}

impl LayerKind for BatchNorm {
    fn onnx(&self, cx: &mut Lower) -> Result<String> {
        let mut ins = vec![cx.x()];
        for t in ["weight", "bias", "running_mean", "running_var"] {
            ins.push(cx.constant(t)?);
        }
        let refs: Vec<&str> = ins.iter().map(String::as_str).collect();
        let eps = crate::onnx::blocks::epsilon(self.eps);
        Ok(cx
            .emit
            .op("BatchNormalization", &refs, &cx.out(), vec![eps]))
    }
    fn name(&self) -> &'static str {
        "batch_norm"
    }
    /// The ReLU after it, in training and inference (the fused kernel writes max(0, y)).
    fn absorbs(&self, reader: Absorb, so_far: &[Absorb], _train: bool) -> bool {
        reader == Absorb::Relu && so_far.is_empty()
    }
    fn inputs(&self) -> Inputs {
        Inputs::Values
    }
    fn check_values(&self, node: &str, params: &ParamStore) -> std::result::Result<(), String> {
        let name = format!("{node}.running_var");
        let Ok(v) = params.get(&name).and_then(|t| Ok(t.to_vec1::<f32>()?)) else {
            return Ok(()); // missing or mistyped: the store check names it
        };
        match v.iter().position(|x| *x < 0.0) {
            Some(i) => Err(format!(
                "`{name}` holds a negative variance ({}) at channel {i}",
                v[i]
            )),
            None => Ok(()),
        }
    }
    fn out_shape(&self, ins: &[&[usize]]) -> std::result::Result<Vec<usize>, String> {
        positive("channels", self.channels)?;
        if !(self.eps > 0.0 && self.eps <= 1.0) {
            return Err(format!(
                "`eps` must be in (0, 1] (a stabilizer, typically 1e-5), got {}",
                self.eps
            ));
        }
        if !(0.0..=1.0).contains(&self.momentum) {
            return Err(format!(
                "`momentum` must be in [0, 1], got {}",
                self.momentum
            ));
        }
        let s = arity(ins, 1)?;
        if s.is_empty() || s[0] != self.channels {
            return Err(format!("input {s:?}, expected {} channels", self.channels));
        }
        Ok(s.to_vec())
    }
    fn tensors(&self) -> Vec<TensorSpec> {
        let c = vec![self.channels];
        vec![
            TensorSpec::param("weight", c.clone()),
            TensorSpec::param("bias", c.clone()),
            TensorSpec::f32("running_mean", c.clone(), TensorRole::Buffer),
            TensorSpec::f32("running_var", c, TensorRole::Buffer),
        ]
    }
    fn macs(&self, _ins: &[&[usize]], _out: &[usize]) -> u64 {
        0
    }
    fn couple(&self, cx: &mut Coupler, node: &Node, ins: &[Vec<Seg>], _: &[&[usize]]) -> Vec<Seg> {
        let ps = ["weight", "bias", "running_mean", "running_var"];
        cx.per_channel(&ins[0], &node.name, &ps, MemberRole::Norm);
        ins[0].clone()
    }
    fn forward(&self, cx: &mut NodeRun) -> Result<Tensor> {
        let (g, b) = (cx.param("weight")?, cx.param("bias")?);
        if cx.opts.train {
            let (y, st) = batchnorm::train(cx.x(), g, b, self.eps, cx.fuse_relu)?;
            cx.bn_stats.push((cx.node.name.clone(), st));
            return Ok(y);
        }
        let (m, v) = (cx.param("running_mean")?, cx.param("running_var")?);
        batchnorm::eval(cx.x(), g, b, (m, v), self.eps, cx.fuse_relu)
    }
    fn refreshed(&self, dims: &dyn Fn(&str) -> Option<Vec<usize>>, _: &[&[usize]]) -> Option<Op> {
        let d = dims("weight")?;
        Some(Op::BatchNorm(BatchNorm {
            channels: d[0],
            ..self.clone()
        }))
    }
}

pub(crate) fn example() -> super::Example {
    super::Example {
        op: Op::BatchNorm(BatchNorm {
            channels: 3,
            eps: 1e-5,
            momentum: 0.1,
        }),
        inputs: vec![vec![3, 4, 4]],
        tensors: vec![],
    }
}

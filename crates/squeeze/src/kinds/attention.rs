//! The scaled dot-product attention core (Vaswani et al. 2017) over `heads` heads of
//! `head_dim`: inputs q, k, v (`[L, heads·head_dim]` each, from ordinary Linear nodes) and
//! the mask; softmax(q·kᵀ/√head_dim + mask bias)·v. No tensors. Coupling: heads are the
//! channels — a head's group is its head_dim rows of q, k and v (weights and biases) and
//! the head_dim columns of the layer reading the context; cutting it updates `heads`.
//! Forward: one fused loop nest per (sample, head) at inference (`crate::ops::fast`),
//! the differentiable composition of `crate::ops::text` otherwise.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::couple::{Coupler, Seg};
use super::{positive, Inputs, LayerKind, NodeRun, TensorSpec};
use super::{Node, Op};
use crate::error::Result;
use crate::onnx::{blocks, int, ints, Lower};
use crate::ops::attention as kernel;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attention {
    pub heads: usize,
    pub head_dim: usize,
}

impl LayerKind for Attention {
    /// Heads split by `Reshape` + `Transpose`, scores scaled by 1/√d and biased by
    /// (1 − mask)·−10⁹ on the keys, `Softmax`, and the heads merged back.
    fn onnx(&self, cx: &mut Lower) -> Result<String> {
        let (h, d) = (self.heads as i64, self.head_dim as i64);
        let split = cx.emit.axes(&cx.tmp("split_shape"), &[0, 0, h, d]);
        let heads = |cx: &mut Lower, i: usize, perm: &[i64], what: &str| {
            let x = cx.ins[i].clone();
            let r = cx.emit.op(
                "Reshape",
                &[&x, &split],
                &cx.tmp(&format!("{what}_split")),
                vec![],
            );
            cx.emit
                .op("Transpose", &[&r], &cx.tmp(what), vec![ints("perm", perm)])
        };
        let q = heads(cx, 0, &[0, 2, 1, 3], "q"); // [N, H, L, D]
        let k = heads(cx, 1, &[0, 2, 3, 1], "k"); // [N, H, D, L]
        let v = heads(cx, 2, &[0, 2, 1, 3], "v"); // [N, H, L, D]
        let s = cx.emit.op("MatMul", &[&q, &k], &cx.tmp("scores"), vec![]);
        let s = blocks::scale(cx, &s, 1.0 / (self.head_dim as f32).sqrt(), "scaled");
        let one = cx.emit.scalar(&cx.tmp("one"), 1.0);
        let padding = cx.emit.op(
            "Sub",
            &[&one, &cx.ins[3].clone()],
            &cx.tmp("padding"),
            vec![],
        );
        let bias = blocks::scale(cx, &padding, kernel::MASK_BIAS as f32, "mask_bias");
        let ax = cx.emit.axes(&cx.tmp("bias_axes"), &[1, 2]);
        let bias = cx
            .emit
            .op("Unsqueeze", &[&bias, &ax], &cx.tmp("key_bias"), vec![]); // [N, 1, 1, L]
        let s = cx.emit.op("Add", &[&s, &bias], &cx.tmp("biased"), vec![]);
        let p = cx
            .emit
            .op("Softmax", &[&s], &cx.tmp("probs"), vec![int("axis", -1)]);
        let c = cx.emit.op("MatMul", &[&p, &v], &cx.tmp("context"), vec![]); // [N, H, L, D]
        let t = cx.emit.op(
            "Transpose",
            &[&c],
            &cx.tmp("merge"),
            vec![ints("perm", &[0, 2, 1, 3])],
        );
        let merged = cx.emit.axes(&cx.tmp("merge_shape"), &[0, 0, h * d]);
        Ok(cx.emit.op("Reshape", &[&t, &merged], &cx.out(), vec![])) // [N, L, H·D]
    }
    fn name(&self) -> &'static str {
        "attention"
    }
    fn inputs(&self) -> Inputs {
        Inputs::MaskLast
    }
    fn out_shape(&self, ins: &[&[usize]]) -> std::result::Result<Vec<usize>, String> {
        positive("heads", self.heads)?;
        positive("head_dim", self.head_dim)?;
        let width = self
            .heads
            .checked_mul(self.head_dim)
            .ok_or("heads · head_dim overflows")?;
        let ok = ins.len() == 4
            && ins[..3].iter().all(|s| s.len() == 2 && s[1] == width)
            && ins[0][0] == ins[1][0]
            && ins[1][0] == ins[2][0]
            && ins[3] == [ins[1][0]];
        if !ok {
            return Err(format!(
                "expects q, k, v [L, {width}] and mask [L], got {ins:?}"
            ));
        }
        Ok(ins[0].to_vec())
    }
    fn tensors(&self) -> Vec<TensorSpec> {
        vec![]
    }
    fn macs(&self, _: &[&[usize]], out: &[usize]) -> u64 {
        // q·kᵀ and probs·v: 2 · L · L · heads · head_dim
        (2 * out[0] * out[0] * self.heads * self.head_dim) as u64
    }
    fn couple(&self, cx: &mut Coupler, node: &Node, ins: &[Vec<Seg>], _: &[&[usize]]) -> Vec<Seg> {
        // a head is head_dim rows of each of q, k, v (and head_dim columns of whatever
        // reads the context): the q/k/v spaces become one space of `heads` channels
        if let Some(space) = cx.head_space(node, &ins[..3], self.heads, self.head_dim) {
            return vec![Seg::plain(space, self.head_dim)];
        }
        cx.pin_all(
            &ins[..3].concat(),
            "attention core whose q/k/v cannot be cut by heads",
        );
        ins[2].clone()
    }
    fn forward(&self, cx: &mut NodeRun) -> Result<Tensor> {
        let (q, k, v, m) = (&cx.ins[0], &cx.ins[1], &cx.ins[2], &cx.ins[3]);
        let (h, d) = (self.heads, self.head_dim);
        if super::inference(&[q, k, v]) {
            kernel::attention(q, k, v, m, h, d)
        } else if super::all_f32(&[q, k, v]) {
            kernel::attention_train(q, k, v, m, h, d)
        } else {
            kernel::attention_reference(q, k, v, m, h, d)
        }
    }
    fn refreshed(&self, _: &dyn Fn(&str) -> Option<Vec<usize>>, ins: &[&[usize]]) -> Option<Op> {
        // whole heads were cut from q/k/v: their width says how many are left
        let width = *ins.first()?.last()?;
        Some(Op::Attention(Attention {
            heads: width / self.head_dim.max(1),
            head_dim: self.head_dim,
        }))
    }
}

pub(crate) fn example() -> super::Example {
    super::Example {
        op: Op::Attention(Attention {
            heads: 2,
            head_dim: 3,
        }),
        inputs: vec![vec![4, 6], vec![4, 6], vec![4, 6], vec![4]],
        tensors: vec![],
    }
}

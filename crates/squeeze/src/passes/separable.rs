//! Compact filters (Cheng et al.'s third family): each k×k convolution (k > 1) becomes a
//! depthwise k×k convolution followed by a pointwise 1×1 one — MobileNet's
//! depthwise-separable pair (Howard et al. 2017), here without a nonlinearity between the
//! two, so the pair is a factorization of the original kernel: for every input channel c
//! the [out, k·k] slice W[:, c] is replaced by its best rank-1 approximation σ·u·vᵀ (power
//! iteration on the k²×k² Gram matrix), v·√σ as the channel's depthwise filter and u·√σ as
//! its pointwise column. A kernel already rank-1 per channel is reproduced exactly; others
//! keep the fraction of their energy the record reports, and the student is then trained
//! from the original (`squeeze distill --student DIR`) or fine-tuned. The pointwise layer
//! keeps the original's name, bias and readers.

use candle_core::{Device, Tensor};

use serde::{Deserialize, Serialize};

use super::{Declared, Pass, PassCtx, PassRecord};
use crate::error::{Error, Result};
use crate::graph::{Node, Op};
use crate::kinds::conv2d::Conv2d;
use crate::model::Model;

/// The pass: the convolutions to split (default: every k×k one, k > 1, with groups = 1 and
/// more than one input channel).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DepthwiseSeparable {
    #[serde(default)]
    pub layers: Option<Vec<String>>,
}

impl Declared for DepthwiseSeparable {
    const HELP: &'static str = "replace k×k convolutions (`layers`; default every one with k > 1, \
        groups 1 and more than one input channel) by depthwise + pointwise pairs, initialized \
        by per-channel rank-1 factorization";
    const EXAMPLE: &'static str = "";
    fn build(&self) -> Result<Box<dyn Pass>> {
        Ok(Box::new(self.clone()))
    }
}

const PASS: &str = "depthwise_separable";
/// Power-iteration steps for each channel's leading singular vector.
const POWER_STEPS: usize = 200;

/// Whether `c` can be split, and if not why.
fn splittable(c: &Conv2d) -> std::result::Result<(), String> {
    if c.kernel < 2 {
        return Err("is 1×1 already".into());
    }
    if c.groups != 1 {
        return Err("is grouped".into());
    }
    if !c.is_square() {
        return Err("has a rectangular kernel".into());
    }
    Ok(())
}

/// Leading singular triple of `a` [rows, cols] (row-major, f64): (σ, u [rows], v [cols]).
fn rank1(a: &[f64], rows: usize, cols: usize) -> (f64, Vec<f64>, Vec<f64>) {
    let mut gram = vec![0.0; cols * cols];
    for r in a.chunks_exact(cols) {
        for i in 0..cols {
            for j in 0..cols {
                gram[i * cols + j] += r[i] * r[j];
            }
        }
    }
    let mut v = vec![1.0 / (cols as f64).sqrt(); cols];
    for _ in 0..POWER_STEPS {
        let gv: Vec<f64> = gram.chunks_exact(cols).map(|g| dot(g, &v)).collect();
        let norm = dot(&gv, &gv).sqrt();
        if norm == 0.0 {
            return (0.0, vec![0.0; rows], v);
        }
        v = gv.iter().map(|x| x / norm).collect();
    }
    let av: Vec<f64> = a.chunks_exact(cols).map(|r| dot(r, &v)).collect();
    let sigma = dot(&av, &av).sqrt();
    let u = av
        .iter()
        .map(|x| x / sigma.max(f64::MIN_POSITIVE))
        .collect();
    (sigma, u, v)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Depthwise [C, 1, k, k] and pointwise [Co, C, 1, 1] weights from W [Co, C, k, k], and the
/// fraction of ‖W‖² the factorization keeps.
fn factor(w: &[f32], co: usize, c: usize, kk: usize) -> (Vec<f32>, Vec<f32>, f64) {
    let (mut dw, mut pw) = (vec![0f32; c * kk], vec![0f32; co * c]);
    let (mut kept, mut total) = (0.0, 0.0);
    for ch in 0..c {
        let a: Vec<f64> = (0..co)
            .flat_map(|o| w[(o * c + ch) * kk..][..kk].iter().map(|v| *v as f64))
            .collect();
        total += dot(&a, &a);
        let (sigma, u, v) = rank1(&a, co, kk);
        kept += sigma * sigma;
        let s = sigma.sqrt();
        for (t, vt) in v.iter().enumerate() {
            dw[ch * kk + t] = (vt * s) as f32;
        }
        for (o, uo) in u.iter().enumerate() {
            pw[o * c + ch] = (uo * s) as f32;
        }
    }
    (dw, pw, if total > 0.0 { kept / total } else { 1.0 })
}

/// Splits node `name` in place; returns the energy fraction kept.
fn split(model: &mut Model, name: &str) -> Result<f64> {
    let i = model
        .graph
        .index_of(name)
        .ok_or_else(|| Error::pass(PASS, format!("no node `{name}`")))?;
    let Op::Conv2d(c) = model.graph.nodes[i].op.clone() else {
        return Err(Error::pass(PASS, format!("`{name}` is not a convolution")));
    };
    let (co, ci, k) = (c.out_channels, c.in_channels, c.kernel);
    let key = format!("{name}.weight");
    let w = crate::params::f32_values(model.params.get(&key)?)?;
    let (dw, pw, kept) = factor(&w, co, ci, k * k);
    let dw_name = format!("{name}_dw");
    if model.graph.node(&dw_name).is_some() {
        return Err(Error::pass(
            PASS,
            format!("the model already has a node `{dw_name}`"),
        ));
    }
    let depthwise = Node {
        name: dw_name.clone(),
        inputs: model.graph.nodes[i].inputs.clone(),
        op: Op::Conv2d(Conv2d {
            out_channels: ci,
            groups: ci,
            bias: false,
            ..c.clone()
        }),
    };
    let node = &mut model.graph.nodes[i];
    node.inputs = vec![dw_name.clone()];
    node.op = Op::Conv2d(Conv2d {
        kernel: 1,
        stride: 1,
        padding: 0,
        ..c
    });
    model.graph.nodes.insert(i, depthwise);
    let p = &mut model.params;
    p.insert(
        format!("{dw_name}.weight"),
        Tensor::from_vec(dw, (ci, 1, k, k), &Device::Cpu)?,
    );
    p.insert(key, Tensor::from_vec(pw, (co, ci, 1, 1), &Device::Cpu)?);
    Ok(kept)
}

impl Pass for DepthwiseSeparable {
    fn name(&self) -> &'static str {
        PASS
    }

    fn apply(&self, mut model: Model, _ctx: &mut PassCtx) -> Result<(Model, PassRecord)> {
        super::require_dense(&model, PASS)?;
        // by default only convolutions that mix channels: more than one input
        let names = super::select_convs(&model, &self.layers, PASS, splittable, |c| {
            c.in_channels > 1
        })?;
        if names.is_empty() {
            return Err(Error::pass(
                PASS,
                "the model has no k×k convolution (k > 1) to split",
            ));
        }
        let macs = |m: &Model| crate::eval::static_cost(m).map(|c| c.macs);
        let before = macs(&model)?;
        let mut kept = serde_json::Map::new();
        for n in &names {
            kept.insert(n.clone(), split(&mut model, n)?.into());
        }
        model.graph.validate()?;
        model.graph.check_params(&model.params)?;
        let after = macs(&model)?;
        let label = format!(
            "{} k×k convolutions → depthwise + pointwise: {before} → {after} MACs",
            names.len()
        );
        let details = serde_json::json!({
            "layers": names, "energy_kept": kept, "macs_before": before, "macs_after": after,
        });
        super::done(model, self.name(), label, details)
    }
}

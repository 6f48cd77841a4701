//! Quantization-aware training's two ends. [`attach`] gives a Linear or Conv2d node its
//! simulated quantization (`crate::kinds::fake_quant`) with steps initialized from data —
//! each weight row's step is the MSE-optimal clipping value over its codes, the input's
//! from calibration statistics ([`crate::quant::calibrate`]) — after which the trainer
//! learns the steps (LSQ, Esser et al. 2020) with the weights. [`materialize`] turns every
//! such node into its integer form: `qconv2d` / `qlinear` with the codes the simulation
//! computed (int4 where rows are whole 32-element chunks, int8 otherwise, codes within
//! ±7 either way for 4 bits) and the learned input step as the static input scale, or
//! `bconv2d` / `blinear` with packed sign (and non-zero) bit-planes for binary and
//! ternary weights. The materialized layer computes the codes the simulated one did, so
//! their outputs agree to f32 rounding.

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::graph::Op;
use crate::kinds::bconv2d::BConv2d;
use crate::kinds::blinear::BLinear;
use crate::kinds::fake_quant::{FakeQuant, WeightQuant};
use crate::kinds::qconv2d::QConv2d;
use crate::kinds::qlinear::{ActQuant, QLinear};
use crate::math::bits::BitWeight;
use crate::math::qlayout::{Layout, Scales, INT4_CHUNK};
use crate::model::Model;
use crate::ops::fake_quant as fq;
use crate::params::f32_values;
use crate::quant::calibrate::{Clip, RangeStats};
use crate::quant::QWeight;

/// Gives node `node` (Linear or Conv2d) the simulated quantization `q`, with per-channel
/// weight steps from its current weight and, when `q` quantizes the input, `input_step`.
pub fn attach(model: &mut Model, node: &str, q: FakeQuant, input_step: Option<f32>) -> Result<()> {
    q.check()
        .map_err(|m| Error::Graph(format!("`{node}`: {m}")))?;
    let idx = model
        .graph
        .index_of(node)
        .ok_or_else(|| Error::Graph(format!("no node `{node}`")))?;
    let w = model.params.get(&format!("{node}.weight"))?;
    let rows = w.dim(0)?;
    let vals = f32_values(w)?;
    if q.weights.has_step() {
        let steps = weight_steps(&vals, rows, q.weight_max());
        let t = Tensor::from_vec(steps, rows, &Device::Cpu)?;
        model.params.insert(format!("{node}.weight_step"), t);
    }
    if q.act_bits.is_some() {
        let s = input_step.ok_or_else(|| Error::Graph(format!("no input step for `{node}`")))?;
        let t = Tensor::from_vec(vec![s], 1, &Device::Cpu)?;
        model.params.insert(format!("{node}.input_step"), t);
    }
    match &mut model.graph.nodes[idx].op {
        Op::Linear(l) => l.quant = Some(q),
        Op::Conv2d(c) => c.quant = Some(q),
        op => {
            return Err(Error::Graph(format!(
                "`{node}` is a {}: quantization-aware training takes Linear and Conv2d layers",
                op.kind()
            )))
        }
    }
    Ok(())
}

/// Each row's step: the MSE-optimal clipping value of its codes in ±`qmax`, over `qmax`.
pub fn weight_steps(w: &[f32], rows: usize, qmax: u8) -> Vec<f32> {
    let cols = w.len() / rows.max(1);
    w.chunks(cols.max(1))
        .map(|row| {
            let mut r = RangeStats::default();
            r.add(row);
            let s = r.scale(Clip::Mse, qmax as i8);
            if s > 0.0 {
                s
            } else {
                MIN_STEP
            }
        })
        .collect()
}

/// The smallest step a trained step is kept above (a step of 0 would divide by zero).
pub const MIN_STEP: f32 = 1e-8;

/// Every node with simulated quantization replaced by its integer form; returns their
/// names. BatchNorms after them must have been folded in first.
pub fn materialize(mut model: Model) -> Result<(Model, Vec<String>)> {
    let mut done = Vec::new();
    for idx in 0..model.graph.nodes.len() {
        let node = model.graph.nodes[idx].clone();
        let (q, shape) = match &node.op {
            Op::Linear(l) => match l.quant {
                Some(q) => (q, Shape::Linear(l.clone())),
                None => continue,
            },
            Op::Conv2d(c) => match c.quant {
                Some(q) => (q, Shape::Conv(c.clone())),
                None => continue,
            },
            _ => continue,
        };
        let op = one(&mut model, &node.name, q, shape)?;
        model.graph.nodes[idx].op = op;
        done.push(node.name);
    }
    model.graph.validate()?;
    Ok((model, done))
}

/// The float layer being materialized.
enum Shape {
    Linear(crate::kinds::linear::Linear),
    Conv(crate::kinds::conv2d::Conv2d),
}

/// Node `name`'s tensors replaced by its integer form; returns that form's op.
fn one(model: &mut Model, name: &str, q: FakeQuant, shape: Shape) -> Result<Op> {
    let get = |s: &str| {
        model
            .params
            .get(&format!("{name}.{s}"))
            .and_then(f32_values)
    };
    let w = get("weight")?;
    let rows = match &shape {
        Shape::Linear(l) => l.out_features,
        Shape::Conv(c) => c.out_channels,
    };
    let cols = w.len() / rows.max(1);
    let input = match q.act_bits {
        Some(_) => Some(get("input_step")?[0]),
        None => None,
    };
    let steps = match q.weights.has_step() {
        true => get("weight_step")?,
        false => Vec::new(),
    };
    let codes_range = input.map(|_| {
        let (qn, qp) = q.act_range();
        [-(qn as i8), qp as i8]
    });
    let why = |m: String| Error::Graph(format!("materializing `{name}`: {m}"));
    // checked before any tensor is replaced: both integer forms of a convolution
    // (int8/int4 codes, packed levels) run the square, ungrouped kernel on quantized inputs
    if let Shape::Conv(c) = &shape {
        if input.is_none() || !c.is_square() || c.groups != 1 {
            return Err(why(
                "the integer convolution takes square, ungrouped kernels and quantized \
                 inputs (`act_bits`)"
                    .into(),
            ));
        }
    }
    for s in ["weight", "weight_step", "input_step"] {
        model.params.remove(&format!("{name}.{s}"));
    }
    if let Some(s) = input {
        let t = Tensor::from_vec(vec![s], 1, &Device::Cpu)?;
        model.params.insert(format!("{name}.input_scale"), t);
    }
    if !q.weights.has_step() {
        let ternary = q.weights == WeightQuant::Ternary;
        let b = BitWeight::from_rows(&w, rows, cols, ternary);
        for (suffix, t) in b.tensors()? {
            model.params.insert(format!("{name}.{suffix}"), t);
        }
        let input_codes = codes_range.ok_or_else(|| {
            why("binary and ternary layers run on quantized inputs: set `act_bits`".into())
        })?;
        return Ok(match shape {
            Shape::Linear(l) => Op::BLinear(BLinear {
                in_features: l.in_features,
                out_features: l.out_features,
                bias: l.bias,
                ternary,
                input_codes,
            }),
            Shape::Conv(c) => Op::BConv2d(BConv2d {
                in_channels: c.in_channels,
                out_channels: c.out_channels,
                kernel: c.kernel,
                stride: c.stride,
                padding: c.padding,
                bias: c.bias,
                ternary,
                input_codes,
            }),
        });
    }
    let qp = f32::from(q.weight_max());
    let mut codes = Vec::with_capacity(w.len());
    for (row, &s) in w.chunks(cols.max(1)).zip(&steps) {
        codes.extend(fq::codes(row, s, (qp, qp)));
    }
    let bits = if q.bits <= 4 && cols.is_multiple_of(INT4_CHUNK) {
        4
    } else {
        8
    };
    let layout = Layout {
        bits,
        scales: Scales::Channel,
        zero_point: false,
    };
    let qw =
        QWeight::from_codes(&codes, rows, cols, steps, layout).map_err(|e| why(e.to_string()))?;
    let (c, s, _) = qw.tensors()?;
    model.params.insert(format!("{name}.weight_q"), c);
    model.params.insert(format!("{name}.weight_scale"), s);
    Ok(match shape {
        Shape::Linear(l) => {
            let act = match (input, bits) {
                (Some(_), _) => ActQuant::Static,
                (None, 4) => ActQuant::None,
                (None, _) => {
                    return Err(why(format!(
                        "{}-bit weights in int8 storage need quantized inputs: set `act_bits`",
                        q.bits
                    )))
                }
            };
            Op::QLinear(QLinear {
                in_features: l.in_features,
                out_features: l.out_features,
                bias: l.bias,
                layout,
                act,
                input_codes: codes_range,
            })
        }
        Shape::Conv(c) => Op::QConv2d(QConv2d {
            in_channels: c.in_channels,
            out_channels: c.out_channels,
            kernel: c.kernel,
            stride: c.stride,
            padding: c.padding,
            bias: c.bias,
            layout,
            input_codes: codes_range,
        }),
    })
}

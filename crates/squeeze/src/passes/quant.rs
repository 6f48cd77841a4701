//! The `quantize` pass: a mapper over selected parameters (burn's quantizer shape). Each
//! selected Linear node becomes a `qlinear` node holding its weight in the chosen
//! [`Layout`] — round-to-nearest, or GPTQ from calibration inputs captured one input
//! group at a time (q/k/v share one capture) with the earlier groups already quantized —
//! and, for static int8, the input scale calibrated on the original model. Embedding
//! tables become int8 `qembedding` nodes. By default every Linear is selected except the
//! one producing the model's output (the classifier, which stays f32; name it in `layers`
//! to quantize it too). Under static int8, Conv2d nodes (groups = 1) become `qconv2d`.

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use super::prune::{input_stats, linear_groups, progress, real_rows};
use super::{Pass, PassCtx, PassRecord};
use crate::error::{Error, Result};
use crate::graph::Op;
use crate::kinds::qconv2d::QConv2d;
use crate::kinds::qembedding::QEmbedding;
use crate::kinds::qlinear::{ActQuant, QLinear};
use crate::math::qlayout::Layout;
use crate::model::Model;
use crate::ops::qgemm::quantize::LINEAR_ACT_MAX;
use crate::prune::obs::InputStats;
use crate::quant::calibrate::{Clip, RangeStats};
use crate::quant::gptq::{gptq, GptqOpts};
use crate::quant::QWeight;

/// How weights are rounded.
#[derive(Debug, Clone, Copy)]
pub enum Rounding {
    Rtn,
    Gptq(GptqOpts),
}

/// The quantization pass.
pub struct Quantize {
    pub layout: Layout,
    pub act: ActQuant,
    pub rounding: Rounding,
    /// Static int8: how the input scales are chosen.
    pub clip: Clip,
    /// Linear nodes to quantize (default: all but the output layer).
    pub layers: Option<Vec<String>>,
    /// Also store embedding tables as int8 (token graphs).
    pub embeddings: bool,
}

impl Pass for Quantize {
    fn name(&self) -> &'static str {
        "quantize"
    }

    fn apply(&self, mut model: Model, ctx: &mut PassCtx) -> Result<(Model, PassRecord)> {
        let nodes = self.selected(&model)?;
        let names: Vec<String> = nodes.iter().map(|n| format!("{n}.weight")).collect();
        let scales = match self.act {
            ActQuant::Static => self.input_scales(&model, &nodes, ctx)?,
            _ => HashMap::new(),
        };
        let (mut before, mut after) = (0usize, 0usize);
        let convs: Vec<String> = nodes
            .iter()
            .filter(|n| matches!(model.graph.node(n).map(|n| &n.op), Some(Op::Conv2d(_))))
            .cloned()
            .collect();
        for node in &convs {
            let (w, rows) = weight(&model, node)?;
            let q = QWeight::quantize(&w, rows, w.len() / rows.max(1), self.layout)
                .map_err(|e| Error::pass(self.name(), format!("`{node}.weight`: {e}")))?;
            before += w.len() * 4;
            after += q.stored_bytes();
            to_qconv2d(&mut model, node, &q, scales.get(node).copied())?;
        }
        let names: Vec<String> = names
            .into_iter()
            .filter(|n| !convs.iter().any(|c| n == &format!("{c}.weight")))
            .collect();
        let groups = linear_groups(&model, &names, self.name())?;
        let bar = progress(groups.len(), self.name());
        for (cols, group) in &groups {
            bar.inc(1);
            let stats = match self.rounding {
                Rounding::Gptq(_) => Some(self.capture(&model, group, *cols, ctx)?),
                Rounding::Rtn => None,
            };
            for node in group {
                let (w, rows) = weight(&model, node)?;
                let q = match (self.rounding, &stats) {
                    (Rounding::Gptq(o), Some(s)) => gptq(&w, rows, s, self.layout, o),
                    _ => QWeight::quantize(&w, rows, *cols, self.layout),
                }
                .map_err(|e| Error::pass(self.name(), format!("`{node}.weight`: {e}")))?;
                before += w.len() * 4;
                after += q.stored_bytes();
                to_qlinear(&mut model, node, &q, self.act, scales.get(node).copied())?;
            }
        }
        bar.finish_and_clear();
        let tables = if self.embeddings {
            quantize_embeddings(&mut model)?
        } else {
            vec![]
        };
        let label = format!(
            "{} layers → {} ({} activations), {:.1} → {:.1} MB{}",
            nodes.len(),
            self.layout.label(),
            match self.act {
                ActQuant::None => "f32",
                ActQuant::Dynamic => "dynamic int8",
                ActQuant::Static => "static int8",
            },
            before as f64 / 1e6,
            after as f64 / 1e6,
            if tables.is_empty() {
                String::new()
            } else {
                format!("; {} embedding tables → int8", tables.len())
            }
        );
        let details = serde_json::json!({
            "layout": self.layout, "act": self.act, "layers": nodes,
            "rounding": match self.rounding { Rounding::Rtn => "rtn", Rounding::Gptq(_) => "gptq" },
            "embeddings": tables,
        });
        super::done(model, self.name(), label, details)
    }
}

impl Quantize {
    /// The nodes to quantize, checked.
    fn selected(&self, model: &Model) -> Result<Vec<String>> {
        let g = &model.graph;
        let chosen: Vec<String> = match &self.layers {
            Some(l) if l.is_empty() => return Err(Error::pass(self.name(), "`layers` is empty")),
            Some(l) => l.clone(),
            None => g
                .nodes
                .iter()
                .filter(|n| self.quantizable(&n.op) && n.name != g.output)
                .map(|n| n.name.clone())
                .collect(),
        };
        for name in &chosen {
            match g.node(name) {
                Some(n) if self.quantizable(&n.op) => {}
                Some(n) => {
                    let what = match &n.op {
                        Op::Conv2d(c) if c.groups > 1 => "a grouped conv2d layer".to_string(),
                        Op::Conv2d(c) if !c.is_square() => {
                            "a conv2d layer with a rectangular kernel (the int8 convolution \
                             kernel is square)"
                                .to_string()
                        }
                        Op::Conv2d(_) => "a conv2d layer (convolutions are quantized with \
                                          `bits = 8` and `activations = \"static\"`)"
                            .into(),
                        op => format!("a `{}` node", op.kind()),
                    };
                    return Err(Error::pass(
                        self.name(),
                        format!("`layers`: `{name}` is {what}, not a linear layer"),
                    ));
                }
                None => {
                    return Err(Error::pass(
                        self.name(),
                        format!("`layers`: the model has no node `{name}`"),
                    ))
                }
            }
            let w = format!("{name}.weight");
            if g.masks.contains(&w) || g.codecs.contains_key(&w) {
                return Err(Error::pass(
                    self.name(),
                    format!("`{w}` is masked or shared: run `materialize` first"),
                ));
            }
        }
        Ok(chosen)
    }

    /// Whether a node of this kind is quantized by this pass: Linear always, Conv2d
    /// (groups = 1) under static int8.
    fn quantizable(&self, op: &Op) -> bool {
        match op {
            Op::Linear(_) => true,
            Op::Conv2d(c) => {
                c.groups == 1
                    && c.is_square()
                    && self.act == ActQuant::Static
                    && self.layout.bits == 8
            }
            _ => false,
        }
    }

    /// GPTQ's input statistics of one group, captured on the current (partly quantized)
    /// model.
    fn capture(
        &self,
        model: &Model,
        group: &[String],
        cols: usize,
        ctx: &mut PassCtx,
    ) -> Result<InputStats> {
        input_stats(ctx, model, &group[0], cols, true)
    }

    /// Static int8: each node's input scale (the step of its codes) from the calibration
    /// batches.
    fn input_scales(
        &self,
        model: &Model,
        nodes: &[String],
        ctx: &mut PassCtx,
    ) -> Result<HashMap<String, f32>> {
        let stats = input_ranges(model, nodes, ctx)?;
        // a Linear layer's codes are in ±64 (its kernel's offset form), a convolution's ±127
        let lim = |n: &str| match model.graph.node(n).map(|n| &n.op) {
            Some(Op::Linear(_)) => LINEAR_ACT_MAX,
            _ => 127,
        };
        Ok(stats
            .into_iter()
            .map(|(n, s)| {
                let step = s.scale(self.clip, lim(&n));
                (n, step)
            })
            .collect())
    }
}

/// The range statistics of each node's input over the calibration batches.
pub(crate) fn input_ranges(
    model: &Model,
    nodes: &[String],
    ctx: &mut PassCtx,
) -> Result<HashMap<String, RangeStats>> {
    let mut stats: HashMap<String, RangeStats> = HashMap::new();
    ctx.capture(model, nodes, |batch, taps| {
        for n in nodes {
            let tap = taps
                .get(n)
                .ok_or_else(|| Error::Graph(format!("no tap for `{n}`")))?;
            let x: Vec<f32> = real_rows(batch, &tap.inputs[0])?.flatten_all()?.to_vec1()?;
            stats.entry(n.clone()).or_default().add(&x);
        }
        Ok(())
    })?;
    Ok(stats)
}

/// A Linear node's weight values and its rows.
fn weight(model: &Model, node: &str) -> Result<(Vec<f32>, usize)> {
    let t = model.params.get(&format!("{node}.weight"))?;
    Ok((crate::params::f32_values(t)?, t.dim(0)?))
}

/// Replaces Linear node `node` by a qlinear node holding `q`.
fn to_qlinear(
    model: &mut Model,
    node: &str,
    q: &QWeight,
    act: ActQuant,
    input_scale: Option<f32>,
) -> Result<()> {
    let (idx, op) = swap_tensors(model, node, q, input_scale)?;
    let Op::Linear(l) = op else {
        return Err(Error::Graph(format!("`{node}` is not a linear layer")));
    };
    model.graph.nodes[idx].op = Op::QLinear(QLinear {
        in_features: l.in_features,
        out_features: l.out_features,
        bias: l.bias,
        layout: q.layout,
        act,
        input_codes: None,
    });
    Ok(())
}

/// Replaces Conv2d node `node` (groups = 1) by a static-int8 qconv2d node holding `q`.
fn to_qconv2d(model: &mut Model, node: &str, q: &QWeight, input_scale: Option<f32>) -> Result<()> {
    let s = input_scale.ok_or_else(|| Error::Graph(format!("no input scale for `{node}`")))?;
    let (idx, op) = swap_tensors(model, node, q, Some(s))?;
    let Op::Conv2d(c) = op else {
        return Err(Error::Graph(format!("`{node}` is not a conv2d layer")));
    };
    model.graph.nodes[idx].op = Op::QConv2d(QConv2d {
        in_channels: c.in_channels,
        out_channels: c.out_channels,
        kernel: c.kernel,
        stride: c.stride,
        padding: c.padding,
        bias: c.bias,
        layout: q.layout,
        input_codes: None,
    });
    Ok(())
}

/// Node `node`'s float weight replaced by `q`'s tensors (and its static input scale, if
/// any): the node's index and its op, which the caller rewrites.
fn swap_tensors(
    model: &mut Model,
    node: &str,
    q: &QWeight,
    input_scale: Option<f32>,
) -> Result<(usize, Op)> {
    let idx = model
        .graph
        .nodes
        .iter()
        .position(|n| n.name == node)
        .ok_or_else(|| Error::Graph(format!("no node `{node}`")))?;
    model.params.remove(&format!("{node}.weight"));
    insert_q(model, node, q)?;
    if let Some(s) = input_scale {
        let t = Tensor::from_vec(vec![s], 1, &Device::Cpu)?;
        model.params.insert(format!("{node}.input_scale"), t);
    }
    Ok((idx, model.graph.nodes[idx].op.clone()))
}

/// Stores `q`'s tensors as `<node>.weight_q`, `.weight_scale` (and `.weight_zero`).
fn insert_q(model: &mut Model, node: &str, q: &QWeight) -> Result<()> {
    let (codes, scales, zeros) = q.tensors()?;
    model.params.insert(format!("{node}.weight_q"), codes);
    model.params.insert(format!("{node}.weight_scale"), scales);
    if let Some(z) = zeros {
        model.params.insert(format!("{node}.weight_zero"), z);
    }
    Ok(())
}

/// Every Embedding node becomes an int8 qembedding node (one scale per row); returns
/// their names.
fn quantize_embeddings(model: &mut Model) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for idx in 0..model.graph.nodes.len() {
        let Op::Embedding(e) = model.graph.nodes[idx].op.clone() else {
            continue;
        };
        let node = model.graph.nodes[idx].name.clone();
        let (w, rows) = weight(model, &node)?;
        let q = QWeight::quantize(&w, rows, e.dim, Layout::INT8_CHANNEL)
            .map_err(|err| Error::pass("quantize", format!("`{node}.weight`: {err}")))?;
        model.params.remove(&format!("{node}.weight"));
        insert_q(model, &node, &q)?;
        model.graph.nodes[idx].op = Op::QEmbedding(QEmbedding {
            num: e.num,
            dim: e.dim,
            lookup: e.lookup,
            layout: Layout::INT8_CHANNEL,
            offset: e.offset,
        });
        done.push(node);
    }
    Ok(done)
}

//! The graph side of a factorization: which matrix a Linear or Conv2d node's weight is
//! read as ([`LayerShape`]), and the rewrite of the node into two nodes holding the
//! factors. The first node is new (`<name>_lr`, no bias) and reads the original's input;
//! the second keeps the original's name, bias and readers.

use candle_core::{Device, Tensor};

use super::{Decomposition, Form};
use crate::error::{Error, Result};
use crate::graph::{Node, Op};
use crate::kinds::conv2d::{Axis, Conv2d};
use crate::kinds::linear::Linear;
use crate::model::Model;
use crate::params::f32_values;

/// A factorizable node and the matrix its weight is read as.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerShape {
    pub node: String,
    /// Matrix rows and columns; the first factor is `r × cols`, the second `rows × r`.
    pub rows: usize,
    pub cols: usize,
    kind: Layer,
}

#[derive(Debug, Clone, PartialEq)]
enum Layer {
    Linear(Linear),
    Conv(Conv2d, Form),
}

impl LayerShape {
    /// The largest rank (the matrix's smaller side).
    pub fn max_rank(&self) -> usize {
        self.rows.min(self.cols)
    }
    /// Parameters of the original weight.
    pub fn full_params(&self) -> usize {
        self.rows * self.cols
    }
    /// Parameters the two factors hold per unit of rank.
    pub fn params_per_rank(&self) -> usize {
        self.rows + self.cols
    }
    /// Whether the weight's columns are the layer's input features (a Linear layer), so
    /// that an activation-aware scaling of them applies.
    pub fn columns_are_inputs(&self) -> bool {
        matches!(self.kind, Layer::Linear(_))
    }
    /// The weight as its `rows × cols` matrix, row-major, in f64.
    pub fn matrix(&self, model: &Model) -> Result<Vec<f64>> {
        let w = f32_values(model.params.get(&format!("{}.weight", self.node))?)?;
        let w: Vec<f64> = w.into_iter().map(f64::from).collect();
        let Layer::Conv(c, Form::Spatial) = &self.kind else {
            return Ok(w); // [out, in] or [out, in·kh·kw] as stored
        };
        // M[(ci, i), (o, j)] = W[o, ci, i, j]
        let (co, ci, kh, kw) = (
            c.out_channels,
            c.in_channels,
            c.kernel,
            c.width_axis().kernel,
        );
        let mut m = vec![0.0; w.len()];
        for o in 0..co {
            for c_ in 0..ci {
                for i in 0..kh {
                    for j in 0..kw {
                        m[(c_ * kh + i) * (co * kw) + o * kw + j] =
                            w[((o * ci + c_) * kh + i) * kw + j];
                    }
                }
            }
        }
        Ok(m)
    }
}

/// The shape of node `node` factorized in `form` (read for convolutions only), or why it
/// cannot be factorized.
pub fn shape_of(model: &Model, node: &str, form: Form) -> std::result::Result<LayerShape, String> {
    let n = model
        .graph
        .node(node)
        .ok_or_else(|| "is not a node of the model".to_string())?;
    let w = format!("{node}.weight");
    if model.graph.masks.contains(&w) || model.graph.codecs.contains_key(&w) {
        return Err("has a masked or shared weight; materialize it first".into());
    }
    let (rows, cols, kind) = match &n.op {
        Op::Linear(l) => (l.out_features, l.in_features, Layer::Linear(l.clone())),
        Op::Conv2d(c) if c.groups != 1 => return Err("is a grouped convolution".into()),
        Op::Conv2d(c) => {
            let (kh, kw) = (c.kernel, c.width_axis().kernel);
            let (ci, co) = (c.in_channels, c.out_channels);
            match form {
                Form::Unfold => (co, ci * kh * kw, Layer::Conv(c.clone(), form)),
                Form::Spatial => (ci * kh, co * kw, Layer::Conv(c.clone(), form)),
            }
        }
        op => {
            return Err(format!(
                "is a {}, not a linear or convolution layer",
                op.kind()
            ))
        }
    };
    Ok(LayerShape {
        node: node.to_string(),
        rows,
        cols,
        kind,
    })
}

/// What one factorization did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Factorized {
    pub layer: String,
    pub rank: usize,
    pub energy_kept: f64,
    pub params_before: usize,
    pub params_after: usize,
}

fn tensor(v: &[f64], shape: &[usize]) -> Result<Tensor> {
    let v: Vec<f32> = v.iter().map(|x| *x as f32).collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

/// The two ops and weights of `shape`'s layer at rank `r` from factors `first`
/// (`r × cols`) and `second` (`rows × r`).
fn halves(
    shape: &LayerShape,
    r: usize,
    first: &[f64],
    second: &[f64],
) -> Result<[(Op, Tensor); 2]> {
    Ok(match &shape.kind {
        Layer::Linear(l) => [
            (
                Op::Linear(Linear {
                    in_features: l.in_features,
                    out_features: r,
                    bias: false,
                    quant: None,
                }),
                tensor(first, &[r, l.in_features])?,
            ),
            (
                Op::Linear(Linear {
                    in_features: r,
                    ..l.clone()
                }),
                tensor(second, &[l.out_features, r])?,
            ),
        ],
        Layer::Conv(c, Form::Unfold) => [
            (
                Op::Conv2d(Conv2d {
                    out_channels: r,
                    bias: false,
                    ..c.clone()
                }),
                tensor(first, &[r, c.in_channels, c.kernel, c.width_axis().kernel])?,
            ),
            (
                Op::Conv2d(Conv2d {
                    in_channels: r,
                    kernel: 1,
                    stride: 1,
                    padding: 0,
                    width: None,
                    ..c.clone()
                }),
                tensor(second, &[c.out_channels, r, 1, 1])?,
            ),
        ],
        Layer::Conv(c, Form::Spatial) => {
            let (ci, co, kh, aw) = (c.in_channels, c.out_channels, c.kernel, c.width_axis());
            // second is [(ci, i), r]: the vertical filters V1[r, ci, i, 0]
            let mut v1 = vec![0.0; r * ci * kh];
            for (row, vals) in second.chunks_exact(r).enumerate() {
                for (k, v) in vals.iter().enumerate() {
                    v1[k * ci * kh + row] = *v;
                }
            }
            let point = Axis {
                kernel: 1,
                stride: 1,
                padding: 0,
            };
            [
                (
                    Op::Conv2d(Conv2d {
                        out_channels: r,
                        bias: false,
                        width: Some(point),
                        ..c.clone()
                    }),
                    tensor(&v1, &[r, ci, kh, 1])?,
                ),
                (
                    // first is [r, (o, j)]: the horizontal filters V2[o, r, 0, j]
                    Op::Conv2d(Conv2d {
                        in_channels: r,
                        kernel: 1,
                        stride: 1,
                        padding: 0,
                        width: Some(aw),
                        ..c.clone()
                    }),
                    tensor(
                        &transpose_blocks(first, r, co, aw.kernel),
                        &[co, r, 1, aw.kernel],
                    )?,
                ),
            ]
        }
    })
}

/// `[r, (o, j)]` → `[o, r, j]`.
fn transpose_blocks(a: &[f64], r: usize, co: usize, kw: usize) -> Vec<f64> {
    let mut out = vec![0.0; a.len()];
    for k in 0..r {
        for o in 0..co {
            for j in 0..kw {
                out[(o * r + k) * kw + j] = a[k * co * kw + o * kw + j];
            }
        }
    }
    out
}

/// Replaces `shape`'s node by its rank-`r` factorization from `d`.
pub fn apply(
    model: &mut Model,
    shape: &LayerShape,
    d: &Decomposition,
    r: usize,
) -> Result<Factorized> {
    let name = &shape.node;
    let first_name = format!("{name}_lr");
    if model.graph.node(&first_name).is_some() {
        return Err(Error::Graph(format!(
            "`{name}` cannot be factorized: the model already has a node `{first_name}`"
        )));
    }
    let i = model
        .graph
        .index_of(name)
        .ok_or_else(|| Error::Graph(format!("no node `{name}`")))?;
    let (first, second) = d.factors(r);
    let [(op1, w1), (op2, w2)] = halves(shape, r, &first, &second)?;
    let node = Node {
        name: first_name.clone(),
        inputs: model.graph.nodes[i].inputs.clone(),
        op: op1,
    };
    model.graph.nodes[i].inputs = vec![first_name.clone()];
    model.graph.nodes[i].op = op2;
    model.graph.nodes.insert(i, node);
    model.params.insert(format!("{first_name}.weight"), w1);
    model.params.insert(format!("{name}.weight"), w2);
    model.graph.cache = Default::default();
    Ok(Factorized {
        layer: name.clone(),
        rank: r,
        energy_kept: d.energy_kept(r),
        params_before: shape.full_params(),
        params_after: r * shape.params_per_rank(),
    })
}

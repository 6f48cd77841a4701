//! Pruning and weight sharing — the survey's first family; structured (channel, head and
//! FFN-unit) pruning lives in [`channel`], unstructured pruning here. Every unstructured
//! method works on the same simulated form: a u8 mask `<weight>.mask` per pruned tensor (listed in
//! `Graph.masks`, re-applied by the trainer after every step) and, for weight sharing, a
//! storage codec recorded in `Graph.codecs`. Scores decide the masks: magnitude
//! ([`select`], gradual with AGP in [`agp`]), Optimal Brain Damage saliencies ([`obd`]),
//! Wanda and SparseGPT from calibration activations ([`obs`]); [`share`] clusters weights
//! (Deep Compression) and [`crate::math::codec`]/[`crate::math::huffman`] store them; [`condense`] learns group
//! structure (CondenseNet); [`materialize`] turns masks
//! into smaller tensors and the sparse kind.

pub mod agp;
pub mod channel;
pub mod condense;
pub mod csr_choice;
pub mod materialize;
pub mod obd;
pub mod obs;
pub mod select;
pub mod share;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::graph::Op;
use crate::model::Model;

/// Which weights compete for removal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Every layer loses the same fraction of its weights.
    #[default]
    Layer,
    /// One threshold over all selected layers' scores.
    Global,
}

/// What to remove.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pattern {
    /// A fraction (0 ≤ s < 1) of the weights.
    Fraction(f64),
    /// Keep `n` of every `m` consecutive weights along each output row (N:M, e.g. 2:4).
    NofM { n: usize, m: usize },
}

impl Pattern {
    /// The pattern of a recipe entry: `sparsity`, or `n` and `m`; errors name the field.
    pub fn from_options(
        pass: &str,
        sparsity: Option<f64>,
        n: Option<usize>,
        m: Option<usize>,
    ) -> Result<Self> {
        let bad = |msg: String| Error::pass(pass, msg);
        match (sparsity, n, m) {
            (Some(s), None, None) => {
                if !(0.0..1.0).contains(&s) {
                    return Err(bad(format!("`sparsity` must be in [0, 1), got {s}")));
                }
                Ok(Pattern::Fraction(s))
            }
            (None, Some(n), Some(m)) => {
                if m == 0 || n == 0 {
                    return Err(bad(format!("`n` and `m` must be positive, got {n}:{m}")));
                }
                if n > m {
                    return Err(bad(format!("`n` ({n}) must not exceed `m` ({m})")));
                }
                Ok(Pattern::NofM { n, m })
            }
            (Some(_), _, _) => Err(bad("give either `sparsity` or `n` and `m`, not both".into())),
            (None, Some(_), None) | (None, None, Some(_)) => {
                Err(bad("N:M pruning needs both `n` and `m`".into()))
            }
            (None, None, None) => Err(bad("missing `sparsity` (or `n` and `m`)".into())),
        }
    }

    /// The fraction of weights this pattern removes.
    pub fn fraction(&self) -> f64 {
        match *self {
            Pattern::Fraction(s) => s,
            Pattern::NofM { n, m } => 1.0 - n as f64 / m as f64,
        }
    }
}

/// One prunable weight: its full name, shape, values and current mask (1 = kept).
#[derive(Debug, Clone)]
pub struct Weight {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
    pub mask: Vec<u8>,
}

impl Weight {
    /// Output rows (first axis) and the length of each.
    pub fn rows(&self) -> (usize, usize) {
        let r = self.shape.first().copied().unwrap_or(1).max(1);
        (r, self.values.len() / r)
    }
}

/// The weights a pass prunes: the `weight` of every Linear and Conv2d node, or of the
/// nodes named in `layers` (each must exist and be one of those kinds).
pub fn targets(model: &Model, layers: Option<&[String]>, pass: &str) -> Result<Vec<String>> {
    let prunable = |op: &Op| matches!(op, Op::Linear(_) | Op::Conv2d(_));
    let Some(layers) = layers else {
        return Ok(model
            .graph
            .nodes
            .iter()
            .filter(|n| prunable(&n.op))
            .map(|n| format!("{}.weight", n.name))
            .collect());
    };
    if layers.is_empty() {
        return Err(Error::pass(pass, "`layers` is empty"));
    }
    layers
        .iter()
        .map(|l| match model.graph.node(l) {
            Some(n) if prunable(&n.op) => Ok(format!("{l}.weight")),
            Some(n) => Err(Error::pass(
                pass,
                format!(
                    "`layers`: node `{l}` is a {}, not a linear or conv2d layer",
                    n.op.kind()
                ),
            )),
            None => Err(Error::pass(
                pass,
                format!("`layers`: the model has no node `{l}`"),
            )),
        })
        .collect()
}

/// Reads weight `name` with its mask (all ones when it has none).
pub fn read(model: &Model, name: &str) -> Result<Weight> {
    let t = model.params.get(name)?;
    let shape = t.dims().to_vec();
    let values = crate::params::f32_values(t)?;
    let mask = match model.params.get(&format!("{name}.mask")) {
        Ok(m) if model.graph.masks.iter().any(|x| x == name) => m.flatten_all()?.to_vec1()?,
        _ => vec![1; values.len()],
    };
    Ok(Weight {
        name: name.into(),
        shape,
        values,
        mask,
    })
}

/// Stores `w`: its values with the pruned entries zeroed, and its mask (registering it in
/// the graph's mask list).
pub fn write(model: &mut Model, w: &Weight) -> Result<()> {
    let vals: Vec<f32> = w
        .values
        .iter()
        .zip(&w.mask)
        .map(|(v, &k)| if k == 0 { 0.0 } else { *v })
        .collect();
    let dev = Device::Cpu;
    model.params.insert(
        w.name.clone(),
        Tensor::from_vec(vals, w.shape.as_slice(), &dev)?,
    );
    model.params.insert(
        format!("{}.mask", w.name),
        Tensor::from_vec(w.mask.clone(), w.shape.as_slice(), &dev)?,
    );
    if !model.graph.masks.contains(&w.name) {
        model.graph.masks.push(w.name.clone());
    }
    Ok(())
}

/// Fraction of the entries of `weights` that are pruned (mask 0).
pub fn sparsity(weights: &[Weight]) -> f64 {
    let total: usize = weights.iter().map(|w| w.mask.len()).sum();
    let zero: usize = weights
        .iter()
        .map(|w| w.mask.iter().filter(|&&k| k == 0).count())
        .sum();
    zero as f64 / total.max(1) as f64
}

/// Per-layer sparsity, for pass records.
pub fn layer_report(weights: &[Weight]) -> serde_json::Value {
    weights
        .iter()
        .map(|w| {
            let s = sparsity(std::slice::from_ref(w));
            (w.name.clone(), serde_json::json!((s * 1e4).round() / 1e4))
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

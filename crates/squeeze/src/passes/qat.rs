//! The `qat` pass: quantization-aware training from a trained float model. The selected
//! Linear / Conv2d layers (by default all but the first and the output layer, as the
//! papers keep them) get simulated quantization — `bits`-bit weights with LSQ's learned
//! per-channel steps (Esser et al. 2020) or fixed ones (`ste`), or binary (BinaryConnect
//! with XNOR-Net's scale) or ternary (TWN) weights — and `act_bits`-bit inputs with one
//! learned step each, initialized from calibration batches. The trainer fine-tunes
//! weights and steps under `[finetune]` (steps kept positive after every step); then the
//! BatchNorms are folded (a fake-quantized weight's steps scale with it) and every
//! simulated layer is materialized (`crate::quant::qat`): integer codes in the existing
//! int8/int4 format run by the integer kernels, or packed binary/ternary weights.

use std::collections::HashMap;

use candle_core::Var;
use serde::{Deserialize, Serialize};

use super::finetune::summary;
use super::{Declared, Pass, PassCtx, PassRecord};
use crate::error::{Error, Result};
use crate::graph::Op;
use crate::kinds::fake_quant::{FakeQuant, WeightQuant};
use crate::model::Model;
use crate::ops::qgemm::quantize::LINEAR_ACT_MAX;
use crate::quant::calibrate::Clip;
use crate::quant::qat::{attach, materialize, MIN_STEP};
use crate::train::Hooks;

/// The `qat` pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Qat {
    /// "lsq" (default), "ste", "binary" or "ternary".
    #[serde(default = "lsq")]
    pub weights: WeightQuant,
    /// Weight code width: 2–8 for lsq/ste (default 4); binary is 1, ternary 2.
    #[serde(default)]
    pub bits: Option<u8>,
    /// Input code width, 2–8 (default 8); the integer kernels need quantized inputs.
    #[serde(default = "eight")]
    pub act_bits: u8,
    /// The layers (default: every Linear and ungrouped Conv2d but the first and the
    /// output layer).
    #[serde(default)]
    pub layers: Option<Vec<String>>,
    /// With the default layers: keep the first layer and the output layer in float.
    #[serde(default = "yes")]
    pub keep_first_last: bool,
    /// The steps' peak learning rate (default: the weights'); it follows the same schedule.
    /// Applied as a factor on the steps' gradients: exact for SGD, while AdamW normalizes
    /// the factor away.
    #[serde(default)]
    pub scale_lr: Option<f64>,
    /// Epochs of training (default: `[finetune] epochs`).
    #[serde(default)]
    pub epochs: Option<usize>,
    /// `false`: no training — post-training quantization with the same initial steps.
    #[serde(default = "yes")]
    pub train: bool,
}

fn lsq() -> WeightQuant {
    WeightQuant::Lsq
}
fn eight() -> u8 {
    8
}
fn yes() -> bool {
    true
}

fn err(m: String) -> Error {
    Error::pass("qat", m)
}

impl Declared for Qat {
    const HELP: &'static str = "quantization-aware training, then integer or packed \
        weights: `weights` \"lsq\" (learned steps), \"ste\", \"binary\" (XNOR scaling) or \
        \"ternary\" (TWN); `bits` (weights, 1–8), `act_bits` (inputs, 2–8); `layers` or \
        `keep_first_last`; `scale_lr`, `epochs` (else `[finetune]`); `train = false` for \
        post-training quantization";
    const EXAMPLE: &'static str = "weights = \"lsq\", bits = 4, act_bits = 4";
    fn build(&self) -> Result<Box<dyn Pass>> {
        self.weight_bits()?;
        if !(2..=8).contains(&self.act_bits) {
            return Err(err(format!(
                "`act_bits` must be 2–8 (the kernels run integer inputs), got {}",
                self.act_bits
            )));
        }
        if let Some(lr) = self.scale_lr {
            if !(lr > 0.0 && lr.is_finite()) {
                return Err(err(format!("`scale_lr` must be > 0, got {lr}")));
            }
        }
        if self.layers.as_ref().is_some_and(|l| l.is_empty()) {
            return Err(err("`layers` is empty".into()));
        }
        Ok(Box::new(self.clone()))
    }
}

impl Qat {
    /// The weight code width, checked against the scheme.
    fn weight_bits(&self) -> Result<u8> {
        let b = self.bits;
        if let Some(b) = b.filter(|b| !(1..=8).contains(b)) {
            return Err(err(format!("`bits` must be 1–8, got {b}")));
        }
        match (self.weights, b) {
            (WeightQuant::Binary, None | Some(1)) => Ok(1),
            (WeightQuant::Ternary, None | Some(2)) => Ok(2),
            (WeightQuant::Binary | WeightQuant::Ternary, Some(b)) => Err(err(format!(
                "`bits` = {b} does not fit {} weights ({} bit(s))",
                if self.weights == WeightQuant::Binary {
                    "binary"
                } else {
                    "ternary"
                },
                if self.weights == WeightQuant::Binary {
                    1
                } else {
                    2
                }
            ))),
            (_, Some(1)) => Err(err(
                "`bits` = 1 is binary: set `weights` = \"binary\"".into()
            )),
            (_, b) => Ok(b.unwrap_or(4)),
        }
    }

    /// Whether node `op` can be trained quantized (and materialized).
    fn eligible(op: &Op) -> bool {
        match op {
            Op::Linear(l) => l.quant.is_none(),
            Op::Conv2d(c) => c.groups == 1 && c.is_square() && c.quant.is_none(),
            _ => false,
        }
    }

    /// The layers to train quantized, checked.
    fn selected(&self, model: &Model) -> Result<Vec<String>> {
        let g = &model.graph;
        let all: Vec<&str> = g
            .nodes
            .iter()
            .filter(|n| Self::eligible(&n.op))
            .map(|n| n.name.as_str())
            .collect();
        if let Some(l) = &self.layers {
            for name in l {
                match g.node(name) {
                    Some(n) if Self::eligible(&n.op) => {}
                    Some(n) => {
                        return Err(err(format!(
                            "`layers`: `{name}` is a {}, not a Linear or ungrouped square \
                             Conv2d layer",
                            n.op.kind()
                        )))
                    }
                    None => return Err(err(format!("`layers`: the model has no node `{name}`"))),
                }
            }
            return Ok(l.clone());
        }
        let first = all.first().copied();
        let chosen: Vec<String> = all
            .iter()
            .filter(|n| !self.keep_first_last || (Some(**n) != first && **n != g.output))
            .map(|n| n.to_string())
            .collect();
        if chosen.is_empty() {
            return Err(err(format!(
                "the model has no Linear or Conv2d layer to quantize{}",
                if all.is_empty() {
                    ""
                } else {
                    " besides its first and output layers (name them in `layers`)"
                }
            )));
        }
        Ok(chosen)
    }

    /// Each node's input step and whether its input goes negative, from calibration.
    fn input_steps(
        &self,
        model: &Model,
        nodes: &[String],
        ctx: &mut PassCtx,
    ) -> Result<HashMap<String, (f32, u8, bool)>> {
        let stats = super::quant::input_ranges(model, nodes, ctx)?;
        let mut out = HashMap::new();
        for (n, s) in stats {
            let lim = match model.graph.node(&n).map(|n| &n.op) {
                Some(Op::Linear(_)) => LINEAR_ACT_MAX as u32,
                _ => 127,
            };
            let signed = s.min < 0.0;
            let levels = if signed {
                (1u32 << (self.act_bits - 1)) - 1
            } else {
                (1u32 << self.act_bits) - 1
            };
            let qmax = levels.min(lim) as u8;
            let step = s.scale(Clip::Mse, qmax as i8).max(MIN_STEP);
            out.insert(n, (step, qmax, signed));
        }
        Ok(out)
    }
}

/// An image classifier's test accuracy (reported, never used to choose anything): the
/// simulated model's, just before materializing, to set beside the integer model's that
/// `compress` measures; `None` for text encoders.
fn test_accuracy(model: &Model, ctx: &mut PassCtx) -> Result<Option<f64>> {
    if model.graph.is_text() {
        return Ok(None);
    }
    let test = &ctx.images()?.test;
    crate::eval::accuracy(&model.graph, &model.params, test, 500).map(Some)
}

/// Keeps the learned steps above [`MIN_STEP`] after every optimizer step.
struct PositiveSteps;

impl Hooks for PositiveSteps {
    fn after_step(&mut self, vars: &[(String, Var)]) -> Result<()> {
        for (name, v) in vars {
            if name.ends_with(".weight_step") || name.ends_with(".input_step") {
                v.set(&v.as_tensor().clamp(MIN_STEP as f64, f64::MAX)?)?;
            }
        }
        Ok(())
    }
}

impl Pass for Qat {
    fn name(&self) -> &'static str {
        "qat"
    }

    fn apply(&self, mut model: Model, ctx: &mut PassCtx) -> Result<(Model, PassRecord)> {
        let bits = self.weight_bits()?;
        let nodes = self.selected(&model)?;
        let steps = self.input_steps(&model, &nodes, ctx)?;
        let step_lr = match self.scale_lr {
            Some(lr) => {
                (lr / ctx
                    .finetune_config()
                    .train
                    .optimizer
                    .lr()
                    .max(f64::MIN_POSITIVE)) as f32
            }
            None => 1.0,
        };
        for n in &nodes {
            let (step, act_max, act_signed) = steps[n];
            let q = FakeQuant {
                weights: self.weights,
                bits,
                act_bits: Some(self.act_bits),
                act_max,
                act_signed,
                step_lr,
            };
            attach(&mut model, n, q, Some(step)).map_err(|e| err(e.to_string()))?;
        }
        model.graph.validate()?;
        let hist = match self.train {
            true => ctx.finetune(&mut model, self.epochs, &mut PositiveSteps)?,
            false => Vec::new(),
        };
        let simulated = hist.last().and_then(|h| h.valid_accuracy);
        let folded = super::bn_fold::fold_all(&mut model)?;
        let simulated_test = test_accuracy(&model, ctx)?;
        let (model, done) = materialize(model)?;
        let scheme = match self.weights {
            WeightQuant::Binary => "binary".to_string(),
            WeightQuant::Ternary => "ternary".to_string(),
            _ if !self.train => format!("{bits}-bit"),
            w => format!(
                "{bits}-bit {}",
                if w == WeightQuant::Lsq { "LSQ" } else { "STE" }
            ),
        };
        let label = format!(
            "{} layers {} {scheme} weights and {}-bit inputs; {}materialized",
            done.len(),
            if self.train {
                "trained with"
            } else {
                "quantized to"
            },
            self.act_bits,
            if self.train {
                format!("{}; ", summary(&hist))
            } else {
                String::new()
            }
        );
        let details = serde_json::json!({
            "weights": self.weights, "bits": bits, "act_bits": self.act_bits,
            "layers": done, "folded": folded,
            "simulated_valid_accuracy": simulated,
            "simulated_test_accuracy": simulated_test,
            "history": hist,
        });
        super::done(model, self.name(), label, details)
    }
}

//! The structured-pruning passes. `channel_prune` cuts whole channels (attention heads and
//! FFN units of a text encoder) through the coupled groups, scored by a criterion and
//! allocated uniformly or globally to a target fraction of channels, parameters or FLOPs,
//! in one shot or in `steps` rounds each followed by `finetune_epochs` of fine-tuning
//! (iterative pruning). `slimming_train` is Network Slimming's sparsity training (Liu et
//! al. 2017): fine-tuning with λ·Σ|γ| on every BatchNorm scale, after which
//! `channel_prune` with `criterion = "bn_gamma"` and `allocation = "global"` applies the
//! paper's global threshold. The methods live in [`crate::prune::channel`].

use serde::{Deserialize, Serialize};

use super::{Declared, Pass, PassCtx, PassRecord};
use crate::coupling::ChannelGroup;
use crate::error::{Error, Result};
use crate::eval::static_cost;
use crate::model::Model;
use crate::prune::channel::slim::{bn_scales, Slimming};
use crate::prune::channel::{
    candidates, group_kind, plan, scores, Allocation, Amount, Criterion, Target, Unit,
};
use crate::train::{EpochLog, NoHooks};

const PRUNE: &str = "channel_prune";
const SLIM: &str = "slimming_train";

fn one() -> usize {
    1
}

/// The `channel_prune` pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelPrune {
    pub criterion: Criterion,
    #[serde(default)]
    pub allocation: Allocation,
    /// Fraction of `unit` removed, in (0, 1).
    pub target: f64,
    #[serde(default)]
    pub unit: Unit,
    /// The narrowest a group may become.
    #[serde(default = "one")]
    pub min_channels: usize,
    /// Only the groups made by these layers (default: every prunable group).
    #[serde(default)]
    pub layers: Option<Vec<String>>,
    /// Prune → fine-tune rounds; round i reaches i/steps of the target.
    #[serde(default = "one")]
    pub steps: usize,
    /// Fine-tuning after each round (0: none).
    #[serde(default)]
    pub finetune_epochs: usize,
    /// Seed of the Taylor criterion's random projections (text encoders).
    #[serde(default)]
    pub seed: u64,
}

impl Declared for ChannelPrune {
    const HELP: &'static str = "structured pruning: remove the fraction `target` of the \
        `unit` (channels, params of the pruned layers, flops) by whole channels, heads and FFN units, cut through \
        the coupled groups; `criterion` l1, l2, taylor, bn_gamma or activation; `allocation` \
        uniform or global (with `min_channels`); `layers` to restrict; `steps` rounds each \
        followed by `finetune_epochs`";
    const EXAMPLE: &'static str =
        "criterion = \"l1\", allocation = \"global\", target = 0.5, unit = \"flops\"";
    fn build(&self) -> Result<Box<dyn Pass>> {
        if !(self.target > 0.0 && self.target < 1.0) {
            return Err(Error::pass(
                PRUNE,
                format!("`target` = {} must lie in (0, 1)", self.target),
            ));
        }
        if self.min_channels == 0 || self.steps == 0 {
            return Err(Error::pass(
                PRUNE,
                "`min_channels` and `steps` must be at least 1",
            ));
        }
        if self.layers.as_ref().is_some_and(Vec::is_empty) {
            return Err(Error::pass(
                PRUNE,
                "`layers` is empty: omit it to prune every layer",
            ));
        }
        Ok(Box::new(self.clone()))
    }
}

/// The size a target counts: the parameters of `tensors` (the trainable tensors the
/// candidate groups run through — a BERT's attention and FFN weights, not its embeddings)
/// and the model's MACs.
fn amount(m: &Model, tensors: &[String]) -> Result<Amount> {
    let mut params = 0;
    for t in tensors {
        params += m.params.get(t)?.elem_count() as u64;
    }
    Ok(Amount {
        params,
        macs: static_cost(m)?.macs,
    })
}

/// The trainable tensors `groups` reach.
fn group_tensors(model: &Model, groups: &[ChannelGroup]) -> Vec<String> {
    let trainable = crate::graph::trainable_names(&model.graph);
    let mut names: Vec<String> = groups
        .iter()
        .flat_map(|g| g.members.iter().map(|m| m.param.clone()))
        .filter(|n| trainable.contains(n))
        .collect();
    names.sort();
    names.dedup();
    names
}

impl ChannelPrune {
    /// What the target is a fraction of: the candidate groups' channels, or `before`.
    fn baseline(&self, groups: &[ChannelGroup], before: Amount) -> f64 {
        match self.unit {
            Unit::Channels => groups.iter().map(|g| g.channels).sum::<usize>() as f64,
            Unit::Params => before.params as f64,
            Unit::Flops => before.macs as f64,
        }
    }

    /// One round: score, allocate toward `fraction` of the baseline, cut.
    fn round(
        &self,
        model: Model,
        ctx: &mut PassCtx,
        (fraction, baseline): (f64, f64),
        tensors: &[String],
    ) -> Result<(Model, serde_json::Value)> {
        let groups = candidates(&model, self.layers.as_deref())?;
        if groups.is_empty() {
            return Err(Error::pass(
                PRUNE,
                "the model has no channel group that can be pruned",
            ));
        }
        let batches = if self.criterion.needs_data() {
            ctx.calibration(&model)?.to_vec()
        } else {
            Vec::new()
        };
        let s = scores(&model, &groups, self.criterion, &batches, self.seed)?;
        let target = Target {
            fraction,
            unit: self.unit,
            allocation: self.allocation,
            min_channels: self.min_channels,
            baseline,
        };
        let cost = |m: &Model| amount(m, tensors);
        let p = plan(
            &model,
            &groups,
            &s,
            self.criterion.comparable(),
            &target,
            &cost,
        )?;
        let widths: Vec<serde_json::Value> = groups
            .iter()
            .zip(&p.keep)
            .map(|(g, (_, k))| {
                serde_json::json!({ "sources": g.sources, "kind": group_kind(&model, g),
                    "from": g.channels, "to": k.len() })
            })
            .collect();
        Ok((
            p.model,
            serde_json::json!({ "fraction": fraction, "groups": widths }),
        ))
    }
}

impl Pass for ChannelPrune {
    fn name(&self) -> &'static str {
        PRUNE
    }

    fn apply(&self, mut model: Model, ctx: &mut PassCtx) -> Result<(Model, PassRecord)> {
        super::require_dense(&model, PRUNE)?;
        let groups = candidates(&model, self.layers.as_deref())?;
        let tensors = group_tensors(&model, &groups);
        let before = amount(&model, &tensors)?;
        let (params_before, channels_before) =
            (static_cost(&model)?.params, channel_count(&model)?);
        let baseline = self.baseline(&groups, before);
        let mut rounds = Vec::new();
        let mut tuned: Vec<EpochLog> = Vec::new();
        for step in 1..=self.steps {
            let fraction = self.target * step as f64 / self.steps as f64;
            let (m, rec) = self.round(model, ctx, (fraction, baseline), &tensors)?;
            model = m;
            rounds.push(rec);
            if self.finetune_epochs > 0 {
                tuned.extend(ctx.finetune(&mut model, Some(self.finetune_epochs), &mut NoHooks)?);
            }
        }
        let after = amount(&model, &tensors)?;
        let params_after = static_cost(&model)?.params;
        let removed = 1.0 - channel_count(&model)? as f64 / channels_before.max(1) as f64;
        let mut label = format!(
            "{:.1}% of channels and {:.1}% of the pruned layers' parameters removed by {:?} \
             ({:?}) in {} round(s): params {params_before} → {params_after}, FLOPs {} → {}",
            100.0 * removed,
            100.0 * (1.0 - after.params as f64 / before.params.max(1) as f64),
            self.criterion,
            self.allocation,
            self.steps,
            2 * before.macs,
            2 * after.macs
        );
        if !tuned.is_empty() {
            label.push_str(&format!("; {}", super::finetune::summary(&tuned)));
        }
        let details = serde_json::json!({
            "channels_removed": removed, "params_before": params_before,
            "params_after": params_after, "group_params_before": before.params,
            "group_params_after": after.params, "flops_before": 2 * before.macs,
            "flops_after": 2 * after.macs, "rounds": rounds, "finetune": tuned,
        });
        super::done(model, PRUNE, label, details)
    }
}

/// Channels (heads, FFN units) over every prunable group of the model.
pub(crate) fn channel_count(model: &Model) -> Result<usize> {
    Ok(candidates(model, None)?.iter().map(|g| g.channels).sum())
}

/// The `slimming_train` pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlimmingTrain {
    /// Weight λ of the L1 penalty on BatchNorm scales.
    pub lambda: f64,
    /// Overrides `[finetune] epochs`.
    #[serde(default)]
    pub epochs: Option<usize>,
}

impl Declared for SlimmingTrain {
    const HELP: &'static str = "Network Slimming's sparsity training: fine-tune under \
        `[finetune]` with `lambda`·Σ|γ| on every BatchNorm scale (`epochs` overrides its \
        epochs); follow with `channel_prune` by `bn_gamma`, `global`";
    const EXAMPLE: &'static str = "lambda = 1e-4, epochs = 2";
    fn build(&self) -> Result<Box<dyn Pass>> {
        if !(self.lambda > 0.0 && self.lambda.is_finite()) {
            return Err(Error::pass(
                SLIM,
                format!("`lambda` = {} must be positive", self.lambda),
            ));
        }
        Ok(Box::new(self.clone()))
    }
}

impl Pass for SlimmingTrain {
    fn name(&self) -> &'static str {
        SLIM
    }

    fn apply(&self, mut model: Model, ctx: &mut PassCtx) -> Result<(Model, PassRecord)> {
        super::require_dense(&model, SLIM)?;
        let mut hooks = Slimming::new(&model, self.lambda)?;
        let hist = ctx.finetune(&mut model, self.epochs, &mut hooks)?;
        let gammas = gamma_quantiles(&model)?;
        let label = format!(
            "sparsity training with λ = {}: {}; |γ| median {:.4}, 10th percentile {:.4}",
            self.lambda,
            super::finetune::summary(&hist),
            gammas[2],
            gammas[1]
        );
        let details = serde_json::json!({
            "lambda": self.lambda, "gamma_quantiles_0_10_50_90_100": gammas, "finetune": hist,
        });
        super::done(model, SLIM, label, details)
    }
}

/// |γ| over every BatchNorm: minimum, 10th, 50th, 90th percentile, maximum.
fn gamma_quantiles(model: &Model) -> Result<[f64; 5]> {
    let mut v = Vec::new();
    for name in bn_scales(model) {
        let t = model.params.get(&name)?.to_dtype(candle_core::DType::F32)?;
        v.extend(t.to_vec1::<f32>()?.into_iter().map(|x| x.abs() as f64));
    }
    v.sort_by(f64::total_cmp);
    let q = |p: f64| {
        v.get(((v.len().saturating_sub(1)) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Ok([q(0.0), q(0.1), q(0.5), q(0.9), q(1.0)])
}

//! The per-layer search behind `squeeze search` (AIMET's greedy compression-ratio selection,
//! NNI's auto-compress): a sensitivity scan scores the model with one layer compressed at a
//! time, at a few ratios, on a held-out slice (the validation split for images, STS-B
//! train pairs for text — never dev or test); [`select`] then picks one ratio per layer
//! that meets a [`Budget`] at the least summed score loss (a multiple-choice knapsack over
//! the scan). The compression method comes from a template pass of a recipe
//! ([`Method`]): `low_rank` (ratio = fraction of the layer's parameters kept),
//! `channel_prune` (fraction of the layer's channels kept) or `magnitude` (fraction of the
//! layer's weights kept), so every pass with a ratio is searched through one interface.
//! The knapsack's choice and one uniform ratio are then [`refine`]d by hill climbing on
//! the applied model's held-out score, since single-layer losses do not add up.
//! The scan is cached on disk after every point ([`scan`]), so an interrupted search
//! resumes and a second budget costs no new scan.

pub mod refine;
pub mod scan;
pub mod select;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lowrank::{shape_of, Form};
use crate::model::Model;
use crate::passes::{ChannelPrune, LowRank, MagnitudeOptions, PassConfig};
use crate::prune::channel::{candidates, Allocation, Unit};

/// What a search must reach, as a fraction of the original model kept.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    /// Non-zero parameters.
    Params(f64),
    /// FLOPs by the analytic count.
    Flops(f64),
    /// Measured batch-1 latency.
    Latency(f64),
}

impl Budget {
    /// Parses `params=0.5`, `flops=0.4` or `latency=0.6`.
    pub fn parse(s: &str) -> std::result::Result<Budget, String> {
        let (kind, v) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}`: expected KIND=FRACTION, e.g. flops=0.4"))?;
        let v: f64 = v
            .trim()
            .parse()
            .map_err(|_| format!("`{s}`: `{v}` is not a number"))?;
        if !(v > 0.0 && v < 1.0) {
            return Err(format!(
                "`{s}`: the fraction of the original kept must lie in (0, 1), got {v}"
            ));
        }
        match kind.trim() {
            "params" => Ok(Budget::Params(v)),
            "flops" => Ok(Budget::Flops(v)),
            "latency" => Ok(Budget::Latency(v)),
            k => Err(format!(
                "`{s}`: unknown budget kind `{k}` (expected params, flops or latency)"
            )),
        }
    }

    /// The fraction kept.
    pub fn fraction(&self) -> f64 {
        match *self {
            Budget::Params(v) | Budget::Flops(v) | Budget::Latency(v) => v,
        }
    }

    /// The name of the cost this budget reads.
    pub fn kind(&self) -> &'static str {
        match self {
            Budget::Params(_) => "params",
            Budget::Flops(_) => "flops",
            Budget::Latency(_) => "latency",
        }
    }
}

/// The compression method searched, made from a recipe's template pass.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    LowRank(LowRank),
    Channels(ChannelPrune),
    Magnitude(MagnitudeOptions),
}

impl Method {
    /// The method of template pass `p`, or why it cannot be searched.
    pub fn from_pass(p: &PassConfig) -> Result<Method> {
        match p {
            PassConfig::LowRank(l) => Ok(Method::LowRank(l.clone())),
            PassConfig::ChannelPrune(c) => Ok(Method::Channels(c.clone())),
            PassConfig::Magnitude(m) if m.n.is_none() => Ok(Method::Magnitude(m.clone())),
            _ => Err(Error::Data(
                "the recipe's first pass is the template a search varies: it must be \
                 `low_rank`, `channel_prune` or `magnitude` (with `sparsity`)"
                    .into(),
            )),
        }
    }

    /// The recipe name of the method.
    pub fn name(&self) -> &'static str {
        match self {
            Method::LowRank(_) => "low_rank",
            Method::Channels(_) => "channel_prune",
            Method::Magnitude(_) => "magnitude",
        }
    }

    /// The layers the search assigns ratios to: the template's `layers`, else every layer
    /// the method applies to.
    pub fn layers(&self, model: &Model) -> Result<Vec<String>> {
        match self {
            Method::LowRank(l) => {
                let form = l.form.into();
                Ok(match &l.layers {
                    Some(ls) => ls.clone(),
                    None => crate::passes::lowrank_layers(model)
                        .into_iter()
                        .filter(|n| factorizable(model, n, form))
                        .collect(),
                })
            }
            Method::Channels(c) => Ok(candidates(model, c.layers.as_deref())?
                .iter()
                .filter_map(|g| g.sources.first().cloned())
                .collect()),
            Method::Magnitude(m) => Ok(match &m.layers {
                Some(ls) => ls.clone(),
                None => crate::passes::lowrank_layers(model),
            }),
        }
    }

    /// The pass that compresses `layers` to ratio `keep` (fraction kept), fine-tuning off.
    pub fn pass(&self, layers: &[String], keep: f64) -> PassConfig {
        let layers = Some(layers.to_vec());
        match self {
            Method::LowRank(l) => PassConfig::LowRank(LowRank {
                layers,
                rank: None,
                ranks: None,
                energy: None,
                keep: Some(keep),
                finetune_epochs: 0,
                ..l.clone()
            }),
            Method::Channels(c) => PassConfig::ChannelPrune(ChannelPrune {
                layers,
                target: 1.0 - keep,
                allocation: Allocation::Uniform,
                unit: Unit::Channels,
                steps: 1,
                finetune_epochs: 0,
                ..c.clone()
            }),
            Method::Magnitude(m) => PassConfig::Magnitude(MagnitudeOptions {
                layers,
                sparsity: Some(1.0 - keep),
                finetune_epochs: None,
                ..m.clone()
            }),
        }
    }

    /// The passes that give every layer of `choice` (layer, keep) its ratio: one pass per
    /// distinct ratio, layers in the given order.
    pub fn passes(&self, choice: &[(String, f64)]) -> Vec<PassConfig> {
        let mut ratios: Vec<f64> = Vec::new();
        for (_, k) in choice {
            if !ratios.iter().any(|r| (r - k).abs() < 1e-12) {
                ratios.push(*k);
            }
        }
        ratios
            .iter()
            .map(|r| {
                let ls: Vec<String> = choice
                    .iter()
                    .filter(|(_, k)| (k - r).abs() < 1e-12)
                    .map(|(l, _)| l.clone())
                    .collect();
                self.pass(&ls, *r)
            })
            .collect()
    }
}

fn factorizable(model: &Model, node: &str, form: Form) -> bool {
    shape_of(model, node, form).is_ok()
}

//! The pruning policy: from per-channel scores to the channels every group keeps, for a
//! target fraction of the model's channels, parameters or FLOPs removed. `uniform` removes
//! the same fraction of every group; `global` ranks all channels at once — by their score
//! when the criterion's scores are comparable across layers (Taylor, BatchNorm γ: Network
//! Slimming's global threshold), else by the score over its group's mean — per unit of the
//! target a channel frees (one channel, or its parameters or FLOPs), and never leaves a
//! group narrower than `min_channels`. Parameters and FLOPs are the analytic counts of the
//! cut model (the caller's cost function), found by bisection: the plan removes as little
//! as reaches the target.

use serde::{Deserialize, Serialize};

use super::cut_all;
use crate::coupling::ChannelGroup;
use crate::error::{Error, Result};
use crate::model::Model;

/// How removals are spread over the groups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Allocation {
    /// Every group loses the same fraction of its channels.
    #[default]
    Uniform,
    /// One ranking over all groups, with a minimum width per group.
    Global,
}

/// What the target fraction is a fraction of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Channels (heads, FFN units) of the candidate groups.
    #[default]
    Channels,
    /// Parameters of the pruned layers (the tensors the candidate groups run through: a
    /// BERT's attention and FFN weights, not its embeddings).
    Params,
    /// The model's FLOPs.
    Flops,
}

/// A model's analytic size: parameters (of the pruned layers) and multiply-accumulates
/// per example.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Amount {
    pub params: u64,
    pub macs: u64,
}

/// What to reach: remove `fraction` of `baseline` (in `unit`), spread by `allocation`.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub fraction: f64,
    pub unit: Unit,
    pub allocation: Allocation,
    pub min_channels: usize,
    /// The amount the fraction is of (the unpruned model's, across iterative steps).
    pub baseline: f64,
}

/// The channels kept per group (named by its sources) and the cut model.
pub struct Plan {
    pub keep: Vec<(Vec<String>, Vec<usize>)>,
    pub model: Model,
    /// The amount left, in the target's unit.
    pub left: f64,
}

/// The cost function: the analytic size of a (cut) model.
pub type CostFn<'a> = &'a dyn Fn(&Model) -> Result<Amount>;

/// The least removal that leaves at most `(1 − fraction)·baseline` of the unit.
pub fn plan(
    model: &Model,
    groups: &[ChannelGroup],
    scores: &[Vec<f64>],
    comparable: bool,
    target: &Target,
    cost: CostFn,
) -> Result<Plan> {
    if groups.is_empty() {
        return Err(Error::Graph(
            "the model has no channel group that can be pruned".into(),
        ));
    }
    for g in groups {
        if target.min_channels > g.channels {
            return Err(Error::Graph(format!(
                "`min_channels` = {} is wider than {:?}, which has {} channels",
                target.min_channels, g.sources, g.channels
            )));
        }
    }
    let budget = (1.0 - target.fraction) * target.baseline;
    let ev = Eval {
        model,
        groups,
        scores,
        target,
        cost,
    };
    let order = match target.allocation {
        Allocation::Uniform => None,
        Allocation::Global => Some(ev.ranking(comparable)?),
    };
    // removal steps: channels in ranking order (global) or 1/1024ths of every group (uniform)
    let max = match &order {
        Some(o) => o.len(),
        None => 1024,
    };
    let keeps = |k: usize| match &order {
        Some(o) => ev.global_keep(o, k),
        None => ev.uniform_keep(k as f64 / 1024.0),
    };
    let most = ev.evaluate(keeps(max))?;
    if most.left > budget * (1.0 + 1e-12) {
        return Err(Error::Graph(format!(
            "the target is out of reach: at most {:.1}% of the {} can be removed with \
             min_channels = {}",
            100.0 * (1.0 - most.left / target.baseline),
            format!("{:?}", target.unit).to_lowercase(),
            target.min_channels
        )));
    }
    let (mut lo, mut hi, mut best) = (0usize, max, most);
    while lo < hi {
        let mid = (lo + hi) / 2;
        let p = ev.evaluate(keeps(mid))?;
        if p.left <= budget * (1.0 + 1e-12) {
            hi = mid;
            best = p;
        } else {
            lo = mid + 1;
        }
    }
    if target.unit == Unit::Channels {
        cut_all(&mut best.model, &best.keep)?;
    }
    Ok(best)
}

struct Eval<'a> {
    model: &'a Model,
    groups: &'a [ChannelGroup],
    scores: &'a [Vec<f64>],
    target: &'a Target,
    cost: CostFn<'a>,
}

/// The `n` channels of largest score, sorted by index (ties: the lower index stays).
pub fn top(scores: &[f64], n: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx.truncate(n);
    idx.sort_unstable();
    idx
}

impl Eval<'_> {
    fn uniform_keep(&self, r: f64) -> Vec<Vec<usize>> {
        self.groups
            .iter()
            .zip(self.scores)
            .map(|(g, s)| {
                let remove = ((r * g.channels as f64).round() as usize)
                    .min(g.channels - self.target.min_channels);
                top(s, g.channels - remove)
            })
            .collect()
    }

    /// Keep lists after removing the first `k` channels of `order` (group, channel).
    fn global_keep(&self, order: &[(usize, usize)], k: usize) -> Vec<Vec<usize>> {
        let mut gone: Vec<Vec<bool>> = self
            .groups
            .iter()
            .map(|g| vec![false; g.channels])
            .collect();
        for &(g, c) in &order[..k] {
            gone[g][c] = true;
        }
        gone.iter()
            .map(|v| (0..v.len()).filter(|&c| !v[c]).collect())
            .collect()
    }

    /// Every removable channel, least important per unit of the target first; a group's
    /// last `min_channels` are never listed.
    fn ranking(&self, comparable: bool) -> Result<Vec<(usize, usize)>> {
        let unit_cost = self.unit_costs()?;
        let mut keyed = Vec::new();
        for (gi, s) in self.scores.iter().enumerate() {
            let mean = s.iter().sum::<f64>() / s.len().max(1) as f64;
            let norm = if comparable || mean <= 0.0 { 1.0 } else { mean };
            for (c, v) in s.iter().enumerate() {
                keyed.push((v / norm / unit_cost[gi], gi, c));
            }
        }
        keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let mut left: Vec<usize> = self.groups.iter().map(|g| g.channels).collect();
        let mut order = Vec::new();
        for (_, g, c) in keyed {
            if left[g] > self.target.min_channels {
                left[g] -= 1;
                order.push((g, c));
            }
        }
        Ok(order)
    }

    /// What removing one channel of each group frees, in the target's unit.
    fn unit_costs(&self) -> Result<Vec<f64>> {
        if self.target.unit == Unit::Channels {
            return Ok(vec![1.0; self.groups.len()]);
        }
        let whole = self.amount(self.model, &[])?;
        let mut out = Vec::new();
        for g in self.groups {
            if g.channels < 2 {
                out.push(f64::INFINITY);
                continue;
            }
            let mut m = self.model.clone();
            let keep: Vec<usize> = (1..g.channels).collect();
            cut_all(&mut m, &[(g.sources.clone(), keep)])?;
            out.push((whole - self.amount(&m, &[])?).max(1e-9));
        }
        Ok(out)
    }

    fn amount(&self, m: &Model, keep: &[Vec<usize>]) -> Result<f64> {
        Ok(match self.target.unit {
            Unit::Channels => keep.iter().map(Vec::len).sum::<usize>() as f64,
            Unit::Params => (self.cost)(m)?.params as f64,
            Unit::Flops => (self.cost)(m)?.macs as f64,
        })
    }

    fn evaluate(&self, keep: Vec<Vec<usize>>) -> Result<Plan> {
        let named: Vec<(Vec<String>, Vec<usize>)> = self
            .groups
            .iter()
            .zip(keep.iter())
            .map(|(g, k)| (g.sources.clone(), k.clone()))
            .collect();
        let mut m = self.model.clone();
        if self.target.unit != Unit::Channels {
            cut_all(&mut m, &named)?;
        }
        let left = self.amount(&m, &keep)?;
        Ok(Plan {
            keep: named,
            model: m,
            left,
        })
    }
}

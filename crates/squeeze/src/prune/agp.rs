//! Gradual magnitude pruning with the automated gradual pruner of Zhu & Gupta 2017 ("To
//! prune, or not to prune"): over a fine-tuning run, `events` pruning steps spaced evenly
//! over the first three quarters of the optimizer steps raise the sparsity along the cubic
//! schedule s_k = s_f·(1 − (1 − k/n)³) — fast at first, when the network has many
//! redundant weights, slowly near the end — and the last quarter recovers at the final
//! sparsity. Runs as a trainer hook: masks are recomputed from |w| at each event and
//! re-applied after every step.

use candle_core::{Tensor, Var};

use super::select::{self, Group};
use super::{Pattern, Weight};
use crate::error::Result;
use crate::train::Hooks;

/// Fraction of the run over which the sparsity rises.
const RAMP: f64 = 0.75;

/// The AGP hook over the named weights.
pub struct Agp {
    names: Vec<String>,
    final_sparsity: f64,
    group: Group,
    events: usize,
    /// Optimizer steps between events.
    every: usize,
    step: usize,
    masks: Vec<Option<(Vec<u8>, Tensor)>>,
}

impl Agp {
    /// A schedule reaching `final_sparsity` after `events` prunings within `total_steps`.
    pub fn new(
        names: Vec<String>,
        final_sparsity: f64,
        group: Group,
        events: usize,
        total_steps: usize,
    ) -> Self {
        let events = events.clamp(1, total_steps.max(1));
        let every = ((total_steps as f64 * RAMP) as usize / events).max(1);
        let masks = vec![None; names.len()];
        Agp {
            names,
            final_sparsity,
            group,
            events,
            every,
            step: 0,
            masks,
        }
    }

    /// Sparsity after event `k` of `n` (cubic).
    pub fn target(final_sparsity: f64, k: usize, n: usize) -> f64 {
        let r = 1.0 - (k as f64 / n as f64).min(1.0);
        final_sparsity * (1.0 - r * r * r)
    }

    /// The masks in force (`None` for a weight never pruned yet), by name order.
    pub fn masks(&self) -> Vec<Option<Vec<u8>>> {
        self.masks
            .iter()
            .map(|m| m.as_ref().map(|(v, _)| v.clone()))
            .collect()
    }

    fn prune(&mut self, vars: &[(String, Var)], s: f64) -> Result<()> {
        // the weights in the run (by index into `names`), with the masks in force
        let (mut idx, mut weights) = (Vec::new(), Vec::new());
        for (i, name) in self.names.iter().enumerate() {
            let Some((_, var)) = vars.iter().find(|(n, _)| n == name) else {
                continue;
            };
            let t = var.as_tensor();
            let values: Vec<f32> = t.flatten_all()?.to_vec1()?;
            let mask = match &self.masks[i] {
                Some((m, _)) => m.clone(),
                None => vec![1; values.len()],
            };
            idx.push(i);
            weights.push(Weight {
                name: name.clone(),
                shape: t.dims().to_vec(),
                values,
                mask,
            });
        }
        let scores: Vec<Vec<f32>> = weights.iter().map(select::magnitudes).collect();
        let new = select::masks(&weights, &scores, Pattern::Fraction(s), self.group)?;
        for ((i, w), m) in idx.into_iter().zip(&weights).zip(new) {
            let t = Tensor::from_vec(m.clone(), w.shape.as_slice(), &candle_core::Device::Cpu)?
                .to_dtype(candle_core::DType::F32)?;
            self.masks[i] = Some((m, t));
        }
        Ok(())
    }
}

impl Hooks for Agp {
    fn after_step(&mut self, vars: &[(String, Var)]) -> Result<()> {
        self.step += 1;
        if self.step.is_multiple_of(self.every) {
            let k = self.step / self.every;
            if k <= self.events {
                self.prune(vars, Self::target(self.final_sparsity, k, self.events))?;
            }
        }
        for (name, m) in self.names.iter().zip(&self.masks) {
            let (Some((_, mask)), Some((_, var))) = (m, vars.iter().find(|(n, _)| n == name))
            else {
                continue;
            };
            var.set(&(var.as_tensor() * mask)?)?;
        }
        Ok(())
    }
}

//! Refining a choice on the applied model. The scan's losses do not add up: layers
//! compressed together lose more than the sum of their single-layer losses (the knapsack
//! on vgg at a third of the FLOPs predicted 7 points of held-out accuracy and lost 34).
//! So the choice is improved by hill climbing on what it is meant to predict: a move
//! raises one layer's ratio by `step` and lowers another's by `step`; the move is kept when
//! the applied model still meets the budget (analytic count, or measured latency) and
//! scores higher on the held-out slice. It stops when no move helps or after `max_evals`
//! scored models. Since a move trades equal ratio steps of two layers of unequal cost, the
//! choice can end under its budget; before and after the climb, the budget left unused is
//! filled ([`Refine::fill`]): the one layer whose raise into it scores best takes it.

use super::scan::{apply, Cost, HeldOut};
use super::select::amount;
use super::{Budget, Method};
use crate::error::Result;
use crate::model::Model;
use crate::passes::PassCtx;

/// What refinement works with.
pub struct Refine<'a> {
    pub model: &'a Model,
    pub method: &'a Method,
    pub held_out: &'a HeldOut,
    pub budget: &'a Budget,
    pub baseline: &'a Cost,
    pub step: f64,
    pub max_evals: usize,
}

/// The refined choice, its cost, and how many models were scored.
pub struct Refined {
    pub choice: Vec<(String, f64)>,
    pub cost: Cost,
    pub evals: usize,
}

impl Refine<'_> {
    fn meets(&self, c: &Cost) -> bool {
        amount(self.budget, c) <= self.budget.fraction() * amount(self.budget, self.baseline)
    }

    /// The applied model of `keeps` (1 = untouched) over `layers` and its cost (not yet
    /// scored), if the method applies it and it meets the budget.
    fn within(
        &self,
        layers: &[String],
        keeps: &[f64],
        ctx: &mut PassCtx,
    ) -> Result<Option<(Model, Cost)>> {
        // a ratio the method cannot apply (a rank below 1) is a move not taken
        let Ok(m) = apply(self.model, self.method, &to_choice(layers, keeps), ctx) else {
            return Ok(None);
        };
        let latency = matches!(self.budget, Budget::Latency(_));
        let c = cost_without_score(&m, self.held_out, latency)?;
        Ok(self.meets(&c).then_some((m, c)))
    }

    /// [`Self::within`]'s cost with the held-out score, which is only computed then.
    fn try_cost(
        &self,
        layers: &[String],
        keeps: &[f64],
        ctx: &mut PassCtx,
    ) -> Result<Option<Cost>> {
        self.within(layers, keeps, ctx)?
            .map(|(m, c)| self.scored(&m, c))
            .transpose()
    }

    fn scored(&self, m: &Model, mut c: Cost) -> Result<Cost> {
        c.score = self.held_out.score(m)?;
        Ok(c)
    }

    /// Hill climbing from `start` (which must meet the budget, with its cost `start_cost`)
    /// over `layers`.
    pub fn run(
        &self,
        layers: &[String],
        start: &[(String, f64)],
        start_cost: Cost,
        ctx: &mut PassCtx,
        mut tick: impl FnMut(usize, f64),
    ) -> Result<Refined> {
        let mut keeps: Vec<f64> = layers
            .iter()
            .map(|l| start.iter().find(|(n, _)| n == l).map_or(1.0, |c| c.1))
            .collect();
        let (mut best, mut evals) = (start_cost, 0);
        self.fill(layers, &mut keeps, &mut best, ctx, &mut evals, &mut tick)?;
        let lowest = self.step;
        'climb: while evals < self.max_evals {
            for up in 0..layers.len() {
                for down in (0..layers.len()).filter(|d| *d != up) {
                    if keeps[up] >= 1.0 || keeps[down] - self.step < lowest - 1e-9 {
                        continue;
                    }
                    let mut trial = keeps.clone();
                    trial[up] = round(trial[up] + self.step).min(1.0);
                    trial[down] = round(trial[down] - self.step);
                    let Some(c) = self.try_cost(layers, &trial, ctx)? else {
                        continue;
                    };
                    evals += 1;
                    tick(evals, c.score);
                    if c.score > best.score {
                        (keeps, best) = (trial, c);
                        continue 'climb;
                    }
                    if evals >= self.max_evals {
                        break 'climb;
                    }
                }
            }
            break;
        }
        self.fill(layers, &mut keeps, &mut best, ctx, &mut evals, &mut tick)?;
        Ok(Refined {
            choice: to_choice(layers, &keeps),
            cost: best,
            evals,
        })
    }

    /// Spends the budget `keeps` leaves unused: for every compressed layer, the largest ratio
    /// (in thousandths) at which the applied model still meets the budget with the others
    /// as they are; of these raises the best-scoring one is taken — a raise only adds rank
    /// or channels, which fine-tuning can use, so it is taken even when the score before
    /// fine-tuning does not rise — and this repeats until no layer can rise by a thousandth.
    fn fill(
        &self,
        layers: &[String],
        keeps: &mut Vec<f64>,
        best: &mut Cost,
        ctx: &mut PassCtx,
        evals: &mut usize,
        tick: &mut impl FnMut(usize, f64),
    ) -> Result<()> {
        loop {
            let mut raises: Vec<(Vec<f64>, Cost)> = Vec::new();
            for i in (0..layers.len()).filter(|i| keeps[*i] < 1.0) {
                let at = |k: usize| {
                    let mut t = keeps.clone();
                    t[i] = k as f64 / 1000.0;
                    t
                };
                // lo meets the budget, hi does not (or is the untouched layer); `fit` is
                // the applied model at lo once the bisection has found one above the start
                let (mut lo, mut hi) = ((keeps[i] * 1000.0 + 1e-6).floor() as usize, 1000usize);
                let mut fit = None;
                while hi - lo > 1 {
                    let k = (lo + hi) / 2;
                    match self.within(layers, &at(k), ctx)? {
                        Some(applied) => (lo, fit) = (k, Some(applied)),
                        None => hi = k,
                    }
                }
                if let Some((m, c)) = fit.filter(|_| lo as f64 / 1000.0 > keeps[i] + 1e-9) {
                    let c = self.scored(&m, c)?;
                    *evals += 1;
                    tick(*evals, c.score);
                    raises.push((at(lo), c));
                }
            }
            let Some((k, c)) = raises
                .into_iter()
                .max_by(|a, b| a.1.score.total_cmp(&b.1.score))
            else {
                return Ok(());
            };
            (*keeps, *best) = (k, c);
        }
    }
}

fn round(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

fn to_choice(layers: &[String], keeps: &[f64]) -> Vec<(String, f64)> {
    layers
        .iter()
        .zip(keeps)
        .filter(|(_, k)| **k < 1.0)
        .map(|(l, k)| (l.clone(), *k))
        .collect()
}

/// [`cost`] without the held-out score (left at 0): the budget's check alone.
fn cost_without_score(m: &Model, held_out: &HeldOut, latency: bool) -> Result<Cost> {
    let c = crate::eval::static_cost(m)?;
    Ok(Cost {
        score: 0.0,
        params: c.nonzero_params as u64,
        flops: c.flops,
        latency_ms: if latency {
            Some(held_out.latency_ms(m)?)
        } else {
            None
        },
    })
}

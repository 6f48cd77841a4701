//! The one trainer every method uses: any [`DataSource`] (labelled images, tokenized
//! sentences) under any [`Objective`] (cross-entropy, embedding regression), seeded
//! shuffling and augmentation, an optimizer and a schedule, BatchNorm running statistics,
//! pruning masks re-applied after every step, a per-epoch checkpoint that `resume`
//! continues exactly, and [`Hooks`] through which a compression method adds a regularizer
//! to the loss (Network Slimming's L1 on γ) or projections after every optimizer step.

pub mod commit;
pub mod data;
mod epoch;
pub mod objective;
pub mod optim;
mod progress;
pub mod schedule;
pub mod update;

pub use commit::{checkpoint_dir, recover, saved_state};
pub use data::{forward_batch, Batch, DataSource, SentenceSet};
pub use objective::{CrossEntropy, EmbeddingLoss, EmbeddingTarget, Objective, StepLoss};
pub use optim::{Optimizer, OptimizerConfig};
pub use progress::{request_stop, set_progress_label, stop_requested, training_active};
pub use schedule::Schedule;

use std::collections::HashSet;
use std::path::Path;

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::data::ImageSet;
use crate::error::{Error, Result};
use crate::graph::trainable_names;
use crate::graph::Op;
use crate::interp::ForwardOpts;
use crate::kinds::batch_norm::BatchNorm;
use crate::model::Model;
use crate::ops::batchnorm::BatchStats;
use crate::params::ParamStore;
use epoch::{Epoch, EpochEnd};
use progress::{progress_label, run_bar, Active};

/// Everything that determines a training run: the one struct of training options that
/// `squeeze train` and `squeeze distill` build from their flags and a recipe's
/// `[finetune]` table holds (its serde defaults are that table's: one epoch of SGD at
/// 0.005 with a cosine schedule, batches of 128).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    #[serde(default = "one")]
    pub epochs: usize,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default = "default_optimizer")]
    pub optimizer: OptimizerConfig,
    #[serde(default = "default_schedule")]
    pub schedule: Schedule,
    #[serde(default)]
    pub seed: u64,
    /// Random-crop padding in pixels (0 = no shift); flips go with it.
    #[serde(default)]
    pub augment_pad: usize,
    /// Use only the first N training examples (quick runs, tests).
    #[serde(default)]
    pub limit_train: Option<usize>,
}

fn one() -> usize {
    1
}
fn default_batch() -> usize {
    128
}
fn default_optimizer() -> OptimizerConfig {
    OptimizerConfig::Sgd {
        lr: 0.005,
        momentum: 0.9,
        weight_decay: 5e-4,
        nesterov: true,
    }
}
fn default_schedule() -> Schedule {
    Schedule::Cosine { warmup_epochs: 0.0 }
}

impl TrainConfig {
    /// Every number within its documented range ([`crate::limits`]); the error names the
    /// field.
    pub fn validate(&self) -> Result<()> {
        toml::Value::try_from(self)
            .map_err(|e| e.to_string())
            .and_then(|v| crate::limits::check_tree(&v))
            .map_err(|m| Error::Train(format!("training options: {m}")))
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: one(),
            batch_size: default_batch(),
            optimizer: default_optimizer(),
            schedule: default_schedule(),
            seed: 0,
            augment_pad: 0,
            limit_train: None,
        }
    }
}

/// Per-epoch record (accuracies for classifiers; `null` for other objectives).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub loss: f64,
    pub train_accuracy: Option<f64>,
    pub valid_accuracy: Option<f64>,
    /// Mean objective over the validation set (eval mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_loss: Option<f64>,
    pub seconds: f64,
    /// Examples (images or sentences) per second.
    pub images_per_s: f64,
}

/// Resumable training state written each epoch beside the checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainState {
    pub config: TrainConfig,
    pub epochs_done: usize,
    pub optimizer_step: u64,
    pub history: Vec<EpochLog>,
    /// Size and checksum of every other file of the checkpoint (see [`commit`]).
    #[serde(default)]
    pub files: std::collections::BTreeMap<String, commit::FileSum>,
    /// Where epoch `epochs_done + 1` stopped when the run was interrupted inside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<PartialEpoch>,
}

/// An epoch stopped part-way ([`request_stop`]): the position in its data order and the
/// running sums of its log, so that a resumed run continues it exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialEpoch {
    /// Batches of the epoch's order already trained on.
    pub batches: usize,
    pub loss_sum: f64,
    pub correct: Option<usize>,
    pub seen: usize,
    pub seconds: f64,
}

impl TrainState {
    /// A run's state before its first step.
    fn fresh(cfg: &TrainConfig) -> Self {
        TrainState {
            config: cfg.clone(),
            epochs_done: 0,
            optimizer_step: 0,
            history: vec![],
            files: Default::default(),
            partial: None,
        }
    }
}

/// Hooks of a compression method into training.
pub trait Hooks {
    /// An extra term added to the loss (e.g. λ·Σ|γ|).
    fn regularizer(&self, _params: &ParamStore) -> Result<Option<Tensor>> {
        Ok(None)
    }
    /// Called after each optimizer step (e.g. to re-apply pruning masks).
    fn after_step(&mut self, _vars: &[(String, Var)]) -> Result<()> {
        Ok(())
    }
    /// Asked after each epoch's checkpoint: stop the run here (time budget, early stop).
    fn should_stop(&self, _epochs_done: usize) -> bool {
        false
    }
}

/// A regularizer's value: `weight` times the sum of `terms` (None when there are none).
pub fn weighted_sum(
    terms: impl IntoIterator<Item = Result<Tensor>>,
    weight: f64,
) -> Result<Option<Tensor>> {
    let mut total: Option<Tensor> = None;
    for t in terms {
        let t = t?;
        total = Some(match total {
            Some(acc) => (acc + t)?,
            None => t,
        });
    }
    Ok(match total {
        Some(t) => Some((t * weight)?),
        None => None,
    })
}

/// No hooks: plain training.
pub struct NoHooks;
impl Hooks for NoHooks {}

/// Names of weights that take weight decay (their kinds say which).
fn decay_names(model: &Model) -> HashSet<String> {
    crate::graph::decay_names(&model.graph)
        .into_iter()
        .collect()
}

/// Running-average update of BatchNorm buffers from one batch's statistics.
fn update_running(
    params: &mut ParamStore,
    model: &Model,
    stats: &[(String, BatchStats)],
) -> Result<()> {
    for (node, st) in stats {
        let Some(Op::BatchNorm(BatchNorm { momentum, .. })) = model.graph.node(node).map(|n| &n.op)
        else {
            continue;
        };
        let m = *momentum;
        let unb = st.count as f64 / (st.count.max(2) - 1) as f64;
        for (buf, new) in [("running_mean", &st.mean), ("running_var", &st.var)] {
            let key = format!("{node}.{buf}");
            let old: Vec<f32> = params.get(&key)?.to_vec1()?;
            let k = if buf == "running_var" { unb } else { 1.0 };
            let upd: Vec<f32> = old
                .iter()
                .zip(new)
                .map(|(o, n)| ((1.0 - m) * *o as f64 + m * n * k) as f32)
                .collect();
            params.insert(
                key,
                Tensor::from_vec(upd, old.len(), &candle_core::Device::Cpu)?,
            );
        }
    }
    Ok(())
}

/// One training run: data, objective, configuration and where checkpoints go.
pub struct Run<'a> {
    pub train: &'a dyn DataSource,
    pub valid: &'a dyn DataSource,
    pub objective: &'a dyn Objective,
    pub cfg: &'a TrainConfig,
    /// Output directory; per-epoch checkpoints go to `out/checkpoint`.
    pub out: &'a Path,
    /// Continue from `out/checkpoint`.
    pub resume: bool,
}

/// Trains a classifier in place on labelled images with cross-entropy, validating on
/// `valid`, checkpointing into `out/checkpoint` each epoch. With `resume`, continues from
/// that checkpoint.
pub fn train(
    model: &mut Model,
    train: &ImageSet,
    valid: &ImageSet,
    cfg: &TrainConfig,
    out: &Path,
    resume: bool,
    hooks: &mut dyn Hooks,
) -> Result<Vec<EpochLog>> {
    let run = Run {
        train,
        valid,
        objective: &CrossEntropy,
        cfg,
        out,
        resume,
    };
    fit(model, &run, hooks)
}

/// Trains `model` in place as `run` says (any data source and objective).
pub fn fit(model: &mut Model, run: &Run, hooks: &mut dyn Hooks) -> Result<Vec<EpochLog>> {
    let _active = Active::start();
    let cfg = run.cfg;
    cfg.validate()?;
    let (mut state, opt_state) = match run.resume {
        true => {
            let (m, s, o) = commit::load(run.out, cfg)?;
            *model = m;
            (s, Some(o))
        }
        false => (TrainState::fresh(cfg), None),
    };
    let names = trainable_names(&model.graph);
    let (mut params, vars) = model.params.with_vars(&names)?;
    let mut opt = Optimizer::new(cfg.optimizer.clone(), vars, decay_names(model));
    if let Some(o) = opt_state {
        opt.load_state(o, state.optimizer_step)?;
    }
    apply_masks(model, &params, opt.vars())?;
    let n = cfg
        .limit_train
        .unwrap_or(run.train.len())
        .min(run.train.len());
    if n == 0 {
        return Err(Error::Train("the training set is empty".into()));
    }
    let per_epoch = n.div_ceil(cfg.batch_size.max(1));
    let label = progress_label();
    let bar = label
        .as_deref()
        .map(|l| run_bar(l, per_epoch * cfg.epochs.saturating_sub(state.epochs_done)));
    let started = std::time::Instant::now();
    for epoch in state.epochs_done..cfg.epochs {
        let from = state.partial.take();
        let mut ep = Epoch {
            model,
            params: &mut params,
            opt: &mut opt,
            run,
            n,
            epoch,
            per_epoch,
            bar: bar.as_ref(),
        };
        let log = match ep.run(hooks, from.as_ref())? {
            EpochEnd::Done(log) => log,
            EpochEnd::Stopped(p) => {
                let step = p.batches;
                state.partial = Some(p);
                state.epochs_done = epoch;
                state.optimizer_step = opt.step;
                model.params = detached(&params)?;
                commit::save(run.out, model, &state, &opt.state())?;
                return Err(Error::Interrupted {
                    checkpoint: checkpoint_dir(run.out),
                    epoch: epoch + 1,
                    step,
                    steps: per_epoch,
                });
            }
        };
        let (valid_accuracy, valid_loss) =
            validate(model, &detached(&params)?, run.valid, run.objective)?;
        let log = EpochLog {
            valid_accuracy,
            valid_loss: Some(valid_loss),
            ..log
        };
        progress::epoch_done(bar.as_ref(), (epoch, cfg.epochs), &log);
        state.history.push(log);
        state.epochs_done = epoch + 1;
        state.optimizer_step = opt.step;
        model.params = detached(&params)?;
        commit::save(run.out, model, &state, &opt.state())?;
        if hooks.should_stop(state.epochs_done) {
            break;
        }
    }
    if let (Some(b), Some(l)) = (&bar, &label) {
        progress::run_done(b, l, &state.history, started.elapsed().as_secs_f64());
    }
    model.params = detached(&params)?;
    Ok(state.history)
}

/// Accuracy (classifiers) and mean objective of the model on `valid`, in eval mode.
pub fn validate(
    model: &Model,
    params: &ParamStore,
    valid: &dyn DataSource,
    objective: &dyn Objective,
) -> Result<(Option<f64>, f64)> {
    let idx: Vec<usize> = (0..valid.len()).collect();
    let opts = ForwardOpts {
        taps: objective.taps().into_iter().collect(),
        ..ForwardOpts::eval()
    };
    let (mut correct, mut loss, mut classified) = (0usize, 0.0, true);
    for chunk in idx.chunks(VALID_BATCH) {
        let b = valid.batch(chunk, None)?;
        let out = forward_batch(&model.graph, params, &b, &opts)?;
        let s = objective.loss(&out, &b)?;
        loss += s
            .loss
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?
            * chunk.len() as f64;
        match s.correct {
            Some(c) => correct += c,
            None => classified = false,
        }
    }
    let n = valid.len().max(1) as f64;
    Ok((classified.then_some(correct as f64 / n), loss / n))
}

/// Batch size of validation passes.
const VALID_BATCH: usize = 500;

/// A copy of the store with variables turned back into plain tensors.
fn detached(p: &ParamStore) -> Result<ParamStore> {
    let mut out = ParamStore::new();
    for (k, t) in p.iter() {
        out.insert(k.clone(), t.detach());
    }
    Ok(out)
}

/// One optimizer step on `batch`: forward in train mode (tapping what the objective
/// reads), the objective plus the hooks' regularizer, backward, update, masks, BatchNorm
/// running statistics, after-step hook. `(lr, seed)`: the step's learning rate and
/// dropout seed. Returns the objective's value and, for classifiers, the count of
/// correctly classified examples.
pub fn train_step(
    model: &Model,
    params: &mut ParamStore,
    opt: &mut Optimizer,
    batch: &Batch,
    (lr, seed): (f64, u64),
    objective: &dyn Objective,
    hooks: &mut dyn Hooks,
) -> Result<(f64, Option<usize>)> {
    let opts = ForwardOpts {
        taps: objective.taps().into_iter().collect(),
        ..ForwardOpts::train(seed)
    };
    let out = forward_batch(&model.graph, params, batch, &opts)?;
    let step = objective.loss(&out, batch)?;
    let lv = step
        .loss
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?;
    if !lv.is_finite() {
        return Err(Error::Train(format!(
            "loss became {lv}; lower the learning rate"
        )));
    }
    let loss = match hooks.regularizer(params)? {
        Some(r) => (&step.loss + r)?,
        None => step.loss,
    };
    let mut grads = loss.backward()?;
    // one lookup of the masks serves the gradients before the step and the weights after
    let masks = masked_vars(model, params, opt.vars())?;
    for (var, mask) in &masks {
        if let Some(g) = grads.get(var.as_tensor()) {
            // pruned weights leave no trace in the optimizer's state (momentum, Adam
            // moments) and weight decay has nothing to act on
            let masked = (g * mask)?;
            grads.insert(var.as_tensor(), masked);
        }
    }
    opt.step(&grads, lr)?;
    zero_pruned(&masks)?;
    update_running(params, model, &out.bn_stats)?;
    hooks.after_step(opt.vars())?;
    Ok((lv, step.correct))
}

/// Every masked variable with its mask in the variable's dtype.
fn masked_vars(
    model: &Model,
    params: &ParamStore,
    vars: &[(String, Var)],
) -> Result<Vec<(Var, Tensor)>> {
    let mut out = Vec::new();
    for name in &model.graph.masks {
        let Some((_, var)) = vars.iter().find(|(n, _)| n == name) else {
            continue;
        };
        let mask = params.get(&format!("{name}.mask"))?.to_dtype(var.dtype())?;
        out.push((var.clone(), mask));
    }
    Ok(out)
}

fn zero_pruned(masks: &[(Var, Tensor)]) -> Result<()> {
    for (var, mask) in masks {
        var.set(&(var.as_tensor() * mask)?)?;
    }
    Ok(())
}

/// Zeroes the pruned entries of every masked parameter: a simulated sparse model stays
/// sparse through training (run after each optimizer step, and once before the first).
pub fn apply_masks(model: &Model, params: &ParamStore, vars: &[(String, Var)]) -> Result<()> {
    zero_pruned(&masked_vars(model, params, vars)?)
}

/// Sets up variables and an optimizer for `model` (used by benchmarks and custom loops).
pub fn prepare(model: &Model, cfg: &OptimizerConfig) -> Result<(ParamStore, Optimizer)> {
    let names = trainable_names(&model.graph);
    let (params, vars) = model.params.with_vars(&names)?;
    Ok((
        params,
        Optimizer::new(cfg.clone(), vars, decay_names(model)),
    ))
}

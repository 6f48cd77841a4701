//! The unstructured-pruning passes: `magnitude` (one-shot, or gradual with AGP over a
//! fine-tuning run), `obd` (Optimal Brain Damage rounds of saliency pruning and
//! retraining), and the calibration-driven `wanda` and `sparsegpt`, which prune Linear
//! layers one at a time from their captured inputs. All leave a simulated sparse model
//! (masks); `materialize` makes it smaller. The methods themselves live in
//! [`crate::prune`].

use std::collections::HashMap;

use candle_core::Tensor;

use super::{Pass, PassCtx, PassRecord};
use crate::error::{Error, Result};
use crate::graph::Op;
use crate::model::Model;
use crate::prune::agp::Agp;
use crate::prune::obd::{self, Estimator};
use crate::prune::obs::{self, InputStats, SparseGptOpts};
use crate::prune::select::{self, Group};
use crate::prune::{self, layer_report, targets, Pattern, Scope, Weight};
use crate::train::{Batch, EpochLog, NoHooks};

/// When magnitude pruning removes the weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PruneSchedule {
    /// All at once, before any fine-tuning.
    #[default]
    OneShot,
    /// Gradually during the fine-tuning (Zhu & Gupta's cubic schedule).
    Agp,
}

fn read_all(model: &Model, names: &[String]) -> Result<Vec<Weight>> {
    names.iter().map(|n| prune::read(model, n)).collect()
}

fn write_all(model: &mut Model, ws: &[Weight]) -> Result<()> {
    ws.iter().try_for_each(|w| prune::write(model, w))
}

fn record(
    model: Model,
    pass: &str,
    names: &[String],
    extra: serde_json::Value,
    hist: &[EpochLog],
) -> Result<(Model, PassRecord)> {
    let ws = read_all(&model, names)?;
    let s = prune::sparsity(&ws);
    let mut label = format!(
        "{:.1}% of {} weight tensors' entries pruned",
        100.0 * s,
        names.len()
    );
    if !hist.is_empty() {
        label.push_str(&format!("; {}", super::finetune::summary(hist)));
    }
    let details = serde_json::json!({
        "sparsity": s, "layers": layer_report(&ws), "options": extra, "finetune": hist,
    });
    super::done(model, pass, label, details)
}

/// Magnitude pruning.
pub struct Magnitude {
    pub pattern: Pattern,
    pub scope: Scope,
    pub layers: Option<Vec<String>>,
    pub finetune_epochs: Option<usize>,
    pub schedule: PruneSchedule,
    /// Pruning events of the AGP schedule.
    pub agp_events: usize,
}

impl Pass for Magnitude {
    fn name(&self) -> &'static str {
        "magnitude"
    }

    fn apply(&self, mut model: Model, ctx: &mut PassCtx) -> Result<(Model, PassRecord)> {
        let names = targets(&model, self.layers.as_deref(), self.name())?;
        let group = Group::from(self.scope);
        let mut hist = Vec::new();
        match self.schedule {
            PruneSchedule::OneShot => {
                let mut ws = read_all(&model, &names)?;
                select::magnitude(&mut ws, self.pattern, group)?;
                write_all(&mut model, &ws)?;
                if let Some(e) = self.finetune_epochs.filter(|e| *e > 0) {
                    hist = ctx.finetune(&mut model, Some(e), &mut NoHooks)?;
                }
            }
            PruneSchedule::Agp => {
                let Pattern::Fraction(s) = self.pattern else {
                    return Err(Error::pass(
                        self.name(),
                        "schedule = \"agp\" takes `sparsity`, not N:M",
                    ));
                };
                let e = self.finetune_epochs.filter(|e| *e > 0).ok_or_else(|| {
                    Error::pass(
                        self.name(),
                        "schedule = \"agp\" needs `finetune_epochs` ≥ 1",
                    )
                })?;
                let steps = ctx.finetune_steps(&model, Some(e))?;
                let mut hook = Agp::new(names.clone(), s, group, self.agp_events, steps);
                hist = ctx.finetune(&mut model, Some(e), &mut hook)?;
                let mut ws = read_all(&model, &names)?;
                for (w, m) in ws.iter_mut().zip(hook.masks()) {
                    if let Some(m) = m {
                        w.mask = m;
                    }
                }
                // exactly the target, should the run have stopped before the last event
                select::magnitude(&mut ws, Pattern::Fraction(s), group)?;
                write_all(&mut model, &ws)?;
            }
        }
        let opts = serde_json::json!({ "pattern": format!("{:?}", self.pattern), "scope": self.scope, "schedule": self.schedule });
        record(model, self.name(), &names, opts, &hist)
    }
}

/// Optimal Brain Damage: `rounds` of saliency pruning (diag(H) by `estimator`), each
/// followed by `finetune_epochs`, up to `sparsity` (its recipe entry is this struct).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Obd {
    pub sparsity: f64,
    #[serde(default)]
    pub estimator: Estimator,
    #[serde(default = "one")]
    pub rounds: usize,
    /// Hutchinson probes per calibration batch.
    #[serde(default = "default_probes")]
    pub probes: usize,
    #[serde(default)]
    pub scope: Scope,
    #[serde(default)]
    pub layers: Option<Vec<String>>,
    #[serde(default)]
    pub finetune_epochs: Option<usize>,
}

fn one() -> usize {
    1
}
fn default_probes() -> usize {
    4
}

impl Pass for Obd {
    fn name(&self) -> &'static str {
        "obd"
    }

    fn apply(&self, mut model: Model, ctx: &mut PassCtx) -> Result<(Model, PassRecord)> {
        let names = targets(&model, self.layers.as_deref(), self.name())?;
        let batches = ctx.calibration(&model)?.to_vec();
        let mut hist = Vec::new();
        for r in 1..=self.rounds {
            let s = self.sparsity * r as f64 / self.rounds as f64;
            eprintln!(
                "obd round {r}/{}: estimating diag(H) ({:?}) for {:.1}% sparsity",
                self.rounds,
                self.estimator,
                100.0 * s
            );
            let h = obd::hessian_diag(
                &model,
                &names,
                &batches,
                self.estimator,
                self.probes,
                r as u64,
            )?;
            let mut ws = read_all(&model, &names)?;
            let scores: Vec<Vec<f32>> = ws
                .iter()
                .zip(&h)
                .map(|(w, h)| obd::saliency(h, &w.values))
                .collect();
            let masks = select::masks(&ws, &scores, Pattern::Fraction(s), self.scope.into())?;
            for (w, m) in ws.iter_mut().zip(masks) {
                w.mask = m;
            }
            write_all(&mut model, &ws)?;
            if let Some(e) = self.finetune_epochs.filter(|e| *e > 0) {
                hist.extend(ctx.finetune(&mut model, Some(e), &mut NoHooks)?);
            }
        }
        let opts = serde_json::json!({ "estimator": self.estimator, "rounds": self.rounds, "scope": self.scope });
        record(model, self.name(), &names, opts, &hist)
    }
}

/// A calibration-driven Linear pruner.
#[derive(Debug, Clone, Copy)]
pub enum Calibrated {
    Wanda,
    SparseGpt(SparseGptOpts),
}

/// Wanda or SparseGPT over the model's Linear layers, one input group at a time,
/// optionally followed by fine-tuning (the masks hold through it).
pub struct LayerWise {
    pub method: Calibrated,
    pub pattern: Pattern,
    pub layers: Option<Vec<String>>,
    pub finetune_epochs: Option<usize>,
}

impl Pass for LayerWise {
    fn name(&self) -> &'static str {
        match self.method {
            Calibrated::Wanda => "wanda",
            Calibrated::SparseGpt(_) => "sparsegpt",
        }
    }

    fn apply(&self, mut model: Model, ctx: &mut PassCtx) -> Result<(Model, PassRecord)> {
        let names = targets(&model, self.layers.as_deref(), self.name())?;
        let groups = linear_groups(&model, &names, self.name())?;
        let bar = progress(groups.len(), self.name());
        for (cols, nodes) in &groups {
            bar.inc(1);
            let hessian = matches!(self.method, Calibrated::SparseGpt(_));
            let stats = input_stats(ctx, &model, &nodes[0], *cols, hessian)?;
            for node in nodes {
                let mut w = prune::read(&model, &format!("{node}.weight"))?;
                match self.method {
                    Calibrated::Wanda => obs::wanda(&mut w, &stats, self.pattern)?,
                    Calibrated::SparseGpt(o) => obs::sparsegpt(&mut w, &stats, self.pattern, o)?,
                }
                prune::write(&mut model, &w)?;
            }
        }
        bar.finish_and_clear();
        let mut hist = Vec::new();
        if let Some(e) = self.finetune_epochs.filter(|e| *e > 0) {
            hist = ctx.finetune(&mut model, Some(e), &mut NoHooks)?;
        }
        let opts = serde_json::json!({ "pattern": format!("{:?}", self.pattern) });
        record(model, self.name(), &names, opts, &hist)
    }
}

pub(crate) fn progress(n: usize, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(n as u64);
    let style = indicatif::ProgressStyle::with_template(&format!(
        "{what} [{{bar:30}}] {{pos}}/{{len}} layer groups"
    ))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style.progress_chars("=> "));
    bar
}

/// The targeted Linear nodes grouped by the value they read (q/k/v share one capture),
/// in graph order, with their input width.
pub(crate) fn linear_groups(
    model: &Model,
    names: &[String],
    pass: &str,
) -> Result<Vec<(usize, Vec<String>)>> {
    let mut order: Vec<String> = Vec::new();
    let mut groups: HashMap<String, (usize, Vec<String>)> = HashMap::new();
    for n in &model.graph.nodes {
        if !names.contains(&format!("{}.weight", n.name)) {
            continue;
        }
        let Op::Linear(l) = &n.op else {
            return Err(Error::pass(
                pass,
                format!(
                    "`layers`: `{}` is a {}; this method prunes linear layers",
                    n.name,
                    n.op.kind()
                ),
            ));
        };
        let input = n.inputs[0].clone();
        if !groups.contains_key(&input) {
            order.push(input.clone());
        }
        groups
            .entry(input)
            .or_insert_with(|| (l.in_features, vec![]))
            .1
            .push(n.name.clone());
    }
    Ok(order
        .into_iter()
        .filter_map(|k| groups.remove(&k))
        .collect())
}

/// The statistics of node `node`'s input (`cols` features) over the calibration batches,
/// with `XᵀX` when `hessian` asks for it.
pub(crate) fn input_stats(
    ctx: &mut PassCtx,
    model: &Model,
    node: &str,
    cols: usize,
    hessian: bool,
) -> Result<InputStats> {
    let mut stats = InputStats::new(cols, hessian);
    let first = node.to_string();
    ctx.capture(model, std::slice::from_ref(&first), |batch, taps| {
        let tap = taps
            .get(&first)
            .ok_or_else(|| Error::Graph(format!("no tap for `{first}`")))?;
        stats.add(&real_rows(batch, &tap.inputs[0])?)
    })?;
    Ok(stats)
}

/// The rows of a captured input `[.., features]` that are real examples: all rows of an
/// image batch, the unpadded tokens of a sentence batch.
pub(crate) fn real_rows(batch: &Batch, x: &Tensor) -> Result<Tensor> {
    let d = x.dim(x.rank() - 1)?;
    let flat = x.reshape(((), d))?;
    match batch {
        Batch::Tokens { mask, .. } if x.rank() == 3 => {
            let m: Vec<u32> = mask
                .flatten_all()?
                .to_dtype(candle_core::DType::U32)?
                .to_vec1()?;
            let idx: Vec<u32> = (0..m.len() as u32)
                .filter(|&i| m[i as usize] != 0)
                .collect();
            let n = idx.len();
            Ok(flat.index_select(&Tensor::from_vec(idx, n, x.device())?, 0)?)
        }
        _ => Ok(flat),
    }
}

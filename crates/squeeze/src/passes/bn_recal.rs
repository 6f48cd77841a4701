//! BatchNorm re-estimation (AdaBN, Li et al. 2016; used to judge pruned candidates in
//! EagleEye, Li et al. 2020): after a rewrite changes what flows into a BatchNorm, its
//! running statistics no longer describe its inputs. This pass recomputes each
//! BatchNorm's running mean and (unbiased) variance from calibration batches, in graph
//! order, so every estimate sees the already re-estimated layers before it.

use candle_core::{DType, Tensor};

use serde::{Deserialize, Serialize};

use super::{Declared, Pass, PassCtx, PassRecord};
use crate::error::{Error, Result};
use crate::graph::Op;
use crate::interp::ForwardOpts;
use crate::model::Model;
use crate::train::{forward_batch, Batch};

/// The pass (no options).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecalibrateBatchNorm {}

impl Declared for RecalibrateBatchNorm {
    const HELP: &'static str =
        "re-estimate every BatchNorm's running statistics from the calibration batches (AdaBN)";
    const EXAMPLE: &'static str = "";
    fn build(&self) -> Result<Box<dyn Pass>> {
        Ok(Box::new(self.clone()))
    }
}

/// Per-channel sums of x and x² over every axis but 1.
#[derive(Default)]
struct Moments {
    sum: Vec<f64>,
    sq: Vec<f64>,
    count: usize,
}

impl Moments {
    fn add(&mut self, x: &Tensor) -> Result<()> {
        let c = x.dim(1)?;
        // [N, C, ...] → [C, N·rest]
        let t = x.transpose(0, 1)?.contiguous()?.reshape((c, ()))?;
        let t = t.to_dtype(DType::F64)?;
        let s: Vec<f64> = t.sum(1)?.to_vec1()?;
        let q: Vec<f64> = t.sqr()?.sum(1)?.to_vec1()?;
        if self.sum.is_empty() {
            (self.sum, self.sq) = (vec![0.0; c], vec![0.0; c]);
        }
        for i in 0..c {
            self.sum[i] += s[i];
            self.sq[i] += q[i];
        }
        self.count += t.dim(1)?;
        Ok(())
    }

    /// (mean, unbiased variance) per channel.
    fn finish(&self) -> (Vec<f32>, Vec<f32>) {
        let n = self.count as f64;
        let unb = n / (n - 1.0).max(1.0);
        self.sum
            .iter()
            .zip(&self.sq)
            .map(|(s, q)| {
                let m = s / n;
                (m as f32, (((q / n) - m * m).max(0.0) * unb) as f32)
            })
            .unzip()
    }
}

/// The BatchNorm nodes of `model`, in graph order.
pub fn batch_norms(model: &Model) -> Vec<String> {
    model
        .graph
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::BatchNorm(_)))
        .map(|n| n.name.clone())
        .collect()
}

/// Re-estimates every BatchNorm's running statistics of `model` from `batches`, in graph
/// order (eval-mode forwards, so each estimate sees the layers before it already
/// re-estimated); `tick` is called after each layer. Returns the layers and how many values
/// per channel each estimate averaged.
pub fn recalibrate_batch_norm(
    model: &mut Model,
    batches: &[Batch],
    mut tick: impl FnMut(),
) -> Result<(Vec<String>, usize)> {
    let bns = batch_norms(model);
    let mut samples = 0;
    for name in &bns {
        let opts = ForwardOpts {
            taps: [name.clone()].into_iter().collect(),
            ..ForwardOpts::eval()
        };
        let mut m = Moments::default();
        for b in batches {
            let out = forward_batch(&model.graph, &model.params, b, &opts)?;
            let tap = out
                .taps
                .get(name)
                .ok_or_else(|| Error::Graph(format!("no tap for `{name}`")))?;
            m.add(&tap.inputs[0])?;
        }
        samples = m.count;
        let (mean, var) = m.finish();
        let c = mean.len();
        let dev = candle_core::Device::Cpu;
        model.params.insert(
            format!("{name}.running_mean"),
            Tensor::from_vec(mean, c, &dev)?,
        );
        model.params.insert(
            format!("{name}.running_var"),
            Tensor::from_vec(var, c, &dev)?,
        );
        tick();
    }
    Ok((bns, samples))
}

impl Pass for RecalibrateBatchNorm {
    fn name(&self) -> &'static str {
        "recalibrate_batch_norm"
    }

    fn apply(&self, mut model: Model, ctx: &mut PassCtx) -> Result<(Model, PassRecord)> {
        let batches = ctx.calibration(&model)?.to_vec();
        let count = batch_norms(&model).len();
        // a bar on a terminal (hidden otherwise): each layer is a pass over the batches
        let bar = indicatif::ProgressBar::new(count as u64);
        let style = indicatif::ProgressStyle::with_template(
            "re-estimating BatchNorm [{bar:30}] {pos}/{len} layers",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style.progress_chars("=> "));
        let (bns, samples) = recalibrate_batch_norm(&mut model, &batches, || bar.inc(1))?;
        bar.finish_and_clear();
        let label = format!("re-estimated {} BatchNorm layers", bns.len());
        let details = serde_json::json!({ "layers": bns, "values_per_channel": samples });
        super::done(model, self.name(), label, details)
    }
}

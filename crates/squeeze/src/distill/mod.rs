//! Knowledge distillation (Cheng et al.'s fourth family): a small student learns from a
//! trained teacher. [`kd_loss`] is Hinton, Vinyals & Dean 2015's soft-target objective,
//! α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1 − α)·CE(z_s, y); the T² keeps the soft
//! term's gradient scale independent of the temperature. [`hints`] adds FitNets hints
//! (Romero et al. 2015): a learned regressor maps a student node's output onto a teacher
//! node's, penalized by their mean squared difference. [`Distill`] is the trainer
//! objective joining both: the teacher runs in eval mode (plain tensors, so its fast
//! inference kernels and no gradients) on the very batch the student sees, augmentation
//! included.

pub mod hints;

use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::interp::{forward, ForwardOpts, ForwardOut};
use crate::model::Model;
use crate::train::objective::correct;
use crate::train::{Batch, Objective, StepLoss};
pub use hints::{add_regressors, strip_regressors, Hint, HintSpec};

/// The soft-target term's temperature T and its weight α (the hard-label cross-entropy
/// gets 1 − α).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoftTargets {
    pub temperature: f64,
    pub alpha: f64,
}

impl SoftTargets {
    /// Checks T > 0 and α ∈ [0, 1], naming the field at fault.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(Error::Train(format!(
                "temperature must be a positive number, got {}",
                self.temperature
            )));
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(Error::Train(format!(
                "alpha must lie in [0, 1], got {}",
                self.alpha
            )));
        }
        Ok(())
    }
}

/// Hinton's distillation loss of student logits `zs` `[N, C]` against teacher logits `zt`
/// (treated as constants) and labels `[N]` (u32), averaged over the batch.
pub fn kd_loss(zs: &Tensor, zt: &Tensor, labels: &Tensor, st: SoftTargets) -> Result<Tensor> {
    st.validate()?;
    if zs.dims() != zt.dims() || zs.rank() != 2 {
        return Err(Error::Train(format!(
            "student logits {:?} and teacher logits {:?} must both be [N, classes]",
            zs.dims(),
            zt.dims()
        )));
    }
    let t = st.temperature;
    let zt = zt.detach().to_dtype(zs.dtype())?;
    let log_ps = candle_nn::ops::log_softmax(&(zs / t)?, D::Minus1)?;
    let log_pt = candle_nn::ops::log_softmax(&(zt / t)?, D::Minus1)?;
    let kl = (log_pt.exp()? * (log_pt - log_ps)?)?
        .sum(D::Minus1)?
        .mean_all()?;
    let soft = (kl * (st.alpha * t * t))?;
    if st.alpha >= 1.0 {
        return Ok(soft);
    }
    let ce = candle_nn::loss::cross_entropy(zs, labels)?;
    Ok((soft + (ce * (1.0 - st.alpha))?)?)
}

/// Mean squared difference of a hint regressor's output and the teacher's node output.
pub fn hint_loss(regressed: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    if regressed.dims() != teacher.dims() {
        return Err(Error::Train(format!(
            "hint regressor output {:?} and teacher output {:?} differ in shape",
            regressed.dims(),
            teacher.dims()
        )));
    }
    let t = teacher.detach().to_dtype(regressed.dtype())?;
    Ok((regressed - t)?.sqr()?.mean_all()?)
}

/// The distillation objective over labelled image batches: soft targets from `teacher`
/// plus `hints` (each weighted) — joint, or the hints alone (`soft: None`: FitNets' first
/// stage).
pub struct Distill<'a> {
    pub teacher: &'a Model,
    pub soft: Option<SoftTargets>,
    pub hints: Vec<Hint>,
}

impl Distill<'_> {
    /// The teacher's eval-mode forward on `x`, tapping its hint nodes.
    fn teacher_out(&self, x: &Tensor) -> Result<ForwardOut> {
        let opts = ForwardOpts {
            taps: self.hints.iter().map(|h| h.teacher.clone()).collect(),
            ..ForwardOpts::eval()
        };
        let x = x.detach().to_dtype(candle_core::DType::F32)?;
        forward(&self.teacher.graph, &self.teacher.params, &x, &opts)
    }
}

impl Objective for Distill<'_> {
    fn name(&self) -> &'static str {
        match (self.soft, self.hints.is_empty()) {
            (Some(_), true) => "distill",
            (Some(_), false) => "distill_hints",
            (None, _) => "hints",
        }
    }
    fn taps(&self) -> Vec<String> {
        self.hints.iter().map(|h| h.regressor.clone()).collect()
    }
    fn loss(&self, out: &ForwardOut, batch: &Batch) -> Result<StepLoss> {
        let Batch::Images { x, labels } = batch else {
            return Err(Error::Train(
                "distillation of classifiers needs labelled images".into(),
            ));
        };
        if self.soft.is_none() && self.hints.is_empty() {
            return Err(Error::Train(
                "distillation needs soft targets or at least one hint".into(),
            ));
        }
        let t = self.teacher_out(x)?;
        let mut loss = match self.soft {
            Some(st) => kd_loss(&out.output, &t.output, labels, st)?,
            None => Tensor::zeros((), out.output.dtype(), out.output.device())?,
        };
        for h in &self.hints {
            let (Some(s), Some(tt)) = (out.taps.get(&h.regressor), t.taps.get(&h.teacher)) else {
                return Err(Error::Train(format!(
                    "hint `{}` → `{}` was not captured",
                    h.regressor, h.teacher
                )));
            };
            loss = (loss + (hint_loss(&s.output, &tt.output)? * h.weight)?)?;
        }
        Ok(StepLoss {
            loss,
            correct: Some(correct(&out.output, labels)?),
        })
    }
}

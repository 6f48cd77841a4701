//! Learning-rate schedules as a multiplier of the base rate per optimizer step: linear
//! warm-up, then cosine annealing (Loshchilov & Hutter 2017) or step decay, or constant.

use serde::{Deserialize, Serialize};

/// Schedule choice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    Constant {
        warmup_epochs: f64,
    },
    Cosine {
        warmup_epochs: f64,
    },
    Step {
        warmup_epochs: f64,
        every_epochs: usize,
        gamma: f64,
    },
}

impl Schedule {
    /// Multiplier for step `step` (0-based) of `total` steps with `per_epoch` steps an epoch.
    pub fn factor(&self, step: usize, total: usize, per_epoch: usize) -> f64 {
        let warm = match self {
            Schedule::Constant { warmup_epochs }
            | Schedule::Cosine { warmup_epochs }
            | Schedule::Step { warmup_epochs, .. } => (warmup_epochs * per_epoch as f64) as usize,
        };
        if step < warm {
            return (step + 1) as f64 / warm as f64;
        }
        match self {
            Schedule::Constant { .. } => 1.0,
            Schedule::Cosine { .. } => {
                let span = total.saturating_sub(warm).max(1) as f64;
                let t = (step - warm) as f64 / span;
                0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
            Schedule::Step {
                every_epochs,
                gamma,
                ..
            } => {
                let epoch = step / per_epoch.max(1);
                gamma.powi((epoch / (*every_epochs).max(1)) as i32)
            }
        }
    }
}

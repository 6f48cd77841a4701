//! The recipe entries of the pruning passes of `prune.rs` whose options differ from the
//! pass they build: `magnitude` (a pattern from `sparsity` or `n`:`m`), `wanda` and
//! `sparsegpt` (one layer-wise pass with two methods); `obd`'s entry is its pass struct.
//! Each declares its fields (serde, unknown fields rejected), their checks and its line in
//! the recipe reference.

use serde::{Deserialize, Serialize};

use super::{Calibrated, Declared, LayerWise, Magnitude, Obd, Pass, PruneSchedule};
use crate::error::{Error, Result};
use crate::prune::obs::SparseGptOpts;
use crate::prune::{Pattern, Scope};

/// `magnitude`: `sparsity` (or `n` of every `m`), per layer or global, one-shot or gradual.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MagnitudeOptions {
    #[serde(default)]
    pub sparsity: Option<f64>,
    #[serde(default)]
    pub n: Option<usize>,
    #[serde(default)]
    pub m: Option<usize>,
    #[serde(default)]
    pub scope: Scope,
    #[serde(default)]
    pub layers: Option<Vec<String>>,
    #[serde(default)]
    pub finetune_epochs: Option<usize>,
    #[serde(default)]
    pub schedule: PruneSchedule,
    #[serde(default = "default_agp_events")]
    pub agp_events: usize,
}

fn default_agp_events() -> usize {
    20
}

impl Declared for MagnitudeOptions {
    const HELP: &'static str = "magnitude pruning: `sparsity` (or `n` of every `m`), `scope` \
        \"layer\" or \"global\", one-shot or gradual (`schedule = \"agp\"` in `agp_events` (20) \
        steps over `finetune_epochs`)";
    const EXAMPLE: &'static str = "sparsity = 0.9, finetune_epochs = 1";
    fn build(&self) -> Result<Box<dyn Pass>> {
        let pattern = Pattern::from_options("magnitude", self.sparsity, self.n, self.m)?;
        if self.agp_events == 0 {
            return Err(Error::pass("magnitude", "`agp_events` must be positive"));
        }
        Ok(Box::new(Magnitude {
            pattern,
            scope: self.scope,
            layers: self.layers.clone(),
            finetune_epochs: self.finetune_epochs,
            schedule: self.schedule,
            agp_events: self.agp_events,
        }))
    }
}

impl Declared for Obd {
    const HELP: &'static str = "Optimal Brain Damage: `rounds` (1) of saliency pruning with \
        diag(H) by `estimator` (\"fisher\" or \"hutchinson\" with `probes` (4) per batch), each \
        followed by `finetune_epochs`, up to `sparsity`";
    const EXAMPLE: &'static str = "sparsity = 0.9, rounds = 2";
    fn build(&self) -> Result<Box<dyn Pass>> {
        Pattern::from_options("obd", Some(self.sparsity), None, None)?;
        if self.rounds == 0 || self.probes == 0 {
            return Err(Error::pass("obd", "`rounds` and `probes` must be positive"));
        }
        Ok(Box::new(self.clone()))
    }
}

/// `wanda`: |W|·‖X‖ per output row, from calibration inputs (Linear layers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WandaOptions {
    #[serde(default)]
    pub sparsity: Option<f64>,
    #[serde(default)]
    pub n: Option<usize>,
    #[serde(default)]
    pub m: Option<usize>,
    #[serde(default)]
    pub layers: Option<Vec<String>>,
    #[serde(default)]
    pub finetune_epochs: Option<usize>,
}

impl Declared for WandaOptions {
    const HELP: &'static str = "Wanda: prune Linear layers by |W|·‖X‖ per output row from \
        calibration inputs, to `sparsity` (or `n` of every `m`)";
    const EXAMPLE: &'static str = "sparsity = 0.5";
    fn build(&self) -> Result<Box<dyn Pass>> {
        Ok(Box::new(LayerWise {
            method: Calibrated::Wanda,
            pattern: Pattern::from_options("wanda", self.sparsity, self.n, self.m)?,
            layers: self.layers.clone(),
            finetune_epochs: self.finetune_epochs,
        }))
    }
}

/// `sparsegpt`: OBS pruning with weight updates from calibration Hessians (Linear).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparseGptOptions {
    #[serde(default)]
    pub sparsity: Option<f64>,
    #[serde(default)]
    pub n: Option<usize>,
    #[serde(default)]
    pub m: Option<usize>,
    #[serde(default)]
    pub layers: Option<Vec<String>>,
    #[serde(default)]
    pub finetune_epochs: Option<usize>,
    #[serde(default = "default_block")]
    pub block: usize,
    #[serde(default = "default_damp")]
    pub damp: f64,
}

pub(super) fn default_block() -> usize {
    128
}
pub(super) fn default_damp() -> f64 {
    0.01
}

impl Declared for SparseGptOptions {
    const HELP: &'static str = "SparseGPT: OBS pruning of Linear layers with weight updates from \
        calibration Hessians, to `sparsity` (or `n` of every `m`), in column blocks of `block` \
        (128) with dampening `damp` (0.01)";
    const EXAMPLE: &'static str = "sparsity = 0.5";
    fn build(&self) -> Result<Box<dyn Pass>> {
        let (block, damp) = (self.block, self.damp);
        if block == 0 || !(damp > 0.0 && damp.is_finite()) {
            return Err(Error::pass(
                "sparsegpt",
                format!("`block` must be positive and `damp` > 0, got {block} and {damp}"),
            ));
        }
        Ok(Box::new(LayerWise {
            method: Calibrated::SparseGpt(SparseGptOpts { block, damp }),
            pattern: Pattern::from_options("sparsegpt", self.sparsity, self.n, self.m)?,
            layers: self.layers.clone(),
            finetune_epochs: self.finetune_epochs,
        }))
    }
}

//! Passes and recipes. A [`Pass`] rewrites a model (graph + parameters) and says what it
//! did; a [`Recipe`] is a typed TOML list of passes (unknown passes or fields are errors
//! that name the recipe file), with optional `[calibration]` and `[finetune]` tables that
//! the [`PassCtx`] serves to the passes that need data or a training budget.
//! [`run_recipe`] applies the passes in order and runs the full consistency check after
//! every rewrite, keeping each pass's label for the report — the shape of tract's
//! optimizer passes.

mod bn_fold;
mod bn_recal;
mod ctx;
mod drop_layers;
mod finetune;
mod prune;
mod share;

pub use bn_fold::FoldBatchNorm;
pub use bn_recal::RecalibrateBatchNorm;
pub use ctx::{read_sentences, CalibSource, CalibrationConfig, FinetuneConfig, PassCtx};
pub use drop_layers::DropLayers;
pub use finetune::Finetune;
pub use prune::{Calibrated, LayerWise, Magnitude, Obd, PruneSchedule};
pub use share::{Materialize, Share};

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::checkpoint::Model;
use crate::error::{Error, Result};
use crate::prune::codec::Codec;
use crate::prune::obd::Estimator;
use crate::prune::obs::SparseGptOpts;
use crate::prune::{Pattern, Scope};

/// What one pass did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PassRecord {
    pub pass: String,
    pub label: String,
    pub details: serde_json::Value,
}

/// A pass's result: the rewritten model and the record of pass `pass`.
pub(crate) fn done(
    model: Model,
    pass: &str,
    label: String,
    details: serde_json::Value,
) -> Result<(Model, PassRecord)> {
    let rec = PassRecord {
        pass: pass.into(),
        label,
        details,
    };
    Ok((model, rec))
}

/// A graph → graph rewrite.
pub trait Pass {
    /// Stable identifier (the recipe's `type`).
    fn name(&self) -> &'static str;
    /// Applies the pass (asking `ctx` for calibration data or fine-tuning as it needs);
    /// returns the rewritten model and a record of what changed.
    fn apply(&self, model: Model, ctx: &mut PassCtx) -> Result<(Model, PassRecord)>;
}

/// One recipe entry: the pass and its options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PassConfig {
    /// Fold each BatchNorm into the convolution or linear layer that feeds it.
    FoldBatchNorm {},
    /// Re-estimate every BatchNorm's running statistics from calibration batches.
    RecalibrateBatchNorm {},
    /// Remove whole transformer encoder layers (indices), renumbering those left.
    DropLayers { layers: Vec<usize> },
    /// Fine-tune the model with the trainer (`epochs` overrides `[finetune] epochs`).
    Finetune {
        #[serde(default)]
        epochs: Option<usize>,
    },
    /// Magnitude pruning: `sparsity` (or `n` of every `m`), per layer or global, one-shot
    /// or gradual (`schedule = "agp"` over `finetune_epochs`).
    Magnitude {
        #[serde(default)]
        sparsity: Option<f64>,
        #[serde(default)]
        n: Option<usize>,
        #[serde(default)]
        m: Option<usize>,
        #[serde(default)]
        scope: Scope,
        #[serde(default)]
        layers: Option<Vec<String>>,
        #[serde(default)]
        finetune_epochs: Option<usize>,
        #[serde(default)]
        schedule: PruneSchedule,
        #[serde(default = "default_agp_events")]
        agp_events: usize,
    },
    /// Optimal Brain Damage: `rounds` of saliency pruning (diag(H) by `estimator`), each
    /// followed by `finetune_epochs`, up to `sparsity`.
    Obd {
        sparsity: f64,
        #[serde(default)]
        estimator: Estimator,
        #[serde(default = "one")]
        rounds: usize,
        /// Hutchinson probes per calibration batch.
        #[serde(default = "default_probes")]
        probes: usize,
        #[serde(default)]
        scope: Scope,
        #[serde(default)]
        layers: Option<Vec<String>>,
        #[serde(default)]
        finetune_epochs: Option<usize>,
    },
    /// Wanda: |W|·‖X‖ per output row, from calibration inputs (Linear layers).
    Wanda {
        #[serde(default)]
        sparsity: Option<f64>,
        #[serde(default)]
        n: Option<usize>,
        #[serde(default)]
        m: Option<usize>,
        #[serde(default)]
        layers: Option<Vec<String>>,
        #[serde(default)]
        finetune_epochs: Option<usize>,
    },
    /// SparseGPT: OBS pruning with weight updates from calibration Hessians (Linear).
    #[serde(rename = "sparsegpt")]
    SparseGpt {
        #[serde(default)]
        sparsity: Option<f64>,
        #[serde(default)]
        n: Option<usize>,
        #[serde(default)]
        m: Option<usize>,
        #[serde(default)]
        layers: Option<Vec<String>>,
        #[serde(default)]
        finetune_epochs: Option<usize>,
        #[serde(default = "default_block")]
        block: usize,
        #[serde(default = "default_damp")]
        damp: f64,
    },
    /// Weight sharing: 2^bits k-means centroids per layer, stored with Huffman coding.
    Share {
        bits: u8,
        #[serde(default)]
        layers: Option<Vec<String>>,
        #[serde(default)]
        finetune_epochs: Option<usize>,
        /// Learning rate of the centroid fine-tuning (default: `[finetune]`'s).
        #[serde(default)]
        lr: Option<f64>,
    },
    /// Fold masks into weights; Linear layers at least `min_sparsity` sparse become CSR.
    Materialize {
        #[serde(default = "default_min_sparsity")]
        min_sparsity: f64,
    },
}

fn one() -> usize {
    1
}
fn default_agp_events() -> usize {
    20
}
fn default_probes() -> usize {
    4
}
fn default_block() -> usize {
    128
}
fn default_damp() -> f64 {
    0.01
}
fn default_min_sparsity() -> f64 {
    0.85
}

fn pass_err(pass: &str, msg: String) -> Error {
    Error::Pass {
        pass: pass.into(),
        msg,
    }
}

impl PassConfig {
    /// The pass, its options checked (errors name the field).
    fn build(&self) -> Result<Box<dyn Pass>> {
        Ok(match self {
            PassConfig::FoldBatchNorm {} => Box::new(FoldBatchNorm),
            PassConfig::RecalibrateBatchNorm {} => Box::new(RecalibrateBatchNorm),
            PassConfig::Finetune { epochs } => Box::new(Finetune { epochs: *epochs }),
            PassConfig::DropLayers { layers } => Box::new(DropLayers {
                layers: layers.clone(),
            }),
            PassConfig::Magnitude {
                sparsity,
                n,
                m,
                scope,
                layers,
                finetune_epochs,
                schedule,
                agp_events,
            } => {
                let pattern = Pattern::from_options("magnitude", *sparsity, *n, *m)?;
                if *agp_events == 0 {
                    return Err(pass_err(
                        "magnitude",
                        "`agp_events` must be positive".into(),
                    ));
                }
                Box::new(Magnitude {
                    pattern,
                    scope: *scope,
                    layers: layers.clone(),
                    finetune_epochs: *finetune_epochs,
                    schedule: *schedule,
                    agp_events: *agp_events,
                })
            }
            PassConfig::Obd {
                sparsity,
                estimator,
                rounds,
                probes,
                scope,
                layers,
                finetune_epochs,
            } => {
                Pattern::from_options("obd", Some(*sparsity), None, None)?;
                if *rounds == 0 || *probes == 0 {
                    return Err(pass_err(
                        "obd",
                        "`rounds` and `probes` must be positive".into(),
                    ));
                }
                Box::new(Obd {
                    sparsity: *sparsity,
                    estimator: *estimator,
                    rounds: *rounds,
                    probes: *probes,
                    scope: *scope,
                    layers: layers.clone(),
                    finetune_epochs: *finetune_epochs,
                })
            }
            PassConfig::Wanda {
                sparsity,
                n,
                m,
                layers,
                finetune_epochs,
            } => Box::new(LayerWise {
                method: Calibrated::Wanda,
                pattern: Pattern::from_options("wanda", *sparsity, *n, *m)?,
                layers: layers.clone(),
                finetune_epochs: *finetune_epochs,
            }),
            PassConfig::SparseGpt {
                sparsity,
                n,
                m,
                layers,
                finetune_epochs,
                block,
                damp,
            } => {
                if *block == 0 || !(*damp > 0.0 && damp.is_finite()) {
                    return Err(pass_err(
                        "sparsegpt",
                        format!("`block` must be positive and `damp` > 0, got {block} and {damp}"),
                    ));
                }
                Box::new(LayerWise {
                    method: Calibrated::SparseGpt(SparseGptOpts {
                        block: *block,
                        damp: *damp,
                    }),
                    pattern: Pattern::from_options("sparsegpt", *sparsity, *n, *m)?,
                    layers: layers.clone(),
                    finetune_epochs: *finetune_epochs,
                })
            }
            PassConfig::Share {
                bits,
                layers,
                finetune_epochs,
                lr,
            } => {
                Codec::Shared { bits: *bits }
                    .validate()
                    .map_err(|m| pass_err("share", m))?;
                if lr.is_some_and(|l| !(l > 0.0 && l.is_finite())) {
                    return Err(pass_err(
                        "share",
                        format!("`lr` must be positive, got {lr:?}"),
                    ));
                }
                Box::new(Share {
                    bits: *bits,
                    layers: layers.clone(),
                    finetune_epochs: *finetune_epochs,
                    lr: *lr,
                })
            }
            PassConfig::Materialize { min_sparsity } => {
                if !(0.0..=1.0).contains(min_sparsity) {
                    return Err(pass_err(
                        "materialize",
                        format!("`min_sparsity` must be in [0, 1], got {min_sparsity}"),
                    ));
                }
                Box::new(Materialize {
                    min_sparsity: *min_sparsity,
                })
            }
        })
    }
}

/// An ordered list of passes, read from TOML (`[[passes]]` tables with a `type`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Where calibration batches come from, for passes that need activations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationConfig>,
    /// The budget of fine-tuning steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finetune: Option<FinetuneConfig>,
    pub passes: Vec<PassConfig>,
}

impl Recipe {
    /// Parses recipe text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let r: Recipe = toml::from_str(text).map_err(|e| Error::Recipe {
            path: path.into(),
            msg: e.to_string(),
        })?;
        if r.passes.is_empty() {
            return Err(Error::Recipe {
                path: path.into(),
                msg: "recipe lists no passes".into(),
            });
        }
        for (i, p) in r.passes.iter().enumerate() {
            p.build().map_err(|e| Error::Recipe {
                path: path.into(),
                msg: format!("passes[{i}]: {e}"),
            })?;
        }
        Ok(r)
    }

    /// Reads and parses a recipe file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Recipe {
            path: path.into(),
            msg: e.to_string(),
        })?;
        Self::parse(&text, path)
    }
}

impl Recipe {
    /// A context for this recipe's passes: Fashion-MNIST from `data_dir`, fine-tuning
    /// checkpoints under `work_dir`.
    pub fn context(&self, data_dir: &Path, work_dir: &Path) -> PassCtx {
        PassCtx::new(
            self.calibration.clone(),
            self.finetune.clone(),
            data_dir,
            work_dir,
        )
    }
}

/// Applies every pass of `recipe` in order, checking the model after each.
pub fn run_recipe(
    mut model: Model,
    recipe: &Recipe,
    ctx: &mut PassCtx,
) -> Result<(Model, Vec<PassRecord>)> {
    model.check()?;
    ctx.set_original(&model);
    let mut log = Vec::new();
    for cfg in &recipe.passes {
        let pass = cfg.build()?;
        let (m, rec) = pass.apply(model, ctx).map_err(|e| match e {
            e @ Error::Pass { .. } => e,
            e => Error::Pass {
                pass: pass.name().into(),
                msg: e.to_string(),
            },
        })?;
        m.check().map_err(|e| Error::Pass {
            pass: pass.name().into(),
            msg: format!("left an inconsistent model: {e}"),
        })?;
        model = m;
        log.push(rec);
    }
    Ok((model, log))
}

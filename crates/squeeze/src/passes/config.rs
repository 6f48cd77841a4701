//! The recipe's pass entries: one typed variant per pass with its options (serde,
//! unknown fields rejected), and [`PassConfig::build`], which checks the options — errors
//! name the field — and makes the [`Pass`]. `Recipe::parse` builds every entry once, so a
//! bad option fails before any pass runs.

use serde::{Deserialize, Serialize};

use super::{
    Calibrated, Condense, DepthwiseSeparable, DropLayers, Finetune, FoldBatchNorm, LayerWise,
    Magnitude, Materialize, Narrow, Obd, Pass, PruneSchedule, Quantize, RecalibrateBatchNorm,
    Rounding, Share,
};
use crate::error::{Error, Result};
use crate::kinds::qlinear::ActQuant;
use crate::math::codec::Codec;
use crate::math::qlayout::{Layout, Scales};
use crate::prune::obd::Estimator;
use crate::prune::obs::SparseGptOpts;
use crate::prune::{Pattern, Scope};
use crate::quant::act::Clip;
use crate::quant::gptq::GptqOpts;

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
    /// Narrow a transformer encoder: keep `heads` heads per attention layer and
    /// `intermediate` hidden units per FFN (largest weight norm).
    Narrow {
        #[serde(default)]
        heads: Option<usize>,
        #[serde(default)]
        intermediate: Option<usize>,
    },
    /// Replace k×k convolutions (default: every one with k > 1, groups 1 and more than one
    /// input channel) by depthwise + pointwise pairs, initialized by per-channel rank-1
    /// factorization.
    DepthwiseSeparable {
        #[serde(default)]
        layers: Option<Vec<String>>,
    },
    /// CondenseNet's learned group convolution: `groups` groups of output filters per
    /// convolution (default: every ungrouped one with more than one input channel whose
    /// outputs split into `groups`), group lasso of weight `lasso` and `condensation` − 1
    /// condensation stages over the first half of `epochs` of fine-tuning, each group
    /// finally reading 1/`condensation` of the inputs; materialized as channel gather +
    /// group convolution.
    Condense {
        #[serde(default)]
        layers: Option<Vec<String>>,
        #[serde(default = "default_condense")]
        groups: usize,
        #[serde(default = "default_condense")]
        condensation: usize,
        #[serde(default = "default_lasso")]
        lasso: f64,
        #[serde(default)]
        epochs: Option<usize>,
    },
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
    /// Post-training quantization of Linear weights (and embedding tables): `bits` 8
    /// (with `activations` "dynamic" or "static") or 4 (weight-only), scales per output
    /// channel, per tensor (`per_tensor`) or per `group`; `rounding` "rtn" or "gptq".
    Quantize {
        bits: u8,
        #[serde(default)]
        group: Option<usize>,
        #[serde(default)]
        per_tensor: bool,
        #[serde(default)]
        zero_point: bool,
        /// int8: "dynamic" (default) or "static"; int4: "none".
        #[serde(default)]
        activations: Option<ActQuant>,
        #[serde(default)]
        rounding: RoundingName,
        /// Static int8 clipping: "min_max" (default), "mse" or { percentile = 99.99 }.
        #[serde(default = "default_clip")]
        clip: Clip,
        #[serde(default)]
        layers: Option<Vec<String>>,
        #[serde(default = "yes")]
        embeddings: bool,
        /// GPTQ: columns per lazy-update block, dampening, act-order.
        #[serde(default = "default_block")]
        block: usize,
        #[serde(default = "default_damp")]
        damp: f64,
        #[serde(default)]
        act_order: bool,
    },
    /// Fold masks into weights; Linear layers at least `min_sparsity` sparse become CSR.
    Materialize {
        #[serde(default = "default_min_sparsity")]
        min_sparsity: f64,
    },
}

/// How the `quantize` pass rounds weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoundingName {
    #[default]
    Rtn,
    Gptq,
}

fn default_clip() -> Clip {
    Clip::MinMax
}
fn yes() -> bool {
    true
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
fn default_condense() -> usize {
    4
}
fn default_lasso() -> f64 {
    1e-5
}
fn default_min_sparsity() -> f64 {
    0.85
}

impl PassConfig {
    /// The pass, its options checked (errors name the field).
    pub(crate) fn build(&self) -> Result<Box<dyn Pass>> {
        Ok(match self {
            PassConfig::FoldBatchNorm {} => Box::new(FoldBatchNorm),
            PassConfig::RecalibrateBatchNorm {} => Box::new(RecalibrateBatchNorm),
            PassConfig::Finetune { epochs } => Box::new(Finetune { epochs: *epochs }),
            PassConfig::DropLayers { layers } => Box::new(DropLayers {
                layers: layers.clone(),
            }),
            PassConfig::Narrow {
                heads,
                intermediate,
            } => {
                if heads.is_none() && intermediate.is_none()
                    || *heads == Some(0)
                    || *intermediate == Some(0)
                {
                    return Err(Error::pass(
                        "narrow",
                        "set `heads` and/or `intermediate`, each positive",
                    ));
                }
                Box::new(Narrow {
                    heads: *heads,
                    intermediate: *intermediate,
                })
            }
            PassConfig::Condense {
                layers,
                groups,
                condensation,
                lasso,
                epochs,
            } => {
                let bad = |m: &str| Err(Error::pass("condense", m.to_string()));
                if *groups == 0 {
                    return bad("`groups` must be positive");
                }
                if *condensation < 2 {
                    return bad("`condensation` must be at least 2 (each group keeps 1/condensation of the inputs)");
                }
                if !(lasso.is_finite() && *lasso >= 0.0) {
                    return bad("`lasso` must be a finite, non-negative weight");
                }
                if *epochs == Some(0) {
                    return bad("`epochs` must be positive: condensation happens while training");
                }
                Box::new(Condense {
                    layers: layers.clone(),
                    groups: *groups,
                    condensation: *condensation,
                    lasso: *lasso,
                    epochs: *epochs,
                })
            }
            PassConfig::DepthwiseSeparable { layers } => Box::new(DepthwiseSeparable {
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
                    return Err(Error::pass("magnitude", "`agp_events` must be positive"));
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
                    return Err(Error::pass("obd", "`rounds` and `probes` must be positive"));
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
                    return Err(Error::pass(
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
                    .map_err(|m| Error::pass("share", m))?;
                if lr.is_some_and(|l| !(l > 0.0 && l.is_finite())) {
                    return Err(Error::pass(
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
            PassConfig::Quantize {
                bits,
                group,
                per_tensor,
                zero_point,
                activations,
                rounding,
                clip,
                layers,
                embeddings,
                block,
                damp,
                act_order,
            } => {
                let err = |m: String| Error::pass("quantize", m);
                let scales = match (group, per_tensor) {
                    (Some(_), true) => {
                        return Err(err("`group` and `per_tensor` exclude each other".into()))
                    }
                    (Some(g), false) => Scales::Group(*g),
                    (None, true) => Scales::Tensor,
                    (None, false) => Scales::Channel,
                };
                let layout = Layout {
                    bits: *bits,
                    scales,
                    zero_point: *zero_point,
                };
                // the layout's own checks against a row length every group divides
                let probe = match scales {
                    Scales::Group(g) => g.max(32),
                    _ => 32,
                };
                layout
                    .check(probe)
                    .map_err(|m| err(format!("`bits`/`group`: {m}")))?;
                let act = activations.unwrap_or(if *bits == 8 {
                    ActQuant::Dynamic
                } else {
                    ActQuant::None
                });
                match (bits, act, scales) {
                    (8, ActQuant::None, _) => {
                        return Err(err(
                            "`activations`: int8 weights take \"dynamic\" or \"static\"".into(),
                        ))
                    }
                    (8, _, Scales::Group(_)) => {
                        return Err(err(
                            "`group`: int8 weights take per-channel or per-tensor scales".into(),
                        ))
                    }
                    (4, ActQuant::Dynamic | ActQuant::Static, _) => {
                        return Err(err(
                            "`activations`: int4 weights are weight-only (\"none\")".into(),
                        ))
                    }
                    _ => {}
                }
                if let Clip::Percentile(p) = clip {
                    if !(*p > 0.0 && *p <= 100.0) {
                        return Err(err(format!(
                            "`clip`: percentile must be in (0, 100], got {p}"
                        )));
                    }
                }
                if *block == 0 || !(*damp > 0.0 && damp.is_finite()) {
                    return Err(err(format!(
                        "`block` must be positive and `damp` > 0, got {block} and {damp}"
                    )));
                }
                Box::new(Quantize {
                    layout,
                    act,
                    rounding: match rounding {
                        RoundingName::Rtn => Rounding::Rtn,
                        RoundingName::Gptq => Rounding::Gptq(GptqOpts {
                            block: *block,
                            damp: *damp,
                            act_order: *act_order,
                        }),
                    },
                    clip: *clip,
                    layers: layers.clone(),
                    embeddings: *embeddings,
                })
            }
            PassConfig::Materialize { min_sparsity } => {
                if !(0.0..=1.0).contains(min_sparsity) {
                    return Err(Error::pass(
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

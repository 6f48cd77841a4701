//! Passes and recipes. A [`Pass`] rewrites a model (graph + parameters) and says what it
//! did; a [`Recipe`] is a typed TOML list of passes (unknown passes or fields are errors
//! that name the recipe file), with optional `[calibration]` and `[finetune]` tables that
//! the [`PassCtx`] serves to the passes that need data or a training budget.
//! [`run_recipe`] applies the passes in order and runs the full consistency check after
//! every rewrite, keeping each pass's label for the report — the shape of tract's
//! optimizer passes.

mod bn_fold;
mod bn_recal;
mod channels;
pub mod condense;
mod ctx;
mod drop_layers;
mod finetune;
mod lowrank;
mod narrow;
mod prune;
mod prune_recipe;
mod qat;
mod quant;
mod quant_recipe;
mod separable;
mod share;

pub use bn_fold::FoldBatchNorm;
pub use bn_recal::{batch_norms, recalibrate_batch_norm, RecalibrateBatchNorm};
pub use channels::{ChannelPrune, SlimmingTrain};
pub use condense::Condense;
pub use ctx::{
    read_sentences, sentence_set, CalibSource, CalibrationConfig, FinetuneConfig, PassCtx,
    TEXT_VALID,
};
pub use drop_layers::DropLayers;
pub use finetune::Finetune;
pub use lowrank::{default_layers as lowrank_layers, FormName, LowRank, Scaling};
pub use narrow::Narrow;
pub use prune::{Calibrated, LayerWise, Magnitude, Obd, PruneSchedule};
pub use prune_recipe::{MagnitudeOptions, SparseGptOptions, WandaOptions};
pub use qat::Qat;
pub use quant::{Quantize, Rounding};
pub use quant_recipe::{QuantizeOptions, RoundingName};
pub use separable::DepthwiseSeparable;
pub use share::{Materialize, Share};

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::graph::Op;
use crate::kinds::conv2d::Conv2d;
use crate::model::Model;

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

/// Refuses a model with masked or coded weights: pass `pass` rewrites dense tensors only.
pub(crate) fn require_dense(model: &Model, pass: &str) -> Result<()> {
    if !model.graph.masks.is_empty() || !model.graph.codecs.is_empty() {
        return Err(Error::pass(
            pass,
            "the model has masked or coded weights; materialize them first",
        ));
    }
    Ok(())
}

/// The convolutions pass `pass` rewrites, in graph order: the recipe's `layers`, each of
/// which must be a convolution `check` accepts (else an error naming it and why), or by
/// default every convolution `check` accepts and `by_default` keeps.
pub(crate) fn select_convs(
    model: &Model,
    layers: &Option<Vec<String>>,
    pass: &str,
    check: impl Fn(&Conv2d) -> std::result::Result<(), String>,
    by_default: impl Fn(&Conv2d) -> bool,
) -> Result<Vec<String>> {
    let conv = |name: &str| match model.graph.node(name).map(|n| &n.op) {
        Some(Op::Conv2d(c)) => Some(c),
        _ => None,
    };
    let Some(names) = layers else {
        return Ok(model
            .graph
            .nodes
            .iter()
            .filter(|n| conv(&n.name).is_some_and(|c| check(c).is_ok() && by_default(c)))
            .map(|n| n.name.clone())
            .collect());
    };
    for name in names {
        let c = conv(name).ok_or_else(|| {
            Error::pass(
                pass,
                format!("`layers`: `{name}` is not a convolution of the model"),
            )
        })?;
        check(c).map_err(|why| Error::pass(pass, format!("`layers`: `{name}` {why}")))?;
    }
    Ok(names.clone())
}

/// What a pass declares once, beside its implementation: the implementing type is its
/// recipe entry (serde fields, unknown fields rejected), [`Declared::build`] checks them
/// (errors name the field) and makes the pass, and [`Declared::HELP`] is its line in
/// `compress --help` and in the README's recipe reference. Registering it is one line of
/// the `recipe_passes!` list below.
pub trait Declared {
    /// What the pass does and its options, in one line (backticked names are fields).
    const HELP: &'static str;
    /// A valid entry's fields, as TOML `key = value` pairs separated by `, ` (may be
    /// empty); the reference shows it, and a test builds every example.
    const EXAMPLE: &'static str;
    /// The pass, its options checked.
    fn build(&self) -> Result<Box<dyn Pass>>;
}

/// The recipe's passes, one line each: `"type" => Variant(EntryType)`. Generates
/// [`PassConfig`] (serde-tagged by `type`), its dispatch to each entry's
/// [`Declared::build`], and [`reference`].
macro_rules! recipe_passes {
    ( $( $name:literal => $variant:ident($ty:ty), )* ) => {
        /// One recipe entry: the pass's `type` and its options.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type")]
        pub enum PassConfig {
            $( #[serde(rename = $name)] $variant($ty), )*
        }

        impl PassConfig {
            /// The pass, its options checked (errors name the field).
            pub(crate) fn build(&self) -> Result<Box<dyn Pass>> {
                match self {
                    $( PassConfig::$variant(o) => o.build(), )*
                }
            }
        }

        /// Every pass a recipe can name, in this order: its `type`, what it does and an
        /// example entry.
        pub fn reference() -> Vec<PassReference> {
            vec![ $( PassReference {
                name: $name,
                help: <$ty as Declared>::HELP,
                example: <$ty as Declared>::EXAMPLE,
            }, )* ]
        }
    };
}

recipe_passes! {
    "fold_batch_norm" => FoldBatchNorm(FoldBatchNorm),
    "recalibrate_batch_norm" => RecalibrateBatchNorm(RecalibrateBatchNorm),
    "drop_layers" => DropLayers(DropLayers),
    "narrow" => Narrow(Narrow),
    "slimming_train" => SlimmingTrain(SlimmingTrain),
    "channel_prune" => ChannelPrune(ChannelPrune),
    "low_rank" => LowRank(LowRank),
    "depthwise_separable" => DepthwiseSeparable(DepthwiseSeparable),
    "condense" => Condense(Condense),
    "finetune" => Finetune(Finetune),
    "magnitude" => Magnitude(MagnitudeOptions),
    "obd" => Obd(Obd),
    "wanda" => Wanda(WandaOptions),
    "sparsegpt" => SparseGpt(SparseGptOptions),
    "share" => Share(Share),
    "quantize" => Quantize(QuantizeOptions),
    "qat" => Qat(Qat),
    "materialize" => Materialize(Materialize),
}

/// One line of the recipe reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassReference {
    pub name: &'static str,
    pub help: &'static str,
    pub example: &'static str,
}

/// The recipe reference as text: a line per pass (`compress --help` prints it).
pub fn reference_text() -> String {
    reference()
        .iter()
        .map(|r| format!("  {:<23} {}\n", r.name, r.help))
        .collect()
}

/// The recipe reference as the README's Markdown table (a test keeps the two equal).
pub fn reference_markdown() -> String {
    let mut s = String::from(
        "| `type` | what it does and its options | example entry |\n| --- | --- | --- |\n",
    );
    for r in reference() {
        let example = match r.example {
            "" => format!("`type = \"{}\"`", r.name),
            e => format!("`type = \"{}\", {e}`", r.name),
        };
        s.push_str(&format!("| `{}` | {} | {example} |\n", r.name, r.help));
    }
    s
}

/// A graph → graph rewrite.
pub trait Pass {
    /// Stable identifier (the recipe's `type`).
    fn name(&self) -> &'static str;
    /// Applies the pass (asking `ctx` for calibration data or fine-tuning as it needs);
    /// returns the rewritten model and a record of what changed.
    fn apply(&self, model: Model, ctx: &mut PassCtx) -> Result<(Model, PassRecord)>;
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
            msg: locate_unknown_field(text, &e.to_string()),
        })?;
        let raw: toml::Value = toml::from_str(text).map_err(|e| Error::Recipe {
            path: path.into(),
            msg: e.to_string(),
        })?;
        crate::limits::check_tree(&raw).map_err(|msg| Error::Recipe {
            path: path.into(),
            msg,
        })?;
        if r.passes.is_empty() {
            return Err(Error::Recipe {
                path: path.into(),
                msg: "recipe lists no passes".into(),
            });
        }
        if let Some(f) = &r.finetune {
            f.check().map_err(|e| Error::Recipe {
                path: path.into(),
                msg: format!("[finetune]: {e}"),
            })?;
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

/// The TOML reader reports an unknown field of a `[[passes]]` entry at the entry's header
/// (a pass is read through its `type` tag); this names the line of the field itself and
/// the entry it is in.
fn locate_unknown_field(text: &str, msg: &str) -> String {
    let Some(field) = msg
        .split("unknown field `")
        .nth(1)
        .and_then(|r| r.split('`').next())
    else {
        return msg.to_string();
    };
    let mut entry = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with("[[passes]]") {
            entry = Some(entry.map_or(0, |e| e + 1));
        } else if t.starts_with('[') {
            entry = None;
        }
        let key = t.split('=').next().unwrap_or("").trim();
        if t.contains('=') && key == field {
            let what = msg.lines().last().unwrap_or(msg).trim();
            let place = entry.map_or(String::new(), |e| format!(" (passes[{e}])"));
            return format!("line {}, field `{field}`{place}: {what}", i + 1);
        }
    }
    msg.to_string()
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
    model: Model,
    recipe: &Recipe,
    ctx: &mut PassCtx,
) -> Result<(Model, Vec<PassRecord>)> {
    run_recipe_observed(model, recipe, ctx, &mut |_, _| Ok(()))
}

/// [`run_recipe`], calling `observe` with each pass's record and the model it left (an
/// accuracy guard measures there which pass cost most); an error from `observe` stops
/// the recipe.
pub fn run_recipe_observed(
    mut model: Model,
    recipe: &Recipe,
    ctx: &mut PassCtx,
    observe: &mut dyn FnMut(&PassRecord, &Model) -> Result<()>,
) -> Result<(Model, Vec<PassRecord>)> {
    model.check()?;
    ctx.set_original(&model);
    let mut log = Vec::new();
    for cfg in &recipe.passes {
        let pass = cfg.build()?;
        let (m, rec) = pass.apply(model, ctx).map_err(|e| match e {
            e @ Error::Pass { .. } => e,
            e => Error::pass(pass.name(), e.to_string()),
        })?;
        m.check()
            .map_err(|e| Error::pass(pass.name(), format!("left an inconsistent model: {e}")))?;
        model = m;
        observe(&rec, &model)?;
        log.push(rec);
    }
    Ok((model, log))
}

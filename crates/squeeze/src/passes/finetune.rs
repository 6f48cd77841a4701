//! Fine-tuning as a recipe step: trains the model with the project's trainer under the
//! recipe's `[finetune]` budget (classifiers: cross-entropy on Fashion-MNIST training
//! images; text encoders: distillation toward the input model's sentence embeddings).
//! Recovers accuracy lost by an earlier rewrite; masks of a simulated sparse model stay
//! applied throughout.

use serde::{Deserialize, Serialize};

use super::{Declared, Pass, PassCtx, PassRecord};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::train::{EpochLog, NoHooks};

/// The pass; `epochs` overrides the recipe's `[finetune] epochs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Finetune {
    #[serde(default)]
    pub epochs: Option<usize>,
}

impl Declared for Finetune {
    const HELP: &'static str =
        "fine-tune with the trainer under `[finetune]` (`epochs` overrides its epochs)";
    const EXAMPLE: &'static str = "epochs = 2";
    fn build(&self) -> Result<Box<dyn Pass>> {
        Ok(Box::new(self.clone()))
    }
}

impl Pass for Finetune {
    fn name(&self) -> &'static str {
        "finetune"
    }

    fn apply(&self, mut model: Model, ctx: &mut PassCtx) -> Result<(Model, PassRecord)> {
        if let Some(name) = model.graph.codecs.keys().next() {
            return Err(Error::pass(
                self.name(),
                format!(
                    "`{name}` shares its weights: plain fine-tuning would break the \
                     codebook; fine-tune the centroids with `share`'s `finetune_epochs`"
                ),
            ));
        }
        let hist = ctx.finetune(&mut model, self.epochs, &mut NoHooks)?;
        let label = summary(&hist);
        let details = serde_json::to_value(&hist).unwrap_or_default();
        super::done(model, self.name(), label, details)
    }
}

/// One line on a fine-tuning run: epochs and the last validation accuracy (or loss).
pub(crate) fn summary(hist: &[EpochLog]) -> String {
    let last = hist.last();
    match last.and_then(|h| h.valid_accuracy) {
        Some(a) => format!(
            "fine-tuned {} epoch(s): validation accuracy {a:.4}",
            hist.len()
        ),
        None => format!(
            "fine-tuned {} epoch(s): validation loss {:.5}",
            hist.len(),
            last.and_then(|h| h.valid_loss).unwrap_or(f64::NAN)
        ),
    }
}

//! Layer dropping for transformer encoders: removes whole encoder layers of a BERT graph
//! and renumbers the rest ([`crate::text::bert::drop_layers`]) — the structured cut that
//! DistilBERT (Sanh et al. 2019) makes when it initializes a student from every other
//! layer of its teacher; usually followed by `finetune`.

use serde::{Deserialize, Serialize};

use super::{Declared, Pass, PassCtx, PassRecord};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::text::bert;

/// The pass: the encoder layers to remove.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropLayers {
    pub layers: Vec<usize>,
}

impl Declared for DropLayers {
    const HELP: &'static str =
        "remove whole transformer encoder layers (`layers`: indices), renumbering those left";
    const EXAMPLE: &'static str = "layers = [1, 3, 5]";
    fn build(&self) -> Result<Box<dyn Pass>> {
        Ok(Box::new(self.clone()))
    }
}

impl Pass for DropLayers {
    fn name(&self) -> &'static str {
        "drop_layers"
    }

    fn apply(&self, mut model: Model, _ctx: &mut PassCtx) -> Result<(Model, PassRecord)> {
        let before = bert::layer_shapes(&model.graph).len();
        if before == 0 {
            return Err(Error::Graph("the model has no BERT encoder layers".into()));
        }
        bert::drop_layers(&mut model, &self.layers)?;
        let after = bert::layer_shapes(&model.graph).len();
        let label = format!(
            "dropped encoder layers {:?}: {before} → {after}",
            self.layers
        );
        let details = serde_json::json!({ "dropped": self.layers, "layers_before": before, "layers_after": after });
        super::done(model, self.name(), label, details)
    }
}

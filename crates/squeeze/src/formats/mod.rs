//! Model formats on disk. A directory is read as a native squeeze checkpoint when it holds
//! `model.json`, otherwise as a Hugging Face BERT directory when it holds `config.json`
//! and `model.safetensors` ([`hf_bert`]).

pub mod hf_bert;
pub mod hf_config;
pub mod onnx;

use std::path::Path;

use crate::checkpoint::{self, GRAPH_FILE};
use crate::error::{Error, Result};
use crate::model::Model;

/// Loads a model directory in whichever supported format it is.
pub fn load_any(dir: &Path) -> Result<Model> {
    let model = if dir.join(GRAPH_FILE).is_file() {
        checkpoint::load(dir)?
    } else if hf_bert::is_hf_dir(dir) {
        hf_bert::import(dir)?
    } else if !dir.is_dir() {
        return Err(Error::file(dir, "no such model directory"));
    } else {
        return Err(Error::file(
            dir,
            "neither a squeeze checkpoint (model.json + model.safetensors) nor a Hugging Face \
             BERT directory (config.json + model.safetensors)",
        ));
    };
    check_text_assets(&model, dir)?;
    Ok(model)
}

/// A text encoder's tokenizer files must parse (with their `max_seq_length`), so that a
/// truncated `tokenizer.json` is refused when the model is loaded — by `export`, which
/// copies it, as by everything that reads text.
fn check_text_assets(model: &Model, dir: &Path) -> Result<()> {
    if !model.graph.is_text() || !model.assets.contains_key("tokenizer.json") {
        return Ok(());
    }
    crate::text::TextTokenizer::from_assets(&model.assets, crate::text::max_positions(model))
        .map(|_| ())
        .map_err(|e| Error::file(dir, e.to_string()))
}

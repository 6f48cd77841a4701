//! Model formats on disk. A directory is read as a native squeeze checkpoint when it holds
//! `model.json`, otherwise as a Hugging Face BERT directory when it holds `config.json`
//! and `model.safetensors` ([`hf_bert`]).

pub mod hf_bert;

use std::path::Path;

use crate::checkpoint::{self, GRAPH_FILE};
use crate::error::{Error, Result};
use crate::model::Model;

/// Loads a model directory in whichever supported format it is.
pub fn load_any(dir: &Path) -> Result<Model> {
    if dir.join(GRAPH_FILE).is_file() {
        checkpoint::load(dir)
    } else if hf_bert::is_hf_dir(dir) {
        hf_bert::import(dir)
    } else if !dir.is_dir() {
        Err(Error::file(dir, "no such model directory"))
    } else {
        Err(Error::file(
            dir,
            "neither a squeeze checkpoint (model.json + model.safetensors) nor a Hugging Face \
             BERT directory (config.json + model.safetensors)",
        ))
    }
}

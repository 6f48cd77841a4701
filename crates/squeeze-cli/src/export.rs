//! `squeeze export`: writes a model in another format. `hf` produces a Hugging Face /
//! sentence-transformers directory that the Python reference stack loads unchanged; when
//! the model's per-layer widths cannot be expressed by HF's `BertConfig` (uneven FFN
//! widths), it says so and writes the native format instead.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use squeeze::checkpoint;
use squeeze::formats::{hf_bert, load_any};

use crate::outdir::Staged;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// Hugging Face BERT / sentence-transformers directory.
    Hf,
    /// squeeze checkpoint (model.json + model.safetensors + tokenizer files).
    Native,
}

#[derive(Args)]
pub struct ExportArgs {
    /// Model directory (squeeze checkpoint or HF directory).
    pub dir: PathBuf,
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Output directory (must not be, contain or lie inside the input).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace OUT if it holds squeeze's output (a directory squeeze did not write is
    /// never replaced).
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: ExportArgs) -> Result<()> {
    let staged = Staged::begin(&a.out, &[("model", a.dir.as_path())], a.force)?;
    let model = load_any(&a.dir).with_context(|| format!("loading model {}", a.dir.display()))?;
    let tmp = staged.dir().to_path_buf();
    let mut format = a.format;
    if format == ExportFormat::Hf {
        if let Some(why) = hf_bert::export_blocker(&model) {
            eprintln!(
                "warning: cannot export as HF: {why}. HF's BertConfig can express pruned \
                 heads (pruned_heads) but not per-layer FFN widths; writing the squeeze \
                 native format instead."
            );
            format = ExportFormat::Native;
        }
    }
    match format {
        ExportFormat::Hf => hf_bert::export(&model, &tmp)?,
        ExportFormat::Native => checkpoint::save(&model, &tmp)?,
    }
    staged.commit()?;
    let what = if format == ExportFormat::Hf {
        "HF"
    } else {
        "native"
    };
    eprintln!("wrote {what} model to {}", a.out.display());
    Ok(())
}

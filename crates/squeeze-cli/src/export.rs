//! `squeeze export`: writes a model in another format. `hf` produces a Hugging Face /
//! sentence-transformers directory that the Python reference stack loads unchanged; a
//! model HF's `BertConfig` cannot hold (uneven FFN widths, quantized or CSR layers, an
//! image model) is refused before anything is written, naming the layer and the
//! alternatives.

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
    /// Output format: `hf` (a directory transformers/sentence-transformers load; float
    /// BERT encoders only) or `native` (squeeze's checkpoint, any model).
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
    let format = a.format;
    if format == ExportFormat::Hf {
        if let Some(why) = hf_bert::export_blocker(&model) {
            anyhow::bail!(
                "{} cannot be exported as a Hugging Face model: {why}. Alternatives: \
                 `--format native` (squeeze's checkpoint: eval, embed, report and bench read \
                 it), or export the model from before the pass that made it inexpressible \
                 (HF's BertConfig holds float weights, pruned heads as `pruned_heads`, but one \
                 FFN width for every layer)",
                a.dir.display()
            );
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

//! `squeeze export`: writes a model in another format. `hf` produces a Hugging Face /
//! sentence-transformers directory that the Python reference stack loads unchanged; when
//! the model's per-layer widths cannot be expressed by HF's `BertConfig` (uneven FFN
//! widths), it says so and writes the native format instead.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use squeeze::checkpoint;
use squeeze::formats::{hf_bert, load_any};

use crate::outdir::{check_out, commit_dir, tmp_sibling};

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
    /// Output directory (must not be the input; an existing non-empty one needs --force).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: ExportArgs) -> Result<()> {
    check_out(&a.dir, &a.out, a.force)?;
    let model = load_any(&a.dir).with_context(|| format!("loading model {}", a.dir.display()))?;
    let tmp = tmp_sibling(&a.out)?;
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
    commit_dir(&tmp, &a.out)?;
    let what = if format == ExportFormat::Hf {
        "HF"
    } else {
        "native"
    };
    eprintln!("wrote {what} model to {}", a.out.display());
    Ok(())
}

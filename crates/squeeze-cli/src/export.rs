//! `squeeze export`: writes a model in another format. `hf` produces a Hugging Face /
//! sentence-transformers directory that the Python reference stack loads unchanged; a
//! model HF's `BertConfig` cannot hold (uneven FFN widths, quantized or CSR layers, an
//! image model) is refused before anything is written, naming the layer and the
//! alternatives. `onnx` writes `model.onnx` (every model squeeze makes; a text encoder's
//! tokenizer files beside it) and `export.json`, which lists the file's inputs and output
//! and, layer by layer, where the file is not exactly our computation.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use squeeze::checkpoint;
use squeeze::formats::{hf_bert, load_any, onnx};

use crate::outdir::Staged;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// Hugging Face BERT / sentence-transformers directory.
    Hf,
    /// squeeze checkpoint (model.json + model.safetensors + tokenizer files).
    Native,
    /// ONNX (opset 17; ONNX Runtime, tract): model.onnx + export.json (+ tokenizer files).
    Onnx,
}

#[derive(Args)]
pub struct ExportArgs {
    /// Model directory (squeeze checkpoint or HF directory).
    pub dir: PathBuf,
    /// Output format: `hf` (a directory transformers/sentence-transformers load; float
    /// BERT encoders only), `onnx` (model.onnx for ONNX Runtime or tract; any model whose
    /// layers are all materialized) or `native` (squeeze's checkpoint, any model).
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// ONNX operator-set version (`--format onnx`); the writer writes 17.
    #[arg(long, default_value_t = squeeze::onnx::OPSET)]
    pub opset: i64,
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
                 `--format onnx` (every model squeeze makes, for ONNX Runtime or tract), \
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
        ExportFormat::Onnx => write_onnx(&model, &tmp, a.opset)
            .with_context(|| format!("exporting {} to ONNX", a.dir.display()))?,
    }
    staged.commit()?;
    let what = match format {
        ExportFormat::Hf => "HF",
        ExportFormat::Native => "native",
        ExportFormat::Onnx => "ONNX",
    };
    eprintln!("wrote {what} model to {}", a.out.display());
    Ok(())
}

/// `model.onnx`, the tokenizer files of a text encoder, and `export.json` (inputs, output,
/// and the notes of every layer the file computes differently) into `dir`.
fn write_onnx(model: &squeeze::Model, dir: &std::path::Path, opset: i64) -> Result<()> {
    let e = onnx::export(model, opset)?;
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(dir.join(name), bytes)
            .with_context(|| format!("writing {}", dir.join(name).display()))
    };
    write("model.onnx", &e.bytes)?;
    for (name, bytes) in &model.assets {
        write(name, bytes)?;
    }
    for n in &e.notes {
        eprintln!("note: {n}");
    }
    let report = serde_json::json!({
        "format": "onnx",
        "opset": opset,
        "inputs": e.inputs,
        "output": e.output,
        "bytes": e.bytes.len(),
        "notes": e.notes,
    });
    write(
        "export.json",
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )
}

//! `squeeze bench train-text`: the time of one distillation step of a sentence-encoder
//! student — train-mode forward, cosine loss to target embeddings, backward, AdamW — on a
//! batch of real sentences (the first `--batch` of an STS-B file), in squeeze's trainer and
//! in PyTorch (`bench/peers/train_text_peer.py`, the student exported to Hugging Face
//! format) in the same run, one after the other. The ratio goes under `--key` in the
//! results file.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use clap::Args;
use serde_json::json;
use squeeze::eval::median_time;
use squeeze::formats::{hf_bert, load_any};
use squeeze::passes::read_sentences;
use squeeze::text::{pad_batch, Encoder};
use squeeze::train::{
    prepare, train_step, Batch, EmbeddingLoss, EmbeddingTarget, NoHooks, OptimizerConfig,
};

#[derive(Args)]
pub struct TrainTextArgs {
    /// The student encoder (squeeze or Hugging Face directory).
    #[arg(long, default_value = "runs/minilm-3l-init")]
    pub student: PathBuf,
    /// STS-B file whose first sentences form the batch.
    #[arg(long, default_value = "data/stsb/sts-train.csv")]
    pub data: PathBuf,
    #[arg(value_parser = crate::count("batch_size"), long, default_value_t = 32)]
    pub batch: usize,
    /// Timed steps (after 3 warm-up steps); the median is reported.
    #[arg(value_parser = crate::count("steps"), long, default_value_t = 20)]
    pub steps: usize,
    /// Python with torch + transformers; `none` skips the peer.
    #[arg(long, default_value = "python3")]
    pub python: String,
    #[arg(long, default_value = "bench/peers/train_text_peer.py")]
    pub peer: PathBuf,
    #[arg(long, default_value = "runs/bench/distill.json")]
    pub out: PathBuf,
    #[arg(long, default_value = "train-text-speed")]
    pub key: String,
}

const LR: f64 = 2e-4;

fn adamw() -> OptimizerConfig {
    OptimizerConfig::Adamw {
        lr: LR,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    }
}

/// Median milliseconds of one squeeze distillation step on `texts`.
fn ours(model: &squeeze::Model, texts: &[&str], steps: usize) -> Result<(f64, usize)> {
    let ids = Encoder::new(model)?.tokenizer.encode(texts)?;
    let seqs: Vec<&[u32]> = ids.iter().map(|s| s.as_slice()).collect();
    let (ids_t, mask) = pad_batch(&seqs)?;
    let tokens = seqs.iter().map(|s| s.len()).sum();
    // the embedding width, from the graph's shapes
    let shapes = squeeze::graph::infer_shapes(&model.graph)?;
    let d = *shapes[&model.graph.output].last().unwrap_or(&1);
    let t = Tensor::randn(0f32, 1.0, (texts.len(), d), &Device::Cpu)?;
    let t = t.broadcast_div(&t.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)?;
    let batch = Batch::Tokens {
        ids: ids_t,
        mask,
        target: Some(t.to_dtype(DType::F32)?),
    };
    let (mut params, mut opt) = prepare(model, &adamw())?;
    let objective = EmbeddingTarget(EmbeddingLoss::Cosine);
    let mut i = 0u64;
    let s = median_time(3, steps, || {
        i += 1;
        train_step(
            model,
            &mut params,
            &mut opt,
            &batch,
            (LR, i),
            &objective,
            &mut NoHooks,
        )
        .map(|_| ())
    })?;
    Ok((s * 1e3, tokens))
}

pub fn run(a: TrainTextArgs) -> Result<()> {
    let model =
        load_any(&a.student).with_context(|| format!("--student {}", a.student.display()))?;
    if !model.graph.is_text() {
        bail!(
            "--student {} is not a sentence encoder",
            a.student.display()
        );
    }
    let all = read_sentences(&a.data)?;
    if all.len() < a.batch || a.batch == 0 {
        bail!(
            "--data {} has {} sentences, --batch asks for {}",
            a.data.display(),
            all.len(),
            a.batch
        );
    }
    let texts: Vec<&str> = all[..a.batch].iter().map(String::as_str).collect();
    let (ms, tokens) = ours(&model, &texts, a.steps)?;
    eprintln!("squeeze: {ms:.1} ms per step ({tokens} tokens)");
    let peer = if a.python == "none" {
        None
    } else {
        if let Some(why) = hf_bert::export_blocker(&model) {
            bail!("the PyTorch peer needs a Hugging Face export of the student: {why}");
        }
        let dir = std::env::temp_dir().join(format!("squeeze-train-text-{}", std::process::id()));
        crate::cleanup::register(&dir);
        hf_bert::export(&model, &dir)?;
        let args = [
            dir.display().to_string(),
            a.data.display().to_string(),
            "--batch".into(),
            a.batch.to_string(),
            "--steps".into(),
            a.steps.to_string(),
            "--threads".into(),
            crate::measure::threads().to_string(),
        ];
        let v = crate::measure::python(&a.python, &a.peer, &args);
        let _ = std::fs::remove_dir_all(&dir);
        crate::cleanup::unregister(&dir);
        Some(v?)
    };
    let theirs = peer
        .as_ref()
        .and_then(|p| p["pytorch_ms_per_step"].as_f64());
    let entry = json!({
        "squeeze_ms_per_step": ms,
        "pytorch_ms_per_step": theirs,
        "ratio": theirs.map(|p| ms / p),
        "batch": a.batch,
        "tokens": tokens,
        "student": a.student,
        "threads": crate::measure::threads(),
        "cpu": squeeze::isa::cpu_name(),
        "peer": peer,
        "command": crate::invocation::invocation(),
    });
    let entries = serde_json::Map::from_iter([(a.key.clone(), entry)]);
    crate::measure::merge_results(&a.out, &entries)?;
    println!("{}", serde_json::to_string_pretty(&entries[&a.key])?);
    Ok(())
}

//! `squeeze bench`: our numbers and PyTorch's for the same network, measured in one run
//! (ours first, then the peer script as a subprocess, never concurrently), written as JSON
//! with the ratio. `train` times training steps of the fixed benchmark CNN at batch 128;
//! `infer` times batch-1 latency and batch-256 throughput of the same CNN; `text` scores
//! and times a sentence encoder on STS-B against sentence-transformers (PyTorch) and ONNX
//! Runtime (f32 and dynamic int8).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use squeeze::data::FashionMnist;
use squeeze::eval::{median_time, speed};
use squeeze::train::{prepare, train_step, Batch, CrossEntropy, NoHooks, OptimizerConfig};
use squeeze::zoo;

use crate::{write_json, DataArg};

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(Subcommand)]
pub enum BenchWhat {
    /// Training throughput of the benchmark CNN (s per 60k-image epoch) vs PyTorch.
    Train(Common),
    /// Inference latency (batch 1) and throughput (batch 256) of the benchmark CNN vs PyTorch.
    Infer(Common),
    /// A sentence encoder on STS-B: Spearman vs the Python reference, batch-1 latency and
    /// batch-32 throughput vs PyTorch and ONNX Runtime → one key of a results JSON.
    Text(crate::bench_text::TextArgs),
    /// Batch-1 latency of a sentence encoder on each kernel path (AVX-512, AVX2, scalar)
    /// in one run → runs/bench/isa.json (`--out` elsewhere).
    Isa(crate::bench_isa::IsaArgs),
    /// Dense vs CSR Linear at batch 1 and 256 over a grid of sparsities (zoo/mlp fc1 and
    /// MiniLM FFN shapes) → the crossover sparsity, merged into runs/bench/prune.json
    /// (`--out` elsewhere).
    Sparse(crate::bench_sparse::SparseArgs),
    /// MiniLM's Linear shapes at 1, 32 and 128 rows (f32 vs dynamic int8 vs int4) and vgg's
    /// 3×3 convolution at 1, 32 and 128 images (f32 vs static int8), on every kernel path →
    /// runs/bench/kernels.json (`--out` elsewhere).
    Kernels(crate::bench_kernels::KernelArgs),
    /// An image classifier and its quantized form: accuracy, size, batch-1 latency and
    /// batch-256 throughput side by side, plus PyTorch's static int8 of the same network →
    /// one key of runs/bench/quant.json (`--out` elsewhere).
    Quant(crate::bench_quant::QuantArgs),
    /// Students (one directory per seed and recipe) against their teacher: mean test
    /// accuracy, params, FLOPs, latency and throughput side by side → runs/bench/distill.json.
    Distill(crate::bench_distill::DistillBenchArgs),
    /// One distillation step of a sentence-encoder student (batch of real sentences) in
    /// squeeze vs PyTorch → one key of runs/bench/distill.json.
    TrainText(crate::bench_train_text::TrainTextArgs),
}

#[derive(Args)]
pub struct Common {
    /// Where to write the JSON result.
    #[arg(long)]
    pub out: PathBuf,
    /// Timed training steps (train) or throughput repetitions (infer).
    #[arg(value_parser = crate::count("steps"), long, default_value_t = 40)]
    pub steps: usize,
    /// Python interpreter with torch installed, for the peer; `none` skips the peer.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// The peer script.
    #[arg(long, default_value = "bench/peers/cnn_peer.py")]
    pub peer: PathBuf,
    #[command(flatten)]
    pub data: DataArg,
}

pub fn run(a: BenchArgs) -> Result<()> {
    match a.what {
        BenchWhat::Train(c) => train_bench(c),
        BenchWhat::Infer(c) => infer_bench(c),
        BenchWhat::Text(t) => crate::bench_text::run(t),
        BenchWhat::Isa(i) => crate::bench_isa::run(i),
        BenchWhat::Sparse(s) => crate::bench_sparse::run(s),
        BenchWhat::Kernels(k) => crate::bench_kernels::run(k),
        BenchWhat::Quant(q) => crate::bench_quant::run(q),
        BenchWhat::Distill(d) => crate::bench_distill::run(d),
        BenchWhat::TrainText(t) => crate::bench_train_text::run(t),
    }
}

const EPOCH: f64 = 60_000.0;
const BATCH: usize = 128;

fn sgd() -> OptimizerConfig {
    OptimizerConfig::Sgd {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 5e-4,
        nesterov: true,
    }
}

fn train_bench(c: Common) -> Result<()> {
    let data = FashionMnist::load(&c.data.data)?;
    let model = zoo::build("cnn", &Default::default(), 0)?;
    let (mut params, mut opt) = prepare(&model, &sgd())?;
    let batches = (0..c.steps.max(1) + 5)
        .map(|i| {
            data.train.batch(
                &((i * BATCH)..((i + 1) * BATCH))
                    .map(|j| j % data.train.len())
                    .collect::<Vec<_>>(),
                None,
            )
        })
        .collect::<squeeze::Result<Vec<_>>>()?;
    let mut i = 0;
    let t = median_time(5, c.steps, || {
        let (x, labels) = &batches[i % batches.len()];
        let batch = Batch::Images {
            x: x.clone(),
            labels: labels.clone(),
        };
        i += 1;
        train_step(
            &model,
            &mut params,
            &mut opt,
            &batch,
            (0.05, i as u64),
            &CrossEntropy,
            &mut NoHooks,
        )
        .map(|_| ())
    })?;
    let ours = t * EPOCH / BATCH as f64;
    eprintln!("squeeze: {:.1} ms/step → {ours:.1} s/epoch", t * 1e3);
    let peer = run_peer(&c, "train")?;
    let theirs = peer.as_ref().and_then(|p| p["s_per_epoch"].as_f64());
    let out = serde_json::json!({
        "squeeze_s_per_epoch": ours,
        "pytorch_s_per_epoch": theirs,
        "ratio": theirs.map(|p| ours / p),
        "squeeze_ms_per_step": t * 1e3,
        "batch": BATCH, "threads": crate::measure::threads(), "peer": peer,
        "command": crate::invocation::invocation(),
    });
    write_json(&c.out, &out)?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn infer_bench(c: Common) -> Result<()> {
    let model = zoo::build("cnn", &Default::default(), 0)?;
    let (lat, thr) = speed(&model, c.steps)?;
    eprintln!("squeeze: {lat:.3} ms at batch 1, {thr:.0} img/s at batch 256");
    let peer = run_peer(&c, "infer")?;
    let (pl, pt) = match &peer {
        Some(p) => (p["latency_ms_b1"].as_f64(), p["throughput_b256"].as_f64()),
        None => (None, None),
    };
    let out = serde_json::json!({
        "squeeze_latency_ms_b1": lat, "squeeze_throughput_b256": thr,
        "pytorch_latency_ms_b1": pl, "pytorch_throughput_b256": pt,
        "latency_ratio": pl.map(|p| lat / p), "throughput_ratio": pt.map(|p| thr / p),
        "threads": crate::measure::threads(), "peer": peer,
        "command": crate::invocation::invocation(),
    });
    write_json(&c.out, &out)?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// Runs the peer script; its last stdout line is a JSON object.
fn run_peer(c: &Common, mode: &str) -> Result<Option<serde_json::Value>> {
    if c.python == "none" {
        return Ok(None);
    }
    let out = Command::new(&c.python)
        .arg(&c.peer)
        .args([
            "--mode",
            mode,
            "--steps",
            &c.steps.to_string(),
            "--threads",
            &crate::measure::threads().to_string(),
        ])
        .arg("--data")
        .arg(&c.data.data)
        .output()
        .with_context(|| format!("running peer {} with {}", c.peer.display(), c.python))?;
    if !out.status.success() {
        bail!(
            "peer {} failed: {}",
            c.peer.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    Ok(Some(serde_json::from_str(last).with_context(|| {
        format!("peer printed no JSON: {text}")
    })?))
}

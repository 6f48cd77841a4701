//! `squeeze bench text`: one sentence encoder measured end to end on real STS-B sentences —
//! STS-B Spearman/Pearson (and the Python reference's Spearman on the same file), batch-1
//! latency (median, tokenization included), batch-32 throughput, size and peak memory —
//! then the peers (sentence-transformers on PyTorch, ONNX Runtime f32 and int8) on the same
//! sentences in the same run, never concurrently. The result is merged into the results
//! file under `--key`, so variants accumulate side by side.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use squeeze::eval::evaluate_text;
use squeeze::formats::load_any;
use squeeze::text::stsb;

use crate::write_json;

#[derive(Args)]
pub struct TextArgs {
    /// Text encoder directory.
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    pub model: PathBuf,
    /// STS-B file (scores and the sentences timed).
    #[arg(long, default_value = "data/stsb/sts-dev.csv")]
    pub data: PathBuf,
    /// Results file; the measurements go under --key, other keys are kept.
    #[arg(long, default_value = "results/minilm.json")]
    pub out: PathBuf,
    /// Key of this variant in the results file.
    #[arg(long, default_value = "f32")]
    pub key: String,
    /// Sentences timed one by one for the batch-1 latency.
    #[arg(long, default_value_t = 200)]
    pub latency_sentences: usize,
    /// Python with torch + sentence-transformers (+ onnxruntime); `none` skips peers and
    /// the reference Spearman.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Peer script.
    #[arg(long, default_value = "bench/peers/minilm_peer.py")]
    pub peer: PathBuf,
    /// Reference script (its `stsb` subcommand gives the reference Spearman).
    #[arg(long, default_value = "tools/minilm_reference.py")]
    pub reference: PathBuf,
    /// Reference model for the peers and the reference Spearman (default: --model).
    #[arg(long)]
    pub reference_model: Option<PathBuf>,
    /// Skip ONNX Runtime in the peer run.
    #[arg(long)]
    pub no_ort: bool,
}

pub fn run(a: TextArgs) -> Result<()> {
    let model = load_any(&a.model).with_context(|| format!("loading {}", a.model.display()))?;
    let pairs = stsb::read(&a.data)?;
    let texts = stsb::sentences(&pairs);
    let m = evaluate_text(&a.model, &model, &pairs, true, a.latency_sentences)?;
    let (spearman, pearson) = (
        m.spearman.unwrap_or(f64::NAN),
        m.pearson.unwrap_or(f64::NAN),
    );
    let (lat, thr) = (
        m.latency_ms_b1.unwrap_or(f64::NAN),
        m.throughput_b32.unwrap_or(f64::NAN),
    );
    eprintln!(
        "squeeze: Spearman {spearman:.4}, {lat:.2} ms at batch 1, {thr:.0} sentences/s at batch 32"
    );
    let refdir = a.reference_model.clone().unwrap_or_else(|| a.model.clone());
    let (peer, reference) = if a.python == "none" {
        (None, None)
    } else {
        let mut args = vec![
            refdir.display().to_string(),
            a.data.display().to_string(),
            a.latency_sentences.to_string(),
        ];
        if a.no_ort {
            args.push("--no-ort".into());
        }
        let peer = python(&a.python, &a.peer, &args)?;
        let r = python(
            &a.python,
            &a.reference,
            &["stsb".into(), args[0].clone(), args[1].clone()],
        )?;
        (Some(peer), Some(r))
    };
    let get = |v: &Option<Value>, k: &str| v.as_ref().and_then(|p| p[k].as_f64());
    let pt_lat = get(&peer, "pytorch_latency_ms_b1");
    let ort_lat = get(&peer, "ort_f32_latency_ms_b1");
    let entry = json!({
        "spearman": spearman,
        "pearson": pearson,
        "reference_spearman": get(&reference, "spearman"),
        "latency_ms_b1": lat,
        "throughput_b32": thr,
        "size_bytes": m.size_bytes,
        "params": m.params,
        "peak_rss_bytes": m.peak_rss_bytes,
        "pytorch_latency_ms_b1": pt_lat,
        "pytorch_throughput_b32": get(&peer, "pytorch_throughput_b32"),
        "ort_f32_latency_ms_b1": ort_lat,
        "ort_f32_throughput_b32": get(&peer, "ort_f32_throughput_b32"),
        "ort_int8_latency_ms_b1": get(&peer, "ort_int8_latency_ms_b1"),
        "latency_ratio_vs_pytorch": pt_lat.map(|p| lat / p),
        "latency_ratio_vs_ort_f32": ort_lat.map(|p| lat / p),
        "threads": crate::bench::threads(),
        "sentences": texts.len(),
        "latency_sentences": a.latency_sentences.min(texts.len()),
        "peer": peer,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
    });
    let mut all: Value = match std::fs::read_to_string(&a.out) {
        Ok(t) => serde_json::from_str(&t)
            .with_context(|| format!("{}: existing results are not JSON", a.out.display()))?,
        Err(_) => json!({}),
    };
    all[&a.key] = entry;
    write_json(&a.out, &all)?;
    println!("{}", serde_json::to_string_pretty(&all[&a.key])?);
    Ok(())
}

/// Runs a Python script; its last stdout line is a JSON object.
fn python(py: &str, script: &std::path::Path, args: &[String]) -> Result<Value> {
    let out = Command::new(py)
        .arg(script)
        .args(args)
        .output()
        .with_context(|| format!("running {} with {py}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .with_context(|| format!("{} printed no JSON: {text}", script.display()))
}

//! `squeeze bench text`: sentence encoders measured end to end on real STS-B sentences —
//! the encoder of `--model` and any compressed `--variant KEY=DIR` beside it. For each:
//! STS-B Spearman/Pearson, mean cosine of its embeddings to `--model`'s (variants), size,
//! parameters, the peak RSS of a separate `squeeze eval` process and that of `squeeze
//! embed` on 100 of the sentences, beside the weights file's size; batch-1 latency
//! (median, tokenization included) and batch-32 throughput, the encoders interleaved round
//! by round in this process. The peers (sentence-transformers on PyTorch, ONNX Runtime f32
//! and int8, plain and transformer-optimized) run in one Python process kept alive for
//! the run and take their turn after ours in every round, never concurrently; ratios
//! against them are the median (and range) of the rounds' own ratios. Then the Python
//! reference's Spearman. Each encoder's
//! entry is merged into the results file under its key, other keys are kept.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use squeeze::checkpoint::{size_on_disk, Model};
use squeeze::eval::compare::text_speeds_with;
use squeeze::eval::static_cost;
use squeeze::formats::load_any;
use squeeze::text::{stsb, stsb_scores, Encoder};

use crate::peer_server::{PeerServer, Turns};

#[derive(Args)]
pub struct TextArgs {
    /// Text encoder directory (the baseline of the variants).
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    pub model: PathBuf,
    /// A compressed encoder measured beside --model, as KEY=DIR (repeatable).
    #[arg(long = "variant", value_parser = parse_variant)]
    pub variants: Vec<(String, PathBuf)>,
    /// STS-B file (scores and the sentences timed).
    #[arg(long, default_value = "data/stsb/sts-dev.csv")]
    pub data: PathBuf,
    /// Results file; each encoder's measurements go under its key, other keys are kept.
    #[arg(long, default_value = "runs/bench/minilm.json")]
    pub out: PathBuf,
    /// Key of --model in the results file.
    #[arg(long, default_value = "f32")]
    pub key: String,
    /// Sentences timed one by one for the batch-1 latency.
    #[arg(value_parser = crate::count("latency_sentences"), long, default_value_t = 200)]
    pub latency_sentences: usize,
    /// Interleaved timing rounds of the encoders.
    #[arg(value_parser = crate::count("rounds"), long, default_value_t = 3)]
    pub rounds: usize,
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
    /// A squeeze ONNX export (`squeeze export --format onnx` directory) timed by ONNX
    /// Runtime among the peers, as KEY=DIR (repeatable): peer keys `onnx_KEY_*`.
    #[arg(long = "peer-onnx", value_parser = parse_variant)]
    pub peer_onnx: Vec<(String, PathBuf)>,
}

fn parse_variant(s: &str) -> std::result::Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((k, d)) if !k.is_empty() && !d.is_empty() => Ok((k.into(), d.into())),
        _ => Err(format!("expected KEY=DIR, got `{s}`")),
    }
}

/// One encoder's quality and static measurements.
struct Measured {
    key: String,
    entry: Value,
    embeddings: Vec<Vec<f32>>,
}

pub fn run(a: TextArgs) -> Result<()> {
    let pairs = stsb::read(&a.data)?;
    let texts = stsb::sentences(&pairs);
    let mut dirs = vec![(a.key.clone(), a.model.clone())];
    dirs.extend(a.variants.iter().cloned());
    let models = dirs
        .iter()
        .map(|(_, d)| load_any(d).with_context(|| format!("loading {}", d.display())))
        .collect::<Result<Vec<Model>>>()?;
    let mut measured = Vec::new();
    for ((key, dir), model) in dirs.iter().zip(&models) {
        measured.push(quality(key, dir, model, &pairs, &a.data)?);
    }
    let lat_texts = &texts[..a.latency_sentences.min(texts.len())];
    let refs: Vec<&Model> = models.iter().collect();
    let server = start_peer(&a)?;
    let mut turns = Turns::new(server);
    let speeds = text_speeds_with(&refs, (lat_texts, &texts), a.rounds, &mut |_| turns.take())?;
    let peer = turns.finish();
    let reference = reference(&a)?;
    let get = |v: &Option<Value>, k: &str| v.as_ref().and_then(|p| p[k].as_f64());
    // ours against a peer's key, round by round: median and range of the ratios
    let per_round = |ours: &[f64], key: &str| turns.ratio(ours, key);
    let ratio = |s: Option<(f64, f64, f64)>| s.map(|(m, _, _)| m);
    let range = |s: Option<(f64, f64, f64)>| s.map(|(_, lo, hi)| [lo, hi]);
    let base = measured[0].embeddings.clone();
    let mut shown = serde_json::Map::new();
    let base_lat = speeds[0].latency_ms_b1.median;
    for (i, (m, t)) in measured.into_iter().zip(&speeds).enumerate() {
        let (lat, thr) = (t.latency_ms_b1.median, t.throughput.median);
        let mut e = m.entry;
        let ort8_lat = get(&peer, "ort_best_int8_latency_ms_b1");
        let ort8_thr = get(&peer, "ort_best_int8_throughput_b32");
        let ort_lat = get(&peer, "ort_f32_latency_ms_b1");
        let lat8 = per_round(&t.latency_ms_b1.rounds, "ort_best_int8_latency_ms_b1");
        let thr8 = per_round(&t.throughput.rounds, "ort_best_int8_throughput_b32");
        let lat32 = per_round(&t.latency_ms_b1.rounds, "ort_f32_latency_ms_b1");
        let thr32 = per_round(&t.throughput.rounds, "ort_f32_throughput_b32");
        let extra = json!({
            "latency_ms_b1": lat,
            "latency_ms_b1_range": [t.latency_ms_b1.min, t.latency_ms_b1.max],
            "throughput_b32": thr,
            "throughput_b32_range": [t.throughput.min, t.throughput.max],
            "reference_spearman": get(&reference, "spearman"),
            "pytorch_latency_ms_b1": get(&peer, "pytorch_latency_ms_b1"),
            "pytorch_throughput_b32": get(&peer, "pytorch_throughput_b32"),
            "ort_f32_latency_ms_b1": ort_lat,
            "ort_f32_throughput_b32": get(&peer, "ort_f32_throughput_b32"),
            "ort_int8_latency_ms_b1": ort8_lat,
            "ort_int8_throughput_b32": ort8_thr,
            // ratios: the median of the rounds' own ratios, each round's peer timed right
            // after our encoders, and their range
            "latency_ratio_vs_ort_int8": ratio(lat8),
            "latency_ratio_vs_ort_int8_range": range(lat8),
            "throughput_ratio_vs_ort_int8": ratio(thr8),
            "throughput_ratio_vs_ort_int8_range": range(thr8),
            "latency_ratio_vs_ort_f32": ratio(lat32),
            "latency_ratio_vs_ort_f32_range": range(lat32),
            "throughput_ratio_vs_ort_f32": ratio(thr32),
            "throughput_ratio_vs_ort_f32_range": range(thr32),
            "latency_ratio_vs_f32": (i > 0).then(|| lat / base_lat),
            // a distilled student: its teacher (--model) timed in this run, and the
            // distillation's wall time from the student's distill.json
            "teacher_latency_ms_b1": (i > 0).then_some(base_lat),
            "distill_wall_s": distill_wall_s(&dirs[i].1),
            "cosine_to_f32": (i > 0).then(|| mean_cosine(&base, &m.embeddings)),
            "threads": crate::measure::threads(),
            "cpu": squeeze::isa::cpu_kind(),
            "isa": squeeze::isa::active().map(|i| i.name()).unwrap_or("?"),
            "sentences": texts.len(),
            "latency_sentences": lat_texts.len(),
            "timing": t.method,
            "peer": peer,
            // the command that made this encoder (the benchmark's own for one made
            // elsewhere, the downloaded original), and the benchmark that measured it
            "command": made_by(&dirs[i].1).unwrap_or_else(crate::invocation::invocation),
            "measured_by": crate::invocation::invocation(),
        });
        merge(&mut e, extra);
        eprintln!(
            "{}: Spearman {:.2}, {lat:.2} ms at batch 1, {thr:.0} sentences/s at batch 32",
            m.key, e["spearman"]
        );
        shown.insert(m.key.clone(), e);
    }
    crate::measure::merge_results(&a.out, &shown)?;
    println!("{}", serde_json::to_string_pretty(&shown)?);
    Ok(())
}

/// STS-B scores, embeddings, static cost, size and the peak RSS of `squeeze eval`.
fn quality(
    key: &str,
    dir: &Path,
    model: &Model,
    pairs: &[stsb::Pair],
    data: &Path,
) -> Result<Measured> {
    eprintln!("{key}: scoring {}", dir.display());
    let enc = Encoder::new(model)?;
    let sentences = stsb::sentences(pairs);
    let embeddings = enc.embed(&sentences, 32, true)?;
    let (spearman, pearson) = stsb_scores(&embeddings, pairs);
    let cost = static_cost(model)?;
    let mut entry = json!({
        "spearman": spearman,
        "pearson": pearson,
        "size_bytes": size_on_disk(dir)?,
        "params": cost.params,
        "nonzero_params": cost.nonzero_params,
        "peak_rss_bytes": eval_peak_rss(dir, data)?,
        "model": dir.display().to_string(),
    });
    merge(&mut entry, embed_memory(dir, &sentences)?);
    Ok(Measured {
        key: key.into(),
        entry,
        embeddings,
    })
}

/// Peak RSS of `squeeze eval DIR --task stsb` in its own process.
fn eval_peak_rss(dir: &Path, data: &Path) -> Result<Option<u64>> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .args([
            "eval",
            &dir.display().to_string(),
            "--task",
            "stsb",
            "--json",
            "--data",
        ])
        .arg(data)
        .output()
        .context("running squeeze eval for its peak RSS")?;
    if !out.status.success() {
        bail!(
            "squeeze eval {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("squeeze eval --json output")?;
    Ok(v["peak_rss_bytes"].as_u64())
}

/// Sentences `squeeze embed` is measured on (issue 30's memory target).
const EMBED_SENTENCES: usize = 100;

/// Peak RSS of `squeeze embed DIR` on the first [`EMBED_SENTENCES`] of `texts` (batch 32,
/// its own process), and how far it is above the weights file.
fn embed_memory(dir: &Path, texts: &[&str]) -> Result<Value> {
    let work = std::env::temp_dir().join(format!("squeeze-embed-rss-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let input = work.join("sentences.txt");
    let n = texts.len().min(EMBED_SENTENCES);
    std::fs::write(&input, texts[..n].join("\n") + "\n")?;
    let log = work.join("stderr.txt");
    let status = Command::new(std::env::current_exe()?)
        .arg("embed")
        .arg(dir)
        .arg("--input")
        .arg(&input)
        .arg("--out")
        .arg(work.join("e.npy"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .status()
        .context("running squeeze embed for its peak RSS")?;
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&work);
    if !status.success() {
        bail!(
            "squeeze embed {} exited with {status}: {said}",
            dir.display()
        );
    }
    // its own report (VmHWM): a spawned child's rusage starts from this process's peak
    let peak = said
        .split("; peak RSS ")
        .nth(1)
        .and_then(|t| t.trim().strip_suffix(" MB"))
        .and_then(|mb| mb.parse::<f64>().ok())
        .map(|mb| (mb * 1e6).round() as u64)
        .with_context(|| format!("squeeze embed did not report its peak RSS: {said}"))?;
    let weights = std::fs::metadata(dir.join("model.safetensors"))
        .with_context(|| format!("{}: the weights file", dir.display()))?
        .len();
    Ok(json!({
        "embed_peak_rss_bytes": peak,
        "embed_peak_rss_over_weights_bytes": peak as i64 - weights as i64,
        "embed_sentences": n,
    }))
}

/// Mean cosine between corresponding embeddings.
fn mean_cosine(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let n = a.len().min(b.len()).max(1);
    a.iter()
        .zip(b)
        .map(|(x, y)| stsb::cosine(x, y))
        .sum::<f64>()
        / n as f64
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(o), Value::Object(f)) = (into.as_object_mut(), from) {
        o.extend(f);
    }
}

/// The peer process, set up and waiting for its first round (none with `--python
/// none`), and the line it announced itself with.
fn start_peer(a: &TextArgs) -> Result<Option<(PeerServer, Value)>> {
    if a.python == "none" {
        return Ok(None);
    }
    eprintln!(
        "peers: setting up {} (PyTorch, ONNX Runtime)",
        a.peer.display()
    );
    let mut args = vec![
        reference_dir(a).display().to_string(),
        a.data.display().to_string(),
        a.latency_sentences.to_string(),
    ];
    if a.no_ort {
        args.push("--no-ort".into());
    }
    for (key, dir) in &a.peer_onnx {
        args.push("--onnx".into());
        args.push(format!("{key}={}", dir.display()));
    }
    Ok(Some(PeerServer::start(&a.python, &a.peer, &args)?))
}

fn reference_dir(a: &TextArgs) -> PathBuf {
    a.reference_model.clone().unwrap_or_else(|| a.model.clone())
}

/// The Python reference's Spearman (none with `--python none`).
fn reference(a: &TextArgs) -> Result<Option<Value>> {
    if a.python == "none" {
        return Ok(None);
    }
    let args = [
        "stsb".to_string(),
        reference_dir(a).display().to_string(),
        a.data.display().to_string(),
    ];
    Ok(Some(crate::measure::python(
        &a.python,
        &a.reference,
        &args,
    )?))
}

/// The command that made the encoder in `dir`, as its own record says: the `command` of
/// `squeeze compress`'s report.json or of `squeeze distill`'s distill.json; `None` for a
/// model made elsewhere.
fn made_by(dir: &std::path::Path) -> Option<String> {
    ["report.json", "distill.json"].iter().find_map(|f| {
        let text = std::fs::read_to_string(dir.join(f)).ok()?;
        let v = serde_json::from_str::<Value>(&text).ok()?;
        v["command"].as_str().map(String::from)
    })
}

/// The wall time recorded by `squeeze distill` in `dir`/distill.json, if it made `dir`.
fn distill_wall_s(dir: &std::path::Path) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join("distill.json")).ok()?;
    serde_json::from_str::<Value>(&text).ok()?["distill_wall_s"].as_f64()
}

//! `squeeze bench quant`: an image classifier and its quantized form side by side — test
//! accuracy, size on disk, batch-1 latency and batch-256 throughput (the two models
//! interleaved round by round in this process, medians with their spread) — and
//! PyTorch's eager-mode static int8 of the same original network (`bench/peers/
//! quant_peer.py`, x86/fbgemm engines, the better of the two), kept running in its own
//! process and timed after ours in every round, never concurrently; the ratios are the
//! median and range of the rounds' own ratios. The entry is merged into the results file under `--key`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;
use squeeze::checkpoint::size_on_disk;
use squeeze::data::FashionMnist;
use squeeze::eval::accuracy;
use squeeze::eval::compare::image_speeds_with;
use squeeze::formats::load_any;

use crate::peer_server::{PeerServer, Turns};
use crate::DataArg;

#[derive(Args)]
pub struct QuantArgs {
    /// The original model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Its quantized form (made by `squeeze compress`).
    #[arg(long)]
    pub quantized: PathBuf,
    /// Key of this comparison in the results file.
    #[arg(long)]
    pub key: String,
    /// The command that made --quantized, recorded beside the numbers.
    #[arg(long)]
    pub made_by: Option<String>,
    #[arg(long, default_value = "runs/bench/quant.json")]
    pub out: PathBuf,
    /// Interleaved timing rounds.
    #[arg(value_parser = crate::count("rounds"), long, default_value_t = 7)]
    pub rounds: usize,
    /// Batch-1 runs per round (batch-256 runs are a tenth of these).
    #[arg(value_parser = crate::count("runs"), long, default_value_t = 100)]
    pub runs: usize,
    /// Python with torch, for the PyTorch int8 peer; `none` skips it.
    #[arg(long, default_value = "python3")]
    pub python: String,
    #[arg(long, default_value = "bench/peers/quant_peer.py")]
    pub peer: PathBuf,
    #[command(flatten)]
    pub data: DataArg,
}

pub fn run(a: QuantArgs) -> Result<()> {
    let base = load_any(&a.model).with_context(|| format!("loading {}", a.model.display()))?;
    let q = load_any(&a.quantized).with_context(|| format!("loading {}", a.quantized.display()))?;
    let data = FashionMnist::load(&a.data.data)?;
    let acc = |m: &squeeze::Model| accuracy(&m.graph, &m.params, &data.test, 500);
    let (acc_base, acc_q) = (100.0 * acc(&base)?, 100.0 * acc(&q)?);
    eprintln!(
        "accuracy: {acc_base:.2}% → {acc_q:.2}%; timing {} rounds",
        a.rounds
    );
    let server = match a.python.as_str() {
        "none" => None,
        py => {
            let args = [
                a.model.display().to_string(),
                a.data.data.display().to_string(),
                "--runs".into(),
                (2 * a.runs).to_string(),
                "--threads".into(),
                crate::measure::threads().to_string(),
            ];
            eprintln!(
                "peer: setting up {} (PyTorch static int8)",
                a.peer.display()
            );
            Some(PeerServer::start(py, &a.peer, &args)?)
        }
    };
    let mut turns = Turns::new(server);
    let t = image_speeds_with(&[&base, &q], a.rounds, a.runs, &mut |_| turns.take())?;
    let peer = turns.finish();
    let get = |k: &str| peer.as_ref().and_then(|p| p[k].as_f64());
    let (lat, thr) = (t[1].latency_ms_b1.median, t[1].throughput.median);
    let (pt_lat, pt_thr) = (
        get("pytorch_int8_latency_ms_b1"),
        get("pytorch_int8_throughput_b256"),
    );
    // ours against PyTorch's int8, round by round: median and range of the ratios
    let per_round = |ours: &[f64], key: &str| turns.ratio(ours, key);
    let lat_r = per_round(&t[1].latency_ms_b1.rounds, "pytorch_int8_latency_ms_b1");
    let thr_r = per_round(&t[1].throughput.rounds, "pytorch_int8_throughput_b256");
    let measured_by = crate::invocation::invocation();
    let entry = json!({
        "accuracy": acc_q,
        "baseline": acc_base,
        "params": squeeze::eval::static_cost(&q)?.params,
        "baseline_params": squeeze::eval::static_cost(&base)?.params,
        "size_bytes": size_on_disk(&a.quantized)?,
        "baseline_size_bytes": size_on_disk(&a.model)?,
        "latency_ms_b1": lat,
        "latency_ms_b1_range": [t[1].latency_ms_b1.min, t[1].latency_ms_b1.max],
        "baseline_latency_ms_b1": t[0].latency_ms_b1.median,
        "baseline_latency_ms_b1_range": [t[0].latency_ms_b1.min, t[0].latency_ms_b1.max],
        "throughput_b256": thr,
        "throughput_b256_range": [t[1].throughput.min, t[1].throughput.max],
        "baseline_throughput_b256": t[0].throughput.median,
        "baseline_throughput_b256_range": [t[0].throughput.min, t[0].throughput.max],
        "pytorch_int8_latency_ms_b1": pt_lat,
        "pytorch_int8_throughput_b256": pt_thr,
        "pytorch_int8_accuracy": get("pytorch_int8_accuracy"),
        "latency_ratio_vs_f32": lat / t[0].latency_ms_b1.median,
        "throughput_ratio_vs_f32": thr / t[0].throughput.median,
        // the median of the rounds' own ratios (PyTorch timed right after ours in each
        // round), and their range
        "latency_ratio_vs_pytorch_int8": lat_r.map(|r| r.0),
        "latency_ratio_vs_pytorch_int8_range": lat_r.map(|r| [r.1, r.2]),
        "throughput_ratio_vs_pytorch_int8": thr_r.map(|r| r.0),
        "throughput_ratio_vs_pytorch_int8_range": thr_r.map(|r| [r.1, r.2]),
        "timing": t[0].method,
        "threads": crate::measure::threads(),
        "cpu": squeeze::isa::cpu_kind(),
        "isa": squeeze::isa::active().map(|i| i.name()).unwrap_or("?"),
        "peer": peer,
        "made_by": a.made_by,
        "command": a.made_by.clone().unwrap_or_else(|| measured_by.clone()),
        "measured_by": measured_by,
    });
    let entries = serde_json::Map::from_iter([(a.key.clone(), entry)]);
    crate::measure::merge_results(&a.out, &entries)?;
    println!("{}", serde_json::to_string_pretty(&entries[&a.key])?);
    Ok(())
}

//! `squeeze bench sparse`: where CSR beats dense. For the weight shapes of zoo/mlp's first
//! layer (300×784) and all-MiniLM's FFN output (384×1536), random weights are magnitude-
//! pruned to a grid of sparsities and the Linear kind's dense path (the streaming kernel
//! at batch 1, GEMM at batch 256) is timed against the CSR kernel, interleaved in one
//! process; the crossover is the sparsity at which CSR becomes faster (linear
//! interpolation between grid points). With `--dense A --sparse B`, also the batch-1
//! latency of two whole models (e.g. zoo/mlp and its 90%-sparse CSR form), measured as
//! every comparison is (interleaved rounds, median and range).
//! Writes the table and merges the crossovers into a results file under one key.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use squeeze::eval::image_speeds;
use squeeze::math::csr::CsrOwned;
use squeeze::prune::csr_choice::dense_and_csr_secs;

use crate::write_json;

#[derive(Args)]
pub struct SparseArgs {
    /// Results file to merge the crossover into (created if missing).
    #[arg(long, default_value = "runs/bench/prune.json")]
    pub out: PathBuf,
    /// Key of the crossover entry in that file.
    #[arg(long, default_value = "sparse-crossover")]
    pub key: String,
    /// Timed runs per measurement (median taken), batch 1; batch 256 uses a tenth.
    #[arg(value_parser = crate::count("runs"), long, default_value_t = 200)]
    pub runs: usize,
    /// Also time this dense model against `--sparse` at batch 1, whole forward passes,
    /// interleaved over 15 rounds.
    #[arg(long, requires = "sparse")]
    pub dense: Option<PathBuf>,
    /// The pruned, materialized model timed against `--dense`.
    #[arg(long, requires = "dense")]
    pub sparse: Option<PathBuf>,
}

/// Interleaved rounds of the whole-model comparison.
const MODEL_ROUNDS: usize = 15;

/// Batch-1 latency (ms) of two whole models, timed by the project's comparison rule
/// ([`image_speeds`]: interleaved rounds, order rotating): medians and ranges.
fn whole_models(
    (dense, a): (&std::path::Path, &squeeze::model::Model),
    (sparse, b): (&std::path::Path, &squeeze::model::Model),
    runs: usize,
) -> Result<serde_json::Value> {
    let t = image_speeds(&[a, b], MODEL_ROUNDS, runs)?;
    let (ta, tb) = (&t[0].latency_ms_b1, &t[1].latency_ms_b1);
    eprintln!(
        "{} {:.4} [{:.4}–{:.4}] ms vs {} {:.4} [{:.4}–{:.4}] ms at batch 1 ({})",
        dense.display(),
        ta.median,
        ta.min,
        ta.max,
        sparse.display(),
        tb.median,
        tb.min,
        tb.max,
        t[0].method
    );
    Ok(serde_json::json!({
        "dense": dense, "sparse": sparse, "dense_ms_b1": ta.median, "sparse_ms_b1": tb.median,
        "ratio": tb.median / ta.median, "rounds": MODEL_ROUNDS,
        "dense_timing": t[0], "sparse_timing": t[1],
    }))
}

/// Interleaved rounds per measurement (dense, CSR, dense, …; the median is kept).
const ROUNDS: usize = 7;

const GRID: [f64; 9] = [0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.98];
const SHAPES: [(&str, usize, usize); 2] = [("mlp_fc1", 300, 784), ("minilm_ffn", 384, 1536)];

fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Dense and CSR times (ms) at one sparsity and batch.
fn measure(
    w: &[f32],
    (rows, cols): (usize, usize),
    s: f64,
    m: usize,
    runs: usize,
) -> Result<(f64, f64)> {
    let mut mags: Vec<f32> = w.iter().map(|v| v.abs()).collect();
    let k = ((s * w.len() as f64) as usize).min(w.len() - 1);
    let thr = *mags.select_nth_unstable_by(k, f32::total_cmp).1;
    let pruned: Vec<f32> = w
        .iter()
        .map(|v| if v.abs() < thr { 0.0 } else { *v })
        .collect();
    let owned = CsrOwned::from_dense(&pruned, rows, cols);
    let (dense, sparse) = dense_and_csr_secs(&pruned, &owned, (rows, cols), m, (ROUNDS, runs))?;
    Ok((dense * 1e3, sparse * 1e3))
}

/// First sparsity of the grid where CSR wins, interpolated from the previous point.
fn crossover(rows: &[(f64, f64, f64)]) -> Option<f64> {
    let ratio = |r: &(f64, f64, f64)| r.2 / r.1; // sparse / dense
    for (i, r) in rows.iter().enumerate() {
        if ratio(r) < 1.0 {
            if i == 0 {
                return Some(r.0);
            }
            let p = &rows[i - 1];
            let (a, b) = (ratio(p), ratio(r));
            return Some(p.0 + (r.0 - p.0) * (a - 1.0) / (a - b));
        }
    }
    None
}

pub fn run(a: SparseArgs) -> Result<()> {
    // the whole models are loaded before minutes of kernel timing, so a wrong path fails
    // at once
    let models = match (&a.dense, &a.sparse) {
        (Some(d), Some(s)) => Some((
            (d, squeeze::formats::load_any(d)?),
            (s, squeeze::formats::load_any(s)?),
        )),
        _ => None,
    };
    read_object(&a.out)?;
    let mut entry = serde_json::Map::new();
    let mut table = serde_json::Map::new();
    for (name, rows, cols) in SHAPES {
        let w = pseudo_random(rows * cols, 1);
        for (m, runs) in [(1usize, a.runs), (256, (a.runs / 10).max(3))] {
            let mut pts = Vec::new();
            for s in GRID {
                let (d, sp) = measure(&w, (rows, cols), s, m, runs)?;
                eprintln!("{name} {rows}×{cols} batch {m}: sparsity {s:.2}: dense {d:.4} ms, CSR {sp:.4} ms");
                pts.push((s, d, sp));
            }
            let x = crossover(&pts);
            let key = if m == 1 {
                name.to_string()
            } else {
                format!("{name}_b{m}")
            };
            entry.insert(
                key.clone(),
                serde_json::json!(x.map(|v| (v * 1000.0).round() / 1000.0)),
            );
            table.insert(
                key,
                pts.iter()
                    .map(|(s, d, sp)| serde_json::json!({ "sparsity": s, "dense_ms": d, "csr_ms": sp }))
                    .collect(),
            );
        }
    }
    entry.insert("note".into(), "sparsity at which the CSR kernel becomes faster than the dense path; plain keys at batch 1, _b256 at batch 256; null = dense faster at every grid point up to 0.98".into());
    entry.insert("table".into(), table.into());
    if let Some(((d, dm), (sp, sm))) = &models {
        entry.insert(
            "whole_model".into(),
            whole_models((d, dm), (sp, sm), a.runs)?,
        );
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    entry.insert("threads".into(), threads.into());
    entry.insert("command".into(), crate::invocation::invocation().into());
    for k in ["mlp_fc1", "mlp_fc1_b256", "minilm_ffn", "minilm_ffn_b256"] {
        println!("{k}: crossover sparsity {}", entry[k]);
    }
    merge_key(&a.out, &a.key, entry.into())?;
    eprintln!("wrote key `{}` of {}", a.key, a.out.display());
    Ok(())
}

/// Sets `key` of the JSON object in `path` (created if missing) to `v`.
pub fn merge_key(path: &std::path::Path, key: &str, v: serde_json::Value) -> Result<()> {
    let mut obj = read_object(path)?;
    obj.insert(key.into(), v);
    write_json(path, &obj)
}

/// The JSON object in `path` (empty if the file does not exist): benchmarks call it before
/// they start, so a results file that is not a JSON object fails at once, not after the
/// timing.
pub fn read_object(path: &std::path::Path) -> Result<serde_json::Map<String, serde_json::Value>> {
    match std::fs::read_to_string(path) {
        Ok(t) => serde_json::from_str(&t)
            .map_err(|e| anyhow::anyhow!("{}: not a JSON object: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(serde_json::Map::new()),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

//! `squeeze eval` (one model → accuracy + cost JSON) and `squeeze report` (several models →
//! a side-by-side Markdown table).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use squeeze::checkpoint;
use squeeze::data::FashionMnist;
use squeeze::eval::{evaluate, Metrics};

use crate::{write_json, DataArg};

#[derive(Args)]
pub struct EvalArgs {
    /// Model directory (model.json + model.safetensors).
    pub dir: PathBuf,
    /// Print the metrics as JSON (default: a readable summary).
    #[arg(long)]
    pub json: bool,
    /// Timed repetitions for throughput (batch-1 latency uses 10× as many); 0 skips timing.
    #[arg(long, default_value_t = 10)]
    pub speed_runs: usize,
    /// Also write the metrics to DIR/metrics.json.
    #[arg(long)]
    pub save: bool,
    /// Add the parameters and MACs of every node (JSON key `nodes`, or a second table).
    #[arg(long)]
    pub per_node: bool,
    #[command(flatten)]
    pub data: DataArg,
}

/// Loads and fully evaluates one model directory on the test set.
pub fn eval_dir(dir: &Path, data: &Path, speed_runs: usize) -> Result<Metrics> {
    let model =
        checkpoint::load(dir).with_context(|| format!("loading model {}", dir.display()))?;
    let fm = FashionMnist::load(data)?;
    Ok(evaluate(dir, &model, Some(&fm.test), speed_runs)?)
}

pub fn run_eval(a: EvalArgs) -> Result<()> {
    let m = eval_dir(&a.dir, &a.data.data, a.speed_runs)?;
    if a.save {
        write_json(&a.dir.join("metrics.json"), &m)?;
    }
    let nodes = if a.per_node {
        let model = checkpoint::load(&a.dir)?;
        Some(squeeze::eval::node_costs(&model.graph, &model.params)?)
    } else {
        None
    };
    if a.json {
        let mut v = serde_json::to_value(&m)?;
        if let Some(n) = &nodes {
            v["nodes"] = serde_json::to_value(n)?;
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{}", table(&[(a.dir.display().to_string(), m)]));
        if let Some(n) = &nodes {
            println!("| node | kind | params | MACs |\n|---|---|---|---|");
            for c in n {
                println!("| {} | {} | {} | {} |", c.node, c.kind, c.params, c.macs);
            }
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct ReportArgs {
    /// Model directories; each one's metrics.json is used when present, else it is evaluated.
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// Re-evaluate even where metrics.json exists.
    #[arg(long)]
    pub fresh: bool,
    #[command(flatten)]
    pub data: DataArg,
}

/// Metrics of a directory: its metrics.json, or a fresh evaluation.
pub fn metrics_of(dir: &Path, data: &Path, fresh: bool) -> Result<Metrics> {
    let p = dir.join("metrics.json");
    if !fresh && p.exists() {
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        return serde_json::from_str(&text)
            .with_context(|| format!("{}: not a metrics file", p.display()));
    }
    eval_dir(dir, data, 10)
}

pub fn run_report(a: ReportArgs) -> Result<()> {
    let rows = a
        .dirs
        .iter()
        .map(|d| {
            Ok((
                d.display().to_string(),
                metrics_of(d, &a.data.data, a.fresh)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    println!("{}", table(&rows));
    Ok(())
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "–".into())
}

/// Markdown table; ratios are relative to the first row.
pub fn table(rows: &[(String, Metrics)]) -> String {
    let mut s = String::from(
        "| model | accuracy | params | non-zero | MFLOPs | size (KB) | latency b1 (ms) | throughput b256 (img/s) | peak RSS (MB) |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for (name, m) in rows {
        s += &format!(
            "| {name} | {} | {} | {} | {:.2} | {} | {} | {} | {} |\n",
            opt(m.accuracy, |a| format!("{:.2}%", a * 100.0)),
            m.params,
            m.nonzero_params,
            m.flops as f64 / 1e6,
            opt(m.size_bytes.map(|b| b as f64), |b| format!(
                "{:.1}",
                b / 1024.0
            )),
            opt(m.latency_ms_b1, |l| format!("{l:.3}")),
            opt(m.throughput_b256, |t| format!("{t:.0}")),
            opt(m.peak_rss_bytes.map(|b| b as f64), |b| format!(
                "{:.0}",
                b / 1048576.0
            )),
        );
    }
    s
}

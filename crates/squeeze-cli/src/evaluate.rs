//! `squeeze eval` (one model → quality + cost JSON: Fashion-MNIST accuracy for image
//! models, STS-B correlation for text encoders) and `squeeze report` (several models → a
//! side-by-side Markdown table).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use clap::ValueEnum;
use squeeze::data::FashionMnist;
use squeeze::eval::{evaluate, evaluate_text, Metrics};
use squeeze::formats::load_any;
use squeeze::text::stsb;

use crate::write_json;

/// Default STS-B file (the repository's copy of the dev split).
pub const STSB_DEV: &str = "data/stsb/sts-dev.csv";

/// What to measure quality on.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Task {
    /// Image models: Fashion-MNIST test accuracy; text encoders: STS-B.
    Auto,
    /// Fashion-MNIST test-set top-1 accuracy.
    Fmnist,
    /// STS-B Spearman/Pearson (×100) of cosine similarity.
    Stsb,
}

#[derive(Args)]
pub struct EvalArgs {
    /// Model directory: a squeeze checkpoint (model.json + model.safetensors) or a Hugging
    /// Face BERT / sentence-transformers directory (config.json + model.safetensors).
    pub dir: PathBuf,
    /// Quality task.
    #[arg(long, value_enum, default_value = "auto")]
    pub task: Task,
    /// Data: the Fashion-MNIST directory (default /usr/share/datasets/fashion-mnist) or the
    /// STS-B file (default data/stsb/sts-dev.csv).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Print the metrics as JSON (default: a readable summary).
    #[arg(long)]
    pub json: bool,
    /// Timed repetitions for throughput (batch-1 latency uses 10× as many; text encoders:
    /// batch-1 latency over 20× as many real sentences); 0 skips timing.
    #[arg(long, default_value_t = 10)]
    pub speed_runs: usize,
    /// Also write the metrics to DIR/metrics.json.
    #[arg(long)]
    pub save: bool,
    /// Add the parameters and MACs of every node (JSON key `nodes`, or a second table).
    #[arg(long)]
    pub per_node: bool,
}

/// Loads and fully evaluates one model directory on its task's data (`data` = None: the
/// task's default file or directory).
pub fn eval_dir(dir: &Path, task: Task, data: Option<&Path>, speed_runs: usize) -> Result<Metrics> {
    let model = load_any(dir).with_context(|| format!("loading model {}", dir.display()))?;
    eval_model(dir, &model, task, data, speed_runs)
}

/// Evaluates a loaded model saved at `dir` (for its size on disk).
pub fn eval_model(
    dir: &Path,
    model: &squeeze::Model,
    task: Task,
    data: Option<&Path>,
    speed_runs: usize,
) -> Result<Metrics> {
    let task = match task {
        Task::Auto if model.graph.is_text() => Task::Stsb,
        Task::Auto => Task::Fmnist,
        t => t,
    };
    match (task, model.graph.is_text()) {
        (Task::Stsb, true) => {
            let path = data.unwrap_or(Path::new(STSB_DEV));
            let pairs = stsb::read(path)?;
            Ok(evaluate_text(dir, model, &pairs, true, speed_runs * 20)?)
        }
        (Task::Fmnist, false) => {
            let fm = FashionMnist::load(data.unwrap_or(Path::new(squeeze::data::DEFAULT_DIR)))?;
            Ok(evaluate(dir, model, Some(&fm.test), speed_runs)?)
        }
        (_, text) => anyhow::bail!(
            "{}: a {} model cannot be evaluated on this task (use --task {})",
            dir.display(),
            if text { "text" } else { "image" },
            if text { "stsb" } else { "fmnist" }
        ),
    }
}

pub fn run_eval(a: EvalArgs) -> Result<()> {
    let m = eval_dir(&a.dir, a.task, a.data.as_deref(), a.speed_runs)?;
    if a.save {
        write_json(&a.dir.join("metrics.json"), &m)?;
    }
    let nodes = if a.per_node {
        let model = load_any(&a.dir)?;
        Some(squeeze::eval::node_costs(&model.graph)?)
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
    /// Fashion-MNIST directory for image models (text encoders use data/stsb/sts-dev.csv).
    #[arg(long, default_value = squeeze::data::DEFAULT_DIR)]
    pub data: PathBuf,
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
    let model = load_any(dir).with_context(|| format!("loading model {}", dir.display()))?;
    let data = (!model.graph.is_text()).then_some(data);
    eval_dir(dir, Task::Auto, data, 10)
}

pub fn run_report(a: ReportArgs) -> Result<()> {
    let rows = a
        .dirs
        .iter()
        .map(|d| Ok((d.display().to_string(), metrics_of(d, &a.data, a.fresh)?)))
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
        "| model | quality | params | non-zero | MFLOPs | size (KB) | latency b1 (ms) | throughput (/s) | peak RSS (MB) |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for (name, m) in rows {
        let quality = match (m.accuracy, m.spearman) {
            (Some(a), _) => format!("{:.2}% acc", a * 100.0),
            (None, Some(r)) => format!("{r:.2} STS-B ρ"),
            _ => "–".into(),
        };
        let throughput = match (m.throughput_b256, m.throughput_b32) {
            (Some(t), _) => format!("{t:.0} (b256)"),
            (None, Some(t)) => format!("{t:.0} (b32)"),
            _ => "–".into(),
        };
        s += &format!(
            "| {name} | {quality} | {} | {} | {:.2} | {} | {} | {throughput} | {} |\n",
            m.params,
            m.nonzero_params,
            m.flops as f64 / 1e6,
            opt(m.size_bytes.map(|b| b as f64), |b| format!(
                "{:.1}",
                b / 1024.0
            )),
            opt(m.latency_ms_b1, |l| format!("{l:.3}")),
            opt(m.peak_rss_bytes.map(|b| b as f64), |b| format!(
                "{:.0}",
                b / 1048576.0
            )),
        );
    }
    s
}

//! `squeeze eval` (one model → quality + cost JSON: Fashion-MNIST accuracy for image
//! models, STS-B correlation for text encoders) and `squeeze report` (several models → a
//! side-by-side Markdown table).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use clap::ValueEnum;
use squeeze::data::FashionMnist;
use squeeze::eval::{evaluate, evaluate_text, image_speeds, text_speeds, Measured, Metrics};
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
    #[arg(value_parser = crate::count("speed_runs"), long, default_value_t = 10)]
    pub speed_runs: usize,
    /// Also write the metrics, with when and on which CPU they were measured, to this JSON
    /// file (written atomically; `DIR/metrics.json` makes them the model's stored metrics,
    /// which `report --stored` reads).
    #[arg(long)]
    pub out: Option<PathBuf>,
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
            "{}: {} model cannot be evaluated on this task (use --task {})",
            dir.display(),
            if text { "a text" } else { "an image" },
            if text { "stsb" } else { "fmnist" }
        ),
    }
}

pub fn run_eval(a: EvalArgs) -> Result<()> {
    let mut m = eval_dir(&a.dir, a.task, a.data.as_deref(), a.speed_runs)?;
    if let Some(out) = &a.out {
        m.measured = Some(Measured::now());
        write_json(out, &m)?;
        eprintln!("wrote {}", out.display());
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
    /// Model directories, compared side by side: quality and cost of each, speeds measured
    /// in this process with the models interleaved.
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// Show each directory's stored metrics.json instead, labelled with its date and
    /// machine (stored speeds of different runs are not comparable).
    #[arg(long)]
    pub stored: bool,
    /// Interleaved timing rounds (0 skips timing).
    #[arg(value_parser = crate::count("rounds"), long, default_value_t = 5)]
    pub rounds: usize,
    /// Fashion-MNIST directory for image models (text encoders use data/stsb/sts-dev.csv).
    #[arg(long, default_value = squeeze::data::DEFAULT_DIR)]
    pub data: PathBuf,
    /// Also write the measurements as JSON to this file (one object per model, in order,
    /// with the command and the machine); never inside a model directory.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Timed repetitions per round of an image model's batch-1 latency.
const LATENCY_REPS: usize = 100;
/// STS-B sentences timed one by one (latency) and at batch 32 (throughput) per round.
const TEXT_LATENCY_SENTENCES: usize = 100;
const TEXT_THROUGHPUT_SENTENCES: usize = 640;

/// Quality and cost of every model (image models on the Fashion-MNIST directory `images`,
/// text encoders on the STS-B file `stsb`), then the speeds of each kind timed together,
/// interleaved over `rounds` rounds (0: no timing).
pub fn compare(
    models: &[(&Path, &squeeze::Model)],
    images: &Path,
    stsb_file: &Path,
    rounds: usize,
) -> Result<Vec<Metrics>> {
    let mut out = Vec::with_capacity(models.len());
    for (dir, m) in models {
        let d = if m.graph.is_text() { stsb_file } else { images };
        out.push(eval_model(dir, m, Task::Auto, Some(d), 0)?);
    }
    if models.len() > 1 {
        // models held in one process share its peak: not a number of any one of them
        for m in &mut out {
            m.peak_rss_bytes = None;
        }
    }
    if rounds == 0 {
        return Ok(out);
    }
    let (text, image): (Vec<usize>, Vec<usize>) =
        (0..models.len()).partition(|&i| models[i].1.graph.is_text());
    if !image.is_empty() {
        let ms: Vec<&squeeze::Model> = image.iter().map(|&i| models[i].1).collect();
        for (&i, t) in image.iter().zip(image_speeds(&ms, rounds, LATENCY_REPS)?) {
            t.fill(&mut out[i]);
        }
    }
    if !text.is_empty() {
        let pairs = stsb::read(stsb_file)?;
        let texts = stsb::sentences(&pairs);
        let ms: Vec<&squeeze::Model> = text.iter().map(|&i| models[i].1).collect();
        let (lat, thr) = (
            &texts[..TEXT_LATENCY_SENTENCES.min(texts.len())],
            &texts[..TEXT_THROUGHPUT_SENTENCES.min(texts.len())],
        );
        for (&i, t) in text.iter().zip(text_speeds(&ms, lat, thr, rounds)?) {
            t.fill(&mut out[i]);
        }
    }
    Ok(out)
}

/// The stored metrics.json of a directory.
pub fn stored_metrics(dir: &Path) -> Result<Metrics> {
    let p = dir.join("metrics.json");
    let text = std::fs::read_to_string(&p).with_context(|| {
        format!(
            "reading {} (evaluate it with `squeeze eval {} --out {}`)",
            p.display(),
            dir.display(),
            p.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a metrics file", p.display()))
}

pub fn run_report(a: ReportArgs) -> Result<()> {
    if a.stored {
        let rows = a
            .dirs
            .iter()
            .map(|d| {
                let m = stored_metrics(d)?;
                let when = m
                    .measured
                    .as_ref()
                    .map_or("date and machine unknown".into(), |w| {
                        format!("{}, {}", w.date(), w.machine)
                    });
                Ok((format!("{} (stored: {when})", d.display()), m))
            })
            .collect::<Result<Vec<_>>>()?;
        // one footer: no "Speeds: …interleaved" line from the stored runs' own methods
        println!("{}", table_rows(&rows));
        println!(
            "Stored metrics, each from its own run (when and where beside each): their speeds \
             are not comparable. `squeeze report` without --stored measures the models \
             together, interleaved."
        );
        return Ok(());
    }
    if let Some(j) = &a.json {
        let inputs: Vec<(&str, &Path)> = a.dirs.iter().map(|d| ("model", d.as_path())).collect();
        crate::outdir::check_disjoint_as("--json", j, &inputs)?;
    }
    let models = a
        .dirs
        .iter()
        .map(|d| {
            let m = load_any(d).with_context(|| format!("loading model {}", d.display()))?;
            Ok(m)
        })
        .collect::<Result<Vec<_>>>()?;
    let pairs: Vec<(&Path, &squeeze::Model)> =
        a.dirs.iter().map(PathBuf::as_path).zip(&models).collect();
    let metrics = compare(&pairs, &a.data, Path::new(STSB_DEV), a.rounds)?;
    let rows: Vec<(String, Metrics)> = a
        .dirs
        .iter()
        .map(|d| d.display().to_string())
        .zip(metrics)
        .collect();
    println!("{}", table(&rows));
    if let Some(j) = &a.json {
        let models: Vec<serde_json::Value> = rows
            .iter()
            .map(|(d, m)| serde_json::json!({ "model": d, "metrics": m }))
            .collect();
        let doc = serde_json::json!({
            "command": crate::invocation::invocation(),
            "measured": Measured::now(), "rounds": a.rounds, "models": models,
        });
        write_json(j, &doc)?;
    }
    Ok(())
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "–".into())
}

/// Batch-1 latency, with the range of the rounds when it was timed interleaved.
fn latency_cell(m: &Metrics) -> String {
    match (&m.timing, m.latency_ms_b1) {
        (Some(t), _) => format!(
            "{:.3} [{:.3}–{:.3}]",
            t.latency_ms_b1.median, t.latency_ms_b1.min, t.latency_ms_b1.max
        ),
        (None, l) => opt(l, |l| format!("{l:.3}")),
    }
}

/// Markdown table, followed by how the speeds were measured and which rows are slower
/// than the first at batch 1.
pub fn table(rows: &[(String, Metrics)]) -> String {
    let mut s = table_rows(rows);
    let mut methods: Vec<&str> = rows
        .iter()
        .filter_map(|(_, m)| m.timing.as_ref().map(|t| t.method.as_str()))
        .collect();
    methods.dedup();
    for method in methods {
        s += &format!("\nSpeeds: {method}.\n");
    }
    s += &slower_note(rows);
    s
}

/// `n` with thousands separators.
pub fn thousands(n: u64) -> String {
    let d = n.to_string();
    let mut out = String::new();
    for (i, c) in d.chars().enumerate() {
        if i > 0 && (d.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Quality in points (accuracy in %, Spearman ×100) and its label.
fn quality(m: &Metrics) -> Option<(f64, &'static str)> {
    match (m.accuracy, m.spearman) {
        (Some(a), _) => Some((a * 100.0, "% acc")),
        (None, Some(r)) => Some((r, " STS-B ρ")),
        _ => None,
    }
}

fn throughput(m: &Metrics) -> Option<(f64, &'static str)> {
    match (m.throughput_b256, m.throughput_b32) {
        (Some(t), _) => Some((t, "b256")),
        (None, Some(t)) => Some((t, "b32")),
        _ => None,
    }
}

/// `a / b` as a ratio cell, or "–".
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

/// Rows slower than the first at batch 1 (median of the interleaved rounds), named below
/// the table.
fn slower_note(rows: &[(String, Metrics)]) -> String {
    let Some((_, first)) = rows.first() else {
        return String::new();
    };
    let slow: Vec<String> = rows[1..]
        .iter()
        .filter_map(|(name, m)| {
            let r = m.latency_ms_b1? / first.latency_ms_b1?;
            (r > 1.0).then(|| format!("`{name}` ({r:.2}×)"))
        })
        .collect();
    match slow.is_empty() {
        true => String::new(),
        false => format!(
            "\nSlower than the first row at batch 1: {}.\n",
            slow.join(", ")
        ),
    }
}

/// One row per model. With more than one row, Δ quality and the × ratios are against the
/// first row (× time < 1 is faster); peak RSS only for a single model, since models
/// measured in one process share it. `params` are logical (a sparse or packed layer counts
/// its whole weight); `non-zero` and the file size say what is stored.
fn table_rows(rows: &[(String, Metrics)]) -> String {
    let single = rows.len() == 1;
    let mut s = String::from(match single {
        true => "| model | quality | params | non-zero | MFLOPs | size (KB) | latency b1 (ms) | throughput (/s) | peak RSS (MB) |\n|---|---|---|---|---|---|---|---|---|\n",
        false => "| model | quality | Δ quality | params | non-zero | size (KB) | × size | MFLOPs | latency b1 (ms) | × time b1 | throughput (/s) | × throughput |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    });
    let first = &rows.first().map(|r| r.1.clone()).unwrap_or_default();
    for (i, (name, m)) in rows.iter().enumerate() {
        let q = opt_str(quality(m).map(|(v, u)| format!("{v:.2}{u}")));
        let thr = opt_str(throughput(m).map(|(t, b)| format!("{} ({b})", thousands(t as u64))));
        let size = opt(m.size_bytes.map(|b| b as f64), |b| {
            thousands((b / 1024.0).round() as u64)
        });
        let (params, nonzero) = (
            thousands(m.params as u64),
            thousands(m.nonzero_params as u64),
        );
        let mflops = format!("{:.2}", m.flops as f64 / 1e6);
        if single {
            let rss = opt(m.peak_rss_bytes.map(|b| b as f64), |b| {
                format!("{:.0}", b / 1048576.0)
            });
            s += &format!(
                "| {name} | {q} | {params} | {nonzero} | {mflops} | {size} | {} | {thr} | {rss} |\n",
                latency_cell(m)
            );
            continue;
        }
        let dq = match (quality(m), quality(first)) {
            (Some((a, _)), Some((b, _))) => format!("{:+.2}", a - b),
            _ => "–".into(),
        };
        let time = ratio(m.latency_ms_b1, first.latency_ms_b1);
        let slower = m
            .latency_ms_b1
            .zip(first.latency_ms_b1)
            .is_some_and(|(a, b)| a > b);
        let time = if slower {
            format!("{time} (slower)")
        } else {
            time
        };
        if i == 0 {
            s += &format!(
                "| {name} | {q} | ref | {params} | {nonzero} | {size} | ref | {mflops} | {} | ref | {thr} | ref |\n",
                latency_cell(m)
            );
            continue;
        }
        s += &format!(
            "| {name} | {q} | {dq} | {params} | {nonzero} | {size} | {} | {mflops} | {} | {time} | {thr} | {} |\n",
            ratio(m.size_bytes.map(|b| b as f64), first.size_bytes.map(|b| b as f64)),
            latency_cell(m),
            ratio(throughput(m).map(|t| t.0), throughput(first).map(|t| t.0)),
        );
    }
    if !single {
        s += "\nΔ quality and × are against the first row (× time below 1 is faster).\n";
    }
    s
}

fn opt_str(v: Option<String>) -> String {
    v.unwrap_or_else(|| "–".into())
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(266610), "266,610");
        assert_eq!(thousands(22565376), "22,565,376");
    }
}

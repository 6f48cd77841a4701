//! The `squeeze` command-line program: train zoo models on Fashion-MNIST, evaluate them
//! and pretrained text encoders (quality + cost as JSON), embed text, export to Hugging
//! Face format, compress with a recipe, compare them side by side, run
//! the benchmarks and the end-to-end demo. Errors are reported with `anyhow` context that
//! names the file or option at fault.

mod alloc;
mod bench;
mod bench_distill;
mod bench_isa;
mod bench_kernels;
mod bench_quant;
mod bench_sparse;
mod bench_text;
mod bench_train_text;
mod cleanup;
mod compress;
mod demo;
mod demo_page;
mod distill;
mod distill_text;
mod embed;
mod evaluate;
mod export;
mod guard;
mod interrupt;
mod invocation;
mod measure;
mod outdir;
mod peer_server;
mod plot;
mod presets;
mod search;
mod search_report;
mod train;

use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// squeeze — make trained networks smaller and faster, and prove it with measurements:
/// pruning, quantization, low-rank factorization and distillation as passes over one model
/// view, each result measured against its original in the same run.
#[derive(Parser)]
#[command(
    name = "squeeze",
    version,
    after_help = "Start here:\n  \
        squeeze eval zoo/vgg                                   accuracy, size, speed\n  \
        squeeze compress zoo/vgg --preset int8-static --out runs/vgg-int8\n  \
        squeeze recipes                                        presets and what they measured\n  \
        squeeze report zoo/vgg runs/vgg-int8                   both side by side\n\
        The README lists every command; `squeeze COMMAND --help` each one's options."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a zoo architecture on Fashion-MNIST (checkpoint each epoch; --resume continues).
    Train(train::TrainArgs),
    /// Distill a teacher into a smaller student (soft targets, FitNets hints; checkpoint
    /// each epoch, --resume continues).
    Distill(distill::DistillArgs),
    /// Evaluate a model directory: quality (Fashion-MNIST accuracy or STS-B correlation) and
    /// cost (params, FLOPs, size, latency, memory).
    Eval(evaluate::EvalArgs),
    /// Embed a text file (one sentence per line) with a text encoder → .npy or .jsonl.
    Embed(embed::EmbedArgs),
    /// Write a model as a Hugging Face / sentence-transformers directory or natively.
    Export(export::ExportArgs),
    /// Apply a TOML recipe of passes to a model; writes the new model and report.json.
    Compress(compress::CompressArgs),
    /// Per-layer ratios for a budget (params=, flops=, latency=): a cached sensitivity scan,
    /// the least-loss choice and a uniform one, fine-tuned and written with their recipes.
    Search(search::SearchArgs),
    /// List the presets of `compress --preset`: what each does and what it measured.
    Recipes,
    /// Print a side-by-side Markdown table of model directories.
    Report(evaluate::ReportArgs),
    /// Benchmarks against PyTorch (training speed, inference latency/throughput) → JSON.
    Bench(bench::BenchArgs),
    /// The main job: train a small model (or reuse it), apply the recipes, compare.
    Demo(demo::DemoArgs),
}

/// Whether the command trains: those keep freed memory for reuse (every step frees and
/// allocates the same buffers); the others return it, keeping their peak RSS low.
fn trains(cmd: &Cmd) -> bool {
    use bench::BenchWhat;
    match cmd {
        Cmd::Train(_) | Cmd::Distill(_) | Cmd::Compress(_) | Cmd::Search(_) | Cmd::Demo(_) => true,
        Cmd::Bench(b) => matches!(b.what, BenchWhat::Train(_) | BenchWhat::TrainText(_)),
        _ => false,
    }
}

/// The command line, with `compress --help` listing every pass a recipe may name (from the
/// passes' own declarations).
fn parse() -> Cli {
    let cmd = Cli::command().mut_subcommand("compress", |c| {
        c.after_long_help(format!(
            "Passes a recipe may list ([[passes]] with `type` and these options):\n{}",
            squeeze::passes::reference_text()
        ))
    });
    Cli::from_arg_matches(&cmd.get_matches()).unwrap_or_else(|e| e.exit())
}

fn main() {
    let cli = parse();
    if trains(&cli.cmd) {
        alloc::keep_freed_memory();
        cleanup::arm();
    }
    if matches!(cli.cmd, Cmd::Embed(_)) {
        alloc::lean_heap();
        alloc::small_pages();
    }
    // train and distill resume from their checkpoints; the others start again
    let resumable = matches!(cli.cmd, Cmd::Train(_) | Cmd::Distill(_));
    // a misspelled or unsupported SQUEEZE_ISA is refused before any work starts
    if let Err(e) = squeeze::isa::active() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    let r = match cli.cmd {
        Cmd::Train(a) => train::run(a),
        Cmd::Distill(a) => {
            distill::prepare(&a).and_then(|(teacher, _lock)| match teacher.graph.is_text() {
                true => distill_text::run(&a, &teacher),
                false => distill::run_images(a, teacher),
            })
        }
        Cmd::Eval(a) => evaluate::run_eval(a),
        Cmd::Compress(a) => compress::run(a),
        Cmd::Search(a) => search::run(a),
        Cmd::Embed(a) => embed::run(a),
        Cmd::Export(a) => export::run(a),
        Cmd::Report(a) => evaluate::run_report(a),
        Cmd::Recipes => presets::list(),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Demo(a) => demo::run(a),
    };
    if let Err(e) = r {
        if let Some((code, msg)) = interrupt::report(&e, resumable) {
            eprintln!("{msg}");
            std::process::exit(code);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// `--data` shared by the commands that read Fashion-MNIST.
#[derive(clap::Args, Clone)]
pub struct DataArg {
    /// Directory with the Fashion-MNIST IDX .gz files.
    #[arg(long, default_value = squeeze::data::DEFAULT_DIR)]
    pub data: PathBuf,
}

/// The command that made the model in `dir`, as its log records it: distill.json,
/// train.json, or the report.json of `squeeze compress`.
pub fn made_by(dir: &std::path::Path) -> Option<String> {
    [
        "distill.json",
        "train.json",
        "report.json",
        "candidate.json",
    ]
    .iter()
    .find_map(|f| {
        let text = std::fs::read_to_string(dir.join(f)).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["command"].as_str().map(public_command)
    })
}

/// A recorded command line as a user types it: the program path it was run by (a build
/// directory, an absolute path) becomes `squeeze`.
pub fn public_command(cmd: &str) -> String {
    match cmd.split_once(' ') {
        Some((prog, rest)) if prog == "squeeze" || prog.ends_with("/squeeze") => {
            format!("squeeze {rest}")
        }
        None if cmd.ends_with("/squeeze") => "squeeze".into(),
        _ => cmd.to_string(),
    }
}

/// Writes JSON to `path` atomically, creating its directory.
pub fn write_json(path: &std::path::Path, v: &impl serde::Serialize) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec_pretty(v)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    squeeze::checkpoint::write_atomic(path, &bytes)?;
    Ok(())
}

/// A clap parser for a whole number within `field`'s documented range
/// ([`squeeze::limits`]).
pub fn count(field: &'static str) -> impl Fn(&str) -> Result<usize, String> + Clone {
    move |s| {
        let v: u64 = s
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a whole number"))?;
        squeeze::limits::check(field, v as f64).map_err(|e| format!("{s} is {e}"))?;
        usize::try_from(v).map_err(|e| e.to_string())
    }
}

/// A clap parser for a number within `field`'s documented range.
pub fn real(field: &'static str) -> impl Fn(&str) -> Result<f64, String> + Clone {
    move |s| {
        let v: f64 = s
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a number"))?;
        squeeze::limits::check(field, v).map_err(|e| format!("{s} is {e}"))?;
        Ok(v)
    }
}

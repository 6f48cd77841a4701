//! `squeeze demo`: the main job end to end with defaults, told one step per line. On
//! Fashion-MNIST, the committed zoo model (`zoo/vgg`, or a freshly trained benchmark CNN
//! with `--train`) goes through every image recipe; on STS-B, the pretrained
//! all-MiniLM-L6-v2 (fetched by `scripts/setup.sh`) is scored and pruned with SparseGPT.
//! A second image table prunes and shares the committed `zoo/mlp` (gradual magnitude
//! pruning to a CSR model; Deep Compression to a Huffman-coded file). Each workload ends in one
//! table whose models were measured together, speeds interleaved, with a line per row
//! saying what the recipe did; the tables go to `runs/demo/report.md` and `report.json`.
//! A third image table puts the committed distilled and compact students beside their
//! teachers (`zoo/vgg` and its KD and depthwise-separable students; the dense DenseNet-BC
//! and its CondenseNet), and the STS-B table adds the distilled 3-layer MiniLM student
//! when `scripts/distill-experiments.sh text` has made it. A fourth puts the committed
//! Network-Slimming result `zoo/vgg-slim` beside `zoo/vgg`, and the same slimmed model
//! quantized to static int8 here (no training); the STS-B table adds MiniLM with 30% of
//! its attention and FFN parameters pruned as whole heads and units. A fifth puts the
//! committed `zoo/vgg-lowrank` (per-layer SVD ranks chosen by `squeeze search` for a third
//! of the FLOPs, fine-tuned) beside `zoo/vgg`; the pruned table adds `zoo/mlp` factorized by
//! truncated SVD, and the STS-B table MiniLM with its encoder Linears factorized by whitened
//! SVD (no fine-tuning). A sixth puts the committed quantization-aware-trained vgg models
//! — 4-bit LSQ, ternary, binary, their layers materialized as int4 codes or packed levels
//! — beside `zoo/vgg` and its post-training 4-bit form made here.
//! It grows as compression techniques land.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use squeeze::eval::Metrics;
use squeeze::formats::load_any;
use squeeze::passes::{run_recipe, Recipe};
use squeeze::Model;

use crate::evaluate::{compare, table};
use crate::train::{self as train_cmd, TrainArgs, TrainOpts};
use crate::{write_json, DataArg};

#[derive(Args)]
pub struct DemoArgs {
    /// Working directory for the demo's models and report.
    #[arg(long, default_value = "runs/demo")]
    pub dir: PathBuf,
    /// Start from a freshly trained benchmark CNN instead of the committed zoo model.
    #[arg(long)]
    pub train: bool,
    /// Training epochs of the CNN with --train.
    #[arg(value_parser = crate::count("epochs"), long, default_value_t = 2)]
    pub epochs: usize,
    /// The committed image model the recipes start from.
    #[arg(long, default_value = "zoo/vgg")]
    pub image_model: PathBuf,
    /// The committed image model the pruning and sharing recipes start from.
    #[arg(long, default_value = "zoo/mlp")]
    pub prune_model: PathBuf,
    #[command(flatten)]
    pub data: DataArg,
    /// Pretrained sentence encoder evaluated on STS-B (skipped with a note if absent).
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    pub text_model: PathBuf,
    /// STS-B file for the text part.
    #[arg(long, default_value = crate::evaluate::STSB_DEV)]
    pub stsb: PathBuf,
    /// A distilled student of the text model, shown beside it when present.
    #[arg(long, default_value = "runs/minilm-3l")]
    pub text_student: PathBuf,
    /// Interleaved timing rounds per table.
    #[arg(value_parser = crate::count("rounds"), long, default_value_t = 5)]
    pub rounds: usize,
}

/// The image-model recipes the demo applies: (name, file).
const RECIPES: &[(&str, &str)] = &[
    ("fold-bn", "recipes/fold-bn.toml"),
    ("recalibrate-bn", "recipes/recalibrate-bn.toml"),
    ("int8-static", "recipes/vgg-int8-static.toml"),
];

/// The pruning and weight-sharing recipes, applied to the committed `--prune-model`.
const PRUNE_RECIPES: &[(&str, &str)] = &[
    ("mlp-agp-90", "recipes/mlp-agp-90.toml"),
    ("mlp-deep-compression", "recipes/mlp-deep-compression.toml"),
    ("mlp-svd-50", "recipes/mlp-svd-50-oneshot.toml"),
];

/// The text recipes, applied to the pretrained encoder.
const TEXT_RECIPES: &[(&str, &str)] = &[
    ("minilm-sparsegpt-50", "recipes/minilm-sparsegpt-50.toml"),
    ("minilm-int8-dynamic", "recipes/minilm-int8-dynamic.toml"),
    ("minilm-heads-ffn-30", "recipes/minilm-heads-ffn-30.toml"),
    ("minilm-whiten-30", "recipes/minilm-whiten-30.toml"),
];

/// The committed quantization-aware-trained vgg models (each made by its recipe, which
/// trains).
const QAT: [(&str, &str); 3] = [
    (
        "zoo/vgg-qat-int4",
        "4-bit weights and inputs, trained with LSQ",
    ),
    (
        "zoo/vgg-ternary",
        "ternary weights (TWN), 8-bit inputs, fine-tuned",
    ),
    (
        "zoo/vgg-binary",
        "binary weights (XNOR scaling), 8-bit inputs, fine-tuned",
    ),
];

/// The committed searched low-rank vgg (made by `squeeze search`, which fine-tunes).
const LOW_RANK: &str = "zoo/vgg-lowrank";

/// The committed slimmed vgg (made by `recipes/vgg-slimming.toml`, which trains) and the
/// recipe the demo applies to it (no training).
const SLIMMED: (&str, &str) = ("zoo/vgg-slim", "recipes/vgg-int8-static.toml");

/// The committed students and compact models after their teacher: (directory, what it
/// is).
const STUDENTS: &[(&str, &str)] = &[
    ("zoo/vgg", "the teacher"),
    (
        "zoo/vgg-kd",
        "a 4× smaller vgg distilled from zoo/vgg with soft targets",
    ),
    (
        "zoo/vgg-dwsep",
        "zoo/vgg with depthwise-separable convolutions, distilled from zoo/vgg",
    ),
    (
        "zoo/vgg-dwsep-quarter",
        "zoo/vgg with 4 of its 5 convolutions depthwise-separable (0.24 of its FLOPs), distilled",
    ),
];

/// The committed CondenseNet after its dense counterpart: a table of its own, so that its
/// ratios are against the DenseNet-BC it was condensed from.
const CONDENSED: &[(&str, &str)] = &[
    ("zoo/densenet-bc", "a DenseNet-BC, the dense counterpart"),
    (
        "zoo/condensenet",
        "that DenseNet-BC condensed (CondenseNet learned group convolution)",
    ),
];

/// Why a demo row may be no faster than its original (said on its line when it measures
/// slower): rows whose computation is the original's by construction.
const SAME_SPEED: &[(&str, &str)] = &[
    (
        "recalibrate-bn",
        "only the BatchNorm statistics change, so it computes what the original does and the \
         difference is timing noise",
    ),
    (
        "mlp-deep-compression",
        "shared weights are decoded to dense f32 when loaded: the computation is the \
         original's, the gain is the file",
    ),
    (
        "minilm-sparsegpt-50",
        "50% unstructured sparsity stays on the dense kernels (CSR is slower at this \
         sparsity): the computation is the original's",
    ),
    (
        "mlp-agp-90",
        "its layers are stored as CSR only where CSR measured faster on this CPU (see the \
         materialize record); dense layers with zeros compute what the original does",
    ),
];

/// One table row: the model's directory, what made it, and its measurements.
struct Row {
    dir: PathBuf,
    what: String,
    model: Model,
}

pub fn run(a: DemoArgs) -> Result<()> {
    let inputs = [
        ("--image-model", a.image_model.as_path()),
        ("--prune-model", a.prune_model.as_path()),
        ("--data", a.data.data.as_path()),
        ("--text-model", a.text_model.as_path()),
        ("--stsb", a.stsb.as_path()),
        ("--text-student", a.text_student.as_path()),
    ];
    // the demo rewrites its own directory in place, as training does
    let _lock = crate::outdir::claim_in_place(&a.dir, &inputs, true, true)
        .map_err(|e| anyhow::anyhow!("{}", e.to_string().replace("--out", "--dir")))?;
    // the steps `say` announces below, with the text part present
    let steps = 19 + RECIPES.len() + PRUNE_RECIPES.len() + TEXT_RECIPES.len();
    let mut step = 0;
    let mut say = |msg: String| {
        step += 1;
        eprintln!("[{step}/{steps}] {msg}");
    };
    let base = base_model(&a, &mut say)?;
    let mut rows = vec![Row {
        dir: base.clone(),
        what: "the starting model".into(),
        model: load_any(&base)?,
    }];
    apply_all(&a, &mut rows, RECIPES, &mut say)?;
    say(format!(
        "measuring the {} image models together ({} interleaved rounds)",
        rows.len(),
        a.rounds
    ));
    let image = measure(&rows, &a)?;
    let mut report = vec![("Fashion-MNIST", rows, image)];
    say(format!(
        "starting from the committed {}",
        a.prune_model.display()
    ));
    let mut pruned = vec![Row {
        dir: a.prune_model.clone(),
        what: "the starting model".into(),
        model: load_any(&a.prune_model)?,
    }];
    apply_all(&a, &mut pruned, PRUNE_RECIPES, &mut say)?;
    say(format!(
        "measuring the {} pruned image models together",
        pruned.len()
    ));
    let m = measure(&pruned, &a)?;
    report.push(("Fashion-MNIST, pruned and shared", pruned, m));
    let students = students_part(&mut say)?;
    say(format!(
        "measuring the {} students and teachers together",
        students.len()
    ));
    let m = measure(&students, &a)?;
    report.push(("Fashion-MNIST, distilled and compact students", students, m));
    say("the committed CondenseNet beside its dense DenseNet-BC".into());
    let condensed = CONDENSED
        .iter()
        .map(|(dir, what)| committed(Path::new(dir), what))
        .collect::<Result<Vec<_>>>()?;
    say("measuring the CondenseNet and its DenseNet-BC together".into());
    let m = measure(&condensed, &a)?;
    report.push(("Fashion-MNIST, CondenseNet", condensed, m));
    let slim = structured_part(&a, &mut say)?;
    say(format!(
        "measuring the {} slimmed and original models together",
        slim.len()
    ));
    let m = measure(&slim, &a)?;
    report.push(("Fashion-MNIST, structured pruning", slim, m));
    say(format!("the committed {LOW_RANK} beside zoo/vgg"));
    let low = vec![
        committed(Path::new("zoo/vgg"), "the original")?,
        committed(
            Path::new(LOW_RANK),
            "zoo/vgg factorized by truncated SVD, per-layer ranks searched for 33% of the FLOPs, fine-tuned",
        )?,
    ];
    say("measuring the low-rank and original models together".into());
    let m = measure(&low, &a)?;
    report.push(("Fashion-MNIST, low-rank factorization", low, m));
    let quant = quantized_part(&a, &mut say)?;
    say(format!(
        "measuring the {} quantized and original models together",
        quant.len()
    ));
    let m = measure(&quant, &a)?;
    report.push(("Fashion-MNIST, 4-bit, ternary and binary weights", quant, m));
    if let Some((rows, m)) = text_part(&a, &mut say)? {
        report.push(("STS-B", rows, m));
    }
    write_report(&a.dir, &report)
}

/// The model the image recipes start from: the committed zoo model, or with `--train` a
/// freshly trained benchmark CNN (reused if already trained).
fn base_model(a: &DemoArgs, say: &mut impl FnMut(String)) -> Result<PathBuf> {
    if !a.train {
        say(format!(
            "starting from the committed {}",
            a.image_model.display()
        ));
        return Ok(a.image_model.clone());
    }
    let base = a.dir.join("cnn");
    if base.join("model.json").exists() {
        say(format!("reusing the trained {}", base.display()));
        return Ok(base);
    }
    say(format!(
        "training the benchmark CNN for {} epochs into {}",
        a.epochs,
        base.display()
    ));
    train_cmd::run(TrainArgs {
        arch: "cnn".into(),
        out: base.clone(),
        opts: TrainOpts {
            epochs: Some(a.epochs),
            augment_pad: Some(0),
            resume: squeeze::train::saved_state(&base).is_some(),
            ..TrainOpts::defaults()
        },
        size: Default::default(),
        init: None,
        data: a.data.clone(),
        quiet: true,
    })?;
    Ok(base)
}

/// Applies each of `recipes` to the first row's model, adding a row per recipe.
fn apply_all(
    a: &DemoArgs,
    rows: &mut Vec<Row>,
    recipes: &[(&str, &str)],
    say: &mut impl FnMut(String),
) -> Result<()> {
    for (name, file) in recipes {
        say(format!("applying {file}"));
        let row = apply(a, &rows[0].model, name, file)?;
        rows.push(row);
    }
    Ok(())
}

/// Applies recipe `file` to `base`, saving the result under the demo directory.
fn apply(a: &DemoArgs, base: &Model, name: &str, file: &str) -> Result<Row> {
    let recipe = Recipe::load(Path::new(file))?;
    let dir = a.dir.join(name);
    let staged = crate::outdir::Staged::begin(&dir, &[], true)?;
    let mut ctx = recipe.context(&a.data.data, staged.work());
    // fine-tuning shows one labelled bar and one closing line per run
    squeeze::train::set_progress_label(Some(name.to_string()));
    let result = run_recipe(base.clone(), &recipe, &mut ctx);
    squeeze::train::set_progress_label(None);
    let (model, log) = result.with_context(|| format!("applying {file}"))?;
    squeeze::checkpoint::save(&model, staged.dir())?;
    staged.commit()?;
    let what: Vec<String> = log.iter().map(|r| r.label.clone()).collect();
    Ok(Row {
        dir,
        what: format!("{file}: {}", what.join("; ")),
        model,
    })
}

/// A row for the committed model in `dir`, described as `what` and by its command.
fn committed(dir: &Path, what: &str) -> Result<Row> {
    let model = load_any(dir).with_context(|| format!("loading {}", dir.display()))?;
    let what = match crate::made_by(dir) {
        Some(cmd) => format!("{what} (`{cmd}`)"),
        None => what.to_string(),
    };
    Ok(Row {
        dir: dir.to_path_buf(),
        what,
        model,
    })
}

/// The committed quantization-aware-trained vgg models (4-bit LSQ, ternary, binary)
/// beside `zoo/vgg` and its post-training 4-bit form, made here (no training).
fn quantized_part(a: &DemoArgs, say: &mut impl FnMut(String)) -> Result<Vec<Row>> {
    say("the committed 4-bit, ternary and binary vgg beside zoo/vgg".into());
    let base = committed(Path::new("zoo/vgg"), "the original")?;
    say("applying recipes/vgg-ptq-int4.toml".into());
    let ptq = apply(a, &base.model, "vgg-ptq-int4", "recipes/vgg-ptq-int4.toml")?;
    let mut rows = vec![base, ptq];
    for (dir, what) in QAT {
        rows.push(committed(Path::new(dir), what)?);
    }
    Ok(rows)
}

/// The committed students beside their teachers.
fn students_part(say: &mut impl FnMut(String)) -> Result<Vec<Row>> {
    say("the committed distilled and compact students with their teachers".into());
    STUDENTS
        .iter()
        .map(|(dir, what)| committed(Path::new(dir), what))
        .collect()
}

/// The original vgg, its committed Network-Slimming result, and that result in static int8.
fn structured_part(a: &DemoArgs, say: &mut impl FnMut(String)) -> Result<Vec<Row>> {
    let (slim_dir, int8) = SLIMMED;
    say(format!("the committed {slim_dir} beside zoo/vgg"));
    let mut rows = vec![
        committed(Path::new("zoo/vgg"), "the original")?,
        committed(
            Path::new(slim_dir),
            "zoo/vgg slimmed: L1 on BatchNorm scales, global |γ| threshold, fine-tuned",
        )?,
    ];
    say(format!("applying {int8} to {slim_dir}"));
    let q = apply(a, &rows[1].model, "vgg-slim-int8", int8)?;
    rows.push(q);
    Ok(rows)
}

/// Measures the rows together (quality, cost, interleaved speeds).
fn measure(rows: &[Row], a: &DemoArgs) -> Result<Vec<Metrics>> {
    let models: Vec<(&Path, &Model)> = rows.iter().map(|r| (r.dir.as_path(), &r.model)).collect();
    compare(&models, &a.data.data, &a.stsb, a.rounds)
}

/// The STS-B part: the pretrained encoder and its pruned form, quality and cost (None,
/// with a note, if the model was not fetched).
fn text_part(
    a: &DemoArgs,
    say: &mut impl FnMut(String),
) -> Result<Option<(Vec<Row>, Vec<Metrics>)>> {
    say("all-MiniLM-L6-v2 on STS-B dev".into());
    if !a.text_model.join("model.safetensors").is_file() {
        eprintln!(
            "      skipped: {} is missing (run scripts/fetch-minilm.sh)",
            a.text_model.display()
        );
        return Ok(None);
    }
    let mut rows = vec![Row {
        dir: a.text_model.clone(),
        what: "pretrained all-MiniLM-L6-v2, f32".into(),
        model: load_any(&a.text_model)?,
    }];
    apply_all(a, &mut rows, TEXT_RECIPES, say)?;
    say(format!(
        "the distilled student {}",
        a.text_student.display()
    ));
    if a.text_student.join("model.json").is_file() {
        rows.push(committed(
            &a.text_student,
            "a 3-layer student distilled from all-MiniLM-L6-v2",
        )?);
    } else {
        eprintln!(
            "      skipped: {} is missing (made by `bash scripts/distill-experiments.sh text`)",
            a.text_student.display()
        );
    }
    say(format!("measuring the {} text models together", rows.len()));
    let m = measure(&rows, a)?;
    Ok(Some((rows, m)))
}

/// What a row's line adds when it measured slower than its table's first row at batch 1.
fn slower_why(r: &Row, m: &Metrics, first: &Metrics) -> Option<String> {
    let ratio = m.latency_ms_b1? / first.latency_ms_b1?;
    if ratio <= 1.0 {
        return None;
    }
    let name = r.dir.file_name()?.to_str()?;
    let why = SAME_SPEED.iter().find(|(n, _)| *n == name).map_or(
        "not expected from its method: rerun `squeeze report` on the two to check it is not noise",
        |(_, w)| w,
    );
    Some(format!(
        " **Slower than the original at batch 1 ({ratio:.2}×)**: {why}."
    ))
}

/// Prints one table per workload (with a line per row saying what made it) and writes the
/// same to `dir/report.md` and `dir/report.json`, with the trade-off plots per workload
/// and one self-contained HTML page of tables and plots.
fn write_report(dir: &Path, report: &[(&str, Vec<Row>, Vec<Metrics>)]) -> Result<()> {
    let mut md = String::new();
    let mut json = Vec::new();
    for (workload, rows, metrics) in report {
        let named: Vec<(String, Metrics)> = rows
            .iter()
            .map(|r| r.dir.display().to_string())
            .zip(metrics.iter().cloned())
            .collect();
        md += &format!("## {workload}\n\n{}\n", table(&named));
        for (r, m) in rows.iter().zip(metrics) {
            let why = slower_why(r, m, &metrics[0]).unwrap_or_default();
            md += &format!("- `{}`: {}{why}\n", r.dir.display(), r.what);
        }
        md += "\n";
        for (r, m) in rows.iter().zip(metrics) {
            json.push(serde_json::json!({
                "workload": workload, "model": r.dir, "what": r.what, "metrics": m,
                "slower": slower_why(r, m, &metrics[0]),
            }));
        }
    }
    let tables: Vec<(&str, Vec<(String, Metrics)>)> = report
        .iter()
        .map(|(w, rows, ms)| {
            let named = rows
                .iter()
                .map(|r| r.dir.display().to_string())
                .zip(ms.iter().cloned());
            (*w, named.collect())
        })
        .collect();
    let plots = crate::demo_page::plots(dir, &tables);
    let plots = match plots {
        Ok(p) => p,
        Err(e) => {
            eprintln!("      plots skipped: {e:#}");
            Vec::new()
        }
    };
    for (title, stem) in &plots {
        md += &format!(
            "![{title}]({}.png)\n\n",
            stem.file_name().unwrap_or_default().to_string_lossy()
        );
    }
    println!("\n{md}");
    squeeze::checkpoint::write_atomic(&dir.join("report.md"), md.as_bytes())?;
    write_json(&dir.join("report.json"), &json)?;
    let html = crate::demo_page::html(&md, &plots)?;
    squeeze::checkpoint::write_atomic(&dir.join("report.html"), html.as_bytes())?;
    eprintln!(
        "wrote {} (and report.json, report.html, {} plots as SVG and PNG)",
        dir.join("report.md").display(),
        plots.len()
    );
    Ok(())
}

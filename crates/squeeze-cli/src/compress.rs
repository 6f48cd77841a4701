//! `squeeze compress`: applies a recipe to a model and writes the compressed model (via a
//! temporary directory renamed into place, never over the input) plus `report.json` with
//! before/after metrics and each pass's label. The recipe is a file (`--recipe`) or a
//! preset built into the binary (`--preset`, see [`crate::presets`]); `--max-drop` refuses
//! a result that loses more quality than allowed on held-out data ([`crate::guard`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use squeeze::checkpoint;
use squeeze::eval::{Measured, Metrics};
use squeeze::formats::load_any;
use squeeze::passes::{run_recipe_observed, Recipe};

use crate::evaluate::{compare, STSB_DEV};
use crate::guard::Guard;
use crate::outdir::Staged;
use crate::write_json;

#[derive(Args)]
pub struct CompressArgs {
    /// Input model directory (never modified): a squeeze checkpoint or a HF BERT directory.
    pub dir: PathBuf,
    /// TOML recipe: `[[passes]]` tables, each with a `type` (listed at the end of
    /// `--help`), plus optional `[calibration]` and `[finetune]`.
    #[arg(long, required_unless_present = "preset", conflicts_with = "preset")]
    pub recipe: Option<PathBuf>,
    /// A built-in recipe instead of --recipe: int8, int8-static, int4, qat-int4, sparse-50,
    /// 2of4, deep-compression, slim, lowrank (`squeeze recipes` describes each and what it
    /// measured).
    #[arg(long)]
    pub preset: Option<String>,
    /// Refuse to write a model that loses more than this many points of quality (accuracy
    /// in %, or STS-B Spearman ×100) on held-out data: Fashion-MNIST's validation images,
    /// or the last 1,500 STS-B training pairs for text encoders (never the test set).
    #[arg(long, value_parser = crate::real("max_drop"))]
    pub max_drop: Option<f64>,
    /// Output directory for the compressed model.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace OUT if it holds squeeze's output (a directory squeeze did not write is
    /// never replaced).
    #[arg(long)]
    pub force: bool,
    /// Interleaved timing rounds of the input and output models (0 skips timing).
    #[arg(value_parser = crate::count("rounds"), long, default_value_t = 5)]
    pub rounds: usize,
    /// Evaluation data: the Fashion-MNIST directory for image models, the STS-B file for
    /// text encoders (defaults as for `squeeze eval`).
    #[arg(long)]
    pub data: Option<PathBuf>,
}

pub fn run(a: CompressArgs) -> Result<()> {
    let mut inputs = vec![("model", a.dir.as_path())];
    if let Some(r) = &a.recipe {
        inputs.push(("--recipe", r.as_path()));
    }
    if let Some(d) = &a.data {
        inputs.push(("--data", d.as_path()));
    }
    let staged = Staged::begin(&a.out, &inputs, a.force)?;
    let model = load_any(&a.dir).with_context(|| format!("loading model {}", a.dir.display()))?;
    let text = model.graph.is_text();
    let (recipe_text, recipe_name) = match (&a.recipe, &a.preset) {
        (Some(r), _) => (
            std::fs::read_to_string(r)
                .with_context(|| format!("reading recipe {}", r.display()))?,
            r.display().to_string(),
        ),
        (None, Some(p)) => {
            let v = crate::presets::find(p, text)?;
            eprintln!("preset {p}: {}", v.file);
            (v.text.to_string(), format!("preset {p} ({})", v.file))
        }
        (None, None) => anyhow::bail!("give --recipe FILE or --preset NAME"),
    };
    let recipe = Recipe::parse(&recipe_text, Path::new(&recipe_name))?;
    let (images, stsb_file) = match (&a.data, text) {
        (Some(d), false) => (d.clone(), PathBuf::from(STSB_DEV)),
        (Some(d), true) => (PathBuf::from(squeeze::data::DEFAULT_DIR), d.clone()),
        (None, _) => (
            PathBuf::from(squeeze::data::DEFAULT_DIR),
            PathBuf::from(STSB_DEV),
        ),
    };
    // fine-tuning checkpoints of the passes go to a scratch directory beside --out,
    // removed afterwards
    let mut guard = match a.max_drop {
        Some(d) => Some(Guard::new(&model, d, &images)?),
        None => None,
    };
    let mut ctx = recipe.context(&images, staged.work());
    let result = run_recipe_observed(model.clone(), &recipe, &mut ctx, &mut |rec, m| {
        guard.as_mut().map_or(Ok(()), |g| g.observe(rec, m))
    });
    let _ = std::fs::remove_dir_all(staged.work());
    let (compressed, passes) = result.with_context(|| format!("applying {recipe_name}"))?;
    for p in &passes {
        eprintln!("{}: {}", p.pass, p.label);
    }
    if let Some(g) = &guard {
        g.verdict(&recipe_name, &recipe_text, a.recipe.as_deref())?;
    }
    let tmp = staged.dir().to_path_buf();
    checkpoint::save(&compressed, &tmp)?;
    // both models as their files hold them, read as any user's later run reads them and
    // both after the passes, so that they are timed alike: the written model is what was
    // delivered (not the tensors the passes left), and the original is read afresh rather
    // than kept from before the passes (or from --max-drop's evaluation of it)
    drop((compressed, model));
    let read = |dir: &Path| {
        load_any(dir).with_context(|| format!("reading {} back for the measurement", dir.display()))
    };
    let (original, delivered) = (read(&a.dir)?, read(&tmp)?);
    eprintln!(
        "measuring both models (speeds interleaved over {} rounds)",
        a.rounds
    );
    let pair = [(a.dir.as_path(), &original), (tmp.as_path(), &delivered)];
    let [before, mut after]: [Metrics; 2] = compare(&pair, &images, &stsb_file, a.rounds)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("two models measured, not two results"))?;
    let report = serde_json::json!({
        "input": a.dir, "recipe": recipe, "passes": passes, "before": before, "after": after,
        "command": crate::invocation::invocation(),
        "max_drop": guard.as_ref().map(Guard::summary),
    });
    write_json(&tmp.join("report.json"), &report)?;
    after.measured = Some(Measured::now());
    write_json(&tmp.join("metrics.json"), &after)?;
    staged.commit()?;
    println!(
        "{}",
        crate::evaluate::table(&[
            (a.dir.display().to_string(), before),
            (a.out.display().to_string(), after)
        ])
    );
    Ok(())
}

//! `squeeze compress`: applies a recipe to a model and writes the compressed model (via a
//! temporary directory renamed into place, never over the input) plus `report.json` with
//! before/after metrics and each pass's label.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use squeeze::checkpoint;
use squeeze::eval::{Measured, Metrics};
use squeeze::formats::load_any;
use squeeze::passes::{run_recipe, Recipe};

use crate::evaluate::{compare, STSB_DEV};
use crate::outdir::Staged;
use crate::write_json;

#[derive(Args)]
pub struct CompressArgs {
    /// Input model directory (never modified): a squeeze checkpoint or a HF BERT directory.
    pub dir: PathBuf,
    /// TOML recipe: `[[passes]]` tables, each with a `type` (listed at the end of
    /// `--help`), plus optional `[calibration]` and `[finetune]`.
    #[arg(long)]
    pub recipe: PathBuf,
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
    let mut inputs = vec![("model", a.dir.as_path()), ("--recipe", a.recipe.as_path())];
    if let Some(d) = &a.data {
        inputs.push(("--data", d.as_path()));
    }
    let staged = Staged::begin(&a.out, &inputs, a.force)?;
    let recipe = Recipe::load(&a.recipe)?;
    let model = load_any(&a.dir).with_context(|| format!("loading model {}", a.dir.display()))?;
    let text = model.graph.is_text();
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
    let mut ctx = recipe.context(&images, staged.work());
    let result = run_recipe(model.clone(), &recipe, &mut ctx);
    let _ = std::fs::remove_dir_all(staged.work());
    let (compressed, passes) =
        result.with_context(|| format!("applying recipe {}", a.recipe.display()))?;
    for p in &passes {
        eprintln!("{}: {}", p.pass, p.label);
    }
    let tmp = staged.dir().to_path_buf();
    checkpoint::save(&compressed, &tmp)?;
    eprintln!(
        "measuring both models (speeds interleaved over {} rounds)",
        a.rounds
    );
    let pair = [(a.dir.as_path(), &model), (tmp.as_path(), &compressed)];
    let [before, mut after]: [Metrics; 2] = compare(&pair, &images, &stsb_file, a.rounds)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("two models measured, not two results"))?;
    let report = serde_json::json!({
        "input": a.dir, "recipe": recipe, "passes": passes, "before": before, "after": after,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
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

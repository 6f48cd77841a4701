//! `squeeze compress`: applies a recipe to a model and writes the compressed model (via a
//! temporary directory renamed into place, never over the input) plus `report.json` with
//! before/after metrics and each pass's label.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use squeeze::checkpoint;
use squeeze::data::FashionMnist;
use squeeze::eval::evaluate;
use squeeze::passes::{run_recipe, Recipe};

use crate::{write_json, DataArg};

#[derive(Args)]
pub struct CompressArgs {
    /// Input model directory (never modified).
    pub dir: PathBuf,
    /// TOML recipe: `[[passes]]` tables, each with a `type` (e.g. fold_batch_norm).
    #[arg(long)]
    pub recipe: PathBuf,
    /// Output directory for the compressed model.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace OUT if it already holds a model.
    #[arg(long)]
    pub force: bool,
    /// Timed repetitions for the speed metrics (0 skips timing).
    #[arg(long, default_value_t = 10)]
    pub speed_runs: usize,
    #[command(flatten)]
    pub data: DataArg,
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

pub fn run(a: CompressArgs) -> Result<()> {
    if same_dir(&a.dir, &a.out) {
        bail!(
            "--out {} is the input model's directory; squeeze never overwrites its input",
            a.out.display()
        );
    }
    if a.out.join(checkpoint::GRAPH_FILE).exists() && !a.force {
        bail!(
            "{} already holds a model; pass --force to replace it",
            a.out.display()
        );
    }
    let recipe = Recipe::load(&a.recipe)?;
    let model =
        checkpoint::load(&a.dir).with_context(|| format!("loading model {}", a.dir.display()))?;
    let data = FashionMnist::load(&a.data.data)?;
    let before = evaluate(&a.dir, &model, Some(&data.test), a.speed_runs)?;
    let (compressed, passes) = run_recipe(model, &recipe)?;
    for p in &passes {
        eprintln!("{}: {}", p.pass, p.label);
    }
    let tmp = tmp_sibling(&a.out)?;
    checkpoint::save(&compressed, &tmp)?;
    let after = evaluate(&tmp, &compressed, Some(&data.test), a.speed_runs)?;
    let report = serde_json::json!({
        "input": a.dir, "recipe": recipe, "passes": passes, "before": before, "after": after,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
    });
    write_json(&tmp.join("report.json"), &report)?;
    write_json(&tmp.join("metrics.json"), &after)?;
    if a.out.exists() {
        std::fs::remove_dir_all(&a.out)
            .with_context(|| format!("removing old {}", a.out.display()))?;
    }
    std::fs::rename(&tmp, &a.out)
        .with_context(|| format!("moving result into {}", a.out.display()))?;
    println!(
        "{}",
        crate::evaluate::table(&[
            (a.dir.display().to_string(), before),
            (a.out.display().to_string(), after)
        ])
    );
    Ok(())
}

fn tmp_sibling(out: &Path) -> Result<PathBuf> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "out".into());
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    Ok(tmp)
}

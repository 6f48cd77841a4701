//! `squeeze demo`: the main job end to end with defaults — on Fashion-MNIST, train the
//! benchmark CNN briefly (or reuse the cached run), apply every recipe that exists, print
//! the comparison table; on STS-B, evaluate the pretrained all-MiniLM-L6-v2 (fetched by
//! `scripts/setup.sh`). It grows as compression techniques land.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::compress::{self, CompressArgs};
use crate::evaluate::{eval_dir, metrics_of, table, Task};
use crate::train::{self as train_cmd, TrainArgs};
use crate::DataArg;

#[derive(Args)]
pub struct DemoArgs {
    /// Working directory for the demo's models.
    #[arg(long, default_value = "runs/demo")]
    pub dir: PathBuf,
    /// Training epochs of the base model.
    #[arg(long, default_value_t = 2)]
    pub epochs: usize,
    #[command(flatten)]
    pub data: DataArg,
    /// Pretrained sentence encoder evaluated on STS-B (skipped with a note if absent).
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    pub text_model: PathBuf,
    /// STS-B file for the text part.
    #[arg(long, default_value = crate::evaluate::STSB_DEV)]
    pub stsb: PathBuf,
}

/// The image-model recipes the demo applies: (name, file).
const RECIPES: &[(&str, &str)] = &[
    ("fold-bn", "recipes/fold-bn.toml"),
    ("recalibrate-bn", "recipes/recalibrate-bn.toml"),
];

pub fn run(a: DemoArgs) -> Result<()> {
    let base = a.dir.join("cnn");
    if base.join("model.json").exists() {
        eprintln!("reusing trained model {}", base.display());
    } else {
        eprintln!("training the base model into {}", base.display());
        train_cmd::run(TrainArgs {
            arch: "cnn".into(),
            out: base.clone(),
            epochs: Some(a.epochs),
            seed: 0,
            batch_size: 128,
            lr: None,
            optimizer: "sgd".into(),
            weight_decay: 5e-4,
            schedule: "cosine".into(),
            augment_pad: Some(0),
            widths: None,
            depth: None,
            init: None,
            limit_train: None,
            resume: base.join("checkpoint/state.json").exists(),
            force: false,
            data: a.data.clone(),
        })?;
    }
    let mut rows = vec![(
        "cnn (trained)".to_string(),
        metrics_of(&base, &a.data.data, false)?,
    )];
    for (name, recipe) in RECIPES {
        let out = a.dir.join(format!("cnn-{name}"));
        compress::run(CompressArgs {
            dir: base.clone(),
            recipe: recipe.into(),
            out: out.clone(),
            force: true,
            speed_runs: 10,
            data: Some(a.data.data.clone()),
        })?;
        rows.push((
            format!("cnn + {name}"),
            metrics_of(&out, &a.data.data, false)?,
        ));
    }
    println!("\n{}", table(&rows));
    text_part(&a)
}

/// The STS-B part: the pretrained encoder's quality and cost.
fn text_part(a: &DemoArgs) -> Result<()> {
    if !a.text_model.join("model.safetensors").is_file() {
        eprintln!(
            "skipping the text part: {} is missing (run scripts/fetch-minilm.sh)",
            a.text_model.display()
        );
        return Ok(());
    }
    eprintln!(
        "evaluating {} on {}",
        a.text_model.display(),
        a.stsb.display()
    );
    let m = eval_dir(&a.text_model, Task::Stsb, Some(&a.stsb), 10)?;
    println!("{}", table(&[("all-MiniLM-L6-v2 (f32)".to_string(), m)]));
    Ok(())
}

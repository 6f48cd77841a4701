//! `squeeze train`: builds a zoo architecture (or starts from a saved model with `--init`),
//! trains it with per-arch defaults that every flag can override, checkpoints each epoch,
//! and saves the final model with its test metrics (`metrics.json`) and training log
//! (`train.json`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use squeeze::data::FashionMnist;
use squeeze::train::{self, NoHooks, OptimizerConfig, Schedule, TrainConfig};
use squeeze::zoo::{self, ZooOpts};

use crate::{write_json, DataArg};

#[derive(Args)]
pub struct TrainArgs {
    /// Architecture: mlp, lenet5, vgg, resnet, densenet, densenet-bc, cnn.
    #[arg(long)]
    pub arch: String,
    /// Output directory (model, checkpoints, metrics).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub size: SizeArgs,
    /// Start from the model saved in DIR (fine-tuning) instead of fresh weights; its
    /// architecture must be --arch. DIR itself is never written.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["widths", "depth"])]
    pub init: Option<PathBuf>,
    #[command(flatten)]
    pub opts: TrainOpts,
    #[command(flatten)]
    pub data: DataArg,
    /// Callers inside squeeze (the demo) that print their own summary.
    #[arg(skip)]
    pub quiet: bool,
}

/// The size of a fresh zoo model (`squeeze train`, and a zoo student of `squeeze distill`).
#[derive(Args, Clone, Default)]
pub struct SizeArgs {
    /// Comma-separated widths (see the zoo docs; vgg uses 0 for a pooling layer).
    #[arg(value_parser = crate::count("widths"), long, value_delimiter = ',')]
    pub widths: Option<Vec<usize>>,
    /// resnet: blocks per stage (3 = ResNet-20); densenet, densenet-bc: layers per block.
    #[arg(value_parser = crate::count("depth"), long)]
    pub depth: Option<usize>,
}

impl SizeArgs {
    pub fn zoo(&self) -> ZooOpts {
        ZooOpts {
            widths: self.widths.clone(),
            depth: self.depth,
        }
    }
    pub fn is_set(&self) -> bool {
        self.widths.is_some() || self.depth.is_some()
    }
}

/// The training options `squeeze train` and `squeeze distill` share.
#[derive(Args, Clone)]
pub struct TrainOpts {
    /// Epochs (default per arch: mlp/lenet5 20, others 30).
    #[arg(value_parser = crate::count("epochs"), long)]
    pub epochs: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(value_parser = crate::count("batch_size"), long, default_value_t = 128)]
    pub batch_size: usize,
    /// Base learning rate (default: 0.05 for sgd, 0.001 for adamw).
    #[arg(value_parser = crate::real("lr"), long)]
    pub lr: Option<f64>,
    /// Optimizer: sgd (momentum 0.9, Nesterov) or adamw.
    #[arg(long, default_value = "sgd")]
    pub optimizer: String,
    #[arg(value_parser = crate::real("weight_decay"), long, default_value_t = 5e-4)]
    pub weight_decay: f64,
    /// Schedule: cosine, step (×0.1 every third of the run) or constant; 1 warm-up epoch.
    #[arg(long, default_value = "cosine")]
    pub schedule: String,
    /// Random-crop padding in pixels, with horizontal flips (0 turns augmentation off;
    /// default 2, 0 for mlp).
    #[arg(value_parser = crate::count("augment_pad"), long)]
    pub augment_pad: Option<usize>,
    /// Train on the first N images only (quick runs).
    #[arg(value_parser = crate::count("limit_train"), long)]
    pub limit_train: Option<usize>,
    /// Continue from OUT/checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Replace a finished model already in OUT (only a directory squeeze wrote).
    #[arg(long)]
    pub force: bool,
}

impl TrainOpts {
    /// Defaults of the options as `squeeze train` has them.
    pub fn defaults() -> Self {
        TrainOpts {
            epochs: None,
            seed: 0,
            batch_size: 128,
            lr: None,
            optimizer: "sgd".into(),
            weight_decay: 5e-4,
            schedule: "cosine".into(),
            augment_pad: None,
            limit_train: None,
            resume: false,
            force: false,
        }
    }

    /// Validates, locks and marks `out` for training in place (see
    /// [`crate::outdir::claim_in_place`]); the lock is held until the result is dropped.
    pub fn claim_out(
        &self,
        out: &std::path::Path,
        inputs: &[(&str, &std::path::Path)],
    ) -> Result<crate::outdir::Lock> {
        crate::outdir::claim_in_place(out, inputs, self.force, self.resume)
    }
}

/// The training configuration of `a` for a model of architecture `arch`.
pub fn config(a: &TrainOpts, arch: &str) -> Result<TrainConfig> {
    let epochs = a.epochs.unwrap_or(if matches!(arch, "mlp" | "lenet5") {
        20
    } else {
        30
    });
    let optimizer = match a.optimizer.as_str() {
        "sgd" => OptimizerConfig::Sgd {
            lr: a.lr.unwrap_or(0.05),
            momentum: 0.9,
            weight_decay: a.weight_decay,
            nesterov: true,
        },
        "adamw" => OptimizerConfig::Adamw {
            lr: a.lr.unwrap_or(1e-3),
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: a.weight_decay,
        },
        o => bail!("--optimizer: unknown optimizer `{o}` (expected sgd or adamw)"),
    };
    let schedule = match a.schedule.as_str() {
        "cosine" => Schedule::Cosine { warmup_epochs: 1.0 },
        "step" => Schedule::Step {
            warmup_epochs: 1.0,
            every_epochs: (epochs / 3).max(1),
            gamma: 0.1,
        },
        "constant" => Schedule::Constant { warmup_epochs: 1.0 },
        s => bail!("--schedule: unknown schedule `{s}` (expected cosine, step or constant)"),
    };
    if a.batch_size == 0 || epochs == 0 {
        bail!("--batch-size and --epochs must be positive");
    }
    let cfg = TrainConfig {
        epochs,
        batch_size: a.batch_size,
        optimizer,
        schedule,
        seed: a.seed,
        augment_pad: a.augment_pad.unwrap_or(if arch == "mlp" { 0 } else { 2 }),
        limit_train: a.limit_train,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Fresh zoo weights, or the model of `--init` after checking it is a model of `--arch`.
fn initial_model(a: &TrainArgs, opts: &ZooOpts) -> Result<squeeze::Model> {
    let Some(dir) = &a.init else {
        return Ok(zoo::build(&a.arch, opts, a.opts.seed)?);
    };
    let model = squeeze::checkpoint::load(dir)
        .with_context(|| format!("--init: loading {}", dir.display()))?;
    if model.graph.arch != a.arch || model.graph.is_text() {
        bail!(
            "--init {} holds a `{}` model, not --arch {}",
            dir.display(),
            model.graph.arch,
            a.arch
        );
    }
    Ok(model)
}

/// `--resume` on a run that holds no checkpoint is an error saying how to start; on a
/// finished run it says so and does nothing (true).
pub fn finished_or_absent(out: &std::path::Path, epochs: usize) -> Result<bool> {
    // a torn checkpoint is an error of its own (recover names the file)
    let Some(state) = train::recover(out)? else {
        bail!(
            "--resume: {} holds no checkpoint to continue (the run never started, or was \
             killed before its first checkpoint): run the same command without --resume to \
             start it",
            out.display()
        );
    };
    // finished, and its model written (a run killed between the two trains zero epochs
    // and writes it)
    let written = out.join(squeeze::checkpoint::GRAPH_FILE).is_file();
    if state.epochs_done >= epochs && state.partial.is_none() && written {
        eprintln!(
            "{}: the run is finished ({} of {epochs} epochs); nothing to resume. To train \
             longer, raise --epochs with --resume; to start a new run from it, --init {}",
            out.display(),
            state.epochs_done,
            out.display()
        );
        return Ok(true);
    }
    Ok(false)
}

pub fn run(a: TrainArgs) -> Result<()> {
    let cfg = config(&a.opts, &a.arch)?;
    let mut inputs = vec![("--data", a.data.data.as_path())];
    if let Some(i) = &a.init {
        inputs.push(("--init", i.as_path()));
    }
    let _lock = a.opts.claim_out(&a.out, &inputs)?;
    if a.opts.resume && finished_or_absent(&a.out, cfg.epochs)? {
        return Ok(());
    }
    let opts = a.size.zoo();
    let mut model = initial_model(&a, &opts)?;
    let data = FashionMnist::load(&a.data.data)?;
    eprintln!(
        "training {} ({} params) for {} epochs on {} images",
        a.arch,
        squeeze::eval::static_cost(&model)?.params,
        cfg.epochs,
        cfg.limit_train
            .unwrap_or(data.train.len())
            .min(data.train.len())
    );
    let history = train::train(
        &mut model,
        &data.train,
        &data.valid,
        &cfg,
        &a.out,
        a.opts.resume,
        &mut NoHooks,
    )
    .with_context(|| format!("training into {}", a.out.display()))?;
    squeeze::checkpoint::save(&model, &a.out)?;
    let mut metrics = squeeze::eval::evaluate(&a.out, &model, Some(&data.test), 5)?;
    metrics.measured = Some(squeeze::eval::Measured::now());
    let command = crate::invocation::invocation();
    write_json(
        &a.out.join("train.json"),
        &serde_json::json!({
            "config": cfg,
            "zoo": opts,
            "init": a.init,
            "history": history,
            "command": command
        }),
    )?;
    write_json(&a.out.join("metrics.json"), &metrics)?;
    if !a.quiet {
        println!("{}", serde_json::to_string_pretty(&metrics)?);
    }
    Ok(())
}

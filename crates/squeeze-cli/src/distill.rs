//! `squeeze distill`: trains a student classifier from a teacher on Fashion-MNIST with
//! Hinton's soft targets and, optionally, FitNets hints (`--hint STUDENT=TEACHER`, joint
//! with the soft targets). The student is a zoo architecture (with `--widths`/`--depth`)
//! or a saved model directory. Checkpoints each epoch (`--resume` continues) and writes
//! the student, its test metrics (`metrics.json`) and the run's log (`distill.json`).
//! A sentence-encoder teacher takes the text path (`distill_text.rs`), chosen in `main`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use squeeze::checkpoint::{self, Model};
use squeeze::data::FashionMnist;
use squeeze::distill::{self, Distill, HintSpec, SoftTargets};
use squeeze::formats::load_any;
use squeeze::graph::infer_shapes;
use squeeze::train::{self, NoHooks, Run, TrainConfig};
use squeeze::zoo;

use crate::train::{config, SizeArgs, TrainOpts};
use crate::{write_json, DataArg};

#[derive(Args)]
pub struct DistillArgs {
    /// The trained teacher's model directory (never written).
    #[arg(long, value_name = "DIR")]
    pub teacher: PathBuf,
    /// The student: a zoo architecture (mlp, lenet5, vgg, resnet, densenet, densenet-bc, cnn; sized by
    /// --widths/--depth) or a saved model directory.
    #[arg(long, value_name = "ARCH|DIR")]
    pub student: String,
    /// Output directory (student, checkpoints, metrics).
    #[arg(long)]
    pub out: PathBuf,
    /// The size of a zoo student (as `squeeze train`'s).
    #[command(flatten)]
    pub size: SizeArgs,
    /// Softmax temperature T of the soft targets (> 0).
    #[arg(value_parser = crate::real("temperature"), long, default_value_t = 4.0)]
    pub temperature: f64,
    /// Weight α of the soft-target term, in [0, 1]; the labels' cross-entropy gets 1 − α.
    #[arg(value_parser = crate::real("alpha"), long, default_value_t = 0.9)]
    pub alpha: f64,
    /// A FitNets hint STUDENT_NODE=TEACHER_NODE (repeatable): a learned 1×1 convolution
    /// (or linear layer) maps the student node's output onto the teacher node's, and their
    /// mean squared difference joins the loss.
    #[arg(long = "hint", value_name = "S=T")]
    pub hints: Vec<String>,
    /// Weight of each hint term.
    #[arg(value_parser = crate::real("hint_weight"), long, default_value_t = 1.0)]
    pub hint_weight: f64,
    /// Stage-wise FitNets: first train this many epochs on the hints alone (the student up
    /// to its hint nodes, and the regressors), then --epochs on the soft targets alone.
    /// 0 (default): hints and soft targets jointly.
    #[arg(value_parser = crate::count("hint_epochs"), long, default_value_t = 0, requires = "hints")]
    pub hint_epochs: usize,
    /// Text teachers: the sentences to distil on (one per line, or both sentences of
    /// every STS-B pair of a .csv/.tsv); never STS-B dev or test. Repeat it to distil on
    /// several files, in order (the last 500 sentences are held out for validation).
    #[arg(long, default_value = "data/stsb/sts-train.csv")]
    pub sentences: Vec<PathBuf>,
    /// Text teachers: how the student's sentence embedding is compared with the
    /// teacher's: cosine (1 − cos) or mse.
    #[arg(long, default_value = "cosine")]
    pub embedding_loss: String,
    /// Text teachers: the STS-B pairs the finished student is scored on.
    #[arg(long, default_value = "data/stsb/sts-dev.csv")]
    pub eval_pairs: PathBuf,
    #[command(flatten)]
    pub opts: TrainOpts,
    #[command(flatten)]
    pub data: DataArg,
}

/// The student: a saved model when `spec` is a model directory, else a fresh zoo model.
pub(crate) fn student(a: &DistillArgs) -> Result<Model> {
    let dir = Path::new(&a.student);
    if dir.is_dir() {
        if a.size.is_set() {
            bail!(
                "--widths/--depth size a zoo student, not the saved model {}",
                dir.display()
            );
        }
        return load_any(dir).with_context(|| format!("--student: loading {}", dir.display()));
    }
    if !zoo::ARCHS.contains(&a.student.as_str()) {
        bail!(
            "--student `{}` is neither a model directory nor a zoo architecture ({})",
            a.student,
            zoo::ARCHS.join(", ")
        );
    }
    Ok(zoo::build(&a.student, &a.size.zoo(), a.opts.seed)?)
}

/// Teacher and student read the same images and predict the same classes.
fn check_pair(teacher: &Model, student: &Model) -> Result<()> {
    if teacher.graph.is_text() || student.graph.is_text() {
        bail!("distill trains image classifiers; text encoders are not supported here");
    }
    if teacher.graph.input_shape != student.graph.input_shape {
        bail!(
            "the teacher reads {:?} inputs, the student {:?}",
            teacher.graph.input_shape,
            student.graph.input_shape
        );
    }
    let out =
        |m: &Model| -> Result<Vec<usize>> { Ok(infer_shapes(&m.graph)?[&m.graph.output].clone()) };
    let (t, s) = (out(teacher)?, out(student)?);
    if t != s {
        bail!("the teacher outputs {t:?} per image, the student {s:?}");
    }
    Ok(())
}

/// Where stage-wise FitNets training checkpoints its hint stage, inside `--out`.
const HINT_STAGE: &str = "hints-stage";

/// Checks the arguments and loads the teacher (before any work): `main` then runs the
/// image path ([`run_images`]) or, for a sentence-encoder teacher, the text path.
pub fn prepare(a: &DistillArgs) -> Result<(Model, crate::outdir::Lock)> {
    let soft = SoftTargets {
        temperature: a.temperature,
        alpha: a.alpha,
    };
    soft.validate().context("--temperature / --alpha")?;
    let mut inputs = vec![
        ("--teacher", a.teacher.as_path()),
        ("--student", Path::new(&a.student)),
        ("--data", a.data.data.as_path()),
        ("--eval-pairs", a.eval_pairs.as_path()),
    ];
    inputs.extend(a.sentences.iter().map(|s| ("--sentences", s.as_path())));
    let lock = a.opts.claim_out(&a.out, &inputs)?;
    let saved = |d: &Path| train::saved_state(d).is_some();
    if a.opts.resume && !saved(&a.out) && !saved(&a.out.join(HINT_STAGE)) {
        bail!(
            "--resume: {} holds no checkpoint to continue (the run never started, or was \
             killed before its first checkpoint): run the same command without --resume to \
             start it",
            a.out.display()
        );
    }
    let teacher = load_any(&a.teacher)
        .with_context(|| format!("--teacher: loading {}", a.teacher.display()))?;
    Ok((teacher, lock))
}

/// Distills an image teacher into the student (soft targets, then FitNets hints).
pub fn run_images(a: DistillArgs, teacher: Model) -> Result<()> {
    let soft = SoftTargets {
        temperature: a.temperature,
        alpha: a.alpha,
    };
    let mut model = student(&a)?;
    check_pair(&teacher, &model)?;
    let specs = a
        .hints
        .iter()
        .map(|h| HintSpec::parse(h, a.hint_weight))
        .collect::<squeeze::Result<Vec<_>>>()
        .context("--hint")?;
    let hints =
        distill::add_regressors(&mut model, &teacher, &specs, a.opts.seed).context("--hint")?;
    let cfg = config(&a.opts, &model.graph.arch)?;
    let data = FashionMnist::load(&a.data.data)?;
    let (tp, sp) = (
        squeeze::eval::static_cost(&teacher)?.params,
        squeeze::eval::static_cost(&model)?.params,
    );
    eprintln!(
        "distilling {} ({tp} params) into {} ({sp} params with {} hint regressors) for {} epochs, T = {}, α = {}",
        a.teacher.display(),
        a.student,
        hints.len(),
        cfg.epochs,
        soft.temperature,
        soft.alpha
    );
    let train = |model: &mut Model, objective: &Distill, cfg: &TrainConfig, out: &Path| {
        let run = Run {
            train: &data.train,
            valid: &data.valid,
            objective,
            cfg,
            out,
            // a stage resumes from its own checkpoint once it has one
            resume: a.opts.resume && train::saved_state(out).is_some(),
        };
        train::fit(model, &run, &mut NoHooks)
            .with_context(|| format!("distilling into {}", out.display()))
    };
    let mut history = Vec::new();
    let mut soft_hints = hints.clone();
    if a.hint_epochs > 0 {
        let stage1 = a.out.join(HINT_STAGE);
        let cfg1 = TrainConfig {
            epochs: a.hint_epochs,
            ..cfg.clone()
        };
        let hints_only = Distill {
            teacher: &teacher,
            soft: None,
            hints: hints.clone(),
        };
        // a finished hint stage is loaded (its log with it), not run again
        match train::saved_state(&stage1).filter(|s| s.epochs_done >= a.hint_epochs) {
            Some(done) => {
                model = checkpoint::load(&train::checkpoint_dir(&stage1))?;
                history.extend(done.history);
            }
            None => history.extend(train(&mut model, &hints_only, &cfg1, &stage1)?),
        }
        distill::strip_regressors(&mut model, &hints)?;
        soft_hints.clear();
    }
    let objective = Distill {
        teacher: &teacher,
        soft: Some(soft),
        hints: soft_hints.clone(),
    };
    history.extend(train(&mut model, &objective, &cfg, &a.out)?);
    distill::strip_regressors(&mut model, &soft_hints)?;
    checkpoint::save(&model, &a.out)?;
    let metrics = squeeze::eval::evaluate(&a.out, &model, Some(&data.test), 5)?;
    write_outputs(
        &a.out,
        metrics,
        serde_json::json!({
            "teacher": a.teacher,
            "student": a.student,
            "zoo": a.size.zoo(),
            "soft_targets": soft,
            "hints": a.hints,
            "hint_weight": a.hint_weight,
            "hint_epochs": a.hint_epochs,
            "config": cfg,
            "history": history,
        }),
    )
}

/// Writes a distilled student's run log (`distill.json`, with the command line added) and
/// its metrics (`metrics.json`, stamped with when and where they were measured), and
/// prints the metrics.
pub(crate) fn write_outputs(
    out: &Path,
    mut metrics: squeeze::eval::Metrics,
    mut log: serde_json::Value,
) -> Result<()> {
    metrics.measured = Some(squeeze::eval::Measured::now());
    log["command"] = crate::invocation::invocation().into();
    write_json(&out.join("distill.json"), &log)?;
    write_json(&out.join("metrics.json"), &metrics)?;
    println!("{}", serde_json::to_string_pretty(&metrics)?);
    Ok(())
}

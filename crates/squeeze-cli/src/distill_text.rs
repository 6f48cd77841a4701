//! `squeeze distill` for sentence encoders (DistilBERT-style, Sanh et al. 2019; the
//! sentence-embedding objective of Reimers & Gurevych 2020): the student — a saved
//! encoder, e.g. the teacher with every other layer dropped (`drop_layers`) — learns to
//! reproduce the teacher's sentence embeddings on unlabelled sentences. The teacher embeds
//! every sentence once, before training (text needs no augmentation), so an epoch costs
//! only the student's steps. Checkpoints each epoch (`--resume` continues); the finished
//! student is scored on STS-B pairs (`metrics.json`), and `distill.json` records the run
//! with the distillation's wall time.

use anyhow::{bail, Context, Result};
use squeeze::checkpoint::{self, Model};
use squeeze::passes::{sentence_set, TEXT_VALID};
use squeeze::text::stsb;
use squeeze::train::{self, EmbeddingLoss, EmbeddingTarget, NoHooks, Run};

use crate::distill::{student, write_outputs, DistillArgs};
use crate::train::config;

fn embedding_loss(name: &str) -> Result<EmbeddingLoss> {
    Ok(match name {
        "cosine" => EmbeddingLoss::Cosine,
        "mse" => EmbeddingLoss::Mse,
        o => bail!("--embedding-loss: unknown loss `{o}` (expected cosine or mse)"),
    })
}

pub fn run(a: &DistillArgs, teacher: &Model) -> Result<()> {
    let mut model = student(a)?;
    if !model.graph.is_text() {
        bail!("the teacher is a sentence encoder; --student must be one too (a saved encoder directory)");
    }
    if !a.hints.is_empty() {
        bail!("--hint: hints are for image classifiers; a sentence encoder distils on embeddings");
    }
    let objective = EmbeddingTarget(embedding_loss(&a.embedding_loss)?);
    // read before training, so a bad file fails now rather than after the run
    let pairs = stsb::read(&a.eval_pairs)
        .with_context(|| format!("--eval-pairs {}", a.eval_pairs.display()))?;
    let mut cfg = config(&a.opts, &model.graph.arch)?;
    cfg.augment_pad = 0; // sentences are not augmented
    let cap = cfg.limit_train.map(|l| l + TEXT_VALID);
    let files: Vec<&std::path::Path> = a.sentences.iter().map(|p| p.as_path()).collect();
    let shown = files
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    eprintln!("embedding the sentences of {shown} with the teacher");
    let set = sentence_set(&model, &files, Some(teacher), cap)
        .with_context(|| format!("--sentences {shown}"))?;
    let (train_set, valid_set) = set.split_valid(TEXT_VALID);
    eprintln!(
        "distilling {} into {} on {} sentences ({} held out) for {} epochs, {} loss",
        a.teacher.display(),
        a.student,
        train_set.ids.len(),
        valid_set.ids.len(),
        cfg.epochs,
        a.embedding_loss
    );
    let run = Run {
        train: &train_set,
        valid: &valid_set,
        objective: &objective,
        cfg: &cfg,
        out: &a.out,
        resume: a.opts.resume,
    };
    let history = train::fit(&mut model, &run, &mut NoHooks)
        .with_context(|| format!("distilling into {}", a.out.display()))?;
    checkpoint::save(&model, &a.out)?;
    let metrics = squeeze::eval::evaluate_text(&a.out, &model, &pairs, true, 200)?;
    let wall: f64 = history.iter().map(|e| e.seconds).sum();
    write_outputs(
        &a.out,
        metrics,
        serde_json::json!({
            "teacher": a.teacher,
            "student": a.student,
            "sentences": a.sentences,
            "embedding_loss": a.embedding_loss,
            "config": cfg,
            "history": history,
            "distill_wall_s": wall,
        }),
    )
}

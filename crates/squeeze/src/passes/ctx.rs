//! The pass context: what a pass may ask for beyond the model. Calibration batches from a
//! source named by the recipe's `[calibration]` table (Fashion-MNIST training images, or
//! sentences from a text file such as STS-B train), forwards over them with taps (the
//! activations SparseGPT/GPTQ Hessians, static quantization ranges and BatchNorm
//! re-estimation read), and fine-tuning with the project's trainer under a budget from the
//! recipe's `[finetune]` table (overridable per pass). Classifiers fine-tune on labelled
//! Fashion-MNIST training images with cross-entropy; text encoders on sentences toward the
//! embeddings of the model as the recipe received it (self-distillation, cosine loss),
//! validated on the last sentences of the file (at most 500, a tenth of them).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::FashionMnist;
use crate::distill::{Distill, SoftTargets};
use crate::error::{Error, Result};
use crate::interp::{ForwardOpts, Tap};
use crate::model::Model;
use crate::text::{stsb, Encoder};
use crate::train::{
    self, forward_batch, Batch, CrossEntropy, DataSource, EmbeddingLoss, EmbeddingTarget, EpochLog,
    Hooks, Objective, Run, SentenceSet, TrainConfig,
};

/// Where calibration examples come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CalibSource {
    /// Fashion-MNIST training images (the directory given by `--data`).
    FashionMnist,
    /// Sentences from `path`: one per line, or an STS-B file (`.csv`/`.tsv`: both
    /// sentences of every pair).
    Sentences,
}

/// The recipe's `[calibration]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationConfig {
    pub source: CalibSource,
    /// The sentence file (for `source = "sentences"`).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Examples drawn (the first ones of the source).
    #[serde(default = "default_samples")]
    pub samples: usize,
    #[serde(default = "default_calib_batch")]
    pub batch_size: usize,
}

fn default_samples() -> usize {
    512
}
fn default_calib_batch() -> usize {
    64
}

/// The recipe's `[finetune]` table: the budget of every fine-tuning a pass asks for — the
/// trainer's options ([`TrainConfig`], same keys, same checks) and what only a recipe's
/// fine-tuning needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FinetuneConfig {
    #[serde(flatten)]
    pub train: TrainConfig,
    /// Text encoders: the sentences to distil on (default: the calibration sentences).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentences: Option<PathBuf>,
    /// Classifiers: distil from the model as the recipe received it (Hinton's soft
    /// targets, `{ temperature, alpha }`) instead of plain cross-entropy on the labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_targets: Option<SoftTargets>,
    /// Keys neither of the above knows (a flattened table cannot reject them itself):
    /// [`FinetuneConfig::check`] refuses them by name.
    #[serde(flatten, skip_serializing)]
    pub unknown: BTreeMap<String, serde::de::IgnoredAny>,
}

impl FinetuneConfig {
    /// Refuses unknown keys and invalid soft targets, naming the key.
    pub fn check(&self) -> std::result::Result<(), String> {
        if let Some(k) = self.unknown.keys().next() {
            return Err(format!(
                "unknown field `{k}`, expected one of `epochs`, `batch_size`, `optimizer`, \
                 `schedule`, `seed`, `augment_pad`, `limit_train`, `sentences`, `soft_targets`"
            ));
        }
        if let Some(st) = self.soft_targets {
            st.validate().map_err(|e| format!("soft_targets: {e}"))?;
        }
        Ok(())
    }
}

/// Sentences held out (from the end of the file) to validate text fine-tuning.
pub const TEXT_VALID: usize = 500;

/// Everything a pass may use besides the model.
pub struct PassCtx {
    calibration: Option<CalibrationConfig>,
    finetune: FinetuneConfig,
    data_dir: PathBuf,
    work_dir: PathBuf,
    /// The model as the recipe received it (teacher of text fine-tuning).
    original: Option<Model>,
    images: Option<FashionMnist>,
    calib: Option<Vec<Batch>>,
}

impl PassCtx {
    /// A context reading Fashion-MNIST from `data_dir` and writing fine-tuning checkpoints
    /// under `work_dir`.
    pub fn new(
        calibration: Option<CalibrationConfig>,
        finetune: Option<FinetuneConfig>,
        data_dir: &Path,
        work_dir: &Path,
    ) -> Self {
        PassCtx {
            calibration,
            finetune: finetune.unwrap_or_default(),
            data_dir: data_dir.to_path_buf(),
            work_dir: work_dir.to_path_buf(),
            original: None,
            images: None,
            calib: None,
        }
    }

    /// Uses these image splits instead of reading Fashion-MNIST (tests, embedding callers).
    pub fn with_images(mut self, data: FashionMnist) -> Self {
        self.images = Some(data);
        self
    }

    /// Records the model as the recipe received it.
    pub fn set_original(&mut self, m: &Model) {
        self.original.get_or_insert_with(|| m.clone());
    }

    pub(crate) fn images(&mut self) -> Result<&FashionMnist> {
        if self.images.is_none() {
            self.images = Some(FashionMnist::load(&self.data_dir)?);
        }
        Ok(self.images.as_ref().expect("loaded above"))
    }

    /// The calibration batches (made on first use, then reused by every pass).
    pub fn calibration(&mut self, model: &Model) -> Result<&[Batch]> {
        if self.calib.is_none() {
            let cfg = self.calibration.clone().ok_or_else(|| {
                Error::Data(
                    "this pass needs calibration data: add a [calibration] table to the \
                     recipe (source = \"fashion-mnist\" or \"sentences\")"
                        .into(),
                )
            })?;
            self.calib = Some(self.make_calibration(&cfg, model)?);
        }
        Ok(self.calib.as_deref().expect("made above"))
    }

    fn make_calibration(&mut self, cfg: &CalibrationConfig, model: &Model) -> Result<Vec<Batch>> {
        let source: Box<dyn DataSource> = match cfg.source {
            CalibSource::FashionMnist => Box::new(self.images()?.train.clone()),
            CalibSource::Sentences => {
                let path = cfg.path.as_deref().ok_or_else(|| {
                    Error::Data("[calibration] source = \"sentences\" needs a `path`".into())
                })?;
                Box::new(sentence_set(model, &[path], None, Some(cfg.samples))?)
            }
        };
        let n = cfg.samples.min(source.len());
        if n == 0 || cfg.batch_size == 0 {
            return Err(Error::Data(
                "[calibration]: samples and batch_size must be positive and the source non-empty"
                    .into(),
            ));
        }
        let idx: Vec<usize> = (0..n).collect();
        idx.chunks(cfg.batch_size)
            .map(|c| source.batch(c, None))
            .collect()
    }

    /// Runs `model` (eval mode) over the calibration batches with `nodes` tapped, handing
    /// each batch and its taps to `f`.
    pub fn capture(
        &mut self,
        model: &Model,
        nodes: &[String],
        mut f: impl FnMut(&Batch, &HashMap<String, Tap>) -> Result<()>,
    ) -> Result<()> {
        let opts = ForwardOpts {
            taps: nodes.iter().cloned().collect(),
            ..ForwardOpts::eval()
        };
        let batches = self.calibration(model)?.to_vec();
        for b in &batches {
            let out = forward_batch(&model.graph, &model.params, b, &opts)?;
            f(b, &out.taps)?;
        }
        Ok(())
    }

    /// Optimizer steps of a fine-tuning of `epochs` (default: the recipe's) — what a
    /// schedule inside the run (gradual pruning) spreads its events over.
    pub fn finetune_steps(&mut self, model: &Model, epochs: Option<usize>) -> Result<usize> {
        let f = self.finetune.clone();
        let n = if model.graph.is_text() {
            read_sentences(&self.finetune_sentences()?)?
                .len()
                .saturating_sub(TEXT_VALID)
        } else {
            self.images()?.train.len()
        };
        let n = f.train.limit_train.map_or(n, |l| l.min(n));
        Ok(epochs.unwrap_or(f.train.epochs) * n.div_ceil(f.train.batch_size.max(1)))
    }

    /// The recipe's `[finetune]` table (or its defaults).
    pub fn finetune_config(&self) -> &FinetuneConfig {
        &self.finetune
    }

    /// Fine-tunes `model` in place for `epochs` (default: the recipe's) with the trainer.
    pub fn finetune(
        &mut self,
        model: &mut Model,
        epochs: Option<usize>,
        hooks: &mut dyn Hooks,
    ) -> Result<Vec<EpochLog>> {
        self.finetune_lr(model, epochs, None, hooks)
    }

    /// [`PassCtx::finetune`] with the optimizer's base learning rate replaced by `lr`.
    pub fn finetune_lr(
        &mut self,
        model: &mut Model,
        epochs: Option<usize>,
        lr: Option<f64>,
        hooks: &mut dyn Hooks,
    ) -> Result<Vec<EpochLog>> {
        let mut f = self.finetune.clone();
        if let Some(lr) = lr {
            f.train.optimizer = f.train.optimizer.with_lr(lr);
        }
        let cfg = TrainConfig {
            epochs: epochs.unwrap_or(f.train.epochs),
            ..f.train.clone()
        };
        let out = self.work_dir.clone();
        let _ = std::fs::remove_dir_all(train::checkpoint_dir(&out));
        if model.graph.is_text() {
            let (set, objective) = self.text_finetune_data(model, &f)?;
            let (train_set, valid_set) = set.split_valid(TEXT_VALID);
            let run = run_of(&train_set, &valid_set, &objective, &cfg, &out);
            return train::fit(model, &run, hooks);
        }
        let data = self.images()?.clone();
        let Some(soft) = f.soft_targets else {
            let run = run_of(&data.train, &data.valid, &CrossEntropy, &cfg, &out);
            return train::fit(model, &run, hooks);
        };
        soft.validate()
            .map_err(|e| Error::Train(format!("[finetune] soft_targets: {e}")))?;
        let teacher = self.original.clone().unwrap_or_else(|| model.clone());
        let objective = Distill {
            teacher: &teacher,
            soft: Some(soft),
            hints: Vec::new(),
        };
        let run = run_of(&data.train, &data.valid, &objective, &cfg, &out);
        train::fit(model, &run, hooks)
    }

    /// The sentence file text encoders fine-tune on: `[finetune] sentences`, else the
    /// calibration sentences.
    fn finetune_sentences(&self) -> Result<PathBuf> {
        self.finetune
            .sentences
            .clone()
            .or_else(|| self.calibration.as_ref().and_then(|c| c.path.clone()))
            .ok_or_else(|| {
                Error::Data(
                    "fine-tuning a text encoder needs sentences: set [finetune] sentences or \
                     [calibration] path"
                        .into(),
                )
            })
    }

    /// Sentences with the original model's embeddings as targets.
    fn text_finetune_data(
        &mut self,
        model: &Model,
        f: &FinetuneConfig,
    ) -> Result<(SentenceSet, EmbeddingTarget)> {
        let path = self.finetune_sentences()?;
        let teacher = self.original.clone().unwrap_or_else(|| model.clone());
        // the examples the budget trains on, plus the held-out validation sentences
        let cap = f.train.limit_train.map(|l| l + TEXT_VALID);
        let set = sentence_set(model, &[&path], Some(&teacher), cap)?;
        Ok((set, EmbeddingTarget(EmbeddingLoss::Cosine)))
    }
}

fn run_of<'a>(
    train: &'a dyn DataSource,
    valid: &'a dyn DataSource,
    objective: &'a dyn Objective,
    cfg: &'a TrainConfig,
    out: &'a Path,
) -> Run<'a> {
    Run {
        train,
        valid,
        objective,
        cfg,
        out,
        resume: false,
    }
}

/// The sentences of `paths`, one file after the other, tokenized by `model`'s tokenizer,
/// with `teacher`'s embeddings as targets if given.
/// At most `cap` sentences (the first ones) are used.
pub fn sentence_set(
    model: &Model,
    paths: &[&Path],
    teacher: Option<&Model>,
    cap: Option<usize>,
) -> Result<SentenceSet> {
    let mut texts = Vec::new();
    for path in paths {
        texts.extend(read_sentences(path)?);
    }
    texts.truncate(cap.unwrap_or(usize::MAX));
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ids = Encoder::new(model)?.tokenizer.encode(&refs)?;
    let targets = match teacher {
        Some(t) => Some(Encoder::new(t)?.embed(&refs, 32, false)?),
        None => None,
    };
    Ok(SentenceSet { ids, targets })
}

/// One sentence per non-empty line, or both sentences of every STS-B pair (`.csv`/`.tsv`).
pub fn read_sentences(path: &Path) -> Result<Vec<String>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext == "csv" || ext == "tsv" {
        let pairs = stsb::read(path)?;
        return Ok(stsb::sentences(&pairs)
            .into_iter()
            .map(String::from)
            .collect());
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect())
}

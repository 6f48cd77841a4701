//! What the trainer trains on: a [`Batch`] of images with labels, or of tokenized
//! sentences (ids, mask, and optionally a target embedding per sentence, e.g. a teacher's),
//! drawn from a [`DataSource`] by index. Fashion-MNIST's [`ImageSet`] and [`SentenceSet`]
//! are the two sources; [`forward_batch`] runs a model on either.

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;

use crate::data::ImageSet;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::interp::{forward, forward_tokens, ForwardOpts, ForwardOut};
use crate::params::ParamStore;
use crate::text::pad_batch;

/// One training or evaluation batch.
#[derive(Debug, Clone)]
pub enum Batch {
    /// Images `[N, 1, H, W]` (normalized) and class labels `[N]` (u32).
    Images { x: Tensor, labels: Tensor },
    /// Token ids `[N, L]` (u32), mask `[N, L]` (1 = token) and, for regression objectives, a
    /// target embedding per sentence `[N, d]`.
    Tokens {
        ids: Tensor,
        mask: Tensor,
        target: Option<Tensor>,
    },
}

impl Batch {
    /// Examples in the batch.
    pub fn len(&self) -> usize {
        let t = match self {
            Batch::Images { labels, .. } => labels,
            Batch::Tokens { ids, .. } => ids,
        };
        t.dims().first().copied().unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Examples addressable by index.
pub trait DataSource {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The batch of examples `idx`; `augment` = (generator, crop padding) for sources that
    /// augment (images), an error for those that cannot.
    fn batch(&self, idx: &[usize], augment: Option<(&mut StdRng, usize)>) -> Result<Batch>;
}

impl DataSource for ImageSet {
    fn len(&self) -> usize {
        ImageSet::len(self)
    }
    fn batch(&self, idx: &[usize], augment: Option<(&mut StdRng, usize)>) -> Result<Batch> {
        let (x, labels) = ImageSet::batch(self, idx, augment)?;
        Ok(Batch::Images { x, labels })
    }
}

/// Tokenized sentences (as the model's tokenizer made them), optionally each with a
/// target embedding.
#[derive(Debug, Clone, Default)]
pub struct SentenceSet {
    pub ids: Vec<Vec<u32>>,
    pub targets: Option<Vec<Vec<f32>>>,
}

impl SentenceSet {
    /// (train, valid): the last `min(max_valid, len / 10)` sentences (at least one, when
    /// there are two or more) held out for validation.
    pub fn split_valid(self, max_valid: usize) -> (SentenceSet, SentenceSet) {
        let n = self.ids.len();
        let v = (n / 10).clamp(usize::from(n > 1), max_valid.max(1));
        let cut = n - v.min(n);
        let (mut ids, mut targets) = (self.ids, self.targets);
        let vids = ids.split_off(cut);
        let vt = targets.as_mut().map(|t| t.split_off(cut));
        let train = SentenceSet { ids, targets };
        (
            train,
            SentenceSet {
                ids: vids,
                targets: vt,
            },
        )
    }
}

impl DataSource for SentenceSet {
    fn len(&self) -> usize {
        self.ids.len()
    }
    fn batch(&self, idx: &[usize], augment: Option<(&mut StdRng, usize)>) -> Result<Batch> {
        if augment.is_some() {
            return Err(Error::Data(
                "augmentation (augment_pad) applies to images, not sentences".into(),
            ));
        }
        let seqs = idx
            .iter()
            .map(|&i| self.ids.get(i).map(Vec::as_slice))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::Data("sentence index out of range".into()))?;
        let (ids, mask) = pad_batch(&seqs)?;
        let target = match &self.targets {
            Some(t) => {
                let d = t.first().map_or(0, Vec::len);
                let mut flat = Vec::with_capacity(idx.len() * d);
                for &i in idx {
                    if t[i].len() != d {
                        return Err(Error::Data(format!(
                            "target {i} has {} values, the others {d}",
                            t[i].len()
                        )));
                    }
                    flat.extend_from_slice(&t[i]);
                }
                Some(Tensor::from_vec(flat, (idx.len(), d), &Device::Cpu)?)
            }
            None => None,
        };
        Ok(Batch::Tokens { ids, mask, target })
    }
}

/// Runs `g` on a batch of either kind.
pub fn forward_batch(
    g: &Graph,
    p: &ParamStore,
    batch: &Batch,
    opts: &ForwardOpts,
) -> Result<ForwardOut> {
    match batch {
        Batch::Images { x, .. } => forward(g, p, x, opts),
        Batch::Tokens { ids, mask, .. } => forward_tokens(g, p, ids, mask, opts),
    }
}

//! What training minimizes: an [`Objective`] turns a forward's output (and tapped nodes)
//! and the batch into a scalar loss. Cross-entropy on labelled images is today's; the
//! sentence-embedding regressions (MSE, cosine distance to a target embedding per
//! sentence, as DistilBERT-style distillation of a sentence encoder uses) train text
//! encoders on token batches. Soft targets and hint losses plug in the same way.

use candle_core::{Tensor, D};

use super::data::Batch;
use crate::error::{Error, Result};
use crate::interp::ForwardOut;

/// A step's loss and, for classifiers, how many examples were classified right.
pub struct StepLoss {
    pub loss: Tensor,
    pub correct: Option<usize>,
}

/// A training objective.
pub trait Objective {
    /// Name in logs.
    fn name(&self) -> &'static str;
    /// Nodes whose inputs/outputs the loss reads (tapped during the forward).
    fn taps(&self) -> Vec<String>;
    /// The loss over the forward's output / taps and the batch.
    fn loss(&self, out: &ForwardOut, batch: &Batch) -> Result<StepLoss>;
}

/// Mean cross-entropy of the logits against the labels of an image batch.
pub struct CrossEntropy;

impl Objective for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross_entropy"
    }
    fn taps(&self) -> Vec<String> {
        vec![]
    }
    fn loss(&self, out: &ForwardOut, batch: &Batch) -> Result<StepLoss> {
        let Batch::Images { labels, .. } = batch else {
            return Err(Error::Train("cross-entropy needs labelled images".into()));
        };
        let loss = candle_nn::loss::cross_entropy(&out.output, labels)?;
        Ok(StepLoss {
            loss,
            correct: Some(correct(&out.output, labels)?),
        })
    }
}

/// How many rows of `logits` `[N, C]` have their largest value at the label.
pub fn correct(logits: &Tensor, labels: &Tensor) -> Result<usize> {
    let pred: Vec<u32> = logits.argmax(1)?.to_vec1()?;
    let ys: Vec<u32> = labels.to_vec1()?;
    Ok(pred.iter().zip(&ys).filter(|(a, b)| a == b).count())
}

/// How a sentence embedding is compared with its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddingLoss {
    /// Mean squared error over all components.
    Mse,
    /// Mean of 1 − cos(output, target).
    Cosine,
}

/// Regression of the model's sentence embedding onto the batch's target embeddings.
pub struct EmbeddingTarget(pub EmbeddingLoss);

fn target(batch: &Batch) -> Result<&Tensor> {
    match batch {
        Batch::Tokens {
            target: Some(t), ..
        } => Ok(t),
        _ => Err(Error::Train(
            "an embedding objective needs sentences with target embeddings".into(),
        )),
    }
}

impl Objective for EmbeddingTarget {
    fn name(&self) -> &'static str {
        match self.0 {
            EmbeddingLoss::Mse => "embedding_mse",
            EmbeddingLoss::Cosine => "embedding_cosine",
        }
    }
    fn taps(&self) -> Vec<String> {
        vec![]
    }
    fn loss(&self, out: &ForwardOut, batch: &Batch) -> Result<StepLoss> {
        let (y, t) = (&out.output, target(batch)?.to_dtype(out.output.dtype())?);
        if y.dims() != t.dims() {
            return Err(Error::Train(format!(
                "embeddings {:?} vs targets {:?}",
                y.dims(),
                t.dims()
            )));
        }
        let loss = match self.0 {
            EmbeddingLoss::Mse => (y - &t)?.sqr()?.mean_all()?,
            EmbeddingLoss::Cosine => {
                let dot = (y * &t)?.sum(D::Minus1)?;
                let norms =
                    (y.sqr()?.sum(D::Minus1)?.sqrt()? * t.sqr()?.sum(D::Minus1)?.sqrt()?)?;
                let cos = (dot / norms.clamp(1e-12, f64::INFINITY)?)?;
                cos.affine(-1.0, 1.0)?.mean_all()?
            }
        };
        Ok(StepLoss {
            loss,
            correct: None,
        })
    }
}

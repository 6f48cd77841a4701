//! Sentence encoders (Sentence-BERT, Reimers & Gurevych 2019): tokenize, run a token graph,
//! read the pooled embedding; score it on STS-B; time it on real sentences. Batches are
//! formed after sorting texts by token count, so padding stays small, and results come back
//! in input order.

pub mod bert;
pub mod shorten;
pub mod stsb;
pub mod tokenize;
pub mod wordpiece;

use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use crate::error::{Error, Result};
use crate::graph::Lookup;
use crate::interp::{forward_tokens, on_pool, ForwardOpts};
use crate::model::Model;
use crate::ops::pack_cache::PackCache;
pub use tokenize::{pad_batch, TextTokenizer};

/// A text model ready to embed: graph, parameters and its tokenizer.
pub struct Encoder<'a> {
    pub model: &'a Model,
    pub tokenizer: TextTokenizer,
    /// Packed Linear weights, made on first use.
    packed: Arc<PackCache>,
}

impl<'a> Encoder<'a> {
    /// Wraps a token graph; fails if the model reads images or has no tokenizer.
    pub fn new(model: &'a Model) -> Result<Self> {
        Self::with_packs(model, Arc::default())
    }

    /// [`Self::new`] running on the packed weights `packed` (those of a model made
    /// inference-only by [`crate::interp::keep_packed_only`]).
    pub fn with_packs(model: &'a Model, packed: Arc<PackCache>) -> Result<Self> {
        if !model.graph.is_text() {
            return Err(Error::Data(format!(
                "model `{}` reads images, not text",
                model.graph.arch
            )));
        }
        let tokenizer = TextTokenizer::from_assets(&model.assets, max_positions(model))?;
        Ok(Encoder {
            model,
            tokenizer,
            packed,
        })
    }

    /// Embeddings of already tokenized sequences, one batch, in order.
    pub fn embed_ids(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let (ids, mask) = pad_batch(seqs)?;
        let g = &self.model.graph;
        let opts = ForwardOpts {
            packed: Some(self.packed.clone()),
            ..ForwardOpts::eval()
        };
        let out = on_pool(|| forward_tokens(g, &self.model.params, &ids, &mask, &opts))?;
        Ok(out.output.to_dtype(candle_core::DType::F32)?.to_vec2()?)
    }

    /// Embeddings of `texts` in input order, `batch` at a time (shortest first), with a
    /// progress bar when `progress` is set.
    pub fn embed(&self, texts: &[&str], batch: usize, progress: bool) -> Result<Vec<Vec<f32>>> {
        // tokenization and every batch on one pool worker: a call hands the work over
        // once, not once per batch after the tokenizer has let the pool fall asleep
        on_pool(|| self.embed_here(texts, batch, progress))
    }

    /// [`Self::embed`] on the calling thread.
    fn embed_here(&self, texts: &[&str], batch: usize, progress: bool) -> Result<Vec<Vec<f32>>> {
        let ids = self.tokenizer.encode(texts)?;
        let order = shortest_first(&ids);
        let bar = progress.then(|| bar(texts.len() as u64));
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(batch.max(1)) {
            let seqs: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
            for (&i, e) in chunk.iter().zip(self.embed_ids(&seqs)?) {
                out[i] = e;
            }
            if let Some(b) = &bar {
                b.inc(chunk.len() as u64);
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        Ok(out)
    }

    /// STS-B Spearman and Pearson (×100) of cosine similarity against the gold scores.
    pub fn stsb(&self, pairs: &[stsb::Pair], batch: usize, progress: bool) -> Result<(f64, f64)> {
        let e = self.embed(&stsb::sentences(pairs), batch, progress)?;
        Ok(stsb_scores(&e, pairs))
    }

    /// Median batch-1 latency (ms) over `texts`, each embedded alone (tokenization
    /// included), after a warm-up on the first few.
    pub fn latency_b1(&self, texts: &[&str]) -> Result<f64> {
        for t in texts.iter().take(5) {
            self.embed(&[t], 1, false)?;
        }
        let mut times = Vec::with_capacity(texts.len());
        for t in texts {
            let s = Instant::now();
            self.embed(&[t], 1, false)?;
            times.push(s.elapsed().as_secs_f64());
        }
        times.sort_by(|a, b| a.total_cmp(b));
        Ok(times.get(times.len() / 2).copied().unwrap_or(0.0) * 1e3)
    }

    /// Sentences per second embedding `texts` `batch` at a time (tokenization included).
    pub fn throughput(&self, texts: &[&str], batch: usize) -> Result<f64> {
        let s = Instant::now();
        self.embed(texts, batch, false)?;
        Ok(texts.len() as f64 / s.elapsed().as_secs_f64())
    }
}

/// Indices of the token sequences `ids`, shortest first (the order batches are made in, so
/// that a batch pads little).
pub fn shortest_first(ids: &[Vec<u32>]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i].len());
    order
}

/// STS-B Spearman and Pearson (×100) from the embeddings of the pairs' sentences (in the
/// order of [`stsb::sentences`]).
pub fn stsb_scores(e: &[Vec<f32>], pairs: &[stsb::Pair]) -> (f64, f64) {
    let sims: Vec<f64> = e
        .chunks_exact(2)
        .map(|ab| stsb::cosine(&ab[0], &ab[1]))
        .collect();
    let gold: Vec<f64> = pairs.iter().map(|p| p.score).collect();
    (
        100.0 * stsb::spearman(&sims, &gold),
        100.0 * stsb::pearson(&sims, &gold),
    )
}

/// Rows of the position-embedding table (the longest sequence the model can read).
pub fn max_positions(model: &Model) -> usize {
    model
        .graph
        .nodes
        .iter()
        .filter_map(|n| n.op.def().lookup_table())
        .find_map(|(lookup, rows)| (lookup == Lookup::Positions).then_some(rows))
        .unwrap_or(usize::MAX)
}

fn bar(len: u64) -> ProgressBar {
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} sentences {per_sec} eta {eta}")
            .expect("static template"),
    );
    b
}

//! The measurement rule for comparisons: models compared in one table are timed in the
//! same process, interleaved — each round runs every model once, in an order that rotates
//! from round to round, so that a noisy neighbour or a clock change hits all of them alike
//! — and each speed is the median of the rounds, reported with its range. Text encoders
//! also take turns within a round, in short runs of sentences.

use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{median_time, Metrics};
use crate::error::{Error, Result};
use crate::interp::predict;
use crate::model::Model;
use crate::text::Encoder;

/// A speed measured over interleaved rounds: the median and the range of the rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// The values in round order (for per-round ratios against a peer timed between
    /// the rounds); not written to results.
    #[serde(skip)]
    pub rounds: Vec<f64>,
}

impl Spread {
    /// Median, min and max of `v` (not empty), keeping `v` in its order.
    pub fn of(v: Vec<f64>) -> Spread {
        let mut sorted = v.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        Spread {
            median: sorted[sorted.len() / 2],
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            rounds: v,
        }
    }
}

/// One model's speeds in an interleaved comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// Batch-1 latency (ms).
    pub latency_ms_b1: Spread,
    /// Examples per second at `batch`.
    pub throughput: Spread,
    pub batch: usize,
    /// How it was measured, for the table's footnote and the JSON.
    pub method: String,
}

impl Timing {
    /// Copies the medians into `m` (and the timing record itself).
    pub fn fill(&self, m: &mut Metrics) {
        m.latency_ms_b1 = Some(self.latency_ms_b1.median);
        if self.batch == 256 {
            m.throughput_b256 = Some(self.throughput.median);
        } else {
            m.throughput_b32 = Some(self.throughput.median);
        }
        m.timing = Some(self.clone());
    }
}

/// A bar over the (model, round) timings, shown on a terminal only.
fn bar(len: usize, what: &str) -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::new(len as u64);
    let style = indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    b.set_style(style.progress_chars("=> "));
    b.set_message(format!("timing {what}"));
    b
}

/// The order of models in round `r`: rotated by `r`.
fn order(n: usize, r: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |i| (i + r) % n)
}

/// Times image models interleaved: per round and model, batch-1 latency (median of
/// `reps` runs) and batch-256 throughput (median of `reps / 10`, at least 1).
pub fn image_speeds(models: &[&Model], rounds: usize, reps: usize) -> Result<Vec<Timing>> {
    image_speeds_with(models, rounds, reps, &mut |_| Ok(()))
}

/// [`image_speeds`], calling `between(r)` after the models' turn in round `r` (see
/// [`text_speeds_with`]).
pub fn image_speeds_with(
    models: &[&Model],
    rounds: usize,
    reps: usize,
    between: &mut dyn FnMut(usize) -> Result<()>,
) -> Result<Vec<Timing>> {
    let (rounds, reps) = (rounds.max(1), reps.max(1));
    let mut lat = vec![Vec::new(); models.len()];
    let mut thr = vec![Vec::new(); models.len()];
    let inputs = models
        .iter()
        .map(|m| batch_inputs(m))
        .collect::<Result<Vec<_>>>()?;
    let pb = bar(rounds * models.len(), "models");
    for r in 0..rounds {
        for i in order(models.len(), r) {
            pb.inc(1);
            let (g, p) = (&models[i].graph, &models[i].params);
            let (x1, x256) = &inputs[i];
            let warm = if r == 0 { 5 } else { 1 };
            lat[i].push(1e3 * median_time(warm, reps, || predict(g, p, x1).map(|_| ()))?);
            let t = median_time(1, (reps / 10).max(1), || predict(g, p, x256).map(|_| ()))?;
            thr[i].push(256.0 / t);
        }
        between(r)?;
    }
    pb.finish_and_clear();
    let method = format!(
        "{} timed in one process, interleaved over {} (order rotating); \
         batch-1 latency = median of {reps} runs per round, throughput at batch 256; \
         median [min–max] of the rounds",
        count(models.len(), "model"),
        count(rounds, "round")
    );
    Ok(finish(lat, thr, 256, method))
}

/// Random inputs of a dense model at batch 1 and 256.
pub(crate) fn batch_inputs(m: &Model) -> Result<(Tensor, Tensor)> {
    if m.graph.is_text() {
        return Err(Error::Data("image timing of a text encoder".into()));
    }
    let mut shape = vec![1];
    shape.extend(&m.graph.input_shape);
    let x1 = Tensor::randn(0f32, 1.0, shape.as_slice(), &Device::Cpu)?;
    shape[0] = 256;
    let x256 = Tensor::randn(0f32, 1.0, shape.as_slice(), &Device::Cpu)?;
    Ok((x1, x256))
}

/// Times text encoders interleaved on real sentences: per round and model, batch-1
/// latency (median over `latency_texts`, each embedded alone, tokenization included) and
/// batch-32 throughput over `throughput_texts`.
pub fn text_speeds(
    models: &[&Model],
    latency_texts: &[&str],
    throughput_texts: &[&str],
    rounds: usize,
) -> Result<Vec<Timing>> {
    text_speeds_with(
        models,
        (latency_texts, throughput_texts),
        rounds,
        &mut |_| Ok(()),
    )
}

/// Sentences embedded per model before a round's timings.
const TEXT_WARMUP: usize = 5;

/// Sentences an encoder embeds in one turn of the batch-1 timing.
pub const LATENCY_RUN: usize = 20;

/// [`text_speeds`], calling `between(r)` after the models' turn in round `r` (a peer
/// timed in another process takes its turn there, so that ours and theirs alternate).
///
/// Within a round the encoders take turns in runs of [`LATENCY_RUN`] sentences (batch by
/// batch for the throughput), the order rotating at each turn, so that a noisy neighbour
/// that slows the machine for a second slows every encoder alike instead of the one whose
/// whole turn it fell in. Each run starts with one untimed sentence: the encoder's weights
/// are then back in the shared cache, as they are for a model that serves sentences one
/// after another — and for a peer, which times its sentences consecutively. Sentence by
/// sentence, each encoder would be timed with its weights evicted by the others'.
pub fn text_speeds_with(
    models: &[&Model],
    (latency_texts, throughput_texts): (&[&str], &[&str]),
    rounds: usize,
    between: &mut dyn FnMut(usize) -> Result<()>,
) -> Result<Vec<Timing>> {
    let rounds = rounds.max(1);
    let encs = models
        .iter()
        .map(|m| Encoder::new(m))
        .collect::<Result<Vec<_>>>()?;
    let batches = length_sorted_batches(&encs, throughput_texts, 32)?;
    let n = encs.len();
    let mut lat = vec![Vec::new(); n];
    let mut thr = vec![Vec::new(); n];
    let pb = bar(rounds, "encoders");
    for r in 0..rounds {
        pb.inc(1);
        let embed = |i: usize, texts: &[&str]| encs[i].embed(texts, 32, false).map(|_| ());
        for t in latency_texts.iter().take(TEXT_WARMUP) {
            turns(n, r, &mut |i| embed(i, &[t]))?;
        }
        let mut b1 = vec![Vec::with_capacity(latency_texts.len()); n];
        for (j, run) in latency_texts.chunks(LATENCY_RUN).enumerate() {
            for i in order(n, r + j) {
                embed(i, &run[..1])?;
                for t in run {
                    let s = Instant::now();
                    embed(i, &[t])?;
                    b1[i].push(s.elapsed().as_secs_f64());
                }
            }
        }
        let mut total = vec![0.0; n];
        for (j, b) in batches.iter().enumerate() {
            for (i, s) in turns(n, r + j, &mut |i| embed(i, b))?
                .into_iter()
                .enumerate()
            {
                total[i] += s;
            }
        }
        for i in 0..n {
            lat[i].push(1e3 * Spread::of(std::mem::take(&mut b1[i])).median);
            thr[i].push(throughput_texts.len() as f64 / total[i].max(f64::MIN_POSITIVE));
        }
        between(r)?;
    }
    pb.finish_and_clear();
    let method = format!(
        "{} timed in one process, interleaved over {} and within each round in runs of \
         {LATENCY_RUN} sentences (each after one untimed sentence) and batch by batch (order \
         rotating); batch-1 latency = median over {} real sentences per round, throughput at \
         batch 32 over {}; median [min–max] of the rounds",
        count(models.len(), "encoder"),
        count(rounds, "round"),
        latency_texts.len(),
        throughput_texts.len()
    );
    Ok(finish(lat, thr, 32, method))
}

/// Runs `f` once for each of `n` models in the order of turn `turn`; the seconds each took.
fn turns(n: usize, turn: usize, f: &mut dyn FnMut(usize) -> Result<()>) -> Result<Vec<f64>> {
    let mut secs = vec![0.0; n];
    for i in order(n, turn) {
        let s = Instant::now();
        f(i)?;
        secs[i] = s.elapsed().as_secs_f64();
    }
    Ok(secs)
}

/// `texts` in batches of `batch`, shortest first (by the first encoder's tokenizer), as
/// [`Encoder::embed`] would batch them.
fn length_sorted_batches<'t>(
    encs: &[Encoder],
    texts: &[&'t str],
    batch: usize,
) -> Result<Vec<Vec<&'t str>>> {
    let Some(first) = encs.first() else {
        return Ok(Vec::new());
    };
    let ids = first.tokenizer.encode(texts)?;
    Ok(crate::text::shortest_first(&ids)
        .chunks(batch.max(1))
        .map(|c| c.iter().map(|&i| texts[i]).collect())
        .collect())
}

/// "1 model", "3 models".
fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

fn finish(lat: Vec<Vec<f64>>, thr: Vec<Vec<f64>>, batch: usize, method: String) -> Vec<Timing> {
    lat.into_iter()
        .zip(thr)
        .map(|(l, t)| Timing {
            latency_ms_b1: Spread::of(l),
            throughput: Spread::of(t),
            batch,
            method: method.clone(),
        })
        .collect()
}

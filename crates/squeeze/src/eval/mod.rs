//! Evaluation and cost: top-1 accuracy, parameter and non-zero counts, MACs/FLOPs per node
//! (from inferred shapes), bytes on disk, batch-1 latency and batch-256 throughput (median
//! of repeated timed runs after warm-up) and peak resident memory. [`Metrics`] is the one
//! JSON schema every command prints.

pub mod compare;

pub use compare::{image_speeds, text_speeds, Spread, Timing};

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::checkpoint::{self};
use crate::data::ImageSet;
use crate::error::{Error, Result};
use crate::graph::{infer_shapes_at, tensor_specs, Graph};
use crate::interp::predict;
use crate::kinds::numel;
use crate::model::Model;
use crate::params::ParamStore;

/// The metrics every command reports (missing values are `null`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Metrics {
    pub accuracy: Option<f64>,
    pub params: usize,
    pub nonzero_params: usize,
    pub macs: u64,
    pub flops: u64,
    pub size_bytes: Option<u64>,
    pub latency_ms_b1: Option<f64>,
    pub throughput_b256: Option<f64>,
    pub peak_rss_bytes: Option<u64>,
    /// Text encoders: sequence length at which `macs`/`flops` are counted (per sentence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq_len: Option<usize>,
    /// Text encoders: STS-B Spearman ×100 of cosine similarity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spearman: Option<f64>,
    /// Text encoders: STS-B Pearson ×100 of cosine similarity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pearson: Option<f64>,
    /// Text encoders: sentences/s embedding real sentences 32 at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput_b32: Option<f64>,
    /// When the speeds come from an interleaved comparison: their spread and method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timing: Option<Timing>,
    /// When and where these metrics were measured (written with `metrics.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured: Option<Measured>,
}

/// The date and machine of a stored measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// Seconds since the Unix epoch (UTC).
    pub unix_time: u64,
    /// CPU model, family and vector units ([`crate::isa::cpu_kind`]) and thread count.
    pub machine: String,
}

impl Measured {
    /// Now, on this machine.
    pub fn now() -> Self {
        let unix_time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Measured {
            unix_time,
            machine: format!("{}, {threads} threads", crate::isa::cpu_kind()),
        }
    }

    /// `YYYY-MM-DD` of the measurement (UTC).
    pub fn date(&self) -> String {
        // days since 1970-01-01 → civil date (Howard Hinnant's algorithm)
        let z = (self.unix_time / 86_400) as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        format!("{y:04}-{m:02}-{d:02}")
    }
}

/// Sequence length at which a text encoder's MACs are reported (BERT papers' usual 128).
pub const TEXT_COST_SEQ: usize = 128;

/// Cost of one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeCost {
    pub node: String,
    pub kind: String,
    /// Logical parameters (buffers, masks, scales and indices excluded).
    pub params: usize,
    pub macs: u64,
    /// Bytes a sample moves through the node: its inputs and output as f32, plus its
    /// tensors as stored.
    pub bytes: u64,
}

/// Cost per sample of every node, from its kind's definition (text encoders at
/// [`TEXT_COST_SEQ`] tokens).
pub fn node_costs(g: &Graph) -> Result<Vec<NodeCost>> {
    let shapes = infer_shapes_at(g, TEXT_COST_SEQ)?;
    let mut out = Vec::new();
    for n in &g.nodes {
        let o = &shapes[&n.name];
        let ins: Vec<&[usize]> = n.inputs.iter().map(|i| shapes[i].as_slice()).collect();
        let def = n.op.def();
        let specs = def.tensors();
        let params = specs
            .iter()
            .filter(|s| s.role.counts_as_parameter())
            .map(|s| s.logical_len())
            .sum();
        let acts: u64 = ins.iter().map(|s| numel(s)).sum::<u64>() + numel(o);
        let stored: usize = specs.iter().map(|s| s.stored_bytes()).sum();
        out.push(NodeCost {
            node: n.name.clone(),
            kind: def.name().into(),
            params,
            macs: def.macs(&ins, o),
            bytes: 4 * acts + stored as u64,
        });
    }
    Ok(out)
}

/// Static cost: logical parameters (buffers, masks, scales excluded), non-zeros among
/// them, MACs and FLOPs (= 2·MACs).
pub fn static_cost(model: &Model) -> Result<Metrics> {
    let costs = node_costs(&model.graph)?;
    let macs: u64 = costs.iter().map(|c| c.macs).sum();
    let specs = tensor_specs(&model.graph);
    let counted = |k: &str| specs.get(k).is_some_and(|s| s.role.counts_as_parameter());
    Ok(Metrics {
        params: costs.iter().map(|c| c.params).sum(),
        nonzero_params: model.params.count_nonzero(counted)?
            + crate::quant::nonzero_quantized(model)?,
        macs,
        flops: 2 * macs,
        seq_len: model.graph.is_text().then_some(TEXT_COST_SEQ),
        ..Metrics::default()
    })
}

/// Top-1 accuracy (0–1) on `set`, in batches.
pub fn accuracy(g: &Graph, p: &ParamStore, set: &ImageSet, batch: usize) -> Result<f64> {
    if set.is_empty() {
        return Err(Error::Data(
            "the test set holds no images: an accuracy needs at least one".into(),
        ));
    }
    let mut correct = 0;
    let idx: Vec<usize> = (0..set.len()).collect();
    // a bar on a terminal (hidden otherwise): a large model takes seconds per 10k images
    let bar = indicatif::ProgressBar::new(set.len() as u64);
    let style = indicatif::ProgressStyle::with_template("accuracy [{bar:30}] {pos}/{len} images")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style.progress_chars("=> "));
    for chunk in idx.chunks(batch.max(1)) {
        let (x, y) = set.batch(chunk, None)?;
        let logits = predict(g, p, &x)?;
        let values: Vec<f32> = logits.flatten_all()?.to_vec1()?;
        if let Some(v) = values.iter().find(|v| !v.is_finite()) {
            return Err(Error::Data(format!(
                "the model's output on test images {}..={} holds {v}: its weights or \
                 statistics are broken, so no accuracy is reported",
                chunk[0],
                chunk[chunk.len() - 1]
            )));
        }
        let pred: Vec<u32> = logits.argmax(1)?.to_vec1()?;
        let ys: Vec<u32> = y.to_vec1()?;
        correct += pred.iter().zip(&ys).filter(|(a, b)| a == b).count();
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(correct as f64 / set.len().max(1) as f64)
}

pub use crate::math::timing::median_time;

/// Batch-1 latency (ms) and batch-256 throughput (images/s), medians.
pub fn speed(model: &Model, runs: usize) -> Result<(f64, f64)> {
    let (x1, x256) = compare::batch_inputs(model)?;
    let (g, p) = (&model.graph, &model.params);
    let t1 = median_time(10, runs.saturating_mul(10), || {
        predict(g, p, &x1).map(|_| ())
    })?;
    let t256 = median_time(2, runs, || predict(g, p, &x256).map(|_| ()))?;
    Ok((t1 * 1e3, 256.0 / t256))
}

/// Peak resident set size of this process (VmHWM), if the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets the kernel's peak-RSS mark of this process (Linux `clear_refs` = 5), so the next
/// [`peak_rss_bytes`] reflects only what ran after this call (plus what stays resident).
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Full evaluation of a saved model: accuracy on `test` (if given), static cost, size on
/// disk, speed and peak memory.
pub fn evaluate(
    dir: &Path,
    model: &Model,
    test: Option<&ImageSet>,
    speed_runs: usize,
) -> Result<Metrics> {
    let mut m = static_cost(model)?;
    m.size_bytes = Some(checkpoint::size_on_disk(dir)?);
    // the peak is taken over this model's inference runs only (the resident data set and
    // binary are included, earlier models evaluated in this process are not)
    reset_peak_rss();
    if let Some(t) = test {
        m.accuracy = Some(accuracy(&model.graph, &model.params, t, 500)?);
    }
    if speed_runs > 0 {
        let (l, t) = speed(model, speed_runs)?;
        m.latency_ms_b1 = Some(l);
        m.throughput_b256 = Some(t);
    }
    m.peak_rss_bytes = peak_rss_bytes();
    Ok(m)
}

/// Full evaluation of a text encoder: STS-B Spearman/Pearson on `pairs` (if given), static
/// cost, size on disk, batch-1 latency over the first `speed_sentences` sentences of the
/// pairs (tokenization included) and batch-32 throughput over all their sentences, and
/// peak memory.
pub fn evaluate_text(
    dir: &Path,
    model: &Model,
    pairs: &[crate::text::stsb::Pair],
    score: bool,
    speed_sentences: usize,
) -> Result<Metrics> {
    let enc = crate::text::Encoder::new(model)?;
    let mut m = static_cost(model)?;
    m.size_bytes = Some(checkpoint::size_on_disk(dir)?);
    reset_peak_rss();
    if score {
        let (s, p) = enc.stsb(pairs, 32, true)?;
        if !(s.is_finite() && p.is_finite()) {
            return Err(Error::Data(format!(
                "the STS-B correlations are undefined (Spearman {s}, Pearson {p}): the \
                 model's similarities are constant or not finite, so its embeddings are broken"
            )));
        }
        m.spearman = Some(s);
        m.pearson = Some(p);
    }
    if speed_sentences > 0 {
        let texts = crate::text::stsb::sentences(pairs);
        m.latency_ms_b1 = Some(enc.latency_b1(&texts[..speed_sentences.min(texts.len())])?);
        m.throughput_b32 = Some(enc.throughput(&texts, 32)?);
    }
    m.peak_rss_bytes = peak_rss_bytes();
    Ok(m)
}

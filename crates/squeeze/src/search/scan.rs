//! The sensitivity scan: for every layer and ratio, the model with only that layer
//! compressed, scored on the held-out slice and costed (non-zero parameters and FLOPs by
//! the analytic count; batch-1 latency when a latency budget asks for it). Each finished
//! point is written to the cache file at once (a temporary name, then a rename), keyed by
//! the model's contents, the method's template and the ratios, so a killed scan resumes
//! where it stopped and a second budget reuses the whole scan.

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::Method;
use crate::data::ImageSet;
use crate::error::{Error, Result};
use crate::eval::{accuracy, median_time, static_cost};
use crate::model::Model;
use crate::passes::{batch_norms, recalibrate_batch_norm, run_recipe, PassCtx, Recipe};
use crate::text::{stsb, Encoder};
use crate::train::Batch;

/// Where the held-out score comes from.
pub enum HeldOut {
    /// Accuracy on `valid` (the validation split). With `adapt` batches, each scored model's
    /// BatchNorm statistics are first re-estimated on them (AdaBN, as EagleEye judges pruned
    /// candidates, Li et al. 2020): a compressed layer shifts what flows into the
    /// BatchNorms after it, and a score taken with stale statistics ranks candidates by
    /// that shift, which fine-tuning removes first, rather than by what they can recover.
    Images { valid: ImageSet, adapt: Vec<Batch> },
    /// STS-B Spearman on these pairs (train pairs), with a few sentences to time.
    Pairs(Vec<stsb::Pair>),
}

impl HeldOut {
    /// The score of `model` (higher is better).
    pub fn score(&self, model: &Model) -> Result<f64> {
        match self {
            HeldOut::Images { valid, adapt }
                if adapt.is_empty() || batch_norms(model).is_empty() =>
            {
                accuracy(&model.graph, &model.params, valid, 256)
            }
            HeldOut::Images { valid, adapt } => {
                let mut m = model.clone();
                recalibrate_batch_norm(&mut m, adapt, || {})?;
                accuracy(&m.graph, &m.params, valid, 256)
            }
            HeldOut::Pairs(pairs) => Ok(Encoder::new(model)?.stsb(pairs, 32, false)?.1),
        }
    }

    /// Median batch-1 latency of `model` in milliseconds.
    pub fn latency_ms(&self, model: &Model) -> Result<f64> {
        match self {
            HeldOut::Images { valid, .. } => {
                let (x, _) = valid.batch(&[0], None)?;
                let (g, p) = (&model.graph, &model.params);
                Ok(1e3 * median_time(10, 200, || crate::interp::predict(g, p, &x).map(|_| ()))?)
            }
            HeldOut::Pairs(pairs) => {
                let texts: Vec<&str> = stsb::sentences(&pairs[..pairs.len().min(50)]);
                Encoder::new(model)?.latency_b1(&texts)
            }
        }
    }

    /// A line saying what the slice is (part of the cache key).
    pub fn describe(&self) -> String {
        match self {
            HeldOut::Images { valid, adapt } if adapt.is_empty() => {
                format!("accuracy on {} validation images", valid.len())
            }
            HeldOut::Images { valid, adapt } => format!(
                "accuracy on {} validation images, BatchNorm re-estimated on {} training images",
                valid.len(),
                adapt.iter().map(Batch::len).sum::<usize>()
            ),
            HeldOut::Pairs(p) => format!("STS-B Spearman on {} train pairs", p.len()),
        }
    }
}

/// Score and costs of one model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    pub score: f64,
    pub params: u64,
    pub flops: u64,
    #[serde(default)]
    pub latency_ms: Option<f64>,
}

/// One scanned point: `layer` compressed to ratio `keep` alone, or why it could not be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub layer: String,
    pub keep: f64,
    pub cost: Option<Cost>,
    #[serde(default)]
    pub error: Option<String>,
}

/// A whole scan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scan {
    pub key: String,
    pub method: String,
    pub held_out: String,
    pub layers: Vec<String>,
    pub ratios: Vec<f64>,
    pub baseline: Cost,
    pub points: Vec<Point>,
    /// Seconds spent scanning, summed over runs (a resumed scan adds its part).
    pub seconds: f64,
}

impl Scan {
    /// The point of `layer` at `keep`.
    pub fn point(&self, layer: &str, keep: f64) -> Option<&Point> {
        self.points
            .iter()
            .find(|p| p.layer == layer && (p.keep - keep).abs() < 1e-12)
    }
}

/// A hash of everything a scan's results depend on.
pub fn scan_key(
    model: &Model,
    method: &Method,
    ratios: &[f64],
    held_out: &str,
    latency: bool,
) -> Result<String> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&model.graph)
        .map_err(|e| Error::Data(e.to_string()))?
        .hash(&mut h);
    for (name, t) in model.params.iter() {
        name.hash(&mut h);
        let v: Vec<u8> = t
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        v.hash(&mut h);
    }
    let template =
        serde_json::to_string(&method.pass(&[], 0.5)).map_err(|e| Error::Data(e.to_string()))?;
    (template, format!("{ratios:?}"), held_out, latency).hash(&mut h);
    Ok(format!("{}-{:016x}", method.name(), h.finish()))
}

/// The cost of `model` on `held_out`.
pub fn cost(model: &Model, held_out: &HeldOut, latency: bool) -> Result<Cost> {
    let c = static_cost(model)?;
    Ok(Cost {
        score: held_out.score(model)?,
        params: c.nonzero_params as u64,
        flops: c.flops,
        latency_ms: if latency {
            Some(held_out.latency_ms(model)?)
        } else {
            None
        },
    })
}

/// Writes `scan` to `path` through a temporary name.
fn store(scan: &Scan, path: &Path) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let text = serde_json::to_vec_pretty(scan).map_err(|e| Error::Data(e.to_string()))?;
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// A cached scan at `path` with key `key`, if one is there.
pub fn load_cached(path: &Path, key: &str) -> Option<Scan> {
    let text = std::fs::read(path).ok()?;
    serde_json::from_slice::<Scan>(&text)
        .ok()
        .filter(|s| s.key == key)
}

/// What a scan runs on.
pub struct ScanSpec<'a> {
    pub method: &'a Method,
    pub layers: Vec<String>,
    pub ratios: Vec<f64>,
    pub held_out: &'a HeldOut,
    pub latency: bool,
    /// Where the scan is cached.
    pub cache: &'a Path,
}

/// Runs (or resumes) the scan of `model`; `tick` is called after every point with the
/// number done and the total.
pub fn run(
    model: &Model,
    spec: &ScanSpec,
    ctx: &mut PassCtx,
    mut tick: impl FnMut(usize, usize),
) -> Result<Scan> {
    let key = scan_key(
        model,
        spec.method,
        &spec.ratios,
        &spec.held_out.describe(),
        spec.latency,
    )?;
    let mut scan = match load_cached(spec.cache, &key) {
        Some(s) => s,
        None => Scan {
            key,
            method: spec.method.name().into(),
            held_out: spec.held_out.describe(),
            layers: spec.layers.clone(),
            ratios: spec.ratios.clone(),
            baseline: cost(model, spec.held_out, spec.latency)?,
            points: Vec::new(),
            seconds: 0.0,
        },
    };
    let total = spec.layers.len() * spec.ratios.len();
    let mut done = scan.points.len();
    tick(done, total);
    for layer in &spec.layers {
        for &keep in &spec.ratios {
            if scan.point(layer, keep).is_some() {
                continue;
            }
            let start = Instant::now();
            let point = match compress_one(model, spec.method, layer, keep, ctx) {
                Ok(m) => Point {
                    layer: layer.clone(),
                    keep,
                    cost: Some(cost(&m, spec.held_out, spec.latency)?),
                    error: None,
                },
                Err(e) => Point {
                    layer: layer.clone(),
                    keep,
                    cost: None,
                    error: Some(e.to_string()),
                },
            };
            scan.points.push(point);
            scan.seconds += start.elapsed().as_secs_f64();
            store(&scan, spec.cache)?;
            done += 1;
            tick(done, total);
        }
    }
    Ok(scan)
}

/// `model` with `layer` alone compressed to `keep` by `method` (no fine-tuning).
pub fn compress_one(
    model: &Model,
    method: &Method,
    layer: &str,
    keep: f64,
    ctx: &mut PassCtx,
) -> Result<Model> {
    apply(model, method, &[(layer.to_string(), keep)], ctx)
}

/// `model` with every (layer, keep) of `choice` applied by `method` (no fine-tuning).
pub fn apply(
    model: &Model,
    method: &Method,
    choice: &[(String, f64)],
    ctx: &mut PassCtx,
) -> Result<Model> {
    let recipe = Recipe {
        calibration: None,
        finetune: None,
        passes: method.passes(choice),
    };
    Ok(run_recipe(model.clone(), &recipe, ctx)?.0)
}

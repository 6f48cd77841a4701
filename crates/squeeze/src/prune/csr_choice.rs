//! Whether a sparse Linear layer is faster stored as CSR than dense on this CPU. Where CSR
//! beats the dense kernels depends on the machine (one CPU crosses at 85% sparsity,
//! another at 94% at batch 1 and 97% at batch 256), so `materialize` without a fixed
//! `min_sparsity` times the layer itself: its own weights, dense against CSR, at batch 1
//! and batch 256, in interleaved rounds (medians), and keeps CSR only when it is faster at
//! both. The decision is cached per CPU model, kernel path, thread count, shape and
//! sparsity (in percent) in `csr-choice.json` under `$SQUEEZE_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/squeeze`, else `~/.cache/squeeze`, so one machine decides a layer the
//! same way every time and pays the timing once.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::kinds::linear::linear;
use crate::kinds::sparse_linear::csr_product;
use crate::math::timing::median_time;
use crate::ops::sparse::CsrOwned;

/// Below this sparsity CSR is never faster (every CPU measured so far): no timing.
pub const NEVER_BELOW: f64 = 0.5;
/// Interleaved rounds of dense and CSR timings (the median of the rounds is kept).
const ROUNDS: usize = 5;
const CACHE_FILE: &str = "csr-choice.json";

/// The decision for one layer and the speed-ups (dense time / CSR time) behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub csr: bool,
    pub speedup_b1: f64,
    pub speedup_b256: f64,
    /// Read from the cache rather than timed now.
    #[serde(skip)]
    pub cached: bool,
}

fn cache_path() -> Option<PathBuf> {
    let dir = std::env::var_os("SQUEEZE_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("squeeze")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/squeeze")))?;
    Some(dir.join(CACHE_FILE))
}

/// The cache key of a layer: CPU model, kernel path, threads, shape, sparsity in percent.
pub fn cache_key(rows: usize, cols: usize, sparsity: f64) -> Result<String> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(format!(
        "{} | {} | {threads} threads | {rows}x{cols} | {:.0}%",
        crate::isa::cpu_name(),
        crate::isa::active()?.name(),
        sparsity * 100.0
    ))
}

/// The decisions of this machine, read once per `materialize` and written back once.
#[derive(Default)]
pub struct CsrCache {
    map: BTreeMap<String, Choice>,
    changed: bool,
}

impl CsrCache {
    /// The cache file's decisions (none if it is absent or unreadable).
    pub fn load() -> Self {
        let map = cache_path()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        CsrCache {
            map,
            changed: false,
        }
    }

    /// Best effort, and only if a layer was timed: a cache that cannot be written only
    /// means timing again next time.
    pub fn save(&self) {
        if !self.changed {
            return;
        }
        let Some(p) = cache_path() else { return };
        let Some(dir) = p.parent() else { return };
        let Ok(text) = serde_json::to_vec_pretty(&self.map) else {
            return;
        };
        let tmp = p.with_extension(format!("{}.tmp", std::process::id()));
        if std::fs::create_dir_all(dir).is_ok() && std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, &p);
        }
    }

    /// Whether the `rows`×`cols` weight `w` (row-major, `sparsity` of it zero) is faster
    /// as CSR on this CPU, from the cache or timed now.
    pub fn choose(&mut self, w: &[f32], rows: usize, cols: usize, sparsity: f64) -> Result<Choice> {
        if sparsity < NEVER_BELOW {
            return Ok(Choice {
                csr: false,
                speedup_b1: 0.0,
                speedup_b256: 0.0,
                cached: false,
            });
        }
        let k = cache_key(rows, cols, sparsity)?;
        if let Some(c) = self.map.get(&k) {
            return Ok(Choice {
                cached: true,
                ..c.clone()
            });
        }
        let csr = CsrOwned::from_dense(w, rows, cols);
        let speedup = |m: usize, runs: usize| -> Result<f64> {
            let (dense, sparse) = dense_and_csr_secs(w, &csr, (rows, cols), m, (ROUNDS, runs))?;
            Ok(dense / sparse.max(1e-12))
        };
        let (b1, b256) = (speedup(1, 50)?, speedup(256, 5)?);
        let c = Choice {
            csr: b1 > 1.0 && b256 > 1.0,
            speedup_b1: b1,
            speedup_b256: b256,
            cached: false,
        };
        self.map.insert(k, c.clone());
        self.changed = true;
        Ok(c)
    }
}

/// Median seconds of the Linear kind's dense path and of the CSR kernel on the
/// `rows`×`cols` weight `w` (and its CSR form) at batch `m`: `rounds` interleaved rounds
/// (dense, CSR, dense, …), each the median of `runs` calls after 3 warm-up calls.
pub fn dense_and_csr_secs(
    w: &[f32],
    csr: &CsrOwned,
    (rows, cols): (usize, usize),
    m: usize,
    (rounds, runs): (usize, usize),
) -> Result<(f64, f64)> {
    let dev = Device::Cpu;
    let wt = Tensor::from_vec(w.to_vec(), (rows, cols), &dev)?;
    // inputs of the layer's width with a spread of values (the kernels do not look at them)
    let x: Vec<f32> = (0..m * cols)
        .map(|i| ((i * 7919) % 997) as f32 / 997.0 - 0.5)
        .collect();
    let xt = Tensor::from_vec(x.clone(), (m, cols), &dev)?;
    let (mut dense, mut sparse) = (Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) {
        dense.push(median_time(3, runs, || linear(&xt, &wt, None).map(|_| ()))?);
        sparse.push(median_time(3, runs, || {
            csr_product(csr, &x, m).map(|_| ())
        })?);
    }
    dense.sort_by(f64::total_cmp);
    sparse.sort_by(f64::total_cmp);
    Ok((dense[dense.len() / 2], sparse[sparse.len() / 2]))
}

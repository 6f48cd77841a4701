//! What every benchmark shares: the median of repeated timings, the thread count it
//! ran with, a peer script's JSON answer, and merging entries into a results file.

use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::write_json;

/// The median of `v` (sorted in place).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Sets `entries` in the JSON object of results file `path`, keeping its other keys (a
/// missing file starts empty), and writes it atomically.
pub fn merge_results(
    path: &std::path::Path,
    entries: &serde_json::Map<String, Value>,
) -> Result<()> {
    let mut all: Value = match std::fs::read_to_string(path) {
        Ok(s) => serde_json::from_str(&s)
            .with_context(|| format!("{}: existing results are not JSON", path.display()))?,
        Err(_) => serde_json::json!({}),
    };
    for (k, v) in entries {
        all[k] = v.clone();
    }
    write_json(path, &all)
}

/// Threads the benchmarks run on (recorded beside every timing).
pub fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Runs a Python script; its last stdout line is a JSON object.
pub fn python(py: &str, script: &std::path::Path, args: &[String]) -> Result<Value> {
    let out = Command::new(py)
        .arg(script)
        .args(args)
        .output()
        .with_context(|| format!("running {} with {py}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .with_context(|| format!("{} printed no JSON: {text}", script.display()))
}

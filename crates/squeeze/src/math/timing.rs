//! Wall-clock medians for the measurements that decide or report speed: the evaluator's
//! latencies, the budget search's scan, and `materialize`'s dense-versus-CSR choice.

use std::time::Instant;

use crate::error::Result;

/// Median wall time in seconds of `runs` calls of `f` after `warmup` calls.
pub fn median_time(warmup: usize, runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    let runs = runs.max(1);
    let mut t = Vec::new();
    for _ in 0..runs {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(|a, b| a.total_cmp(b));
    Ok(t[t.len() / 2])
}

//! Choosing one ratio per layer from a scan: a multiple-choice knapsack solved by dynamic
//! programming over the saving (in [`BINS`] steps of the required saving). Each layer
//! either stays as it is or takes one scanned ratio; a ratio's saving is what the scan
//! measured with that layer alone compressed, and its predicted loss the held-out score it
//! cost (never below zero). The savings are taken as additive; the caller checks the
//! applied choice against the budget by the analytic count (or a measurement) and asks for
//! a larger saving if the sum was optimistic.

use super::scan::{Cost, Scan};
use super::Budget;

/// Resolution of the saving axis.
pub const BINS: usize = 2000;

/// The cost a budget reads from a scanned cost.
pub fn amount(budget: &Budget, c: &Cost) -> f64 {
    match budget {
        Budget::Params(_) => c.params as f64,
        Budget::Flops(_) => c.flops as f64,
        Budget::Latency(_) => c.latency_ms.unwrap_or(f64::NAN),
    }
}

/// One layer's options: (keep, saving, loss); the untouched layer is keep 1.
fn options(scan: &Scan, budget: &Budget, layer: &str) -> Vec<(f64, f64, f64)> {
    let base = amount(budget, &scan.baseline);
    let mut out = vec![(1.0, 0.0, 0.0)];
    for p in scan.points.iter().filter(|p| p.layer == layer) {
        if let Some(c) = &p.cost {
            let saving = base - amount(budget, c);
            if saving.is_finite() && saving > 0.0 {
                out.push((p.keep, saving, (scan.baseline.score - c.score).max(0.0)));
            }
        }
    }
    out
}

/// The ratios (layer, keep) of least summed loss whose summed saving reaches `required`
/// (in the budget's unit), layers left untouched omitted; `None` if no choice reaches it.
pub fn choose(scan: &Scan, budget: &Budget, required: f64) -> Option<Vec<(String, f64)>> {
    if required <= 0.0 {
        return Some(Vec::new());
    }
    let bin = |s: f64| (((s / required) * BINS as f64).floor() as usize).min(BINS);
    let inf = f64::INFINITY;
    let mut dp = vec![inf; BINS + 1];
    dp[0] = 0.0;
    // back[layer][state] = (previous state, option index)
    let mut back: Vec<Vec<(usize, usize)>> = Vec::new();
    let opts: Vec<Vec<(f64, f64, f64)>> = scan
        .layers
        .iter()
        .map(|l| options(scan, budget, l))
        .collect();
    for o in &opts {
        let mut next = vec![inf; BINS + 1];
        let mut b = vec![(0, 0); BINS + 1];
        for (s, &v) in dp.iter().enumerate() {
            if v == inf {
                continue;
            }
            for (k, &(_, saving, loss)) in o.iter().enumerate() {
                let t = (s + bin(saving)).min(BINS);
                if v + loss < next[t] {
                    next[t] = v + loss;
                    b[t] = (s, k);
                }
            }
        }
        dp = next;
        back.push(b);
    }
    if dp[BINS] == inf {
        return None;
    }
    let mut state = BINS;
    let mut choice = Vec::new();
    for (i, b) in back.iter().enumerate().rev() {
        let (prev, k) = b[state];
        let keep = opts[i][k].0;
        if keep < 1.0 {
            choice.push((scan.layers[i].clone(), keep));
        }
        state = prev;
    }
    choice.reverse();
    Some(choice)
}

/// The choice of largest summed saving (every layer at its most saving ratio): what a
/// search that cannot meet its budget keeps as the closest candidate.
pub fn closest(scan: &Scan, budget: &Budget) -> Vec<(String, f64)> {
    scan.layers
        .iter()
        .filter_map(|l| {
            options(scan, budget, l)
                .into_iter()
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .filter(|o| o.0 < 1.0)
                .map(|o| (l.clone(), o.0))
        })
        .collect()
}

/// The predicted (summed) loss and saving of `choice`; `None` if a ratio of it was not
/// scanned (a uniform ratio between the scanned ones).
pub fn predicted(scan: &Scan, budget: &Budget, choice: &[(String, f64)]) -> Option<(f64, f64)> {
    let base = amount(budget, &scan.baseline);
    choice.iter().try_fold((0.0, 0.0), |(l, s), (layer, keep)| {
        let c = scan.point(layer, *keep)?.cost?;
        Some((
            l + (scan.baseline.score - c.score).max(0.0),
            s + base - amount(budget, &c),
        ))
    })
}

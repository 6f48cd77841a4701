//! From scores to masks: the lowest-scoring weights go. Magnitude pruning scores |w| (Han
//! et al. 2015); OBD scores saliency, Wanda |w|·‖x‖. The comparison group is a layer, all
//! layers at once (a global threshold), each output row (Wanda), or each run of `m`
//! consecutive weights along a row (N:M, Mishra et al. 2021). Weights already pruned stay
//! pruned: their score is −∞.

use super::{Pattern, Scope, Weight};
use crate::error::{Error, Result};

/// The group within which scores compete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Layer,
    Global,
    Row,
}

impl From<Scope> for Group {
    fn from(s: Scope) -> Self {
        match s {
            Scope::Layer => Group::Layer,
            Scope::Global => Group::Global,
        }
    }
}

/// Scores with the already-pruned entries of `w` forced lowest.
fn masked(scores: &[f32], w: &Weight) -> Vec<f32> {
    scores
        .iter()
        .zip(&w.mask)
        .map(|(&s, &k)| if k == 0 { f32::NEG_INFINITY } else { s })
        .collect()
}

/// Mask (1 = kept) removing the `k` lowest of `scores` (ties broken by position).
pub fn drop_lowest(scores: &[f32], k: usize) -> Vec<u8> {
    let mut mask = vec![1u8; scores.len()];
    if k == 0 {
        return mask;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    let k = k.min(scores.len());
    let cmp = |a: &usize, b: &usize| scores[*a].total_cmp(&scores[*b]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, cmp);
    }
    for &i in &idx[..k] {
        mask[i] = 0;
    }
    mask
}

fn count(n: usize, s: f64) -> usize {
    (s * n as f64).round() as usize
}

/// Keeps the `n` highest of every `m` consecutive scores of each row.
fn n_of_m(scores: &[f32], row_len: usize, n: usize, m: usize, name: &str) -> Result<Vec<u8>> {
    if !row_len.is_multiple_of(m) {
        return Err(Error::Graph(format!(
            "`{name}`: rows of {row_len} weights do not split into groups of m = {m}"
        )));
    }
    let mut mask = Vec::with_capacity(scores.len());
    for g in scores.chunks(m) {
        mask.extend(drop_lowest(g, m - n));
    }
    Ok(mask)
}

/// New masks of `weights` from their `scores` (one vector per weight, same length):
/// `pattern` within `group`. Returns the masks in order.
pub fn masks(
    weights: &[Weight],
    scores: &[Vec<f32>],
    pattern: Pattern,
    group: Group,
) -> Result<Vec<Vec<u8>>> {
    let scores: Vec<Vec<f32>> = weights
        .iter()
        .zip(scores)
        .map(|(w, s)| masked(s, w))
        .collect();
    match (pattern, group) {
        (Pattern::NofM { n, m }, _) => weights
            .iter()
            .zip(&scores)
            .map(|(w, s)| n_of_m(s, w.rows().1, n, m, &w.name))
            .collect(),
        (Pattern::Fraction(f), Group::Layer) => Ok(scores
            .iter()
            .map(|s| drop_lowest(s, count(s.len(), f)))
            .collect()),
        (Pattern::Fraction(f), Group::Row) => Ok(weights
            .iter()
            .zip(&scores)
            .map(|(w, s)| {
                let len = w.rows().1.max(1);
                s.chunks(len)
                    .flat_map(|r| drop_lowest(r, count(r.len(), f)))
                    .collect()
            })
            .collect()),
        (Pattern::Fraction(f), Group::Global) => {
            let all: Vec<f32> = scores.iter().flatten().copied().collect();
            let flat = drop_lowest(&all, count(all.len(), f));
            let mut out = Vec::new();
            let mut at = 0;
            for s in &scores {
                out.push(flat[at..at + s.len()].to_vec());
                at += s.len();
            }
            Ok(out)
        }
    }
}

/// |w| of every entry.
pub fn magnitudes(w: &Weight) -> Vec<f32> {
    w.values.iter().map(|v| v.abs()).collect()
}

/// Magnitude pruning of `weights` in place: `pattern` within `group`.
pub fn magnitude(weights: &mut [Weight], pattern: Pattern, group: Group) -> Result<()> {
    let scores: Vec<Vec<f32>> = weights.iter().map(magnitudes).collect();
    let new = masks(weights, &scores, pattern, group)?;
    for (w, m) in weights.iter_mut().zip(new) {
        w.mask = m;
    }
    Ok(())
}

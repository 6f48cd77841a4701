//! The STS Benchmark (Cer et al. 2017): sentence pairs with human similarity scores 0–5.
//! A sentence encoder is scored by the Spearman (and Pearson) correlation between the
//! cosine similarity of its two embeddings and the gold score, ×100 as papers report.
//! The files are tab-separated with columns 5, 6, 7 = score, sentence 1, sentence 2; some
//! lines carry extra columns after those, which are ignored.

use std::path::Path;

use crate::error::{Error, Result};

/// One scored sentence pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub score: f64,
    pub a: String,
    pub b: String,
}

/// Fewest pairs a correlation is computed on.
pub const MIN_PAIRS: usize = 3;

/// Reads an STS-B file; a malformed line is an error naming the file and line.
pub fn read(path: &Path) -> Result<Vec<Pair>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let pairs = parse(&text).map_err(|msg| Error::file(path, msg))?;
    if pairs.len() < MIN_PAIRS {
        return Err(Error::file(
            path,
            format!(
                "{} sentence pair(s): a rank correlation needs at least {MIN_PAIRS} \
                 (expected STS-B tab-separated lines)",
                pairs.len()
            ),
        ));
    }
    if pairs.iter().all(|p| p.score == pairs[0].score) {
        return Err(Error::file(
            path,
            "every pair has the same gold score: a correlation with it is undefined",
        ));
    }
    Ok(pairs)
}

/// Parses STS-B text; the error names the 1-based line.
pub fn parse(text: &str) -> std::result::Result<Vec<Pair>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() < 7 {
            return Err(format!(
                "line {}: {} tab-separated columns, expected at least 7 (…, score, sentence 1, sentence 2)",
                i + 1,
                cols.len()
            ));
        }
        let score: f64 = cols[4]
            .trim()
            .parse()
            .map_err(|_| format!("line {}: column 5 {:?} is not a score", i + 1, cols[4]))?;
        if !(0.0..=5.0).contains(&score) {
            return Err(format!("line {}: score {score} outside 0–5", i + 1));
        }
        out.push(Pair {
            score,
            a: cols[5].to_string(),
            b: cols[6].to_string(),
        });
    }
    Ok(out)
}

/// Every sentence of `pairs` in file order: a₀, b₀, a₁, b₁, …
pub fn sentences(pairs: &[Pair]) -> Vec<&str> {
    pairs
        .iter()
        .flat_map(|p| [p.a.as_str(), p.b.as_str()])
        .collect()
}

/// Pearson correlation of two equally long series.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    sxy / (sxx * syy).sqrt()
}

/// Ranks 1..n with ties given their average rank (as scipy's `rankdata`).
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for k in &idx[i..=j] {
            r[*k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman rank correlation (Pearson of the tie-averaged ranks).
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (*x as f64, *y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa.sqrt() * bb.sqrt()).max(1e-30)
}

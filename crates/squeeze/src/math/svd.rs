//! Thin singular value decomposition `A = U Σ Vᵀ` of a dense row-major matrix in f64, by
//! one-sided Jacobi rotations (Hestenes 1958; Demmel & Veselić 1992): pairs of columns are
//! rotated until every pair is orthogonal, the column norms are then the singular values.
//! It works on the side with fewer columns, so its cost is about `sweeps · n² · m` for an
//! `m × n` matrix with `n ≤ m` (all-MiniLM's FFN weight, 1536 × 384, takes a second or
//! two). Written here rather than taken from a linear-algebra crate: it is short, it is
//! accurate to the last bits for the small singular values that truncation discards, and
//! it keeps the build small. The low-rank factorization (`crate::lowrank`) reads it.

use super::linalg::dot;
use crate::error::{Error, Result};

/// Relative tolerance below which a column pair counts as orthogonal.
const ORTHOGONAL: f64 = 1e-12;
/// Sweeps after which the rotation stops even if a pair is still above [`ORTHOGONAL`].
const MAX_SWEEPS: usize = 60;

/// The thin SVD of an `rows × cols` matrix: `k = min(rows, cols)` singular triples in
/// descending order of `s`; `u[i]` has `rows` entries, `v[i]` has `cols`.
#[derive(Debug, Clone)]
pub struct Svd {
    pub rows: usize,
    pub cols: usize,
    pub s: Vec<f64>,
    pub u: Vec<Vec<f64>>,
    pub v: Vec<Vec<f64>>,
}

impl Svd {
    /// Σ σᵢ² over all triples (= ‖A‖²_F).
    pub fn energy(&self) -> f64 {
        self.s.iter().map(|s| s * s).sum()
    }

    /// Σ σᵢ² over the triples a rank-`r` truncation discards (= ‖A − A_r‖²_F).
    pub fn discarded(&self, r: usize) -> f64 {
        self.s.iter().skip(r).map(|s| s * s).sum()
    }

    /// The smallest rank that keeps at least `fraction` of the energy (at least 1).
    pub fn rank_for_energy(&self, fraction: f64) -> usize {
        let total = self.energy();
        let mut kept = 0.0;
        for (i, s) in self.s.iter().enumerate() {
            kept += s * s;
            if kept >= fraction * total * (1.0 - 1e-12) {
                return i + 1;
            }
        }
        self.s.len().max(1)
    }

    /// The rank-`r` approximation `Σ_{i<r} σᵢ uᵢ vᵢᵀ`, row-major.
    pub fn reconstruct(&self, r: usize) -> Vec<f64> {
        let mut a = vec![0.0; self.rows * self.cols];
        for i in 0..r.min(self.s.len()) {
            for (row, ui) in a.chunks_exact_mut(self.cols).zip(&self.u[i]) {
                let f = self.s[i] * ui;
                for (x, vi) in row.iter_mut().zip(&self.v[i]) {
                    *x += f * vi;
                }
            }
        }
        a
    }
}

/// Vectors of equal length (matrix columns, or rotation rows).
type Columns = Vec<Vec<f64>>;

/// Rotates the pair (x, y) ← (c·x − s·y, s·x + c·y).
fn rotate(x: &mut [f64], y: &mut [f64], c: f64, s: f64) {
    for (a, b) in x.iter_mut().zip(y.iter_mut()) {
        let (p, q) = (*a, *b);
        *a = c * p - s * q;
        *b = s * p + c * q;
    }
}

/// Two distinct rows of `m`, mutably.
fn pair(m: &mut [Vec<f64>], i: usize, j: usize) -> (&mut Vec<f64>, &mut Vec<f64>) {
    let (lo, hi) = m.split_at_mut(j);
    (&mut lo[i], &mut hi[0])
}

/// One-sided Jacobi on the columns `cols[j]` (each of length m): returns the rotated
/// columns (orthogonal to each other) and the accumulated rotation `v[j]` (length n).
fn orthogonalize(mut cols: Columns) -> Result<(Columns, Columns)> {
    let n = cols.len();
    let mut v: Vec<Vec<f64>> = (0..n)
        .map(|j| (0..n).map(|i| f64::from(u8::from(i == j))).collect())
        .collect();
    for _ in 0..MAX_SWEEPS {
        let mut rotated = false;
        let norms: Vec<f64> = cols.iter().map(|c| dot(c, c)).collect();
        let mut norms = norms;
        for p in 0..n {
            for q in p + 1..n {
                let (a, b) = (norms[p], norms[q]);
                let g = dot(&cols[p], &cols[q]);
                if g == 0.0 || g.abs() <= ORTHOGONAL * (a * b).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (b - a) / (2.0 * g);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                let (x, y) = pair(&mut cols, p, q);
                rotate(x, y, c, s);
                let (x, y) = pair(&mut v, p, q);
                rotate(x, y, c, s);
                norms[p] = a - t * g;
                norms[q] = b + t * g;
            }
        }
        if !rotated {
            return Ok((cols, v));
        }
    }
    if cols.iter().flatten().all(|x| x.is_finite()) {
        return Ok((cols, v));
    }
    Err(Error::Data(
        "SVD: the matrix holds values that are not finite".into(),
    ))
}

/// The thin SVD of `a` (`rows × cols`, row-major).
pub fn svd(a: &[f64], rows: usize, cols: usize) -> Result<Svd> {
    if a.len() != rows * cols || rows == 0 || cols == 0 {
        return Err(Error::Data(format!(
            "SVD: {} values do not make a {rows} × {cols} matrix",
            a.len()
        )));
    }
    if a.iter().any(|x| !x.is_finite()) {
        return Err(Error::Data(
            "SVD: the matrix holds values that are not finite".into(),
        ));
    }
    // rotate the columns of the orientation with fewer columns: Aᵀ's columns are A's rows
    let wide = cols > rows;
    let (m, n) = if wide { (cols, rows) } else { (rows, cols) };
    let columns: Vec<Vec<f64>> = if wide {
        a.chunks_exact(cols).map(|r| r.to_vec()).collect()
    } else {
        (0..cols)
            .map(|j| (0..rows).map(|i| a[i * cols + j]).collect())
            .collect()
    };
    let (cols_out, rot) = orthogonalize(columns)?;
    let mut triples: Vec<(f64, Vec<f64>, Vec<f64>)> = cols_out
        .into_iter()
        .zip(rot)
        .map(|(c, r)| {
            let s = dot(&c, &c).sqrt();
            let u = if s > 0.0 {
                c.iter().map(|x| x / s).collect()
            } else {
                vec![0.0; m]
            };
            (s, u, r)
        })
        .collect();
    triples.sort_by(|x, y| y.0.total_cmp(&x.0));
    debug_assert_eq!(triples.len(), n);
    let mut out = Svd {
        rows,
        cols,
        s: Vec::with_capacity(n),
        u: Vec::with_capacity(n),
        v: Vec::with_capacity(n),
    };
    for (s, left, right) in triples {
        out.s.push(s);
        // for Aᵀ = U' Σ V'ᵀ, A = V' Σ U'ᵀ: the roles of the two sides swap
        let (u, v) = if wide { (right, left) } else { (left, right) };
        out.u.push(u);
        out.v.push(v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: usize, cols: usize, seed: u64) -> Vec<f64> {
        let mut x = seed;
        (0..rows * cols)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 11) as f64 / (1u64 << 53) as f64) - 0.5
            })
            .collect()
    }

    #[test]
    fn full_rank_reconstructs_both_orientations() {
        for (r, c) in [(7, 4), (4, 7), (5, 5), (1, 3)] {
            let a = matrix(r, c, 3);
            let d = svd(&a, r, c).unwrap();
            let back = d.reconstruct(r.min(c));
            let err = a
                .iter()
                .zip(&back)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-12, "{r}×{c}: max error {err}");
            assert!(d.s.windows(2).all(|w| w[0] >= w[1]));
        }
    }

    #[test]
    fn singular_vectors_are_orthonormal() {
        let d = svd(&matrix(9, 6, 5), 9, 6).unwrap();
        for i in 0..6 {
            for j in 0..6 {
                let want = f64::from(u8::from(i == j));
                assert!((dot(&d.u[i], &d.u[j]) - want).abs() < 1e-12);
                assert!((dot(&d.v[i], &d.v[j]) - want).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn refuses_non_finite_and_wrong_sizes() {
        assert!(svd(&[1.0, f64::NAN], 1, 2).is_err());
        assert!(svd(&[1.0, 2.0, 3.0], 2, 2).is_err());
    }
}

//! Dense symmetric linear algebra in f64 for the OBS-family methods (SparseGPT here, GPTQ
//! later): the Cholesky factor of a Hessian `H = XᵀX + λI` and the upper Cholesky factor
//! `U` of its inverse (`H⁻¹ = UᵀU`), whose rows carry the OBS weight updates. Row-major
//! `n × n` slices; loops run over contiguous rows so they vectorize. Plain code rather than
//! a linear-algebra crate: the largest matrix is 1536² (all-MiniLM's FFN input), factored
//! in about a second.

use crate::error::{Error, Result};

/// Lower Cholesky factor `L` of the symmetric positive-definite `a` (`a = L Lᵀ`).
pub fn cholesky(a: &[f64], n: usize) -> Result<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for j in 0..n {
        let lj = &l[j * n..j * n + j].to_vec();
        let d = a[j * n + j] - dot(lj, lj);
        if d <= 0.0 || !d.is_finite() {
            return Err(Error::Data(format!(
                "the Hessian is not positive definite (pivot {j} = {d:.3e}); raise `damp`"
            )));
        }
        let djj = d.sqrt();
        l[j * n + j] = djj;
        for i in j + 1..n {
            let s = a[i * n + j] - dot(&l[i * n..i * n + j], lj);
            l[i * n + j] = s / djj;
        }
    }
    Ok(l)
}

/// Dot product in four independent lanes (vectorizes without target features).
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..4 {
            acc[k] += x[k] * y[k];
        }
    }
    let tail: f64 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f64>() + tail
}

/// Columns of `L⁻¹` for lower-triangular `l`, returned transposed: row `j` of the result
/// is column `j` of the inverse (zero above the diagonal: entries `k < j` vanish).
fn lower_inverse_t(l: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * n];
    for j in 0..n {
        let x = &mut out[j * n..(j + 1) * n];
        x[j] = 1.0 / l[j * n + j];
        for i in j + 1..n {
            let s = dot(&l[i * n + j..i * n + i], &x[j..i]);
            x[i] = -s / l[i * n + i];
        }
    }
    out
}

/// The inverse of the symmetric positive-definite `a`.
pub fn spd_inverse(a: &[f64], n: usize) -> Result<Vec<f64>> {
    let l = cholesky(a, n)?;
    let c = lower_inverse_t(&l, n); // row a = column a of L⁻¹
    let mut inv = vec![0.0; n * n];
    for a_ in 0..n {
        for b in a_..n {
            // (L⁻ᵀ L⁻¹)[a][b] = Σ_k L⁻¹[k][a] L⁻¹[k][b], nonzero for k ≥ max(a, b) = b
            let v = dot(&c[a_ * n + b..(a_ + 1) * n], &c[b * n + b..(b + 1) * n]);
            inv[a_ * n + b] = v;
            inv[b * n + a_] = v;
        }
    }
    Ok(inv)
}

/// Upper-triangular `U` with `a⁻¹ = UᵀU` (row-major; zero below the diagonal).
pub fn inverse_upper_cholesky(a: &[f64], n: usize) -> Result<Vec<f64>> {
    let inv = spd_inverse(a, n)?;
    let l = cholesky(&inv, n)?;
    let mut u = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            u[j * n + i] = l[i * n + j];
        }
    }
    Ok(u)
}

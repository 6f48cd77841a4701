//! The compressed-sparse-rows (CSR) format of a pruned weight `[rows, cols]`: row
//! pointers, column indices and values, borrowed ([`Csr`], what the kernels of
//! `crate::ops::sparse` read) or owned ([`CsrOwned`], built from a dense matrix), with
//! the structural check a loader runs and the dense reconstruction.

use crate::error::{Error, Result};

/// A CSR matrix `[rows, cols]`: row r's non-zeros are `values[indptr[r]..indptr[r+1]]` at
/// columns `indices[..]`.
#[derive(Debug, Clone, Copy)]
pub struct Csr<'a> {
    pub rows: usize,
    pub cols: usize,
    pub indptr: &'a [u32],
    pub indices: &'a [u32],
    pub values: &'a [f32],
}

impl Csr<'_> {
    /// Checks the structure: `rows + 1` non-decreasing row pointers ending at the number of
    /// values, and every column index in range.
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Graph(format!("sparse matrix: {m}")));
        if self.indptr.len() != self.rows + 1 || self.indptr.first() != Some(&0) {
            return bad(format!(
                "{} row pointers for {} rows (first must be 0)",
                self.indptr.len(),
                self.rows
            ));
        }
        if self.indptr.windows(2).any(|w| w[1] < w[0]) {
            return bad("row pointers decrease".into());
        }
        let nnz = *self.indptr.last().expect("rows + 1 ≥ 1") as usize;
        if nnz != self.values.len() || nnz != self.indices.len() {
            return bad(format!(
                "row pointers end at {nnz}, but there are {} values and {} indices",
                self.values.len(),
                self.indices.len()
            ));
        }
        // a max over all indices vectorizes (this runs on every forward)
        if let Some(c) = self
            .indices
            .iter()
            .copied()
            .max()
            .filter(|&c| c as usize >= self.cols)
        {
            return bad(format!("column {c} outside {} columns", self.cols));
        }
        Ok(())
    }

    /// The dense row-major matrix.
    pub fn to_dense(&self) -> Vec<f32> {
        let mut w = vec![0.0; self.rows * self.cols];
        for r in 0..self.rows {
            for j in self.indptr[r] as usize..self.indptr[r + 1] as usize {
                w[r * self.cols + self.indices[j] as usize] = self.values[j];
            }
        }
        w
    }
}

/// An owned CSR matrix (what [`CsrOwned::from_dense`] builds); [`CsrOwned::view`] borrows
/// it as a [`Csr`].
#[derive(Debug, Clone, PartialEq)]
pub struct CsrOwned {
    pub rows: usize,
    pub cols: usize,
    pub indptr: Vec<u32>,
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

impl CsrOwned {
    /// The CSR form of a dense row-major `[rows, cols]` matrix (zeros dropped).
    pub fn from_dense(w: &[f32], rows: usize, cols: usize) -> Self {
        let (mut indptr, mut indices, mut values) = (vec![0u32], Vec::new(), Vec::new());
        for r in w.chunks(cols.max(1)).take(rows) {
            for (c, v) in r.iter().enumerate().filter(|(_, v)| **v != 0.0) {
                indices.push(c as u32);
                values.push(*v);
            }
            indptr.push(values.len() as u32);
        }
        CsrOwned {
            rows,
            cols,
            indptr,
            indices,
            values,
        }
    }

    pub fn view(&self) -> Csr<'_> {
        Csr {
            rows: self.rows,
            cols: self.cols,
            indptr: &self.indptr,
            indices: &self.indices,
            values: &self.values,
        }
    }
}

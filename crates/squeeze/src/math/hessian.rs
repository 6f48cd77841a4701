//! Second-order statistics shared by the OBS family (Hassibi & Stork 1993): a layer's
//! input statistics `XᵀX` (the Hessian of its squared output error) accumulated over
//! calibration batches, and the lazy block update of SparseGPT (Frantar & Alistarh 2023)
//! and GPTQ (Frantar et al. 2022) that spreads the errors of a block of columns over the
//! columns after it. Pruning and quantization both read this module.

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

/// Input statistics of one layer accumulated over calibration batches.
#[derive(Debug, Clone)]
pub struct InputStats {
    pub cols: usize,
    /// Rows (tokens or examples) seen.
    pub rows: usize,
    /// `XᵀX` (row-major `cols × cols`), when a Hessian is needed.
    pub xtx: Option<Vec<f64>>,
    /// `Σ x_j²` per column.
    pub sq: Vec<f64>,
}

impl InputStats {
    pub fn new(cols: usize, hessian: bool) -> Self {
        InputStats {
            cols,
            rows: 0,
            xtx: hessian.then(|| vec![0.0; cols * cols]),
            sq: vec![0.0; cols],
        }
    }

    /// Adds the rows of `x` `[rows, cols]` (f32); `XᵀX` of the batch is one matrix
    /// product, accumulated in f64.
    pub fn add(&mut self, x: &Tensor) -> Result<()> {
        let (rows, c) = x.dims2()?;
        if c != self.cols {
            return Err(Error::Data(format!(
                "calibration inputs have {c} features, expected {}",
                self.cols
            )));
        }
        self.rows += rows;
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        let sq: Vec<f32> = x.sqr()?.sum(0)?.to_vec1()?;
        for (s, v) in self.sq.iter_mut().zip(sq) {
            *s += v as f64;
        }
        if let Some(h) = self.xtx.as_mut() {
            let b: Vec<f32> = x.t()?.matmul(&x)?.flatten_all()?.to_vec1()?;
            for (hv, bv) in h.iter_mut().zip(b) {
                *hv += bv as f64;
            }
        }
        Ok(())
    }

    /// The symmetric Hessian `XᵀX / rows`.
    pub fn hessian(&self) -> Result<Vec<f64>> {
        let h = self
            .xtx
            .as_ref()
            .ok_or_else(|| Error::Data("no Hessian was accumulated".into()))?;
        let n = self.rows.max(1) as f64;
        Ok(h.iter().map(|v| v / n).collect())
    }
}

/// The lazy OBS update shared by SparseGPT and GPTQ: the errors `err` `[rows, i2 − i1]`
/// of block columns `i1..i2`, spread over the columns after the block through the rows
/// of the upper Cholesky factor `u` of H⁻¹.
pub fn lazy_update(
    wv: &mut [f64],
    u: &[f64],
    err: &[f64],
    (rows, cols): (usize, usize),
    (i1, i2): (usize, usize),
) {
    let count = i2 - i1;
    for r in 0..rows {
        for k in 0..count {
            let e = err[r * count + k];
            if e == 0.0 {
                continue;
            }
            let ur = &u[(i1 + k) * cols + i2..(i1 + k + 1) * cols];
            for (x, uv) in wv[r * cols + i2..(r + 1) * cols].iter_mut().zip(ur) {
                *x -= e * uv;
            }
        }
    }
}

//! Embedding-table lookups: rows of a table picked by token ids (the reference,
//! `index_select`, whose backward candle builds densely; and the training op, one autograd
//! node that scatters the gradient into the picked rows), and the position rows shared by
//! every sample.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use super::{cpu_tensor, op_f32s, slice_of};
use crate::error::{Error, Result};

/// Rows of `table` [num, dim] picked by `ids` [N, L] → [N, L, dim].
pub fn lookup_reference(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (n, l) = ids.dims2()?;
    let num = table.dim(0)?;
    let max = ids
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::U32)?
        .to_scalar::<u32>()?;
    if max as usize >= num {
        return Err(Error::Data(format!(
            "token id {max} is outside the embedding table of {num} rows"
        )));
    }
    let rows = table.index_select(&ids.flatten_all()?, 0)?; // [N·L, dim]
    Ok(rows.reshape((n, l, table.dim(1)?))?)
}

/// Rows 0..L of `table`, the same for every sample: [N, L, dim].
pub fn positions(table: &Tensor, n: usize, l: usize) -> Result<Tensor> {
    let num = table.dim(0)?;
    if l > num {
        return Err(Error::Data(format!(
            "a sequence of {l} tokens is longer than the model's {num} positions"
        )));
    }
    let rows = table.narrow(0, 0, l)?.unsqueeze(0)?; // [1, L, dim]
    Ok(rows.broadcast_as((n, l, table.dim(1)?))?)
}

/// Rows of an embedding table picked by token ids (a constant of the op).
struct LookupOp {
    ids: Vec<u32>,
}

impl CustomOp1 for LookupOp {
    fn name(&self) -> &'static str {
        "squeeze-lookup"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (num, dim) = l.shape().dims2()?;
        let table = slice_of::<f32>(s, l)?;
        let mut out = Vec::with_capacity(self.ids.len() * dim);
        for &id in &self.ids {
            let r = id as usize;
            if r >= num {
                candle_core::bail!("token id {r} is outside the embedding table of {num} rows")
            }
            out.extend_from_slice(&table[r * dim..(r + 1) * dim]);
        }
        Ok((CpuStorage::F32(out), Shape::from((self.ids.len(), dim))))
    }

    /// The table's gradient: each looked-up row's dY added into its row, zeros elsewhere
    /// (one buffer; candle's index_select backward copies a zeroed table once more).
    fn bwd(
        &self,
        table: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (num, dim) = table.dims2()?;
        let dys = op_f32s(dy)?;
        let mut g = vec![0f32; num * dim];
        for (&id, row) in self.ids.iter().zip(dys.chunks_exact(dim)) {
            let r = id as usize;
            g[r * dim..(r + 1) * dim]
                .iter_mut()
                .zip(row)
                .for_each(|(a, b)| *a += b);
        }
        Ok(Some(cpu_tensor(g, table.shape())?))
    }
}

/// Rows of `table` [num, dim] (f32) picked by `ids` [N, L] → [N, L, dim], differentiable
/// in the table.
pub fn lookup_train(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (n, l) = ids.dims2()?;
    let dim = table.dim(1)?;
    let ids: Vec<u32> = ids
        .flatten_all()?
        .to_dtype(candle_core::DType::U32)?
        .to_vec1()?;
    let rows = table.contiguous()?.apply_op1(LookupOp { ids })?;
    Ok(rows.reshape((n, l, dim))?)
}

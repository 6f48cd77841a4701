//! A materialized unstructured-sparse fully connected layer: `y = x Wᵀ + b` with W
//! `[out, in]` stored in compressed sparse rows — `values` `[nnz]` (f32), `indices`
//! `[nnz]` (u32 column of each value), `indptr` `[out + 1]` (u32 row starts) — and
//! `bias` `[out]`. What `materialize` makes of a masked Linear whose sparsity makes CSR
//! pay. Inference runs the CSR kernels of `crate::ops::sparse`; any other caller (f64,
//! gradients through the input) gets the dense reconstruction, which is also the
//! reference. Not trainable: fine-tune the masked model before materializing. Coupling:
//! like Linear (columns consume the input's channels, rows make a new space), but a
//! channel cut of a sparse matrix is not supported, so both sides are pinned.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::couple::{Coupler, Seg};
use super::Dtype;
use super::{inference, with_last, Inputs, LayerKind, NodeRun, TensorRole, TensorSpec};
use super::{Node, Op};
use crate::error::Result;
use crate::math::csr::{Csr, CsrOwned};
use crate::onnx::{blocks, Lower};
use crate::ops::sparse;
use crate::ops::with_cpu;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparseLinear {
    pub in_features: usize,
    pub out_features: usize,
    /// Stored non-zeros.
    pub nnz: usize,
    pub bias: bool,
}

impl LayerKind for SparseLinear {
    /// Written dense, its zeros included (ONNX's sparse tensors are not run by ONNX
    /// Runtime's `MatMul`).
    fn onnx(&self, cx: &mut Lower) -> Result<String> {
        let (_, values) = cx.values("values")?;
        let (_, indices) = cx.values("indices")?;
        let (_, indptr) = cx.values("indptr")?;
        let (rows, cols) = (self.out_features, self.in_features);
        let mut w = vec![0f32; rows * cols];
        for r in 0..rows {
            let (a, b) = (indptr[r] as usize, indptr[r + 1] as usize);
            for k in a..b.min(values.len()) {
                let c = indices[k] as usize;
                if c >= cols {
                    return Err(crate::onnx::refuse(format!(
                        "column index {c} outside {cols} inputs"
                    )));
                }
                w[r * cols + c] = values[k];
            }
        }
        cx.note("CSR weight written dense with its zeros");
        blocks::linear_f32(cx, &w, (rows, cols), self.bias)
    }
    fn name(&self) -> &'static str {
        "sparse_linear"
    }
    fn inputs(&self) -> Inputs {
        Inputs::Values
    }
    fn out_shape(&self, ins: &[&[usize]]) -> std::result::Result<Vec<usize>, String> {
        if self.nnz > self.in_features.saturating_mul(self.out_features) {
            return Err(format!(
                "`nnz` {} exceeds {}×{}",
                self.nnz, self.out_features, self.in_features
            ));
        }
        super::rows_shape(ins, self.in_features, self.out_features)
    }
    fn tensors(&self) -> Vec<TensorSpec> {
        let u32_of = |name: &str, n: usize| TensorSpec {
            dtype: Dtype::U32,
            ..TensorSpec::f32(name, vec![n], TensorRole::Index)
        };
        // the values stand for the whole out×in weight (its logical parameters, as for a
        // dense Linear); only the non-zeros are stored
        let values = TensorSpec {
            logical: vec![self.out_features, self.in_features],
            ..TensorSpec::f32("values", vec![self.nnz], TensorRole::Packed)
        };
        let mut t = vec![
            values,
            u32_of("indices", self.nnz),
            u32_of("indptr", self.out_features.saturating_add(1)),
        ];
        if self.bias {
            t.push(TensorSpec::param("bias", vec![self.out_features]));
        }
        t
    }
    fn macs(&self, ins: &[&[usize]], out: &[usize]) -> u64 {
        // one multiply-accumulate per stored non-zero and input row
        let rows = super::numel(out) / self.out_features.max(1) as u64;
        let _ = ins;
        rows.saturating_mul(self.nnz as u64)
    }
    fn couple(&self, cx: &mut Coupler, node: &Node, ins: &[Vec<Seg>], _: &[&[usize]]) -> Vec<Seg> {
        let why = "a sparse_linear (CSR) layer is not channel-pruned";
        super::pinned_rows(cx, node, ins, (self.out_features, self.bias), why)
    }
    fn forward(&self, cx: &mut NodeRun) -> Result<Tensor> {
        let x = cx.x();
        let dims = x.dims().to_vec();
        let x2 = x.flatten_to(dims.len().saturating_sub(2))?; // [M, in]
        let m = x2.dim(0)?;
        let (values, indices, indptr) = (
            cx.param("values")?,
            cx.param("indices")?,
            cx.param("indptr")?,
        );
        let b = if self.bias {
            Some(cx.param("bias")?)
        } else {
            None
        };
        let mut all = vec![&x2, values];
        all.extend(b);
        if inference(&all) {
            // the kernel's output with the bias added in place: one tensor, no extra op
            let xs = with_cpu::<f32, _>(&x2, |s| s.to_vec())?;
            let mut y = self.with_csr(values, indices, indptr, |a| sparse::spmm(a, &xs, m))??;
            if let Some(b) = b {
                with_cpu::<f32, _>(b, |bs| {
                    for row in y.chunks_mut(self.out_features) {
                        row.iter_mut().zip(bs).for_each(|(v, b)| *v += b);
                    }
                })?;
            }
            let y = Tensor::from_vec(y, (m, self.out_features), x.device())?;
            return Ok(y.reshape(with_last(&dims, self.out_features))?);
        }
        let y = {
            let dense = self.with_csr(values, indices, indptr, |a| {
                a.check().map(|()| a.to_dense())
            })??;
            let w = Tensor::from_vec(dense, (self.out_features, self.in_features), x.device())?
                .to_dtype(x2.dtype())?;
            x2.matmul(&w.t()?)?
        };
        let y = match b {
            Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?)?,
            None => y,
        };
        Ok(y.reshape(with_last(&dims, self.out_features))?)
    }
    fn refreshed(&self, dims: &dyn Fn(&str) -> Option<Vec<usize>>, _: &[&[usize]]) -> Option<Op> {
        let nnz = dims("values")?[0];
        let out = dims("indptr")?[0].checked_sub(1)?;
        Some(Op::SparseLinear(SparseLinear {
            nnz,
            out_features: out,
            ..self.clone()
        }))
    }
}

impl SparseLinear {
    /// Runs `f` on the checked CSR view of the node's tensors.
    fn with_csr<R>(
        &self,
        values: &Tensor,
        indices: &Tensor,
        indptr: &Tensor,
        f: impl FnOnce(&Csr) -> R,
    ) -> Result<R> {
        let values = values.to_dtype(DType::F32)?;
        with_cpu::<f32, _>(&values, |v| {
            with_cpu::<u32, _>(indices, |ix| {
                with_cpu::<u32, _>(indptr, |ip| {
                    let a = Csr {
                        rows: self.out_features,
                        cols: self.in_features,
                        indptr: ip,
                        indices: ix,
                        values: v,
                    };
                    f(&a)
                })
            })
        })
        .and_then(|r| r)
        .and_then(|r| r)
    }
}

pub(crate) fn example() -> super::Example {
    use candle_core::Device;
    // a 5×6 matrix with rows of 0, 1, 2, 3 and 6 non-zeros
    let dense: Vec<f32> = (0..30)
        .map(|i| {
            let (r, c) = (i / 6, i % 6);
            if c < [0, 1, 2, 3, 6][r] {
                0.1 * (i as f32) - 1.0
            } else {
                0.0
            }
        })
        .collect();
    let CsrOwned {
        indptr,
        indices,
        values,
        ..
    } = CsrOwned::from_dense(&dense, 5, 6);
    let nnz = values.len();
    let dev = Device::Cpu;
    super::Example {
        op: Op::SparseLinear(SparseLinear {
            in_features: 6,
            out_features: 5,
            nnz,
            bias: true,
        }),
        inputs: vec![vec![6]],
        tensors: vec![
            (
                "indices",
                Tensor::from_vec(indices, nnz, &dev).expect("sizes match"),
            ),
            (
                "indptr",
                Tensor::from_vec(indptr, 6, &dev).expect("sizes match"),
            ),
        ],
    }
}

/// The kind's inference product on a CSR weight, as its forward runs it on f32 inputs:
/// `[m, out]` from `x` `[m, in]` (row-major), without the bias.
pub fn csr_product(w: &CsrOwned, x: &[f32], m: usize) -> Result<Vec<f32>> {
    sparse::spmm(&w.view(), x, m)
}

//! Post-training quantization: GPTQ ([`gptq`], Frantar et al. 2022), the calibration of
//! static activation scales ([`calibrate`]) and the non-zero count of quantized weights.
//! The stored format ([`layout`]) and round-to-nearest quantization ([`QWeight`]) are
//! shared maths (`crate::math`); the activation quantizer of the int8 kernels is a kernel
//! (`crate::ops::qgemm::quantize`). A quantized weight is a
//! [`QWeight`]: packed codes, scales and optional zero points in the layout it names; the
//! `qlinear` and `qembedding` kinds hold its three tensors, and the `quantize` pass maps
//! selected Linear / Embedding nodes to them (the shape of burn's quantizer: a mapper
//! over selected parameters, no model code).
//!
//! ```
//! use squeeze::quant::{QWeight, layout::Layout};
//! let w = vec![0.5f32, -1.0, 0.25, 0.0];
//! let q = QWeight::quantize(&w, 2, 2, Layout::INT8_CHANNEL).unwrap();
//! let back = q.dequantize();
//! assert!(w.iter().zip(&back).all(|(a, b)| (a - b).abs() <= 1.0 / 127.0 / 2.0 + 1e-7));
//! ```

pub mod calibrate;
pub mod gptq;
pub mod qat;

use crate::error::Result;
pub use crate::math::qlayout as layout;
pub use crate::math::qweight::{QView, QWeight};

/// Non-zero weights among the quantized tensors of a model (codes that decode to a
/// non-zero value; binary and ternary levels that are not 0): the packed part of its
/// non-zero parameter count.
pub fn nonzero_quantized(model: &crate::model::Model) -> Result<usize> {
    let mut total = 0;
    for n in &model.graph.nodes {
        let (rows, cols, ternary) = match &n.op {
            crate::graph::Op::BConv2d(b) => (b.out_channels, b.cols(), b.ternary),
            crate::graph::Op::BLinear(b) => (b.out_features, b.in_features, b.ternary),
            _ => (0, 0, false),
        };
        if rows > 0 {
            let t = model.params.get(&format!("{}.weight_bits", n.name))?;
            let data: Vec<u8> = t.flatten_all()?.to_vec1()?;
            total += crate::math::bits::nonzero(&data, rows, cols, ternary);
            continue;
        }
        let Some((layout, (rows, cols))) = n.op.def().quantized_weight() else {
            continue;
        };
        total += crate::kinds::with_node_view(&model.params, &n.name, layout, (rows, cols), |v| {
            let mut row = vec![0f32; cols];
            let mut nz = 0;
            for r in 0..rows {
                v.dequantize_row(r, &mut row);
                nz += row.iter().filter(|x| **x != 0.0).count();
            }
            Ok(nz)
        })?;
    }
    Ok(total)
}

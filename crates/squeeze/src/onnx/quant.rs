//! Quantized weights in ONNX's terms. [`Decoded`] reads a layer's stored codes
//! (`crate::math::qlayout`: int8 bytes, or int4 nibbles in chunks of 32 with an implicit
//! or stored zero point) back as one signed code per element — `n − z`, exact in int8 —
//! and one scale per block; the writers below turn that into the ONNX forms: an int8
//! constant for `MatMulInteger` / `DequantizeLinear`, and the nibble blobs of ONNX
//! Runtime's `MatMulNBits` (element `2i` in the low nibble of byte `i` of its block).

use super::Lower;
use crate::error::Result;
use crate::math::bits::BitWeight;
use crate::math::qlayout::{code_at, Layout};
use crate::math::qweight::QView;

/// A quantized weight `[rows, cols]` as signed codes and per-block scales.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub rows: usize,
    pub cols: usize,
    /// Elements sharing one scale along a row (`cols` for per-channel or per-tensor).
    pub block: usize,
    /// `rows × cols` codes, zero point removed.
    pub codes: Vec<i8>,
    /// Stored nibbles `n` (int4 only; `codes = n − zero`).
    pub nibbles: Vec<u8>,
    /// `rows × blocks` scales (a per-tensor scale repeated).
    pub scales: Vec<f32>,
    /// `rows × blocks` zero points (int4; 8 where the layout is symmetric).
    pub zeros: Vec<u8>,
}

impl Decoded {
    /// Node `cx`'s quantized weight of `layout`, `[rows, cols]`, read from its tensors
    /// `weight_q`, `weight_scale` (and `weight_zero`).
    pub fn read(cx: &Lower, layout: Layout, (rows, cols): (usize, usize)) -> Result<Decoded> {
        let (_, bytes) = cx.bytes("weight_q")?;
        let (_, stored_scales) = cx.values("weight_scale")?;
        let stored_zeros = match layout.zero_point {
            true => Some(cx.bytes("weight_zero")?.1),
            false => None,
        };
        let (rb, block, nb) = (
            layout.row_bytes(cols),
            layout.block_len(cols),
            layout.blocks_per_row(cols),
        );
        let view = QView {
            layout,
            rows,
            cols,
            codes: &bytes,
            scales: &stored_scales,
            zeros: stored_zeros.as_deref(),
        };
        view.check()?;
        let mut d = Decoded {
            rows,
            cols,
            block,
            codes: Vec::with_capacity(rows * cols),
            nibbles: Vec::new(),
            scales: Vec::with_capacity(rows * nb),
            zeros: Vec::with_capacity(rows * nb),
        };
        for r in 0..rows {
            let row = &bytes[r * rb..(r + 1) * rb];
            for b in 0..nb {
                let i = layout.scale_index(r, b, cols);
                let z = view.zero(i) as u8;
                d.scales.push(stored_scales[i]);
                d.zeros.push(z);
                for j in b * block..(b + 1) * block {
                    let c = code_at(&layout, row, j);
                    if layout.bits == 8 {
                        d.codes.push(c as i8);
                    } else {
                        d.nibbles.push(c);
                        d.codes.push((i16::from(c) - i16::from(z)) as i8);
                    }
                }
            }
        }
        Ok(d)
    }

    /// Node `cx`'s packed binary or ternary levels `[rows, cols]` (`weight_bits`,
    /// `weight_scale`), checked, as codes with one block per row.
    pub fn read_levels(cx: &Lower, (rows, cols): (usize, usize), ternary: bool) -> Result<Decoded> {
        let (_, data) = cx.bytes("weight_bits")?;
        let (_, scales) = cx.values("weight_scale")?;
        crate::math::bits::check_rows(&data, ternary, &format!("`{}.weight_bits`", cx.node))?;
        let w = BitWeight {
            rows,
            cols,
            ternary,
            data,
            scales,
        };
        Ok(Decoded::from_levels(&w))
    }

    /// Binary or ternary levels as codes, one block per row.
    fn from_levels(w: &BitWeight) -> Decoded {
        let (rows, cols) = (w.rows, w.cols);
        Decoded {
            rows,
            cols,
            block: cols,
            codes: (0..rows * cols)
                .map(|i| w.level(i / cols, i % cols))
                .collect(),
            nibbles: Vec::new(),
            scales: w.scales.clone(),
            zeros: vec![0; rows],
        }
    }

    /// One scale per row when every row has a single block (per-channel or per-tensor).
    pub fn row_scales(&self) -> Option<&[f32]> {
        (self.block == self.cols).then_some(self.scales.as_slice())
    }

    /// The dequantized weight, row-major `[rows, cols]`.
    pub fn dequantize(&self) -> Vec<f32> {
        let nb = self.cols / self.block;
        let mut out = Vec::with_capacity(self.codes.len());
        for (i, &c) in self.codes.iter().enumerate() {
            let (r, j) = (i / self.cols, i % self.cols);
            out.push(self.scales[r * nb + j / self.block] * f32::from(c));
        }
        out
    }

    /// `MatMulNBits`'s inputs for int4 codes: block size (the group when it is a power of
    /// two, otherwise 32 with scales repeated — exact either way), the `[rows, blocks,
    /// block/2]` nibble blobs, the `rows × blocks` scales and the packed zero points
    /// (`rows × ⌈blocks/2⌉` bytes, low nibble first).
    pub fn nbits(&self) -> (usize, Vec<u8>, Vec<f32>, Vec<u8>) {
        let bs = if self.block.is_power_of_two() && self.block >= 16 {
            self.block
        } else {
            32
        };
        let (nb_old, nb) = (self.cols / self.block, self.cols / bs);
        let mut blobs = vec![0u8; self.rows * self.cols / 2];
        for (i, &n) in self.nibbles.iter().enumerate() {
            blobs[i / 2] |= if i % 2 == 0 { n } else { n << 4 };
        }
        let zb = nb.div_ceil(2);
        let (mut scales, mut zeros) = (
            Vec::with_capacity(self.rows * nb),
            vec![0u8; self.rows * zb],
        );
        for r in 0..self.rows {
            for b in 0..nb {
                let old = r * nb_old + b * bs / self.block;
                scales.push(self.scales[old]);
                zeros[r * zb + b / 2] |= self.zeros[old] << (4 * (b % 2));
            }
        }
        (bs, blobs, scales, zeros)
    }
}

/// A dynamic int8 Linear as ONNX Runtime's dynamic quantizer writes one: the input
/// quantized per tensor at run time to uint8 (`DynamicQuantizeLinear`), an integer
/// product with the int8 codes `[in, out]` (`MatMulInteger`), then the input's scale
/// times each output channel's. Our kernel quantizes the input per 32 values of a row to
/// ±64; the file's per-tensor uint8 codes are a different rounding of the same input.
/// Readers of one value (q, k, v) share its quantization, as ONNX Runtime's quantizer does.
pub fn dynamic_int8(cx: &mut Lower, d: &Decoded, scales: &[f32], bias: bool) -> Result<String> {
    let x = cx.x();
    let q = cx.emit.op_shared(
        "DynamicQuantizeLinear",
        &x,
        &[
            &format!("{x}/q"),
            &format!("{x}/scale"),
            &format!("{x}/zero"),
        ],
    );
    let wt = super::blocks::transpose(&d.codes, d.rows, d.cols);
    let w = cx
        .emit
        .i8s(&format!("{}.weight_q", cx.node), &[d.cols, d.rows], &wt);
    let acc = cx
        .emit
        .op("MatMulInteger", &[&q[0], &w, &q[2]], &cx.tmp("acc"), vec![]);
    let f = cx.emit.op(
        "Cast",
        &[&acc],
        &cx.tmp("acc_f32"),
        vec![super::int("to", 1)],
    );
    let dims: &[usize] = if scales.len() == 1 { &[] } else { &[d.rows] };
    let ws = cx
        .emit
        .f32s(&format!("{}.weight_scale", cx.node), dims, scales);
    let s = cx.emit.op("Mul", &[&q[1], &ws], &cx.tmp("scale"), vec![]);
    let b = cx.bias(bias)?;
    match b {
        None => Ok(cx.emit.op("Mul", &[&f, &s], &cx.out(), vec![])),
        Some(b) => {
            let y = cx.emit.op("Mul", &[&f, &s], &cx.tmp("scaled"), vec![]);
            Ok(cx.emit.op("Add", &[&y, &b], &cx.out(), vec![]))
        }
    }
}

/// An int4 Linear as ONNX Runtime's `MatMulNBits` (`com.microsoft`): the nibbles stay
/// packed in the file. `int8_inputs`: accuracy level 4, where ONNX Runtime quantizes the
/// input per block to int8 as our int4 × int8 kernel does; otherwise level 0 (f32 inputs).
pub fn nbits(cx: &mut Lower, d: &Decoded, bias: bool, int8_inputs: bool) -> Result<String> {
    let (bs, blobs, scales, zeros) = d.nbits();
    let nb = d.cols / bs;
    let n = cx.node.to_string();
    let b = cx
        .emit
        .u8s(&format!("{n}.weight_q"), &[d.rows, nb, bs / 2], blobs);
    let s = cx
        .emit
        .f32s(&format!("{n}.weight_scale"), &[d.rows * nb], &scales);
    let z = cx
        .emit
        .u8s(&format!("{n}.weight_zero"), &[zeros.len()], zeros);
    let attrs = vec![
        super::int("K", d.cols as i64),
        super::int("N", d.rows as i64),
        super::int("bits", 4),
        super::int("block_size", bs as i64),
        super::int("accuracy_level", if int8_inputs { 4 } else { 0 }),
    ];
    let x = cx.x();
    let out = if bias { cx.tmp("matmul") } else { cx.out() };
    let y = cx.emit.op_in(
        super::MS_DOMAIN,
        "MatMulNBits",
        &[&x, &b, &s, &z],
        &[&out],
        attrs,
    );
    match cx.bias(bias)? {
        None => Ok(y[0].clone()),
        Some(b) => Ok(cx.emit.op("Add", &[&y[0], &b], &cx.out(), vec![])),
    }
}

/// A Linear whose input is quantized statically (`step`, codes `range`) against int8
/// codes (int4 values are int8 codes too): the QDQ form, the weight `[in, out]` an int8
/// constant dequantized per output channel.
pub fn static_linear(
    cx: &mut Lower,
    d: &Decoded,
    (step, range): (f32, [i8; 2]),
    bias: bool,
) -> Result<String> {
    let x = cx.x();
    let xq = super::blocks::static_input(cx, &x, step, range);
    let w = match d.row_scales() {
        Some(s) => {
            let wt = super::blocks::transpose(&d.codes, d.rows, d.cols);
            super::blocks::dequantized(cx, &[d.cols, d.rows], &wt, s, 1)
        }
        None => {
            cx.note("grouped weight scales written as the dequantized f32 weight");
            let wt = super::blocks::transpose(&d.dequantize(), d.rows, d.cols);
            cx.emit
                .f32s(&format!("{}.weight", cx.node), &[d.cols, d.rows], &wt)
        }
    };
    let b = cx.bias(bias)?;
    Ok(super::blocks::matmul_bias(cx, &xq, &w, b))
}

/// A convolution whose input is quantized statically (`step`, codes `range`) against
/// int8 codes of dims `[out, in/groups, kh, kw]` with one scale per output channel (or
/// one for the tensor).
pub fn static_conv(
    cx: &mut Lower,
    (codes, dims, scales): (&[i8], [usize; 4], &[f32]),
    (step, range): (f32, [i8; 2]),
    bias: bool,
    a: super::blocks::ConvAttrs,
) -> Result<String> {
    let x = cx.x();
    let xq = super::blocks::static_input(cx, &x, step, range);
    let w = super::blocks::dequantized(cx, &dims, codes, scales, 0);
    let b = cx.bias(bias)?;
    Ok(super::blocks::conv(cx, &xq, &w, b, a))
}

//! A quantized weight as numbers: [`QWeight`] holds a `[rows, cols]` matrix as packed
//! codes, scales and optional zero points in the [`Layout`] it names (round-to-nearest
//! quantization and its inverse), and [`QView`] is the borrowed form the int8/int4 kernels
//! and the embedding lookup read.
//!
//! ```
//! use squeeze::quant::{QWeight, layout::Layout};
//! let w = vec![0.5f32, -1.0, 0.25, 0.0];
//! let q = QWeight::quantize(&w, 2, 2, Layout::INT8_CHANNEL).unwrap();
//! let back = q.dequantize();
//! assert!(w.iter().zip(&back).all(|(a, b)| (a - b).abs() <= 1.0 / 127.0 / 2.0 + 1e-7));
//! ```

use candle_core::{Device, Tensor};

use super::qlayout::{pack_row, Layout};
use crate::error::{Error, Result};

/// A quantized `[rows, cols]` weight.
#[derive(Debug, Clone, PartialEq)]
pub struct QWeight {
    pub layout: Layout,
    pub rows: usize,
    pub cols: usize,
    /// `rows × layout.row_bytes(cols)` bytes.
    pub codes: Vec<u8>,
    /// `layout.scale_shape(rows, cols)` scales.
    pub scales: Vec<f32>,
    /// One zero point per scale, when the layout has them.
    pub zeros: Option<Vec<u8>>,
}

impl QWeight {
    /// Round-to-nearest quantization of a row-major weight.
    pub fn quantize(w: &[f32], rows: usize, cols: usize, layout: Layout) -> Result<QWeight> {
        layout.check(cols).map_err(Error::Data)?;
        if w.len() != rows * cols {
            return Err(Error::Data(format!(
                "a [{rows}, {cols}] weight needs {} values, got {}",
                rows * cols,
                w.len()
            )));
        }
        if let Some(i) = w.iter().position(|v| !v.is_finite()) {
            return Err(Error::Data(format!(
                "weight element {i} is {}: cannot quantize non-finite values",
                w[i]
            )));
        }
        let mut q = QWeight::empty(rows, cols, layout);
        if let super::qlayout::Scales::Tensor = layout.scales {
            let (s, z) = layout.block_params(w);
            q.scales[0] = s;
            if let Some(zs) = q.zeros.as_mut() {
                zs[0] = z;
            }
        }
        let bl = layout.block_len(cols);
        let mut codes = vec![0u8; cols];
        for r in 0..rows {
            let row = &w[r * cols..(r + 1) * cols];
            for (b, blk) in row.chunks(bl).enumerate() {
                let (s, z) = q.block_params_at(r, b, blk);
                for (j, &v) in blk.iter().enumerate() {
                    codes[b * bl + j] = layout.encode(v, s, z);
                }
            }
            q.set_row(r, &codes);
        }
        Ok(q)
    }

    /// A weight from signed integer codes (row-major, one per element, within the
    /// layout's symmetric range) and one scale per output row: the materialized form of a
    /// weight whose codes were chosen elsewhere (quantization-aware training).
    pub fn from_codes(
        codes: &[i8],
        rows: usize,
        cols: usize,
        scales: Vec<f32>,
        layout: Layout,
    ) -> Result<QWeight> {
        layout.check(cols).map_err(Error::Data)?;
        let lim = if layout.bits == 8 { 127 } else { 7 };
        if layout.zero_point || layout.scales != super::qlayout::Scales::Channel {
            return Err(Error::Data(format!(
                "codes are stored with symmetric per-channel scales, not {}",
                layout.label()
            )));
        }
        if codes.len() != rows * cols || scales.len() != rows {
            return Err(Error::Data(format!(
                "a [{rows}, {cols}] weight needs {} codes and {rows} scales, got {} and {}",
                rows * cols,
                codes.len(),
                scales.len()
            )));
        }
        if let Some(i) = codes.iter().position(|c| c.unsigned_abs() > lim) {
            return Err(Error::Data(format!(
                "code {} at {i} is outside ±{lim} ({})",
                codes[i],
                layout.label()
            )));
        }
        let mut q = QWeight::empty(rows, cols, layout);
        q.scales = scales;
        let shift = if layout.bits == 8 { 0 } else { 8 };
        let mut row = vec![0u8; cols];
        for r in 0..rows {
            for (o, &c) in row.iter_mut().zip(&codes[r * cols..(r + 1) * cols]) {
                *o = (c + shift) as u8;
            }
            q.set_row(r, &row);
        }
        Ok(q)
    }

    /// All-zero codes and scales of the right sizes.
    pub(crate) fn empty(rows: usize, cols: usize, layout: Layout) -> QWeight {
        let n: usize = layout.scale_shape(rows, cols).iter().product();
        QWeight {
            layout,
            rows,
            cols,
            codes: vec![0; rows * layout.row_bytes(cols)],
            scales: vec![0.0; n],
            zeros: layout.zero_point.then(|| vec![0; n]),
        }
    }

    /// Scale and zero point of block `b` of row `r`: chosen from `vals` and recorded,
    /// except for a per-tensor layout, whose one pair was chosen over the whole tensor.
    pub(crate) fn block_params_at(&mut self, r: usize, b: usize, vals: &[f32]) -> (f32, u8) {
        let i = self.layout.scale_index(r, b, self.cols);
        if let super::qlayout::Scales::Tensor = self.layout.scales {
            return (self.scales[0], self.zero(0));
        }
        let (s, z) = self.layout.block_params(vals);
        self.scales[i] = s;
        if let Some(zs) = self.zeros.as_mut() {
            zs[i] = z;
        }
        (s, self.zero(i))
    }

    /// The zero point at scale index `i` (the implicit one of symmetric layouts).
    #[inline]
    pub fn zero(&self, i: usize) -> u8 {
        self.view().zero(i) as u8
    }

    /// Stores one row of codes (one per element).
    pub(crate) fn set_row(&mut self, r: usize, codes: &[u8]) {
        let rb = self.layout.row_bytes(self.cols);
        pack_row(&self.layout, codes, &mut self.codes[r * rb..(r + 1) * rb]);
    }

    /// The f32 values the codes stand for (the simulated, fake-quantized weight).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        let v = self.view();
        for r in 0..self.rows {
            v.dequantize_row(r, &mut out[r * self.cols..(r + 1) * self.cols]);
        }
        out
    }

    /// The kernels' borrowed view of the codes, scales and zero points.
    pub fn view(&self) -> QView<'_> {
        QView {
            layout: self.layout,
            rows: self.rows,
            cols: self.cols,
            codes: &self.codes,
            scales: &self.scales,
            zeros: self.zeros.as_deref(),
        }
    }

    /// Stored bytes (codes, scales, zero points).
    pub fn stored_bytes(&self) -> usize {
        self.layout.stored_bytes(self.rows, self.cols)
    }

    /// The three tensors as a node stores them: codes `[rows, row_bytes]` (u8), scales in
    /// the layout's scale shape (f32), zero points in the same shape (u8) when present.
    pub fn tensors(&self) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let dev = &Device::Cpu;
        let shape = self.layout.scale_shape(self.rows, self.cols);
        let codes = Tensor::from_vec(
            self.codes.clone(),
            (self.rows, self.layout.row_bytes(self.cols)),
            dev,
        )?;
        let scales = Tensor::from_vec(self.scales.clone(), shape.clone(), dev)?;
        let zeros = self
            .zeros
            .as_ref()
            .map(|z| Tensor::from_vec(z.clone(), shape, dev))
            .transpose()?;
        Ok((codes, scales, zeros))
    }
}

/// The stored form of a quantized weight the kernels read.
#[derive(Debug, Clone, Copy)]
pub struct QView<'a> {
    pub layout: Layout,
    pub rows: usize,
    pub cols: usize,
    pub codes: &'a [u8],
    pub scales: &'a [f32],
    pub zeros: Option<&'a [u8]>,
}

impl QView<'_> {
    /// Sizes agree with the layout (the loader checked shapes; this guards direct callers).
    pub fn check(&self) -> Result<()> {
        let l = &self.layout;
        l.check(self.cols).map_err(Error::Data)?;
        let blocks: usize = l.scale_shape(self.rows, self.cols).iter().product();
        let ok = self.codes.len() == self.rows * l.row_bytes(self.cols)
            && self.scales.len() == blocks
            && self.zeros.is_none_or(|z| z.len() == blocks)
            && self.zeros.is_some() == l.zero_point;
        if !ok {
            return Err(Error::Data(format!(
                "quantized weight [{}, {}] ({}): {} code bytes, {} scales do not fit the layout",
                self.rows,
                self.cols,
                l.label(),
                self.codes.len(),
                self.scales.len()
            )));
        }
        Ok(())
    }

    /// The zero point at scale index `i` (the implicit one of symmetric layouts).
    #[inline]
    pub fn zero(&self, i: usize) -> f32 {
        match self.zeros {
            Some(z) => z[i] as f32,
            None if self.layout.bits == 4 => 8.0,
            None => 0.0,
        }
    }

    /// Row `r`'s values into `out` (`cols` long): the embedding lookup's dequantization.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let (l, cols) = (&self.layout, self.cols);
        let rb = l.row_bytes(cols);
        let row = &self.codes[r * rb..(r + 1) * rb];
        let bl = l.block_len(cols);
        // block by block, with the block's scale and zero point hoisted (vectorizes)
        for (b, ob) in out[..cols].chunks_mut(bl).enumerate() {
            let i = l.scale_index(r, b, cols);
            let (s, z) = (self.scales[i], self.zero(i));
            if l.bits == 8 {
                for (o, &c) in ob.iter_mut().zip(&row[b * bl..]) {
                    *o = s * (c as i8) as f32;
                }
                continue;
            }
            // int4: chunks of 32 values in 16 bytes (low nibbles first, then high ones)
            let bytes = &row[b * bl / 2..(b + 1) * bl / 2];
            for (oc, bc) in ob.chunks_exact_mut(32).zip(bytes.chunks_exact(16)) {
                let (lo, hi) = oc.split_at_mut(16);
                for ((l, h), &c) in lo.iter_mut().zip(hi.iter_mut()).zip(bc) {
                    *l = s * ((c & 15) as f32 - z);
                    *h = s * ((c >> 4) as f32 - z);
                }
            }
        }
    }
}

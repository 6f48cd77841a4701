//! Binary and ternary weights as stored: a `[rows, cols]` weight whose row `r` is
//! `α_r · t_rc` with `t ∈ {−1, +1}` (binary; BinaryConnect signs with XNOR-Net's scale
//! α = mean|w|) or `t ∈ {−1, 0, +1}` (ternary; TWN's threshold 0.7·mean|w| and α the mean
//! magnitude above it). Binary rows are sign bits, 8 per byte (bit `c % 8` of byte
//! `c / 8` set = −1): 1 bit a weight. Ternary rows are base-3 digits, 5 per byte
//! (`Σ d_i·3^i`, digit 0 = 0, 1 = +1, 2 = −1; bytes ≥ 243 are invalid): 1.6 bits a
//! weight. The kernels unpack either into sign and non-zero bit-planes
//! (`crate::ops::qgemm::bits`), never into floats.

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

/// Trits per stored byte of a ternary row.
pub const TRITS_PER_BYTE: usize = 5;

/// A binary or ternary weight.
#[derive(Debug, Clone, PartialEq)]
pub struct BitWeight {
    pub rows: usize,
    pub cols: usize,
    pub ternary: bool,
    /// `rows × row_bytes(cols, ternary)` bytes.
    pub data: Vec<u8>,
    /// One scale per row.
    pub scales: Vec<f32>,
}

/// Stored bytes of one row.
pub fn row_bytes(cols: usize, ternary: bool) -> usize {
    if ternary {
        cols.div_ceil(TRITS_PER_BYTE)
    } else {
        cols.div_ceil(8)
    }
}

/// A row's scale α and levels in {−1, 0, +1} (the TWN / XNOR-Net rules above).
pub fn levels(row: &[f32], ternary: bool) -> (f32, Vec<i8>) {
    let n = row.len().max(1) as f32;
    let mean = row.iter().map(|v| v.abs()).sum::<f32>() / n;
    let sign = |v: f32| if v >= 0.0 { 1i8 } else { -1 };
    if !ternary {
        return (mean, row.iter().map(|&v| sign(v)).collect());
    }
    let delta = mean * TWN_THRESHOLD;
    let kept: Vec<bool> = row.iter().map(|v| v.abs() > delta).collect();
    let count = kept.iter().filter(|k| **k).count().max(1) as f32;
    let total: f32 = row
        .iter()
        .zip(&kept)
        .filter(|(_, k)| **k)
        .map(|(v, _)| v.abs())
        .sum();
    let t = row
        .iter()
        .zip(&kept)
        .map(|(&v, &k)| if k { sign(v) } else { 0 })
        .collect();
    (total / count, t)
}

/// TWN's threshold, as a fraction of the row's mean magnitude.
pub const TWN_THRESHOLD: f32 = 0.7;

impl BitWeight {
    /// The binary or ternary form of a row-major float weight.
    pub fn from_rows(w: &[f32], rows: usize, cols: usize, ternary: bool) -> BitWeight {
        let rb = row_bytes(cols, ternary);
        let mut data = vec![0u8; rows * rb];
        let mut scales = Vec::with_capacity(rows);
        for (r, row) in w.chunks(cols.max(1)).take(rows).enumerate() {
            let (alpha, t) = levels(row, ternary);
            scales.push(alpha);
            pack_row(&t, ternary, &mut data[r * rb..(r + 1) * rb]);
        }
        BitWeight {
            rows,
            cols,
            ternary,
            data,
            scales,
        }
    }

    /// Level of element `c` of row `r`.
    pub fn level(&self, r: usize, c: usize) -> i8 {
        let rb = row_bytes(self.cols, self.ternary);
        level_at(&self.data[r * rb..(r + 1) * rb], c, self.ternary)
    }

    /// The float values the weight stands for.
    pub fn dequantize(&self) -> Vec<f32> {
        (0..self.rows * self.cols)
            .map(|i| {
                let (r, c) = (i / self.cols, i % self.cols);
                self.scales[r] * self.level(r, c) as f32
            })
            .collect()
    }

    /// Stored bytes (levels and scales).
    pub fn stored_bytes(&self) -> usize {
        self.data.len() + 4 * self.scales.len()
    }

    /// The node tensors: `weight_bits` `[rows, row_bytes]` (u8) and `weight_scale` `[rows]`.
    pub fn tensors(&self) -> Result<Vec<(&'static str, Tensor)>> {
        let rb = row_bytes(self.cols, self.ternary);
        Ok(vec![
            (
                "weight_bits",
                Tensor::from_vec(self.data.clone(), (self.rows, rb), &Device::Cpu)?,
            ),
            (
                "weight_scale",
                Tensor::from_vec(self.scales.clone(), self.rows, &Device::Cpu)?,
            ),
        ])
    }
}

/// Stores levels `t` (one per element) into a row's bytes.
pub fn pack_row(t: &[i8], ternary: bool, out: &mut [u8]) {
    out.fill(0);
    if !ternary {
        for (c, &v) in t.iter().enumerate() {
            if v < 0 {
                out[c / 8] |= 1 << (c % 8);
            }
        }
        return;
    }
    for (byte, chunk) in out.iter_mut().zip(t.chunks(TRITS_PER_BYTE)) {
        *byte = chunk.iter().rev().fold(0u8, |acc, &v| {
            acc * 3
                + match v {
                    0 => 0,
                    1 => 1,
                    _ => 2,
                }
        });
    }
}

/// Level of element `c` of a stored row (a ternary byte ≥ 243 reads as its digits mod 3;
/// [`check_row`] refuses such bytes before any kernel sees them).
#[inline]
pub fn level_at(row: &[u8], c: usize, ternary: bool) -> i8 {
    if !ternary {
        return if row[c / 8] >> (c % 8) & 1 == 1 {
            -1
        } else {
            1
        };
    }
    let mut b = row[c / TRITS_PER_BYTE];
    for _ in 0..c % TRITS_PER_BYTE {
        b /= 3;
    }
    match b % 3 {
        0 => 0,
        1 => 1,
        _ => -1,
    }
}

/// Non-zero levels among stored rows (`rows × row_bytes` bytes of `cols` levels each).
pub fn nonzero(data: &[u8], rows: usize, cols: usize, ternary: bool) -> usize {
    if !ternary {
        return rows * cols;
    }
    let rb = row_bytes(cols, ternary);
    data.chunks(rb.max(1))
        .take(rows)
        .map(|row| (0..cols).filter(|&c| level_at(row, c, true) != 0).count())
        .sum()
}

/// Every byte of stored ternary rows is a valid base-3 number (< 3⁵); the error names
/// `what` and the first bad byte.
pub fn check_rows(data: &[u8], ternary: bool, what: &str) -> Result<()> {
    if !ternary {
        return Ok(());
    }
    match data.iter().position(|&b| b >= 243) {
        Some(i) => Err(Error::Data(format!(
            "{what}: byte {i} is {} — ternary rows hold 5 base-3 digits per byte (< 243)",
            data[i]
        ))),
        None => Ok(()),
    }
}

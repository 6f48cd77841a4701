//! Storage codecs: how a tensor lies in `model.safetensors` when it is not stored plainly.
//! A graph records a codec per tensor name (`Graph.codecs`); the saver encodes the tensor
//! into a byte blob (a u8 tensor of the same name) and the loader decodes it back to the
//! f32 tensor its node expects, naming the tensor if the blob is corrupt.
//!
//! [`Codec::Shared`] is Deep Compression's storage (Han et al. 2016) for a pruned,
//! weight-shared tensor: the codebook (≤ 2^bits distinct non-zero values, f32), the
//! positions of the non-zeros as Huffman-coded gaps (relative indices; a gap of 255 or
//! more is written as filler symbols that skip 255 zeros), and the codebook index of each
//! non-zero, Huffman-coded. Layout: `SQZC`, version, bits, numel (u64), codebook size
//! (u16) and values, then the two Huffman streams of [`super::huffman`].

use serde::{Deserialize, Serialize};

use super::huffman::{self, take};
use crate::error::{Error, Result};

/// How one tensor is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "codec", rename_all = "snake_case", deny_unknown_fields)]
pub enum Codec {
    /// Codebook of at most 2^bits values + Huffman-coded gaps and indices.
    Shared { bits: u8 },
}

const MAGIC: &[u8; 4] = b"SQZC";
const VERSION: u8 = 1;
/// Gap symbol meaning "skip this many zeros, no value".
const FILL: u16 = 255;

fn bad(msg: impl std::fmt::Display) -> Error {
    Error::Data(format!("shared-weight blob: {msg}"))
}

/// The distinct non-zero values of `values`, ascending: the codebook a shared tensor
/// implies (position `i` of a value is its index, found by binary search).
pub fn codebook(values: &[f32]) -> Vec<f32> {
    let mut book: Vec<f32> = values.iter().copied().filter(|v| *v != 0.0).collect();
    book.sort_by(f32::total_cmp);
    book.dedup();
    book
}

impl Codec {
    /// Checks the codec's options (bits 1–8).
    pub fn validate(&self) -> std::result::Result<(), String> {
        let Codec::Shared { bits } = *self;
        if !(1..=8).contains(&bits) {
            return Err(format!("`bits` must be 1 to 8, got {bits}"));
        }
        Ok(())
    }

    /// Encodes `values`.
    pub fn encode(&self, values: &[f32]) -> Result<Vec<u8>> {
        let Codec::Shared { bits } = *self;
        let book = codebook(values);
        if book.len() > 1usize << bits {
            return Err(bad(format!(
                "{} distinct non-zero values do not fit a {bits}-bit codebook",
                book.len()
            )));
        }
        let (mut gaps, mut idx) = (Vec::new(), Vec::new());
        let mut next = 0usize;
        for (p, v) in values.iter().enumerate().filter(|(_, v)| **v != 0.0) {
            let mut gap = p - next;
            while gap >= FILL as usize {
                gaps.push(FILL);
                gap -= FILL as usize;
            }
            gaps.push(gap as u16);
            let k = book
                .binary_search_by(|b| b.total_cmp(v))
                .expect("value is in the codebook");
            idx.push(k as u16);
            next = p + 1;
        }
        let mut out = Vec::with_capacity(64 + idx.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(bits);
        out.extend_from_slice(&(values.len() as u64).to_le_bytes());
        out.extend_from_slice(&(idx.len() as u64).to_le_bytes());
        out.extend_from_slice(&(book.len() as u16).to_le_bytes());
        for b in &book {
            out.extend_from_slice(&b.to_le_bytes());
        }
        let alpha = |s: &[u16], n: usize| if s.is_empty() { 0 } else { n };
        out.extend(huffman::encode(&gaps, alpha(&gaps, FILL as usize + 1)));
        out.extend(huffman::encode(&idx, alpha(&idx, book.len())));
        Ok(out)
    }

    /// Decodes a blob into `numel` values (the count the graph expects).
    pub fn decode(&self, blob: &[u8], numel: usize) -> Result<Vec<f32>> {
        let at = &mut 0usize;
        if take(blob, at, 4)? != MAGIC {
            return Err(bad("does not start with SQZC"));
        }
        let head = take(blob, at, 2)?;
        if head[0] != VERSION {
            return Err(bad(format!(
                "version {} (this build reads {VERSION})",
                head[0]
            )));
        }
        let Codec::Shared { bits } = *self;
        if head[1] != bits {
            return Err(bad(format!(
                "{}-bit codebook, the graph says {bits}",
                head[1]
            )));
        }
        let u64_at = |at: &mut usize| -> Result<u64> {
            Ok(u64::from_le_bytes(
                take(blob, at, 8)?.try_into().expect("8 bytes"),
            ))
        };
        let n = u64_at(at)? as usize;
        let nnz = u64_at(at)? as usize;
        if n != numel || nnz > n {
            return Err(bad(format!(
                "holds {n} values ({nnz} non-zero), the graph expects {numel}"
            )));
        }
        let k = u16::from_le_bytes(take(blob, at, 2)?.try_into().expect("2 bytes")) as usize;
        if k > 1usize << bits {
            return Err(bad(format!("codebook of {k} entries exceeds {bits} bits")));
        }
        let book: Vec<f32> = take(blob, at, 4 * k)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        let (gcode, mut gr) = huffman::open(blob, at)?;
        let (icode, mut ir) = huffman::open(blob, at)?;
        let mut out = vec![0.0f32; n];
        let mut pos = 0usize;
        for _ in 0..nnz {
            loop {
                let g = gcode.read(&mut gr)?;
                pos += g as usize;
                if g != FILL {
                    break;
                }
            }
            let i = icode.read(&mut ir)? as usize;
            let v = book
                .get(i)
                .ok_or_else(|| bad(format!("index {i} outside the codebook of {k}")))?;
            *out.get_mut(pos)
                .ok_or_else(|| bad("a position runs past the tensor"))? = *v;
            pos += 1;
        }
        Ok(out)
    }
}

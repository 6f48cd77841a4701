//! Reader for the IDX format of (Fashion-)MNIST, plain or gzip-compressed: a magic number
//! (0, 0, type 0x08 = u8, rank), big-endian u32 dimensions, then the data. Every error says
//! which file is wrong and how to get a good one.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// An IDX array of unsigned bytes.
#[derive(Debug, Clone)]
pub struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

const HINT: &str =
    "install the data with `apt-get install dataset-fashion-mnist` or pass --data DIR";

/// Reads an IDX file (gzip-compressed if it starts with the gzip magic).
pub fn read_idx(path: &Path) -> Result<Idx> {
    let raw =
        std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read ({e}); {HINT}")))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::file(path, format!("corrupt gzip stream ({e}); {HINT}")))?;
        out
    } else {
        raw
    };
    parse_idx(&bytes).map_err(|m| Error::file(path, format!("{m}; {HINT}")))
}

/// Parses IDX bytes.
pub fn parse_idx(b: &[u8]) -> std::result::Result<Idx, String> {
    if b.len() < 4 || b[0] != 0 || b[1] != 0 {
        return Err("not an IDX file (bad magic number)".into());
    }
    if b[2] != 0x08 {
        return Err(format!(
            "IDX element type 0x{:02x} is not supported (expected 0x08, u8)",
            b[2]
        ));
    }
    let rank = b[3] as usize;
    let head = 4 + 4 * rank;
    if b.len() < head {
        return Err("truncated IDX header".into());
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| u32::from_be_bytes(b[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize)
        .collect();
    // the header's sizes are bounded by the bytes actually present before anything is
    // sized from them (a corrupt header must not overflow or allocate)
    let n = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("IDX dims {dims:?} overflow (corrupt header?)"))?;
    if b.len() - head != n {
        return Err(format!(
            "IDX data has {} bytes, dims {dims:?} need {n} (truncated?)",
            b.len() - head
        ));
    }
    Ok(Idx {
        dims,
        data: b[head..].to_vec(),
    })
}

//! Reading a safetensors file tensor by tensor: the header is parsed and checked against
//! the file's size first (every tensor's byte range inside the data, matching its dtype
//! and shape, no two overlapping), then each tensor's bytes are read straight into the
//! typed buffer that becomes the tensor. Peak memory is the weights themselves, not the
//! weights plus a copy of the file; and a file truncated or rewritten by another process
//! while squeeze reads it gives a clean error, where a memory map of it raised SIGBUS.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::error::{Error, Result};

/// Largest header accepted (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

fn dtype_of(name: &str) -> Option<DType> {
    Some(match name {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "U8" => DType::U8,
        "U32" => DType::U32,
        "I64" => DType::I64,
        _ => return None,
    })
}

/// Reads `len` bytes at `at` into a vector of `T` and makes the tensor (no second copy).
fn typed<T: candle_core::WithDType + Default + Copy>(
    f: &File,
    at: u64,
    shape: &[usize],
) -> std::io::Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut v = vec![T::default(); n];
    // SAFETY: the plain numeric types candle stores have no invalid bit patterns, and the
    // byte view covers exactly the vector's initialized elements.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), n * std::mem::size_of::<T>())
    };
    f.read_exact_at(bytes, at)?;
    Tensor::from_vec(v, shape, &Device::Cpu).map_err(std::io::Error::other)
}

/// One tensor of a header: name, dtype, shape and absolute byte offset.
type Slot = (String, DType, Vec<usize>, u64);

/// The header of `path`: each tensor's slot, checked against the file.
fn header(f: &File, path: &Path) -> Result<Vec<Slot>> {
    let bad = |m: String| Error::file(path, format!("not a valid safetensors file: {m}"));
    let size = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut len = [0u8; 8];
    f.read_exact_at(&mut len, 0)
        .map_err(|_| bad(format!("{size} bytes, too short for a header")))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER || 8 + n > size {
        return Err(bad(format!(
            "the header claims {n} bytes, the file holds {size} (truncated or corrupt?)"
        )));
    }
    let mut text = vec![0u8; n as usize];
    f.read_exact_at(&mut text, 8)
        .map_err(|e| Error::io(path, e))?;
    let mut raw: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&text).map_err(|e| bad(format!("header: {e}")))?;
    raw.remove("__metadata__");
    let data = size - 8 - n;
    let mut out = Vec::new();
    let mut ranges = Vec::new();
    for (name, v) in raw {
        let e: Entry =
            serde_json::from_value(v).map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
        let dt = dtype_of(&e.dtype).ok_or_else(|| {
            bad(format!(
                "tensor `{name}`: dtype {} is not supported",
                e.dtype
            ))
        })?;
        let [a, b] = e.data_offsets;
        let want = e
            .shape
            .iter()
            .try_fold(dt.size_in_bytes() as u64, |acc, &d| {
                acc.checked_mul(d as u64)
            });
        if b > data {
            return Err(bad(format!(
                "tensor `{name}` ends at byte {b}, but the data holds {data} (truncated or \
                 corrupt?)"
            )));
        }
        if a > b || want != Some(b - a) {
            return Err(bad(format!(
                "tensor `{name}`: bytes {a}..{b} of {data} do not hold a {} {:?}",
                e.dtype, e.shape
            )));
        }
        ranges.push((a, b, name.clone()));
        out.push((name, dt, e.shape, 8 + n + a));
    }
    ranges.sort();
    if let Some(w) = ranges.windows(2).find(|w| w[1].0 < w[0].1) {
        return Err(bad(format!(
            "tensors `{}` and `{}` overlap",
            w[0].2, w[1].2
        )));
    }
    Ok(out)
}

/// Loads every tensor of a safetensors file, with an error that names the file.
pub fn load_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut out = BTreeMap::new();
    for (name, dt, shape, at) in header(&f, path)? {
        let t = match dt {
            DType::F32 => typed::<f32>(&f, at, &shape),
            DType::F16 => typed::<half::f16>(&f, at, &shape),
            DType::BF16 => typed::<half::bf16>(&f, at, &shape),
            DType::F64 => typed::<f64>(&f, at, &shape),
            DType::U8 => typed::<u8>(&f, at, &shape),
            DType::U32 => typed::<u32>(&f, at, &shape),
            _ => typed::<i64>(&f, at, &shape),
        }
        .map_err(|e| {
            Error::file(
                path,
                format!("tensor `{name}`: cannot read its bytes (was the file changed?): {e}"),
            )
        })?;
        out.insert(name, t);
    }
    Ok(out)
}

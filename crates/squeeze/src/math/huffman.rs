//! Canonical Huffman coding (Huffman 1952) of small-alphabet symbol streams — the last
//! stage of Deep Compression (Han et al. 2016), applied to shared-weight cluster indices
//! and to the gaps between non-zero positions. Code lengths are limited to [`MAX_LEN`]
//! bits (by flattening the frequencies until the tree fits), stored 4 bits per symbol, and
//! the codes are canonical, so the table is just the lengths. Decoding checks every bound
//! and reports a corrupt stream as an error.

use crate::error::{Error, Result};

/// Longest code, in bits (lengths are stored in 4 bits).
pub const MAX_LEN: u8 = 15;

fn corrupt(what: &str) -> Error {
    Error::Data(format!("corrupt Huffman stream: {what}"))
}

/// Code length of every symbol (0 for symbols that never occur).
pub fn lengths(freqs: &[u64]) -> Vec<u8> {
    let mut f: Vec<u64> = freqs.to_vec();
    loop {
        let lens = tree_depths(&f);
        if lens.iter().all(|&l| l <= MAX_LEN) {
            return lens;
        }
        // flatten the distribution and retry: the tree becomes more balanced
        for v in f.iter_mut().filter(|v| **v > 0) {
            *v = (*v).div_ceil(2);
        }
    }
}

fn tree_depths(freqs: &[u64]) -> Vec<u8> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let used: Vec<usize> = (0..freqs.len()).filter(|&i| freqs[i] > 0).collect();
    let mut lens = vec![0u8; freqs.len()];
    if used.len() == 1 {
        lens[used[0]] = 1;
        return lens;
    }
    // nodes: leaves 0..n, internal after; parent links give depths
    let mut parent: Vec<usize> = vec![usize::MAX; used.len()];
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = used
        .iter()
        .enumerate()
        .map(|(k, &i)| Reverse((freqs[i], k)))
        .collect();
    while heap.len() > 1 {
        let Reverse((fa, a)) = heap.pop().expect("two or more");
        let Reverse((fb, b)) = heap.pop().expect("two or more");
        let id = parent.len();
        parent.push(usize::MAX);
        parent[a] = id;
        parent[b] = id;
        heap.push(Reverse((fa + fb, id)));
    }
    for (k, &i) in used.iter().enumerate() {
        let (mut d, mut at) = (0u8, k);
        while parent[at] != usize::MAX {
            d = d.saturating_add(1);
            at = parent[at];
        }
        lens[i] = d;
    }
    lens
}

/// Canonical codes (MSB first) of the given lengths.
fn codes(lens: &[u8]) -> Vec<u32> {
    let mut order: Vec<usize> = (0..lens.len()).filter(|&i| lens[i] > 0).collect();
    order.sort_by_key(|&i| (lens[i], i));
    let mut out = vec![0u32; lens.len()];
    let (mut code, mut prev) = (0u32, 0u8);
    for (k, &i) in order.iter().enumerate() {
        if k > 0 {
            code = (code + 1) << (lens[i] - prev);
        } else {
            code <<= lens[i];
        }
        out[i] = code;
        prev = lens[i];
    }
    out
}

/// Appends bits MSB-first.
#[derive(Default)]
pub struct BitWriter {
    pub bytes: Vec<u8>,
    acc: u64,
    n: u32,
}

impl BitWriter {
    pub fn put(&mut self, value: u32, bits: u8) {
        self.acc = (self.acc << bits) | u64::from(value);
        self.n += u32::from(bits);
        while self.n >= 8 {
            self.n -= 8;
            self.bytes.push((self.acc >> self.n) as u8);
        }
    }
    pub fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.bytes.push((self.acc << (8 - self.n)) as u8);
        }
        self.bytes
    }
}

/// Reads bits MSB-first.
pub struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        BitReader { bytes, pos: 0 }
    }
    pub fn bit(&mut self) -> Result<u32> {
        let b = self
            .bytes
            .get(self.pos / 8)
            .ok_or_else(|| corrupt("ends early"))?;
        let v = (b >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Ok(u32::from(v))
    }
    pub fn bits(&mut self, n: u8) -> Result<u32> {
        (0..n).try_fold(0u32, |acc, _| Ok((acc << 1) | self.bit()?))
    }
}

/// A Huffman code: lengths per symbol and the canonical decoding tables.
pub struct Code {
    pub lens: Vec<u8>,
    codes: Vec<u32>,
    /// Per length: first code, index into `sorted`, count.
    first: [(u32, usize, usize); MAX_LEN as usize + 1],
    sorted: Vec<u16>,
}

impl Code {
    /// The code of a symbol stream.
    pub fn of(symbols: &[u16], alphabet: usize) -> Self {
        let mut f = vec![0u64; alphabet];
        for &s in symbols {
            f[s as usize] += 1;
        }
        Self::from_lengths(lengths(&f))
    }

    pub fn from_lengths(lens: Vec<u8>) -> Self {
        let codes = codes(&lens);
        let mut sorted: Vec<u16> = (0..lens.len() as u16)
            .filter(|&i| lens[i as usize] > 0)
            .collect();
        sorted.sort_by_key(|&i| (lens[i as usize], i));
        let mut first = [(0u32, 0usize, 0usize); MAX_LEN as usize + 1];
        for (k, &s) in sorted.iter().enumerate() {
            let l = lens[s as usize] as usize;
            if first[l].2 == 0 {
                first[l] = (codes[s as usize], k, 0);
            }
            first[l].2 += 1;
        }
        Code {
            lens,
            codes,
            first,
            sorted,
        }
    }

    pub fn write(&self, w: &mut BitWriter, s: u16) {
        w.put(self.codes[s as usize], self.lens[s as usize]);
    }

    pub fn read(&self, r: &mut BitReader) -> Result<u16> {
        let mut code = 0u32;
        for l in 1..=MAX_LEN as usize {
            code = (code << 1) | r.bit()?;
            let (f, at, n) = self.first[l];
            if n > 0 && code >= f && ((code - f) as usize) < n {
                return Ok(self.sorted[at + (code - f) as usize]);
            }
        }
        Err(corrupt("no symbol matches the bits"))
    }

    /// The table: alphabet size (u16) then 4-bit lengths.
    pub fn write_table(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.lens.len() as u16).to_le_bytes());
        let mut w = BitWriter::default();
        for &l in &self.lens {
            w.put(u32::from(l), 4);
        }
        out.extend(w.finish());
    }

    /// Reads a table written by [`Code::write_table`] from `bytes` at `*at`.
    pub fn read_table(bytes: &[u8], at: &mut usize) -> Result<Self> {
        let n = u16::from_le_bytes(take(bytes, at, 2)?.try_into().expect("2 bytes")) as usize;
        let packed = take(bytes, at, n.div_ceil(2))?;
        let mut r = BitReader::new(packed);
        let lens = (0..n)
            .map(|_| r.bits(4).map(|v| v as u8))
            .collect::<Result<Vec<_>>>()?;
        if lens.iter().all(|&l| l == 0) && n > 0 {
            return Err(corrupt("empty code table"));
        }
        // a valid prefix code satisfies Kraft's inequality
        let kraft: f64 = lens
            .iter()
            .filter(|&&l| l > 0)
            .map(|&l| 0.5f64.powi(l as i32))
            .sum();
        if kraft > 1.0 + 1e-12 {
            return Err(corrupt("code lengths violate Kraft's inequality"));
        }
        Ok(Self::from_lengths(lens))
    }
}

/// `n` bytes of `bytes` from `*at`, advancing it.
pub fn take<'a>(bytes: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8]> {
    let end = at
        .checked_add(n)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| corrupt("truncated"))?;
    let s = &bytes[*at..end];
    *at = end;
    Ok(s)
}

/// Encodes a stream: table, then the bits.
pub fn encode(symbols: &[u16], alphabet: usize) -> Vec<u8> {
    let code = Code::of(symbols, alphabet);
    let mut out = Vec::new();
    code.write_table(&mut out);
    let mut w = BitWriter::default();
    for &s in symbols {
        code.write(&mut w, s);
    }
    let bits = w.finish();
    out.extend_from_slice(&(bits.len() as u32).to_le_bytes());
    out.extend(bits);
    out
}

/// A stream written by [`encode`], read from `bytes` at `*at`: its code and its bits.
pub fn open<'a>(bytes: &'a [u8], at: &mut usize) -> Result<(Code, BitReader<'a>)> {
    let code = Code::read_table(bytes, at)?;
    let n = u32::from_le_bytes(take(bytes, at, 4)?.try_into().expect("4 bytes")) as usize;
    Ok((code, BitReader::new(take(bytes, at, n)?)))
}

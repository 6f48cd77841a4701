//! The quantized weight format, described once as data. A [`Layout`] says how a
//! row-major weight `[rows, cols]` is stored: the code width (int8 or int4), which
//! elements share a scale (the whole tensor, one output row, or a group of `g`
//! consecutive elements of a row) and whether each block also has a zero point. Every
//! size the kernels, the loader, the saver and the size report need — bytes per row,
//! elements and bytes per block, the shapes of the scale and zero-point tensors — comes
//! from here.
//!
//! Codes (the meaning of a stored byte):
//! - **int8**, symmetric only: the byte is the two's-complement code `q ∈ [−127, 127]`,
//!   value `s·q` (−128 is outside the format, which keeps the AVX2 sign trick exact).
//! - **int4**: a nibble `n ∈ [0, 15]`, value `s·(n − z)` with `z = 8` when symmetric (codes
//!   1..=15 are used) or the block's stored zero point. Rows are cut into chunks of 32
//!   elements stored in 16 bytes: byte `j` of a chunk holds element `j` in its low nibble
//!   and element `j + 16` in its high nibble, so a kernel unpacks a chunk with one mask and
//!   one shift. int4 rows must therefore be a multiple of 32 long, and groups too.

use serde::{Deserialize, Serialize};

/// Which elements share one scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Scales {
    /// One scale for the whole tensor.
    Tensor,
    /// One scale per output row (per output channel).
    Channel,
    /// One scale per `g` consecutive elements of a row.
    Group(usize),
}

/// How a quantized weight is stored (see the module notes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    /// Code width: 8 or 4.
    pub bits: u8,
    pub scales: Scales,
    /// Whether each block stores a zero point (asymmetric; int4 only).
    #[serde(default)]
    pub zero_point: bool,
}

/// Elements of an int4 chunk (16 bytes).
pub const INT4_CHUNK: usize = 32;

impl Layout {
    /// Symmetric int8 with one scale per output row: the dynamic and static int8 weights.
    pub const INT8_CHANNEL: Layout = Layout {
        bits: 8,
        scales: Scales::Channel,
        zero_point: false,
    };

    /// Whether a `[rows, cols]` weight can be stored in this layout; the error says why not.
    pub fn check(&self, cols: usize) -> std::result::Result<(), String> {
        match self.bits {
            8 if self.zero_point => {
                return Err("int8 weights are symmetric: `zero_point` is int4 only".into())
            }
            8 => {}
            4 if !cols.is_multiple_of(INT4_CHUNK) => {
                return Err(format!(
                    "int4 rows are stored in chunks of {INT4_CHUNK}; a row of {cols} is not"
                ))
            }
            4 => {}
            b => return Err(format!("`bits` must be 8 or 4, not {b}")),
        }
        if let Scales::Group(g) = self.scales {
            let unit = if self.bits == 4 { INT4_CHUNK } else { 1 };
            if g == 0 || !g.is_multiple_of(unit) || !cols.is_multiple_of(g) {
                return Err(format!(
                    "group {g} must be a positive multiple of {unit} dividing the row length {cols}"
                ));
            }
        }
        Ok(())
    }

    /// Stored bytes of one row of `cols` codes.
    pub fn row_bytes(&self, cols: usize) -> usize {
        if self.bits == 4 {
            cols / 2
        } else {
            cols
        }
    }

    /// Elements of a row that share one scale.
    pub fn block_len(&self, cols: usize) -> usize {
        match self.scales {
            Scales::Group(g) => g,
            Scales::Tensor | Scales::Channel => cols,
        }
    }

    /// Scales (and zero points) per row; per-tensor layouts share one over all rows.
    pub fn blocks_per_row(&self, cols: usize) -> usize {
        cols / self.block_len(cols).max(1)
    }

    /// Shape of the scale tensor (and of the zero-point tensor when there is one).
    pub fn scale_shape(&self, rows: usize, cols: usize) -> Vec<usize> {
        match self.scales {
            Scales::Tensor => vec![1],
            Scales::Channel => vec![rows],
            Scales::Group(_) => vec![rows, self.blocks_per_row(cols)],
        }
    }

    /// Index into the scale tensor of block `b` of row `r`.
    #[inline]
    pub fn scale_index(&self, r: usize, b: usize, cols: usize) -> usize {
        match self.scales {
            Scales::Tensor => 0,
            Scales::Channel => r,
            Scales::Group(_) => r * self.blocks_per_row(cols) + b,
        }
    }

    /// Stored bytes of one block: its codes, its f32 scale, its zero point.
    pub fn bytes_per_block(&self, cols: usize) -> usize {
        self.block_len(cols) * self.bits as usize / 8 + 4 + usize::from(self.zero_point)
    }

    /// Stored bytes of a whole `[rows, cols]` weight (codes + scales + zero points).
    pub fn stored_bytes(&self, rows: usize, cols: usize) -> usize {
        let blocks: usize = self.scale_shape(rows, cols).iter().product();
        rows * self.row_bytes(cols) + blocks * (4 + usize::from(self.zero_point))
    }

    /// The largest code magnitude of a symmetric layout (int8: 127, int4: 7).
    fn qmax(&self) -> f32 {
        if self.bits == 8 {
            127.0
        } else {
            7.0
        }
    }

    /// Scale and zero point of a block from its values (round-to-nearest's choice, also
    /// GPTQ's at each group start): symmetric `s = max|v| / qmax`; asymmetric over
    /// `[min(v, 0), max(v, 0)]` in 15 steps. An all-zero block gets scale 0.
    pub fn block_params(&self, vals: &[f32]) -> (f32, u8) {
        if self.zero_point {
            let lo = vals.iter().fold(0f32, |a, &v| a.min(v));
            let hi = vals.iter().fold(0f32, |a, &v| a.max(v));
            let s = (hi - lo) / 15.0;
            if s == 0.0 {
                return (0.0, 8);
            }
            let z = (-lo / s).round().clamp(0.0, 15.0) as u8;
            (s, z)
        } else {
            let amax = vals.iter().fold(0f32, |a, &v| a.max(v.abs()));
            (amax / self.qmax(), if self.bits == 4 { 8 } else { 0 })
        }
    }

    /// The code of value `v` in a block of scale `s` and zero point `z` (int8: the byte of
    /// the two's-complement code; int4: the nibble).
    #[inline]
    pub fn encode(&self, v: f32, s: f32, z: u8) -> u8 {
        let q = if s > 0.0 { (v / s).round() } else { 0.0 };
        if self.bits == 8 {
            q.clamp(-127.0, 127.0) as i8 as u8
        } else {
            let (lo, hi) = if self.zero_point {
                (0.0, 15.0)
            } else {
                (1.0, 15.0)
            };
            (q + z as f32).clamp(lo, hi) as u8
        }
    }

    /// The value of code `c` in a block of scale `s` and zero point `z`.
    #[inline]
    pub fn decode(&self, c: u8, s: f32, z: u8) -> f32 {
        if self.bits == 8 {
            s * (c as i8) as f32
        } else {
            s * (c as f32 - z as f32)
        }
    }

    /// Label used in reports and recipes: `int8`, `int4-g128`, `int4-g64-asym`, …
    pub fn label(&self) -> String {
        let scales = match self.scales {
            Scales::Tensor => "-tensor".to_string(),
            Scales::Channel => String::new(),
            Scales::Group(g) => format!("-g{g}"),
        };
        let asym = if self.zero_point { "-asym" } else { "" };
        format!("int{}{scales}{asym}", self.bits)
    }
}

/// Byte offset within a packed row, and whether the high nibble, of int4 element `j`.
#[inline]
pub fn int4_position(j: usize) -> (usize, bool) {
    let (chunk, e) = (j / INT4_CHUNK, j % INT4_CHUNK);
    (chunk * INT4_CHUNK / 2 + e % 16, e >= 16)
}

/// Packs one row of codes (one per element) into its stored bytes.
pub fn pack_row(layout: &Layout, codes: &[u8], out: &mut [u8]) {
    if layout.bits == 8 {
        out.copy_from_slice(codes);
        return;
    }
    out.fill(0);
    for (j, &c) in codes.iter().enumerate() {
        let (at, high) = int4_position(j);
        out[at] |= if high { (c & 15) << 4 } else { c & 15 };
    }
}

/// The code of element `j` of a stored row.
#[inline]
pub fn code_at(layout: &Layout, row: &[u8], j: usize) -> u8 {
    if layout.bits == 8 {
        row[j]
    } else {
        let (at, high) = int4_position(j);
        if high {
            row[at] >> 4
        } else {
            row[at] & 15
        }
    }
}

/// The signed code of element `j` of a stored row of a symmetric layout (int8: the byte;
/// int4: the nibble less its implicit zero point 8): what the integer kernels multiply.
#[inline]
pub fn signed_code_at(layout: &Layout, row: &[u8], j: usize) -> i8 {
    let c = code_at(layout, row, j);
    if layout.bits == 8 {
        c as i8
    } else {
        c as i8 - 8
    }
}

//! Binary and ternary weights packed once into the int8 panels' order
//! ([`super::panel`]: 16 output channels × groups of 4 inputs), as bit-planes instead of
//! bytes: for panel `p` and input group `q`, one 64-bit word holds the signs of the 64
//! weights (bit `ch·4 + c % 4` set = −1) and, for ternary weights, a second word which of
//! them are non-zero. The kernels widen a word pair into the ±1/0 bytes of one panel
//! register inside the loop — AVX-512BW turns a 64-bit mask into 64 bytes with one
//! instruction (`vpmovm2b`), AVX2 with a shuffle, an AND and a compare — and then
//! multiply-add the activation codes exactly as the int8 kernels do (`vpdpbusd`, or
//! `vpmaddubsw` with the activation's sign moved onto the weight): adding or subtracting
//! each activation by its bit. The weights stay 1 or 2 bits each in memory.
//!
//! [`PackedBits::product`] equals [`PackedBits::product_reference`] — plain loops over
//! the stored levels — exactly on every path.

use crate::error::{Error, Result};
use crate::isa::{self, Isa};
use crate::math::bits::{check_rows, level_at, row_bytes};

use super::panel::{check_product, KG};
use super::NR;

/// A binary or ternary `[n, k]` weight in bit-plane panels.
#[derive(Debug)]
pub struct PackedBits {
    pub n: usize,
    pub k: usize,
    pub ternary: bool,
    /// Per panel and group: the sign word.
    signs: Vec<u64>,
    /// Per panel and group: the non-zero word (ternary only; empty for binary weights,
    /// whose padding inputs meet zero activations).
    nonzero: Vec<u64>,
    /// Σ_c level(j, c) per channel, padded to whole panels (the VNNI offset term).
    sums: Vec<i32>,
}

impl PackedBits {
    /// Packs stored rows (`n × row_bytes(k)` bytes, see `crate::math::bits`); a bad
    /// ternary byte is an error naming `what`.
    pub fn pack(what: &str, n: usize, k: usize, ternary: bool, rows: &[u8]) -> Result<Self> {
        let rb = row_bytes(k, ternary);
        if rows.len() != n * rb {
            return Err(Error::Data(format!(
                "{what}: {} bytes for a [{n}, {k}] {} weight, expected {}",
                rows.len(),
                if ternary { "ternary" } else { "binary" },
                n * rb
            )));
        }
        check_rows(rows, ternary, what)?;
        let nq = k.div_ceil(KG);
        let np = n.div_ceil(NR);
        let (mut signs, mut nonzero) = (vec![0u64; np * nq], vec![0u64; np * nq]);
        let mut sums = vec![0i32; np * NR];
        for j in 0..n {
            let row = &rows[j * rb..(j + 1) * rb];
            let (p, ch) = (j / NR, j % NR);
            for c in 0..k {
                let t = level_at(row, c, ternary);
                let bit = 1u64 << (ch * KG + c % KG);
                let at = p * nq + c / KG;
                if t != 0 {
                    nonzero[at] |= bit;
                }
                if t < 0 {
                    signs[at] |= bit;
                }
                sums[j] += t as i32;
            }
            // a binary panel's padding inputs read as +1 (no non-zero plane): the offset
            // term counts them too, as the kernel multiplies them with offset zeros
            if !ternary {
                sums[j] += (nq * KG - k) as i32;
            }
        }
        if !ternary {
            nonzero = Vec::new();
        }
        Ok(PackedBits {
            n,
            k,
            ternary,
            signs,
            nonzero,
            sums,
        })
    }

    /// Panels of [`NR`] channels.
    pub fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// Bytes the packed planes hold (what inference keeps in memory for this weight).
    pub fn bytes(&self) -> usize {
        8 * (self.signs.len() + self.nonzero.len())
    }

    /// `out[i·ldo + j] = Σ_c a[i·lda + c]·t(NR·panels.start + j, c)`: the contract of
    /// [`super::panel::PackedI8::product`], with the levels `t` of this weight — except that the
    /// columns of padding channels (past `n`) hold no meaning for binary weights.
    #[allow(clippy::too_many_arguments)]
    pub fn product(
        &self,
        isa: Isa,
        (a, abs): (&[i8], &[u8]),
        (m, lda): (usize, usize),
        signed: bool,
        panels: std::ops::Range<usize>,
        out: &mut [i32],
        ldo: usize,
    ) -> Result<()> {
        let isa = isa::require(isa)?;
        let what = if self.ternary { "ternary" } else { "binary" };
        check_product(
            what,
            (self.n, self.k),
            (a.len(), abs.len()),
            (m, lda),
            &panels,
            (out.len(), ldo),
        )?;
        let nq = self.k.div_ceil(KG);
        let words = panels.start * nq..panels.end * nq;
        let planes = match self.ternary {
            true => (&self.signs[words.clone()], &self.nonzero[words]),
            false => (&self.signs[words], &[][..]),
        };
        #[cfg(target_arch = "x86_64")]
        if isa::avx512_vnni(isa) {
            let sums = &self.sums[panels.start * NR..panels.end * NR];
            // SAFETY: avx512_vnni checked the CPU features; the lengths were checked
            // above (the kernel reads rows of `nq·4` bytes and `nq` words per panel).
            unsafe {
                super::bits_avx512::product((a, abs), (m, lda), planes, sums, nq, signed, out, ldo)
            };
            return Ok(());
        }
        #[cfg(target_arch = "x86_64")]
        if isa != Isa::Scalar {
            let vnni = isa::avx_vnni(isa);
            // SAFETY: every path above scalar implies AVX2 (avx_vnni checked AVX-VNNI); the
            // lengths were checked above.
            unsafe {
                super::bits_avx2::product((a, abs), (m, lda), planes, nq, signed, out, ldo, vnni)
            };
            return Ok(());
        }
        let _ = (signed, abs);
        self.product_reference(a, (m, lda), panels, out, ldo);
        Ok(())
    }

    /// The plain loops of [`Self::product`], one level at a time from the planes.
    pub fn product_reference(
        &self,
        a: &[i8],
        (m, lda): (usize, usize),
        panels: std::ops::Range<usize>,
        out: &mut [i32],
        ldo: usize,
    ) {
        for i in 0..m {
            for jj in 0..panels.len() * NR {
                let j = panels.start * NR + jj;
                out[i * ldo + jj] = match j < self.n {
                    true => (0..self.k)
                        .map(|c| a[i * lda + c] as i32 * self.level(j, c) as i32)
                        .sum(),
                    false => 0,
                };
            }
        }
    }

    /// The level of weight (`j`, `c`) as the planes hold it.
    pub fn level(&self, j: usize, c: usize) -> i8 {
        let nq = self.k.div_ceil(KG);
        let at = (j / NR) * nq + c / KG;
        let bit = 1u64 << ((j % NR) * KG + c % KG);
        if self.ternary && self.nonzero[at] & bit == 0 {
            0
        } else if self.signs[at] & bit != 0 {
            -1
        } else {
            1
        }
    }
}

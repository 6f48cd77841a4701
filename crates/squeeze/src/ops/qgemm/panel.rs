//! Int8 weights packed once into 16-channel panels for the broadcast GEMM micro-kernel
//! (the layout of Goto & van de Geijn's panels, with the 4-byte input groups of integer
//! dot-product kernels): panel p holds, for every group of 4 inputs q, the 4 codes of each
//! of its 16 output channels — 64 bytes, two AVX2 registers. The kernel broadcasts 4
//! activation bytes of a token to every lane, multiplies them with both registers
//! (`vpmaddubsw` + `vpmaddwd`) and accumulates 16 channels of that token in i32, so a tile
//! of 6 tokens × 16 channels needs no horizontal sums and its results are already
//! channels-last. Activations are unsigned magnitudes (≤ 127); signed ones move their sign
//! onto the weight (`vpsignb`), so pair sums stay below 2¹⁵ and the result is exact.
//!
//! On CPUs with AVX-512 VNNI a panel is one 512-bit register and `vpdpbusd` does the
//! multiply-adds (`avx512_panel`; signed codes offset by 128, taken back with per-channel
//! weight sums kept beside the panels).
//!
//! [`PackedI8::product`] equals [`super::gemm_i8_reference`] (transposed to `[m, n]`)
//! exactly on every path; the caller's [`crate::ops::pack_cache::PackCache`] keeps the
//! packed form of a stored weight by its identity (a replaced tensor has a new one).

use crate::error::{Error, Result};
use crate::isa::{self, Isa};

pub use super::NR;
/// Inputs per group (one broadcast i32).
pub(super) const KG: usize = 4;
/// Zero bytes after the last panel: the most the AMX product's last chunk reads past it.
const SLACK: usize = 16 * NR * KG;

/// An int8 weight `[n, k]` in panel layout, `n` padded to a multiple of [`NR`] and `k` to
/// a multiple of 4 with zero codes.
#[derive(Debug)]
pub struct PackedI8 {
    pub n: usize,
    pub k: usize,
    data: Vec<u8>,
    /// Where the panels start in `data`: a 64-byte boundary (the AMX tiles load whole
    /// cache lines; a misaligned tile load costs about twice as much).
    start: usize,
    /// Σ_c code(j, c) per channel, padded to whole panels: the VNNI kernel's offset term.
    sums: Vec<i32>,
    /// For the AMX implicit convolution over kernel rows of `run` bytes that are not whole
    /// 64-byte chunks: the panels with each kernel row's groups padded with zero groups to
    /// whole chunks (`run`, bytes, start), made on first use.
    runs: std::sync::OnceLock<(usize, Vec<u8>, usize)>,
}

impl PackedI8 {
    /// Packs codes given by `code(j, c)` for output channel `j < n` and input `c < k`
    /// (callers reorder their stored layout through it). A code of −128 (outside the
    /// int8 format, where the sign transfer would overflow) is an error naming `what`.
    pub fn pack(what: &str, n: usize, k: usize, code: impl Fn(usize, usize) -> u8) -> Result<Self> {
        // one pass over the codes checks them and sums each channel
        let mut sums = vec![0i32; n.div_ceil(NR) * NR];
        for (j, s) in sums.iter_mut().enumerate().take(n) {
            for c in 0..k {
                let v = code(j, c);
                if v == 0x80 {
                    return Err(Error::Data(format!(
                        "{what}: code −128 at row {j}, input {c} (int8 codes are in [−127, 127])"
                    )));
                }
                *s += v as i8 as i32;
            }
        }
        let (data, start) = aligned(&panel_bytes(n, k, code));
        Ok(PackedI8 {
            n,
            k,
            data,
            start,
            sums,
            runs: Default::default(),
        })
    }

    /// The panels, then [`SLACK`] zero bytes.
    fn panel_bytes(&self) -> &[u8] {
        &self.data[self.start..]
    }

    /// The panels for kernel rows of `run` inputs in whole 64-byte chunks (see `runs`),
    /// then [`SLACK`] zero bytes; `None` if this weight's inputs are not whole rows of
    /// `run`. Kernel rows of a multiple of 64 inputs are the panels as packed.
    fn run_panels(&self, run: usize) -> Option<&[u8]> {
        const CHUNK: usize = 64;
        if run == 0 || !self.k.is_multiple_of(run) {
            return None;
        }
        if run.is_multiple_of(CHUNK) {
            return Some(self.panel_bytes());
        }
        let (made, data, start) = self.runs.get_or_init(|| {
            let (nq, rows) = (Self::groups(self.k), self.k / run);
            let gp = run.div_ceil(CHUNK) * CHUNK / KG; // groups per padded kernel row
            let src = self.panel_bytes();
            // input i of kernel row r of channel ch in panel p: as packed, and re-placed
            let code =
                |p: usize, ch: usize, c: usize| src[((p * nq + c / KG) * NR + ch) * KG + c % KG];
            let mut out = vec![0u8; self.panels() * rows * gp * NR * KG];
            for (p, r, i) in (0..self.panels())
                .flat_map(|p| (0..rows).flat_map(move |r| (0..run).map(move |i| (p, r, i))))
            {
                let at = (((p * rows + r) * gp + i / KG) * NR) * KG + i % KG;
                for ch in 0..NR {
                    out[at + ch * KG] = code(p, ch, r * run + i);
                }
            }
            let (data, start) = aligned(&out);
            (run, data, start)
        });
        (*made == run).then(|| &data[*start..])
    }

    /// Bytes of one activation row the kernel reads: `k` rounded up to a multiple of 4
    /// (rows of the operand are at least this long, zero-padded).
    pub fn row_len(k: usize) -> usize {
        Self::groups(k) * KG
    }

    fn groups(k: usize) -> usize {
        k.div_ceil(KG)
    }

    /// Output columns of [`Self::product`]: `n` rounded up to a multiple of [`NR`].
    pub fn padded_n(&self) -> usize {
        self.panels() * NR
    }

    /// Panels of [`NR`] channels.
    pub fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// `out[i·ldo + j] = Σ_c a[i·lda + c]·w[NR·panels.start + j, c]` for `m` tokens and
    /// the channels of `panels` (those past `n` get 0), on the calling thread. `abs` holds
    /// `|a|`; `signed`: whether any code is negative (when not, `abs` may be `a` itself).
    /// `lda ≥ row_len(k)` with the row padding zero; `ldo ≥ NR·panels.len()`.
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
        check_product(
            "int8",
            (self.n, self.k),
            (a.len(), abs.len()),
            (m, lda),
            &panels,
            (out.len(), ldo),
        )?;
        let nq = Self::groups(self.k);
        let psize = nq * NR * KG;
        let data = &self.panel_bytes()[panels.start * psize..panels.end * psize];
        #[cfg(target_arch = "x86_64")]
        if isa::amx(isa) {
            let a = match signed {
                true => a.as_ptr() as *const u8,
                false => abs.as_ptr(),
            };
            let src = super::amx::Source::Rows { a, lda };
            let w = self.panel_bytes()[panels.start * psize..].as_ptr();
            // SAFETY: isa::amx checked the CPU and the tile permission; the lengths were
            // checked above and `pack` left SLACK bytes after the last panel.
            unsafe {
                super::amx::product(src, m, w, (panels.len(), nq), signed, out.as_mut_ptr(), ldo)
            };
            return Ok(());
        }
        #[cfg(target_arch = "x86_64")]
        if isa::avx512_vnni(isa) {
            let sums = &self.sums[panels.start * NR..panels.end * NR];
            // SAFETY: avx512_vnni checked the CPU features; the lengths were checked
            // above (the kernel reads rows of `nq·4` bytes, 16 sums and writes 16
            // columns per panel).
            unsafe {
                super::avx512_panel::product((a, abs), (m, lda), (data, sums), nq, signed, out, ldo)
            };
            return Ok(());
        }
        #[cfg(target_arch = "x86_64")]
        if isa != Isa::Scalar {
            // SAFETY: every path above scalar implies AVX2 (avx_vnni checked AVX-VNNI); the
            // lengths were checked above (the kernel reads rows of `nq·4` bytes and writes
            // 16 columns per panel).
            let valid = self.n.saturating_sub(panels.start * NR); // real channels from the range's first
            let vnni = isa::avx_vnni(isa);
            unsafe {
                super::avx2_panel::product(
                    a,
                    abs,
                    (m, lda),
                    (data, valid),
                    nq,
                    signed,
                    out,
                    ldo,
                    vnni,
                )
            };
            return Ok(());
        }
        let _ = (isa, signed, abs);
        Self::product_reference(data, nq, a, (m, lda), out, ldo);
        Ok(())
    }

    /// Whether [`Self::product_implicit`] runs on path `isa` for inputs of `c` channels
    /// (codes `signed` or not): AMX, any; AVX-512 VNNI and AVX2, non-negative codes in
    /// kernel rows of whole groups of 4 inputs (`c` a multiple of 4).
    pub fn implicit(isa: Isa, c: usize, signed: bool) -> bool {
        let simd = cfg!(target_arch = "x86_64") && isa != Isa::Scalar && isa.is_supported();
        isa::amx(isa) || (simd && c.is_multiple_of(KG) && !signed)
    }

    /// [`Self::product`] of a convolution without im2col rows: the window's `ho·wo`
    /// tokens read their inputs in place from `img`, the zero-padded channels-last image
    /// (`signed` codes, or non-negative ones), kernel row by kernel row — the im2col
    /// row's runs, uncopied. Returns the output's row pitch: pixel (oh, ow) is row
    /// `oh·pitch + ow` of `out`. That is `wo` (rows packed), except on AMX with stride 1,
    /// [`ConvWindow::slack`] readable bytes after the image's rows (which start on a
    /// 64-byte boundary, for aligned tile loads) and room for [`ConvWindow::out_rows`]
    /// rows: then the tiles read the image itself and the pitch is the padded width `wp`
    /// (the rows between hold unused sums). Otherwise AMX reads staged windows.
    pub fn product_implicit(
        &self,
        isa: Isa,
        (img, signed): (&[u8], bool),
        win: super::ConvWindow,
        panels: std::ops::Range<usize>,
        out: &mut [i32],
        ldo: usize,
    ) -> Result<usize> {
        let isa = isa::require(isa)?;
        let rows = win.ho.saturating_sub(1) * win.stride + win.k;
        let cols = win.wo.saturating_sub(1) * win.stride + win.k;
        let m = win.ho * win.wo;
        let fits = Self::implicit(isa, win.c, signed)
            && self.k == win.k * win.k * win.c
            && cols <= win.wp
            && img.len() >= rows * win.wp * win.c
            && panels.start <= panels.end
            && panels.end <= self.panels()
            && ldo >= panels.len() * NR
            && out.len() >= m.saturating_sub(1) * ldo + panels.len() * NR;
        if !fits {
            return Err(Error::Data(format!(
                "implicit int8 convolution product of a [{}, {}] weight over {win:?} on {}: \
                 {} image bytes, panels {panels:?}, output of {} (stride {ldo})",
                self.n,
                self.k,
                isa.name(),
                img.len(),
                out.len()
            )));
        }
        let nq = Self::groups(self.k);
        let psize = nq * NR * KG;
        let data = &self.panel_bytes()[panels.start * psize..panels.end * psize];
        #[cfg(target_arch = "x86_64")]
        let direct = win.stride == 1
            && img.len() >= super::amx::direct_len(&win)
            && out.len() >= super::amx::direct_rows(&win) * ldo;
        #[cfg(target_arch = "x86_64")]
        if isa::amx(isa) && direct {
            if let Some(w) = self.run_panels(win.k * win.c) {
                let w = w[panels.start * win.k * super::amx::run_bytes(&win) * NR..].as_ptr();
                let (op, np) = (out.as_mut_ptr(), panels.len());
                // SAFETY: isa::amx checked the CPU and the tile permission, `direct_len`
                // the bytes it reads and `direct_rows` the rows it writes; the panels were
                // checked above and `run_panels` holds the window's kernel rows in whole
                // chunks, then SLACK.
                unsafe { super::amx::product_direct((img.as_ptr(), signed), win, w, np, op, ldo) };
                return Ok(win.wp);
            }
        }
        #[cfg(target_arch = "x86_64")]
        if isa::amx(isa) {
            let src = super::amx::Source::Window {
                img: img.as_ptr(),
                win,
            };
            let w = self.panel_bytes()[panels.start * psize..].as_ptr();
            // SAFETY: isa::amx checked the CPU and the tile permission; the image, panels
            // and output sizes were checked above and `pack` left SLACK bytes after the
            // last panel.
            unsafe {
                super::amx::product(src, m, w, (panels.len(), nq), signed, out.as_mut_ptr(), ldo)
            };
            return Ok(win.wo);
        }
        #[cfg(target_arch = "x86_64")]
        if isa::avx512_vnni(isa) {
            // SAFETY: avx512_vnni checked the CPU features, `implicit` non-negative codes
            // of whole groups of channels; the image, panels and output sizes were checked
            // above.
            unsafe {
                super::avx512_panel::wide::product_implicit(
                    img.as_ptr(),
                    win,
                    data.as_ptr(),
                    (panels.len(), nq),
                    out.as_mut_ptr(),
                    ldo,
                )
            };
            return Ok(win.wo);
        }
        #[cfg(target_arch = "x86_64")]
        {
            // real channels from the range's first: a last half-empty panel multiplies half
            let valid = self.n.saturating_sub(panels.start * NR);
            // SAFETY: `implicit` checked a supported path above scalar (so AVX2; avx_vnni
            // checked AVX-VNNI) and non-negative codes of whole groups of channels; the
            // image, panels and output sizes were checked above.
            let vnni = isa::avx_vnni(isa);
            unsafe {
                super::avx2_panel::product_implicit(
                    img.as_ptr(),
                    win,
                    (data, valid),
                    nq,
                    out.as_mut_ptr(),
                    ldo,
                    vnni,
                )
            };
        }
        Ok(win.wo)
    }

    /// The plain loops of [`Self::product`] over packed panels `data`.
    fn product_reference(
        data: &[u8],
        nq: usize,
        a: &[i8],
        (m, lda): (usize, usize),
        out: &mut [i32],
        ldo: usize,
    ) {
        for i in 0..m {
            for j in 0..data.len() / (nq * KG) {
                let (p, ch) = (j / NR, j % NR);
                out[i * ldo + j] = (0..nq * KG)
                    .map(|c| {
                        let w = data[((p * nq + c / KG) * NR + ch) * KG + c % KG];
                        a[i * lda + c] as i32 * w as i8 as i32
                    })
                    .sum();
            }
        }
    }
}

/// The operands of a panel product of `m` rows (stride `lda`) with `panels` of an
/// `[n, k]` weight fit: rows of at least `row_len(k)` bytes, room for every panel's
/// columns in an output of stride `ldo`; panels past the weight's last (or reversed) are
/// an error even for no rows. `what` names the weight's form in the error.
pub(super) fn check_product(
    what: &str,
    (n, k): (usize, usize),
    (a, abs): (usize, usize),
    (m, lda): (usize, usize),
    panels: &std::ops::Range<usize>,
    (out, ldo): (usize, usize),
) -> Result<()> {
    let (kr, cols) = (PackedI8::row_len(k), panels.len() * NR);
    let fits = lda >= kr
        && ldo >= cols
        && a >= m.saturating_sub(1) * lda + kr
        && abs >= m.saturating_sub(1) * lda + kr
        && out >= m.saturating_sub(1) * ldo + cols;
    if panels.start > panels.end || panels.end > n.div_ceil(NR) || (m > 0 && !fits) {
        return Err(Error::Data(format!(
            "packed {what} product of {m} rows (stride {lda}) with panels {panels:?} of a \
             [{n}, {k}] weight: operands of {a} and {abs} bytes, output of {out} (stride {ldo})"
        )));
    }
    Ok(())
}

/// `bytes` copied to a fresh buffer at a 64-byte boundary (the AMX tiles load whole cache
/// lines; a misaligned tile load costs about twice as much), followed by [`SLACK`] zeros,
/// which the AMX product's last chunk may read; returns the buffer and where they start.
fn aligned(bytes: &[u8]) -> (Vec<u8>, usize) {
    let mut data = vec![0u8; bytes.len() + 64 + SLACK];
    let start = data.as_ptr().align_offset(64).min(64);
    data[start..start + bytes.len()].copy_from_slice(bytes);
    (data, start)
}

/// Codes `code(j, c)` of an `[n, k]` weight in the panel layout: for panel `p` and
/// group of 4 inputs `q`, the 4 codes of each of the panel's [`NR`] channels (64 bytes);
/// channels past `n` and inputs past `k` are zero.
pub(super) fn panel_bytes(n: usize, k: usize, code: impl Fn(usize, usize) -> u8) -> Vec<u8> {
    let nq = k.div_ceil(KG);
    let mut data = vec![0u8; n.div_ceil(NR) * nq * NR * KG];
    for j in 0..n {
        let (p, ch) = (j / NR, j % NR);
        for c in 0..k {
            data[((p * nq + c / KG) * NR + ch) * KG + c % KG] = code(j, c);
        }
    }
    data
}

/// `dst[px·c + ci] = src[ci·hw + px]`: an image's codes `[C, H·W]` reordered channels-last
/// `[H·W, C]`. The AVX2 path moves 8×8 blocks through SSE registers; the edges (and the
/// scalar path) go byte by byte. A pure permutation, so the paths agree exactly.
pub fn to_channels_last(
    isa: Isa,
    src: &[i8],
    (c, hw): (usize, usize),
    dst: &mut [i8],
) -> Result<()> {
    let isa = isa::require(isa)?;
    if src.len() != c * hw || dst.len() != c * hw {
        return Err(Error::Data(format!(
            "channels-last reorder of [{c}, {hw}]: {} codes in, room for {}",
            src.len(),
            dst.len()
        )));
    }
    let (mut cb, mut pb) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        (cb, pb) = (c / 8 * 8, hw / 8 * 8);
        // SAFETY: AVX2 (hence SSE2) is implied by any path above scalar; the lengths were
        // checked above and the kernel moves only whole 8×8 blocks inside them.
        unsafe { super::avx2_panel::transpose_bytes(src, (c, hw), (cb, pb), dst) };
    }
    let _ = isa;
    for ci in 0..c {
        let from = if ci < cb { pb } else { 0 };
        for px in from..hw {
            dst[px * c + ci] = src[ci * hw + px];
        }
    }
    Ok(())
}

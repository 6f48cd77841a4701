//! AMX-INT8 form of the int8 convolution's product ([`super::panel::PackedI8::product`]
//! and its implicit GEMM), for Intel CPUs with the tile unit (Sapphire Rapids and later;
//! Intel's AMX, as oneDNN's brgemm kernels use it). One `tdpbusd` multiplies a tile of
//! activation codes — 16 tokens × 64 bytes, i.e. 16 groups of 4 inputs, unsigned — with a
//! tile of weights — 16 groups × 16 channels × 4 codes, signed — into 16 × 16 i32 sums:
//! 16,384 multiply-adds, where one AVX-512 `vpdpbusd` does 256. The panel layout of
//! [`super::panel`] (per group of 4 inputs, 64 bytes: 4 codes of each of 16 channels) read
//! 16 groups at a time is already a weight tile, so the weights are not packed again.
//!
//! The convolution's tiles read the padded channels-last image itself
//! ([`product_direct`]): at stride 1, 16 consecutive flat positions of the padded image
//! are 16 tokens at a row stride of `c` bytes, so a kernel row's codes for 16 tokens are
//! one tile load; the positions past a row's last output are computed and dropped, and
//! the weights' kernel rows are padded with zero groups to whole 64-byte chunks, so a
//! chunk that runs into the next pixels multiplies them by zero. Other operands (im2col
//! rows, strided windows) are staged 32 tokens at a time into zero-padded rows of whole
//! chunks ([`product`]); a chunk past a panel's last group then meets zero codes. Signed
//! codes (a first layer's input) go through `tdpbssd` as they are, with no offset. A block
//! is 32 tokens × 2 panels: 4 accumulator tiles, 2 activation and 2 weight tiles, the
//! unit's 8 registers. The sums are integers, so every result equals the scalar reference
//! exactly.
//!
//! The tile registers are named in the instructions (`asm!`), so the compiler never
//! allocates them; each product loads the tile configuration on entry and releases the
//! tiles on exit. The process must hold the tile state permission (checked by
//! [`crate::isa::amx`] before any of this runs).

use std::arch::asm;
use std::cell::RefCell;

use super::{ConvWindow, NR};

/// Rows of a tile (tokens of an activation tile, groups of a weight tile).
const ROWS: usize = 16;
/// Bytes per tile row (16 groups of 4 activation codes; one group of 16 channels × 4).
const CHUNK: usize = 64;
/// Tokens staged per block (two activation tiles).
const BLOCK: usize = 2 * ROWS;

/// Where a product's tokens read their codes.
#[derive(Clone, Copy)]
pub(super) enum Source {
    /// Token `i`'s `nq·4` codes at `a + i·lda`.
    Rows { a: *const u8, lda: usize },
    /// Token (oh, ow)'s window in the zero-padded channels-last image `img`: kernel row
    /// `ki` is the `k·c` bytes at `((oh·stride + ki)·wp + ow·stride)·c`.
    Window { img: *const u8, win: ConvWindow },
}

thread_local! {
    /// Each thread's staged tokens, reused across calls.
    static STAGE: RefCell<Vec<u8>> = RefCell::default();
}

/// The tile configuration: palette 1, all 8 tiles 16 rows × 64 bytes.
#[repr(C, align(64))]
struct Config([u8; 64]);

impl Config {
    fn new() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t] = CHUNK as u8;
            c[48 + t] = ROWS as u8;
        }
        Config(c)
    }
}

macro_rules! load {
    ($t:literal, $p:expr, $stride:expr) => {
        asm!(concat!("tileloadd tmm", $t, ", [{p} + {s}]"), p = in(reg) $p, s = in(reg) $stride,
             options(nostack, readonly, preserves_flags))
    };
}

macro_rules! store {
    ($t:literal, $p:expr, $stride:expr) => {
        asm!(concat!("tilestored [{p} + {s}], tmm", $t), p = in(reg) $p, s = in(reg) $stride,
             options(nostack, preserves_flags))
    };
}

macro_rules! dot {
    ($signed:expr, $c:literal, $a:literal, $b:literal) => {
        if $signed {
            asm!(
                concat!("tdpbssd tmm", $c, ", tmm", $a, ", tmm", $b),
                options(nomem, nostack, preserves_flags)
            )
        } else {
            asm!(
                concat!("tdpbusd tmm", $c, ", tmm", $a, ", tmm", $b),
                options(nomem, nostack, preserves_flags)
            )
        }
    };
}

/// `out[i·ldo + 16p + ch] = Σ_c a(i, c)·w[16p + ch, c]` for `m` tokens and `np` panels of
/// `nq` groups at `w`; `signed`: whether the codes are signed (else unsigned bytes).
///
/// # Safety
/// The process holds the AMX tile permission on a CPU with AMX-INT8; `src` holds `m`
/// tokens of `nq·4` codes each (a window: `win.k·win.c` a multiple of 4, the image
/// `(ho − 1)·stride + k` rows of `wp·c` bytes); `w` holds `np` panels of `nq·64` bytes
/// followed by 1 KiB of readable bytes; `out` has `m` rows of stride `ldo ≥ 16·np`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn product(
    src: Source,
    m: usize,
    w: *const u8,
    (np, nq): (usize, usize),
    signed: bool,
    out: *mut i32,
    ldo: usize,
) {
    let kbytes = nq * 4;
    let kp = kbytes.div_ceil(CHUNK) * CHUNK;
    STAGE.with(|stage| {
        let mut stage = stage.borrow_mut();
        // rows start on 64-byte boundaries: a misaligned tile load costs about twice
        if stage.len() < BLOCK * kp + CHUNK {
            stage.resize(BLOCK * kp + CHUNK, 0);
        }
        let buf = stage.as_mut_ptr().add(stage.as_ptr().align_offset(CHUNK));
        configure();
        let mut i = 0;
        while i < m {
            let rows = (m - i).min(BLOCK);
            for r in 0..rows {
                let n = gather(src, i + r, kbytes, buf.add(r * kp));
                std::ptr::write_bytes(buf.add(r * kp + n), 0, kp - n);
            }
            block(buf, (rows, kp), w, (np, nq), signed, out.add(i * ldo), ldo);
            i += rows;
        }
        release();
    })
}

/// The implicit convolution's product read straight from the padded image, unstaged: for
/// stride 1, token (oh, ow) is the flat position `t = oh·wp + ow` of the padded image and
/// its kernel row `ki` the `k·c` bytes at `(t + ki·wp)·c`, so 16 consecutive flat
/// positions are one activation tile of row stride `c` (signed codes through `tdpbssd`).
/// The output keeps that layout — pixel (oh, ow) is row `oh·wp + ow` of `out`, a pitch of
/// `wp` — so accumulator tiles are stored straight; the rows of positions past a row's
/// last output (`ow ≥ wo`), and past the last block's end, hold unused sums. The weights' kernel rows are whole chunks
/// (`k·c` rounded up to 64 bytes, zero groups after the row's own): a chunk that runs
/// past a kernel row reads the next pixels' codes and multiplies them by zero.
///
/// # Safety
/// As [`product`], with `win.stride == 1`, `w` holding `np` panels of `k` kernel rows of
/// `k·c` inputs padded to whole chunks each (then 1 KiB of readable bytes), the image
/// readable for [`direct_len`] bytes and `out` writable for [`direct_rows`] rows.
pub(super) unsafe fn product_direct(
    (img, signed): (*const u8, bool),
    win: ConvWindow,
    w: *const u8,
    np: usize,
    out: *mut i32,
    ldo: usize,
) {
    let c = win.c;
    let cs = run_bytes(&win) / CHUNK; // chunks per kernel row
    let flat = flat_positions(&win);
    let psize = win.k * cs * ROWS * CHUNK;
    configure();
    let mut t0 = 0;
    while t0 < flat {
        let rows = (flat - t0).min(BLOCK);
        let two_a = rows > ROWS;
        let mut p = 0;
        while p < np {
            let two_b = p + 1 < np;
            let wp = w.add(p * psize);
            zero_accumulators();
            for ki in 0..win.k {
                let arow = img.add((t0 + ki * win.wp) * c);
                for cc in 0..cs {
                    let (a, b) = (arow.add(cc * CHUNK), wp.add((ki * cs + cc) * ROWS * CHUNK));
                    chunk((a, c), (b, psize), (two_a, two_b), signed);
                }
            }
            // flat position t's row at t·ldo: the output's pitch is the padded width
            let (o, st) = (out.add(t0 * ldo + p * NR), ldo * 4);
            store!(0, o, st);
            if two_b {
                store!(1, o.add(NR), st);
            }
            if two_a {
                store!(2, o.add(ROWS * ldo), st);
                if two_b {
                    store!(3, o.add(ROWS * ldo + NR), st);
                }
            }
            p += if two_b { 2 } else { 1 };
        }
        t0 += rows;
    }
    release();
}

/// Flat positions of the padded image from the first output to the last: `(ho − 1)·wp
/// + wo` (those past a row's last output included).
fn flat_positions(win: &ConvWindow) -> usize {
    (win.ho.max(1) - 1) * win.wp + win.wo
}

/// Loads the tile configuration (all 8 tiles 16 rows × 64 bytes) into the unit.
#[inline(always)]
unsafe fn configure() {
    let cfg = Config::new();
    asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly, preserves_flags));
}

/// Releases the tiles after a product.
#[inline(always)]
unsafe fn release() {
    asm!("tilerelease", options(nostack, nomem, preserves_flags));
}

/// Bytes of a kernel row of window `win` in the weights [`product_direct`] reads: its
/// `k·c` inputs padded to whole 64-byte chunks.
pub(super) fn run_bytes(win: &ConvWindow) -> usize {
    (win.k * win.c).div_ceil(CHUNK) * CHUNK
}

/// Bytes of the padded image [`product_direct`] reads for window `win`: its last block of
/// flat positions runs up to 31 past the last output, its last chunk past the kernel row.
pub(super) fn direct_len(win: &ConvWindow) -> usize {
    let flat = flat_positions(win);
    (flat + BLOCK - 2 + (win.k.max(1) - 1) * win.wp) * win.c + run_bytes(win)
}

/// Zeroes the accumulator tiles 0–3.
#[inline(always)]
unsafe fn zero_accumulators() {
    asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        options(nostack, nomem, preserves_flags)
    );
}

/// One 64-byte chunk of a block: activation tiles of 16 rows at `a` (and, with `two_a`,
/// the next 16 rows) at row stride `lda`; weight tiles at `b` (and, with `two_b`, the next
/// panel's at `b + psize`); each product added to its accumulator (tile 0: rows 0–15 ×
/// first panel, 1: × second panel, 2 and 3: rows 16–31).
#[inline(always)]
unsafe fn chunk(
    (a, lda): (*const u8, usize),
    (b, psize): (*const u8, usize),
    (two_a, two_b): (bool, bool),
    signed: bool,
) {
    load!(4, a, lda);
    load!(6, b, CHUNK);
    dot!(signed, 0, 4, 6);
    if two_b {
        load!(7, b.add(psize), CHUNK);
        dot!(signed, 1, 4, 7);
    }
    if two_a {
        load!(5, a.add(ROWS * lda), lda);
        dot!(signed, 2, 5, 6);
        if two_b {
            dot!(signed, 3, 5, 7);
        }
    }
}

/// Rows of `out` [`product_direct`] writes for window `win`: whole blocks of flat
/// positions (pitch `wp`).
pub(super) fn direct_rows(win: &ConvWindow) -> usize {
    flat_positions(win).div_ceil(BLOCK) * BLOCK
}

/// Copies token `i`'s codes to `dst` (a row: its `kbytes`; a window: its `k·k·c`);
/// returns how many.
unsafe fn gather(src: Source, i: usize, kbytes: usize, dst: *mut u8) -> usize {
    match src {
        Source::Rows { a, lda } => {
            std::ptr::copy_nonoverlapping(a.add(i * lda), dst, kbytes);
            kbytes
        }
        Source::Window { img, win } => {
            let (oh, ow) = (i / win.wo, i % win.wo);
            let run = win.k * win.c;
            for ki in 0..win.k {
                let at = ((oh * win.stride + ki) * win.wp + ow * win.stride) * win.c;
                std::ptr::copy_nonoverlapping(img.add(at), dst.add(ki * run), run);
            }
            win.k * run
        }
    }
}

/// Every panel against the staged block of `rows` tokens (stride `kp`), in pairs of
/// panels; stores `rows` rows of each panel's 16 columns.
unsafe fn block(
    buf: *const u8,
    (rows, kp): (usize, usize),
    w: *const u8,
    (np, nq): (usize, usize),
    signed: bool,
    out: *mut i32,
    ldo: usize,
) {
    let psize = nq * NR * 4;
    let (chunks, two_a) = (kp / CHUNK, rows > ROWS);
    let mut p = 0;
    while p < np {
        let two_b = p + 1 < np;
        let wp = w.add(p * psize);
        zero_accumulators();
        for kc in 0..chunks {
            let (a, b) = (buf.add(kc * CHUNK), wp.add(kc * ROWS * CHUNK));
            chunk((a, kp), (b, psize), (two_a, two_b), signed);
        }
        let o = out.add(p * NR);
        write::<0>(o, rows.min(ROWS), ldo);
        if two_b {
            write::<1>(o.add(NR), rows.min(ROWS), ldo);
        }
        if two_a {
            write::<2>(o.add(ROWS * ldo), rows - ROWS, ldo);
            if two_b {
                write::<3>(o.add(ROWS * ldo + NR), rows - ROWS, ldo);
            }
        }
        p += if two_b { 2 } else { 1 };
    }
}

/// Stores the first `rows` rows of accumulator tile `T` (0–3) at `out` (stride `ldo`
/// i32): straight for a whole tile, through a local tile for fewer rows.
unsafe fn write<const T: usize>(out: *mut i32, rows: usize, ldo: usize) {
    #[repr(C, align(64))]
    struct Tile([i32; ROWS * NR]);
    let mut tmp = Tile([0; ROWS * NR]);
    let (dst, stride) = match rows {
        ROWS => (out, ldo * 4),
        _ => (tmp.0.as_mut_ptr(), NR * 4),
    };
    match T {
        0 => store!(0, dst, stride),
        1 => store!(1, dst, stride),
        2 => store!(2, dst, stride),
        _ => store!(3, dst, stride),
    }
    if rows < ROWS {
        for r in 0..rows {
            std::ptr::copy_nonoverlapping(tmp.0.as_ptr().add(r * NR), out.add(r * ldo), NR);
        }
    }
}

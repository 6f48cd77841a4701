//! One call of the int8 convolution: each image's operand (im2col rows, or the padded
//! channels-last image of the implicit GEMM; made in `image`), the panels' products, the fused pool and
//! the epilogue (f32 values, or the next convolution's codes), with the per-thread
//! buffers they reuse.

use rayon::prelude::*;

use super::image::{cast_i8, cast_u8, im2col, image_codes, pad_image, OVERCOPY};
use super::{Geometry, Handoff, Packed, Panels};
use crate::error::{Error, Result};
use crate::ops::qgemm::{epilogue, panel::PackedI8, panel::NR, ConvWindow};
use crate::ops::team::Ptr;

/// What one image's product reads: im2col rows (codes, their magnitudes, the row stride,
/// whether any code is negative), or — the implicit GEMM: any codes on AMX, non-negative
/// ones of whole groups of channels on AVX-512 VNNI and AVX2 — the zero-padded channels-last image
/// itself (and whether any code is negative).
#[derive(Clone, Copy)]
enum Operand<'a> {
    Cols {
        a: (&'a [i8], &'a [u8]),
        lda: usize,
        signed: bool,
    },
    Image {
        img: &'a [u8],
        signed: bool,
        win: ConvWindow,
    },
}

/// How a block of i32 products becomes f32 outputs: `acc·scale[j] + bias[j]`, then ReLU.
pub(super) struct Out {
    pub(super) scale: Vec<f32>,
    pub(super) bias: Vec<f32>,
    pub(super) relu: bool,
    pub(super) pool: Option<Pool>,
    /// With a pool: per channel of the padded panels, `!0` where its factor is negative
    /// (which reverses the order the pool keeps), else 0 (see [`epilogue::pool_rows`]).
    pub(super) flip: Vec<i32>,
}

/// A max-pool fused after the convolution (and its ReLU): window `k`, stride `s`, over
/// the convolution's `ho × wo` output pixels.
#[derive(Clone, Copy)]
pub(super) struct Pool {
    pub(super) k: usize,
    pub(super) s: usize,
    pub(super) ho: usize,
    pub(super) wo: usize,
}

impl Pool {
    /// Output height and width after pooling (floor mode).
    pub(super) fn dims(&self) -> (usize, usize) {
        (
            (self.ho - self.k) / self.s + 1,
            (self.wo - self.k) / self.s + 1,
        )
    }
}

impl Out {
    /// Output pixels per channel: the convolution's `m`, or fewer after the fused pool.
    pub(super) fn pixels(&self, m: usize) -> usize {
        self.pool.map_or(m, |p| p.dims().0 * p.dims().1)
    }

    /// The i32 products of the operand's `m` tokens with the channels of `panels`,
    /// pooled when a pool is fused, handed to `epi` with where its rows are:
    /// `epi(acc, rows)`. With `banded` (an epilogue writing channels-last codes), an
    /// image is taken in bands of output rows whose products stay in the first-level
    /// cache from the product to the epilogue (`epi` once per band, `rows.first` its first
    /// pixel); otherwise whole, its rows packed (the channels-first f32 epilogue reads
    /// them so).
    fn rows(
        &self,
        isa: crate::isa::Isa,
        w: &Panels,
        (operand, m, banded): (Operand, usize, bool),
        panels: std::ops::Range<usize>,
        epi: &dyn Fn(&[i32], Rows) -> Result<()>,
    ) -> Result<()> {
        let Operand::Image { img, signed, win } = operand else {
            return self.band(isa, w, (operand, m, 0, true), panels, epi);
        };
        let step = match banded {
            true => self.band_rows(&win),
            false => win.ho,
        };
        for oh0 in (0..win.ho).step_by(step.max(1)) {
            let hb = step.min(win.ho - oh0);
            let band = Operand::Image {
                img: &img[oh0 * win.stride * win.wp * win.c..],
                signed,
                win: ConvWindow { ho: hb, ..win },
            };
            let packed = !banded;
            self.band(
                isa,
                w,
                (band, hb * win.wo, oh0, packed),
                panels.clone(),
                epi,
            )?;
        }
        Ok(())
    }

    /// Output rows per band of window `win`: about 256 positions of the padded width
    /// (32 KiB of products for 32 channels), whole pool windows when a pool is fused
    /// (non-overlapping ones; an overlapping pool takes the image whole).
    fn band_rows(&self, win: &ConvWindow) -> usize {
        let rows = (256 / win.wp.max(1)).max(1);
        match self.pool {
            None => rows,
            Some(p) if p.k == p.s => (rows / p.s).max(1) * p.s,
            Some(_) => win.ho,
        }
    }

    /// [`Self::rows`] of one band: `m` tokens from output row `oh0`; `packed`: rows at a
    /// pitch are moved together first (in place).
    fn band(
        &self,
        isa: crate::isa::Isa,
        w: &Panels,
        (operand, m, oh0, packed): (Operand, usize, usize, bool),
        panels: std::ops::Range<usize>,
        epi: &dyn Fn(&[i32], Rows) -> Result<()>,
    ) -> Result<()> {
        let cols = panels.len() * NR;
        // the rows the product may write (the AMX form: whole blocks of padded rows)
        let written = match operand {
            Operand::Image { win, .. } => win.out_rows(),
            Operand::Cols { .. } => m,
        };
        ACC.with(|acc| -> Result<()> {
            let mut acc = acc.borrow_mut();
            // every element is written by the product: only growth is zero-filled
            let len = acc.len().max(written * cols);
            acc.resize(len, 0);
            let mut pitch = w.product(isa, operand, m, panels.clone(), &mut acc, cols)?;
            if let (true, None, Some(pt), Operand::Image { win, .. }) =
                (packed, self.pool, pitch, operand)
            {
                // pixel r's row from (r / wo)·pitch + r % wo to r: each image row moves
                // down (or stays), so a forward pass never overwrites a row still unread
                for oh in 1..m / win.wo.max(1) {
                    let from = oh * pt * cols;
                    acc.copy_within(from..from + win.wo * cols, oh * win.wo * cols);
                }
                pitch = None;
            }
            let Some(p) = self.pool else {
                let rows = match (operand, pitch) {
                    (Operand::Image { win, .. }, Some(pitch)) => Rows {
                        first: oh0 * win.wo,
                        n: m,
                        ldo: cols,
                        wo: win.wo.max(1),
                        pitch,
                        pool: None,
                    },
                    (Operand::Image { win, .. }, None) => Rows::packed(oh0 * win.wo, m, cols),
                    _ => Rows::packed(0, m, cols),
                };
                return epi(&acc, rows);
            };
            let ho = m / p.wo.max(1); // this band's convolution rows
            if ho < p.k {
                return Ok(()); // rows the pool's floor mode drops
            }
            if !packed {
                // the codes' epilogue pools as it requantizes (see Rows::pool): this
                // band's pooled rows (whole windows) of the image's pooled width
                let (ph, pw) = ((ho - p.k) / p.s + 1, p.dims().1);
                let rows = Rows {
                    first: oh0 / p.s * pw,
                    n: ph * pw,
                    ldo: cols,
                    wo: p.wo,
                    pitch: pitch.unwrap_or(p.wo),
                    pool: Some((ho, p.k, p.s)),
                };
                return epi(&acc, rows);
            }
            POOLED.with(|pooled| {
                let mut pooled = pooled.borrow_mut();
                let flip = &self.flip[panels.start * NR..][..cols];
                let geo = (ho, p.wo, pitch.unwrap_or(p.wo), cols);
                let (ph, pw) = epilogue::pool_rows(isa, &acc, geo, (p.k, p.s), flip, &mut pooled)?;
                let first = oh0 / p.s * pw;
                epi(
                    &pooled[..ph * pw * cols],
                    Rows::packed(first, ph * pw, cols),
                )
            })
        })
    }
}

/// Where a block of i32 products keeps its rows: `n` output pixels of `ldo` columns from
/// pixel `first` of the image, pixel `first + r` at row `(r / wo)·pitch + r % wo` — packed (`pitch == wo`), or with the unused rows of the
/// AMX product's padded width between output rows (`pitch > wo`).
#[derive(Clone, Copy)]
pub(super) struct Rows {
    /// The image's output pixel the first row is (a band's rows start inside the image).
    pub(super) first: usize,
    pub(super) n: usize,
    pub(super) ldo: usize,
    wo: usize,
    pitch: usize,
    /// A max-pool the epilogue applies as it requantizes: `(ho, k, s)`, the band's
    /// `ho × wo` convolution pixels (at `pitch`) pooled by window `k`, stride `s`, into
    /// the `n` pixels from pooled pixel `first`.
    pool: Option<(usize, usize, usize)>,
}

impl Rows {
    /// `n` packed rows of stride `ldo`, from output pixel `first`.
    fn packed(first: usize, n: usize, ldo: usize) -> Self {
        Rows {
            first,
            n,
            ldo,
            wo: n.max(1),
            pitch: n.max(1),
            pool: None,
        }
    }

    /// Whether the rows are packed (pixel `r` at row `r`).
    fn is_packed(&self) -> bool {
        self.pitch == self.wo && self.pool.is_none()
    }
}

thread_local! {
    /// Each thread's i32 products, reused across calls.
    static ACC: std::cell::RefCell<Vec<i32>> = std::cell::RefCell::default();
    /// Each thread's pooled products (a fused max-pool), reused across calls.
    static POOLED: std::cell::RefCell<Vec<i32>> = std::cell::RefCell::default();
}

/// Per-thread buffers of the kernel, reused across images and calls.
#[derive(Default)]
struct Scratch {
    codes: Vec<i8>,
    hwc: Vec<i8>,
    cols: Vec<i8>,
    abs: Vec<u8>,
    /// The zero-padded channels-last image of the implicit GEMM.
    padded: Vec<i8>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// Runs `f` on this thread's scratch buffers (fresh ones if they are in use, e.g. by a
/// caller further up this thread's stack).
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut Scratch::default()),
    })
}

/// A convolution's input: f32 values `[N, C, H, W]`, or int8 codes handed over by the
/// int8 convolution before it, channels-last `[N, H, W, C]` (stored as bytes).
#[derive(Clone, Copy)]
pub(super) enum Src<'a> {
    Values(&'a [f32]),
    Codes(&'a [u8]),
}

/// What [`Run::images`] does with a task's products: `each(image, task, products, where
/// their rows are, the task's output channels)`.
type Each<'a> =
    dyn Fn(usize, usize, &[i32], Rows, std::ops::Range<usize>) -> Result<()> + Sync + 'a;

/// One call of [`forward`]: what every image's work reads.
pub(super) struct Run<'a> {
    pub(super) g: &'a Geometry,
    pub(super) w: &'a Packed,
    pub(super) out: &'a Out,
    pub(super) isa: crate::isa::Isa,
    /// The input's step inverse and code range.
    pub(super) quant: (f32, [i8; 2]),
    pub(super) dims: (usize, usize, usize, usize),
    pub(super) hw: (usize, usize),
}

/// The panels of a single image split over the threads; every panel of a batch's image
/// on its one thread.
fn panels_per_task(n: usize, np: usize) -> usize {
    match n {
        1 => np.div_ceil(rayon::current_num_threads()),
        _ => np,
    }
}

impl Run<'_> {
    /// Runs `each(image, task, i32 products, where their rows are, channels)` for every image (in
    /// parallel) and, within an image, every task's panels (in parallel for one image).
    fn images(&self, (src, banded): (Src, bool), each: &Each<'_>) -> Result<()> {
        let (n, c, h, wd) = self.dims;
        let (ho, wo) = self.hw;
        let (m, chw, lda) = (ho * wo, c * h * wd, PackedI8::row_len(self.g.cols()));
        let np = self.w.panels.panels();
        let per_task = panels_per_task(n, np);
        let tasks = np.div_ceil(per_task);
        let (pad, k) = (self.g.padding, self.g.kernel);
        let win = ConvWindow {
            c,
            k,
            stride: self.g.stride,
            wp: wd + 2 * pad,
            ho,
            wo,
        };
        // the implicit GEMM for int8 weights on AMX, or on AVX-512 VNNI and AVX2 for
        // non-negative codes of whole groups of channels (else im2col rows)
        let int8 = matches!(self.w.panels, Panels::I8(_));
        let implicit = |signed| int8 && PackedI8::implicit(self.isa, c, signed);
        let image = |i: usize| -> Result<()> {
            with_scratch(|s| {
                let Scratch {
                    codes,
                    hwc,
                    cols,
                    abs,
                    padded,
                } = s;
                let x = match src {
                    Src::Values(xs) => {
                        let x = &xs[i * chw..(i + 1) * chw];
                        image_codes(self.isa, x, self.quant, (c, h, wd), codes, hwc)?;
                        &hwc[..]
                    }
                    Src::Codes(cs) => cast_i8(&cs[i * chw..(i + 1) * chw]),
                };
                // the slack either reader needs: the implicit GEMM's, im2col's over-copy
                let slack = win.slack().max(OVERCOPY);
                let (at, signed) = pad_image(x, (c, h, wd), pad, slack, padded);
                let operand = if implicit(signed) {
                    Operand::Image {
                        img: cast_u8(&padded[at]),
                        signed,
                        win,
                    }
                } else {
                    let cols = im2col(&padded[at], &win, lda, cols);
                    if signed {
                        abs.clear();
                        abs.extend(cols.iter().map(|v| v.unsigned_abs()));
                    }
                    let mags = if signed { &abs[..] } else { cast_u8(cols) };
                    Operand::Cols {
                        a: (cols, mags),
                        lda,
                        signed,
                    }
                };
                let task = |t: usize| {
                    let panels = t * per_task..((t + 1) * per_task).min(np);
                    let ch = panels.start * NR..(panels.end * NR).min(self.g.out_channels);
                    let w = &self.w.panels;
                    self.out
                        .rows(self.isa, w, (operand, m, banded), panels, &|acc, rows| {
                            each(i, t, acc, rows, ch.clone())
                        })
                };
                match n {
                    1 => (0..tasks).into_par_iter().try_for_each(task),
                    _ => (0..tasks).try_for_each(task),
                }
            })
        };
        (0..n).into_par_iter().try_for_each(image)
    }

    /// The f32 output `[N, Co, pixels]`.
    pub(super) fn values(&self, src: Src) -> Result<Vec<f32>> {
        let (n, co) = (self.dims.0, self.g.out_channels);
        let p = self.out.pixels(self.hw.0 * self.hw.1);
        let mut y = crate::ops::output_buffer(n * co * p);
        let yp = Ptr(y.as_mut_ptr());
        let (isa, out) = (self.isa, self.out);
        // whole images: a task writes its channels' whole rows of the channels-first output
        self.images((src, false), &|i, _, acc, rows, ch| {
            // this task's channels of image i: a contiguous run of whole channel rows
            // SAFETY: tasks own disjoint channel ranges of disjoint images; `y` outlives
            // the call.
            let yt = unsafe { yp.slice((i * co + ch.start) * p, ch.len() * p) };
            let (sc, b) = (&out.scale[ch.clone()], &out.bias[ch]);
            // whole images, packed rows (see Out::rows)
            debug_assert!(rows.is_packed() && rows.first == 0);
            epilogue::rescale_transposed(isa, acc, (rows.n, rows.ldo), sc, b, out.relu, yt)
        })?;
        // SAFETY: the tasks wrote every channel row of every image
        unsafe { crate::ops::written(&mut y, n * co * p) };
        Ok(y)
    }

    /// The reader's codes `[N, pixels, Co]` (see [`Handoff`]).
    pub(super) fn codes(&self, src: Src, hand: Handoff) -> Result<Vec<u8>> {
        let (n, co) = (self.dims.0, self.g.out_channels);
        let p = self.out.pixels(self.hw.0 * self.hw.1);
        // one image's channels split over threads would write the same cache lines of
        // its channels-last rows: each task writes its own block, gathered below
        let per_task = panels_per_task(n, self.w.panels.panels()) * NR;
        let split = per_task < co;
        let (total, in_blocks) = (n * p * co, if split { p * co } else { 0 });
        // every code is written below (the tasks' rows, or the gathered blocks): not
        // cleared first
        let mut y = crate::ops::output_buffer::<u8>(total);
        let mut blocks = crate::ops::output_buffer::<u8>(in_blocks);
        let (yp, bp) = (Ptr(y.as_mut_ptr()), Ptr(blocks.as_mut_ptr()));
        let (isa, out) = (self.isa, self.out);
        self.images((src, true), &|i, _, acc, rows, ch| {
            let sb = (&out.scale[ch.clone()], &out.bias[ch.clone()]);
            let (w, n, first) = (ch.len(), rows.n, rows.first);
            let len = n.saturating_sub(1) * if split { w } else { co } + w;
            // SAFETY: the channels `ch` of image i's pixels from `first` (or this task's
            // block) belong to this task alone; when not split, the task holds every
            // channel, so the span of its rows is the image's own.
            let (o, ldout) = unsafe {
                match split {
                    true => (bp.slice(ch.start * p + first * w, len), w),
                    false => (yp.slice((i * p + first) * co + ch.start, len), co),
                }
            };
            // the f32 path's value (pooled first where a pool is fused), then the reader's
            // code for it
            let q = (hand.inv, hand.codes);
            let Some((ho, k, s)) = rows.pool else {
                let src = (acc, n, (rows.wo, rows.pitch, rows.ldo));
                return epilogue::requantize_rows(isa, src, sb, out.relu, q, (o, ldout));
            };
            let src = (acc, (ho, rows.wo, rows.pitch, rows.ldo));
            let flip = &out.flip[ch];
            POOLED.with(|pooled| {
                let scratch = &mut pooled.borrow_mut();
                let (o, pool) = ((o, ldout), (k, s, flip));
                epilogue::requantize_pooled(isa, src, pool, sb, out.relu, q, o, scratch).map(|_| ())
            })
        })?;
        // SAFETY: the tasks wrote every pixel's channels of every image: into y, or when
        // split into their blocks, which the loop below gathers into every code of y
        // before anything reads it
        unsafe {
            crate::ops::written(&mut blocks, in_blocks);
            crate::ops::written(&mut y, total);
        }
        if split {
            for c0 in (0..co).step_by(per_task) {
                let len = per_task.min(co - c0);
                let block = &blocks[c0 * p..][..p * len];
                for (row, b) in y.chunks_exact_mut(co).zip(block.chunks_exact(len)) {
                    row[c0..c0 + len].copy_from_slice(b);
                }
            }
        }
        Ok(y)
    }
}

impl Panels {
    /// The i32 products of the operand's `m` tokens with the channels of `panels`;
    /// `Some(pitch)` when the rows are pitched (see [`PackedI8::product_implicit`]),
    /// `None` when packed.
    fn product(
        &self,
        isa: crate::isa::Isa,
        operand: Operand,
        m: usize,
        panels: std::ops::Range<usize>,
        out: &mut [i32],
        ldo: usize,
    ) -> Result<Option<usize>> {
        match (self, operand) {
            (Panels::I8(w), Operand::Image { img, signed, win }) => w
                .product_implicit(isa, (img, signed), win, panels, out, ldo)
                .map(Some),
            (Panels::I8(w), Operand::Cols { a, lda, signed }) => w
                .product(isa, a, (m, lda), signed, panels, out, ldo)
                .map(|_| None),
            (Panels::Bits(w), Operand::Cols { a, lda, signed }) => w
                .product(isa, a, (m, lda), signed, panels, out, ldo)
                .map(|_| None),
            (Panels::Bits(_), Operand::Image { .. }) => Err(Error::Graph(
                "binary/ternary convolutions read im2col rows".into(),
            )),
        }
    }
}

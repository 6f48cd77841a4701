//! The static-int8 2-D convolution kernel (groups = 1; int8 or symmetric int4 weights) behind the `qconv2d` kind: the
//! input quantized with its static scale, each image's int8 im2col rows (one per output
//! pixel, channels-last) multiplied with the codes packed once into panels
//! ([`super::qgemm::panel`]: exact i32 sums), rescaled to f32 with the bias added and the
//! fused ReLU applied in the same pass. A fused max-pool is applied to the i32 products
//! before the rescale — exact, the rescale and ReLU being monotone — so a quarter of the
//! outputs are rescaled and written. Images run in parallel, or a single image's blocks of
//! output pixels. [`simulated`] is the reference it is tested against: the fake-quantized
//! input through candle's convolution with the dequantized weight.

use std::sync::Arc;

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use super::pack_cache::PackCache;
use super::qgemm::bits::PackedBits;
use super::qgemm::quantize::quantize_rows;
use super::qgemm::{self, panel, panel::PackedI8, panel::NR};
use super::with_cpu;
use crate::error::{Error, Result};
use crate::math::qlayout::{signed_code_at, Layout};
use crate::math::qweight::QView;

/// The convolution's attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Geometry {
    /// Elements of one output channel's filter (`in·k·k`).
    pub fn cols(&self) -> usize {
        self.in_channels * self.kernel * self.kernel
    }

    /// Output height and width for a `[c, h, w]` input.
    fn out_hw(&self, c: usize, h: usize, w: usize) -> Result<(usize, usize)> {
        let (hp, wp) = (h + 2 * self.padding, w + 2 * self.padding);
        if c != self.in_channels || self.stride == 0 || hp < self.kernel || wp < self.kernel {
            return Err(Error::Graph(format!(
                "qconv2d: input [{c}, {h}, {w}] does not fit {} channels, kernel {}",
                self.in_channels, self.kernel
            )));
        }
        let (k, s) = (self.kernel, self.stride);
        Ok(((hp - k) / s + 1, (wp - k) / s + 1))
    }
}

/// A node's packed weights and its output channels' weight scales.
pub struct Packed {
    panels: Panels,
    scales: Vec<f32>,
}

/// Packed int8 codes, or binary/ternary bit-planes: both multiply im2col rows of int8
/// activation codes into exact i32 sums under the same contract.
enum Panels {
    I8(Arc<PackedI8>),
    Bits(Arc<PackedBits>),
}

impl Panels {
    fn panels(&self) -> usize {
        match self {
            Panels::I8(w) => w.panels(),
            Panels::Bits(w) => w.panels(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn product(
        &self,
        isa: crate::isa::Isa,
        a: (&[i8], &[u8]),
        (m, lda): (usize, usize),
        signed: bool,
        panels: std::ops::Range<usize>,
        out: &mut [i32],
        ldo: usize,
    ) -> Result<()> {
        match self {
            Panels::I8(w) => w.product(isa, a, (m, lda), signed, panels, out, ldo),
            Panels::Bits(w) => w.product(isa, a, (m, lda), signed, panels, out, ldo),
        }
    }
}

/// How a block of i32 products becomes f32 outputs: `acc·scale[j] + bias[j]`, then ReLU.
struct Out {
    scale: Vec<f32>,
    bias: Vec<f32>,
    relu: bool,
    pool: Option<Pool>,
    /// With a pool: per channel of the padded panels, whether its factor is negative
    /// (which reverses the order the pool keeps).
    neg: Vec<bool>,
}

/// A max-pool fused after the convolution (and its ReLU): window `k`, stride `s`, over
/// the convolution's `ho × wo` output pixels.
#[derive(Clone, Copy)]
struct Pool {
    k: usize,
    s: usize,
    ho: usize,
    wo: usize,
}

impl Pool {
    /// Output height and width after pooling (floor mode).
    fn dims(&self) -> (usize, usize) {
        (
            (self.ho - self.k) / self.s + 1,
            (self.wo - self.k) / self.s + 1,
        )
    }
}

impl Out {
    /// Output pixels per channel: the convolution's `m`, or fewer after the fused pool.
    fn pixels(&self, m: usize) -> usize {
        self.pool.map_or(m, |p| p.dims().0 * p.dims().1)
    }

    /// The output rows (`[channels, pixels]`, in `y`) of the channels of `panels`: the
    /// products of the `m` im2col rows (codes and magnitudes, stride `lda`), pooled when a
    /// pool is fused, rescaled.
    #[allow(clippy::too_many_arguments)]
    fn rows(
        &self,
        isa: crate::isa::Isa,
        w: &Panels,
        a: (&[i8], &[u8]),
        (m, lda): (usize, usize),
        signed: bool,
        panels: std::ops::Range<usize>,
        y: &mut [f32],
    ) -> Result<()> {
        let cols = panels.len() * NR;
        let j = panels.start * NR..(panels.start * NR + y.len() / self.pixels(m).max(1));
        ACC.with(|acc| -> Result<()> {
            let mut acc = acc.borrow_mut();
            // every element is written by the product: only growth is zero-filled
            let len = acc.len().max(m * cols);
            acc.resize(len, 0);
            w.product(isa, a, (m, lda), signed, panels.clone(), &mut acc, cols)?;
            let (sc, b) = (&self.scale[j.clone()], &self.bias[j]);
            let Some(p) = self.pool else {
                return panel::rescale_transposed(isa, &acc, (m, cols), sc, b, self.relu, y);
            };
            POOLED.with(|pooled| {
                let mut pooled = pooled.borrow_mut();
                let neg = &self.neg[panels.start * NR..][..cols];
                let (ph, pw) =
                    panel::pool_rows(&acc, (p.ho, p.wo, cols), (p.k, p.s), neg, &mut pooled)?;
                panel::rescale_transposed(isa, &pooled, (ph * pw, cols), sc, b, self.relu, y)
            })
        })
    }
}

thread_local! {
    /// Each thread's i32 products, reused across calls.
    static ACC: std::cell::RefCell<Vec<i32>> = std::cell::RefCell::default();
    /// Each thread's pooled products (a fused max-pool), reused across calls.
    static POOLED: std::cell::RefCell<Vec<i32>> = std::cell::RefCell::default();
}

/// Zeroes `s`; an empty one costs no call (most im2col edges are empty).
fn zero(s: &mut [i8]) {
    if !s.is_empty() {
        s.fill(0);
    }
}

/// Non-negative codes are their own magnitudes.
fn cast_u8(v: &[i8]) -> &[u8] {
    // SAFETY: i8 and u8 have the same size and alignment; every bit pattern is valid.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len()) }
}

/// Per-thread buffers of the kernel, reused across images and calls.
#[derive(Default)]
struct Scratch {
    codes: Vec<i8>,
    hwc: Vec<i8>,
    cols: Vec<i8>,
    abs: Vec<u8>,
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

/// The stored codes (tensor `id`) packed in im2col order — (kernel row, kernel column,
/// channel) from the stored (channel, kernel row, kernel column) — once per tensor,
/// and each output channel's weight scale.
pub fn pack(
    cache: &PackCache,
    g: &Geometry,
    layout: &Layout,
    what: &str,
    id: candle_core::TensorId,
    w: &QView,
) -> Result<Packed> {
    let (co, kk, k2, cin) = (g.out_channels, g.cols(), g.kernel * g.kernel, g.in_channels);
    let scales = (0..co)
        .map(|j| w.scales[layout.scale_index(j, 0, kk)])
        .collect();
    let rb = layout.row_bytes(kk);
    let panels = cache.int8(id, || {
        PackedI8::pack(what, co, kk, |j, col| {
            let row = &w.codes[j * rb..(j + 1) * rb];
            signed_code_at(layout, row, (col % cin) * k2 + col / cin) as u8
        })
    })?;
    Ok(Packed {
        panels: Panels::I8(panels),
        scales,
    })
}

/// The stored binary/ternary rows (tensor `bits`, `[out, row_bytes]` in (channel, kernel
/// row, kernel column) order) packed as bit-planes in im2col order once per tensor — its
/// bytes are read only then — with each output channel's scale.
pub fn pack_bits(
    cache: &PackCache,
    g: &Geometry,
    (ternary, bits): (bool, &Tensor),
    what: &str,
    scales: &[f32],
) -> Result<Packed> {
    use crate::math::bits::{level_at, pack_row, row_bytes};
    let (co, kk, k2, cin) = (g.out_channels, g.cols(), g.kernel * g.kernel, g.in_channels);
    let rb = row_bytes(kk, ternary);
    if scales.len() != co {
        return Err(Error::Data(format!(
            "{what}: {} scales for {co} channels",
            scales.len()
        )));
    }
    let panels = cache.bits(bits.id(), || {
        let rows: Vec<u8> = bits.flatten_all()?.to_vec1()?;
        if rows.len() != co * rb {
            return Err(Error::Data(format!(
                "{what}: {} bytes for {co} channels of {kk} weights, expected {}",
                rows.len(),
                co * rb
            )));
        }
        crate::math::bits::check_rows(&rows, ternary, what)?;
        // reorder each row into im2col order (kernel row, kernel column, channel)
        let mut reordered = vec![0u8; co * rb];
        let mut t = vec![0i8; kk];
        for j in 0..co {
            let row = &rows[j * rb..(j + 1) * rb];
            for (col, v) in t.iter_mut().enumerate() {
                *v = level_at(row, (col % cin) * k2 + col / cin, ternary);
            }
            pack_row(&t, ternary, &mut reordered[j * rb..(j + 1) * rb]);
        }
        PackedBits::pack(what, co, kk, ternary, &reordered)
    })?;
    Ok(Packed {
        panels: Panels::Bits(panels),
        scales: scales.to_vec(),
    })
}

/// The int8 kernel over every image: `[N, out, Ho, Wo]`, ReLU applied when `relu`,
/// then the max-pool (window, stride) when one is fused (`[N, out, Ho', Wo']`). The
/// input's codes lie in `input_codes` (`[lowest, highest]`; default ±127).
pub fn forward(
    g: &Geometry,
    x: &Tensor,
    w: &Packed,
    sa: f32,
    bias: Option<&[f32]>,
    (relu, pool): (bool, Option<(usize, usize)>),
    input_codes: Option<[i8; 2]>,
) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (ho, wo) = g.out_hw(c, h, wd)?;
    let pool = match pool {
        Some((k, s)) if k > 0 && s > 0 && ho >= k && wo >= k => Some(Pool { k, s, ho, wo }),
        Some((k, s)) => {
            return Err(Error::Graph(format!(
                "qconv2d: cannot pool its {ho}×{wo} output with kernel {k}, stride {s}"
            )))
        }
        None => None,
    };
    let (co, m, chw) = (g.out_channels, ho * wo, c * h * wd);
    let codes = input_codes.unwrap_or([-127, 127]);
    let lda = PackedI8::row_len(g.cols());
    let isa = crate::isa::active()?;
    let inv = if sa > 0.0 { 1.0 / sa } else { 0.0 };
    // each output channel's factor from i32 to f32, and its offset
    let scale: Vec<f32> = w.scales.iter().map(|s| s * sa).collect();
    let np = w.panels.panels();
    let neg = match pool {
        Some(_) => (0..np * NR)
            .map(|j| scale.get(j).is_some_and(|f| *f < 0.0))
            .collect(),
        None => Vec::new(),
    };
    let out = Out {
        scale,
        bias: bias.map_or_else(|| vec![0.0; co], |b| b.to_vec()),
        relu,
        pool,
        neg,
    };
    let p = out.pixels(m);
    let mut y = vec![0f32; n * co * p];
    // a batch: images in parallel, each on one thread; a single image: its channels'
    // panels split over the threads (each writes whole output rows)
    let per_task = match n {
        1 => np.div_ceil(rayon::current_num_threads()),
        _ => np,
    };
    with_cpu::<f32, _>(x, |xs| {
        let image = |(i, yi): (usize, &mut [f32])| -> Result<()> {
            with_scratch(|s| {
                let x = &xs[i * chw..(i + 1) * chw];
                let signed = image_cols(g, isa, x, (inv, codes), (c, h, wd), (ho, wo), lda, s)?;
                let a = (
                    &s.cols[..],
                    if signed { &s.abs[..] } else { cast_u8(&s.cols) },
                );
                let task = |(t, yt): (usize, &mut [f32])| {
                    let panels = t * per_task..((t + 1) * per_task).min(np);
                    out.rows(isa, &w.panels, a, (m, lda), signed, panels, yt)
                };
                match n {
                    1 => yi
                        .par_chunks_mut(per_task * NR * p)
                        .enumerate()
                        .try_for_each(task),
                    _ => yi
                        .chunks_mut(per_task * NR * p)
                        .enumerate()
                        .try_for_each(task),
                }
            })
        };
        y.par_chunks_mut(co * p).enumerate().try_for_each(image)
    })??;
    let (ho, wo) = pool.map_or((ho, wo), |q| q.dims());
    Ok(Tensor::from_vec(y, (n, co, ho, wo), x.device())?)
}

/// One image's int8 im2col rows (`[Ho·Wo, lda]`, in `s.cols`) from its f32 values
/// `[C, H, W]`: codes at the static scale, reordered channels-last, then gathered;
/// their magnitudes in `s.abs` when any code is negative (returned).
#[allow(clippy::too_many_arguments)]
fn image_cols(
    g: &Geometry,
    isa: crate::isa::Isa,
    x: &[f32],
    (inv, [lo, hi]): (f32, [i8; 2]),
    (c, h, w): (usize, usize, usize),
    (ho, wo): (usize, usize),
    lda: usize,
    s: &mut Scratch,
) -> Result<bool> {
    let chw = c * h * w;
    s.codes.resize(chw, 0);
    // the magnitudes that matter are the im2col rows' (below)
    let lim = hi.max(lo.saturating_neg());
    qgemm::quantize_row(isa, x, (inv, lim), &mut s.codes, None);
    if lo > -lim || hi < lim {
        // a narrower code range (low-bit inputs): clipping the rounded codes equals
        // rounding the clipped values, the bounds being integers
        s.codes.iter_mut().for_each(|v| *v = (*v).clamp(lo, hi));
    }
    let signed = s.codes.iter().fold(0i8, |lo, &v| lo.min(v)) < 0;
    s.hwc.resize(chw, 0);
    panel::to_channels_last(isa, &s.codes, (c, h * w), &mut s.hwc)?;
    im2col(g, &s.hwc, (c, h, w), (ho, wo), lda, &mut s.cols);
    if signed {
        s.abs.clear();
        s.abs.extend(s.cols.iter().map(|v| v.unsigned_abs()));
    }
    Ok(signed)
}

/// One image's int8 im2col rows `[Ho·Wo, lda]` into `cols`, from its codes in
/// channels-last order `[H, W, C]`: row (oh, ow) holds, kernel row by kernel row, the
/// C·k codes under the kernel as one contiguous run of the input row (zero in the
/// padding and beyond the row's `in·k·k` values).
fn im2col(
    g: &Geometry,
    x: &[i8],
    (c, h, w): (usize, usize, usize),
    (ho, wo): (usize, usize),
    lda: usize,
    cols: &mut Vec<i8>,
) {
    let (k, s, pad) = (g.kernel as isize, g.stride, g.padding as isize);
    let kc = k as usize * c;
    // every byte is written below (zeros included): no clearing pass
    cols.resize(ho * wo * lda, 0);
    for oh in 0..ho {
        for ow in 0..wo {
            let row = &mut cols[(oh * wo + ow) * lda..][..lda];
            let iw0 = (ow * s) as isize - pad;
            // kernel columns inside the image: iw0 + kj in [lo, hi) ⊂ [0, w)
            let lo = (-iw0).clamp(0, k) as usize;
            let hi = ((w as isize - iw0).min(k).max(0) as usize).max(lo);
            for (ki, seg) in row[..k as usize * kc].chunks_exact_mut(kc).enumerate() {
                let ih = (oh * s) as isize + ki as isize - pad;
                if ih < 0 || ih >= h as isize || lo == hi {
                    seg.fill(0);
                    continue;
                }
                let src = (ih as usize * w + (iw0 + lo as isize) as usize) * c;
                let n = (hi - lo) * c;
                zero(&mut seg[..lo * c]);
                seg[lo * c..hi * c].copy_from_slice(&x[src..src + n]);
                zero(&mut seg[hi * c..]);
            }
            zero(&mut row[k as usize * kc..]);
        }
    }
}

/// The simulated layer in the input's dtype: the fake-quantized input (same codes as
/// the kernel's) through candle's convolution with the dequantized weight.
pub fn simulated(
    g: &Geometry,
    x: &Tensor,
    wv: &QView,
    sa: f32,
    bias: Option<&[f32]>,
    relu: bool,
) -> Result<Tensor> {
    let (co, kk) = (g.out_channels, g.cols());
    let mut w = vec![0f32; co * kk];
    for (j, row) in w.chunks_exact_mut(kk).enumerate() {
        wv.dequantize_row(j, row);
    }
    simulated_dense(g, x, w, sa, bias, relu)
}

/// [`simulated`] with the weight's values given (`[out, in·k·k]`, row-major).
pub fn simulated_dense(
    g: &Geometry,
    x: &Tensor,
    w: Vec<f32>,
    sa: f32,
    bias: Option<&[f32]>,
    relu: bool,
) -> Result<Tensor> {
    let (co, k) = (g.out_channels, g.kernel);
    let wt = Tensor::from_vec(w, (co, g.in_channels, k, k), x.device())?.to_dtype(x.dtype())?;
    let dims = x.dims().to_vec();
    let xs: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let per = dims[1..].iter().product::<usize>().max(1);
    let q = quantize_rows(&xs, per, Some(sa), per, 127);
    let deq: Vec<f32> = q.codes.iter().map(|c| *c as f32 * sa).collect();
    let xq = Tensor::from_vec(deq, dims.as_slice(), x.device())?.to_dtype(x.dtype())?;
    let xin = (x + (xq - x)?.detach())?;
    let y = xin.conv2d(&wt, g.padding, g.stride, 1, 1)?;
    let y = match bias {
        Some(b) => {
            let b = Tensor::from_vec(b.to_vec(), (1, co, 1, 1), x.device())?.to_dtype(y.dtype())?;
            y.broadcast_add(&b)?
        }
        None => y,
    };
    Ok(if relu { y.relu()? } else { y })
}

//! The static-int8 2-D convolution kernel (groups = 1; int8 or symmetric int4 weights)
//! behind the `qconv2d` kind. The input is quantized with its static scale and reordered
//! channels-last — or arrives so, as codes handed over by the int8 convolution before it
//! ([`Handoff`]). Each image's codes are multiplied with the weight codes packed once into
//! panels ([`super::qgemm::panel`]: exact i32 sums): on AVX-512 VNNI, for non-negative
//! codes, read in place from the zero-padded image kernel row by kernel row (an implicit
//! GEMM); elsewhere through im2col rows, one per output pixel. A fused max-pool is applied
//! to the i32 products before the epilogue — exact, the rescale and ReLU being monotone.
//! The epilogue writes f32 values (rescaled, bias, ReLU) or the next convolution's codes.
//! Images run in parallel, or a single image's panels over the threads (`run.rs`).
//! [`simulated`] is the reference it is tested against: the fake-quantized input through
//! candle's convolution with the dequantized weight.

use std::sync::Arc;

use candle_core::{DType, Tensor};

use super::pack_cache::PackCache;
use super::qgemm::bits::PackedBits;
use super::qgemm::quantize::quantize_rows;
use super::qgemm::{panel::PackedI8, panel::NR};
use super::with_cpu;

mod image;
mod run;
use crate::error::{Error, Result};
use crate::math::qlayout::{signed_code_at, Layout};
use crate::math::qweight::QView;
use run::{Out, Pool, Run, Src};

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

/// Where an int8 convolution's output goes as int8 codes instead of f32 values: the
/// reading int8 convolution's input step (`1 / its static scale`, 0 for a zero scale) and
/// code range. The codes are exactly what that convolution's quantizer makes of the f32
/// values this one would have written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Handoff {
    pub inv: f32,
    pub codes: [i8; 2],
}

/// The int8 convolution of `x` — f32 `[N, C, H, W]`, or the previous convolution's codes
/// `[N, H, W, C]` (u8 bytes of i8 codes, see [`Handoff`]) — with the fused ReLU and
/// max-pool: f32 `[N, Co, Ho, Wo]`, or with `hand` the next convolution's codes
/// `[N, Ho, Wo, Co]` (no f32 output, no quantization or transposition at the reader).
#[allow(clippy::too_many_arguments)]
pub fn forward(
    g: &Geometry,
    x: &Tensor,
    w: &Packed,
    sa: f32,
    bias: Option<&[f32]>,
    (relu, pool): (bool, Option<(usize, usize)>),
    input_codes: Option<[i8; 2]>,
    hand: Option<Handoff>,
) -> Result<Tensor> {
    let codes_in = x.dtype() == DType::U8;
    let (n, c, h, wd) = match codes_in {
        true => {
            let (n, h, w, c) = x.dims4()?;
            (n, c, h, w)
        }
        false => x.dims4()?,
    };
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
    let co = g.out_channels;
    let isa = crate::isa::active()?;
    let inv = if sa > 0.0 { 1.0 / sa } else { 0.0 };
    // each output channel's factor from i32 to f32, and its offset
    let scale: Vec<f32> = w.scales.iter().map(|s| s * sa).collect();
    let np = w.panels.panels();
    let flip = match pool {
        Some(_) => (0..np * NR)
            .map(|j| match scale.get(j).is_some_and(|f| *f < 0.0) {
                true => !0,
                false => 0,
            })
            .collect(),
        None => Vec::new(),
    };
    let out = Out {
        scale,
        bias: bias.map_or_else(|| vec![0.0; co], |b| b.to_vec()),
        relu,
        pool,
        flip,
    };
    let run = Run {
        g,
        w,
        out: &out,
        isa,
        quant: (inv, input_codes.unwrap_or([-127, 127])),
        dims: (n, c, h, wd),
        hw: (ho, wo),
    };
    let (ho, wo) = pool.map_or((ho, wo), |q| q.dims());
    match (codes_in, hand) {
        (false, None) => {
            let y = with_cpu::<f32, _>(x, |xs| run.values(Src::Values(xs)))??;
            Ok(Tensor::from_vec(y, (n, co, ho, wo), x.device())?)
        }
        (true, None) => {
            let y = with_cpu::<u8, _>(x, |xs| run.values(Src::Codes(xs)))??;
            Ok(Tensor::from_vec(y, (n, co, ho, wo), x.device())?)
        }
        (false, Some(hd)) => {
            let y = with_cpu::<f32, _>(x, |xs| run.codes(Src::Values(xs), hd))??;
            Ok(Tensor::from_vec(y, (n, ho, wo, co), x.device())?)
        }
        (true, Some(hd)) => {
            let y = with_cpu::<u8, _>(x, |xs| run.codes(Src::Codes(xs), hd))??;
            Ok(Tensor::from_vec(y, (n, ho, wo, co), x.device())?)
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

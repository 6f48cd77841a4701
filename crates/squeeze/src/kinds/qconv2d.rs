//! A materialized static-int8 2-D convolution (groups = 1): what the `quantize` pass
//! makes of a Conv2d node under `activations = "static"`. Tensors: `weight_q` (int8 codes
//! `[out, in·k·k]`, standing for `[out, in, k, k]`), `weight_scale` (per output channel
//! or one), `input_scale` (`[1]`, calibrated) and `bias`. Inference quantizes the input
//! with its static scale, builds each image's int8 im2col rows (one per output pixel,
//! channels-last) and multiplies them with the codes packed once into panels
//! ([`crate::ops::qgemm::panel`]: exact i32 sums); the result is rescaled to f32 with the
//! bias added, and the ReLU that is the node's only reader applied in the same pass. A
//! max-pool reading the result (the interpreter fuses it at inference) is applied to the
//! i32 products before the rescale — exact, the rescale and ReLU being monotone — so a
//! quarter of the outputs are rescaled and written, and no separate pooling pass runs.
//! Images run in parallel, or a single image's blocks of output pixels. Any other caller
//! gets the simulated layer (fake-quantized input, dequantized weight, candle's
//! convolution) — the reference the kernel is tested against. Coupling: pinned on both
//! sides.

use std::sync::Arc;

use candle_core::{DType, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::couple::{Coupler, Seg};
use super::with_node_view;
use super::{arity, positive, Absorb, Inputs, LayerKind, NodeRun, TensorRole, TensorSpec};
use super::{Node, Op};
use crate::error::{Error, Result};
use crate::math::qlayout::{Layout, Scales};
use crate::math::qweight::QView;
use crate::ops::qgemm::quantize::quantize_rows;
use crate::ops::qgemm::{self, panel, panel::PackedI8, panel::NR};
use crate::ops::with_cpu;
use crate::params::f32_values;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QConv2d {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub bias: bool,
    /// int8, per-channel or per-tensor scales.
    pub layout: Layout,
}

/// A node's packed codes and its output channels' weight scales.
struct Packed {
    panels: Arc<PackedI8>,
    scales: Vec<f32>,
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
        w: &PackedI8,
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

impl LayerKind for QConv2d {
    fn name(&self) -> &'static str {
        "qconv2d"
    }
    /// The ReLU after it, then (inference) the max-pool after that: the window max is
    /// taken over the i32 products before they are rescaled.
    fn absorbs(&self, reader: Absorb, so_far: &[Absorb], train: bool) -> bool {
        match reader {
            Absorb::Relu => so_far.is_empty(),
            Absorb::MaxPool { .. } => !train && so_far.iter().all(|a| *a == Absorb::Relu),
        }
    }
    fn quantized_weight(&self) -> Option<(Layout, (usize, usize))> {
        Some((self.layout, (self.out_channels, self.cols())))
    }
    fn inputs(&self) -> Inputs {
        Inputs::Values
    }
    fn out_shape(&self, ins: &[&[usize]]) -> std::result::Result<Vec<usize>, String> {
        positive("in_channels", self.in_channels)?;
        positive("out_channels", self.out_channels)?;
        positive("kernel", self.kernel)?;
        positive("stride", self.stride)?;
        if self.layout.bits != 8 || matches!(self.layout.scales, Scales::Group(_)) {
            return Err("qconv2d holds int8 weights with per-channel or per-tensor scales".into());
        }
        self.layout.check(self.cols())?;
        let s = arity(ins, 1)?;
        if s.len() != 3 || s[0] != self.in_channels {
            return Err(format!(
                "input {s:?}, expected [{}, H, W]",
                self.in_channels
            ));
        }
        let (h, w) = (s[1] + 2 * self.padding, s[2] + 2 * self.padding);
        if h < self.kernel || w < self.kernel {
            return Err(format!("kernel {} larger than padded input", self.kernel));
        }
        let (k, st) = (self.kernel, self.stride);
        Ok(vec![self.out_channels, (h - k) / st + 1, (w - k) / st + 1])
    }
    fn tensors(&self) -> Vec<TensorSpec> {
        let (co, k) = (self.out_channels, self.kernel);
        let logical = vec![co, self.in_channels, k, k];
        let mut t = super::quantized_specs(&self.layout, (co, self.cols()), logical);
        t.push(TensorSpec::f32("input_scale", vec![1], TensorRole::Scale));
        if self.bias {
            t.push(TensorSpec::param("bias", vec![co]));
        }
        t
    }
    fn macs(&self, _: &[&[usize]], out: &[usize]) -> u64 {
        super::numel(out) * self.cols() as u64
    }
    fn couple(&self, cx: &mut Coupler, node: &Node, ins: &[Vec<Seg>], _: &[&[usize]]) -> Vec<Seg> {
        let why = "a qconv2d (quantized) layer is not channel-pruned";
        super::pinned_rows(cx, node, ins, (self.out_channels, self.bias), why)
    }
    fn forward(&self, cx: &mut NodeRun) -> Result<Tensor> {
        let x = cx.x();
        let sa = f32_values(cx.param("input_scale")?)?[0];
        let bias = match self.bias {
            true => Some(f32_values(cx.param("bias")?)?),
            false => None,
        };
        let (dims, relu, pool) = ((self.out_channels, self.cols()), cx.fuse_relu, cx.fuse_pool);
        let codes_id = cx.param("weight_q")?.id();
        with_node_view(cx.params, &cx.node.name, self.layout, dims, |w| {
            if x.track_op() || x.dtype() != DType::F32 {
                let y = self.simulated(x, w, sa, bias.as_deref(), relu)?;
                return match pool {
                    Some((k, s)) => crate::ops::act::max_pool2d(&y, k, s),
                    None => Ok(y),
                };
            }
            let packed = self.packed(&cx.node.name, codes_id, w)?;
            self.kernel(x, &packed, sa, bias.as_deref(), (relu, pool))
        })
    }
    fn refreshed(&self, dims: &dyn Fn(&str) -> Option<Vec<usize>>, _: &[&[usize]]) -> Option<Op> {
        let d = dims("weight_q")?;
        Some(Op::QConv2d(QConv2d {
            out_channels: d[0],
            ..self.clone()
        }))
    }
}

impl QConv2d {
    /// Elements of one output channel's filter (`in·k·k`).
    pub fn cols(&self) -> usize {
        self.in_channels * self.kernel * self.kernel
    }

    /// The stored codes (tensor `id`) packed in im2col order — (kernel row, kernel column,
    /// channel) from the stored (channel, kernel row, kernel column) — once per tensor,
    /// and each output channel's weight scale.
    fn packed(&self, node: &str, id: candle_core::TensorId, w: &QView) -> Result<Packed> {
        let (co, kk, k2, cin) = (
            self.out_channels,
            self.cols(),
            self.kernel * self.kernel,
            self.in_channels,
        );
        let scales = (0..co)
            .map(|j| w.scales[self.layout.scale_index(j, 0, kk)])
            .collect();
        let what = format!("{node}.weight_q");
        let panels = panel::packed(id, || {
            PackedI8::pack(&what, co, kk, |j, col| {
                w.codes[j * kk + (col % cin) * k2 + col / cin]
            })
        })?;
        Ok(Packed { panels, scales })
    }

    /// The int8 kernel over every image: `[N, out, Ho, Wo]`, ReLU applied when `relu`,
    /// then the max-pool (window, stride) when one is fused (`[N, out, Ho', Wo']`).
    fn kernel(
        &self,
        x: &Tensor,
        w: &Packed,
        sa: f32,
        bias: Option<&[f32]>,
        (relu, pool): (bool, Option<(usize, usize)>),
    ) -> Result<Tensor> {
        let (n, c, h, wd) = x.dims4()?;
        let [_, ho, wo] = self.out_shape(&[&[c, h, wd]]).map_err(Error::Graph)?[..] else {
            return Err(Error::Graph("qconv2d: bad output shape".into()));
        };
        let pool = match pool {
            Some((k, s)) if k > 0 && s > 0 && ho >= k && wo >= k => Some(Pool { k, s, ho, wo }),
            Some((k, s)) => {
                return Err(Error::Graph(format!(
                    "qconv2d: cannot pool its {ho}×{wo} output with kernel {k}, stride {s}"
                )))
            }
            None => None,
        };
        let (co, m, chw) = (self.out_channels, ho * wo, c * h * wd);
        let lda = PackedI8::row_len(self.cols());
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
                    let signed = self.image_cols(isa, x, inv, (c, h, wd), (ho, wo), lda, s)?;
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
        &self,
        isa: crate::isa::Isa,
        x: &[f32],
        inv: f32,
        (c, h, w): (usize, usize, usize),
        (ho, wo): (usize, usize),
        lda: usize,
        s: &mut Scratch,
    ) -> Result<bool> {
        let chw = c * h * w;
        s.codes.resize(chw, 0);
        // the magnitudes that matter are the im2col rows' (below)
        qgemm::quantize_row(x, (inv, 127), &mut s.codes, None);
        let signed = s.codes.iter().fold(0i8, |lo, &v| lo.min(v)) < 0;
        s.hwc.resize(chw, 0);
        panel::to_channels_last(isa, &s.codes, (c, h * w), &mut s.hwc)?;
        self.im2col(&s.hwc, (c, h, w), (ho, wo), lda, &mut s.cols);
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
        &self,
        x: &[i8],
        (c, h, w): (usize, usize, usize),
        (ho, wo): (usize, usize),
        lda: usize,
        cols: &mut Vec<i8>,
    ) {
        let (k, s, pad) = (self.kernel as isize, self.stride, self.padding as isize);
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
    fn simulated(
        &self,
        x: &Tensor,
        wv: &QView,
        sa: f32,
        bias: Option<&[f32]>,
        relu: bool,
    ) -> Result<Tensor> {
        let (co, kk, k) = (self.out_channels, self.cols(), self.kernel);
        let mut w = vec![0f32; co * kk];
        for (j, row) in w.chunks_exact_mut(kk).enumerate() {
            wv.dequantize_row(j, row);
        }
        let wt =
            Tensor::from_vec(w, (co, self.in_channels, k, k), x.device())?.to_dtype(x.dtype())?;
        let dims = x.dims().to_vec();
        let xs: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let per = dims[1..].iter().product::<usize>().max(1);
        let q = quantize_rows(&xs, per, Some(sa), per, 127);
        let deq: Vec<f32> = q.codes.iter().map(|c| *c as f32 * sa).collect();
        let xq = Tensor::from_vec(deq, dims.as_slice(), x.device())?.to_dtype(x.dtype())?;
        let xin = (x + (xq - x)?.detach())?;
        let y = xin.conv2d(&wt, self.padding, self.stride, 1, 1)?;
        let y = match bias {
            Some(b) => {
                let b =
                    Tensor::from_vec(b.to_vec(), (1, co, 1, 1), x.device())?.to_dtype(y.dtype())?;
                y.broadcast_add(&b)?
            }
            None => y,
        };
        Ok(if relu { y.relu()? } else { y })
    }
}

pub(crate) fn example() -> super::Example {
    use candle_core::Device;
    let (co, ci, k) = (4, 2, 3);
    let w: Vec<f32> = (0..co * ci * k * k)
        .map(|i| ((i * 37 % 29) as f32 / 14.0 - 1.0) * 0.4)
        .collect();
    let q = crate::math::qweight::QWeight::quantize(&w, co, ci * k * k, Layout::INT8_CHANNEL)
        .expect("a valid layout");
    let (codes, scales, _) = q.tensors().expect("sizes match");
    super::Example {
        op: Op::QConv2d(QConv2d {
            in_channels: ci,
            out_channels: co,
            kernel: k,
            stride: 2,
            padding: 1,
            bias: true,
            layout: Layout::INT8_CHANNEL,
        }),
        inputs: vec![vec![ci, 5, 6]],
        tensors: vec![
            ("weight_q", codes),
            ("weight_scale", scales),
            (
                "input_scale",
                Tensor::from_vec(vec![1.0f32 / 127.0], 1, &Device::Cpu).expect("one value"),
            ),
        ],
    }
}

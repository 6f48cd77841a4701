//! A materialized static-int8 2-D convolution (groups = 1): what the `quantize` pass
//! makes of a Conv2d node under `activations = "static"`. Tensors: `weight_q` (int8 codes
//! `[out, in·k·k]`, standing for `[out, in, k, k]`), `weight_scale` (per output channel
//! or one), `input_scale` (`[1]`, calibrated) and `bias`. Inference quantizes the input
//! with its static scale, builds each image's int8 im2col rows (one per output pixel,
//! padded to 32 bytes) and runs the exact int8 kernel of [`crate::ops::qgemm`], images in
//! parallel; the result is rescaled to f32 with the bias added. Any other caller gets the
//! simulated layer (fake-quantized input, dequantized weight, candle's convolution) — the
//! reference the kernel is tested against. Coupling: pinned on both sides.

use candle_core::{DType, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{arity, positive, Inputs, LayerKind, NodeRun, TensorRole, TensorSpec};
use crate::coupling::{Coupler, Seg};
use crate::error::{Error, Result};
use crate::graph::{Node, Op};
use crate::ops::qgemm;
use crate::ops::with_cpu;
use crate::params::f32_values;
use crate::quant::act::quantize_rows;
use crate::quant::layout::{Layout, Scales};
use crate::quant::{with_node_view, QView};

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

/// Rows of the int8 kernel are padded to this many bytes.
const ALIGN: usize = 32;

/// Per-thread buffers of the kernel, reused across images and calls.
#[derive(Default)]
struct Scratch {
    codes: Vec<i8>,
    mags: Vec<u8>,
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
        let dims = (self.out_channels, self.cols());
        with_node_view(cx.params, &cx.node.name, self.layout, dims, |w| {
            if x.track_op() || x.dtype() != DType::F32 {
                return self.simulated(x, w, sa, bias.as_deref());
            }
            self.kernel(x, w, sa, bias.as_deref())
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

    /// The int8 kernel over every image: `[N, out, Ho, Wo]`.
    fn kernel(&self, x: &Tensor, wv: &QView, sa: f32, bias: Option<&[f32]>) -> Result<Tensor> {
        let (n, c, h, wd) = x.dims4()?;
        let kk = self.cols();
        let kp = kk.div_ceil(ALIGN) * ALIGN;
        let co = self.out_channels;
        let w = wv.codes;
        let [_, ho, wo] = self.out_shape(&[&[c, h, wd]]).map_err(Error::Graph)?[..] else {
            return Err(Error::Graph("qconv2d: bad output shape".into()));
        };
        let p = ho * wo;
        // filters reordered to the im2col rows' (kernel row, kernel column, channel) order
        let (k, cin) = (self.kernel, c);
        let mut wpad = vec![0u8; co * kp];
        for j in 0..co {
            for ci in 0..cin {
                for kk2 in 0..k * k {
                    wpad[j * kp + kk2 * cin + ci] = w[j * kk + ci * k * k + kk2];
                }
            }
        }
        let scales: Vec<f32> = (0..co)
            .map(|j| wv.scales[self.layout.scale_index(j, 0, kk)])
            .collect();
        let isa = crate::isa::active()?;
        let inv = if sa > 0.0 { 1.0 / sa } else { 0.0 };
        let chw = c * h * wd;
        let mut y = vec![0f32; n * co * p];
        with_cpu::<f32, _>(x, |xs| {
            // images in parallel, each product on its thread; one image: the product's rows
            // in parallel
            let par = n == 1;
            let image = |(i, out): (usize, &mut [f32])| -> Result<()> {
                with_scratch(|s| {
                    // the image's codes, channels last (their magnitudes come after im2col)
                    s.codes.resize(chw, 0);
                    s.mags.resize(chw, 0);
                    qgemm::quantize_row(
                        &xs[i * chw..(i + 1) * chw],
                        inv,
                        &mut s.codes,
                        &mut s.mags,
                    );
                    s.hwc.resize(chw, 0);
                    for ci in 0..c {
                        for px in 0..h * wd {
                            s.hwc[px * c + ci] = s.codes[ci * h * wd + px];
                        }
                    }
                    self.im2col(&s.hwc, (c, h, wd), (ho, wo), kp, &mut s.cols);
                    s.abs.clear();
                    s.abs.extend(s.cols.iter().map(|v| v.unsigned_abs()));
                    let acc = qgemm::gemm_i8_on(isa, &s.cols, &s.abs, &wpad, (p, co, kp), par)?; // [co, p]
                    for (j, (o, a)) in out.chunks_mut(p).zip(acc.chunks(p)).enumerate() {
                        let (sc, b) = (sa * scales[j], bias.map_or(0.0, |b| b[j]));
                        o.iter_mut()
                            .zip(a)
                            .for_each(|(o, a)| *o = *a as f32 * sc + b);
                    }
                    Ok(())
                })
            };
            y.par_chunks_mut(co * p).enumerate().try_for_each(image)
        })??;
        Ok(Tensor::from_vec(y, (n, co, ho, wo), x.device())?)
    }

    /// One image's int8 im2col rows `[Ho·Wo, kp]` into `cols`, from its codes in
    /// channels-last order `[H, W, C]`: row (oh, ow) holds, kernel row by kernel row, the
    /// C·k codes under the kernel as one contiguous run of the input row (zero in the
    /// padding and beyond the row's `in·k·k` values).
    fn im2col(
        &self,
        x: &[i8],
        (c, h, w): (usize, usize, usize),
        (ho, wo): (usize, usize),
        kp: usize,
        cols: &mut Vec<i8>,
    ) {
        let (k, s, pad) = (self.kernel as isize, self.stride, self.padding as isize);
        cols.clear();
        cols.resize(ho * wo * kp, 0);
        for oh in 0..ho {
            for ow in 0..wo {
                let row = &mut cols[(oh * wo + ow) * kp..][..kp];
                let iw0 = (ow * s) as isize - pad;
                // kernel columns inside the image: iw0 + kj in [0, w)
                let (lo, hi) = (
                    (-iw0).max(0) as usize,
                    (w as isize - iw0).min(k).max(0) as usize,
                );
                if lo >= hi {
                    continue;
                }
                for ki in 0..k {
                    let ih = (oh * s) as isize + ki - pad;
                    if ih < 0 || ih >= h as isize {
                        continue;
                    }
                    let src = (ih as usize * w + (iw0 + lo as isize) as usize) * c;
                    let dst = (ki as usize * k as usize + lo) * c;
                    let n = (hi - lo) * c;
                    row[dst..dst + n].copy_from_slice(&x[src..src + n]);
                }
            }
        }
    }

    /// The simulated layer in the input's dtype: the fake-quantized input (same codes as
    /// the kernel's) through candle's convolution with the dequantized weight.
    fn simulated(&self, x: &Tensor, wv: &QView, sa: f32, bias: Option<&[f32]>) -> Result<Tensor> {
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
        let q = quantize_rows(&xs, per, Some(sa), per);
        let deq: Vec<f32> = q.codes.iter().map(|c| *c as f32 * sa).collect();
        let xq = Tensor::from_vec(deq, dims.as_slice(), x.device())?.to_dtype(x.dtype())?;
        let xin = (x + (xq - x)?.detach())?;
        let y = xin.conv2d(&wt, self.padding, self.stride, 1, 1)?;
        Ok(match bias {
            Some(b) => {
                let b =
                    Tensor::from_vec(b.to_vec(), (1, co, 1, 1), x.device())?.to_dtype(y.dtype())?;
                y.broadcast_add(&b)?
            }
            None => y,
        })
    }
}

pub(crate) fn example() -> super::Example {
    use candle_core::Device;
    let (co, ci, k) = (4, 2, 3);
    let w: Vec<f32> = (0..co * ci * k * k)
        .map(|i| ((i * 37 % 29) as f32 / 14.0 - 1.0) * 0.4)
        .collect();
    let q = crate::quant::QWeight::quantize(&w, co, ci * k * k, Layout::INT8_CHANNEL)
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

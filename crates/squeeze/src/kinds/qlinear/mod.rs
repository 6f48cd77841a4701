//! A materialized quantized fully connected layer `y = x Ŵᵀ + b`: what the `quantize`
//! pass makes of a Linear node. Tensors: `weight_q` (the packed codes, `[out, row_bytes]`
//! u8, standing for `[out, in]`), `weight_scale` (f32, the layout's scale shape),
//! `weight_zero` (u8, asymmetric int4 only), `input_scale` (`[1]` f32, static int8 only)
//! and `bias` `[out]`. The layout ([`crate::math::qlayout`]) is an attribute, so
//! `model.json` says what the bytes mean and the loader checks every size.
//!
//! Activations (`act`): `dynamic` int8 (at run time, one scale per 32 consecutive inputs
//! of each row, `ACT_BLOCK`) or `static` int8 (the calibrated `input_scale`: the
//! clipping value / 64) run the exact int8 kernel of `crate::ops::qgemm::panel_blocked`,
//! whose codes are in [−64, 64] (`LINEAR_ACT_MAX`);
//! `dynamic` with int4 weights quantizes each row in blocks of 32 to codes in ±127 and runs
//! the integer int4 × int8 kernel of `crate::ops::qgemm::panel_q4` (llama.cpp's Q4_0 ×
//! Q8_0 scheme); `none` keeps f32 activations against int4 weights (weight-only; above 64 rows the layer's
//! codes are widened once per call into a transient f32 copy for the f32 product). Any
//! other caller (f64,
//! gradients) gets the simulated layer — the dequantized weight and the fake-quantized
//! input, same codes — which is also the reference the kernels are tested against.
//! Coupling: like Linear, but both sides are pinned (the codes are not channel-pruned).
//! An inference-only model may hand the int8 panels its codes for good
//! (`crate::interp::keep_packed_only`): the stored codes are dropped and the kernels read
//! the panels kept under the node's name.

use std::sync::Arc;

use candle_core::{DType, Tensor, TensorId};
use serde::{Deserialize, Serialize};

mod group;

use super::couple::{Coupler, Seg};
use super::with_node_view;
use super::{with_last, Absorb, ForwardOpts, Inputs, LayerKind, NodeRun, TensorRole, TensorSpec};
use super::{Node, Op};
use crate::error::Result;
use crate::math::qlayout::{signed_code_at, Layout, Scales};
use crate::onnx::quant::{self as onnx_quant, Decoded};
use crate::onnx::{blocks, Lower};
use crate::ops::pack_cache::PackCache;
use crate::ops::qgemm::panel_blocked::{
    linear_packed_then, quantize_offset, PackedBlocked, PackedPart,
};
use crate::ops::qgemm::panel_q4::{quantize_q8, PackedQ4, Q8_BLOCK, Q8_MAX};
use crate::ops::qgemm::quantize::{quantize_rows, ACT_BLOCK, LINEAR_ACT_MAX};
use crate::ops::qgemm::{self, QView};
use crate::ops::with_cpu;
use crate::params::ParamStore;
pub(crate) use group::qlinear_group;

/// How the layer's input is quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActQuant {
    /// f32 activations (weight-only; int4 weights).
    None,
    /// int8, one scale per 32 inputs of a row chosen at run time (int8 weights: codes in
    /// ±64; int4 weights: codes in ±127 and an integer dot product).
    Dynamic,
    /// int8, the calibrated scale `input_scale`.
    Static,
}

/// Rows above which the int4 layer widens its codes once per call and runs the f32
/// product (the weight-only kernel re-widens them for every tile of 4 rows).
const Q4_ROWS: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QLinear {
    pub in_features: usize,
    pub out_features: usize,
    pub bias: bool,
    pub layout: Layout,
    pub act: ActQuant,
    /// Static activations: the input's code range `[lowest, highest]` when narrower than
    /// the kernel's ±64 (a layer trained with low-bit activations); the kernel clips the
    /// input codes to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_codes: Option<[i8; 2]>,
}

impl LayerKind for QLinear {
    /// Static: the QDQ form. Dynamic int8 with per-channel scales: ONNX Runtime's dynamic
    /// form (per-tensor uint8 inputs, not our per-32 blocks). int4: `MatMulNBits`. Grouped
    /// int8 scales have no integer form here: the dequantized f32 weight, noted.
    fn onnx(&self, cx: &mut Lower) -> Result<String> {
        let d = Decoded::read(cx, self.layout, (self.out_features, self.in_features))?;
        if self.act == ActQuant::Static {
            let step = cx.values("input_scale")?.1[0];
            let lim = LINEAR_ACT_MAX;
            let range = self.input_codes.unwrap_or([-lim, lim]);
            return onnx_quant::static_linear(cx, &d, (step, range), self.bias);
        }
        if self.layout.bits == 4 {
            return onnx_quant::nbits(cx, &d, self.bias, self.act == ActQuant::Dynamic);
        }
        if let Some(s) = d.row_scales().map(<[f32]>::to_vec) {
            cx.note("int8 inputs quantized per tensor (uint8, ONNX Runtime's dynamic form) where squeeze quantizes each 32 inputs of a row to ±64");
            return onnx_quant::dynamic_int8(cx, &d, &s, self.bias);
        }
        cx.note("grouped int8 weight scales written as the dequantized f32 weight");
        blocks::linear_f32(cx, &d.dequantize(), (d.rows, d.cols), self.bias)
    }
    fn name(&self) -> &'static str {
        "qlinear"
    }
    fn quantized_weight(&self) -> Option<(Layout, (usize, usize))> {
        Some((self.layout, (self.out_features, self.in_features)))
    }
    fn joins_siblings(&self) -> bool {
        true
    }
    fn release_packed(
        &self,
        nodes: &[&Node],
        params: &ParamStore,
        packs: &PackCache,
    ) -> Result<Vec<String>> {
        release_panels(nodes, params, packs)
    }
    fn forward_siblings(
        &self,
        nodes: &[&Node],
        params: &ParamStore,
        x: &Tensor,
        _: &ForwardOpts,
        packs: &PackCache,
    ) -> Result<Option<Vec<Tensor>>> {
        qlinear_group(nodes, params, x, packs)
    }
    fn inputs(&self) -> Inputs {
        Inputs::Values
    }
    fn out_shape(&self, ins: &[&[usize]]) -> std::result::Result<Vec<usize>, String> {
        let out = super::rows_shape(ins, self.in_features, self.out_features)?;
        self.layout.check(self.in_features)?;
        match (self.layout.bits, self.act, self.layout.scales) {
            (8, ActQuant::None, _) => {
                return Err("int8 weights run with int8 activations (`dynamic` or `static`)".into())
            }
            (8, _, Scales::Group(_)) => {
                return Err("int8 weights take per-channel or per-tensor scales".into())
            }
            (4, ActQuant::Static, Scales::Channel) if !self.layout.zero_point => {}
            // int4 rows and blocks are whole chunks of 32: the int8 blocks' length
            (4, ActQuant::Dynamic, _) => {}
            (4, ActQuant::Static, _) => {
                return Err(
                    "int4 weights are weight-only (`act` = \"none\"), dynamic, or static \
                     with symmetric per-channel scales"
                        .into(),
                )
            }
            _ => {}
        }
        if self.input_codes.is_some() && self.act != ActQuant::Static {
            return Err("`input_codes` applies to static activations".into());
        }
        super::check_input_codes(self.input_codes, LINEAR_ACT_MAX)?;
        Ok(out)
    }
    fn tensors(&self) -> Vec<TensorSpec> {
        let (n, k) = (self.out_features, self.in_features);
        let mut t = super::quantized_specs(&self.layout, (n, k), vec![n, k]);
        if self.act == ActQuant::Static {
            t.push(TensorSpec::f32("input_scale", vec![1], TensorRole::Scale));
        }
        if self.bias {
            t.push(TensorSpec::param("bias", vec![n]));
        }
        t
    }
    fn macs(&self, _: &[&[usize]], out: &[usize]) -> u64 {
        super::numel(out) * self.in_features as u64
    }
    fn couple(&self, cx: &mut Coupler, node: &Node, ins: &[Vec<Seg>], _: &[&[usize]]) -> Vec<Seg> {
        let why = "a qlinear (quantized) layer is not channel-pruned";
        super::pinned_rows(cx, node, ins, (self.out_features, self.bias), why)
    }
    fn absorbs(&self, reader: Absorb, so_far: &[Absorb], train: bool) -> bool {
        !train && reader == Absorb::Gelu && so_far.is_empty()
    }
    fn forward(&self, cx: &mut NodeRun) -> Result<Tensor> {
        let (y, fused) = self.product(cx)?;
        super::act::absorbed_gelu(y, cx.fuse_gelu && !fused)
    }
    fn refreshed(&self, dims: &dyn Fn(&str) -> Option<Vec<usize>>, _: &[&[usize]]) -> Option<Op> {
        let out = dims("weight_q")?[0];
        Some(Op::QLinear(QLinear {
            out_features: out,
            ..self.clone()
        }))
    }
}

impl QLinear {
    /// `x Ŵᵀ + b`: the integer kernel at inference, else the simulated layer.
    /// The layer's output, and whether the absorbed GELU ([`NodeRun::fuse_gelu`]) was
    /// applied inside the product (the int4 × int8 kernel applies it per task).
    fn product(&self, cx: &NodeRun) -> Result<(Tensor, bool)> {
        let x = cx.x();
        let dims = x.dims().to_vec();
        let x2 = x.flatten_to(dims.len().saturating_sub(2))?; // [M, in]
        let b = if self.bias {
            Some(cx.param("bias")?)
        } else {
            None
        };
        if !x2.track_op() && x2.dtype() == DType::F32 {
            let bias = b.map(crate::params::f32_values).transpose()?;
            if let Some(panels) = released(cx.params, cx.packs, &cx.node.name)? {
                let scales = crate::params::f32_values(cx.param("weight_scale")?)?;
                let static_scale = self.static_scale(cx)?;
                let gelu = cx.fuse_gelu;
                let y = with_cpu::<f32, _>(&x2, |xs| {
                    let bias = bias.as_deref();
                    self.int8_product(xs, (&panels, &scales), static_scale, (bias, gelu))
                })??;
                let y = Tensor::from_vec(y, (x2.dim(0)?, self.out_features), x2.device())?;
                return Ok((y.reshape(with_last(&dims, self.out_features))?, gelu));
            }
            let codes = cx.param("weight_q")?.id();
            let gelu = cx.fuse_gelu;
            let (y, fused) = self.with_view(cx, |w, static_scale| {
                self.kernel(
                    cx.packs,
                    &x2,
                    (w, codes),
                    static_scale,
                    (bias.as_deref(), gelu),
                )
            })?;
            return Ok((y.reshape(with_last(&dims, self.out_features))?, fused));
        }
        let y = self.with_view(cx, |w, static_scale| {
            let x2 = super::clip_input(&x2, self.input_codes, static_scale.unwrap_or(0.0))?;
            self.simulated(&x2, w, static_scale)
        })?;
        let y = match b {
            Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?)?,
            None => y,
        };
        Ok((y.reshape(with_last(&dims, self.out_features))?, false))
    }
    /// Runs `f` on the checked view of the node's quantized weight and its static input
    /// scale.
    fn with_view<R>(
        &self,
        cx: &NodeRun,
        f: impl FnOnce(&QView, Option<f32>) -> Result<R>,
    ) -> Result<R> {
        let static_scale = self.static_scale(cx)?;
        let dims = (self.out_features, self.in_features);
        with_node_view(cx.params, &cx.node.name, self.layout, dims, |v| {
            f(v, static_scale)
        })
    }

    /// The calibrated input scale of static activations.
    fn static_scale(&self, cx: &NodeRun) -> Result<Option<f32>> {
        Ok(match self.act {
            ActQuant::Static => Some(crate::params::f32_values(cx.param("input_scale")?)?[0]),
            _ => None,
        })
    }

    /// Whether the layer runs the int8 panels ([`PackedBlocked`]), and for activation
    /// blocks of how many inputs.
    fn int8_block(&self) -> Option<usize> {
        match (self.layout.bits, self.act) {
            (_, ActQuant::Static) => Some(self.in_features),
            (8, _) => Some(ACT_BLOCK),
            _ => None,
        }
    }

    /// The int8 product of rows `xs` with the layer's `panels` and weight `scales`:
    /// `[M, out]` f32 with the bias added, then GELU where `gelu` (per task, in cache).
    fn int8_product(
        &self,
        xs: &[f32],
        (panels, scales): (&PackedBlocked, &[f32]),
        static_scale: Option<f32>,
        (bias, gelu): (Option<&[f32]>, bool),
    ) -> Result<Vec<f32>> {
        let (k, isa) = (self.in_features, crate::isa::active()?);
        let m = xs.len() / k.max(1);
        let mut q = quantize_offset(isa, xs, (k, panels.stride()), static_scale, panels.block)?;
        if let Some([lo, hi]) = self.input_codes {
            // a narrower code range (low-bit inputs): clip the offset codes, as clipping
            // the values would (the bounds are integers)
            let (lo, hi) = ((lo + LINEAR_ACT_MAX) as u8, (hi + LINEAR_ACT_MAX) as u8);
            q.codes.iter_mut().for_each(|c| *c = (*c).clamp(lo, hi));
        }
        let part = PackedPart {
            w: panels,
            scales,
            bias,
        };
        Ok(linear_packed_then(isa, q.rows(), &[part], m, gelu)?.remove(0))
    }

    /// The int8 / int4 kernels: `[M, out]` f32 with the bias added, and whether `gelu`
    /// (an absorbed GELU) was applied too (the int8 and int4 × int8 kernels do, per
    /// task).
    /// `codes`: the identity of the stored codes tensor, whose int8 panels are packed once.
    fn kernel(
        &self,
        packs: &PackCache,
        x2: &Tensor,
        (w, codes): (&QView, TensorId),
        static_scale: Option<f32>,
        (bias, gelu): (Option<&[f32]>, bool),
    ) -> Result<(Tensor, bool)> {
        let (m, k, n) = (x2.dim(0)?, self.in_features, self.out_features);
        let isa = crate::isa::active()?;
        if self.layout.bits == 4 && self.act == ActQuant::Dynamic {
            let packed = packs.int4(codes, || PackedQ4::pack(w))?;
            let y = with_cpu::<f32, _>(x2, |xs| {
                packed.product_then(isa, &quantize_q8(isa, xs, k)?, bias, gelu)
            })??;
            return Ok((Tensor::from_vec(y, (m, n), x2.device())?, gelu));
        }
        if self.layout.bits == 4 && self.act == ActQuant::None && m > Q4_ROWS {
            // many rows: widen the codes once (a transient f32 copy of this one layer) and
            // run the f32 product, instead of widening them again for every token tile
            let mut dense = vec![0f32; n * k];
            for (r, row) in dense.chunks_exact_mut(k).enumerate() {
                w.dequantize_row(r, row);
            }
            let wt = Tensor::from_vec(dense, (n, k), x2.device())?;
            let b = bias
                .map(|b| Tensor::from_vec(b.to_vec(), n, x2.device()))
                .transpose()?;
            return Ok((super::linear::linear(x2, &wt, b.as_ref())?, false));
        }
        let int8 = self.int8_block();
        let y = with_cpu::<f32, _>(x2, |xs| match int8 {
            Some(block) => {
                let packed = panels(packs, codes, w, block)?;
                self.int8_product(xs, (&packed, w.scales), static_scale, (bias, gelu))
            }
            None => qgemm::gemm_q4(isa, xs, w, bias, m),
        })??;
        let fused = gelu && int8.is_some();
        Ok((Tensor::from_vec(y, (m, n), x2.device())?, fused))
    }

    /// The simulated layer in the input's dtype: fake-quantized input (the kernel's codes,
    /// straight-through for gradients) times the dequantized weight.
    fn simulated(&self, x2: &Tensor, w: &QView, static_scale: Option<f32>) -> Result<Tensor> {
        let (m, k, n) = (x2.dim(0)?, self.in_features, self.out_features);
        let mut dense = vec![0f32; n * k];
        for (r, row) in dense.chunks_exact_mut(k).enumerate() {
            w.dequantize_row(r, row);
        }
        let wt = Tensor::from_vec(dense, (n, k), x2.device())?.to_dtype(x2.dtype())?;
        let xin = if self.act == ActQuant::None {
            x2.clone()
        } else {
            let xs: Vec<f32> = x2.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            let q = match (self.layout.bits, self.act) {
                (4, ActQuant::Dynamic) => quantize_rows(&xs, k, None, Q8_BLOCK, Q8_MAX),
                _ => quantize_rows(&xs, k, static_scale, ACT_BLOCK, LINEAR_ACT_MAX),
            };
            let deq: Vec<f32> = (0..m * k).map(|i| q.value(i / k, i % k, k)).collect();
            let xq = Tensor::from_vec(deq, (m, k), x2.device())?.to_dtype(x2.dtype())?;
            (x2 + (xq - x2)?.detach())?
        };
        Ok(xin.matmul(&wt.t()?)?)
    }
}

pub(crate) fn example() -> super::Example {
    use candle_core::Device;
    let (n, k) = (5, 64);
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * 0.3)
        .collect();
    let layout = Layout {
        bits: 4,
        scales: Scales::Group(32),
        zero_point: true,
    };
    let q = crate::math::qweight::QWeight::quantize(&w, n, k, layout).expect("a valid layout");
    let (codes, scales, zeros) = q.tensors().expect("sizes match");
    let _ = Device::Cpu;
    super::Example {
        op: Op::QLinear(QLinear {
            in_features: k,
            out_features: n,
            bias: true,
            layout,
            act: ActQuant::None,
            input_codes: None,
        }),
        inputs: vec![vec![k]],
        tensors: vec![
            ("weight_q", codes),
            ("weight_scale", scales),
            ("weight_zero", zeros.expect("asymmetric")),
        ],
    }
}

/// A node's int8 codes in the panel layout for activation blocks of `block` inputs,
/// packed once per stored tensor `id`.
fn panels(packs: &PackCache, id: TensorId, w: &QView, block: usize) -> Result<Arc<PackedBlocked>> {
    packs.int8_blocked((id, block), || pack_panels(w, block))
}

/// The codes of `w` in the panel layout for activation blocks of `block` inputs.
fn pack_panels(w: &QView, block: usize) -> Result<PackedBlocked> {
    let (rb, layout) = (w.layout.row_bytes(w.cols), w.layout);
    PackedBlocked::pack(w.rows, w.cols, block, |j, c| {
        signed_code_at(&layout, &w.codes[j * rb..(j + 1) * rb], c)
    })
}

/// The int8 panels that stand in for node `node`'s codes, if they were released (the
/// cache is asked only when the store no longer holds the codes).
fn released(p: &ParamStore, packs: &PackCache, node: &str) -> Result<Option<Arc<PackedBlocked>>> {
    match p.contains(&format!("{node}.weight_q")) {
        true => Ok(None),
        false => packs.released_int8(node),
    }
}

/// Packs the int8 panels of every qlinear node in `nodes` that runs them for good into
/// `packs` (by node name) and returns the codes tensors they stand in for.
fn release_panels(nodes: &[&Node], p: &ParamStore, packs: &PackCache) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for n in nodes {
        let Op::QLinear(o) = &n.op else { continue };
        let Some(block) = o.int8_block() else {
            continue;
        };
        let dims = (o.out_features, o.in_features);
        let packed = with_node_view(p, &n.name, o.layout, dims, |w| pack_panels(w, block))?;
        packs.release_int8(&n.name, Arc::new(packed))?;
        names.push(format!("{}.weight_q", n.name));
    }
    Ok(names)
}

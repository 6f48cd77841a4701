//! Layer kinds, one file each. A kind is everything the toolkit knows about one sort of
//! node, in one place (the shape of tract's ops): validation of its attributes and its
//! output shape, the typed specs of its tensors, its cost, its channel-coupling rule, its
//! differentiable forward and its inference kernel. The rest of the code dispatches
//! through [`LayerKind`] via [`Op::def`] and never matches on kinds it does
//! not rewrite. `README.md` ("Adding a layer kind") walks through one kind as the example.

/// The methods of a kind that owns no tensors, stated by invoking this macro in its impl:
/// no tensor specs, no multiply-accumulates, nothing to re-read after a cut.
macro_rules! no_tensors {
    () => {
        fn tensors(&self) -> Vec<$crate::kinds::TensorSpec> {
            vec![]
        }
        fn macs(&self, _: &[&[usize]], _: &[usize]) -> u64 {
            0
        }
        fn refreshed(
            &self,
            _: &dyn Fn(&str) -> Option<Vec<usize>>,
            _: &[&[usize]],
        ) -> Option<$crate::kinds::Op> {
            None
        }
    };
}

pub mod act;
pub mod attention;
pub mod batch_norm;
pub mod bconv2d;
pub mod blinear;
pub mod concat_add;
pub mod conv2d;
pub mod dropout;
pub mod embedding;
pub mod fake_quant;
pub mod flatten;
pub mod gather;
pub mod layer_norm;
pub mod linear;
pub mod pool;
pub mod qconv2d;
pub mod qembedding;
pub mod qlinear;
pub mod sentence;
pub mod sparse_linear;

pub mod couple;
mod op;
mod run;

pub use crate::tensor::{Dtype, TensorInfo, TensorRole, TensorSpec};
pub use op::{Node, Op};
pub use run::{ForwardOpts, NodeRun};

use candle_core::{DType, Tensor};

use crate::error::Result;
use crate::math::qlayout::Layout;
use crate::math::qweight::QView;
use crate::onnx::Lower;
use crate::ops::pack_cache::PackCache;
use crate::ops::with_cpu;
use crate::params::ParamStore;
use couple::{Coupler, Seg};

/// Which graph inputs a node of a kind may read (token graphs give `input` and `mask`
/// fixed roles).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inputs {
    /// Values computed by other nodes (never the token ids or the mask).
    Values,
    /// Exactly the token ids (`input`) of a token graph.
    TokenIds,
    /// Values, the last of which is the attention `mask`.
    MaskLast,
}

/// A representative node of a kind for the all-kinds test: the op and its per-sample input
/// shapes (token-id and mask inputs are `[L]`).
pub struct Example {
    pub op: Op,
    pub inputs: Vec<Vec<usize>>,
    /// Tensors (by suffix) whose values must be valid rather than random, e.g. the row
    /// pointers of a sparse matrix; the others are drawn at random.
    pub tensors: Vec<(&'static str, Tensor)>,
}

/// What a layer kind provides. Every method is required: a new kind cannot silently
/// report zero cost or no coupling (a kind without tensors says so with `no_tensors!()`).
pub trait LayerKind: std::fmt::Debug {
    /// Lower-case name, the `type` of the node in `model.json`.
    fn name(&self) -> &'static str;
    /// Which graph inputs the node may read.
    fn inputs(&self) -> Inputs;
    /// Per-sample output shape from the inputs' shapes; errors say what was expected
    /// (attributes are validated here too: widths, kernels and heads must be positive).
    fn out_shape(&self, ins: &[&[usize]]) -> std::result::Result<Vec<usize>, String>;
    /// The node's tensors: suffix, logical and stored shape, dtype, role.
    fn tensors(&self) -> Vec<TensorSpec>;
    /// Multiply-accumulates per sample (element-wise work counts 0).
    fn macs(&self, ins: &[&[usize]], out: &[usize]) -> u64;
    /// How channel indices map through the node: records the node's tensors as members of
    /// the channel spaces of its inputs (`ins`, one segment list per input) and returns the
    /// segments of its output.
    fn couple(
        &self,
        cx: &mut Coupler,
        node: &Node,
        ins: &[Vec<Seg>],
        shapes: &[&[usize]],
    ) -> Vec<Seg>;
    /// Forward: the differentiable composition when any tensor tracks gradients (or is
    /// not f32), the inference kernel otherwise.
    fn forward(&self, cx: &mut NodeRun) -> Result<Tensor>;
    /// The op with its widths re-read from the (cut) stored shapes of its tensors, given
    /// by suffix, and from its inputs' (already refreshed) shapes; `None` when nothing
    /// depends on them.
    fn refreshed(&self, dims: &dyn Fn(&str) -> Option<Vec<usize>>, ins: &[&[usize]]) -> Option<Op>;

    // Optional capabilities: a kind that has them overrides these.

    /// What a node of this kind is when another node absorbs it (a ReLU, a max-pool);
    /// `None`: it is never absorbed.
    fn as_absorbed(&self) -> Option<Absorb> {
        None
    }
    /// Whether a node of this kind applies `reader` (its only reader) itself, having
    /// absorbed `so_far` already, in train (`true`) or inference mode. The run plan asks
    /// this once per graph and mode; [`NodeRun::fuse_relu`] / [`NodeRun::fuse_pool`] carry
    /// the answer to the forward.
    fn absorbs(&self, reader: Absorb, so_far: &[Absorb], train: bool) -> bool {
        let _ = (reader, so_far, train);
        false
    }
    /// Whether a node of this kind can hand its inference output as int8 codes to a reader
    /// that takes them ([`LayerKind::takes_codes`]; the run plan decides, and
    /// [`NodeRun::hand_to`] names the reader).
    fn hands_codes(&self) -> bool {
        false
    }
    /// Whether a node of this kind reads int8 codes handed over by the node before it.
    fn takes_codes(&self) -> bool {
        false
    }
    /// Whether nodes of this kind that read the same value may run as one product
    /// ([`LayerKind::forward_siblings`]) at inference (an attention layer's q/k/v).
    fn joins_siblings(&self) -> bool {
        false
    }
    /// Inference of sibling nodes of this kind (`nodes`, this node first) that all read
    /// `x`, as one product; `None` where that does not apply (then each runs alone).
    fn forward_siblings(
        &self,
        nodes: &[&Node],
        params: &ParamStore,
        x: &Tensor,
        opts: &ForwardOpts,
        packs: &PackCache,
    ) -> Result<Option<Vec<Tensor>>> {
        let _ = (nodes, params, x, opts, packs);
        Ok(None)
    }
    /// Whether a node of this kind and the node of the same kind that reads it (through
    /// at most a GELU) may run as one job at inference ([`LayerKind::forward_chain`]).
    fn chains(&self) -> bool {
        false
    }
    /// Inference of `first` (this node, then GELU where `gelu`) and `second` reading it
    /// (plus `residual` where given) as one job, returning `second`'s output; `None`
    /// where that does not apply (then each runs alone). A column-then-row split of the
    /// two products (`crate::ops::packed::chain`).
    fn forward_chain(
        &self,
        nodes: [&Node; 2],
        params: &ParamStore,
        x: &Tensor,
        (gelu, residual): (bool, Option<&Tensor>),
        opts: &ForwardOpts,
    ) -> Result<Option<Tensor>> {
        let _ = (nodes, params, x, gelu, residual, opts);
        Ok(None)
    }
    /// For an inference-only model: packs the weights of `nodes` (this node first, with
    /// the siblings the run plan groups it with) into `packs` for good and returns the
    /// stored tensors the packed form now stands in for, which the caller drops from the
    /// store; the kind's inference forward then reads the packed form alone. A kind
    /// without a packed form (or a node it does not pack) returns nothing.
    fn release_packed(
        &self,
        nodes: &[&Node],
        params: &ParamStore,
        packs: &PackCache,
    ) -> Result<Vec<String>> {
        let _ = (nodes, params, packs);
        Ok(Vec::new())
    }
    /// The quantized weight of a node of this kind: its layout and logical `[rows, cols]`
    /// (quantized kinds only). Reports count its non-zero codes through it, and formats
    /// that store only float weights refuse the node by it.
    fn quantized_weight(&self) -> Option<(Layout, (usize, usize))> {
        None
    }
    /// What a lookup-table kind reads by (token ids, positions, segments) and its rows
    /// (tables only): a text encoder's longest sequence is its position table's rows.
    fn lookup_table(&self) -> Option<(embedding::Lookup, usize)> {
        None
    }
    /// Writes the node's ONNX form through `cx` (`crate::onnx`) and returns the name of
    /// its output value. A kind without one refuses, saying why (the export names the node).
    fn onnx(&self, cx: &mut Lower) -> Result<String> {
        let _ = cx;
        Err(crate::onnx::refuse(format!(
            "ONNX export has no form for `{}` layers",
            self.name()
        )))
    }
    /// Checks the values of node `node`'s tensors in `params` beyond their shapes (a
    /// BatchNorm's variances are not negative); the message names the tensor.
    fn check_values(&self, _node: &str, _params: &ParamStore) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// A reader that a node can apply itself (fusion): the ReLU after a BatchNorm or an int8
/// convolution, the max-pool after an int8 convolution (pooled before rescaling), the
/// GELU after a Linear (applied in the product's tiles), the residual sum after a Linear
/// (added in the product's tiles: a transformer block's `x + Dense(…)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absorb {
    Relu,
    Gelu,
    /// A two-input Add whose other input was computed before the absorbing node
    /// ([`NodeRun::residual`] carries it).
    Residual,
    /// A node that is the identity at inference (dropout): every node absorbs it there,
    /// and it does not count among what the node absorbed.
    Identity,
    /// Window and stride of a max-pool.
    MaxPool {
        kernel: usize,
        stride: usize,
    },
}

/// Exactly `k` inputs, or an error saying so.
pub(crate) fn arity<'a>(ins: &[&'a [usize]], k: usize) -> std::result::Result<&'a [usize], String> {
    if ins.len() != k {
        return Err(format!("expects {k} input(s), has {}", ins.len()));
    }
    Ok(ins[0])
}

/// Zero is not a valid value for attribute `what`.
pub(crate) fn positive(what: &str, v: usize) -> std::result::Result<(), String> {
    if v == 0 {
        return Err(format!("`{what}` must be positive"));
    }
    Ok(())
}

/// The output shape of a layer mapping `[..., in_f]` to `[..., out_f]` (Linear and its
/// materialized forms), both widths positive.
pub(crate) fn rows_shape(
    ins: &[&[usize]],
    in_f: usize,
    out_f: usize,
) -> std::result::Result<Vec<usize>, String> {
    positive("in_features", in_f)?;
    positive("out_features", out_f)?;
    let s = arity(ins, 1)?;
    if s.last() != Some(&in_f) {
        return Err(format!("input {s:?}, expected [..., {in_f}]"));
    }
    Ok(with_last(s, out_f))
}

/// The tensors of a quantized weight `[rows, cols]` standing for `logical`: its codes
/// `weight_q` (u8, [`Layout::row_bytes`] per row), `weight_scale` (f32, the layout's scale
/// shape) and, when the layout has them, zero points `weight_zero` (u8, same shape).
pub(crate) fn quantized_specs(
    layout: &Layout,
    (rows, cols): (usize, usize),
    logical: Vec<usize>,
) -> Vec<TensorSpec> {
    let shape = layout.scale_shape(rows, cols);
    let mut t = vec![
        TensorSpec {
            stored: vec![rows, layout.row_bytes(cols)],
            dtype: Dtype::U8,
            ..TensorSpec::f32("weight_q", logical, TensorRole::Packed)
        },
        TensorSpec::f32("weight_scale", shape.clone(), TensorRole::Scale),
    ];
    if layout.zero_point {
        t.push(TensorSpec {
            dtype: Dtype::U8,
            ..TensorSpec::f32("weight_zero", shape, TensorRole::ZeroPoint)
        });
    }
    t
}

/// The spec of packed binary/ternary levels `weight_bits`: `[rows, row_bytes]` bytes
/// standing for a weight of shape `logical`.
pub(crate) fn bits_spec(
    rows: usize,
    cols: usize,
    ternary: bool,
    logical: Vec<usize>,
) -> TensorSpec {
    TensorSpec {
        stored: vec![rows, crate::math::bits::row_bytes(cols, ternary)],
        dtype: Dtype::U8,
        ..TensorSpec::f32("weight_bits", logical, TensorRole::Packed)
    }
}

/// Coupling of a materialized layer (sparse or quantized) that consumes its input's
/// channels and makes `out` new ones but cannot be channel-cut: both sides pinned, `why`.
pub(crate) fn pinned_rows(
    cx: &mut Coupler,
    node: &Node,
    ins: &[Vec<Seg>],
    (out, bias): (usize, bool),
    why: &str,
) -> Vec<Seg> {
    cx.consume(&ins[0], &node.name);
    let o = cx.new_space(&node.name, out, bias);
    cx.pin_all(&ins[0], why);
    cx.pin_all(&o, why);
    o
}

/// The same shape with its last axis replaced by `n` (callers checked rank ≥ 1).
pub(crate) fn with_last(dims: &[usize], n: usize) -> Vec<usize> {
    let mut out = dims.to_vec();
    if let Some(l) = out.last_mut() {
        *l = n;
    }
    out
}

/// A 1-input kind that passes its input's channels through unchanged.
pub(crate) fn pass_through(ins: &[Vec<Seg>]) -> Vec<Seg> {
    ins[0].clone()
}

/// Whether the fast inference kernels may run: f32 tensors none of which tracks gradients.
pub(crate) fn inference(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| !t.track_op() && t.dtype() == DType::F32)
}

/// Whether every tensor is f32: training through the fused kernels with hand-written
/// backward passes (the `*_train` ops of `crate::ops`); other dtypes (the f64 gradient checks)
/// take the candle compositions.
pub(crate) fn all_f32(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| t.dtype() == DType::F32)
}

/// Elements of a shape.
pub(crate) fn numel(s: &[usize]) -> u64 {
    s.iter().map(|&d| d as u64).product()
}

/// Runs `f` on the checked view of node `node`'s quantized weight `[rows, cols]` as
/// stored in `params` (`<node>.weight_q`, `.weight_scale`, and `.weight_zero` when the
/// layout has zero points), borrowing the tensors' data: the one reader of those tensors
/// for the quantized kinds and the cost report.
pub(crate) fn with_node_view<R>(
    params: &ParamStore,
    node: &str,
    layout: Layout,
    (rows, cols): (usize, usize),
    f: impl FnOnce(&QView) -> Result<R>,
) -> Result<R> {
    let get = |s: &str| params.get(&format!("{node}.{s}"));
    let scales = get("weight_scale")?.to_dtype(candle_core::DType::F32)?;
    let zeros = match layout.zero_point {
        true => Some(with_cpu::<u8, _>(get("weight_zero")?, |z| z.to_vec())?),
        false => None,
    };
    with_cpu::<u8, _>(get("weight_q")?, |codes| {
        with_cpu::<f32, _>(&scales, |scales| {
            let v = QView {
                layout,
                rows,
                cols,
                codes,
                scales,
                zeros: zeros.as_deref(),
            };
            v.check()?;
            f(&v)
        })
    })??
}

/// `input_codes` of a quantized layer: lowest ≤ 0 < highest ≤ the kernel's `lim`.
pub(crate) fn check_input_codes(
    codes: Option<[i8; 2]>,
    lim: i8,
) -> std::result::Result<(), String> {
    match codes {
        Some([lo, hi]) if lo > 0 || hi <= 0 || hi > lim || lo < -lim => Err(format!(
            "`input_codes` [{lo}, {hi}] must hold 0 and lie within ±{lim}"
        )),
        _ => Ok(()),
    }
}

/// The input of a quantized layer clipped to its code range `[lo, hi]·step` (a layer
/// trained with low-bit activations); unchanged without one. Clipping in f32 before the
/// kernel's own rounding gives the codes of rounding first and clipping after.
pub(crate) fn clip_input(x: &Tensor, codes: Option<[i8; 2]>, step: f32) -> Result<Tensor> {
    match codes {
        Some([lo, hi]) => {
            let s = f64::from(step);
            Ok(x.clamp(f64::from(lo) * s, f64::from(hi) * s)?)
        }
        None => Ok(x.clone()),
    }
}

/// Output shape of an integer convolution (`qconv2d`, `bconv2d`) of geometry `g` on its
/// one `[C, H, W]` input, every attribute checked.
pub(crate) fn integer_conv_shape(
    g: &crate::ops::qconv::Geometry,
    ins: &[&[usize]],
) -> std::result::Result<Vec<usize>, String> {
    positive("in_channels", g.in_channels)?;
    positive("out_channels", g.out_channels)?;
    positive("kernel", g.kernel)?;
    positive("stride", g.stride)?;
    let s = arity(ins, 1)?;
    if s.len() != 3 || s[0] != g.in_channels {
        return Err(format!("input {s:?}, expected [{}, H, W]", g.in_channels));
    }
    let (h, w) = (s[1] + 2 * g.padding, s[2] + 2 * g.padding);
    if h < g.kernel || w < g.kernel {
        return Err(format!("kernel {} larger than padded input", g.kernel));
    }
    let (k, st) = (g.kernel, g.stride);
    Ok(vec![g.out_channels, (h - k) / st + 1, (w - k) / st + 1])
}

//! The [`Op`] enum: the `model.json` schema of a node's kind and attributes, and the one
//! place that dispatches to each kind's definition; and [`Node`], one named instance of a
//! kind with the values it reads. The list below is the only list of kinds in the code:
//! adding a kind is a file under `kinds/` plus one line here.

use serde::{Deserialize, Serialize};

use super::{Example, LayerKind};
use crate::kinds;

/// Generates `Op` (serde-tagged by `type`), its dispatch to the kinds' definitions and
/// the list of one example per kind, from one list: kinds with attributes carry their
/// struct; kinds without are unit variants dispatched to a unit struct.
macro_rules! layer_kinds {
    (
        with_attrs { $( $(#[$da:meta])* $dv:ident($dt:ty) => $dex:path, )* }
        unit { $( $(#[$ua:meta])* $uv:ident => $ut:expr, $uex:path, )* }
    ) => {
        /// The typed layer kinds. Parameters are named `<node>.<suffix>` in the store.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
        pub enum Op {
            $( $(#[$da])* $dv($dt), )*
            $( $(#[$ua])* $uv, )*
        }

        impl Op {
            /// The kind's definition.
            pub fn def(&self) -> &dyn LayerKind {
                match self {
                    $( Op::$dv(k) => k, )*
                    $( Op::$uv => &$ut, )*
                }
            }

            /// One representative node of every kind (the all-kinds test walks these).
            pub fn examples() -> Vec<Example> {
                vec![ $( $dex(), )* $( $uex(), )* ]
            }
        }
    };
}

layer_kinds! {
    with_attrs {
        /// `y = x Wᵀ + b`; `weight` `[out, in]`, `bias` `[out]`.
        Linear(kinds::linear::Linear) => kinds::linear::example,
        /// 2-D convolution; `weight` `[out, in/groups, k, k]`, `bias` `[out]`.
        Conv2d(kinds::conv2d::Conv2d) => kinds::conv2d::example,
        /// Batch normalization over axis 1; `weight`, `bias`, buffers `running_mean`,
        /// `running_var`, all `[C]`.
        BatchNorm(kinds::batch_norm::BatchNorm) => kinds::batch_norm::example,
        /// Max pooling with a square window (floor mode).
        MaxPool2d(kinds::pool::MaxPool2d) => kinds::pool::max_example,
        /// Average pooling with a square window (floor mode, no padding).
        AvgPool2d(kinds::pool::AvgPool2d) => kinds::pool::avg_example,
        /// Inverted dropout with drop probability `p` (training only).
        Dropout(kinds::dropout::Dropout) => kinds::dropout::example,
        /// Table lookup `[L]` → `[L, dim]`; `weight` `[num, dim]`.
        Embedding(kinds::embedding::Embedding) => kinds::embedding::example,
        /// Layer normalization over the last axis; `weight`, `bias` `[dim]`.
        LayerNorm(kinds::layer_norm::LayerNorm) => kinds::layer_norm::example,
        /// Attention core over `heads` heads of `head_dim`: inputs q, k, v and the mask.
        Attention(kinds::attention::Attention) => kinds::attention::example,
        /// `y[:, j] = x[:, index[j]]` along the channel axis; `index` `[channels]` u32.
        ChannelGather(kinds::gather::ChannelGather) => kinds::gather::example,
        /// `y = x Wᵀ + b` with W in CSR: `values`, `indices` `[nnz]`, `indptr` `[out+1]`.
        SparseLinear(kinds::sparse_linear::SparseLinear) => kinds::sparse_linear::example,
        /// `y = x Ŵᵀ + b` with Ŵ quantized (int8/int4 codes `weight_q`, `weight_scale`).
        #[serde(rename = "qlinear")]
        QLinear(kinds::qlinear::QLinear) => kinds::qlinear::example,
        /// Table lookup from a quantized table (`weight_q`, `weight_scale`).
        /// Static-int8 convolution; `weight_q` `[out, in·k·k]`, `weight_scale`, `input_scale`.
        #[serde(rename = "qconv2d")]
        QConv2d(kinds::qconv2d::QConv2d) => kinds::qconv2d::example,
        #[serde(rename = "qembedding")]
        QEmbedding(kinds::qembedding::QEmbedding) => kinds::qembedding::example,
        /// Binary/ternary convolution: packed levels `weight_bits`, `weight_scale`,
        /// `input_scale`.
        #[serde(rename = "bconv2d")]
        BConv2d(kinds::bconv2d::BConv2d) => kinds::bconv2d::example,
        /// `y = x Ŵᵀ + b` with binary/ternary Ŵ (`weight_bits`, `weight_scale`).
        #[serde(rename = "blinear")]
        BLinear(kinds::blinear::BLinear) => kinds::blinear::example,
    }
    unit {
        Relu => kinds::act::Relu, kinds::act::relu_example,
        /// GELU, erf form (as BERT uses).
        Gelu => kinds::act::Gelu, kinds::act::gelu_example,
        /// Mean over the spatial axes: `[N, C, H, W]` → `[N, C]`.
        GlobalAvgPool => kinds::pool::GlobalAvgPool, kinds::pool::global_example,
        /// `[N, C, H, W]` → `[N, C·H·W]`.
        Flatten => kinds::flatten::Flatten, kinds::flatten::example,
        /// Element-wise sum of all inputs (residual connection).
        Add => kinds::concat_add::Add, kinds::concat_add::add_example,
        /// Concatenation of all inputs along the channel axis.
        Concat => kinds::concat_add::Concat, kinds::concat_add::concat_example,
        /// Mean of the hidden states over the unmasked tokens.
        MeanPool => kinds::sentence::MeanPool, kinds::sentence::mean_pool_example,
        /// The first (CLS) token's hidden state.
        ClsPool => kinds::sentence::ClsPool, kinds::sentence::cls_pool_example,
        /// Maximum of the hidden states over the unmasked tokens.
        MaxPoolTokens => kinds::sentence::MaxPoolTokens, kinds::sentence::max_pool_tokens_example,
        /// Division by the L2 norm of the last axis.
        L2Normalize => kinds::sentence::L2Normalize, kinds::sentence::l2_example,
    }
}

impl Op {
    /// Short lower-case kind name used in reports (the `type` in `model.json`).
    pub fn kind(&self) -> &'static str {
        self.def().name()
    }
}

/// One layer. `inputs` name earlier nodes (or the graph's `input` / `mask`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub name: String,
    pub inputs: Vec<String>,
    pub op: Op,
}

//! The BERT encoder (Devlin et al. 2019) as a squeeze graph: embeddings (tokens + absolute
//! positions + segment 0) → LayerNorm → N × [self-attention block, feed-forward block],
//! each post-LayerNorm with a residual, → masked mean pooling (→ L2 normalization for
//! sentence-transformers models). Node names follow HF's parameter names, so a HF
//! checkpoint's tensors are this graph's parameters as they are. Widths are per layer
//! ([`LayerShape`]), because head and FFN pruning make them uneven. Hidden-state dropout
//! is a graph node (active in training only); dropout on the attention probabilities is
//! not modelled.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::graph::{Graph, Lookup, Op, INPUT, MASK};
use crate::kinds::{
    attention::Attention, dropout::Dropout, embedding::Embedding, layer_norm::LayerNorm,
    linear::Linear,
};
use crate::model::Model;
use crate::params::ParamStore;

/// Widths of one encoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerShape {
    pub heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
}

/// Which of the BERT-family layouts a graph follows: the same post-LayerNorm encoder,
/// differing in their embeddings (RoBERTa and XLM-R: positions offset past the padding
/// index; DistilBERT: no token types) and in their HF parameter names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    #[default]
    Bert,
    Roberta,
    XlmRoberta,
    Distilbert,
}

impl Family {
    /// The graph's `arch` label (and HF's `model_type`).
    pub fn label(self) -> &'static str {
        match self {
            Family::Bert => "bert",
            Family::Roberta => "roberta",
            Family::XlmRoberta => "xlm-roberta",
            Family::Distilbert => "distilbert",
        }
    }

    /// The family a graph `arch` label names.
    pub fn from_label(arch: &str) -> Option<Family> {
        [
            Family::Bert,
            Family::Roberta,
            Family::XlmRoberta,
            Family::Distilbert,
        ]
        .into_iter()
        .find(|f| f.label() == arch)
    }
}

/// How token states become the sentence embedding (sentence-transformers' pooling modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    #[default]
    Mean,
    Cls,
    Max,
}

/// Everything that fixes a BERT graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertShape {
    /// The layout (graph label and HF names).
    #[serde(default)]
    pub family: Family,
    pub vocab: usize,
    pub max_positions: usize,
    /// Rows of the position table before position 0 (RoBERTa: `padding_idx + 1`).
    #[serde(default)]
    pub position_offset: usize,
    /// Token-type rows; 0: the model has no token-type table (DistilBERT).
    pub segments: usize,
    pub hidden: usize,
    pub eps: f64,
    pub dropout: f64,
    pub layers: Vec<LayerShape>,
    /// The pooling of the token states.
    #[serde(default)]
    pub pooling: Pooling,
    /// Append L2 normalization after pooling (sentence-transformers `Normalize`).
    pub normalize: bool,
}

/// Name prefix of encoder layer `i`.
pub fn layer_prefix(i: usize) -> String {
    format!("encoder.layer.{i}")
}

/// Builds the graph of `s`.
pub fn build_graph(s: &BertShape) -> Graph {
    let mut g = Graph::new_tokens(s.family.label());
    let h = s.hidden;
    let emb = |num, lookup, offset| {
        Op::Embedding(Embedding {
            num,
            dim: h,
            lookup,
            offset,
        })
    };
    let mut parts = vec![g.push(
        "embeddings.word_embeddings",
        emb(s.vocab, Lookup::Tokens, 0),
        &[INPUT],
    )];
    let pos = emb(s.max_positions, Lookup::Positions, s.position_offset);
    parts.push(g.push("embeddings.position_embeddings", pos, &[INPUT]));
    if s.segments > 0 {
        let seg = emb(s.segments, Lookup::Segments, 0);
        parts.push(g.push("embeddings.token_type_embeddings", seg, &[INPUT]));
    }
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    g.push("embeddings.sum", Op::Add, &parts);
    let ln = |eps| Op::LayerNorm(LayerNorm { dim: h, eps });
    g.push("embeddings.LayerNorm", ln(s.eps), &["embeddings.sum"]);
    let mut x = g.push(
        "embeddings.dropout",
        Op::Dropout(Dropout { p: s.dropout }),
        &["embeddings.LayerNorm"],
    );
    for (i, l) in s.layers.iter().enumerate() {
        x = push_layer(&mut g, &layer_prefix(i), &x, h, l, s);
    }
    let pool = match s.pooling {
        Pooling::Mean => Op::MeanPool,
        Pooling::Cls => Op::ClsPool,
        Pooling::Max => Op::MaxPoolTokens,
    };
    let pooled = g.push("pooling", pool, &[&x, MASK]);
    if s.normalize {
        g.push("normalize", Op::L2Normalize, &[&pooled]);
    }
    g
}

fn linear(i: usize, o: usize) -> Op {
    Op::Linear(Linear {
        in_features: i,
        out_features: o,
        bias: true,
        quant: None,
    })
}

/// One post-LN encoder layer reading `x`; returns its output node.
fn push_layer(g: &mut Graph, p: &str, x: &str, h: usize, l: &LayerShape, s: &BertShape) -> String {
    let w = l.heads * l.head_dim;
    let n = |suffix: &str| format!("{p}.{suffix}");
    for qkv in ["query", "key", "value"] {
        g.push(&n(&format!("attention.self.{qkv}")), linear(h, w), &[x]);
    }
    let core = Op::Attention(Attention {
        heads: l.heads,
        head_dim: l.head_dim,
    });
    let (q, k, v) = (
        n("attention.self.query"),
        n("attention.self.key"),
        n("attention.self.value"),
    );
    g.push(&n("attention.core"), core, &[&q, &k, &v, MASK]);
    g.push(
        &n("attention.output.dense"),
        linear(w, h),
        &[&n("attention.core")],
    );
    let drop = Op::Dropout(Dropout { p: s.dropout });
    g.push(
        &n("attention.output.dropout"),
        drop.clone(),
        &[&n("attention.output.dense")],
    );
    g.push(
        &n("attention.residual"),
        Op::Add,
        &[&n("attention.output.dropout"), x],
    );
    let ln = Op::LayerNorm(LayerNorm { dim: h, eps: s.eps });
    let a = g.push(
        &n("attention.output.LayerNorm"),
        ln.clone(),
        &[&n("attention.residual")],
    );
    g.push(&n("intermediate.dense"), linear(h, l.intermediate), &[&a]);
    g.push(
        &n("intermediate.gelu"),
        Op::Gelu,
        &[&n("intermediate.dense")],
    );
    g.push(
        &n("output.dense"),
        linear(l.intermediate, h),
        &[&n("intermediate.gelu")],
    );
    g.push(&n("output.dropout"), drop, &[&n("output.dense")]);
    g.push(&n("output.residual"), Op::Add, &[&n("output.dropout"), &a]);
    g.push(&n("output.LayerNorm"), ln, &[&n("output.residual")])
}

/// The widths of every layer, read back from a BERT graph built by [`build_graph`] (and
/// possibly pruned since).
pub fn layer_shapes(g: &Graph) -> Vec<LayerShape> {
    let mut out = Vec::new();
    loop {
        let p = layer_prefix(out.len());
        let core = g.node(&format!("{p}.attention.core")).map(|n| &n.op);
        let inter = g.node(&format!("{p}.intermediate.dense")).map(|n| &n.op);
        match (core, inter) {
            (
                Some(Op::Attention(Attention { heads, head_dim })),
                Some(Op::Linear(Linear { out_features, .. })),
            ) => out.push(LayerShape {
                heads: *heads,
                head_dim: *head_dim,
                intermediate: *out_features,
            }),
            _ => return out,
        }
    }
}

/// Removes encoder layers `drop` (indices of the current layers): each dropped layer's
/// reader is rewired to the layer's input, its tensors (and masks) are removed, and the
/// layers left are renumbered `encoder.layer.0..` in order, as HF export and
/// [`layer_shapes`] expect (DistilBERT initializes its student from every other layer).
pub fn drop_layers(model: &mut Model, drop: &[usize]) -> Result<()> {
    let n = layer_shapes(&model.graph).len();
    let mut drop = drop.to_vec();
    drop.sort_unstable();
    drop.dedup();
    if let Some(bad) = drop.iter().find(|&&i| i >= n) {
        return Err(Error::Graph(format!(
            "cannot drop encoder layer {bad}: the model has layers 0..{n}"
        )));
    }
    if drop.len() >= n {
        return Err(Error::Graph(
            "dropping every encoder layer leaves no encoder".into(),
        ));
    }
    for &i in drop.iter().rev() {
        let p = format!("{}.", layer_prefix(i));
        let g = &mut model.graph;
        let query = format!("{p}attention.self.query");
        let input = g
            .node(&query)
            .and_then(|q| q.inputs.first().cloned())
            .ok_or_else(|| Error::Graph(format!("layer {i} has no `{query}`")))?;
        g.nodes.retain(|nd| !nd.name.starts_with(&p));
        g.rewire(&format!("{p}output.LayerNorm"), &input);
        g.masks.retain(|m| !m.starts_with(&p));
        g.codecs.retain(|m, _| !m.starts_with(&p));
        for name in model.params.names() {
            if name.starts_with(&p) {
                model.params.remove(&name);
            }
        }
    }
    let kept = (0..n).filter(|i| !drop.contains(i));
    for (new, old) in kept.enumerate() {
        if new != old {
            let (from, to) = (layer_prefix(old) + ".", layer_prefix(new) + ".");
            model.rename_prefix(&from, &to);
        }
    }
    model.check()
}

/// A BERT of shape `s` with small random weights (N(0, 0.02²), LayerNorm at identity),
/// seeded: the fixture of tests.
pub fn random(s: &BertShape, seed: u64) -> Result<Model> {
    let g = build_graph(s);
    let dev = Device::Cpu;
    let mut p = ParamStore::new();
    let shapes = crate::graph::param_shapes(&g);
    for (i, (name, shape)) in shapes.iter().enumerate() {
        let t = if name.ends_with("LayerNorm.weight") {
            Tensor::ones(shape.as_slice(), DType::F32, &dev)?
        } else if name.ends_with(".bias") {
            Tensor::zeros(shape.as_slice(), DType::F32, &dev)?
        } else {
            seeded_normal(shape, 0.02, seed.wrapping_mul(1000).wrapping_add(i as u64))?
        };
        p.insert(name.clone(), t);
    }
    let m = Model::new(g, p);
    m.check()?;
    Ok(m)
}

fn seeded_normal(shape: &[usize], std: f64, seed: u64) -> Result<Tensor> {
    use rand::{rngs::StdRng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(seed);
    let v = crate::zoo::normal(&mut rng, shape.iter().product(), std);
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

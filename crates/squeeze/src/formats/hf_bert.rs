//! Hugging Face encoder directories (`config.json` + `model.safetensors`, optionally the
//! sentence-transformers files `modules.json`, `1_Pooling/config.json`,
//! `sentence_bert_config.json` and the tokenizer files) in and out of the squeeze graph.
//! Import reads the config into a `BertShape` ([`hf_config`]: BERT, RoBERTa, XLM-R and
//! DistilBERT) and takes the tensors by their HF names (the graph's node names are
//! BERT's; other families' names are mapped), dropping `position_ids` and the unused
//! `pooler`. Export writes each family's own config and names back so that the reference
//! Python stack loads the directory unchanged.

use std::path::Path;

use serde_json::json;

use crate::checkpoint::{self, TEXT_ASSETS};
use crate::error::{Error, Result};
use crate::graph::Lookup as bert_lookup;
use crate::graph::Op;
use crate::model::Model;
use crate::params::ParamStore;
use crate::tensor::{Dtype, TensorRole, TensorSpec};
use crate::text::bert::{self, Family};
use std::collections::BTreeMap;

use super::hf_config;

/// Whether `dir` looks like a HF model directory.
pub fn is_hf_dir(dir: &Path) -> bool {
    dir.join("config.json").is_file() && dir.join(checkpoint::WEIGHTS_FILE).is_file()
}

/// Imports a HF encoder directory of the BERT family (sentence-transformers layout or a
/// plain `BertModel` / `RobertaModel` / `XLMRobertaModel` / `DistilBertModel`).
pub fn import(dir: &Path) -> Result<Model> {
    let wpath = dir.join(checkpoint::WEIGHTS_FILE);
    let mut tensors = checkpoint::load_tensors(&wpath)?;
    let shape = hf_config::shape_of(dir, hf_config::layers_present(&tensors))?;
    let graph = bert::build_graph(&shape);
    let cpath = dir.join("config.json");
    graph
        .validate()
        .map_err(|e| Error::file(&cpath, e.to_string()))?;
    let expected = crate::graph::param_shapes(&graph);
    let mut params = ParamStore::new();
    for name in expected.keys() {
        // the family's own name, bare or under its task models' prefix (`bert.`, …)
        let names = hf_config::hf_names(shape.family, name);
        let t = names
            .iter()
            .find_map(|n| tensors.remove(n))
            .ok_or_else(|| Error::file(&wpath, format!("tensor `{}` is missing", names[1])))?;
        params.insert(name.clone(), t.to_dtype(candle_core::DType::F32)?);
    }
    graph
        .check_params(&params)
        .map_err(|e| Error::file(&wpath, e.to_string()))?;
    let assets = checkpoint::read_assets(dir)?;
    Ok(Model {
        graph,
        params,
        assets,
    })
}

/// Why `model` cannot be written as a HF `BertConfig`, if it cannot: every layer must
/// have the same FFN width and head size (whole pruned heads can be expressed with
/// `pruned_heads`, uneven FFN widths cannot).
pub fn export_blocker(model: &Model) -> Option<String> {
    if let Some((n, specs)) = model.graph.nodes.iter().find_map(|n| {
        let specs = n.op.def().tensors();
        specs.iter().any(|s| !dense_float(s)).then_some((n, specs))
    }) {
        let spec = specs.iter().find(|s| !dense_float(s)).expect("found above");
        let indexed = specs.iter().any(|s| s.role == TensorRole::Index);
        let how = match indexed {
            true => {
                "is stored as a sparse matrix (CSR) and HF BERT holds dense weights: \
                 materialize with min_sparsity = 1.0 to keep linear layers dense"
            }
            _ => {
                "is quantized (integer codes and scales) and HF BERT holds float weights: \
                 export the model before the `quantize` pass, or keep the native format"
            }
        };
        return Some(format!(
            "`{}` ({}, tensor `{}` is {:?} {:?}) {how}",
            n.name,
            n.op.kind(),
            spec.suffix,
            spec.dtype,
            spec.role
        ));
    }
    if !model.graph.masks.is_empty() {
        return Some("the model carries pruning masks: run the `materialize` pass first".into());
    }
    let layers = bert::layer_shapes(&model.graph);
    if layers.is_empty() || Family::from_label(&model.graph.arch).is_none() {
        return Some("the model is not a BERT encoder".into());
    }
    let numbered: std::collections::BTreeSet<&str> = model
        .graph
        .nodes
        .iter()
        .filter_map(|n| n.name.strip_prefix("encoder.layer.")?.split('.').next())
        .collect();
    if numbered.len() != layers.len() {
        return Some(format!(
            "encoder layers are not numbered 0..{} without gaps",
            numbered.len()
        ));
    }
    let l0 = layers[0];
    if layers.iter().any(|l| l.intermediate != l0.intermediate) {
        let w: Vec<usize> = layers.iter().map(|l| l.intermediate).collect();
        return Some(format!(
            "FFN widths differ per layer ({w:?}); HF's BertConfig has one intermediate_size"
        ));
    }
    if layers.iter().any(|l| l.head_dim != l0.head_dim) {
        return Some("head sizes differ per layer; HF's BertConfig has one head size".into());
    }
    None
}

/// Writes `model` as a HF / sentence-transformers directory at `out` (which must not
/// exist yet or be empty of a model): `config.json`, `model.safetensors`, pooling and
/// module configs, and the tokenizer files the model carries.
pub fn export(model: &Model, out: &Path) -> Result<()> {
    if let Some(why) = export_blocker(model) {
        return Err(Error::Data(format!("cannot export as a HF encoder: {why}")));
    }
    let layers = bert::layer_shapes(&model.graph);
    let hidden = hidden_size(model)?;
    let head_dim = layers[0].head_dim;
    let full_heads = hidden / head_dim;
    let mut pruned = serde_json::Map::new();
    for (i, l) in layers.iter().enumerate() {
        if l.heads < full_heads {
            // HF only needs how many heads are gone; which original indices is bookkeeping
            pruned.insert(
                i.to_string(),
                json!((l.heads..full_heads).collect::<Vec<_>>()),
            );
        }
    }
    let table = |name: &str| -> Result<usize> { Ok(model.params.get(name)?.dim(0)?) };
    let family = Family::from_label(&model.graph.arch).unwrap_or_default();
    let segments = match model
        .params
        .contains("embeddings.token_type_embeddings.weight")
    {
        true => table("embeddings.token_type_embeddings.weight")?,
        false => 0,
    };
    let mut config = json!({
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": table("embeddings.word_embeddings.weight")?,
        "hidden_size": hidden,
        "num_hidden_layers": layers.len(),
        "num_attention_heads": full_heads,
        "intermediate_size": layers[0].intermediate,
        "hidden_act": "gelu",
        "hidden_dropout_prob": dropout(model),
        // squeeze does not model attention-probability dropout; BERT's default
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": table("embeddings.position_embeddings.weight")?,
        "type_vocab_size": segments,
        "initializer_range": 0.02,
        "layer_norm_eps": layer_norm_eps(model),
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "pruned_heads": pruned,
    });
    hf_config::adapt_config(&mut config, family, position_offset(model));
    std::fs::create_dir_all(out.join("1_Pooling")).map_err(|e| Error::io(out, e))?;
    write_json(&out.join("config.json"), &config)?;
    // the family's own parameter names (DistilBERT's differ from the graph's BERT names)
    let named: BTreeMap<String, candle_core::Tensor> = model
        .params
        .iter()
        .map(|(n, t)| (hf_config::hf_names(family, n).swap_remove(1), t.clone()))
        .collect();
    checkpoint::save_tensors(&out.join(checkpoint::WEIGHTS_FILE), &named)?;
    write_json(
        &out.join("1_Pooling/config.json"),
        &pooling_config(model, hidden),
    )?;
    write_json(&out.join("modules.json"), &modules(model))?;
    for name in TEXT_ASSETS {
        if let Some(bytes) = model.assets.get(*name) {
            checkpoint::write_atomic(&out.join(name), bytes)?;
        }
    }
    Ok(())
}

/// The first row of the positions table (RoBERTa's `padding_idx + 1`; 0 for BERT).
fn position_offset(model: &Model) -> usize {
    first_op(model, |op| match op {
        Op::Embedding(e) if e.lookup == bert_lookup::Positions => Some(e.offset),
        _ => None,
    })
    .unwrap_or(0)
}

fn hidden_size(model: &Model) -> Result<usize> {
    Ok(model
        .params
        .get("embeddings.word_embeddings.weight")?
        .dim(1)?)
}

/// The first value `pick` finds among the graph's ops.
fn first_op<T>(model: &Model, pick: impl Fn(&Op) -> Option<T>) -> Option<T> {
    model.graph.nodes.iter().find_map(|n| pick(&n.op))
}

/// The hidden-state dropout of the graph (training only; 0 if it has none).
fn dropout(model: &Model) -> f64 {
    first_op(model, |op| match op {
        Op::Dropout(d) => Some(d.p),
        _ => None,
    })
    .unwrap_or(0.0)
}

fn layer_norm_eps(model: &Model) -> f64 {
    first_op(model, |op| match op {
        Op::LayerNorm(l) => Some(l.eps),
        _ => None,
    })
    .unwrap_or(1e-12)
}

fn pooling_config(model: &Model, hidden: usize) -> serde_json::Value {
    let has = |pick: fn(&Op) -> bool| model.graph.nodes.iter().any(|n| pick(&n.op));
    json!({
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": has(|op| matches!(op, Op::ClsPool)),
        "pooling_mode_mean_tokens": has(|op| matches!(op, Op::MeanPool)),
        "pooling_mode_max_tokens": has(|op| matches!(op, Op::MaxPoolTokens)),
        "pooling_mode_mean_sqrt_len_tokens": false
    })
}

fn modules(model: &Model) -> serde_json::Value {
    let mut m = vec![
        json!({"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}),
        json!({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}),
    ];
    if model
        .graph
        .nodes
        .iter()
        .any(|n| matches!(n.op, Op::L2Normalize))
    {
        m.push(json!({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}));
    }
    serde_json::Value::Array(m)
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(v).map_err(|e| Error::file(path, e.to_string()))?;
    checkpoint::write_atomic(path, &bytes)
}

/// Whether HF BERT can hold a tensor of this spec: plain float parameters and buffers
/// (derived from the kinds' tensor specs, so a new packed or sparse kind is refused
/// without being named here).
fn dense_float(s: &TensorSpec) -> bool {
    s.dtype == Dtype::F32 && matches!(s.role, TensorRole::Param | TensorRole::Buffer)
}

//! What a Hugging Face encoder directory says about its graph: `config.json` of the BERT
//! family — `BertModel` (any size), `RobertaModel` / `XLMRobertaModel` (positions offset
//! past the padding index) and `DistilBertModel` (its own field and parameter names, no
//! token types) — and sentence-transformers' pooling (`1_Pooling/config.json`, either
//! `pooling_mode` or one `pooling_mode_*` flag: mean, CLS or max) and normalization (`modules.json`), read into a [`BertShape`]; and the mapping
//! from the graph's parameter names (BERT's) to each family's names in the weights file.
//! Anything else — a decoder, an unknown `model_type`, another pooling — is an error that
//! names the file and the field.

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::text::bert::{BertShape, Family, LayerShape, Pooling};

/// The `model_type`s squeeze imports.
pub const FAMILIES: &str = "bert, roberta, xlm-roberta, distilbert";

/// The fields of `BertConfig` (and `RobertaConfig`, which extends it) that fix the
/// computation; others are ignored.
#[derive(Debug, Deserialize)]
struct BertConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    #[serde(default = "two")]
    type_vocab_size: usize,
    #[serde(default = "bert_eps")]
    layer_norm_eps: f64,
    #[serde(default = "gelu")]
    hidden_act: String,
    #[serde(default = "absolute")]
    position_embedding_type: String,
    #[serde(default)]
    hidden_dropout_prob: f64,
    #[serde(default)]
    pad_token_id: Option<usize>,
    #[serde(default)]
    pruned_heads: BTreeMap<String, Vec<usize>>,
}

/// The fields of `DistilBertConfig`.
#[derive(Debug, Deserialize)]
struct DistilConfig {
    vocab_size: usize,
    dim: usize,
    n_layers: usize,
    n_heads: usize,
    hidden_dim: usize,
    max_position_embeddings: usize,
    #[serde(default)]
    dropout: f64,
    #[serde(default = "gelu")]
    activation: String,
}

fn two() -> usize {
    2
}
fn bert_eps() -> f64 {
    1e-12
}
fn gelu() -> String {
    "gelu".into()
}
fn absolute() -> String {
    "absolute".into()
}

pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::file(path, format!("invalid JSON: {e}")))
}

/// The family a `config.json` declares, decoders and unknown types refused.
fn family(cpath: &Path, c: &Value) -> Result<Family> {
    if c.get("is_decoder").and_then(Value::as_bool) == Some(true) {
        return Err(Error::file(
            cpath,
            "`is_decoder` is true: squeeze imports encoders only",
        ));
    }
    let t = c
        .get("model_type")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::file(cpath, format!("no `model_type` (one of {FAMILIES})")))?;
    Ok(match t {
        "bert" => Family::Bert,
        "roberta" => Family::Roberta,
        "xlm-roberta" => Family::XlmRoberta,
        "distilbert" => Family::Distilbert,
        other => {
            return Err(Error::file(
                cpath,
                format!(
                    "`model_type` `{other}` is not supported: squeeze imports {FAMILIES} encoders"
                ),
            ))
        }
    })
}

/// The graph shape of the HF directory `dir`, whose weights hold `present` encoder layers.
pub fn shape_of(dir: &Path, present: usize) -> Result<BertShape> {
    let cpath = dir.join("config.json");
    let raw: Value = read_json(&cpath)?;
    let fam = family(&cpath, &raw)?;
    // the layer count is checked against the weights before anything is sized by it
    let field = match fam {
        Family::Distilbert => "n_layers",
        _ => "num_hidden_layers",
    };
    let configured = raw.get(field).and_then(Value::as_u64);
    if configured != Some(present as u64) {
        let said = configured.map_or_else(|| "missing".to_string(), |n| n.to_string());
        return Err(Error::file(
            &cpath,
            format!(
                "`{field}` is {said}, but model.safetensors holds {present} encoder layers (to \
                 keep fewer, load all {present} and apply the `drop_layers` pass)"
            ),
        ));
    }
    let mut s = match fam {
        Family::Distilbert => distil_shape(&cpath, raw)?,
        _ => bert_shape(&cpath, raw, fam)?,
    };
    s.pooling = pooling(dir)?;
    s.normalize = has_normalize(dir)?;
    Ok(s)
}

fn typed<T: DeserializeOwned>(cpath: &Path, v: Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| Error::file(cpath, format!("invalid config: {e}")))
}

fn bert_shape(cpath: &Path, v: Value, family: Family) -> Result<BertShape> {
    let c: BertConfig = typed(cpath, v)?;
    let bad = |what: String| Err(Error::file(cpath, what));
    if !(c.layer_norm_eps > 0.0 && c.layer_norm_eps < 1.0) {
        return bad(format!(
            "`layer_norm_eps` {} must be in (0, 1)",
            c.layer_norm_eps
        ));
    }
    if !(0.0..1.0).contains(&c.hidden_dropout_prob) {
        return bad(format!(
            "`hidden_dropout_prob` {} must be in [0, 1)",
            c.hidden_dropout_prob
        ));
    }
    if c.hidden_act != "gelu" {
        return bad(format!(
            "`hidden_act` `{}`: only `gelu` (erf) is supported",
            c.hidden_act
        ));
    }
    if c.position_embedding_type != "absolute" {
        return bad(format!(
            "`position_embedding_type` `{}`: only `absolute` is supported",
            c.position_embedding_type
        ));
    }
    if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
        return bad("`hidden_size` must be a multiple of `num_attention_heads`".into());
    }
    // RoBERTa numbers positions from padding_idx + 1 (HF's create_position_ids_from_input_ids)
    let position_offset = match family {
        Family::Roberta | Family::XlmRoberta => c.pad_token_id.unwrap_or(1) + 1,
        _ => 0,
    };
    let head_dim = c.hidden_size / c.num_attention_heads;
    let layers = (0..c.num_hidden_layers)
        .map(|i| {
            let pruned = c.pruned_heads.get(&i.to_string()).map_or(0, |v| v.len());
            LayerShape {
                heads: c.num_attention_heads.saturating_sub(pruned),
                head_dim,
                intermediate: c.intermediate_size,
            }
        })
        .collect();
    Ok(BertShape {
        family,
        vocab: c.vocab_size,
        max_positions: c.max_position_embeddings,
        position_offset,
        segments: c.type_vocab_size,
        hidden: c.hidden_size,
        eps: c.layer_norm_eps,
        dropout: c.hidden_dropout_prob,
        layers,
        pooling: Pooling::Mean,
        normalize: false,
    })
}

fn distil_shape(cpath: &Path, v: Value) -> Result<BertShape> {
    let c: DistilConfig = typed(cpath, v)?;
    let bad = |what: String| Err(Error::file(cpath, what));
    if c.activation != "gelu" {
        return bad(format!(
            "`activation` `{}`: only `gelu` (erf) is supported",
            c.activation
        ));
    }
    if c.n_heads == 0 || !c.dim.is_multiple_of(c.n_heads) {
        return bad("`dim` must be a multiple of `n_heads`".into());
    }
    if !(0.0..1.0).contains(&c.dropout) {
        return bad(format!("`dropout` {} must be in [0, 1)", c.dropout));
    }
    let layer = LayerShape {
        heads: c.n_heads,
        head_dim: c.dim / c.n_heads,
        intermediate: c.hidden_dim,
    };
    Ok(BertShape {
        family: Family::Distilbert,
        vocab: c.vocab_size,
        max_positions: c.max_position_embeddings,
        position_offset: 0,
        segments: 0,
        hidden: c.dim,
        // DistilBERT's LayerNorms are built with eps 1e-12, not from the config
        eps: 1e-12,
        dropout: c.dropout,
        layers: vec![layer; c.n_layers],
        pooling: Pooling::Mean,
        normalize: false,
    })
}

/// sentence-transformers' pooling mode (`1_Pooling/config.json`); mean without one.
fn pooling(dir: &Path) -> Result<Pooling> {
    let ppath = dir.join("1_Pooling/config.json");
    if !ppath.is_file() {
        return Ok(Pooling::Mean);
    }
    let p: serde_json::Map<String, Value> = read_json(&ppath)?;
    // sentence-transformers 6 names the mode in one field; earlier versions set one flag
    if let Some(mode) = p.get("pooling_mode") {
        return match mode.as_str() {
            Some("mean") => Ok(Pooling::Mean),
            Some("cls") => Ok(Pooling::Cls),
            Some("max") => Ok(Pooling::Max),
            _ => Err(Error::file(
                &ppath,
                format!(
                    "`pooling_mode` {mode} is not supported: \"mean\", \"cls\" or \"max\" only"
                ),
            )),
        };
    }
    let on: Vec<&String> = p
        .iter()
        .filter(|(k, v)| k.starts_with("pooling_mode") && v.as_bool() == Some(true))
        .map(|(k, _)| k)
        .collect();
    let mode = match on.as_slice() {
        [one] => one.as_str(),
        _ => {
            return Err(Error::file(
                &ppath,
                format!("pooling modes {on:?} are set: exactly one of pooling_mode_mean_tokens, pooling_mode_cls_token, pooling_mode_max_tokens must be"),
            ))
        }
    };
    match mode {
        "pooling_mode_mean_tokens" => Ok(Pooling::Mean),
        "pooling_mode_cls_token" => Ok(Pooling::Cls),
        "pooling_mode_max_tokens" => Ok(Pooling::Max),
        other => Err(Error::file(
            &ppath,
            format!("`{other}` is not supported: mean, CLS or max pooling only"),
        )),
    }
}

/// sentence-transformers directories list a `Normalize` module in `modules.json`.
fn has_normalize(dir: &Path) -> Result<bool> {
    let mpath = dir.join("modules.json");
    if !mpath.is_file() {
        return Ok(false);
    }
    let modules: Vec<Value> = read_json(&mpath)?;
    Ok(modules.iter().any(|m| {
        m.get("type")
            .and_then(|t| t.as_str())
            .is_some_and(|t| t.ends_with(".Normalize"))
    }))
}

/// DistilBERT's names for the parts of an encoder layer, by BERT's.
const DISTIL_PARTS: &[(&str, &str)] = &[
    ("attention.self.query.", "attention.q_lin."),
    ("attention.self.key.", "attention.k_lin."),
    ("attention.self.value.", "attention.v_lin."),
    ("attention.output.dense.", "attention.out_lin."),
    ("attention.output.LayerNorm.", "sa_layer_norm."),
    ("intermediate.dense.", "ffn.lin1."),
    ("output.dense.", "ffn.lin2."),
    ("output.LayerNorm.", "output_layer_norm."),
];

/// The names graph tensor `name` may have in a `family` weights file: the family's own,
/// bare or under the prefix its task models add (`bert.`, `roberta.`, `distilbert.`).
pub fn hf_names(family: Family, name: &str) -> Vec<String> {
    let own = match family {
        Family::Distilbert => distil_name(name),
        _ => name.to_string(),
    };
    let prefix = match family {
        Family::Bert => "bert",
        Family::Roberta | Family::XlmRoberta => "roberta",
        Family::Distilbert => "distilbert",
    };
    vec![format!("{prefix}.{own}"), own]
}

fn distil_name(name: &str) -> String {
    let Some(rest) = name.strip_prefix("encoder.layer.") else {
        return name.to_string();
    };
    let (i, part) = rest.split_once('.').unwrap_or((rest, ""));
    let part = DISTIL_PARTS
        .iter()
        .find_map(|(bert, distil)| part.strip_prefix(bert).map(|t| format!("{distil}{t}")))
        .unwrap_or_else(|| part.to_string());
    format!("transformer.layer.{i}.{part}")
}

/// Encoder layers a weights file holds (`encoder.layer.<i>.` or DistilBERT's
/// `transformer.layer.<i>.`, under any prefix): the bound on what a config may claim.
pub fn layers_present(tensors: &BTreeMap<String, candle_core::Tensor>) -> usize {
    tensors
        .keys()
        .filter_map(|k| {
            let at = k
                .find("encoder.layer.")
                .or_else(|| k.find("transformer.layer."))?;
            let rest = &k[at..];
            let rest = rest.split_once("layer.")?.1;
            rest.split('.').next()?.parse::<usize>().ok()
        })
        .max()
        .map_or(0, |m| m + 1)
}

/// Turns the `BertConfig` JSON export writes into `family`'s: RoBERTa and XLM-R name their
/// type and padding index (positions start at `position_offset` = `pad_token_id + 1`),
/// DistilBERT has its own field names.
pub fn adapt_config(c: &mut Value, family: Family, position_offset: usize) {
    match family {
        Family::Bert => {}
        Family::Roberta | Family::XlmRoberta => {
            let arch = if family == Family::Roberta {
                "RobertaModel"
            } else {
                "XLMRobertaModel"
            };
            c["architectures"] = serde_json::json!([arch]);
            c["model_type"] = family.label().into();
            c["pad_token_id"] = position_offset.saturating_sub(1).into();
            c["bos_token_id"] = 0.into();
            c["eos_token_id"] = 2.into();
        }
        Family::Distilbert => {
            let f = |k: &str| c[k].clone();
            *c = serde_json::json!({
                "architectures": ["DistilBertModel"],
                "model_type": "distilbert",
                "vocab_size": f("vocab_size"),
                "dim": f("hidden_size"),
                "n_layers": f("num_hidden_layers"),
                "n_heads": f("num_attention_heads"),
                "hidden_dim": f("intermediate_size"),
                "max_position_embeddings": f("max_position_embeddings"),
                "activation": "gelu",
                "dropout": f("hidden_dropout_prob"),
                "attention_dropout": 0.1,
                "initializer_range": 0.02,
                "pad_token_id": 0,
                "sinusoidal_pos_embds": false,
                "pruned_heads": f("pruned_heads"),
            });
        }
    }
}

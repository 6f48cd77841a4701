//! Tokenization for text encoders: the model's own `tokenizer.json` run by the HF
//! `tokenizers` crate, with its fixed padding switched off (this model's file pads every
//! input to 128) and truncation set to the encoder's `max_seq_length`; batches are padded
//! here to their longest sequence, with the attention mask that says which ids are real.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationParams};

use super::wordpiece::AsciiWordPiece;

use crate::error::{Error, Result};

/// Padding id written into batches (BERT's `[PAD]`; masked out, so its value is inert).
const PAD_ID: u32 = 0;

/// The part of sentence-transformers' `sentence_bert_config.json` that matters here.
#[derive(Debug, Deserialize)]
struct SentenceConfig {
    /// Absent in sentence-transformers 6 files that keep the tokenizer's own limit.
    #[serde(default)]
    max_seq_length: Option<usize>,
}

/// A loaded tokenizer with its truncation length.
pub struct TextTokenizer {
    inner: Tokenizer,
    /// The direct path for plain ASCII text, where the file describes BERT's pipeline.
    fast: Option<AsciiWordPiece>,
    pub max_len: usize,
}

impl TextTokenizer {
    /// From a model's assets (`tokenizer.json`, optional `sentence_bert_config.json`);
    /// `max_positions` caps the truncation length.
    pub fn from_assets(assets: &BTreeMap<String, Vec<u8>>, max_positions: usize) -> Result<Self> {
        let bytes = assets.get("tokenizer.json").ok_or_else(|| {
            Error::Data("the model has no tokenizer.json (needed to read text)".into())
        })?;
        let mut max_len = max_positions;
        if let Some(cfg) = assets.get("sentence_bert_config.json") {
            let c: SentenceConfig = serde_json::from_slice(cfg)
                .map_err(|e| Error::Data(format!("sentence_bert_config.json: {e}")))?;
            if let Some(n) = c.max_seq_length {
                if n < 2 {
                    return Err(Error::Data(format!(
                        "sentence_bert_config.json: max_seq_length {n} leaves no room for a \
                         token besides [CLS] and [SEP]"
                    )));
                }
                max_len = n.min(max_positions);
            }
        }
        let json: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::Data(format!("tokenizer.json: {e}")))?;
        check_templates(&json).map_err(|m| Error::Data(format!("tokenizer.json: {m}")))?;
        let mut inner = Tokenizer::from_bytes(bytes)
            .map_err(|e| Error::Data(format!("tokenizer.json: {e}")))?;
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..TruncationParams::default()
            }))
            .map_err(|e| Error::Data(format!("tokenizer.json truncation: {e}")))?;
        // a last net for configurations the tokenizers crate accepts and then panics on
        let trial = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            inner.encode_fast("a test, 1", true).is_ok()
        }));
        if !matches!(trial, Ok(true)) {
            return Err(Error::Data(
                "tokenizer.json: the tokenizer it describes fails on a test sentence".into(),
            ));
        }
        let fast = AsciiWordPiece::from_json(&json);
        Ok(TextTokenizer {
            inner,
            fast,
            max_len,
        })
    }

    /// Token ids of each text (with the special tokens, truncated; a long text is cut to
    /// what [`super::shorten`] says can reach the kept tokens before it is tokenized).
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        texts
            .iter()
            .map(|t| {
                let cut = super::shorten::usable(t, self.max_len);
                if let Some(ids) = self
                    .fast
                    .as_ref()
                    .and_then(|f| f.encode(&cut, self.max_len))
                {
                    return Ok(ids);
                }
                self.inner
                    .encode_fast(cut, true)
                    .map(|e| e.get_ids().to_vec())
                    .map_err(|e| {
                        let head: String = t.chars().take(80).collect();
                        Error::Data(format!("cannot tokenize {head:?}…: {e}"))
                    })
            })
            .collect()
    }

    /// Token ids of `text` without cutting it first (the reference for [`Self::encode`]).
    pub fn encode_whole(&self, text: &str) -> Result<Vec<u32>> {
        self.inner
            .encode_fast(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::Data(format!("cannot tokenize: {e}")))
    }
}

/// Every special token a `TemplateProcessing` post-processor places must be one it
/// defines (the tokenizers crate accepts such a file and panics on the first encode).
fn check_templates(v: &serde_json::Value) -> std::result::Result<(), String> {
    let mut stack = vec![&v["post_processor"]];
    while let Some(p) = stack.pop() {
        if let Some(list) = p.get("processors").and_then(|l| l.as_array()) {
            stack.extend(list);
        }
        if p.get("type").and_then(|t| t.as_str()) != Some("TemplateProcessing") {
            continue;
        }
        let defined = p.get("special_tokens").and_then(|s| s.as_object());
        for part in ["single", "pair"] {
            let Some(items) = p.get(part).and_then(|s| s.as_array()) else {
                continue;
            };
            for id in items.iter().filter_map(|i| i.pointer("/SpecialToken/id")) {
                let id = id.as_str().unwrap_or_default();
                if !defined.is_some_and(|d| d.contains_key(id)) {
                    return Err(format!(
                        "post_processor.{part} places special token `{id}`, which its \
                         special_tokens do not define"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Pads id sequences to the longest: ids [N, L] (u32) and mask [N, L] (f32, 1 = token).
pub fn pad_batch(seqs: &[&[u32]]) -> Result<(Tensor, Tensor)> {
    let l = seqs.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
    let mut ids = vec![PAD_ID; seqs.len() * l];
    let mut mask = vec![0f32; seqs.len() * l];
    for (i, s) in seqs.iter().enumerate() {
        ids[i * l..i * l + s.len()].copy_from_slice(s);
        mask[i * l..i * l + s.len()].fill(1.0);
    }
    let dev = Device::Cpu;
    Ok((
        Tensor::from_vec(ids, (seqs.len(), l), &dev)?,
        Tensor::from_vec(mask, (seqs.len(), l), &dev)?,
    ))
}
